//! Shared by the integration tests: an in-process remediator on a real etcd, webhook calls
//! through the router, and the keys the tests seed and count.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use dr_common::http::Readiness;
use dr_remediator::app::App;
use dr_remediator::audit::{Event, Phase, read_all};
use dr_remediator::config::{Args, Config};
use dr_remediator::http::router;
use etcd_client::{Client, GetOptions};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tower::ServiceExt;

pub const FIRING: &str = include_str!("../../../fixtures/alertmanager-0.25-webhook-firing.json");
pub const RESOLVED: &str =
    include_str!("../../../fixtures/alertmanager-0.25-webhook-resolved.json");

pub struct Remediator {
    pub app: Arc<App>,
    pub router: Router,
    pub snapshot_dir: PathBuf,
}

/// The configuration of a remediator on `endpoints` with `extra` flags; its snapshot dir
/// is `dir`.
pub fn config<S: AsRef<str>>(endpoints: &[String], dir: &Path, extra: &[S]) -> Config {
    let endpoints = endpoints.join(",");
    let dir_text = dir.display().to_string();
    let mut args = vec![
        "dr-remediator",
        "--etcd-endpoints",
        &endpoints,
        "--snapshot-dir",
        &dir_text,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(extra.iter().map(AsRef::as_ref));
    Config::from_args(Args::try_parse_from(args).unwrap()).unwrap()
}

/// A remediator on `endpoints` with `extra` flags; its snapshot dir is `dir`.
pub fn remediator<S: AsRef<str>>(endpoints: &[String], dir: &Path, extra: &[S]) -> Remediator {
    let config = config(endpoints, dir, extra);
    let mut registry = Registry::default();
    let app = App::new(config, &mut registry).unwrap();
    let router = router(
        app.clone(),
        Readiness::not_ready("test"),
        Arc::new(registry),
    );
    Remediator {
        app,
        router,
        snapshot_dir: dir.to_path_buf(),
    }
}

impl Remediator {
    pub async fn post(&self, body: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::post("/webhook").header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        self.call(request).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(path, None).await
    }

    /// A GET with the bearer token, when given.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.call(request.body(Body::empty()).unwrap()).await
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub fn events(&self) -> Vec<Event> {
        let path = self.snapshot_dir.join("audit.jsonl");
        if path.exists() {
            read_all(&path).unwrap()
        } else {
            Vec::new()
        }
    }

    pub fn events_of(&self, action_id: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.action_id == action_id)
            .collect()
    }

    /// Waits (bounded) for the action's `finished` event; returns all its events.
    pub async fn wait_finished(&self, action_id: &str, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events_of(action_id);
            if events.iter().any(|e| e.step == "finished") {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "action {action_id} did not finish: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (bounded) until `step` of the action reached `phase`.
    pub async fn wait_step(&self, action_id: &str, step: &str, phase: Phase, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .events_of(action_id)
            .iter()
            .any(|e| e.step == step && e.phase == phase)
        {
            assert!(Instant::now() < deadline, "{step} did not reach {phase:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn snapshots(&self) -> Vec<PathBuf> {
        dr_remediator::actions::snapshot::list(&self.snapshot_dir).unwrap()
    }
}

pub fn step<'a>(events: &'a [Event], step: &str, phase: Phase) -> Option<&'a Event> {
    events.iter().find(|e| e.step == step && e.phase == phase)
}

/// Runs the dr-remediator binary with `args` to its end.
pub fn run_binary<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dr-remediator"))
        .args(args)
        .output()
        .unwrap()
}

/// Fails with the process's stderr unless it exited 0.
pub fn assert_success(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn client(endpoints: &[String]) -> Client {
    Client::connect(endpoints, None).await.unwrap()
}

/// Writes `keys` keys of `value_size` bytes, each `rounds` times: history that compaction
/// frees and defrag returns, while the live data stays small.
pub async fn bloat(client: &mut Client, keys: usize, rounds: usize, value_size: usize) {
    for round in 0..rounds {
        for key in 0..keys {
            let value = vec![b'a' + (round % 26) as u8; value_size];
            client
                .put(format!("seed/{key:04}"), value, None)
                .await
                .unwrap();
        }
    }
}

/// (count, digest) of every key under `seed/`.
pub async fn seeded(client: &mut Client) -> (usize, Vec<u8>) {
    let response = client
        .get("seed/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for kv in response.kvs() {
        context.update(kv.key());
        context.update(kv.value());
    }
    (response.kvs().len(), context.finish().as_ref().to_vec())
}

/// db size as each endpoint reports it.
pub async fn db_sizes(endpoints: &[String]) -> Vec<i64> {
    let mut sizes = Vec::new();
    for endpoint in endpoints {
        let mut c = Client::connect([endpoint], None).await.unwrap();
        sizes.push(c.status().await.unwrap().db_size());
    }
    sizes
}

/// A directory laid out as the kubelet writes a Secret volume: each file a symlink
/// `<name> -> ..data/<name>`, `..data` a symlink to the current version's directory,
/// replaced in one rename when the Secret changes.
pub struct SecretDir {
    pub dir: PathBuf,
    version: usize,
}

impl SecretDir {
    /// The files of the first version: (name, contents).
    pub fn new(dir: &Path, files: &[(&str, Vec<u8>)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut secret = SecretDir {
            dir: dir.to_path_buf(),
            version: 0,
        };
        secret.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        secret
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a new version and swaps `..data` to it atomically.
    pub fn update(&mut self, files: &[(&str, Vec<u8>)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, contents) in files {
            std::fs::write(self.dir.join(&version).join(name), contents).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// A remediator serving on a loopback port in this runtime, as `main` runs it.
pub struct Served {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts `serve::run` as [`remediator`] configures it, on a loopback port of its own.
pub async fn serve<S: AsRef<str>>(endpoints: &[String], dir: &Path, extra: &[S]) -> Served {
    let config = config(endpoints, dir, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(dr_remediator::serve::run(config, listener, async move {
        let _ = stopped.await;
    }));
    Served {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Served {
    /// Drains it, within the service's own drain bound.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the remediator drains in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An HTTP client for the tests: bounded, trusting only `ca` (PEM) when given.
pub fn http_client(ca: Option<&[u8]>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap());
    }
    builder.build().unwrap()
}

/// The firing fixture with its own fingerprint, so no cooldown joins two posts.
pub fn firing_with_fingerprint(fingerprint: &str) -> String {
    FIRING.replace("f146eb540a7ae47b", fingerprint)
}

/// The firing fixture with `extra` labels on its alert (e.g. `etcd_dr_diagnosis`) and,
/// when given, another alert name.
pub fn firing_with(alertname: Option<&str>, extra: &[(&str, &str)]) -> String {
    let mut body: Value = serde_json::from_str(FIRING).unwrap();
    let labels = body["alerts"][0]["labels"].as_object_mut().unwrap();
    for (k, v) in extra {
        labels.insert((*k).to_owned(), Value::String((*v).to_owned()));
    }
    if let Some(name) = alertname {
        labels.insert("alertname".into(), Value::String(name.to_owned()));
    }
    body.to_string()
}

/// The model's alert, labelled as being about space: the tests of the repair itself.
pub fn firing_space() -> String {
    firing_with(None, &[("etcd_dr_diagnosis", "space")])
}

/// A stand-in detector whose `GET /score` answers `answer`; its base URL.
pub async fn detector_answering(answer: Value) -> String {
    detector_answering_after(answer, Duration::ZERO).await
}

/// [`detector_answering`], taking `delay` over each answer (a detector slow to confirm).
pub async fn detector_answering_after(answer: Value, delay: Duration) -> String {
    let app = Router::new().route(
        "/score",
        axum::routing::get(move || {
            let answer = answer.clone();
            async move {
                tokio::time::sleep(delay).await;
                axum::Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A filled single member under NOSPACE with its quota; returns the keys' digest.
pub async fn fill_to_nospace(endpoints: &[String]) -> (usize, Vec<u8>) {
    let mut c = client(endpoints).await;
    let value = vec![b'x'; 512 * 1024];
    let mut refused = false;
    for i in 0..200 {
        if c.put(format!("seed/{:02}", i % 4), value.clone(), None)
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the quota never filled");
    seeded(&mut c).await
}

/// The run's events once it finished, after checking it disarmed NOSPACE and left etcd
/// healthy.
pub async fn nospace_repaired(r: &Remediator, action_id: &str, timeout: Duration) -> Vec<Event> {
    let events = r.wait_finished(action_id, timeout).await;
    assert!(
        step(&events, "disarm_nospace", Phase::Ok).is_some(),
        "{events:#?}"
    );
    assert_eq!(
        step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
        "healthy"
    );
    events
}
