//! The `dr-detector` binary as an operator runs it: `--version`, bad flags, `train` then
//! `eval` on small labelled CSVs (the printed metrics recomputed here from the scores),
//! `train` on too little data, `score` and `eval` on data at the wrong step, `serve`
//! with the built-in model, and `serve` draining an in-flight request on SIGTERM.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use dr_detector::model::inference::Scorer;
use dr_detector::model::model_dir::ModelBundle;
use dr_detector::training::dataset::Dataset;
use dr_detector::training::synth::{SynthOptions, generate};
use dr_testkit::{ChildGuard, Workdir, free_port, http_get};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dr-detector");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn write_synth(path: &Path, rows: usize, seed: u64, incidents: usize) {
    let csv = generate(&SynthOptions {
        rows,
        step_seconds: 2.0,
        seed,
        incidents,
        load_scale: 1.0,
    });
    std::fs::write(path, csv).unwrap();
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn version_prints_the_version() {
    let output = run(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("dr-detector {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_exit_non_zero_with_a_message() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "serve",
                "--prometheus-url",
                "http://p:9090",
                "--no-such-flag",
            ],
            "--no-such-flag",
        ),
        (&["serve"], "--prometheus-url"),
        (
            &[
                "serve",
                "--prometheus-url",
                "http://p:9090",
                "--refresh",
                "soon",
            ],
            "--refresh",
        ),
        (
            &[
                "serve",
                "--prometheus-url",
                "http://p:9090",
                "--etcd-selector",
                "job=etcd",
            ],
            "want label matchers like job=\"etcd\"",
        ),
        (
            &[
                "export",
                "--prometheus-url",
                "http://p:9090",
                "--start",
                "-1h",
                "--out",
                "x.csv",
                "--etcd-selector",
                "{job=\"etcd\"}",
            ],
            "--etcd-selector",
        ),
    ];
    for (args, needle) in cases {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// The area under the ROC curve by counting pairs (ties half): a second way to the number
/// `eval` prints.
/// As the other services: an address it cannot have is a usage error (2), named, and
/// the service never starts.
#[test]
fn serve_on_a_listen_address_in_use_exits_2_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let output = run(&["serve", "--prometheus-url", &nowhere, "--listen", &listen]);
    assert_eq!(output.status.code(), Some(2));
    // The log (on stderr too) says what was loaded first; the last line says why it ended.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("dr-detector: cannot listen on {listen}"))),
        "{stderr}"
    );
}

