//! One scenario on a fresh stack: seed, warm up, inject, follow to a verdict.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dr_testkit::{ChildGuard, EtcdVersion, SlowDisk, http_post};
use etcd_client::Client;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::cli::Cli;
use crate::follow::{Follower, healthy};
use crate::interrupt;
use crate::keys::{self, Seeded};
use crate::report::ScenarioReport;
use crate::stack::{ALERT_NAME, SPACE_STORM, Stack, StackOptions};
use crate::timeline::Timeline;

const SEEDED_KEYS: usize = 1000;
const STEADY_RATE: u32 = 50;
/// `busy-normal`: the steady load times this, for this long after the warm-up.
const BUSY_LOAD: u32 = 10;
const BUSY_FOR: Duration = Duration::from_secs(150);
const BUSY_QUOTA_MIB: u64 = 2048;
/// The detector's window (30 steps) and its rate ranges, plus a margin.
const SETTLE_STEPS: u32 = 40;
const POLL: Duration = Duration::from_millis(250);
/// Long enough for a window of 30 steps, its rate ranges, and each member's baseline to
/// gather its 60 steps of history (refitted every 30).
const WARM_UP: Duration = Duration::from_secs(240);
/// The score must stay under the threshold this many polls in a row before the incident.
const CALM_POLLS: usize = 8;

/// How long the `leader`, `slow-disk` and `member-down` incidents may take to reach the
/// remediator's verdict.
const DIAGNOSIS_DEADLINE: Duration = Duration::from_secs(150);
/// Leadership moves this often in `leader`.
const LEADER_MOVE_EVERY: Duration = Duration::from_secs(2);
/// What `slow-disk` adds to every fsync: above the mixin's 500 ms fsync warning, as a
/// stalling disk under the control plane.
const SLOW_DISK_DELAY: Duration = Duration::from_millis(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nospace,
    Restore,
    FalseAlarm,
    Leader,
    SlowDisk,
    MemberDown,
    RuleOnly,
    /// A healthy cluster at ten times the steady load, from its start: nothing may fire.
    BusyNormal,
    /// Every member and the local snapshots lost; back from the object store (disaster.rs).
    Disaster,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nospace => "nospace",
            Kind::Restore => "restore",
            Kind::FalseAlarm => "false-alarm",
            Kind::Leader => "leader",
            Kind::SlowDisk => "slow-disk",
            Kind::MemberDown => "member-down",
            Kind::RuleOnly => "rule-only",
            Kind::BusyNormal => "busy-normal",
            Kind::Disaster => crate::disaster::NAME,
        }
    }

    /// The diagnosis the remediator must reach, where one is required.
    fn expected_diagnosis(self) -> Option<&'static str> {
        match self {
            Kind::Nospace | Kind::RuleOnly => Some("space"),
            Kind::Leader => Some("leader_instability"),
            Kind::SlowDisk => Some("slow_disk"),
            Kind::MemberDown => Some("member_unavailable"),
            Kind::Restore | Kind::FalseAlarm | Kind::BusyNormal | Kind::Disaster => None,
        }
    }
}

/// Writes left by earlier work (the last scenario's storm and snapshots, a release build,
/// image layers) would go to disk while this scenario's etcd fsyncs its WAL, and WAL fsync
/// latency is one of the model's features: a CI run saw normal load score over the
/// threshold on `wal_fsync_p99` right after the nospace scenario. Flushed first, bounded
/// (`sync` through coreutils' `timeout`, so a stuck disk cannot hang the drill).
fn flush_pending_writes(tl: &mut Timeline) {
    let started = std::time::Instant::now();
    let outcome = std::process::Command::new("timeout")
        .args(["120", "sync"])
        .status();
    match outcome {
        Ok(status) if status.success() => tl.mark(&format!(
            "flushed pending writes to disk in {:.1}s",
            started.elapsed().as_secs_f64()
        )),
        Ok(status) => tl.mark(&format!("sync did not finish ({status}); going on")),
        Err(err) => tl.mark(&format!("cannot run sync ({err}); going on")),
    }
}

