//! The labelled dataset: the real stack (3 etcd members, collector, Pushgateway,
//! Prometheus) plays a schedule of normal load with injected incidents, then the
//! detector's own `export` pulls its feature queries from Prometheus, and the steps of
//! each incident get label 1. Time is compressed: one step of `--step` stands in for a
//! minute of a real cluster.
//!
//! Normal: steady Kubernetes-like load whose rate changes every 30 s, compaction every
//! 60 s (as the API server does), and now and then a maintenance defrag (masked, as the
//! remediator's own defrags are). Incidents, in turn: a big-value storm to NOSPACE then
//! the repair; churn then compaction (fragmentation) then defrag; leader churn (leadership
//! moved every 2 s); a slow disk (every member's syncs delayed, `dr_testkit::SlowDisk`).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use dr_common::duration::parse_duration;
use dr_testkit::{ChildGuard, EtcdVersion, SlowDisk};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions};
use tokio::runtime::Runtime;

use crate::interrupt;
use crate::stack::{SPACE_STORM, Stack, StackOptions};

#[derive(Debug, Parser)]
#[command(
    name = "dr-dataset",
    version,
    about = "Records a labelled etcd dataset: real stack, normal load, injected incidents, the detector's feature queries"
)]
pub struct Args {
    /// The CSV to write (`timestamp,<features>,defrag_inflight,label`).
    #[arg(long, default_value = "data/etcd-dataset.csv")]
    pub out: PathBuf,
    /// Steps to record (1,440 = a day of minutes).
    #[arg(long, default_value_t = 1800)]
    pub steps: u64,
    /// The compressed time step: collector, scrape and export interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub step: Duration,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long = "etcd", default_value = "3.4")]
    pub etcd_version: String,
    /// etcd's --quota-backend-bytes, in MiB (the drill's default).
    #[arg(long, default_value_t = 64)]
    pub quota_mib: u64,
    /// etcd members: 1 or 3 (one member has no leader to move: no `leader` incidents).
    #[arg(long, default_value_t = 3, value_parser = members)]
    pub members: usize,
    /// The normal load's rate, a factor on the default 30-120 ops/s (0.3 to 10 are the
    /// clusters the detector must hold on).
    #[arg(long, default_value_t = 1.0, value_parser = load_scale)]
    pub load_scale: f64,
    /// The incidents to play in turn, comma-separated (`space,churn,leader,disk`), or
    /// `none` for a recording of normal operation only.
    #[arg(long, default_value = "space,churn,leader,disk", value_parser = incidents)]
    pub incidents: IncidentList,
    /// Also write every other member's rows, to `<out stem>.<member>.csv` (the same
    /// labels: an incident is the cluster's).
    #[arg(long)]
    pub all_members: bool,
    /// Where dr-collector, dr-detector and dr-loadgen are.
    #[arg(long)]
    pub bin_dir: PathBuf,
    #[arg(long, default_value = "target/dataset")]
    pub work_dir: PathBuf,
}

/// Steps after an incident's end that still show it: the features' rate windows look
/// back four steps.
const TAIL_STEPS: f64 = 4.0;

fn members(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(n @ (1 | 3)) => Ok(n),
        _ => Err(format!("{s}: the harness runs 1 or 3 members")),
    }
}

fn load_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.05..=50.0).contains(&f) => Ok(f),
        _ => Err(format!("{s}: a factor from 0.05 to 50")),
    }
}

/// The incidents a recording plays, in turn.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentList(Vec<Incident>);

