//! The drill's flags (each also `DR_DRILL_<FLAG>`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dr_common::duration::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "dr-drill",
    version,
    about = "Runs the DR drill: real etcd, Prometheus, Pushgateway, Alertmanager and the etcd-dr \
             services on loopback; injects an incident and follows the loop to a healthy etcd"
)]
pub struct Cli {
    /// Which scenarios to run (comma-separated), each on a fresh stack; `all`: every one.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "all",
        env = "DR_DRILL_SCENARIO"
    )]
    pub scenario: Vec<ScenarioChoice>,
    /// etcd members: 1 or 3.
    #[arg(long, default_value_t = 3, value_parser = members, env = "DR_DRILL_MEMBERS")]
    pub members: usize,
    /// etcd server version: 3.4 (Debian), 3.6 (vendored), 3.5 or 3.7 (ci/install-etcd-versions.sh).
    #[arg(long = "etcd", default_value = "3.4", env = "DR_DRILL_ETCD")]
    pub etcd_version: String,
    /// etcd's --quota-backend-bytes, in MiB: small, so a storm fills it in seconds.
    #[arg(long, default_value_t = 64, env = "DR_DRILL_QUOTA_MIB")]
    pub quota_mib: u64,
    /// Where dr-collector, dr-detector, dr-remediator and dr-loadgen are.
    #[arg(long, env = "DR_DRILL_BIN_DIR")]
    pub bin_dir: PathBuf,
    /// The detector's model directory; default: the one built into dr-detector.
    #[arg(long, env = "DR_DRILL_MODEL")]
    pub model: Option<PathBuf>,
    /// The collector's push interval and Prometheus' scrape and rule interval: the
    /// compressed time step (the model's step must be at least this).
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "DR_DRILL_STEP")]
    pub step: Duration,
    /// Keep etcd's data on the work dir's disk. By default it is on a tmpfs the drill
    /// mounts (needs root), so a stall of the host's disk cannot pass for an incident:
    /// compressed time makes a few seconds of a busy disk read as minutes.
    #[arg(long, env = "DR_DRILL_ETCD_ON_DISK")]
    pub etcd_on_disk: bool,
    /// MTTR above this fails the scenario (the design's bar).
    #[arg(long, default_value = "120s", value_parser = parse_duration, env = "DR_DRILL_MTTR_BUDGET")]
    pub mttr_budget: Duration,
    /// Logs, data and per-scenario reports; wiped per scenario at its start.
    #[arg(long, default_value = "target/drill", env = "DR_DRILL_WORK_DIR")]
    pub work_dir: PathBuf,
    /// The JSON report.
    #[arg(
        long,
        default_value = "target/drill/report.json",
        env = "DR_DRILL_REPORT"
    )]
    pub report: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioChoice {
    All,
    Nospace,
    Restore,
    FalseAlarm,
    Leader,
    SlowDisk,
    MemberDown,
    RuleOnly,
    BusyNormal,
    Disaster,
}

fn members(s: &str) -> Result<usize, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{s}: the drill runs 1 or 3 members")),
    }
}
