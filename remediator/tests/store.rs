//! Snapshots off the cluster, against a real S3 server (moto) on loopback and a local-dir
//! store: upload and download with checksums, a corrupt object refused, retention, an
//! unreachable store, compression (both ways, and a bad frame refused), and the binary's
//! --snapshot-once and --snapshot-fetch-latest.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dr_remediator::actions::compression::Compression;
use dr_remediator::actions::retention::Retention;
use dr_remediator::actions::snapshot::{self, verify_file};
use dr_remediator::actions::store::{Feed, SnapshotStore, StoreError, UploadRetry, Uploaded};
use dr_remediator::audit::Phase;
use dr_remediator::remediation::UPLOAD_KIND;
use dr_testkit::s3::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use dr_testkit::{EtcdCluster, EtcdOptions, S3Server, http_put, output_within};
use ring::digest::{SHA256, digest};
use support::runtime;

const BUCKET: &str = "etcd-dr";
const BINARY_TIMEOUT: Duration = Duration::from_secs(120);

fn s3_server() -> S3Server {
    let server = S3Server::start().unwrap();
    server.create_bucket(BUCKET).unwrap();
    server
}

/// A store on `server` under `prefix`, credentials given as options (a test must not set
/// the process's environment); quick retries.
fn s3_store(server: &S3Server, prefix: &str, retain: usize) -> SnapshotStore {
    let endpoint = server.url();
    let mut store = SnapshotStore::open(
        &format!("s3://{BUCKET}/{prefix}"),
        retain,
        &[
            ("aws_endpoint", &endpoint),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", ACCESS_KEY_ID),
            ("aws_secret_access_key", SECRET_ACCESS_KEY),
            ("aws_region", REGION),
        ],
    )
    .unwrap();
    store.retry = quick_retry(2);
    store
}

fn quick_retry(attempts: u32) -> UploadRetry {
    UploadRetry {
        attempts,
        first_wait: Duration::from_millis(200),
        max_wait: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(60),
    }
}