fn incidents(s: &str) -> Result<IncidentList, String> {
    if s == "none" {
        return Ok(IncidentList(Vec::new()));
    }
    s.split(',')
        .map(|k| match k.trim() {
            "space" => Ok(Incident::Space),
            "churn" => Ok(Incident::Churn),
            "leader" => Ok(Incident::Leader),
            "disk" => Ok(Incident::Disk),
            other => Err(format!(
                "{other}: incidents are space, churn, leader and disk (or none)"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(IncidentList)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Incident {
    Space,
    Churn,
    Leader,
    Disk,
}

impl Incident {
    fn name(self) -> &'static str {
        match self {
            Incident::Space => "space",
            Incident::Churn => "churn",
            Incident::Leader => "leader",
            Incident::Disk => "disk",
        }
    }
}

/// A small deterministic generator: the schedule replays with the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Recorder<'a> {
    stack: &'a mut Stack,
    rt: &'a Runtime,
    client: Client,
    rng: Rng,
    load_scale: f64,
    quota_mib: u64,
    started: Instant,
    last_compaction: Instant,
    /// `(kind, start, end)` in unix seconds.
    incidents: Vec<(&'static str, f64, f64)>,
    maintenance: usize,
}

pub fn run(args: Args) -> Result<()> {
    if args.members == 1 && args.incidents.0.contains(&Incident::Leader) {
        bail!("one member has no leader to move: leave `leader` out of --incidents");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    interrupt::install(&rt)?;
    let dir = args.work_dir.clone();
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let bin_dir = args
        .bin_dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", args.bin_dir.display()))?;
    let mut stack = Stack::start(&StackOptions {
        dir: &dir,
        bin_dir: &bin_dir,
        version: EtcdVersion::parse(&args.etcd_version)?,
        members: args.members,
        quota_bytes: args.quota_mib * 1024 * 1024,
        step: args.step,
        model: None,
        alert_rule: false,
        etcd_on_tmpfs: false,
    })?;
    let client = rt.block_on(crate::keys::connect(&stack.etcd.client_endpoints()))?;
    let total = Duration::from_secs_f64(args.steps as f64 * args.step.as_secs_f64());
    // The rate windows need a few scrapes before the first exported step.
    let warm_up = Duration::from_secs(15);
    let mut rec = Recorder {
        stack: &mut stack,
        rt: &rt,
        client,
        rng: Rng(args.seed.max(1)),
        load_scale: args.load_scale,
        quota_mib: args.quota_mib,
        started: Instant::now(),
        last_compaction: Instant::now(),
        incidents: Vec::new(),
        maintenance: 0,
    };
    rec.steady()?;
    rec.normal(warm_up)?;
    let start = unix_now();
    let end_at = Instant::now() + total;
    let kinds = &args.incidents.0;
    let mut n = 0;
    while !kinds.is_empty() && Instant::now() + Duration::from_secs(90) < end_at {
        let calm = Duration::from_secs(rec.rng.between(50, 100));
        let maintain = n % 3 == 2;
        rec.normal(calm / 2)?;
        if maintain {
            rec.maintenance_defrag()?;
        }
        rec.normal(calm / 2)?;
        let kind = kinds[n % kinds.len()];
        rec.incident(kind)?;
        n += 1;
    }
    let left = end_at.saturating_duration_since(Instant::now());
    rec.normal(left)?;
    let end = unix_now();
    let incidents = rec.incidents.clone();
    let maintenance = rec.maintenance;
    drop(rec);

    let step = args.step.as_secs_f64();
    let member_count = if args.all_members { args.members } else { 1 };
    let (mut rows, mut incident_rows) = (0, 0);
    for i in 0..member_count {
        let member = &stack.etcd.member(i).name;
        let raw = dir.join(format!("export-{member}.csv"));
        let status = Command::new(bin_dir.join("dr-detector"))
            .arg("export")
            .arg("--prometheus-url")
            .arg(stack.prometheus.url())
            .arg("--start")
            .arg(format!("{start:.0}"))
            .arg("--end")
            .arg(format!("{end:.0}"))
            .arg("--step")
            .arg(format!("{}s", args.step.as_secs()))
            .arg("--instance")
            .arg(member)
            .arg("--out")
            .arg(&raw)
            .status()
            .context("running dr-detector export")?;
        if !status.success() {
            bail!("dr-detector export failed for {member} ({status})");
        }
        let csv = fs::read_to_string(&raw)?;
        let (labelled, n, positive) = label(&csv, &incidents, TAIL_STEPS * step)?;
        let out = if i == 0 {
            args.out.clone()
        } else {
            member_path(&args.out, member)
        };
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&out, labelled).with_context(|| format!("writing {}", out.display()))?;
        rows += n;
        incident_rows += positive;
    }
    let schedule: Vec<String> = incidents
        .iter()
        .map(|(k, s, e)| format!("{k},{:.0},{:.0}", s - start, e - start))
        .collect();
    fs::write(
        args.out.with_extension("incidents.csv"),
        format!(
            "kind,start_offset_seconds,end_offset_seconds\n{}\n",
            schedule.join("\n")
        ),
    )?;
    println!(
        "wrote {} ({member_count} member(s), {rows} rows, {incident_rows} labelled incident steps, {} incidents, {maintenance} maintenance defrags)",
        args.out.display(),
        incidents.len()
    );
    Ok(())
}

/// `data/x.csv` and `etcd-1` give `data/x.etcd-1.csv`.
fn member_path(out: &std::path::Path, member: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.{member}.csv"))
}

/// Sets the label of every row whose timestamp falls in an incident (plus `tail`).
fn label(csv: &str, incidents: &[(&str, f64, f64)], tail: f64) -> Result<(String, usize, usize)> {
    let mut out = String::with_capacity(csv.len());
    let mut lines = csv.lines();
    let header = lines.next().context("the export is empty")?;
    if !header.ends_with(",label") {
        bail!("unexpected export header: {header}");
    }
    out.push_str(header);
    out.push('\n');
    let (mut rows, mut positive) = (0, 0);
    for line in lines {
        let (ts, _) = line.split_once(',').context("a row without columns")?;
        let t: f64 = ts.parse().with_context(|| format!("timestamp {ts:?}"))?;
        let body = line.rsplit_once(',').map_or(line, |(b, _)| b);
        let hit = incidents.iter().any(|(_, s, e)| t >= *s && t <= e + tail);
        out.push_str(body);
        out.push_str(if hit { ",1\n" } else { ",0\n" });
        rows += 1;
        positive += usize::from(hit);
    }
    Ok((out, rows, positive))
}

impl Recorder<'_> {
    fn log(&self, what: &str) {
        println!(
            "[dataset] {:6.0}s {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn steady(&mut self) -> Result<()> {
        let rate = ((self.rng.between(30, 120) as f64 * self.load_scale).round() as u32).max(1);
        let seed = self.rng.next();
        self.stack.start_steady_load(rate, seed)
    }

    /// Normal operation for `d`: the load's rate drifts, compaction every 60 s. Fails
    /// when etcd raises an alarm meanwhile: steps labelled normal must be normal.
    fn normal(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        let mut next_rate = Instant::now() + Duration::from_secs(30);
        let mut next_alarm_check = Instant::now();
        while Instant::now() < until {
            interrupt::sleep(Duration::from_millis(500))?;
            if Instant::now() >= next_rate {
                self.steady()?;
                next_rate = Instant::now() + Duration::from_secs(30);
            }
            if self.last_compaction.elapsed() >= Duration::from_secs(60) {
                self.compact()?;
            }
            if Instant::now() >= next_alarm_check {
                self.refuse_alarm_in_normal()?;
                next_alarm_check = Instant::now() + Duration::from_secs(2);
            }
        }
        Ok(())
    }

    /// An alarm under normal load is an incident nobody labelled: NOSPACE when the load
    /// writes more between two compactions than the quota holds (x5 on 64 MiB did).
    fn refuse_alarm_in_normal(&mut self) -> Result<()> {
        let client = &mut self.client;
        let alarms = self
            .rt
            .block_on(client.alarm(AlarmAction::Get, AlarmType::None, None))?;
        if let Some(alarm) = alarms.alarms().first() {
            bail!(
                "etcd raised {} in steps labelled normal (load x{}, quota {} MiB): they \
                 would hold an incident nobody labelled; record with a bigger --quota-mib \
                 or a smaller --load-scale",
                alarm.alarm().as_str_name(),
                self.load_scale,
                self.quota_mib
            );
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        self.last_compaction = Instant::now();
        let client = &mut self.client;
        self.rt.block_on(async {
            let rev = client.status().await?.header().map_or(0, |h| h.revision());
            match client
                .compact(rev, Some(CompactionOptions::new().with_physical()))
                .await
            {
                // Nothing written since the last compaction (a quiet member right after
                // an incident's): it is compacted to here already.
                Err(etcd_client::Error::GRpcStatus(status))
                    if status
                        .message()
                        .contains("required revision has been compacted") =>
                {
                    Ok(())
                }
                other => other.map(|_| ()),
            }
        })?;
        Ok(())
    }

    /// Defrag every member, as the remediator does (the detector masks these steps).
    fn defrag_all(&mut self) -> Result<()> {
        for endpoint in self.stack.etcd.client_endpoints() {
            self.rt.block_on(async {
                let mut c = crate::keys::connect(std::slice::from_ref(&endpoint)).await?;
                c.defragment().await.context("defrag")?;
                anyhow::Ok(())
            })?;
        }
        Ok(())
    }

    fn maintenance_defrag(&mut self) -> Result<()> {
        self.compact()?;
        self.defrag_all()?;
        self.maintenance += 1;
        self.log("maintenance: compact + defrag (normal, masked)");
        Ok(())
    }

    fn incident(&mut self, kind: Incident) -> Result<()> {
        let start = unix_now();
        self.log(&format!("incident {} starts", kind.name()));
        match kind {
            Incident::Space => self.space()?,
            Incident::Churn => self.churn()?,
            Incident::Leader => self.leader()?,
            Incident::Disk => self.disk()?,
        }
        let end = unix_now();
        self.log(&format!(
            "incident {} over ({:.0}s)",
            kind.name(),
            end - start
        ));
        self.incidents.push((kind.name(), start, end));
        Ok(())
    }

    fn loadgen(&mut self, name: &str, args: &[&str]) -> Result<ChildGuard> {
        let cmd = self.stack.loadgen_command(args);
        ChildGuard::spawn(
            name,
            cmd,
            &self.stack.dir.join(format!("{name}.log")),
            false,
        )
    }

    fn wait_exit(guard: &mut ChildGuard, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        while guard.is_running() && Instant::now() < until {
            interrupt::sleep(Duration::from_millis(250))?;
        }
        guard.stop()?;
        Ok(())
    }

    /// A storm of overwritten big values until NOSPACE, a while read-only, then the repair.
    fn space(&mut self) -> Result<()> {
        let mut args = SPACE_STORM.to_vec();
        args.push("60s");
        let mut storm = self.loadgen("storm", &args)?;
        Self::wait_exit(&mut storm, Duration::from_secs(65))?;
        let read_only = Duration::from_secs(self.rng.between(5, 20));
        // No compaction while the incident lasts: nobody maintains a cluster mid-incident.
        interrupt::sleep(read_only)?;
        self.compact()?;
        self.defrag_all()?;
        let client = &mut self.client;
        self.rt.block_on(async {
            let alarms = client
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await?;
            for a in alarms.alarms() {
                let mut opts = AlarmOptions::new();
                opts.with_member(a.member_id());
                client
                    .alarm(AlarmAction::Deactivate, a.alarm(), Some(opts))
                    .await?;
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        Ok(())
    }

    /// The same keys rewritten fast, then compaction: free pages (fragmentation) until
    /// a defrag returns them.
    fn churn(&mut self) -> Result<()> {
        let secs = self.rng.between(20, 30).to_string();
        let duration = format!("{secs}s");
        let mut churn = self.loadgen(
            "churn",
            &[
                "churn",
                "--rate",
                "1000",
                "--keys",
                "10",
                "--value-size",
                "1KiB",
                "--duration",
                &duration,
            ],
        )?;
        Self::wait_exit(&mut churn, Duration::from_secs(40))?;
        self.compact()?;
        let fragmented = Duration::from_secs(self.rng.between(10, 20));
        interrupt::sleep(fragmented)?;
        self.defrag_all()
    }

    /// Leadership moved to another member every 2 s.
    fn leader(&mut self) -> Result<()> {
        let moves = self.rng.between(6, 10);
        for _ in 0..moves {
            let pick = self.rng.next() as usize;
            let c = &mut self.client;
            self.rt.block_on(async {
                let status = c.status().await?;
                let leader = status.leader();
                let members = c.member_list().await?;
                let others: Vec<u64> = members
                    .members()
                    .iter()
                    .map(|m| m.id())
                    .filter(|id| *id != leader)
                    .collect();
                let Some(target) = others.get(pick % others.len().max(1)).copied() else {
                    bail!("no other member to move leadership to");
                };
                // MoveLeader must reach the leader itself.
                let leader_url = members
                    .members()
                    .iter()
                    .find(|m| m.id() == leader)
                    .and_then(|m| m.client_urls().first().cloned())
                    .context("the leader has no client URL")?;
                let mut l = crate::keys::connect(&[leader_url]).await?;
                l.move_leader(target).await.context("move leader")?;
                anyhow::Ok(())
            })?;
            interrupt::sleep(Duration::from_secs(2))?;
        }
        Ok(())
    }

    /// Every member's fsyncs and fdatasyncs delayed (150-800 ms, varying per incident)
    /// for 25-40 s, as when the disk under a cluster's nodes stalls: WAL fsync and backend
    /// commit latencies jump, and below about 500 ms the mixin's fsync rule cannot see it.
    fn disk(&mut self) -> Result<()> {
        let secs = self.rng.between(25, 40);
        let delay = Duration::from_millis(self.rng.between(150, 800));
        let pids: Vec<u32> = (0..self.stack.etcd.len())
            .filter_map(|i| self.stack.etcd.pid(i))
            .collect();
        let mut slow = SlowDisk::attach(&pids, delay, &self.stack.dir)?;
        self.log(&format!("disk: syncs delayed {} ms", delay.as_millis()));
        let waited = interrupt::sleep(Duration::from_secs(secs));
        slow.stop()?;
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_incident_rows_and_their_tail() {
        let csv = "timestamp,a,defrag_inflight,label\n100,1,0,0\n101,1,0,0\n105,1,0,0\n106,1,0,0\n";
        let (out, rows, positive) = label(csv, &[("space", 101.0, 101.5)], 4.0).unwrap();
        assert_eq!(rows, 4);
        assert_eq!(positive, 2);
        assert_eq!(
            out,
            "timestamp,a,defrag_inflight,label\n100,1,0,0\n101,1,0,1\n105,1,0,1\n106,1,0,0\n"
        );
        assert!(label("timestamp,a\n1,2\n", &[], 0.0).is_err());
    }

    #[test]
    fn flags_take_incidents_members_and_load_scale() {
        assert_eq!(
            incidents("space,disk").unwrap(),
            IncidentList(vec![Incident::Space, Incident::Disk])
        );
        assert_eq!(incidents("none").unwrap(), IncidentList(Vec::new()));
        assert!(incidents("space,fire").unwrap_err().contains("fire"));
        assert_eq!(members("1"), Ok(1));
        assert!(members("5").is_err());
        assert_eq!(load_scale("0.3"), Ok(0.3));
        assert!(load_scale("0").is_err());
        assert!(load_scale("x").is_err());
        assert_eq!(
            member_path(std::path::Path::new("data/x.csv"), "etcd-1"),
            PathBuf::from("data/x.etcd-1.csv")
        );
    }

    #[test]
    fn schedule_replays_with_the_seed() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        let xs: Vec<u64> = (0..5).map(|_| a.between(50, 100)).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.between(50, 100)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (50..=100).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }
}