pub fn run(kind: Kind, cli: &Cli, rt: &Runtime) -> Result<ScenarioReport> {
    if kind == Kind::Disaster {
        return crate::disaster::run(cli, rt);
    }
    let dir = cli.work_dir.join(kind.name());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let version = EtcdVersion::parse(&cli.etcd_version)?;
    let mut tl = Timeline::new(kind.name());
    flush_pending_writes(&mut tl);
    // Ten times the load fills a small quota in a minute: busy clusters have big ones
    // (t1-busy, the busiest recording, has 2 GiB).
    let quota_mib = match kind {
        Kind::BusyNormal => cli.quota_mib.max(BUSY_QUOTA_MIB),
        _ => cli.quota_mib,
    };
    let mut stack = Stack::start(&StackOptions {
        dir: &dir,
        bin_dir: &cli.bin_dir,
        version,
        members: cli.members,
        quota_bytes: quota_mib * 1024 * 1024,
        step: cli.step,
        model: cli.model.as_deref(),
        alert_rule: true,
        etcd_on_tmpfs: !cli.etcd_on_disk,
    })?;
    tl.mark(&format!(
        "stack up in {}: etcd {} x{} (quota {} MiB, data on {}), Pushgateway, Prometheus, Alertmanager, collector, detector, remediator",
        dir.display(),
        version.as_str(),
        cli.members,
        quota_mib,
        match &stack.etcd_tmpfs {
            Some(tmpfs) => format!("a tmpfs at {}", tmpfs.path().display()),
            None => "disk".to_owned(),
        }
    ));
    let steady_rate = match kind {
        Kind::BusyNormal => BUSY_LOAD * STEADY_RATE,
        _ => STEADY_RATE,
    };
    stack.start_steady_load(steady_rate, 1)?;
    let mut client = rt.block_on(keys::connect(&stack.etcd.client_endpoints()))?;
    let seeded = rt.block_on(keys::seed(&mut client, SEEDED_KEYS))?;
    tl.mark(&format!(
        "seeded {} keys under /drill/seed/ (sha256 {}); steady load {steady_rate} ops/s",
        seeded.count,
        &seeded.sha256[..12]
    ));
    let mut report = ScenarioReport::new(kind.name(), cli, version);
    report.keys_checked = seeded.count;
    report.seeded_sha256 = seeded.sha256.clone();

    // The cluster's start-up and the seeding must be out of the detector's window before
    // it scores: what it would see there is a new cluster, not a normal one.
    let settle = cli.step * SETTLE_STEPS;
    tl.mark(&format!(
        "normal load for {}s before the loop closes",
        settle.as_secs()
    ));
    interrupt::sleep(settle)?;
    stack.space_alerts = match kind {
        // The rule alone must repair: NOSPACE acts without the detector.
        Kind::RuleOnly => vec!["EtcdNoSpace".into()],
        // A rule trigger while a member is down: diagnosed, never defragmented.
        Kind::MemberDown => vec!["EtcdNoSpace".into(), "EtcdMembersDown".into()],
        _ => Vec::new(),
    };
    stack.close_loop()?;
    tl.mark("detector and remediator started: the loop is closed");
    let mut drill = Drill {
        kind,
        cli,
        rt,
        follower: Follower::new(&stack),
        stack,
        tl,
        client,
        seeded,
        report,
    };
    drill.warm_up()?;
    if drill
        .follower
        .audit
        .events
        .iter()
        .any(|e| e["kind"] == "remediation")
    {
        drill
            .report
            .fail("false positive: the remediator acted on normal load, before the incident");
    }
    // The report's diagnosis is of the incident's remediation, not of a false positive.
    let incident_from = drill.follower.audit.events.len();
    let result = match kind {
        Kind::Nospace | Kind::Restore => drill.repair(),
        Kind::RuleOnly => drill
            .stack
            .stop_detector()
            .map(|()| {
                drill
                    .tl
                    .mark("detector stopped: only the EtcdNoSpace rule can act")
            })
            .and_then(|()| drill.repair()),
        Kind::FalseAlarm => drill.false_alarm(),
        Kind::BusyNormal => drill.busy_normal(),
        Kind::Leader | Kind::SlowDisk | Kind::MemberDown => drill.escalation(),
        Kind::Disaster => Err(anyhow::anyhow!("disaster runs on a stack of its own")),
    };
    let Drill {
        mut report,
        mut tl,
        follower,
        ..
    } = drill;
    if let Err(err) = result {
        report.fail(&format!("{err:#}"));
    }
    report.peak_score = follower.peak_score;
    report.threshold = follower.threshold;
    report.actions = follower
        .audit
        .events
        .iter()
        .filter(|e| e["kind"] != "scheduled_snapshot")
        .map(|e| json!({"ts": e["ts"], "kind": e["kind"], "step": e["step"], "phase": e["phase"], "detail": e["detail"]}))
        .collect();
    let since = incident_from.min(follower.audit.events.len());
    summarise_remediation(&mut report, &follower.audit.events[since..]);
    report.passed = report.failures.is_empty();
    tl.mark(if report.passed { "PASSED" } else { "FAILED" });
    report.timeline = tl.entries;
    Ok(report)
}