/// Writes a snapshot-shaped file (whole 512-byte sectors plus the SHA-256 trailer etcd
/// appends) named as the remediator names them, `millis` its time; returns its path.
fn fake_snapshot(dir: &Path, millis: u64, sectors: usize, seed: u8) -> PathBuf {
    let path = dir.join(format!("snapshot-{millis:016}-rev{millis}.db"));
    let mut data: Vec<u8> = (0..sectors * 512).map(|i| (i % 251) as u8 ^ seed).collect();
    let trailer = digest(&SHA256, &data);
    data.extend_from_slice(trailer.as_ref());
    std::fs::write(&path, &data).unwrap();
    verify_file(&path).unwrap();
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn names(stored: &[dr_remediator::actions::store::Stored]) -> Vec<String> {
    stored.iter().map(|s| s.name.clone()).collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_snapshot_goes_up_and_comes_back_with_its_checksum() {
    let server = s3_server();
    let store = s3_store(&server, "cluster-a", 5);
    let local = tempfile::tempdir().unwrap();
    let older = fake_snapshot(local.path(), 1_000, 8, 1);
    let rt = runtime();
    rt.block_on(async {
        let first = store.upload(&older).await.unwrap();
        // 20 MiB: three parts of the multipart upload.
        let big = fake_snapshot(local.path(), 2_000, 40 * 1024, 7);
        let uploaded = store.upload(&big).await.unwrap();
        let bytes = std::fs::read(&big).unwrap();
        assert_eq!(uploaded.sha256, sha256_hex(&bytes));
        assert_eq!(uploaded.bytes, bytes.len() as u64);
        assert_eq!(uploaded.attempts, 1);
        assert_eq!(uploaded.location, format!("cluster-a/{}", file_name(&big)));
        assert_ne!(first.sha256, uploaded.sha256);
        assert_eq!(
            names(&store.list().await.unwrap()),
            [file_name(&big), file_name(&older)]
        );
        // The checksum lies beside the object, as sha256sum writes it, seen from outside.
        let listing = server.list_raw(BUCKET).unwrap();
        assert!(listing.contains(&format!("cluster-a/{}.sha256", file_name(&big))));
        assert_eq!(store.metrics.attempts("ok"), 2);
        assert_eq!(store.metrics.attempts("failed"), 0);
        assert!(store.metrics.last_upload() > 0.0);

        let restore_dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(restore_dir.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&big));
        assert_eq!(fetched.sha256, uploaded.sha256);
        assert_eq!(fetched.bytes, bytes.len() as u64);
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        assert_eq!(
            snapshot::partials(restore_dir.path()).unwrap(),
            Vec::<PathBuf>::new()
        );
    });
}

#[test]
fn a_corrupt_object_is_refused_and_the_previous_snapshot_used() {
    let server = s3_server();
    let store = s3_store(&server, "p", 5);
    let local = tempfile::tempdir().unwrap();
    let older = fake_snapshot(local.path(), 1_000, 16, 1);
    let newer = fake_snapshot(local.path(), 2_000, 16, 2);
    let rt = runtime();
    rt.block_on(async {
        store.upload(&older).await.unwrap();
        store.upload(&newer).await.unwrap();
    });
    // One bit flipped in the stored object, written behind the remediator's back.
    let mut bytes = std::fs::read(&newer).unwrap();
    bytes[100] ^= 0x01;
    let url = format!("{}/{BUCKET}/p/{}", server.url(), file_name(&newer));
    let (status, body) = http_put(&url, "application/octet-stream", &bytes).unwrap();
    assert_eq!(status, 200, "{body}");
    rt.block_on(async {
        let restore_dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(restore_dir.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&older));
        assert_eq!(
            std::fs::read(&fetched.path).unwrap(),
            std::fs::read(&older).unwrap()
        );
        // Nothing of the corrupt one is left for someone to pick up.
        let left: Vec<String> = std::fs::read_dir(restore_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [file_name(&older)]);

        // With the older one corrupt too, there is nothing to hand back, and the error
        // says why each was refused.
        let mut old_bytes = std::fs::read(&older).unwrap();
        old_bytes[700] ^= 0x80;
        let url = format!("{}/{BUCKET}/p/{}", server.url(), file_name(&older));
        assert_eq!(
            http_put(&url, "application/octet-stream", &old_bytes)
                .unwrap()
                .0,
            200
        );
        let err = store.fetch_latest(restore_dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::NoneUsable { .. }), "{err}");
        assert_eq!(
            err.to_string().matches("SHA-256 mismatch").count(),
            2,
            "{err}"
        );
    });
}

#[test]
fn a_data_object_without_its_checksum_is_never_a_snapshot() {
    let server = s3_server();
    let store = s3_store(&server, "p", 5);
    let local = tempfile::tempdir().unwrap();
    let done = fake_snapshot(local.path(), 1_000, 8, 1);
    // Elsewhere: the local dir's snapshots would go up with the next upload (catch-up).
    let elsewhere = tempfile::tempdir().unwrap();
    let cut_short = fake_snapshot(elsewhere.path(), 2_000, 8, 2);
    let rt = runtime();
    rt.block_on(async { store.upload(&done).await.unwrap() });
    // What a process killed between the data object and its checksum leaves.
    let url = format!("{}/{BUCKET}/p/{}", server.url(), file_name(&cut_short));
    let bytes = std::fs::read(&cut_short).unwrap();
    assert_eq!(
        http_put(&url, "application/octet-stream", &bytes)
            .unwrap()
            .0,
        200
    );
    rt.block_on(async {
        assert_eq!(names(&store.list().await.unwrap()), [file_name(&done)]);
        let restore_dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(restore_dir.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&done));
    });
}