fn pairwise_auc(scored: &[(f64, bool)]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for &(p, _) in scored.iter().filter(|(_, l)| *l) {
        for &(n, _) in scored.iter().filter(|(_, l)| !*l) {
            pairs += 1.0;
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / pairs
}

#[test]
fn train_then_eval_print_metrics_that_match_the_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, eval_csv) = (dir.path().join("train.csv"), dir.path().join("eval.csv"));
    let model_dir = dir.path().join("model");
    write_synth(&eval_csv, 900, 11, 4);
    let summary = stdout_json(&train_quick(&train_csv, &model_dir));
    assert_eq!(summary["threshold_method"], "youden_j", "{summary}");
    assert!(summary["threshold_warning"].is_null(), "{summary}");
    assert_eq!(summary["window"], 10);
    assert_eq!(summary["step_seconds"], 2.0);
    // One floor per built-in feature: the synthetic data has them all.
    assert_eq!(
        summary["std_floor"].as_array().unwrap().len(),
        dr_detector::model::features::default_features(2.0).len()
    );
    assert!(summary["threshold_windows"].as_u64().unwrap() > 0);

    let report = stdout_json(&run(&[
        "eval",
        "--model",
        model_dir.to_str().unwrap(),
        "--data",
        eval_csv.to_str().unwrap(),
    ]));

    // The same windows scored here, through the library.
    let bundle = ModelBundle::load(&model_dir).unwrap();
    let scorer = Scorer::new(bundle).unwrap();
    let meta = &scorer.bundle.meta;
    let data = Dataset::read(&eval_csv)
        .unwrap()
        .select_features(&meta.feature_names())
        .unwrap();
    let w = meta.window;
    let scored: Vec<(f64, bool)> = data
        .window_starts(w, 2.0)
        .into_iter()
        .filter_map(|s| {
            let score = scorer
                .score(&data.window_values(s, w), &data.window_mask(s, w))
                .ok()?;
            Some((score.score, data.label_any(s, w) == Some(true)))
        })
        .collect();
    let count = |flagged: bool, label: bool| {
        scored
            .iter()
            .filter(|(s, l)| (*s > meta.threshold) == flagged && *l == label)
            .count()
    };
    let (tp, fp, fneg) = (count(true, true), count(true, false), count(false, true));
    let positives = tp + fneg;

    assert_eq!(report["windows"], scored.len(), "{report}");
    assert_eq!(report["anomalous_windows"], positives, "{report}");
    assert_eq!(f64_of(&report["threshold"]), meta.threshold);
    let confusion = &report["confusion"];
    assert_eq!(confusion["true_positives"], tp, "{report}");
    assert_eq!(confusion["false_positives"], fp, "{report}");
    assert_eq!(confusion["false_negatives"], fneg, "{report}");
    assert_eq!(confusion["true_negatives"], count(false, false), "{report}");
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / positives as f64;
    let f1 = 2.0 * precision * recall / (precision + recall);
    for (field, expected) in [("precision", precision), ("recall", recall), ("f1", f1)] {
        let got = f64_of(&report[field]);
        assert!(
            (got - expected).abs() < 1e-12,
            "{field}: {got} vs {expected}"
        );
    }
    let auc = f64_of(&report["auc"]);
    assert!((auc - pairwise_auc(&scored)).abs() < 1e-9, "{auc}");
    // Sane for a model of this data: it separates incidents well.
    assert!(auc > 0.8 && recall > 0.5, "{report}");
    // Youden's J at the reported best threshold is what it says, and no worse than at
    // the model's own threshold.
    let best = &report["best_j"];
    let at = |threshold: f64| {
        let flagged = |label: bool| {
            scored
                .iter()
                .filter(|(s, l)| *s > threshold && *l == label)
                .count() as f64
        };
        let negatives = (scored.len() - positives) as f64;
        flagged(true) / positives as f64 - flagged(false) / negatives
    };
    let j = at(f64_of(&best["threshold"]));
    assert!((j - f64_of(&best["youden_j"])).abs() < 1e-12, "{best}");
    assert!(j >= at(meta.threshold), "{best}");
}