/// One scenario under way: its stack, its observers and what it has found so far.
struct Drill<'a> {
    kind: Kind,
    cli: &'a Cli,
    rt: &'a Runtime,
    stack: Stack,
    tl: Timeline,
    client: Client,
    follower: Follower,
    seeded: Seeded,
    report: ScenarioReport,
}

impl Drill<'_> {
    /// Waits `pause`, then one round of observation.
    fn observe(&mut self, pause: Duration) -> Result<()> {
        interrupt::sleep(pause)?;
        self.follower
            .poll(&mut self.stack, &mut self.tl, self.rt, &mut self.client)
    }

    /// The remediator's audit events from index `from` on.
    fn events_since(&self, from: usize) -> &[Value] {
        &self.follower.audit.events[from.min(self.follower.audit.events.len())..]
    }

    fn healthy(&mut self) -> std::result::Result<(usize, usize), String> {
        healthy(&self.stack, self.rt, &mut self.client, &self.seeded)
    }

    /// Until the detector scores every member against a ready baseline of its own and the
    /// score has stayed under the threshold for a while: the model's view of normal.
    fn warm_up(&mut self) -> Result<()> {
        let members = self.cli.members;
        let deadline = Instant::now() + WARM_UP;
        let mut calm = 0;
        let mut scored_once = false;
        let mut baselines_marked = false;
        while calm < CALM_POLLS {
            self.observe(Duration::from_secs(1))?;
            match &self.follower.last_score {
                Ok(a) => {
                    let instances = a["instances"].as_array().map_or(0, Vec::len);
                    let (score, threshold) = (a["score"].as_f64(), a["threshold"].as_f64());
                    if !scored_once && instances == members {
                        scored_once = true;
                        self.tl.mark(&format!(
                            "detector scores all {members} members (score {:.2}, threshold {:.2})",
                            score.unwrap_or(f64::NAN),
                            threshold.unwrap_or(f64::NAN)
                        ));
                    }
                    // A format 2 model alerts only once each member's own baseline has
                    // history enough: until then normal load proves nothing.
                    let baselines_ready = a["instances"].as_array().is_some_and(|all| {
                        all.iter()
                            .all(|i| i["baseline"].is_null() || i["baseline"]["ready"] == true)
                    });
                    if baselines_ready && !baselines_marked && instances == members {
                        baselines_marked = true;
                        self.tl
                            .mark("every member's own baseline has history enough to alert on");
                    }
                    match (score, threshold) {
                        (Some(s), Some(t)) if instances == members && baselines_ready && s <= t => {
                            calm += 1
                        }
                        _ => calm = 0,
                    }
                }
                Err(_) => calm = 0,
            }
            if Instant::now() > deadline {
                let last = match &self.follower.last_score {
                    Ok(a) => a.to_string(),
                    Err(e) => e.clone(),
                };
                bail!(
                    "the detector did not settle under its threshold within {WARM_UP:?} of normal load; last answer: {}",
                    last.chars().take(400).collect::<String>()
                );
            }
        }
        self.tl
            .mark("score steady under the threshold: normal load looks normal");
        Ok(())
    }

    /// `nospace` and `restore`: a big-value storm fills the quota; the loop must repair
    /// it. In `restore` the cluster is broken again while the remediator waits to check
    /// health.
    fn repair(&mut self) -> Result<()> {
        let restore = self.kind == Kind::Restore;
        // `restore` stops the storm at 40 MiB, short of NOSPACE: under NOSPACE etcd
        // refuses the lease of the remediator's lock, and a restore never runs without it.
        let mut storm_args = SPACE_STORM.to_vec();
        storm_args.push("120s");
        if restore {
            storm_args.extend(["--max-bytes", "40MiB"]);
        }
        let mut storm = ChildGuard::spawn(
            "dr-loadgen bigkey",
            self.stack.loadgen_command(&storm_args),
            &self.stack.dir.join("loadgen-storm.log"),
            false,
        )?;
        let before = self.follower.audit.events.len();
        self.tl.incident_started(&format!(
            "incident: big-value storm, 8 keys of 512 KiB rewritten 12 times/s toward the {} MiB quota{}",
            self.cli.quota_mib,
            if restore { " (40 MiB of it)" } else { "" }
        ));
        let budget = self.cli.mttr_budget.as_secs_f64();
        let hard_deadline = budget + 60.0;
        let mut storm_reported = false;
        let mut damaged = false;
        loop {
            let accepted = self
                .events_since(before)
                .iter()
                .any(|e| e["kind"] == "remediation");
            if restore && !damaged && accepted {
                // The damage must land early in the remediator's 3 s health wait: only the
                // audit log is read until then (a full observation, Prometheus and the
                // detector included, can take seconds on a busy machine).
                interrupt::sleep(POLL)?;
                self.follower.audit(&mut self.tl)?;
            } else {
                self.observe(POLL)?;
            }
            if !storm_reported && !storm.is_running() {
                storm_reported = true;
                self.tl
                    .mark(&format!("storm ended: {}", storm_summary(storm.log_path())));
            }
            let is = |e: &Value, step: &str| e["kind"] == "remediation" && e["step"] == step;
            let events = self.events_since(before);
            let waiting = events
                .iter()
                .any(|e| is(e, "wait_health") && e["phase"] == "start");
            let finished = events.iter().any(|e| is(e, "finished"));
            if restore && waiting && !damaged {
                damaged = true;
                damage(&mut self.stack, &mut self.tl)?;
            }
            if finished {
                match self.healthy() {
                    Ok((checked, lost)) => {
                        let t = self.tl.now();
                        self.report.mttr_seconds = Some((t * 10.0).round() / 10.0);
                        self.report.keys_checked = checked;
                        self.report.keys_lost = lost;
                        self.tl.mark(&format!(
                            "etcd healthy: every member healthy, no alarm, writable, {checked} seeded keys intact (MTTR {t:.1}s)"
                        ));
                        break;
                    }
                    Err(why) if self.tl.now() > hard_deadline => {
                        bail!("not healthy {hard_deadline:.0}s after the incident started: {why}");
                    }
                    Err(_) => {}
                }
            } else if self.tl.now() > hard_deadline {
                bail!("no finished remediation {hard_deadline:.0}s after the incident started");
            }
        }
        let _ = storm.stop();
        self.judge_repair(before, budget);
        Ok(())
    }

    /// What the audit log and the checks must show after a repair.
    fn judge_repair(&mut self, before: usize, budget: f64) {
        let mut failures = Vec::new();
        if matches!(self.kind, Kind::Nospace | Kind::RuleOnly) && !self.follower.nospace_seen {
            failures.push("the storm never raised NOSPACE: the incident did not happen".to_owned());
        }
        let events = self.events_since(before);
        let ok = |step: &str| {
            events
                .iter()
                .any(|e| e["kind"] == "remediation" && e["step"] == step && e["phase"] == "ok")
        };
        let required: &[&str] = match self.kind {
            Kind::Nospace | Kind::RuleOnly => &["snapshot", "compact", "disarm_nospace"],
            _ => &["snapshot", "compact"],
        };
        if self.kind == Kind::RuleOnly
            && !events.iter().any(|e| {
                e["step"] == "accepted"
                    && e["detail"]["trigger"] == "rule"
                    && e["detail"]["alert"] == "EtcdNoSpace"
            })
        {
            failures.push("the repair was not started by the EtcdNoSpace rule".to_owned());
        }
        for step in required {
            if !ok(step) {
                failures.push(format!("no successful `{step}` in the audit log"));
            }
        }
        let first = events
            .iter()
            .find(|e| e["kind"] == "remediation")
            .map(|e| e["action_id"].clone());
        let defrags = events
            .iter()
            .filter(|e| {
                e["kind"] == "remediation"
                    && Some(&e["action_id"]) == first.as_ref()
                    && e["phase"] == "ok"
                    && e["step"].as_str().is_some_and(|s| s.starts_with("defrag"))
            })
            .count();
        if defrags != self.cli.members {
            failures.push(format!(
                "{defrags} members defragmented, want {}",
                self.cli.members
            ));
        }
        if self.kind == Kind::Restore && !ok("restore_if_unavailable") {
            failures.push("the remediator did not restore the snapshot".to_owned());
        }
        if let Some(mttr) = self.report.mttr_seconds
            && mttr > budget
        {
            failures.push(format!("MTTR {mttr:.1}s is over the {budget:.0}s budget"));
        }
        if self.report.keys_lost > 0 {
            failures.push(format!("{} seeded keys lost", self.report.keys_lost));
        }
        for failure in failures {
            self.report.fail(&failure);
        }
    }

    /// Ten times the steady load, healthy, watched for `BUSY_FOR`: the detector judges
    /// each member against its own (busy) normal, so the anomaly alert may not fire, no
    /// webhook arrive, nothing be touched. A score over the threshold for less than the
    /// alert's `for` is what that `for` is there to absorb: it is counted and reported,
    /// not failed (the drill's own machine compiles and tests beside it, and its commit
    /// latency shows that for a moment).
    fn busy_normal(&mut self) -> Result<()> {
        let before = self.follower.audit.events.len();
        self.tl.incident_started(&format!(
            "watching {}s of {BUSY_LOAD}x the steady load: nothing may fire",
            BUSY_FOR.as_secs()
        ));
        let until = self.tl.now() + BUSY_FOR.as_secs_f64();
        let mut failures = Vec::new();
        let (mut polls, mut anomalous) = (0usize, 0usize);
        while self.tl.now() <= until {
            self.observe(Duration::from_secs(1))?;
            polls += 1;
            if let Ok(answer) = &self.follower.last_score
                && answer["anomalous"] == true
            {
                anomalous += 1;
            }
            if self.follower.alert_state() == "firing" {
                let answer = match &self.follower.last_score {
                    Ok(answer) => answer.to_string(),
                    Err(why) => why.clone(),
                };
                failures.push(format!(
                    "{ALERT_NAME} fired on a busy, healthy cluster: {}",
                    answer.chars().take(300).collect::<String>()
                ));
                break;
            }
        }
        if failures.is_empty() {
            self.tl.mark(&format!(
                "score over the threshold in {anomalous} of {polls} polls, never held for the alert's `for`"
            ));
        }
        let events = self.events_since(before);
        if let Some(webhook) = events.iter().find(|e| e["kind"] == "webhook") {
            failures.push(format!("an alert reached the remediator: {webhook}"));
        }
        if events.iter().any(|e| e["kind"] == "remediation") {
            failures.push("the remediator started a remediation on normal load".to_owned());
        }
        match self.healthy() {
            Ok((checked, lost)) => {
                self.report.keys_checked = checked;
                self.report.keys_lost = lost;
                self.tl.mark(&format!(
                    "peak score {:.2} against {:.2}; etcd healthy, {checked} seeded keys intact",
                    self.follower.peak_score.unwrap_or(f64::NAN),
                    self.follower.threshold.unwrap_or(f64::NAN)
                ));
            }
            Err(why) => failures.push(why),
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!(failures.join("; "))
        }
    }

    /// An alert fires that the detector does not back (a static rule misfiring, a person
    /// testing the route): the remediator must ask, hear no, and touch nothing.
    fn false_alarm(&mut self) -> Result<()> {
        let alert = json!([{
            "labels": {"alertname": ALERT_NAME, "severity": "critical", "instance": "drill-false-alarm"},
            "annotations": {"summary": "fired by the drill with etcd healthy"},
        }]);
        let before = self.follower.audit.events.len();
        let (status, body) = http_post(
            &format!("{}/api/v2/alerts", self.stack.alertmanager.url()),
            "application/json",
            alert.to_string().as_bytes(),
        )?;
        if status != 200 {
            bail!("Alertmanager refused the alert: {status} {body}");
        }
        self.tl.incident_started(
            "incident: an EtcdAnomalyScoreHigh alert sent to Alertmanager while etcd is healthy",
        );
        let skip_reason = |events: &[Value]| {
            events
                .iter()
                .find(|e| e["kind"] == "webhook" && e["phase"] == "skipped")
                .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        };
        // After the decision, keep watching a while: nothing may start afterwards either.
        let mut quiet_until: Option<f64> = None;
        while quiet_until.is_none_or(|q| self.tl.now() <= q) {
            self.observe(POLL)?;
            if quiet_until.is_none() && skip_reason(self.events_since(before)).is_some() {
                quiet_until = Some(self.tl.now() + 5.0);
            }
            if quiet_until.is_none() && self.tl.now() > 60.0 {
                bail!("the remediator recorded no decision on the webhook within 60s");
            }
        }
        let events = self.events_since(before);
        let reason = skip_reason(events).unwrap_or_default();
        let mut failures = Vec::new();
        if !reason.contains("confirm") {
            failures.push(format!(
                "skipped, but not for want of the detector's confirmation: {reason}"
            ));
        }
        if events.iter().any(|e| e["kind"] == "remediation") {
            failures.push("the remediator started a remediation on a false alarm".to_owned());
        }
        let snapshots = self.stack.snapshots()?;
        if !snapshots.is_empty() {
            failures.push(format!(
                "{} snapshot(s) taken on a false alarm",
                snapshots.len()
            ));
        }
        match self.healthy() {
            Ok((checked, lost)) => {
                self.report.keys_checked = checked;
                self.report.keys_lost = lost;
                self.tl.mark(&format!(
                    "nothing touched; etcd healthy, {checked} seeded keys intact"
                ));
            }
            Err(why) => failures.push(format!("etcd not healthy after a false alarm: {why}")),
        }
        for failure in failures {
            self.report.fail(&failure);
        }
        self.report.extra = json!({ "skip_reason": reason });
        Ok(())
    }
    /// `leader`, `slow-disk`, `member-down`: an incident a defrag would make worse. The
    /// loop must diagnose it, take a snapshot and escalate, never defragment; etcd is
    /// healthy once the incident ends, with no key lost.
    fn escalation(&mut self) -> Result<()> {
        if self.kind != Kind::SlowDisk && self.cli.members < 3 {
            bail!("{} needs 3 members (--members 3)", self.kind.name());
        }
        let before = self.follower.audit.events.len();
        let mut incident = Incident::start(self)?;
        let deadline = DIAGNOSIS_DEADLINE.as_secs_f64();
        let mut members_down_seen = false;
        let verdict = loop {
            self.observe(POLL)?;
            incident.tick(self)?;
            if self.kind == Kind::MemberDown && !members_down_seen {
                members_down_seen = alert_firing(&self.stack, "EtcdMembersDown");
                if members_down_seen {
                    self.tl.mark("alert EtcdMembersDown firing");
                }
            }
            let finished = self
                .events_since(before)
                .iter()
                .any(|e| e["kind"] == "remediation" && e["step"] == "finished");
            if finished {
                break Ok(());
            }
            if self.tl.now() > deadline {
                break Err(format!(
                    "no remediation finished {deadline:.0}s into the incident: not detected"
                ));
            }
        };
        incident.stop(self)?;
        let mut failures = Vec::new();
        if let Err(why) = verdict {
            failures.push(why);
        }
        if self.kind == Kind::MemberDown && !members_down_seen {
            failures.push("EtcdMembersDown never fired".to_owned());
        }
        let events = self.events_since(before);
        let remediation = |step: &str| {
            events
                .iter()
                .any(|e| e["kind"] == "remediation" && e["step"] == step && e["phase"] == "ok")
        };
        if events.iter().any(|e| {
            e["kind"] == "remediation"
                && (e["step"] == "compact"
                    || e["step"].as_str().is_some_and(|s| s.starts_with("defrag")))
                && e["phase"] != "skipped"
        }) {
            failures.push("a compaction or defrag ran: the wrong medicine".to_owned());
        }
        if !events.is_empty() && events.iter().any(|e| e["kind"] == "remediation") {
            for step in ["snapshot", "escalate"] {
                if !remediation(step) {
                    failures.push(format!("no successful `{step}` in the audit log"));
                }
            }
        }
        // The incident is over: etcd must be healthy again, every key there.
        let settle = self.tl.now() + 90.0;
        loop {
            self.observe(Duration::from_secs(1))?;
            match self.healthy() {
                Ok((checked, lost)) => {
                    self.report.keys_checked = checked;
                    self.report.keys_lost = lost;
                    self.tl.mark(&format!(
                        "incident over; etcd healthy, {checked} seeded keys intact"
                    ));
                    break;
                }
                Err(why) if self.tl.now() > settle => {
                    failures.push(format!("etcd not healthy after the incident: {why}"));
                    break;
                }
                Err(_) => {}
            }
        }
        if self.kind == Kind::MemberDown {
            let resolved_by = self.tl.now() + 60.0;
            while alert_firing(&self.stack, "EtcdMembersDown") {
                if self.tl.now() > resolved_by {
                    failures.push("EtcdMembersDown still firing after the member came back".into());
                    break;
                }
                self.observe(Duration::from_secs(1))?;
            }
            self.tl.mark("EtcdMembersDown resolved");
        }
        if self.report.keys_lost > 0 {
            failures.push(format!("{} seeded keys lost", self.report.keys_lost));
        }
        for failure in failures {
            self.report.fail(&failure);
        }
        Ok(())
    }
}

