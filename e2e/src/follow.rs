//! Watching the loop from outside, as an operator would: the detector's score,
//! Prometheus' alert, the remediator's audit log, etcd's alarms and health. Each poll
//! prints what changed on the timeline.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use dr_testkit::MarkerAction;
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::keys::{self, Seeded};
use crate::stack::{ALERT_NAME, Stack};
use crate::timeline::Timeline;

const ETCD_CALL: Duration = Duration::from_secs(2);

/// The remediator's audit log (JSON lines, append-only), read incrementally: a poll
/// parses only what was appended since the last one.
pub struct AuditTail {
    path: PathBuf,
    offset: u64,
    pub events: Vec<Value>,
}

impl AuditTail {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            events: Vec::new(),
        }
    }

    /// Reads the complete lines appended since the last call; returns how many.
    pub fn refresh(&mut self) -> Result<usize> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => {
                return Err(err).with_context(|| format!("opening {}", self.path.display()));
            }
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        // A line still being written waits for the next poll.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        let before = self.events.len();
        for line in text[..complete].lines() {
            self.events
                .push(serde_json::from_str(line).context("a bad audit line")?);
        }
        self.offset += complete as u64;
        Ok(self.events.len() - before)
    }
}

pub struct Follower {
    pub audit: AuditTail,
    /// The detector's last `GET /score`: the JSON, or the status and body of a refusal.
    pub last_score: std::result::Result<Value, String>,
    above: bool,
    pub peak_score: Option<f64>,
    pub threshold: Option<f64>,
    alert_state: String,
    pub nospace_seen: bool,
}

impl Follower {
    /// The anomaly alert's state in Prometheus at the last poll (`inactive`, `pending`,
    /// `firing`; empty before the first).
    pub fn alert_state(&self) -> &str {
        &self.alert_state
    }

    pub fn new(stack: &Stack) -> Self {
        Self {
            audit: AuditTail::new(stack.snapshot_dir.join("audit.jsonl")),
            last_score: Err("no answer yet".into()),
            above: false,
            peak_score: None,
            threshold: None,
            alert_state: String::new(),
            nospace_seen: false,
        }
    }

    /// One round of observation; prints what changed.
    pub fn poll(
        &mut self,
        stack: &mut Stack,
        tl: &mut Timeline,
        rt: &Runtime,
        client: &mut Client,
    ) -> Result<()> {
        self.score(stack, tl);
        self.alert(stack, tl);
        self.audit(tl)?;
        self.restore_requests(stack, tl)?;
        if !self.nospace_seen && nospace_alarm(rt, client) {
            self.nospace_seen = true;
            tl.mark("etcd raised the NOSPACE alarm: writes refused");
        }
        Ok(())
    }

    fn score(&mut self, stack: &Stack, tl: &mut Timeline) {
        self.last_score = match dr_testkit::http_get(&format!("{}/score", stack.detector_url)) {
            Ok((200, body)) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(err) => Err(format!("{err:#}")),
        };
        let Ok(answer) = &self.last_score else {
            return;
        };
        let (Some(score), Some(threshold)) =
            (answer["score"].as_f64(), answer["threshold"].as_f64())
        else {
            return;
        };
        self.threshold = Some(threshold);
        if self.peak_score.is_none_or(|p| score > p) {
            self.peak_score = Some(score);
        }
        if score > threshold && !self.above {
            self.above = true;
            let instance = answer["instance"].as_str().unwrap_or("?");
            tl.mark(&format!(
                "score {score:.2} > threshold {threshold:.2} on {instance} (mostly {})",
                top_feature(&answer["feature_shares"])
            ));
        } else if score <= threshold && self.above {
            self.above = false;
            tl.mark(&format!(
                "score {score:.2} back under threshold {threshold:.2}"
            ));
        }
    }

    fn alert(&mut self, stack: &Stack, tl: &mut Timeline) {
        let Some(answer) = get_json(&format!("{}/api/v1/alerts", stack.prometheus.url())) else {
            return;
        };
        let state = answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == ALERT_NAME)
            .filter_map(|a| a["state"].as_str())
            .max_by_key(|s| *s == "firing")
            .unwrap_or("inactive")
            .to_owned();
        if state != self.alert_state {
            if !(self.alert_state.is_empty() && state == "inactive") {
                tl.mark(&format!("alert {ALERT_NAME} {state}"));
            }
            self.alert_state = state;
        }
    }

    /// The remediator's new audit events onto the timeline; cheap (a file read), so a
    /// scenario that must act at a given step can watch for it alone.
    pub fn audit(&mut self, tl: &mut Timeline) -> Result<()> {
        let new = self.audit.refresh()?;
        let events = &self.audit.events;
        for event in &events[events.len() - new..] {
            if let Some(line) = describe(event) {
                tl.mark(&line);
            }
        }
        Ok(())
    }

    /// The remediator's restore commands ask the drill, which owns the etcd processes,
    /// to stop and start members (what systemd or the kubelet does on a node).
    fn restore_requests(&mut self, stack: &mut Stack, tl: &mut Timeline) -> Result<()> {
        for action in stack.markers.answer(&mut stack.etcd)? {
            tl.mark(&match action {
                MarkerAction::Stopped(name) => format!("restore: {name} stopped"),
                MarkerAction::Started(name) => {
                    format!("restore: {name} started on the restored data dir")
                }
            });
        }
        Ok(())
    }
}