/// `eval` as an alert, recomputed here from the window scores: the first step where the
/// score has been above the threshold for `for` steps in a row, per label run.
#[test]
fn eval_judges_the_model_as_an_alert_per_incident_kind_beside_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.etcd-1.csv"));
    let model_dir = dir.path().join("model");
    let trained = train_quick(&dir.path().join("train.csv"), &model_dir);
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    write_synth(&a, 700, 21, 3);
    write_synth(&b, 700, 22, 3);
    // b's incidents are named by its recording's sidecar, as dr-dataset writes it.
    std::fs::write(
        dir.path().join("b.incidents.csv"),
        "kind,start_offset_seconds,end_offset_seconds\nspace,0,1\ndisk,2,3\nspace,4,5\n",
    )
    .unwrap();
    let report = stdout_json(&run(&[
        "eval",
        "--model",
        model_dir.to_str().unwrap(),
        "--data",
        &format!("{},{}", a.display(), b.display()),
        "--alert-for",
        "6s",
        "--json",
    ]));
    let alerting = &report["alerting"];
    assert_eq!(
        alerting["represents_seconds"], 2.0,
        "the data's step by default"
    );
    assert_eq!(alerting["model"]["for_steps"], 3, "6 s of 2 s steps");

    let scorer = Scorer::new(ModelBundle::load(&model_dir).unwrap()).unwrap();
    let meta = &scorer.bundle.meta;
    let (mut caught, mut incidents) = (std::collections::BTreeMap::new(), 0);
    for path in [&a, &b] {
        let data = Dataset::read(path)
            .unwrap()
            .select_features(&meta.feature_names())
            .unwrap();
        let labels = data.labels.clone().unwrap();
        let w = meta.window;
        let mut above = vec![false; data.len()];
        for s in data.window_starts(w, 2.0) {
            if let Ok(score) = scorer.score(&data.window_values(s, w), &data.window_mask(s, w)) {
                above[s + w - 1] = score.score > meta.threshold;
            }
        }
        let fires: Vec<bool> = (0..above.len())
            .map(|i| i >= 2 && above[i] && above[i - 1] && above[i - 2])
            .collect();
        let kinds = if path == &b {
            vec!["space", "disk", "space"]
        } else {
            vec!["incident"; 3]
        };
        let mut run = 0;
        let mut i = 0;
        while i < labels.len() {
            if labels[i] == 1 {
                let start = i;
                while i < labels.len() && labels[i] == 1 {
                    i += 1;
                }
                let end = (i - 1 + 3).min(labels.len() - 1);
                let hit = (start..=end).any(|t| fires[t]);
                let entry = caught.entry(kinds[run]).or_insert((0, 0));
                entry.0 += usize::from(hit);
                entry.1 += 1;
                run += 1;
                incidents += 1;
            } else {
                i += 1;
            }
        }
    }
    assert_eq!(incidents, 6);
    assert!(
        caught.values().any(|(hit, _)| *hit > 0),
        "the model catches some synthetic incident: {caught:?}"
    );
    let kinds = alerting["model"]["kinds"].as_array().unwrap();
    for k in kinds {
        let name = k["kind"].as_str().unwrap();
        let (hit, total) = caught[name];
        assert_eq!(k["incidents"], total, "{k}");
        assert_eq!(k["detected"], hit, "{k}");
    }
    assert_eq!(kinds.len(), caught.len());
    // The synthetic data has the built-in columns, so the rules are judged beside it.
    let rules: Vec<&str> = alerting["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"EtcdDatabaseQuotaLowSpace")
            && rules.contains(&"etcdHighNumberOfLeaderChanges"),
        "{rules:?}"
    );
    assert!(alerting["any_rule"]["normal_steps"].as_u64().unwrap() > 0);
    // Every false alarm is listed: on a normal row of its file, with a feature named.
    let listed = alerting["model_false_alarms"].as_array().unwrap();
    assert_eq!(
        listed.len() as u64,
        alerting["model"]["false_alarms"].as_u64().unwrap()
    );
    for fa in listed {
        let file = fa["recording"].as_str().unwrap();
        let path = [&a, &b]
            .into_iter()
            .find(|p| p.to_str() == Some(file))
            .unwrap();
        let labels = Dataset::read(path).unwrap().labels.unwrap();
        let step = fa["step"].as_u64().unwrap() as usize;
        assert_eq!(labels[step], 0, "{fa}");
        let feature = fa["feature"].as_str().unwrap();
        assert!(meta.feature_names().iter().any(|n| n == feature), "{fa}");
        assert!(fa["score"].as_f64().unwrap() > meta.threshold, "{fa}");
    }
    later_than_rules_are_listed(alerting, &[a.as_path(), b.as_path()]);
}

