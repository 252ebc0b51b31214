//! One scenario on a fresh stack: seed, warm up, inject, follow to a verdict.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dr_testkit::{ChildGuard, EtcdVersion, http_post};
use etcd_client::Client;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::cli::Cli;
use crate::follow::{Follower, get_json, healthy};
use crate::interrupt;
use crate::keys::{self, Seeded};
use crate::report::ScenarioReport;
use crate::stack::{ALERT_NAME, SPACE_STORM, Stack, StackOptions};
use crate::timeline::Timeline;

const SEEDED_KEYS: usize = 1000;
const STEADY_RATE: u32 = 50;
/// The detector's window (30 steps) and its rate ranges, plus a margin.
const SETTLE_STEPS: u32 = 40;
const POLL: Duration = Duration::from_millis(250);
/// Long enough for a window of 30 steps of 2 s, its rate ranges, and the first refresh.
const WARM_UP: Duration = Duration::from_secs(180);
/// The score must stay under the threshold this many polls in a row before the incident.
const CALM_POLLS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nospace,
    Restore,
    FalseAlarm,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nospace => "nospace",
            Kind::Restore => "restore",
            Kind::FalseAlarm => "false-alarm",
        }
    }
}

pub fn run(kind: Kind, cli: &Cli, rt: &Runtime) -> Result<ScenarioReport> {
    let dir = cli.work_dir.join(kind.name());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let version = EtcdVersion::parse(&cli.etcd_version)?;
    let quota = cli.quota_mib * 1024 * 1024;
    let mut tl = Timeline::new(kind.name());
    let mut stack = Stack::start(&StackOptions {
        dir: &dir,
        bin_dir: &cli.bin_dir,
        version,
        members: cli.members,
        quota_bytes: quota,
        step: cli.step,
        model: cli.model.as_deref(),
        alert_rule: true,
    })?;
    tl.mark(&format!(
        "stack up in {}: etcd {} x{} (quota {} MiB), Pushgateway, Prometheus, Alertmanager, collector, detector, remediator",
        dir.display(),
        version.as_str(),
        cli.members,
        cli.quota_mib
    ));
    stack.start_steady_load(STEADY_RATE, 1)?;
    let mut client = rt.block_on(keys::connect(&stack.etcd.client_endpoints()))?;
    let seeded = rt.block_on(keys::seed(&mut client, SEEDED_KEYS))?;
    tl.mark(&format!(
        "seeded {} keys under /drill/seed/ (sha256 {}); steady load 50 ops/s",
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
    stack.close_loop()?;
    tl.mark("detector and remediator started: the loop is closed");
    let mut follower = Follower::default();
    warm_up(
        &mut stack,
        &mut tl,
        rt,
        &mut client,
        &mut follower,
        cli.members,
    )?;
    if stack
        .audit_events()?
        .iter()
        .any(|e| e["kind"] == "remediation")
    {
        report.fail("false positive: the remediator acted on normal load, before the incident");
    }

    let result = match kind {
        Kind::Nospace | Kind::Restore => repair(
            kind,
            cli,
            rt,
            &mut stack,
            &mut tl,
            &mut client,
            &mut follower,
            &seeded,
            &mut report,
        ),
        Kind::FalseAlarm => false_alarm(
            rt,
            &mut stack,
            &mut tl,
            &mut client,
            &mut follower,
            &seeded,
            &mut report,
        ),
    };
    if let Err(err) = result {
        report.fail(&format!("{err:#}"));
    }
    report.peak_score = follower.peak_score;
    report.threshold = follower.threshold;
    report.actions = stack
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] != "scheduled_snapshot")
        .map(|e| json!({"ts": e["ts"], "kind": e["kind"], "step": e["step"], "phase": e["phase"], "detail": e["detail"]}))
        .collect();
    report.passed = report.failures.is_empty();
    tl.mark(if report.passed { "PASSED" } else { "FAILED" });
    report.timeline = tl.entries;
    Ok(report)
}