/// What an escalation scenario does to etcd while it runs, and undoes after.
enum Incident {
    /// Leadership moved to the next member every `LEADER_MOVE_EVERY`.
    Leader { last_move: Option<Instant> },
    /// Every member's syncs delayed by [`SLOW_DISK_DELAY`].
    SlowDisk(SlowDisk),
    /// One member of three stopped.
    MemberDown { index: usize },
}

impl Incident {
    fn start(drill: &mut Drill<'_>) -> Result<Self> {
        Ok(match drill.kind {
            Kind::Leader => {
                drill.tl.incident_started(&format!(
                    "incident: leadership moved every {}s",
                    LEADER_MOVE_EVERY.as_secs()
                ));
                Incident::Leader { last_move: None }
            }
            Kind::SlowDisk => {
                let pids: Vec<u32> = (0..drill.stack.etcd.len())
                    .filter_map(|i| drill.stack.etcd.pid(i))
                    .collect();
                let slow = SlowDisk::attach(&pids, SLOW_DISK_DELAY, &drill.stack.dir)?;
                drill.tl.incident_started(&format!(
                    "incident: every member's fsyncs delayed {} ms (a stalling disk)",
                    SLOW_DISK_DELAY.as_millis()
                ));
                Incident::SlowDisk(slow)
            }
            Kind::MemberDown => {
                let index = drill.stack.etcd.len() - 1;
                drill.stack.etcd.stop_member(index)?;
                let name = drill.stack.etcd.member(index).name.clone();
                drill
                    .tl
                    .incident_started(&format!("incident: {name} stopped (1 of 3: quorum holds)"));
                Incident::MemberDown { index }
            }
            other => bail!("{} is not an escalation scenario", other.name()),
        })
    }

