//! `GET /score` end to end against a real Prometheus holding real history: values pushed
//! through a real Pushgateway every 250 ms, scraped every second. Per instance, with a
//! gap, with too little data, and with Prometheus stopped; a collector that stopped
//! pushing; series sampled coarser than the model's step, through the Pushgateway and
//! scraped directly.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use dr_common::http::{Readiness, ops_router};
use dr_detector::dataset::{Dataset, Normalisation};
use dr_detector::export::export;
use dr_detector::features::FeatureSpec;
use dr_detector::http::{Detector, Metrics, router};
use dr_detector::inference::Scorer;
use dr_detector::model::{Architecture, init_varmap, varmap_to_safetensors};
use dr_detector::model_dir::{FORMAT_VERSION, ModelBundle, ModelMeta, TrainingMetrics};
use dr_detector::prometheus::PromClient;
use dr_testkit::http::http_request;
use dr_testkit::{Prometheus, Pushgateway, http_put};
use prometheus_client::registry::Registry;
use serde_json::Value;

const WINDOW: usize = 8;
const MAX_GAP: usize = 3;

fn spec(name: &str, query: &str) -> FeatureSpec {
    FeatureSpec {
        name: name.into(),
        query: query.into(),
    }
}

/// Two gauges, `a` and `b`, at a 1 s step.
fn model() -> ModelBundle {
    model_with(vec![
        spec("a", "max by (instance) (dr_test_a)"),
        spec("b", "max by (instance) (dr_test_b)"),
    ])
}

fn model_with(features: Vec<FeatureSpec>) -> ModelBundle {
    let f = features.len();
    let arch = Architecture::new(f, 4);
    let weights = varmap_to_safetensors(&init_varmap(&arch, 3).unwrap()).unwrap();
    let meta = ModelMeta {
        format_version: FORMAT_VERSION,
        window: WINDOW,
        step_seconds: 1.0,
        features,
        mask: Some(spec(
            "defrag_inflight",
            "max by (instance) (dr_test_defrag)",
        )),
        architecture: arch,
        normalisation: Normalisation {
            mean: [1.0, 10.0].into_iter().cycle().take(f).collect(),
            std: [0.5, 2.0].into_iter().cycle().take(f).collect(),
            std_floor: Vec::new(),
        },
        threshold: 1.0,
        threshold_method: "youden_j".into(),
        training: TrainingMetrics {
            seed: 3,
            data_rows: 0,
            train_windows: 0,
            validation_windows: 0,
            validation_anomalous_windows: 0,
            epochs_run: 0,
            best_epoch: 0,
            train_loss: 0.0,
            validation_loss: 0.0,
            validation_auc: None,
            threshold_windows: 0,
            threshold_max_fpr: None,
            seconds: 0.0,
        },
    };
    ModelBundle {
        meta,
        weights,
        source: "live-test".into(),
    }
}

/// Pushes every active instance's metrics every 250 ms until dropped.
struct Pusher {
    active: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    url: String,
}

