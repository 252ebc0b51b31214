//! Snapshots proven restorable, against a real etcd, a real S3 server (moto) on loopback
//! and a local-dir store: a good snapshot is restored into a throwaway etcd and its
//! revision and keys match; a corrupt object is refused and the previous snapshot proven
//! instead; a restored etcd that differs from the recorded status fails the proof; a
//! second store receives every snapshot and its loss fails nothing of the first's;
//! retention by age and count in the store; `POST /proof` on the service; and a remediator
//! killed mid-upload leaves nothing that is taken for a snapshot.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dr_remediator::actions::compression::Compression;
use dr_remediator::actions::proof::{self, ProofError, ProofSettings, Prover};
use dr_remediator::actions::retention::Retention;
use dr_remediator::actions::snapshot::{SnapshotInfo, SnapshotPolicy, verify_file};
use dr_remediator::actions::store::{SECONDARY, SnapshotStore, UploadOutcome, UploadRetry};
use dr_remediator::audit::{Audit, Phase};
use dr_remediator::etcd::EtcdAccess;
use dr_testkit::s3::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use dr_testkit::{EtcdCluster, EtcdOptions, S3Server, http_put};
use ring::digest::{SHA256, digest};
use support::runtime;

const BUCKET: &str = "etcd-dr";

fn s3_server() -> S3Server {
    let server = S3Server::start().unwrap();
    server.create_bucket(BUCKET).unwrap();
    server
}

fn s3_options(server: &S3Server) -> Vec<(&'static str, String)> {
    vec![
        ("aws_endpoint", server.url()),
        ("aws_allow_http", "true".to_owned()),
        ("aws_access_key_id", ACCESS_KEY_ID.to_owned()),
        ("aws_secret_access_key", SECRET_ACCESS_KEY.to_owned()),
        ("aws_region", REGION.to_owned()),
    ]
}

fn s3_store(server: &S3Server, prefix: &str, retain: usize) -> SnapshotStore {
    let options = s3_options(server);
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut store =
        SnapshotStore::open(&format!("s3://{BUCKET}/{prefix}"), retain, &options).unwrap();
    store.retry = quick_retry();
    store
}

fn quick_retry() -> UploadRetry {
    UploadRetry {
        attempts: 2,
        first_wait: Duration::from_millis(200),
        max_wait: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(60),
    }
}

fn settings(scratch: &Path) -> ProofSettings {
    ProofSettings {
        interval: None,
        etcd_bin: dr_testkit::EtcdVersion::V3_4.binary().unwrap(),
        restore_bin: dr_testkit::etcdctl_binary().unwrap(),
        scratch: scratch.to_path_buf(),
        timeout: Duration::from_secs(180),
    }
}

fn access(etcd: &EtcdCluster) -> EtcdAccess {
    EtcdAccess {
        endpoints: etcd.client_endpoints(),
        tls: None,
        timeout: Duration::from_secs(5),
        default_quota_bytes: 2 << 30,
    }
}

/// Snapshots into `dir`, uploaded before `take` returns, to `store` (and `secondary`).
fn policy(
    dir: &Path,
    store: Arc<SnapshotStore>,
    secondary: Option<Arc<SnapshotStore>>,
) -> SnapshotPolicy {
    SnapshotPolicy {
        dir: dir.to_path_buf(),
        retention: Retention::count(10),
        timeout: Duration::from_secs(60),
        store: Some(store),
        secondary,
        upload_inline: true,
    }
}