/// Every incident a rule caught first is listed, at the first step of one of its file's
/// incidents, with the rule sooner than the model (or the model silent).
fn later_than_rules_are_listed(alerting: &Value, files: &[&Path]) {
    let listed = alerting["model_later_than_rules"].as_array().unwrap();
    assert_eq!(
        listed.len() as u64,
        alerting["caught_by_a_rule"].as_u64().unwrap()
            - alerting["model_no_later_than_rules"].as_u64().unwrap(),
        "{listed:?}"
    );
    for late in listed {
        let file = late["recording"].as_str().unwrap();
        let path = files.iter().find(|p| p.to_str() == Some(file)).unwrap();
        let labels = Dataset::read(path).unwrap().labels.unwrap();
        let start = late["start"].as_u64().unwrap() as usize;
        assert!(
            labels[start] == 1 && (start == 0 || labels[start - 1] == 0),
            "{late}"
        );
        let rule = late["rule_delay_steps"].as_u64().unwrap();
        assert!(
            late["model_delay_steps"]
                .as_u64()
                .is_none_or(|model| model > rule),
            "{late}"
        );
    }
}

/// A small model trained on synthetic data at a 2 s step (the synthetic data's): the
/// train command's output.
fn train_quick(train_csv: &Path, model_dir: &Path) -> Output {
    write_synth(train_csv, 900, 3, 4);
    run(&[
        "train",
        "--data",
        train_csv.to_str().unwrap(),
        "--out",
        model_dir.to_str().unwrap(),
        "--window",
        "10",
        "--hidden",
        "8",
        "--epochs",
        "3",
        "--max-train-windows",
        "256",
    ])
}

#[test]
fn train_on_too_little_data_says_its_threshold_is_optimistic() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("short.csv");
    let model_dir = dir.path().join("model");
    // Twelve normal rows, window 10: three windows, none to hold out.
    write_synth(&csv, 12, 5, 0);
    let summary = stdout_json(&run(&[
        "train",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        model_dir.to_str().unwrap(),
        "--window",
        "10",
        "--hidden",
        "4",
        "--epochs",
        "1",
    ]));
    assert_eq!(
        summary["threshold_method"], "training_quantile",
        "{summary}"
    );
    let warning = summary["threshold_warning"].as_str().unwrap();
    assert!(warning.contains("no held-out"), "{warning}");
    let saved = ModelBundle::load(&model_dir).unwrap();
    assert_eq!(saved.meta.threshold_method, "training_quantile");
}

#[test]
fn score_and_eval_refuse_data_at_another_step_than_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("two_seconds.csv");
    // The default model's step is 1 s; these rows are 2 s apart.
    write_synth(&csv, 200, 3, 1);
    assert_eq!(ModelBundle::default_model().unwrap().meta.step_seconds, 1.0);
    for command in ["score", "eval"] {
        let output = run(&[command, "--data", csv.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("step is 2s") && stderr.contains("trained at 1s"),
            "{command}: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{command}");
    }
}

/// `dr-detector serve` on `port` over a Prometheus at `prometheus`, with `extra` flags.
fn spawn_serve(workdir: &Workdir, prometheus: &str, port: u16, extra: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--prometheus-url",
        prometheus,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .args(extra)
    .env_remove("RUST_LOG");
    let guard = ChildGuard::spawn(
        "dr-detector",
        cmd,
        &workdir.path().join("detector.log"),
        false,
    )
    .unwrap();
    guard
        .wait_http_ok(
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(30),
        )
        .unwrap();
    guard
}

#[test]
fn serve_without_a_model_scores_with_the_built_in_one() {
    let default = ModelBundle::default_model().unwrap().meta;
    // Nothing needs Prometheus here: a posted window, and /metrics.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let prometheus = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let workdir = Workdir::temp("detector-default").unwrap();
    let port = free_port();
    let mut guard = spawn_serve(&workdir, &prometheus, port, &["--refresh", "1h"]);
    let base = format!("http://127.0.0.1:{port}");

    let window: Vec<&Vec<f64>> =
        std::iter::repeat_n(&default.normalisation.mean, default.window).collect();
    let body = serde_json::json!({ "window": window }).to_string();
    let (code, answer) = dr_testkit::http_post(
        &format!("{base}/score"),
        "application/json",
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["model"], "default", "{answer}");
    assert_eq!(f64_of(&answer["threshold"]), default.threshold);
    assert_eq!(f64_of(&answer["step_seconds"]), default.step_seconds);

    let (code, metrics) = http_get(&format!("{base}/metrics")).unwrap();
    assert_eq!(code, 200, "{metrics}");
    let threshold = metrics
        .lines()
        .find_map(|line| line.strip_prefix("etcd_dr_anomaly_threshold "))
        .unwrap_or_else(|| panic!("no threshold gauge: {metrics}"));
    assert_eq!(threshold.parse::<f64>().unwrap(), default.threshold);
    assert!(guard.stop().unwrap().unwrap().success());
}

