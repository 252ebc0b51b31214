//! The JSON report (DESIGN: `scenario`, `mttr_seconds`, `keys_checked`, `keys_lost`,
//! `passed`, the actions) per scenario, and the combined one for `--scenario all`.

use dr_testkit::EtcdVersion;
use serde::Serialize;
use serde_json::Value;

use crate::cli::Cli;
use crate::timeline::Entry;

#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub passed: bool,
    /// From the incident's start to etcd healthy, writable, alarm-free, keys intact.
    /// `null` where nothing was to repair (false-alarm) or it never got healthy.
    pub mttr_seconds: Option<f64>,
    pub mttr_budget_seconds: f64,
    /// Seconds between the snapshot restored from and the loss (`disaster`: the data
    /// written in between is gone); absent where no restore from a backup was the repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<f64>,
    pub keys_checked: usize,
    pub keys_lost: usize,
    pub seeded_sha256: String,
    pub members: usize,
    pub etcd_version: String,
    pub step_seconds: f64,
    pub peak_score: Option<f64>,
    pub threshold: Option<f64>,
    /// The first remediation's diagnosis (`null`: the remediator never acted).
    pub diagnosis: Option<String>,
    /// What the diagnosis rests on, as the remediator recorded it.
    pub evidence: Value,
    /// The steps it planned, and the ones that ran (`ok` in the audit log).
    pub plan: Vec<String>,
    pub ran: Vec<String>,
    pub failures: Vec<String>,
    /// The remediator's audit log (webhook decisions and remediation steps).
    pub actions: Vec<Value>,
    pub timeline: Vec<Entry>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub extra: Value,
}

impl ScenarioReport {
    pub fn new(scenario: &str, cli: &Cli, version: EtcdVersion) -> Self {
        Self {
            scenario: scenario.to_owned(),
            passed: false,
            mttr_seconds: None,
            mttr_budget_seconds: cli.mttr_budget.as_secs_f64(),
            rpo_seconds: None,
            keys_checked: 0,
            keys_lost: 0,
            seeded_sha256: String::new(),
            members: cli.members,
            etcd_version: version.as_str().to_owned(),
            step_seconds: cli.step.as_secs_f64(),
            peak_score: None,
            threshold: None,
            diagnosis: None,
            evidence: Value::Null,
            plan: Vec::new(),
            ran: Vec::new(),
            failures: Vec::new(),
            actions: Vec::new(),
            timeline: Vec::new(),
            extra: Value::Null,
        }
    }

    pub fn fail(&mut self, why: &str) {
        println!("[{}] FAIL: {why}", self.scenario);
        self.failures.push(why.to_owned());
    }
}

/// Several scenarios: the worst MTTR, the sums, every action, and each report in full.
#[derive(Debug, Serialize)]
pub struct Combined<'a> {
    pub scenario: String,
    pub passed: bool,
    pub mttr_seconds: Option<f64>,
    pub keys_checked: usize,
    pub keys_lost: usize,
    pub actions: Vec<&'a Value>,
    pub scenarios: &'a [ScenarioReport],
}

impl<'a> Combined<'a> {
    pub fn of(reports: &'a [ScenarioReport]) -> Self {
        Self {
            scenario: reports
                .iter()
                .map(|r| r.scenario.as_str())
                .collect::<Vec<_>>()
                .join(","),
            passed: !reports.is_empty() && reports.iter().all(|r| r.passed),
            mttr_seconds: reports
                .iter()
                .filter_map(|r| r.mttr_seconds)
                .max_by(f64::total_cmp),
            keys_checked: reports.iter().map(|r| r.keys_checked).sum(),
            keys_lost: reports.iter().map(|r| r.keys_lost).sum(),
            actions: reports.iter().flat_map(|r| &r.actions).collect(),
            scenarios: reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn report(name: &str, passed: bool, mttr: Option<f64>, lost: usize) -> ScenarioReport {
        let cli = Cli::parse_from(["dr-drill", "--bin-dir", "/nowhere"]);
        let mut r = ScenarioReport::new(name, &cli, EtcdVersion::V3_4);
        r.passed = passed;
        r.mttr_seconds = mttr;
        r.keys_checked = 1000;
        r.keys_lost = lost;
        r
    }

    #[test]
    fn combined_takes_the_worst_and_passes_only_if_all_did() {
        let reports = vec![
            report("nospace", true, Some(20.5), 0),
            report("restore", true, Some(31.0), 0),
            report("false-alarm", true, None, 0),
        ];
        let c = Combined::of(&reports);
        assert!(c.passed);
        assert_eq!(c.scenario, "nospace,restore,false-alarm");
        assert_eq!(c.mttr_seconds, Some(31.0));
        assert_eq!(c.keys_checked, 3000);

        let reports = vec![
            report("nospace", true, Some(20.5), 0),
            report("restore", false, None, 3),
        ];
        let c = Combined::of(&reports);
        assert!(!c.passed);
        assert_eq!(c.keys_lost, 3);
        assert!(!Combined::of(&[]).passed);
    }

    #[test]
    fn the_report_has_the_fields_design_names() {
        let v = serde_json::to_value(report("nospace", true, Some(12.0), 0)).unwrap();
        for field in [
            "scenario",
            "mttr_seconds",
            "keys_checked",
            "keys_lost",
            "passed",
            "actions",
            "diagnosis",
            "plan",
            "ran",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {v}");
        }
    }
}