#[test]
fn the_store_keeps_the_newest_by_count() {
    let server = s3_server();
    let store = s3_store(&server, "keep", 2);
    let local = tempfile::tempdir().unwrap();
    let rt = runtime();
    let paths: Vec<PathBuf> = (1..=4)
        .map(|i| fake_snapshot(local.path(), i * 1_000, 8, i as u8))
        .collect();
    rt.block_on(async {
        for path in &paths {
            store.upload(path).await.unwrap();
        }
        assert_eq!(
            names(&store.list().await.unwrap()),
            [file_name(&paths[3]), file_name(&paths[2])]
        );
    });
    // Data and checksum objects of the old ones are gone, not only hidden.
    let listing = server.list_raw(BUCKET).unwrap();
    for old in &paths[..2] {
        assert!(!listing.contains(&file_name(old)), "{listing}");
    }
    assert_eq!(listing.matches("<Key>").count(), 4, "{listing}");
}

#[test]
fn an_unreachable_store_keeps_the_local_copy_and_catches_up_when_back() {
    let mut server = s3_server();
    let store = s3_store(&server, "p", 5);
    let local = tempfile::tempdir().unwrap();
    let missed = fake_snapshot(local.path(), 1_000, 8, 1);
    let rt = runtime();
    server.stop().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let err = store.upload(&missed).await.unwrap_err();
        assert!(matches!(err, StoreError::Request { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    });
    assert!(missed.exists(), "the local copy is kept");
    assert_eq!(store.metrics.attempts("failed"), 2, "each attempt counted");
    assert_eq!(store.metrics.attempts("ok"), 0);
    assert_eq!(store.metrics.last_upload(), 0.0);

    // Back (empty, as moto starts): the next snapshot's upload brings the missed one too.
    server.start_again().unwrap();
    server.create_bucket(BUCKET).unwrap();
    let next = fake_snapshot(local.path(), 2_000, 8, 2);
    rt.block_on(async {
        store.upload(&next).await.unwrap();
        assert_eq!(
            names(&store.list().await.unwrap()),
            [file_name(&next), file_name(&missed)]
        );
    });
    assert_eq!(store.metrics.attempts("ok"), 2);
    assert!(store.metrics.last_upload() > 0.0);
}

#[test]
fn an_upload_retried_while_the_store_is_down_goes_through_when_it_is_back() {
    let mut server = s3_server();
    let mut store = s3_store(&server, "p", 5);
    store.retry = quick_retry(30);
    let store = Arc::new(store);
    let local = tempfile::tempdir().unwrap();
    let path = fake_snapshot(local.path(), 1_000, 8, 1);
    server.stop().unwrap();
    let rt = runtime();
    let upload = {
        let (store, path) = (store.clone(), path.clone());
        rt.spawn(async move { store.upload(&path).await })
    };
    // Down until at least one attempt has failed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.metrics.attempts("failed") == 0 {
        assert!(Instant::now() < deadline, "no attempt failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.start_again().unwrap();
    server.create_bucket(BUCKET).unwrap();
    let uploaded = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(90), upload).await })
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(uploaded.attempts > 1, "{uploaded:?}");
    assert_eq!(store.metrics.attempts("ok"), 1);
    assert_eq!(
        store.metrics.attempts("failed"),
        u64::from(uploaded.attempts - 1)
    );
}

#[test]
fn a_local_directory_store_works_the_same() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store/cluster-a", root.path().display());
    let mut store = SnapshotStore::open(&url, 2, &[]).unwrap();
    store.retry = quick_retry(2);
    let local = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (1..=3)
        .map(|i| fake_snapshot(local.path(), i * 1_000, 16, i as u8))
        .collect();
    let rt = runtime();
    rt.block_on(async {
        for path in &paths {
            store.upload(path).await.unwrap();
        }
        assert_eq!(
            names(&store.list().await.unwrap()),
            [file_name(&paths[2]), file_name(&paths[1])]
        );
        let in_store = root.path().join("store/cluster-a");
        let newest = in_store.join(file_name(&paths[2]));
        assert_eq!(
            std::fs::read(&newest).unwrap(),
            std::fs::read(&paths[2]).unwrap()
        );
        let line =
            std::fs::read_to_string(in_store.join(format!("{}.sha256", file_name(&paths[2]))))
                .unwrap();
        assert_eq!(
            line,
            format!(
                "{}  {}\n",
                sha256_hex(&std::fs::read(&paths[2]).unwrap()),
                file_name(&paths[2])
            )
        );
        assert!(!in_store.join(file_name(&paths[0])).exists());

        // Corrupt the newest in place: the previous is used.
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&newest, &bytes).unwrap();
        let restore_dir = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(restore_dir.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&paths[1]));
    });
}