#[test]
fn serve_drains_an_in_flight_request_on_sigterm_and_exits_0() {
    // A Prometheus that accepts (the kernel backlog does) and never answers: a /score
    // request is then in flight for the whole --prometheus-timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let prometheus = format!("http://{}", silent.local_addr().unwrap());
    let workdir = Workdir::temp("detector-serve").unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut guard = spawn_serve(
        &workdir,
        &prometheus,
        port,
        &["--prometheus-timeout", "2s", "--refresh", "1h"],
    );

    let in_flight = std::thread::spawn({
        let url = format!("{base}/score");
        move || http_get(&url)
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = guard.stop().unwrap().expect("the detector was running");
    assert!(
        status.success(),
        "SIGTERM should drain and exit 0, got {status:?}: {}",
        guard.log_tail(20)
    );
    // The request that was in flight got its answer (Prometheus timed out), not a reset.
    let (code, body) = in_flight.join().unwrap().unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("prometheus unavailable") && body.contains(&prometheus),
        "{body}"
    );
    assert!(
        guard.log_tail(5).contains("drained"),
        "{}",
        guard.log_tail(20)
    );
    drop(silent);
}

/// `dr-detector score ... | head -c 1`: the reader goes away before the output is
/// written. That is the reader's choice, not a crash (println! would panic, exit 101).
#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/recordings/t4-mid.csv");
    let mut child = Command::new(BIN)
        .args(["score", "--data", data, "--count", "64"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: every write the child makes hits a broken pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn eval_warns_when_it_is_given_a_file_that_trained_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (train_csv, calib_csv, test_csv) = (
        dir.path().join("a.csv"),
        dir.path().join("b.csv"),
        dir.path().join("c.csv"),
    );
    write_synth(&train_csv, 900, 3, 4);
    write_synth(&calib_csv, 900, 4, 4);
    write_synth(&test_csv, 600, 5, 3);
    let model_dir = dir.path().join("model");
    let summary = stdout_json(&run(&[
        "train",
        "--data",
        train_csv.to_str().unwrap(),
        "--calibrate",
        calib_csv.to_str().unwrap(),
        "--out",
        model_dir.to_str().unwrap(),
        "--window",
        "10",
        "--hidden",
        "8",
        "--epochs",
        "2",
        "--alert-for",
        "6s",
    ]));
    assert_eq!(summary["format_version"], 2, "{summary}");
    assert_eq!(summary["scoring_v2"]["alert_for_steps"], 3, "{summary}");
    let model = model_dir.to_str().unwrap();
    // The training file: a warning on stderr and in the JSON.
    let output = run(&[
        "eval",
        "--model",
        model,
        "--data",
        &format!("{},{}", test_csv.display(), train_csv.display()),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = stdout_json(&output);
    assert!(
        stderr.contains("warning") && stderr.contains("a.csv") && stderr.contains("to train"),
        "{stderr}"
    );
    assert_eq!(report["warnings"].as_array().unwrap().len(), 1, "{report}");
    // A file used for neither: no warning.
    let output = run(&[
        "eval",
        "--model",
        model,
        "--data",
        test_csv.to_str().unwrap(),
        "--json",
    ]);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("warning"));
    assert!(stdout_json(&output).get("warnings").is_none());
    // Several files without --calibrate: format 1 takes one.
    let output = run(&[
        "train",
        "--data",
        &format!("{},{}", train_csv.display(), calib_csv.display()),
        "--out",
        model,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--calibrate"));
}
