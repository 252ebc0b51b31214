//! `GET /score` end to end against a real Prometheus holding real history: values pushed
//! through a real Pushgateway every 250 ms, scraped every second. Per instance, with a
//! gap, with too little data, for queries that find nothing, and with Prometheus
//! stopped; a collector that stopped pushing; series sampled coarser than the model's
//! step, through the Pushgateway and scraped directly.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dr_detector::model::baseline::BaselinePolicy;
use dr_detector::model::features::FeatureSpec;
use dr_detector::model::inference::Scorer;
use dr_detector::model::lstm::{Architecture, init_varmap, varmap_to_safetensors};
use dr_detector::model::model_dir::{
    FORMAT_VERSION, FORMAT_VERSION_2, FastAlert, ModelBundle, ModelMeta, ScoringV2, TrainingMetrics,
};
use dr_detector::model::normalisation::Normalisation;
use dr_detector::model::transform::Transform;
use dr_detector::prometheus::PromClient;
use dr_detector::serving::http::app;
use dr_detector::serving::live::LiveScorer;
use dr_detector::training::dataset::Dataset;
use dr_detector::training::export::export;
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
        scoring_v2: None,
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

/// A scrape config for the Pushgateway at `addr`, every `interval`.
fn scrape_pushgateway(addr: &str, interval: &str, honor_labels: bool) -> String {
    format!(
        "- job_name: pushgateway\n  scrape_interval: {interval}\n  honor_labels: {honor_labels}\n  static_configs:\n    - targets: ['{addr}']\n"
    )
}