/// The binary on a real etcd: `--snapshot-once` uploads before it exits, and
/// `--snapshot-fetch-latest` (no etcd flags needed) brings it back, both configured
/// through the AWS environment a person would set.
#[test]
fn the_binary_uploads_a_real_snapshot_and_fetches_it_back() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let server = s3_server();
    let snapshots = tempfile::tempdir().unwrap();
    let store_url = format!("s3://{BUCKET}/binary");
    let run = |args: &[&str]| {
        let child = Command::new(env!("CARGO_BIN_EXE_dr-remediator"))
            .args(args)
            .envs(server.client_env())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let output = output_within(child, BINARY_TIMEOUT).unwrap();
        support::assert_success(&output);
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let endpoints = etcd.client_endpoints().join(",");
    let snapshot_dir = snapshots.path().display().to_string();
    let snapshot_once = |extra: &[&str]| {
        let mut args = vec![
            "--etcd-endpoints",
            &endpoints,
            "--snapshot-dir",
            &snapshot_dir,
            "--snapshot-store",
            &store_url,
            "--snapshot-once",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let restore_dir = tempfile::tempdir().unwrap();
    let restore_path = restore_dir.path().display().to_string();
    let fetch_latest = || {
        run(&[
            "--snapshot-fetch-latest",
            &restore_path,
            "--snapshot-store",
            &store_url,
        ])
    };
    let taken = snapshot_once(&[]);
    let uploaded = &taken["upload"]["uploaded"];
    assert!(uploaded.is_object(), "{taken}");
    let local = PathBuf::from(taken["path"].as_str().unwrap());
    assert_eq!(
        uploaded["sha256"],
        sha256_hex(&std::fs::read(&local).unwrap()).as_str()
    );

    let fetched = fetch_latest();
    assert_eq!(fetched["name"], file_name(&local).as_str(), "{fetched}");
    assert_eq!(fetched["sha256"], uploaded["sha256"]);
    assert_eq!(fetched["bytes"], uploaded["bytes"]);
    let path = PathBuf::from(fetched["path"].as_str().unwrap());
    verify_file(&path).unwrap();
    assert!(
        !restore_dir.path().join("identity").exists(),
        "a download leaves only the snapshot"
    );

    // Compressed as it streams; fetched back by a run that is not told so.
    let taken = snapshot_once(&["--snapshot-store-compression", "zstd:9"]);
    let uploaded = &taken["upload"]["uploaded"];
    let local = PathBuf::from(taken["path"].as_str().unwrap());
    assert!(
        uploaded["location"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{}.zst", file_name(&local))),
        "{taken}"
    );
    assert!(uploaded["stored_bytes"].as_u64() < uploaded["bytes"].as_u64());
    let fetched = fetch_latest();
    assert_eq!(fetched["name"], file_name(&local).as_str(), "{fetched}");
    let path = PathBuf::from(fetched["path"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, std::fs::read(&local).unwrap());
    assert_eq!(fetched["sha256"], sha256_hex(&bytes).as_str());
    assert_eq!(
        fetched["object"],
        format!("{}.zst", file_name(&local)).as_str()
    );
}

/// A remediation's (and a scheduled) snapshot is uploaded in the background; the result
/// is recorded under the same action id, of its own kind.
#[test]
fn a_snapshot_taken_by_the_service_is_uploaded_in_the_background() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store_dir.path().display());
    let r = support::remediator(
        &etcd.client_endpoints(),
        dir.path(),
        &[
            "--snapshot-store",
            store_url.as_str(),
            "--snapshot-store-retain",
            "3",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let remediator = &r.app.remediator;
        let info = remediator.take_snapshot().await.unwrap();
        assert_eq!(
            serde_json::json!(info)["upload"]["pending"],
            format!("to {store_url}").as_str()
        );
        remediator.upload_later("run-1", &info);
        let deadline = Instant::now() + Duration::from_secs(60);
        let event = loop {
            if let Some(event) = r
                .events_of("run-1")
                .into_iter()
                .find(|e| e.kind == UPLOAD_KIND)
            {
                break event;
            }
            assert!(Instant::now() < deadline, "no upload recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(event.phase, Phase::Ok, "{event:?}");
        assert_eq!(event.step, "upload");
        let name = file_name(&info.path);
        assert_eq!(event.detail["location"], name.as_str());
        assert!(store_dir.path().join(&name).exists());
        assert!(store_dir.path().join(format!("{name}.sha256")).exists());
        // An upload record is no run of its own: nothing is left unfinished.
        assert_eq!(remediator.audit.unfinished().unwrap(), []);
    });
}

/// Feeds `bytes` to a fed upload in etcd's 32 KiB chunks, as `take` does.
/// A fed upload of `path` running in the background, and the feed that sends it.
fn spawn_fed_upload(
    store: &Arc<SnapshotStore>,
    path: &Path,
) -> (Feed, tokio::task::JoinHandle<Result<Uploaded, StoreError>>) {
    let (feed, fed) = dr_remediator::actions::store::feed();
    let (store, path) = (store.clone(), path.to_path_buf());
    (
        feed,
        tokio::spawn(async move { store.upload_fed(&path, fed).await }),
    )
}

async fn feed_all(feed: &mut Feed, bytes: &[u8]) {
    for chunk in bytes.chunks(32 * 1024) {
        feed.send(chunk).await;
    }
}

/// The one-off snapshot's upload runs beside the download: the store has the data while
/// it streams, but lists a snapshot only once it is verified and in place.
#[test]
fn a_fed_upload_is_a_snapshot_only_once_the_file_is_in_place() {
    let server = s3_server();
    let store = Arc::new(s3_store(&server, "fed", 5));
    let source = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fake_snapshot(source.path(), 1_000, 40 * 1024, 3)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("snapshot-0000000000001000-rev1000.db");
    let rt = runtime();
    rt.block_on(async {
        let (mut feed, upload) = spawn_fed_upload(&store, &path);
        feed_all(&mut feed, &bytes).await;
        // Every byte handed over, none of it a snapshot yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(names(&store.list().await.unwrap()), Vec::<String>::new());
        assert!(!upload.is_finished());
        std::fs::write(&path, &bytes).unwrap();
        feed.in_place();
        let uploaded = tokio::time::timeout(Duration::from_secs(60), upload)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(uploaded.sha256, sha256_hex(&bytes));
        assert_eq!(uploaded.bytes, bytes.len() as u64);
        assert_eq!(uploaded.attempts, 1, "sent once, as it streamed");
        assert_eq!(names(&store.list().await.unwrap()), [file_name(&path)]);
        let back = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(back.path()).await.unwrap();
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
    });
    assert_eq!(store.metrics.attempts("ok"), 1);
}

/// A snapshot that fails half-way (the feed dropped, as a failed or timed-out download
/// drops it) leaves nothing in the store, not even an unfinished object in the listing.
#[test]
fn a_fed_upload_whose_snapshot_failed_leaves_nothing() {
    let server = s3_server();
    let store = s3_store(&server, "failed", 5);
    let source = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fake_snapshot(source.path(), 1_000, 40 * 1024, 4)).unwrap();
    let path = source.path().join("snapshot-0000000000002000-rev2000.db");
    let rt = runtime();
    let result = rt.block_on(async {
        let (mut feed, fed) = dr_remediator::actions::store::feed();
        let sending = async move {
            feed_all(&mut feed, &bytes[..bytes.len() / 2]).await;
            drop(feed);
        };
        let (_, result) = tokio::join!(sending, store.upload_fed(&path, fed));
        result
    });
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::NotTaken(_)), "{err}");
    rt.block_on(async {
        assert_eq!(names(&store.list().await.unwrap()), Vec::<String>::new());
    });
    assert!(!server.list_raw(BUCKET).unwrap().contains("snapshot-"));
    assert_eq!(store.metrics.attempts("ok"), 0);
}

/// A store that fails while the snapshot streams does not fail the snapshot: the feed is
/// given up, and the upload is done again from the file once the snapshot is in place.
#[test]
fn a_fed_upload_that_failed_is_done_again_from_the_file() {
    let mut server = s3_server();
    let mut store = s3_store(&server, "again", 5);
    store.retry = quick_retry(30);
    let store = Arc::new(store);
    let source = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fake_snapshot(source.path(), 1_000, 8 * 1024, 5)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("snapshot-0000000000003000-rev3000.db");
    server.stop().unwrap();
    let rt = runtime();
    let uploaded = rt.block_on(async {
        let (mut feed, upload) = spawn_fed_upload(&store, &path);
        let started = Instant::now();
        feed_all(&mut feed, &bytes).await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the download was held up {:?} by a dead store",
            started.elapsed()
        );
        std::fs::write(&path, &bytes).unwrap();
        feed.in_place();
        // Down until the attempt from the file has failed too, then back.
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.metrics.attempts("failed") < 2 {
            assert!(Instant::now() < deadline, "no attempt failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.start_again().unwrap();
        server.create_bucket(BUCKET).unwrap();
        tokio::time::timeout(Duration::from_secs(90), upload)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });
    assert!(uploaded.attempts > 2, "{uploaded:?}");
    assert_eq!(uploaded.sha256, sha256_hex(&bytes));
    assert_eq!(store.metrics.attempts("ok"), 1);
}

/// A store that takes the connection and never answers does not hold up the snapshot: the
/// feed is given up after its stall limit, and the upload from the file then fails within
/// its own deadline, the local file untouched.
#[test]
fn a_store_that_never_answers_holds_the_snapshot_up_only_briefly() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    // Accepts every connection and holds it open, unanswered, until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(64) {
            held.push(stream);
        }
    });
    let mut store = SnapshotStore::open(
        &format!("s3://{BUCKET}/silent"),
        5,
        &[
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", ACCESS_KEY_ID),
            ("aws_secret_access_key", SECRET_ACCESS_KEY),
            ("aws_region", REGION),
        ],
    )
    .unwrap();
    store.retry = UploadRetry {
        attempt_timeout: Duration::from_secs(3),
        ..quick_retry(1)
    };
    let store = Arc::new(store);
    let source = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fake_snapshot(source.path(), 1_000, 16 * 1024, 6)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("snapshot-0000000000004000-rev4000.db");
    let rt = runtime();
    let (fed_for, result) = rt.block_on(async {
        let (mut feed, upload) = spawn_fed_upload(&store, &path);
        let started = Instant::now();
        feed_all(&mut feed, &bytes).await;
        let fed_for = started.elapsed();
        std::fs::write(&path, &bytes).unwrap();
        feed.in_place();
        let result = tokio::time::timeout(Duration::from_secs(60), upload)
            .await
            .unwrap()
            .unwrap();
        (fed_for, result)
    });
    assert!(
        fed_for >= Duration::from_secs(9) && fed_for < Duration::from_secs(30),
        "the download waited {fed_for:?} on a silent store"
    );
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::Timeout(..)), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the local copy stands"
    );
    assert_eq!(store.metrics.attempts("failed"), 1);
}

