//! Pushgateway, Prometheus and Alertmanager through the harness.

use std::time::Duration;

use dr_testkit::alertmanager::NULL_CONFIG;
use dr_testkit::{Alertmanager, Prometheus, Pushgateway, http_get, http_put, pid_alive};

#[test]
fn prometheus_scrapes_a_metric_pushed_to_the_pushgateway() {
    let pg = Pushgateway::start().unwrap();
    let (status, body) = http_put(
        &format!("{}/metrics/job/j/instance/i", pg.url()),
        "text/plain; version=0.0.4",
        b"# TYPE dr_testkit_probe gauge\ndr_testkit_probe 42\n",
    )
    .unwrap();
    assert!(status == 200 || status == 202, "push: {status} {body}");

    let scrape = format!(
        "- job_name: pushgateway\n  honor_labels: true\n  static_configs:\n    - targets: ['{}']\n",
        pg.addr()
    );
    let rule = "groups:\n  - name: probe\n    rules:\n      - record: dr_testkit_probe_doubled\n        expr: dr_testkit_probe * 2\n";
    let prom = Prometheus::start(
        &scrape,
        &[("probe.yml", rule)],
        Duration::from_secs(1),
        None,
    )
    .unwrap();
    let res = prom
        .wait_for_query(
            "dr_testkit_probe{job=\"j\",instance=\"i\"}",
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(res[0]["value"][1], "42");
    let res = prom
        .wait_for_query("dr_testkit_probe_doubled", Duration::from_secs(20))
        .unwrap();
    assert_eq!(res[0]["value"][1], "84");
    prom.reload().unwrap();

    let pids = [pg.pid(), prom.pid()];
    drop(prom);
    drop(pg);
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} survived drop");
    }
}

#[test]
fn alertmanager_starts_and_is_ready() {
    let am = Alertmanager::start(NULL_CONFIG).unwrap();
    let (status, _) = http_get(&format!("{}/-/ready", am.url())).unwrap();
    assert_eq!(status, 200);
    let (status, body) = http_get(&format!("{}/api/v2/status", am.url())).unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_bad_config_fails_fast_with_the_log() {
    let err = match Alertmanager::start("route: [not, a, map]\n") {
        Ok(_) => panic!("a broken config started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("alertmanager"), "{err}");
    assert!(err.contains("exited"), "{err}");
    assert!(err.contains("alertmanager.log"), "{err}");
}

#[test]
fn a_panicking_test_still_stops_its_servers() {
    let pid = std::sync::Mutex::new(0);
    let result = std::panic::catch_unwind(|| {
        let pg = Pushgateway::start().unwrap();
        *pid.lock().unwrap() = pg.pid();
        panic!("test failure while the server runs");
    });
    assert!(result.is_err());
    let pid = *pid.lock().unwrap();
    assert!(pid != 0 && !pid_alive(pid), "pid {pid} survived the panic");
}