/// The detector over `model` and `prometheus`, served on loopback.
struct Served {
    state: Arc<LiveScorer>,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Served {
    async fn start(model: ModelBundle, prometheus_url: &str, max_push_age: Duration) -> Served {
        let mut registry = Registry::default();
        let state = Arc::new(LiveScorer::new(
            Scorer::new(model).unwrap(),
            PromClient::new(prometheus_url, Duration::from_secs(3)).unwrap(),
            MAX_GAP,
            max_push_age,
            &mut registry,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(dr_common::http::serve(
            listener,
            app(state.clone(), registry, 1 << 16),
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

    /// Stops accepting, drains (every request is bounded by 10 s) and checks it served
    /// without an error.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(15), server)
                .await
                .expect("the detector drains within 15 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Served {
    /// A test that failed half-way stops its server too.
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// What each test runs against: a real Pushgateway that a `Pusher` pushes `instances` to,
/// a real Prometheus scraping it, and the detector over that Prometheus.
struct Rig {
    // Fields drop in this order: the pusher stops before the Pushgateway does.
    pusher: Pusher,
    served: Served,
    prometheus: Option<Prometheus>,
    pushgateway: Pushgateway,
    client: reqwest::Client,
}

impl Rig {
    /// `scrape` makes Prometheus' scrape config from the Pushgateway's address.
    async fn start(
        scrape: impl FnOnce(&str) -> String,
        model: ModelBundle,
        max_push_age: Duration,
        instances: &[&str],
    ) -> Rig {
        let pushgateway = Pushgateway::start().unwrap();
        let prometheus = Prometheus::start(
            &scrape(&pushgateway.addr()),
            &[],
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let pusher = Pusher::start(pushgateway.url());
        for instance in instances {
            pusher.add(instance);
        }
        let served = Served::start(model, &prometheus.url(), max_push_age).await;
        Rig {
            pusher,
            served,
            prometheus: Some(prometheus),
            pushgateway,
            // Longer than the detector's own 10 s bound on a request: never waits forever.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    fn state(&self) -> &Arc<LiveScorer> {
        &self.served.state
    }

    fn prometheus_url(&self) -> String {
        self.prometheus.as_ref().unwrap().url()
    }

    /// Stops Prometheus; its URL, for the messages that name it.
    fn stop_prometheus(&mut self) -> String {
        let url = self.prometheus_url();
        self.prometheus = None;
        url
    }

    /// `GET path` on the detector: the status and the JSON body.
    async fn get(&self, path: &str) -> (u16, Value) {
        self.get_from(&self.served, path).await
    }

    /// `GET path` on another detector over the same Prometheus.
    async fn get_from(&self, served: &Served, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", served.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET path` on the detector, as text (for `/metrics`).
    async fn text(&self, path: &str) -> String {
        let url = format!("{}{path}", self.served.base);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET path`, which must answer `status`: its JSON error message.
    async fn error(&self, path: &str, status: u16) -> String {
        let (got, body) = self.get(path).await;
        error_of(path, status, got, &body)
    }

    /// Polls `GET path` (within 40 s) until it answers `status` with an error containing
    /// `needle`: its error message.
    async fn error_until(&self, path: &str, status: u16, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let (got, body) = self.get(path).await;
            let done = got == status && body["error"].as_str().is_some_and(|e| e.contains(needle));
            if done || started.elapsed() > Duration::from_secs(40) {
                return error_of(path, status, got, &body);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn shutdown(self) {
        let Rig { pusher, served, .. } = self;
        drop(pusher);
        served.shutdown().await;
    }
}

fn error_of(path: &str, status: u16, got: u16, body: &Value) -> String {
    assert_eq!(got, status, "{path}: {body}");
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no error in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_score_against_a_real_prometheus() {
    let scrape = |addr: &str| scrape_pushgateway(addr, "1s", true);
    let mut rig = Rig::start(
        scrape,
        model(),
        Duration::from_secs(10),
        &["etcd-1", "etcd-2"],
    )
    .await;

    // A full window of history for two instances.
    tokio::time::sleep(Duration::from_secs(WINDOW as u64 + 3)).await;
    let (status, fleet) = rig.get("/score").await;
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
    assert_eq!(fleet["threshold"], 1.0, "{fleet}");
    assert!(fleet["anomalous"].is_boolean(), "{fleet}");
    assert_eq!(fleet["step_seconds"], 1.0);
    assert!(fleet["window_end"].as_f64().unwrap() > 1.7e9);

    // A model whose queries find nothing: 422 saying so, with the query to check.
    let blind = model_with(vec![spec("a", "max by (instance) (dr_test_missing)")]);
    let other = Served::start(blind, &rig.prometheus_url(), Duration::from_secs(10)).await;
    let (status, body) = rig.get_from(&other, "/score").await;
    let error = error_of("/score", 422, status, &body);
    assert!(
        error.contains("no series") && error.contains("dr_test_missing"),
        "{error}"
    );
    other.shutdown().await;

    let (status, one) = rig.get("/score?instance=etcd-1").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["instance"], "etcd-1");
    assert_eq!(one["model"], "live-test");
    assert!(one["feature_shares"]["a"].is_number(), "{one}");

    // The background refresh puts the scores on /metrics and turns ready.
    rig.state().refresh().await;
    let metrics = rig.text("/metrics").await;
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-1\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("etcd_dr_anomaly_threshold 1.0"),
        "{metrics}"
    );
    // A model without a fast alert: no gauges for that rule to compare.
    assert!(!metrics.contains("etcd_dr_anomaly_fast_"), "{metrics}");
    assert_eq!(rig.get("/readyz").await.0, 200);

    // A short gap in etcd-2 is filled; a new instance has too few points (422).
    rig.pusher.remove("etcd-2");
    rig.pusher.add("etcd-3");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rig.pusher.add("etcd-2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, gap) = rig.get("/score?instance=etcd-2").await;
    assert_eq!(status, 200, "{gap}");
    assert!(
        gap["filled_points"].as_u64().unwrap() > 0,
        "the gap was filled: {gap}"
    );
    let error = rig.error("/score?instance=etcd-3", 422).await;
    assert!(
        error.contains("etcd-3") && error.contains(&format!("of {WINDOW} points")),
        "{error}"
    );
    let error = rig.error("/score?instance=nope", 422).await;
    assert!(error.contains("etcd-1"), "{error}");

    // `export` writes the same queries' history as a training CSV.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let client_prom = PromClient::new(&rig.prometheus_url(), Duration::from_secs(3)).unwrap();
    let meta = &rig.state().scorer.bundle.meta;
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

    // Prometheus gone: 503 naming it, and /score keeps answering. (A window already
    // pulled is answered again until the step ends: wait for the next one.)
    let prometheus_url = rig.stop_prometheus();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let error = rig.error("/score", 503).await;
    assert!(
        error.contains("prometheus") && error.contains(&prometheus_url),
        "{error}"
    );

    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_stopped_pushing_gets_503_naming_it_and_loses_its_gauge() {
    let scrape = |addr: &str| scrape_pushgateway(addr, "1s", true);
    let rig = Rig::start(
        scrape,
        model(),
        Duration::from_secs(4),
        &["etcd-1", "etcd-2"],
    )
    .await;

    tokio::time::sleep(Duration::from_secs(WINDOW as u64 + 3)).await;
    rig.state().refresh().await;
    let metrics = rig.text("/metrics").await;
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-2\"}"),
        "{metrics}"
    );

    // etcd-2's collector dies: the Pushgateway keeps serving its last push, Prometheus
    // keeps scraping it, and its windows stay complete. They must not score.
    rig.pusher.pause("etcd-2");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let error = rig.error("/score?instance=etcd-2", 503).await;
    assert!(
        error.starts_with("collector unavailable")
            && error.contains("etcd-2")
            && error.contains("ago")
            && error.contains("--max-push-age 4s"),
        "{error}"
    );
    let (status, alive) = rig.get("/score?instance=etcd-1").await;
    assert_eq!(status, 200, "{alive}");
    let (status, fleet) = rig.get("/score").await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["unscorable"][0]["instance"], "etcd-2", "{fleet}");

    rig.state().refresh().await;
    let metrics = rig.text("/metrics").await;
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-1\"}")
            && !metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-2\"}"),
        "{metrics}"
    );

    // Every collector dead: /score names the collector, not a lack of points.
    rig.pusher.pause("etcd-1");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let error = rig.error("/score", 503).await;
    assert!(error.starts_with("collector unavailable"), "{error}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushgateway_scraped_coarser_than_the_step_is_a_422_that_says_so_and_not_ready() {
    // The model's step is 1 s; Prometheus scrapes the Pushgateway every 5 s.
    let scrape = |addr: &str| scrape_pushgateway(addr, "5s", true);
    let rig = Rig::start(scrape, model(), Duration::from_secs(10), &["etcd-1"]).await;

    let error = rig
        .error_until("/score?instance=etcd-1", 422, "every 5s")
        .await;
    for needle in [
        "etcd-1",
        "every 5s",
        "step is 1s",
        "--interval 1s",
        "export --step 5s",
    ] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    rig.state().refresh().await;
    let reason = rig.error("/readyz", 503).await;
    assert!(
        reason.contains("no instance can be scored") && reason.contains("every 5s"),
        "{reason}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_scraped_directly_and_coarser_than_the_step_is_a_422_that_says_so() {
    // Scraped as a plain target every 5 s: `instance` is the target, `up` has its
    // samples, and there is no push time to go by.
    let scrape = |addr: &str| {
        format!(
            "{}  metric_relabel_configs:\n    - source_labels: [__name__]\n      regex: push_time_seconds|push_failure_time_seconds\n      action: drop\n",
            scrape_pushgateway(addr, "5s", false)
        )
    };
    // A rate over four steps needs two samples in 4 s: at a 5 s scrape it has gaps.
    let rated = model_with(vec![
        spec("a", "max by (instance) (dr_test_a)"),
        spec("c", "sum by (instance) (rate(dr_test_c_total[4s]))"),
    ]);
    let rig = Rig::start(scrape, rated, Duration::from_secs(10), &["etcd-1"]).await;
    let target = rig.pushgateway.addr();

    let error = rig
        .error_until(&format!("/score?instance={target}"), 422, "every 5s")
        .await;
    assert!(
        error.contains(&target) && error.contains("step is 1s"),
        "{error}"
    );
    rig.shutdown().await;
}

/// The two-gauge model in format 2: each instance against its own baseline (fitted on
/// the last 60 steps, ready after 30, refitted every 5), threshold 0 so that every ready
/// window is anomalous.
fn model_v2() -> ModelBundle {
    let mut bundle = model();
    let meta = &mut bundle.meta;
    meta.format_version = FORMAT_VERSION_2;
    meta.threshold = 0.0;
    meta.normalisation.std_floor = vec![0.01, 0.01];
    meta.scoring_v2 = Some(ScoringV2 {
        transforms: vec![Transform::Identity; 2],
        scored: vec![true; 2],
        upward: Vec::new(),
        level: true,
        tail_steps: 3,
        tail_aggregate: Default::default(),
        mask_lead_steps: 1,
        calibration: vec![1.0; 2],
        calibration_quantile: 0.99,
        calibration_floor: 1.0,
        max_false_alarms_per_1000: 1.0,
        alert_for_steps: 2,
        calibration_false_alarms_per_1000: 0.0,
        fast_alert: Some(FastAlert {
            features: vec!["b".into()],
            threshold: 0.25,
            for_steps: 1,
            calibration_false_alarms_per_1000: 0.0,
        }),
        data_files: Vec::new(),
        baseline: BaselinePolicy {
            history_steps: 60,
            min_steps: 30,
            refresh_steps: 5,
        },
    });
    meta.validate().unwrap();
    bundle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_warms_up_on_its_own_history_then_may_alert() {
    let scrape = |addr: &str| scrape_pushgateway(addr, "1s", true);
    let rig = Rig::start(scrape, model_v2(), Duration::from_secs(10), &["etcd-1"]).await;

    // A window's worth of history (a busy machine may take a few seconds more to gather
    // it), short of the 30 steps the baseline needs: scored, above the threshold, and
    // still not anomalous; no score gauge for an alert.
    tokio::time::sleep(Duration::from_secs(WINDOW as u64 + 2)).await;
    let started = Instant::now();
    let (status, early) = loop {
        let (status, early) = rig.get("/score?instance=etcd-1").await;
        if status == 200 || started.elapsed() > Duration::from_secs(15) {
            break (status, early);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, 200, "{early}");
    assert_eq!(early["baseline"]["ready"], false, "{early}");
    assert_eq!(early["baseline"]["min_steps"], 30, "{early}");
    let steps = early["baseline"]["steps"].as_u64().unwrap();
    assert!((1..30).contains(&steps), "{early}");
    assert!(early["score"].as_f64().unwrap() > 0.0, "{early}");
    assert_eq!(early["anomalous"], false, "{early}");
    rig.state().refresh().await;
    let metrics = rig.text("/metrics").await;
    assert!(
        metrics.contains("etcd_dr_detector_baseline_ready{instance=\"etcd-1\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("etcd_dr_anomaly_score{"), "{metrics}");
    // The fast alert's threshold is there for its rule, and in every answer with the
    // fast score (of feature `b` alone); no fast score gauge while warming up either.
    assert!(
        metrics.contains("etcd_dr_anomaly_fast_threshold 0.25"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("etcd_dr_anomaly_fast_score{"),
        "{metrics}"
    );
    assert_eq!(early["fast_threshold"], 0.25, "{early}");
    let fast = early["fast_score"].as_f64().unwrap();
    let shares = &early["feature_shares"];
    let b_alone = early["score"].as_f64().unwrap() * shares["b"].as_f64().unwrap()
        / shares["a"]
            .as_f64()
            .unwrap()
            .max(shares["b"].as_f64().unwrap());
    assert!((fast - b_alone).abs() <= 1e-9 * b_alone.max(1.0), "{early}");
    let (status, ready) = rig.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready["note"]
            .as_str()
            .is_some_and(|n| n.contains("warming up") && n.contains("etcd-1")),
        "{ready}"
    );

    // Once its history is long enough (refitted every 5 steps), it is ready and alerts.
    let started = Instant::now();
    let late = loop {
        let (status, late) = rig.get("/score?instance=etcd-1").await;
        assert_eq!(status, 200, "{late}");
        if late["baseline"]["ready"] == true || started.elapsed() > Duration::from_secs(60) {
            break late;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(late["baseline"]["ready"], true, "{late}");
    assert!(late["baseline"]["steps"].as_u64().unwrap() >= 30, "{late}");
    assert_eq!(late["anomalous"], true, "{late}");
    rig.state().refresh().await;
    let metrics = rig.text("/metrics").await;
    assert!(
        metrics.contains("etcd_dr_detector_baseline_ready{instance=\"etcd-1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("etcd_dr_anomaly_score{instance=\"etcd-1\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("etcd_dr_anomaly_fast_score{instance=\"etcd-1\"}"),
        "{metrics}"
    );
    let (_, ready) = rig.get("/readyz").await;
    assert_eq!(ready, serde_json::json!({"status": "ready"}));
    rig.shutdown().await;
}