impl Pusher {
    fn start(url: String) -> Pusher {
        let active = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, u) = (active.clone(), stop.clone(), url.clone());
        let thread = std::thread::spawn(move || {
            let mut tick = 0u32;
            while !s.load(Ordering::Relaxed) {
                let instances: Vec<String> = a.lock().unwrap().iter().cloned().collect();
                for instance in instances {
                    let v = f64::from(tick % 7) * 0.1;
                    let body = format!(
                        "# TYPE dr_test_a gauge\ndr_test_a {}\n# TYPE dr_test_b gauge\ndr_test_b {}\n# TYPE dr_test_c_total counter\ndr_test_c_total {}\n# TYPE dr_test_defrag gauge\ndr_test_defrag 0\n",
                        1.0 + v,
                        10.0 - v,
                        tick,
                    );
                    let put = format!("{u}/metrics/job/etcd/instance/{instance}");
                    let (status, text) = http_put(&put, "text/plain", body.as_bytes()).unwrap();
                    assert!(status < 300, "push answered {status}: {text}");
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Pusher {
            active,
            stop,
            thread: Some(thread),
            url,
        }
    }

    fn add(&self, instance: &str) {
        self.active.lock().unwrap().insert(instance.into());
    }

    /// Stops pushing but leaves the group: what a dead collector leaves behind.
    fn pause(&self, instance: &str) {
        self.active.lock().unwrap().remove(instance);
    }

    /// Stops pushing and deletes the group, so Prometheus marks its series stale.
    fn remove(&self, instance: &str) {
        self.pause(instance);
        let url = format!("{}/metrics/job/etcd/instance/{instance}", self.url);
        let (status, text) = http_request("DELETE", &url, None, &[]).unwrap();
        assert!(status < 300, "delete answered {status}: {text}");
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// A scrape config for the Pushgateway at `addr`, every `interval`.
fn scrape_pushgateway(addr: &str, interval: &str, honor_labels: bool) -> String {
    format!(
        "- job_name: pushgateway\n  scrape_interval: {interval}\n  honor_labels: {honor_labels}\n  static_configs:\n    - targets: ['{addr}']\n"
    )
}

/// The detector over `model` and `prometheus`, served on loopback.
struct Served {
    state: Arc<Detector>,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Served {
    async fn start(model: ModelBundle, prometheus_url: &str, max_push_age: Duration) -> Served {
        let mut registry = Registry::default();
        let readiness = Readiness::not_ready("no answer from Prometheus yet");
        let state = Arc::new(Detector {
            scorer: Scorer::new(model).unwrap(),
            prometheus: PromClient::new(prometheus_url, Duration::from_secs(3)).unwrap(),
            prometheus_timeout: Duration::from_secs(3),
            max_gap_steps: MAX_GAP,
            max_push_age,
            metrics: Metrics::register(&mut registry),
            readiness: readiness.clone(),
        });
        let app: Router =
            router(state.clone(), 1 << 16).merge(ops_router(readiness, Arc::new(registry)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(dr_common::http::serve(
            listener,
            app,
            Duration::from_secs(10),
            async {
                let _ = stopped.await;
            },
        ));
        Served {
            state,
            base,
            stop: Some(stop),
            server: Some(server),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// Polls `GET url` until `done` holds for the answer, or fails with the last one.
async fn get_until(
    client: &reqwest::Client,
    url: &str,
    within: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = get(client, url).await;
        if done(status, &body) || started.elapsed() > within {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_score_against_a_real_prometheus() {
    let pushgateway = Pushgateway::start().unwrap();
    let scrape = scrape_pushgateway(&pushgateway.addr(), "1s", true);
    let prometheus = Prometheus::start(&scrape, &[], Duration::from_secs(1), None).unwrap();
    let pusher = Pusher::start(pushgateway.url());
    pusher.add("etcd-1");
    pusher.add("etcd-2");

    let served = Served::start(model(), &prometheus.url(), Duration::from_secs(10)).await;
    let (state, base) = (served.state.clone(), served.base.clone());
    let client = reqwest::Client::new();

    // A full window of history for two instances.
    tokio::time::sleep(Duration::from_secs(WINDOW as u64 + 3)).await;
    let (status, fleet) = get(&client, &format!("{base}/score")).await;
    assert_eq!(status, 200, "{fleet}");
    let instances: Vec<&str> = fleet["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances.len(), 2, "{fleet}");
    assert!(instances.contains(&"etcd-1") && instances.contains(&"etcd-2"));
    assert!(fleet["score"].as_f64().unwrap() >= 0.0);
    assert_eq!(fleet["step_seconds"], 1.0);
    assert!(fleet["window_end"].as_f64().unwrap() > 1.7e9);

    let (status, one) = get(&client, &format!("{base}/score?instance=etcd-1")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["instance"], "etcd-1");
    assert_eq!(one["model"], "live-test");
    assert!(one["feature_shares"]["a"].is_number(), "{one}");

    // The background refresh puts the scores on /metrics and turns ready.
    state.refresh().await;
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-1\"}"),
        "{metrics}"
    );
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A short gap in etcd-2 is filled; a new instance has too few points (422).
    pusher.remove("etcd-2");
    pusher.add("etcd-3");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pusher.add("etcd-2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, gap) = get(&client, &format!("{base}/score?instance=etcd-2")).await;
    assert_eq!(status, 200, "{gap}");
    assert!(
        gap["filled_points"].as_u64().unwrap() > 0,
        "the gap was filled: {gap}"
    );
    let (status, young) = get(&client, &format!("{base}/score?instance=etcd-3")).await;
    assert_eq!(status, 422, "{young}");
    let error = young["error"].as_str().unwrap();
    assert!(
        error.contains("etcd-3") && error.contains(&format!("of {WINDOW} points")),
        "{error}"
    );
    let (status, unknown) = get(&client, &format!("{base}/score?instance=nope")).await;
    assert_eq!(status, 422, "{unknown}");
    assert!(
        unknown["error"].as_str().unwrap().contains("etcd-1"),
        "{unknown}"
    );

    // `export` writes the same queries' history as a training CSV.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let client_prom = PromClient::new(&prometheus.url(), Duration::from_secs(3)).unwrap();
    let meta = &state.scorer.bundle.meta;
    let several = export(&client_prom, meta, now - 10.0, now, None).await;
    assert!(format!("{:#}", several.unwrap_err()).contains("--instance"));
    let exported = export(&client_prom, meta, now - 10.0, now, Some("etcd-1"))
        .await
        .unwrap();
    let data = Dataset::parse(&exported.csv).unwrap();
    assert_eq!(data.feature_names, ["a", "b"]);
    assert!(data.len() >= 8, "{}", exported.csv);
    assert_eq!(data.step_seconds().unwrap(), 1.0);
    assert!(data.mask.as_ref().unwrap().iter().all(|m| !m));

    // Prometheus gone: 503 naming it, and /score keeps answering.
    let prometheus_url = prometheus.url();
    drop(prometheus);
    let (status, down) = get(&client, &format!("{base}/score")).await;
    assert_eq!(status, 503, "{down}");
    let error = down["error"].as_str().unwrap();
    assert!(
        error.contains("prometheus") && error.contains(&prometheus_url),
        "{error}"
    );

    drop(pusher);
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_stopped_pushing_gets_503_naming_it_and_loses_its_gauge() {
    let pushgateway = Pushgateway::start().unwrap();
    let scrape = scrape_pushgateway(&pushgateway.addr(), "1s", true);
    let prometheus = Prometheus::start(&scrape, &[], Duration::from_secs(1), None).unwrap();
    let pusher = Pusher::start(pushgateway.url());
    pusher.add("etcd-1");
    pusher.add("etcd-2");
    let served = Served::start(model(), &prometheus.url(), Duration::from_secs(4)).await;
    let client = reqwest::Client::new();
    let base = &served.base;

    tokio::time::sleep(Duration::from_secs(WINDOW as u64 + 3)).await;
    served.state.refresh().await;
    let metrics = text(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-2\"}"),
        "{metrics}"
    );

    // etcd-2's collector dies: the Pushgateway keeps serving its last push, Prometheus
    // keeps scraping it, and its windows stay complete. They must not score.
    pusher.pause("etcd-2");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, dead) = get(&client, &format!("{base}/score?instance=etcd-2")).await;
    assert_eq!(status, 503, "{dead}");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.starts_with("collector unavailable")
            && error.contains("etcd-2")
            && error.contains("ago")
            && error.contains("--max-push-age 4s"),
        "{error}"
    );
    let (status, alive) = get(&client, &format!("{base}/score?instance=etcd-1")).await;
    assert_eq!(status, 200, "{alive}");
    let (status, fleet) = get(&client, &format!("{base}/score")).await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["unscorable"][0]["instance"], "etcd-2", "{fleet}");

    served.state.refresh().await;
    let metrics = text(&client, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-1\"}")
            && !metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-2\"}"),
        "{metrics}"
    );

    // Every collector dead: /score names the collector, not a lack of points.
    pusher.pause("etcd-1");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, all) = get(&client, &format!("{base}/score")).await;
    assert_eq!(status, 503, "{all}");
    assert!(
        all["error"]
            .as_str()
            .unwrap()
            .starts_with("collector unavailable"),
        "{all}"
    );
    drop(pusher);
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushgateway_scraped_coarser_than_the_step_is_a_422_that_says_so_and_not_ready() {
    let pushgateway = Pushgateway::start().unwrap();
    // The model's step is 1 s; Prometheus scrapes the Pushgateway every 5 s.
    let scrape = scrape_pushgateway(&pushgateway.addr(), "5s", true);
    let prometheus = Prometheus::start(&scrape, &[], Duration::from_secs(1), None).unwrap();
    let pusher = Pusher::start(pushgateway.url());
    pusher.add("etcd-1");
    let served = Served::start(model(), &prometheus.url(), Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    let base = &served.base;

    let (status, body) = get_until(
        &client,
        &format!("{base}/score?instance=etcd-1"),
        Duration::from_secs(40),
        |status, body| status == 422 && body["error"].as_str().unwrap().contains("every 5s"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    for needle in [
        "etcd-1",
        "every 5s",
        "step is 1s",
        "--interval 1s",
        "export --step 5s",
    ] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    served.state.refresh().await;
    let (status, ready) = get(&client, &format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{ready}");
    let reason = ready["error"].as_str().unwrap();
    assert!(
        reason.contains("no instance can be scored") && reason.contains("every 5s"),
        "{reason}"
    );
    drop(pusher);
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_scraped_directly_and_coarser_than_the_step_is_a_422_that_says_so() {
    let pushgateway = Pushgateway::start().unwrap();
    // Scraped as a plain target every 5 s: `instance` is the target, `up` has its
    // samples, and there is no push time to go by.
    let scrape = format!(
        "{}  metric_relabel_configs:\n    - source_labels: [__name__]\n      regex: push_time_seconds|push_failure_time_seconds\n      action: drop\n",
        scrape_pushgateway(&pushgateway.addr(), "5s", false)
    );
    let prometheus = Prometheus::start(&scrape, &[], Duration::from_secs(1), None).unwrap();
    let pusher = Pusher::start(pushgateway.url());
    pusher.add("etcd-1");
    // A rate over four steps needs two samples in 4 s: at a 5 s scrape it has gaps.
    let rated = model_with(vec![
        spec("a", "max by (instance) (dr_test_a)"),
        spec("c", "sum by (instance) (rate(dr_test_c_total[4s]))"),
    ]);
    let served = Served::start(rated, &prometheus.url(), Duration::from_secs(10)).await;
    let client = reqwest::Client::new();
    let base = &served.base;
    let target = pushgateway.addr();

    let (status, body) = get_until(
        &client,
        &format!("{base}/score?instance={target}"),
        Duration::from_secs(40),
        |status, body| status == 422 && body["error"].as_str().unwrap().contains("every 5s"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&target) && error.contains("step is 1s"),
        "{error}"
    );
    drop(pusher);
    served.shutdown().await;
}