async fn put_keys(etcd: &EtcdCluster, prefix: &str, n: usize) {
    let mut client = support::client(&etcd.client_endpoints()).await;
    for i in 0..n {
        client
            .put(format!("{prefix}/{i:05}"), vec![b'v'; 100], None)
            .await
            .unwrap();
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn uploaded(outcome: &Option<UploadOutcome>) -> bool {
    matches!(outcome, Some(UploadOutcome::Uploaded(_)))
}

fn taken_seconds(info: &SnapshotInfo) -> f64 {
    let name = file_name(&info.path);
    dr_remediator::actions::retention::taken_millis(&name).unwrap() as f64 / 1000.0
}

/// One etcd 3.4 member, an S3 server with a store on it (the newest 5 kept), the local
/// snapshot dir and a proof's scratch dir.
struct Setup {
    etcd: EtcdCluster,
    server: S3Server,
    store: Arc<SnapshotStore>,
    local: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Setup {
    fn new(prefix: &str) -> Setup {
        let server = s3_server();
        Setup {
            etcd: EtcdCluster::start(EtcdOptions::default()).unwrap(),
            store: Arc::new(s3_store(&server, prefix, 5)),
            server,
            local: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        }
    }
}

#[test]
fn a_good_snapshot_is_proven_restorable() {
    // The server bound, not `_`: unbound, it would stop at the end of this statement.
    let Setup {
        etcd,
        server: _server,
        store,
        local,
        scratch,
    } = Setup::new("proof");
    let rt = runtime();
    rt.block_on(async {
        put_keys(&etcd, "a", 500).await;
        let info = policy(local.path(), store.clone(), None)
            .take(&access(&etcd))
            .await
            .unwrap();
        assert!(uploaded(&info.upload), "{info:?}");
        assert!(info.keys.unwrap() >= 500, "{info:?}");
        // Written after the snapshot: not in it, and the proof must not see them.
        put_keys(&etcd, "after", 50).await;

        let started = Instant::now();
        let report = proof::prove(&store, &settings(scratch.path()), "t1")
            .await
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "proof of a {} byte snapshot: {seconds:.2} s (download {:.2} s, restore {:.2} s)",
            report.bytes, report.download_seconds, report.restore_seconds
        );
        assert_eq!(report.name, file_name(&info.path));
        assert_eq!(report.store, "primary");
        assert_eq!(report.sha256, {
            let bytes = std::fs::read(&info.path).unwrap();
            digest(&SHA256, &bytes)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        let recorded = report.recorded.unwrap();
        assert_eq!(recorded.revision, info.revision);
        assert_eq!(Some(recorded.keys), info.keys);
        assert_eq!(report.restored_keys, recorded.keys);
        assert_eq!(report.restored_revision, report.revision);
        assert!(report.revision >= info.revision);
        assert!(report.refused.is_empty());
        assert_eq!(store.metrics.proofs("ok"), 1);
        assert_eq!(store.metrics.proofs("failed"), 0);
        assert_eq!(store.metrics.last_proven(), taken_seconds(&info));
    });
    // The throwaway etcd and everything it wrote are gone.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// The image's pair (etcdctl and etcd 3.4, from Debian) proves snapshots of newer
/// clusters too: the restore rewrites the membership 3.4 reads, and the keys are the same
/// bolt database.
#[test]
fn snapshots_of_etcd_3_5_to_3_7_are_proven_with_the_3_4_tools_3_7_s_stored_compressed() {
    let server = s3_server();
    let scratch = tempfile::tempdir().unwrap();
    let rt = runtime();
    for version in [
        dr_testkit::EtcdVersion::V3_5,
        dr_testkit::EtcdVersion::V3_6,
        dr_testkit::EtcdVersion::V3_7,
    ] {
        let etcd = EtcdCluster::start(EtcdOptions {
            version,
            ..EtcdOptions::default()
        })
        .unwrap();
        let mut store = s3_store(&server, version.as_str(), 5);
        if version == dr_testkit::EtcdVersion::V3_7 {
            store.compression = Compression::Zstd { level: 3 };
        }
        let store = Arc::new(store);
        let local = tempfile::tempdir().unwrap();
        rt.block_on(async {
            put_keys(&etcd, "a", 200).await;
            let info = policy(local.path(), store.clone(), None)
                .take(&access(&etcd))
                .await
                .unwrap();
            let report = proof::prove(&store, &settings(scratch.path()), version.as_str())
                .await
                .unwrap_or_else(|err| panic!("etcd {}: {err}", version.as_str()));
            assert_eq!(
                Some(report.restored_keys),
                info.keys,
                "{}",
                version.as_str()
            );
            assert_eq!(report.restored_revision, report.revision);
            let stored = store.list().await.unwrap();
            assert_eq!(
                stored[0].object.ends_with(".zst"),
                version == dr_testkit::EtcdVersion::V3_7,
                "{stored:?}"
            );
        });
    }
}

#[test]
fn a_corrupt_object_is_refused_and_the_previous_snapshot_proven() {
    let Setup {
        etcd,
        server,
        store,
        local,
        scratch,
    } = Setup::new("p");
    let rt = runtime();
    let (older, newer) = rt.block_on(async {
        let policy = policy(local.path(), store.clone(), None);
        put_keys(&etcd, "a", 100).await;
        let older = policy.take(&access(&etcd)).await.unwrap();
        put_keys(&etcd, "b", 100).await;
        // Names carry milliseconds: the second is newer.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newer = policy.take(&access(&etcd)).await.unwrap();
        (older, newer)
    });
    // One bit flipped in the newest object, behind the remediator's back.
    let mut bytes = std::fs::read(&newer.path).unwrap();
    bytes[4096] ^= 0x01;
    let url = format!("{}/{BUCKET}/p/{}", server.url(), file_name(&newer.path));
    assert_eq!(
        http_put(&url, "application/octet-stream", &bytes)
            .unwrap()
            .0,
        200
    );
    rt.block_on(async {
        let report = proof::prove(&store, &settings(scratch.path()), "t2")
            .await
            .unwrap();
        assert_eq!(report.name, file_name(&older.path));
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert!(report.refused[0].contains("SHA-256 mismatch"), "{report:?}");
        assert_eq!(Some(report.restored_keys), older.keys);
        assert_eq!(store.metrics.refused("checksum"), 1);
        assert_eq!(store.metrics.proofs("ok"), 1);
        // The newest proven is the older one: an RPO alert sees its age.
        assert_eq!(store.metrics.last_proven(), taken_seconds(&older));

        // fetch_latest, as a person restoring by hand uses it, does the same.
        let dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(dir.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&older.path));
        assert_eq!(store.metrics.refused("checksum"), 2);
    });
}

#[test]
fn a_restored_etcd_that_differs_from_the_recorded_status_fails_the_proof() {
    let Setup {
        etcd,
        server,
        store,
        local,
        scratch,
    } = Setup::new("p");
    let rt = runtime();
    let info = rt.block_on(async {
        put_keys(&etcd, "a", 20).await;
        policy(local.path(), store.clone(), None)
            .take(&access(&etcd))
            .await
            .unwrap()
    });
    // The status says one key more than the snapshot holds.
    let status = serde_json::json!({ "revision": info.revision, "keys": info.keys.unwrap() + 1 });
    // Written with a signed request, as any S3 client would (moto refuses an anonymous
    // overwrite).
    rt.block_on(async {
        use object_store::ObjectStore;
        let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(BUCKET);
        for (key, value) in s3_options(&server) {
            builder = builder.with_config(key.parse().unwrap(), value);
        }
        let raw = builder.build().unwrap();
        let location =
            object_store::path::Path::from(format!("p/{}.status", file_name(&info.path)));
        raw.put(&location, status.to_string().into()).await.unwrap();
    });
    rt.block_on(async {
        let err = proof::prove(&store, &settings(scratch.path()), "t3")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProofError::Mismatch {
                    what: "keys at the recorded revision",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.metrics.proofs("failed"), 1);
        assert_eq!(store.metrics.last_proven(), 0.0);
    });
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn a_secondary_store_receives_every_snapshot_and_its_loss_fails_nothing() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let server = s3_server();
    let primary = s3_store(&server, "primary", 5);
    let root = tempfile::tempdir().unwrap();
    let mut secondary = SnapshotStore::open(
        &format!("file://{}/secondary", root.path().display()),
        5,
        &[],
    )
    .unwrap();
    secondary.retry = quick_retry();
    secondary.metrics = primary.metrics.for_store(SECONDARY);
    let (primary, secondary) = (Arc::new(primary), Arc::new(secondary));
    // A second S3 server, stopped: a region lost.
    let mut lost_server = s3_server();
    let mut lost = s3_store(&lost_server, "lost", 5);
    lost.metrics = primary.metrics.for_store(SECONDARY);
    let lost = Arc::new(lost);
    lost_server.stop().unwrap();

    let local = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        put_keys(&etcd, "a", 50).await;
        let info = policy(local.path(), primary.clone(), Some(secondary.clone()))
            .take(&access(&etcd))
            .await
            .unwrap();
        assert!(uploaded(&info.upload), "{info:?}");
        assert!(uploaded(&info.secondary_upload), "{info:?}");
        let name = file_name(&info.path);
        assert!(root.path().join("secondary").join(&name).exists());
        assert!(
            root.path()
                .join("secondary")
                .join(format!("{name}.sha256"))
                .exists()
        );
        assert_eq!(primary.metrics.attempts("ok"), 1);
        assert_eq!(secondary.metrics.attempts("ok"), 1);

        // Each store proven on its own, its own metrics.
        let audit = Arc::new(Audit::open(local.path()).unwrap());
        let prover = Prover::new(
            vec![primary.clone(), secondary.clone()],
            settings(scratch.path()),
            audit.clone(),
        );
        let results = prover.round_now().await.unwrap();
        assert_eq!(results.len(), 2);
        for result in &results {
            assert_eq!(result.as_ref().unwrap().name, name);
        }
        assert_eq!(primary.metrics.proofs("ok"), 1);
        assert_eq!(secondary.metrics.proofs("ok"), 1);

        // The secondary lost: the primary's upload and proof go on as before.
        put_keys(&etcd, "b", 50).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let info = policy(local.path(), primary.clone(), Some(lost.clone()))
            .take(&access(&etcd))
            .await
            .unwrap();
        assert!(uploaded(&info.upload), "{info:?}");
        assert!(
            matches!(info.secondary_upload, Some(UploadOutcome::Failed(_))),
            "{info:?}"
        );
        assert_eq!(primary.metrics.attempts("ok"), 2);
        assert_eq!(primary.metrics.attempts("failed"), 0);
        assert_eq!(lost.metrics.attempts("failed"), 2);
        let prover = Prover::new(
            vec![primary.clone(), lost.clone()],
            settings(scratch.path()),
            audit.clone(),
        );
        let results = prover.round_now().await.unwrap();
        assert_eq!(results[0].as_ref().unwrap().name, file_name(&info.path));
        assert!(results[1].is_err());
        assert_eq!(primary.metrics.proofs("ok"), 2);
        assert_eq!(lost.metrics.proofs("failed"), 1);
        // Every proof is in the audit log, with its store.
        let proofs: Vec<_> = dr_remediator::audit::read_all(audit.path())
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == proof::KIND && e.phase != Phase::Start)
            .collect();
        assert_eq!(proofs.len(), 4, "{proofs:?}");
        assert_eq!(proofs[3].phase, Phase::Failed);
        assert_eq!(proofs[3].detail["store"], "secondary");
    });
}

/// A snapshot-shaped file named as the remediator names them, taken `age` ago.
fn fake_snapshot(dir: &Path, taken: SystemTime, seed: u8) -> PathBuf {
    let millis = taken.duration_since(UNIX_EPOCH).unwrap().as_millis();
    let path = dir.join(format!("snapshot-{millis:016}-rev{millis}.db"));
    let mut data: Vec<u8> = (0..8 * 512).map(|i| (i % 251) as u8 ^ seed).collect();
    let trailer = digest(&SHA256, &data);
    data.extend_from_slice(trailer.as_ref());
    std::fs::write(&path, &data).unwrap();
    verify_file(&path).unwrap();
    path
}

#[test]
fn the_store_keeps_by_age_and_count_and_a_remediations_snapshot_stays() {
    const HOUR: Duration = Duration::from_secs(3600);
    let server = s3_server();
    let mut store = s3_store(&server, "age", 2);
    store.retention = Retention {
        count: 2,
        within: 24 * HOUR,
        daily: 7,
        weekly: 4,
    };
    let local = tempfile::tempdir().unwrap();
    // Time is driven by the names: one snapshot every 6 hours over the last 40 days,
    // all in the local dir as if the store had been down all along.
    let now = SystemTime::now();
    let paths: Vec<PathBuf> = (0..40 * 4)
        .map(|i| fake_snapshot(local.path(), now - 6 * HOUR * i as u32, i as u8))
        .collect();
    let name = |i: usize| file_name(&paths[i]);
    let names: Vec<String> = (0..paths.len()).map(name).collect();
    // A remediation took the one of 20 days ago: its audit entry keeps it.
    let audit = Audit::open(local.path()).unwrap();
    let remediation = serde_json::json!({ "path": paths[80] });
    audit
        .record(
            "r1",
            "remediation",
            "snapshot",
            Phase::Ok,
            remediation,
            false,
        )
        .unwrap();
    let protected = HashSet::from([name(80)]);
    let expect = |at: SystemTime| -> Vec<String> {
        let keep = store.retention.keep(&names, at, &protected);
        names
            .iter()
            .zip(keep)
            .filter_map(|(n, k)| k.then_some(n.clone()))
            .collect()
    };
    let listed = |store: &SnapshotStore| {
        let rt = runtime();
        rt.block_on(async {
            store
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>()
        })
    };
    let rt = runtime();
    // The newest goes up, and with it (catch-up) those the retention keeps, no others.
    rt.block_on(async { store.upload(&paths[0]).await.unwrap() });
    let stored = listed(&store);
    assert_eq!(stored, expect(now));
    assert_eq!(store.metrics.attempts("ok") as usize, stored.len());
    // Every one of the last day (the one exactly 24 h old is out by age).
    for i in 0..4 {
        assert!(stored.contains(&name(i)), "{i}: {stored:?}");
    }
    // One a day for the rest of the week, then one a week for 4 weeks: nothing older
    // than 5 weeks but the remediation's.
    let older_than_a_day = stored.len() - 4 - 1;
    assert!((5..=9).contains(&older_than_a_day), "{stored:?}");
    assert!(stored.contains(&name(80)), "the remediation's snapshot");
    for i in (5 * 7 * 4..paths.len()).filter(|i| *i != 80) {
        assert!(!stored.contains(&name(i)), "{i} is older than 5 weeks");
    }

    // Ten days later, with no new snapshot: the newest 2 stay (count), the remediation's
    // stays, the rest follows the rules at that time.
    let later = now + 10 * 24 * HOUR;
    rt.block_on(async { store.prune(later, &protected).await.unwrap() });
    let left = listed(&store);
    assert_eq!(left, expect(later));
    assert!(
        left.contains(&name(0)) && left.contains(&name(1)),
        "{left:?}"
    );
    assert!(left.contains(&name(80)), "{left:?}");
    // Beyond the count and the day, the third newest stays only when a week (UTC, from
    // Monday) began between it and the second: then it is its week's newest, which the
    // weekly rule keeps. Which of the two depends on the hour this test runs.
    let week = |t: SystemTime| (t.duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400 + 3) / 7;
    let heads_its_week = week(now - 6 * HOUR) != week(now - 12 * HOUR);
    assert_eq!(left.contains(&name(2)), heads_its_week, "{left:?}");
    // No data object or checksum left without its snapshot.
    let listing = server.list_raw(BUCKET).unwrap();
    assert_eq!(
        listing.matches("<Key>").count(),
        2 * left.len(),
        "{listing}"
    );
}

/// The service: `POST /proof` wants the token, answers 202 with an action id, refuses a
/// second round while one runs, and records the proof in the audit log.
#[test]
fn post_proof_proves_the_store_and_audits_it() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store_dir.path().display());
    let token_dir = tempfile::tempdir().unwrap();
    let token = token_dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let settings = settings(scratch.path());
    let r = support::remediator(
        &etcd.client_endpoints(),
        dir.path(),
        &[
            "--snapshot-store",
            store_url.as_str(),
            "--webhook-token-file",
            &token.display().to_string(),
            "--proof-interval",
            "0",
            "--proof-etcd-bin",
            &settings.etcd_bin.display().to_string(),
            "--proof-restore-bin",
            &settings.restore_bin.display().to_string(),
            "--proof-dir",
            &scratch.path().display().to_string(),
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        put_keys(&etcd, "a", 30).await;
        let remediator = &r.app.remediator;
        let info = remediator.take_snapshot().await.unwrap();
        remediator.upload_later("run-1", &info);
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.events_of("run-1").is_empty() {
            assert!(Instant::now() < deadline, "no upload recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let call = |token: Option<&'static str>| {
            let mut request = axum::http::Request::post("/proof");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            request.body(axum::body::Body::empty()).unwrap()
        };
        use tower::ServiceExt;
        let refused = r.router.clone().oneshot(call(None)).await.unwrap();
        assert_eq!(refused.status(), 401);
        let wrong = r.router.clone().oneshot(call(Some("nope"))).await.unwrap();
        assert_eq!(wrong.status(), 401);
        let started = r
            .router
            .clone()
            .oneshot(call(Some("s3cret")))
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let body = axum::body::to_bytes(started.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = body["action_id"].as_str().unwrap().to_owned();
        assert_eq!(body["stores"], serde_json::json!(["primary"]));
        let busy = r
            .router
            .clone()
            .oneshot(call(Some("s3cret")))
            .await
            .unwrap();
        assert_eq!(busy.status(), 409, "one round at a time");

        let deadline = Instant::now() + Duration::from_secs(120);
        let done = loop {
            if let Some(event) = r
                .events_of(&id)
                .into_iter()
                .find(|e| e.kind == proof::KIND && e.phase != Phase::Start)
            {
                break event;
            }
            assert!(Instant::now() < deadline, "no proof recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(done.phase, Phase::Ok, "{done:?}");
        assert_eq!(done.detail["name"], file_name(&info.path).as_str());
        assert_eq!(
            done.detail["recorded"]["keys"],
            serde_json::json!(info.keys)
        );
    });
}

/// The binary killed (SIGKILL, by its PID) while it uploads a large snapshot: the store
/// holds no object that is taken for a snapshot but the complete earlier one.
#[test]
fn a_remediator_killed_mid_upload_leaves_no_snapshot_behind() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let server = s3_server();
    let store_url = format!("s3://{BUCKET}/killed");
    let snapshots = tempfile::tempdir().unwrap();
    let endpoints = etcd.client_endpoints().join(",");
    let snapshot_once = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dr-remediator"));
        cmd.args([
            "--etcd-endpoints",
            &endpoints,
            "--snapshot-dir",
            &snapshots.path().display().to_string(),
            "--snapshot-store",
            &store_url,
            "--snapshot-once",
        ])
        .envs(server.client_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd
    };
    // A complete snapshot first.
    let status = dr_testkit::run_within(&mut snapshot_once(), Duration::from_secs(120)).unwrap();
    assert!(status.status.success());
    let first = dr_remediator::actions::snapshot::list(snapshots.path()).unwrap();
    assert_eq!(first.len(), 1);
    // About 150 MB of live data: an upload of many parts.
    let rt = runtime();
    rt.block_on(async {
        let mut client = support::client(&etcd.client_endpoints()).await;
        for i in 0..150 {
            client
                .put(
                    format!("big/{i:04}"),
                    vec![b'x' + (i % 3) as u8; 1 << 20],
                    None,
                )
                .await
                .unwrap();
        }
    });
    let mut child = snapshot_once().spawn().unwrap();
    let pid = child.id();
    // The snapshot is verified and in place once its .db exists; the upload follows.
    let deadline = Instant::now() + Duration::from_secs(120);
    while dr_remediator::actions::snapshot::list(snapshots.path())
        .unwrap()
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "no second snapshot");
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before its upload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    // SIGKILL by PID: no chance to clean up or finish.
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = child.wait().unwrap();
    assert!(
        !exit.success(),
        "it was still running when killed: {exit:?}"
    );
    let _ = killed_at;
    let second = dr_remediator::actions::snapshot::list(snapshots.path()).unwrap()[0].clone();

    let options = s3_options(&server);
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = SnapshotStore::open(&store_url, 5, &options).unwrap();
    rt.block_on(async {
        let listed: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(listed, [file_name(&first[0])], "only the complete one");
        let listing = server.list_raw(BUCKET).unwrap();
        assert!(
            !listing.contains(&format!("{}.sha256", file_name(&second))),
            "killed after the upload had finished; make the db bigger: {listing}"
        );
        let dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(dir.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&first[0]));
        assert!(fetched.refused.is_empty());
    });
    // The next run sends the one the killed process did not (catch-up), whole.
    let status = dr_testkit::run_within(&mut snapshot_once(), Duration::from_secs(180)).unwrap();
    assert!(status.status.success());
    rt.block_on(async {
        let listed: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert!(listed.contains(&file_name(&second)), "{listed:?}");
        let dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(dir.path()).await.unwrap();
        verify_file(&fetched.path).unwrap();
        // And the large one restores: the proof's cost at this size.
        let scratch = tempfile::tempdir().unwrap();
        let report = proof::prove(&store, &settings(scratch.path()), "big")
            .await
            .unwrap();
        assert!(report.bytes > 100 << 20, "{report:?}");
        assert!(report.restored_keys >= 150, "{report:?}");
        eprintln!(
            "proof of a {:.0} MB snapshot: {:.1} s (download and verify {:.1} s, status and restore {:.1} s)",
            report.bytes as f64 / 1e6,
            report.seconds,
            report.download_seconds,
            report.restore_seconds
        );
    });
}