    /// Keeps the incident going (moves the leader when due).
    fn tick(&mut self, drill: &mut Drill<'_>) -> Result<()> {
        if let Incident::Leader { last_move } = self {
            if last_move.is_none_or(|t| t.elapsed() >= LEADER_MOVE_EVERY) {
                *last_move = Some(Instant::now());
                let endpoints = drill.stack.etcd.client_endpoints();
                match drill.rt.block_on(move_leader(&endpoints)) {
                    Ok(line) => drill.tl.mark(&line),
                    Err(err) => drill.tl.mark(&format!("leader not moved: {err:#}")),
                }
            }
        }
        Ok(())
    }

    fn stop(self, drill: &mut Drill<'_>) -> Result<()> {
        match self {
            Incident::Leader { .. } => drill.tl.mark("leader moves stopped"),
            Incident::SlowDisk(mut slow) => {
                slow.stop()?;
                drill.tl.mark("fsyncs at full speed again");
            }
            Incident::MemberDown { index } => {
                drill.stack.etcd.start_member(index)?;
                let name = drill.stack.etcd.member(index).name.clone();
                drill.tl.mark(&format!("{name} started again"));
            }
        }
        Ok(())
    }
}

/// Moves leadership from the current leader to the next member (by ID); bounded.
async fn move_leader(endpoints: &[String]) -> Result<String> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let work = async {
        for endpoint in endpoints {
            let mut client = Client::connect([endpoint], Some(options.clone())).await?;
            let status = client.status().await?;
            let me = status.header().map(|h| h.member_id()).unwrap_or_default();
            if status.leader() != me {
                continue;
            }
            let mut ids: Vec<u64> = client
                .member_list()
                .await?
                .members()
                .iter()
                .map(|m| m.id())
                .collect();
            ids.sort_unstable();
            let next = ids
                .iter()
                .copied()
                .find(|id| *id > me)
                .or_else(|| ids.first().copied())
                .filter(|id| *id != me)
                .context("no other member to move leadership to")?;
            client.move_leader(next).await?;
            return Ok(format!("leadership moved from {me:x} to {next:x}"));
        }
        bail!("no member says it is the leader")
    };
    tokio::time::timeout(Duration::from_secs(8), work)
        .await
        .context("moving the leader timed out")?
}