/// Until the detector scores every member and the score has stayed under the threshold
/// for a while: the model's view of normal.
fn warm_up(
    stack: &mut Stack,
    tl: &mut Timeline,
    rt: &Runtime,
    client: &mut Client,
    follower: &mut Follower,
    members: usize,
) -> Result<()> {
    let deadline = Instant::now() + WARM_UP;
    let mut calm = 0;
    let mut last = String::from("no answer yet");
    let mut scored_once = false;
    while calm < CALM_POLLS {
        interrupt::sleep(Duration::from_secs(1))?;
        follower.poll(stack, tl, rt, client)?;
        match get_json(&format!("{}/score", stack.detector_url)) {
            Some(a) => {
                let instances = a["instances"].as_array().map_or(0, Vec::len);
                let (score, threshold) = (a["score"].as_f64(), a["threshold"].as_f64());
                if !scored_once && instances == members {
                    scored_once = true;
                    tl.mark(&format!(
                        "detector scores all {members} members (score {:.2}, threshold {:.2})",
                        score.unwrap_or(f64::NAN),
                        threshold.unwrap_or(f64::NAN)
                    ));
                }
                match (score, threshold) {
                    (Some(s), Some(t)) if instances == members && s <= t => calm += 1,
                    _ => calm = 0,
                }
                last = a.to_string();
            }
            None => {
                calm = 0;
                if let Ok((status, body)) =
                    dr_testkit::http_get(&format!("{}/score", stack.detector_url))
                {
                    last = format!("{status} {body}");
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the detector did not settle under its threshold within {WARM_UP:?} of normal load; last answer: {}",
                last.chars().take(400).collect::<String>()
            );
        }
    }
    tl.mark("score steady under the threshold: normal load looks normal");
    Ok(())
}

/// `nospace` and `restore`: a big-value storm fills the quota; the loop must repair it.
/// In `restore` the cluster is broken again while the remediator waits to check health.
#[allow(clippy::too_many_arguments)]
fn repair(
    kind: Kind,
    cli: &Cli,
    rt: &Runtime,
    stack: &mut Stack,
    tl: &mut Timeline,
    client: &mut Client,
    follower: &mut Follower,
    seeded: &Seeded,
    report: &mut ScenarioReport,
) -> Result<()> {
    // `restore` stops the storm at 40 MiB, short of NOSPACE: under NOSPACE etcd refuses
    // the lease of the remediator's lock, and a restore never runs without that lock.
    let mut storm_args = SPACE_STORM.to_vec();
    storm_args.push("120s");
    if kind == Kind::Restore {
        storm_args.extend(["--max-bytes", "40MiB"]);
    }
    let mut storm = ChildGuard::spawn(
        "dr-loadgen bigkey",
        stack.loadgen_command(&storm_args),
        &stack.dir.join("loadgen-storm.log"),
        false,
    )?;
    let before = stack.audit_events()?.len();
    tl.incident_started(&format!(
        "incident: big-value storm, 8 keys of 512 KiB rewritten 12 times/s toward the {} MiB quota{}",
        cli.quota_mib,
        if kind == Kind::Restore { " (40 MiB of it)" } else { "" }
    ));
    let budget = cli.mttr_budget.as_secs_f64();
    let hard_deadline = budget + 60.0;
    let mut storm_reported = false;
    let mut damaged = false;
    loop {
        interrupt::sleep(POLL)?;
        follower.poll(stack, tl, rt, client)?;
        if !storm_reported && !storm.is_running() {
            storm_reported = true;
            tl.mark(&format!("storm ended: {}", storm_summary(storm.log_path())));
        }
        let events: Vec<Value> = stack.audit_events()?.split_off(before);
        let started_wait = events.iter().any(|e| {
            e["kind"] == "remediation" && e["step"] == "wait_health" && e["phase"] == "start"
        });
        if kind == Kind::Restore && started_wait && !damaged {
            damaged = true;
            damage(stack, tl)?;
        }
        let finished = events
            .iter()
            .any(|e| e["kind"] == "remediation" && e["step"] == "finished");
        if finished {
            match healthy(stack, rt, client, seeded) {
                Ok((checked, lost)) => {
                    let t = tl.now();
                    report.mttr_seconds = Some((t * 10.0).round() / 10.0);
                    report.keys_checked = checked;
                    report.keys_lost = lost;
                    tl.mark(&format!(
                        "etcd healthy: every member healthy, no alarm, writable, {checked} seeded keys intact (MTTR {t:.1}s)"
                    ));
                    break;
                }
                Err(why) if tl.now() > hard_deadline => {
                    bail!("not healthy {hard_deadline:.0}s after the incident started: {why}");
                }
                Err(_) => {}
            }
        } else if tl.now() > hard_deadline {
            bail!("no finished remediation {hard_deadline:.0}s after the incident started");
        }
    }
    let _ = storm.stop();
    if kind == Kind::Nospace && !follower.nospace_seen {
        report.fail("the storm never raised NOSPACE: the incident did not happen");
    }
    let events: Vec<Value> = stack.audit_events()?.split_off(before);
    let ok = |step: &str| {
        events
            .iter()
            .any(|e| e["kind"] == "remediation" && e["step"] == step && e["phase"] == "ok")
    };
    let required: &[&str] = match kind {
        Kind::Nospace => &["snapshot", "compact", "disarm_nospace"],
        _ => &["snapshot", "compact"],
    };
    for step in required {
        if !ok(step) {
            report.fail(&format!("no successful `{step}` in the audit log"));
        }
    }
    let defrags = events
        .iter()
        .filter(|e| {
            e["kind"] == "remediation"
                && e["phase"] == "ok"
                && e["step"].as_str().is_some_and(|s| s.starts_with("defrag"))
        })
        .count();
    if defrags != cli.members {
        report.fail(&format!(
            "{defrags} members defragmented, want {}",
            cli.members
        ));
    }
    if kind == Kind::Restore && !ok("restore_if_unavailable") {
        report.fail("the remediator did not restore the snapshot");
    }
    if let Some(mttr) = report.mttr_seconds
        && mttr > budget
    {
        report.fail(&format!("MTTR {mttr:.1}s is over the {budget:.0}s budget"));
    }
    if report.keys_lost > 0 {
        report.fail(&format!("{} seeded keys lost", report.keys_lost));
    }
    Ok(())
}

/// The repair is done, but the cluster breaks again: a majority of members die and their
/// data dirs are gone (a lost disk). Only the verified snapshot can bring the data back.
fn damage(stack: &mut Stack, tl: &mut Timeline) -> Result<()> {
    let majority = stack.etcd.len() / 2 + 1;
    let mut names = Vec::new();
    for i in 0..majority {
        stack.etcd.stop_member(i)?;
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

/// An alert fires that the detector does not back (a static rule misfiring, a person
/// testing the route): the remediator must ask, hear no, and touch nothing.
fn false_alarm(
    rt: &Runtime,
    stack: &mut Stack,
    tl: &mut Timeline,
    client: &mut Client,
    follower: &mut Follower,
    seeded: &Seeded,
    report: &mut ScenarioReport,
) -> Result<()> {
    let revision_before = rt.block_on(client.status())?.header().map(|h| h.revision());
    let alert = json!([{
        "labels": {"alertname": ALERT_NAME, "severity": "critical", "instance": "drill-false-alarm"},
        "annotations": {"summary": "fired by the drill with etcd healthy"},
    }]);
    let before = stack.audit_events()?.len();
    let (status, body) = http_post(
        &format!("{}/api/v2/alerts", stack.alertmanager.url()),
        "application/json",
        alert.to_string().as_bytes(),
    )?;
    if status != 200 {
        bail!("Alertmanager refused the alert: {status} {body}");
    }
    tl.incident_started(
        "incident: an EtcdAnomalyScoreHigh alert sent to Alertmanager while etcd is healthy",
    );
    let mut skip: Option<String> = None;
    let mut quiet_until: Option<f64> = None;
    loop {
        interrupt::sleep(POLL)?;
        follower.poll(stack, tl, rt, client)?;
        if skip.is_none() {
            skip = stack
                .audit_events()?
                .split_off(before)
                .iter()
                .find(|e| e["kind"] == "webhook" && e["phase"] == "skipped")
                .and_then(|e| e["detail"].as_str().map(str::to_owned));
            if skip.is_some() {
                // Keep watching: nothing may start afterwards either.
                quiet_until = Some(tl.now() + 5.0);
            }
        }
        if quiet_until.is_some_and(|q| tl.now() > q) {
            break;
        }
        if tl.now() > 60.0 {
            bail!("the remediator recorded no decision on the webhook within 60s");
        }
    }
    let reason = skip.unwrap_or_default();
    if !reason.contains("confirm") {
        report.fail(&format!(
            "skipped, but not for want of the detector's confirmation: {reason}"
        ));
    }
    let events = stack.audit_events()?.split_off(before);
    if events.iter().any(|e| e["kind"] == "remediation") {
        report.fail("the remediator started a remediation on a false alarm");
    }
    let snapshots = stack.snapshots()?;
    if !snapshots.is_empty() {
        report.fail(&format!(
            "{} snapshot(s) taken on a false alarm",
            snapshots.len()
        ));
    }
    match healthy(stack, rt, client, seeded) {
        Ok((checked, lost)) => {
            report.keys_checked = checked;
            report.keys_lost = lost;
            tl.mark(&format!(
                "nothing touched; etcd healthy, {checked} seeded keys intact"
            ));
        }
        Err(why) => report.fail(&format!("etcd not healthy after a false alarm: {why}")),
    }
    let revision_after = rt.block_on(client.status())?.header().map(|h| h.revision());
    report.extra = json!({"revision_before": revision_before, "revision_after": revision_after, "skip_reason": reason});
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