const ZSTD: Compression = Compression::Zstd { level: 3 };

/// With compression on, a snapshot is stored as `<name>.zst`, a plain zstd frame that
/// `sha256sum -c` and `zstd -d` open as they are, whether it went up from the file or as
/// it streamed; it comes back whole, and retention removes all of its objects.
#[test]
fn a_compressed_snapshot_is_stored_smaller_and_comes_back_whole() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", root.path().display());
    let mut store = SnapshotStore::open(&url, 2, &[]).unwrap();
    store.retry = quick_retry(2);
    store.compression = ZSTD;
    let store = Arc::new(store);
    let in_store = root.path().join("store");
    // Each in a dir of its own: an upload also sends the snapshots beside it (catch-up).
    let local = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (1..=3)
        .map(|i| {
            let dir = local.path().join(i.to_string());
            std::fs::create_dir(&dir).unwrap();
            fake_snapshot(&dir, i * 1_000, 4 * 1024, i as u8)
        })
        .collect();
    std::fs::write(snapshot::status_path(&paths[0]), br#"{"revision":1}"#).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let first = store.upload(&paths[0]).await.unwrap();
        let original = std::fs::read(&paths[0]).unwrap();
        assert_eq!(first.location, format!("{}.zst", file_name(&paths[0])));
        assert_eq!(first.bytes, original.len() as u64);
        assert!(first.stored_bytes * 10 < first.bytes, "{first:?}");
        let object = std::fs::read(in_store.join(&first.location)).unwrap();
        assert_eq!(object.len() as u64, first.stored_bytes);
        assert_eq!(zstd::decode_all(&object[..]).unwrap(), original);
        assert_eq!(
            std::fs::read_to_string(in_store.join(format!("{}.sha256", first.location))).unwrap(),
            format!("{}  {}\n", sha256_hex(&object), first.location)
        );
        assert_eq!(first.sha256, sha256_hex(&object));
        assert!(!in_store.join(file_name(&paths[0])).exists());
        // The status is the snapshot's, named as it is whatever the object's form.
        assert!(
            in_store
                .join(format!("{}.status", file_name(&paths[0])))
                .exists()
        );

        // As it streams, the same object.
        let bytes = std::fs::read(&paths[1]).unwrap();
        let streamed_path = local.path().join("streamed");
        std::fs::create_dir(&streamed_path).unwrap();
        let streamed_path = streamed_path.join(file_name(&paths[1]));
        let (mut feed, upload) = spawn_fed_upload(&store, &streamed_path);
        feed_all(&mut feed, &bytes).await;
        std::fs::write(&streamed_path, &bytes).unwrap();
        feed.in_place();
        let streamed = upload.await.unwrap().unwrap();
        assert_eq!(streamed.location, format!("{}.zst", file_name(&paths[1])));
        let object = std::fs::read(in_store.join(&streamed.location)).unwrap();
        assert_eq!(zstd::decode_all(&object[..]).unwrap(), bytes);

        let back = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(back.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&paths[1]));
        assert_eq!(fetched.object, streamed.location);
        assert_eq!(fetched.bytes, bytes.len() as u64);
        assert_eq!(
            fetched.sha256,
            sha256_hex(&bytes),
            "the file's, to check copies by"
        );
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
        verify_file(&fetched.path).unwrap();

        // A third: the first goes, every object of it.
        let third = store.upload(&paths[2]).await.unwrap();
        assert_eq!(
            names(&store.list().await.unwrap()),
            [file_name(&paths[2]), file_name(&paths[1])]
        );

        // Cut short, with a checksum that matches what is left (written by hand): no
        // whole frame, refused, and the one before it used.
        let object = in_store.join(&third.location);
        let frame = std::fs::read(&object).unwrap();
        let short = &frame[..frame.len() - 5];
        std::fs::write(&object, short).unwrap();
        std::fs::write(
            in_store.join(format!("{}.sha256", third.location)),
            format!("{}  {}\n", sha256_hex(short), third.location),
        )
        .unwrap();
        let back = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(back.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&paths[1]));
        assert!(
            fetched.refused[0].contains("not a whole zstd frame"),
            "{:?}",
            fetched.refused
        );
        assert_eq!(store.metrics.refused("not_a_snapshot"), 1);
    });
    let left: Vec<String> = std::fs::read_dir(&in_store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(&file_name(&paths[0])))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

