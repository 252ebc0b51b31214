//! The `dr-collector` binary as an operator runs it: `--once` exit codes and messages,
//! bad flags, and the service's readiness, metrics, resilience and SIGTERM drain.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dr_testkit::{
    ChildGuard, EtcdCluster, EtcdOptions, Pushgateway, Workdir, free_port, http_get, run_within,
};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_dr-collector");

/// `--once` and bad flags end within seconds; a hung run fails the test here.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = run_within(
        Command::new(BIN).args(args).env_remove("RUST_LOG"),
        RUN_LIMIT,
    )
    .unwrap();
    (output, started.elapsed())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn once_succeeds_against_real_etcd_and_pushgateway() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let pushgateway = Pushgateway::start().unwrap();
    let url = format!("{}/metrics", etcd.member(0).metrics_url);
    let (output, _) = run(&[
        "--once",
        "--etcd-metrics-url",
        &url,
        "--pushgateway-url",
        &pushgateway.url(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("pushed "), "{stdout}");
}

#[test]
fn once_fails_fast_with_one_line_reasons() {
    let pushgateway = Pushgateway::start().unwrap();
    let dead = format!("http://127.0.0.1:{}/metrics", free_port());
    let html_page = format!("{}/", pushgateway.url());
    let cases = [
        // etcd unreachable
        (
            vec![
                "--etcd-metrics-url",
                dead.as_str(),
                "--pushgateway-url",
                "http://127.0.0.1:9",
            ],
            "etcd unreachable",
        ),
        // a page that is not exposition text (the Pushgateway's HTML home page)
        (
            vec![
                "--etcd-metrics-url",
                html_page.as_str(),
                "--pushgateway-url",
                "http://127.0.0.1:9",
            ],
            "not an exposition page",
        ),
    ];
    for (args, reason) in cases {
        let mut args: Vec<String> = args.into_iter().map(str::to_string).collect();
        args.insert(0, "--once".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (output, took) = run(&args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        assert_eq!(message.lines().count(), 1, "one line: {message}");
        assert!(message.contains(reason), "{reason}: {message}");
        assert!(took < Duration::from_secs(15), "took {took:?}");
    }
}

#[test]
fn once_reports_a_refusing_or_missing_pushgateway() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let url = format!("{}/metrics", etcd.member(0).metrics_url);
    // etcd's own metrics listener answers 404 to a push: a refusing "Pushgateway".
    let (output, _) = run(&[
        "--once",
        "--etcd-metrics-url",
        &url,
        "--pushgateway-url",
        &etcd.member(0).metrics_url,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Pushgateway refused with HTTP 404"),
        "{}",
        stderr(&output)
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (output, _) = run(&[
        "--once",
        "--etcd-metrics-url",
        &url,
        "--pushgateway-url",
        &dead,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Pushgateway unreachable"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let (output, _) = run(&[
        "--etcd-metrics-url",
        "http://a/metrics",
        "--pushgateway-url",
        "http://b",
        "--interval",
        "often",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not a duration"),
        "{}",
        stderr(&output)
    );
    let (output, _) = run(&[
        "--etcd-metrics-url",
        "http://a/metrics",
        "--pushgateway-url",
        "http://b",
        "--cacert",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--cacert /nonexistent/ca.pem: cannot read"),
        "{}",
        stderr(&output)
    );
    let (output, _) = run(&["--version"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("dr-collector "));
}

fn start_service(workdir: &Workdir, etcd_url: &str, pushgateway: &str) -> (ChildGuard, String) {
    support::start_service(
        BIN,
        workdir,
        &[
            ("DR_COLLECTOR_ETCD_METRICS_URL", etcd_url),
            ("DR_COLLECTOR_PUSHGATEWAY_URL", pushgateway),
        ],
    )
}

/// True once `counter{...,result="<result>"}` on the service's `/metrics` reaches `min`.
fn counted(base: &str, counter: &str, result: &str, min: f64) -> bool {
    http_get(&format!("{base}/metrics")).is_ok_and(|(_, body)| {
        body.lines().any(|l| {
            l.starts_with(&format!("{counter}{{"))
                && l.contains(&format!("result=\"{result}\""))
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= min)
        })
    })
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn service_turns_ready_counts_its_work_and_drains_on_sigterm() {
    let etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let pushgateway = Pushgateway::start().unwrap();
    let workdir = Workdir::temp("collector-service").unwrap();
    let url = format!("{}/metrics", etcd.member(0).metrics_url);
    let (mut guard, base) = start_service(&workdir, &url, &pushgateway.url());

    wait_for("/readyz 200", Duration::from_secs(20), || {
        http_get(&format!("{base}/readyz")).is_ok_and(|(status, _)| status == 200)
    });
    // Two intervals later the counters have moved past one success.
    wait_for("two successful pushes", Duration::from_secs(20), || {
        counted(&base, "etcd_dr_collector_pushes_total", "success", 2.0)
    });
    let (_, metrics) = http_get(&format!("{base}/metrics")).unwrap();
    assert!(
        metrics.contains("etcd_dr_collector_last_success_timestamp_seconds{"),
        "{metrics}"
    );
    let (_, pushed) = http_get(&format!("{}/metrics", pushgateway.url())).unwrap();
    assert!(
        pushed.contains("etcd_server_has_leader{"),
        "nothing reached the Pushgateway"
    );

    let status = guard.stop().unwrap().expect("collector was running");
    assert!(
        status.success(),
        "SIGTERM should drain and exit 0, got {status:?}"
    );
}

#[test]
fn service_survives_a_dead_etcd_and_says_so() {
    let pushgateway = Pushgateway::start().unwrap();
    let workdir = Workdir::temp("collector-dead-etcd").unwrap();
    let dead = format!("http://127.0.0.1:{}/metrics", free_port());
    let (mut guard, base) = start_service(&workdir, &dead, &pushgateway.url());
    wait_for("failed scrapes counted", Duration::from_secs(20), || {
        counted(&base, "etcd_dr_collector_scrapes_total", "error", 1.0)
    });
    // No scrape succeeded, so nothing was pushed: those series exist only because every
    // result of a target starts at 0 (a series born at 1 hides its first change from
    // increase()).
    let (_, metrics) = http_get(&format!("{base}/metrics")).unwrap();
    for family in [
        "etcd_dr_collector_scrapes_total",
        "etcd_dr_collector_pushes_total",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{family}{{"))
                    && l.contains("result=\"success\"")
                    && l.ends_with(" 0")),
            "no {family} success series at 0: {metrics}"
        );
    }
    let (status, body) = http_get(&format!("{base}/readyz")).unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no successful push yet"), "{body}");
    assert!(
        guard.is_running(),
        "the collector must not exit because etcd is down"
    );
    let status = guard.stop().unwrap().expect("collector was running");
    assert!(status.success(), "{status:?}");
}

/// The Pushgateway keeps the last push of a group forever: a member that stops answering
/// must not look alive there. With a real etcd stopped, its group is replaced by
/// `etcd_dr_collector_target_up 0` alone (no `etcd_server_has_leader` left behind), and
/// the collector's own gauge says 0 too; started again, it is 1 with its metrics.
#[test]
fn a_stopped_member_is_marked_down_in_the_pushgateway() {
    let mut etcd = EtcdCluster::start(EtcdOptions::default()).unwrap();
    let pushgateway = Pushgateway::start().unwrap();
    let workdir = Workdir::temp("collector-target-up").unwrap();
    let url = format!("{}/metrics", etcd.member(0).metrics_url);
    let (mut guard, base) = start_service(&workdir, &url, &pushgateway.url());
    let pushed = || {
        http_get(&format!("{}/metrics", pushgateway.url()))
            .unwrap()
            .1
    };
    let up = |page: &str, value: &str| {
        page.lines().any(|l| {
            l.starts_with("etcd_dr_collector_target_up{") && l.ends_with(&format!(" {value}"))
        })
    };
    wait_for(
        "target_up 1 with the metrics",
        Duration::from_secs(20),
        || {
            let page = pushed();
            up(&page, "1") && page.contains("etcd_server_has_leader{")
        },
    );
    etcd.stop_member(0).unwrap();
    wait_for("target_up 0 alone", Duration::from_secs(30), || {
        let page = pushed();
        up(&page, "0") && !page.contains("etcd_server_has_leader{")
    });
    let (_, own) = http_get(&format!("{base}/metrics")).unwrap();
    assert!(
        own.lines()
            .any(|l| l.starts_with("etcd_dr_collector_target_up{") && l.ends_with(" 0")),
        "{own}"
    );
    etcd.start_member(0).unwrap();
    wait_for("target_up 1 again", Duration::from_secs(30), || {
        let page = pushed();
        up(&page, "1") && page.contains("etcd_server_has_leader{")
    });
    let status = guard.stop().unwrap().expect("collector was running");
    assert!(status.success(), "{status:?}");
}