/// True while Prometheus has `alertname` firing.
fn alert_firing(stack: &Stack, alertname: &str) -> bool {
    dr_testkit::http_get(&format!("{}/api/v1/alerts", stack.prometheus.url()))
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .is_some_and(|answer| {
            answer["data"]["alerts"].as_array().is_some_and(|alerts| {
                alerts
                    .iter()
                    .any(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
            })
        })
}

/// The first remediation's diagnosis, plan and the steps that ran, into the report; and
/// whether the diagnosis is the one the scenario is about.
fn summarise_remediation(report: &mut ScenarioReport, events: &[Value]) {
    let Some(first) = events
        .iter()
        .find(|e| e["kind"] == "remediation" && e["step"] == "diagnosis")
    else {
        return;
    };
    let id = &first["action_id"];
    report.diagnosis = first["detail"]["diagnosis"].as_str().map(str::to_owned);
    report.evidence = first["detail"]["evidence"].clone();
    let of_run = || events.iter().filter(|e| &e["action_id"] == id);
    report.plan = of_run()
        .find(|e| e["step"] == "plan")
        .and_then(|e| e["detail"]["steps"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["step"].as_str().map(str::to_owned))
        .collect();
    report.ran = of_run()
        .filter(|e| e["phase"] == "ok")
        .filter_map(|e| e["step"].as_str().map(str::to_owned))
        .collect();
    let scenario = report.scenario.clone();
    let wanted = [
        Kind::Nospace,
        Kind::RuleOnly,
        Kind::Leader,
        Kind::SlowDisk,
        Kind::MemberDown,
    ]
    .into_iter()
    .find(|k| k.name() == scenario)
    .and_then(Kind::expected_diagnosis);
    if let (Some(wanted), Some(got)) = (wanted, report.diagnosis.clone())
        && wanted != got
    {
        report.fail(&format!("diagnosed {got}, want {wanted}"));
    }
}

/// The repair is done, but the cluster breaks again: a majority of members die and their
/// data dirs are gone (a lost disk). Only the verified snapshot can bring the data back.
fn damage(stack: &mut Stack, tl: &mut Timeline) -> Result<()> {
    let majority = stack.etcd.len() / 2 + 1;
    let mut names = Vec::new();
    for i in 0..majority {
        stack.etcd.kill_member(i)?;
        let data_dir = stack.etcd.member(i).data_dir.clone();
        fs::rename(&data_dir, data_dir.with_extension("lost"))
            .with_context(|| format!("moving {} away", data_dir.display()))?;
        fs::create_dir(&data_dir)?;
        names.push(stack.etcd.member(i).name.clone());
    }
    tl.mark(&format!(
        "damage: {} killed and their data dirs lost ({} of {} members: no quorum)",
        names.join(", "),
        majority,
        stack.etcd.len()
    ));
    Ok(())
}

fn storm_summary(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let Some(summary) = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
    else {
        return "no summary".into();
    };
    format!(
        "{} after {:.1}s, {:.0} MB written",
        summary["stop_reason"].as_str().unwrap_or("?"),
        summary["elapsed_seconds"].as_f64().unwrap_or(f64::NAN),
        summary["bytes_written"].as_f64().unwrap_or(f64::NAN) / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn event(id: &str, step: &str, phase: &str, detail: Value) -> Value {
        json!({"action_id": id, "kind": "remediation", "step": step, "phase": phase, "detail": detail})
    }

    #[test]
    fn the_report_says_the_first_runs_diagnosis_plan_and_what_ran() {
        let cli = Cli::parse_from(["dr-drill", "--bin-dir", "/nowhere"]);
        let events = vec![
            event(
                "a",
                "diagnosis",
                "info",
                json!({"diagnosis": "leader_instability", "evidence": [{"source": "detector", "detail": "x"}]}),
            ),
            event(
                "a",
                "plan",
                "info",
                json!({"steps": [{"step": "snapshot"}, {"step": "escalate"}]}),
            ),
            event("a", "snapshot", "ok", json!({})),
            event("b", "compact", "ok", json!({})),
            event("a", "escalate", "ok", json!({})),
        ];
        let mut report = ScenarioReport::new("leader", &cli, EtcdVersion::V3_4);
        summarise_remediation(&mut report, &events);
        assert_eq!(report.diagnosis.as_deref(), Some("leader_instability"));
        assert_eq!(report.plan, ["snapshot", "escalate"]);
        assert_eq!(report.ran, ["snapshot", "escalate"]);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        // The wrong diagnosis for the incident fails the scenario.
        let mut report = ScenarioReport::new("slow-disk", &cli, EtcdVersion::V3_4);
        summarise_remediation(&mut report, &events);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    }
}
