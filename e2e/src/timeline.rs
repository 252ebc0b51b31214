//! The readable timeline: every event printed as it happens, relative to the incident's
//! start (setup lines before it), and kept for the report.

use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Seconds since the incident started; negative during setup.
    pub t: f64,
    pub event: String,
}

pub struct Timeline {
    scenario: String,
    created: Instant,
    incident: Option<Instant>,
    pub entries: Vec<Entry>,
}

impl Timeline {
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            created: Instant::now(),
            incident: None,
            entries: Vec::new(),
        }
    }

    /// Seconds since the incident started (since creation, negated, before that).
    pub fn now(&self) -> f64 {
        match self.incident {
            Some(start) => start.elapsed().as_secs_f64(),
            None => -self.created.elapsed().as_secs_f64(),
        }
    }

    pub fn incident_started(&mut self, what: &str) {
        self.incident = Some(Instant::now());
        self.mark(what);
    }

    pub fn mark(&mut self, event: &str) {
        let t = self.now();
        if self.incident.is_some() {
            println!("[{}] t+{t:5.1}s {event}", self.scenario);
        } else {
            println!("[{}] setup {:5.1}s {event}", self.scenario, -t);
        }
        self.entries.push(Entry {
            t: (t * 10.0).round() / 10.0,
            event: event.to_owned(),
        });
    }
}