/// Healthy means: every member says healthy (a leader, no alarm), a write lands, and
/// every seeded key is there with its value. `Err(reason)` otherwise.
pub fn healthy(
    stack: &Stack,
    rt: &Runtime,
    client: &mut Client,
    seeded: &Seeded,
) -> Result<(usize, usize), String> {
    for m in stack.etcd.members() {
        match dr_testkit::http_get(&m.health_url) {
            Ok((200, body)) if body.contains("\"health\":\"true\"") => {}
            Ok((status, body)) => {
                return Err(format!("{} unhealthy ({status}): {}", m.name, body.trim()));
            }
            Err(err) => return Err(format!("{} does not answer: {err:#}", m.name)),
        }
    }
    let probe = rt.block_on(async {
        tokio::time::timeout(ETCD_CALL, client.put("/drill/probe", "ok", None)).await
    });
    match probe {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(format!("a write failed: {err}")),
        Err(_) => return Err("a write got no answer".into()),
    }
    let checked =
        rt.block_on(async { tokio::time::timeout(ETCD_CALL, keys::verify(client, seeded)).await });
    match checked {
        Ok(Ok((checked, 0, _))) => Ok((checked, 0)),
        Ok(Ok((checked, lost, _))) => {
            Err(format!("{lost} of {checked} seeded keys lost or changed"))
        }
        Ok(Err(err)) => Err(format!("{err:#}")),
        Err(_) => Err("reading the seeded keys got no answer".into()),
    }
}

fn nospace_alarm(rt: &Runtime, client: &mut Client) -> bool {
    let options = AlarmOptions::new();
    let answer = rt.block_on(async {
        tokio::time::timeout(
            ETCD_CALL,
            client.alarm(AlarmAction::Get, AlarmType::None, Some(options)),
        )
        .await
    });
    matches!(answer, Ok(Ok(a)) if a.alarms().iter().any(|m| m.alarm() == AlarmType::Nospace))
}

fn get_json(url: &str) -> Option<Value> {
    match dr_testkit::http_get(url) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn top_feature(shares: &Value) -> String {
    shares
        .as_object()
        .and_then(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(k, v)| format!("{k} {:.0}%", v * 100.0))
        })
        .unwrap_or_else(|| "?".into())
}

/// One audit event as a timeline line; `None` for the ones that only repeat others.
fn describe(e: &Value) -> Option<String> {
    let step = e["step"].as_str().unwrap_or("?");
    let phase = e["phase"].as_str().unwrap_or("?");
    let d = &e["detail"];
    let kind = e["kind"].as_str().unwrap_or("?");
    let mb = |v: &Value| {
        v.as_f64()
            .map_or("?".into(), |b| format!("{:.1} MB", b / 1e6))
    };
    Some(match (kind, step, phase) {
        ("scheduled_snapshot", _, _) => return None,
        ("webhook", _, "skipped") => format!("webhook skipped: {}", d.as_str().unwrap_or("?")),
        (_, "plan", _) => {
            let steps: Vec<String> = d["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let name = s["step"].as_str().unwrap_or("?");
                    match (s["member"].as_str(), s["leader"].as_bool()) {
                        (Some(m), Some(true)) => format!("{name} {m} (leader)"),
                        (Some(m), _) => format!("{name} {m}"),
                        _ => name.to_owned(),
                    }
                })
                .collect();
            format!("webhook accepted; plan: {}", steps.join(", "))
        }
        (_, _, "start") if step != "wait_health" => return None,
        (_, "wait_health", "start") => "repair done; waiting before the health check".into(),
        (_, "snapshot", "ok") => format!(
            "snapshot saved: rev {}, {}, sha256 ok ({})",
            d["revision"],
            mb(&d["size_bytes"]),
            d["sha256"].as_str().map_or("?", |s| &s[..s.len().min(12)])
        ),
        (_, "compact", "ok") => format!("compacted to rev {}", d["revision"]),
        (_, s, "ok") if s.starts_with("defrag") => format!("{s} done{}", short(d)),
        (_, "disarm_nospace", "ok") => format!("NOSPACE disarmed{}", short(d)),
        (_, "verify", "ok") => format!("health check: {}", d["verdict"].as_str().unwrap_or("?")),
        (_, "restore_if_unavailable", "ok") => format!("restored from the snapshot{}", short(d)),
        (_, "finished", _) => format!(
            "remediation finished in {:.1}s",
            d["seconds"].as_f64().unwrap_or(f64::NAN)
        ),
        _ => format!("{step} {phase}{}", short(d)),
    })
}

fn short(d: &Value) -> String {
    if d.is_null() {
        return String::new();
    }
    let text = d.to_string();
    let cut: String = text.chars().take(160).collect();
    format!(": {cut}")
}