/// The service as `main` runs it: scheduled snapshots go to the store and a scheduled
/// proof follows on its own; `/metrics` says so, labelled by store.
#[test]
fn the_service_proves_its_store_on_schedule() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store_dir.path().display());
    let scratch = tempfile::tempdir().unwrap();
    let settings = settings(scratch.path());
    let rt = runtime();
    rt.block_on(async {
        put_keys(&etcd, "a", 40).await;
        let served = support::serve(
            &etcd.client_endpoints(),
            dir.path(),
            &[
                "--snapshot-store",
                store_url.as_str(),
                "--snapshot-interval",
                "1s",
                "--proof-interval",
                "3s",
                "--proof-etcd-bin",
                &settings.etcd_bin.display().to_string(),
                "--proof-restore-bin",
                &settings.restore_bin.display().to_string(),
                "--proof-dir",
                &scratch.path().display().to_string(),
            ],
        )
        .await;
        let client = support::http_client(None);
        let url = format!("http://{}/metrics", served.addr);
        let proven = r#"etcd_dr_snapshot_proof_total{store="primary",result="ok"} "#;
        let deadline = Instant::now() + Duration::from_secs(90);
        let metrics = loop {
            let text = client.get(&url).send().await.unwrap().text().await.unwrap();
            let done = text
                .lines()
                .any(|l| l.starts_with(proven) && !l.ends_with(" 0"));
            if done {
                break text;
            }
            assert!(Instant::now() < deadline, "no scheduled proof: {text}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            metrics.contains(r#"etcd_dr_snapshot_last_proof_success{store="primary"} 1"#),
            "{metrics}"
        );
        assert!(
            !metrics
                .contains(r#"etcd_dr_snapshot_last_proven_timestamp_seconds{store="primary"} 0.0"#),
            "{metrics}"
        );
        served.stop().await;
    });
    // Stopped: no throwaway etcd or scratch left behind.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}