/// Turning compression on strands nothing: a snapshot stored uncompressed before is still
/// read, and used when the newer, compressed one is corrupt in the store (refused by the
/// checksum).
#[test]
fn a_corrupt_compressed_object_is_refused_and_an_uncompressed_one_used() {
    let server = s3_server();
    let mut store = s3_store(&server, "mixed", 5);
    // Apart: an upload also sends the snapshots beside it (catch-up).
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let plain = fake_snapshot(dirs[0].path(), 1_000, 64, 1);
    let newer = fake_snapshot(dirs[1].path(), 2_000, 64, 2);
    let rt = runtime();
    let uploaded = rt.block_on(async {
        store.upload(&plain).await.unwrap();
        store.compression = ZSTD;
        let uploaded = store.upload(&newer).await.unwrap();
        let back = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(back.path()).await.unwrap();
        assert_eq!(fetched.name, file_name(&newer));
        assert_eq!(
            std::fs::read(&fetched.path).unwrap(),
            std::fs::read(&newer).unwrap()
        );
        uploaded
    });
    // One bit flipped in the stored frame.
    let mut frame = zstd::encode_all(&std::fs::read(&newer).unwrap()[..], 3).unwrap();
    let middle = frame.len() / 2;
    frame[middle] ^= 0x10;
    let url = format!("{}/{BUCKET}/{}", server.url(), uploaded.location);
    let (status, text) = http_put(&url, "application/octet-stream", &frame).unwrap();
    assert_eq!(status, 200, "{text}");

    let back = tempfile::tempdir().unwrap();
    let fetched = rt.block_on(async { store.fetch_latest(back.path()).await.unwrap() });
    assert_eq!(fetched.name, file_name(&plain));
    assert_eq!(
        std::fs::read(&fetched.path).unwrap(),
        std::fs::read(&plain).unwrap()
    );
    assert_eq!(fetched.refused.len(), 1, "{:?}", fetched.refused);
    assert!(
        fetched.refused[0].contains("SHA-256 mismatch"),
        "{:?}",
        fetched.refused
    );
    assert_eq!(store.metrics.refused("checksum"), 1);
    let left: Vec<_> = std::fs::read_dir(back.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing of the refused one is left");
}

/// A snapshot stored both ways (sent again by hand after the setting changed) is listed
/// once per form, and a download tries both; retention removes every form of it, and an
/// old uncompressed snapshot goes like the rest; a data object without its own checksum
/// goes too.
#[test]
fn a_snapshot_stored_both_ways_is_tried_both_ways_and_pruned_whole() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", root.path().display());
    let mut store = SnapshotStore::open(&url, 5, &[]).unwrap();
    store.retry = quick_retry(2);
    let in_store = root.path().join("store");
    // Each apart: an upload also sends the snapshots beside it (catch-up).
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let old = fake_snapshot(dirs[0].path(), 1_000, 64, 1);
    let both = fake_snapshot(dirs[1].path(), 2_000, 64, 2);
    let newest = fake_snapshot(dirs[2].path(), 3_000, 64, 3);
    let rt = runtime();
    rt.block_on(async {
        store.upload(&old).await.unwrap();
        store.upload(&both).await.unwrap();
        store.compression = ZSTD;
        store.upload(&both).await.unwrap();
        let objects: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.object)
            .collect();
        let zst = format!("{}.zst", file_name(&both));
        assert_eq!(objects, [file_name(&both), zst.clone(), file_name(&old)]);

        // The uncompressed copy corrupt: the compressed one of the same snapshot is used.
        let plain = in_store.join(file_name(&both));
        let mut bytes = std::fs::read(&plain).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&plain, &bytes).unwrap();
        let back = tempfile::tempdir().unwrap();
        let fetched = store.fetch_latest(back.path()).await.unwrap();
        assert_eq!(
            (fetched.name.as_str(), fetched.object.as_str()),
            (file_name(&both).as_str(), zst.as_str())
        );
        assert_eq!(fetched.refused.len(), 1, "{:?}", fetched.refused);
        assert_eq!(
            std::fs::read(&fetched.path).unwrap(),
            std::fs::read(&both).unwrap()
        );

        // An upload cut short between its objects, older than the newest snapshot.
        std::fs::write(
            in_store.join("snapshot-0000000000001500-rev1500.db.zst"),
            b"x",
        )
        .unwrap();
        store.retention = Retention::count(1);
        store.upload(&newest).await.unwrap();
    });
    let mut left: Vec<String> = std::fs::read_dir(&in_store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let newest = format!("{}.zst", file_name(&newest));
    assert_eq!(left, [newest.clone(), format!("{newest}.sha256")]);
}
