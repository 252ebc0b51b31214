//! The DR drill: the whole etcd-dr loop on the real stack. Each scenario starts its own
//! etcd, Pushgateway, Prometheus (alert rule on the anomaly score), Alertmanager (routing
//! to the remediator's webhook with a bearer token) and the four services, injects an
//! incident, follows the loop on a timeline, and checks the result from outside.
#![forbid(unsafe_code)]

pub mod cli;
pub mod dataset;
pub mod disaster;
pub mod follow;
pub mod interrupt;
pub mod keys;
pub mod report;
pub mod scenario;
pub mod stack;
pub mod timeline;

use anyhow::Context;

use cli::{Cli, ScenarioChoice};
use report::{Combined, ScenarioReport};
use scenario::Kind;

/// Runs the chosen scenarios and writes the report; `Ok(passed)`.
pub fn run(mut cli: Cli) -> anyhow::Result<bool> {
    // The services run in the scenario's directory: relative paths would break.
    cli.bin_dir = absolute(&cli.bin_dir)?;
    if let Some(model) = &cli.model {
        cli.model = Some(absolute(model)?);
    }
    let mut kinds = Vec::new();
    for choice in &cli.scenario {
        let chosen = match choice {
            ScenarioChoice::All => vec![
                Kind::Nospace,
                Kind::Restore,
                Kind::FalseAlarm,
                Kind::BusyNormal,
                Kind::RuleOnly,
                Kind::MemberDown,
                Kind::Leader,
                Kind::SlowDisk,
                Kind::Disaster,
            ],
            ScenarioChoice::Nospace => vec![Kind::Nospace],
            ScenarioChoice::Restore => vec![Kind::Restore],
            ScenarioChoice::FalseAlarm => vec![Kind::FalseAlarm],
            ScenarioChoice::Leader => vec![Kind::Leader],
            ScenarioChoice::SlowDisk => vec![Kind::SlowDisk],
            ScenarioChoice::MemberDown => vec![Kind::MemberDown],
            ScenarioChoice::RuleOnly => vec![Kind::RuleOnly],
            ScenarioChoice::BusyNormal => vec![Kind::BusyNormal],
            ScenarioChoice::Disaster => vec![Kind::Disaster],
        };
        for kind in chosen {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    interrupt::install(&rt)?;
    std::fs::create_dir_all(&cli.work_dir)?;
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for kind in kinds {
        interrupt::check()?;
        // A scenario that cannot even set up is a failed scenario, not the end of the drill.
        let report = match scenario::run(kind, &cli, &rt) {
            Ok(report) => report,
            Err(err) if interrupt::is_interrupted(&err) => return Err(err),
            Err(err) => {
                let version = dr_testkit::EtcdVersion::parse(&cli.etcd_version)?;
                let mut report = ScenarioReport::new(kind.name(), &cli, version);
                report.fail(&format!("{err:#}"));
                report
            }
        };
        let path = cli.work_dir.join(format!("{}.json", kind.name()));
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        reports.push(report);
    }
    let text = if reports.len() == 1 {
        serde_json::to_string_pretty(&reports[0])?
    } else {
        serde_json::to_string_pretty(&Combined::of(&reports))?
    };
    if let Some(parent) = cli.report.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&cli.report, text + "\n")
        .with_context(|| format!("writing {}", cli.report.display()))?;
    println!();
    for r in &reports {
        println!(
            "{:<12} {}  MTTR {:>6}{}  keys {}/{} intact  {}",
            r.scenario,
            if r.passed { "PASSED" } else { "FAILED" },
            r.mttr_seconds.map_or("-".into(), |m| format!("{m:.1}s")),
            r.rpo_seconds
                .map_or(String::new(), |s| format!("  RPO {s:.1}s")),
            r.keys_checked - r.keys_lost,
            r.keys_checked,
            r.failures.join("; ")
        );
    }
    println!("report: {}", cli.report.display());
    Ok(reports.iter().all(|r| r.passed))
}

fn absolute(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    path.canonicalize()
        .with_context(|| format!("{} does not exist", path.display()))
}
