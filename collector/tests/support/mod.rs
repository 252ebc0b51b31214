//! What the collector's integration tests share: building a config as the CLI would, and
//! reading back what a real Pushgateway serves for one grouping key.
#![allow(dead_code)] // each test binary uses a different part

use dr_collector::collect::Collector;
use dr_collector::config::{Args, Config};
use dr_collector::exposition::{self, MetricFamily};
use dr_collector::metrics::CollectorMetrics;
use prometheus_client::registry::Registry;

use clap::Parser;
use dr_testkit::{ChildGuard, Workdir, free_port};

pub fn config(args: &[&str]) -> Config {
    let argv = std::iter::once("dr-collector").chain(args.iter().copied());
    Config::from_args(Args::try_parse_from(argv).expect("flags parse")).expect("config valid")
}

pub fn collector(config: &Config) -> Collector {
    Collector::new(config, CollectorMetrics::register(&mut Registry::default())).unwrap()
}

/// The Pushgateway's whole page (pushed groups, its own metrics, push_time_seconds).
pub fn pushgateway_page(url: &str) -> String {
    let (status, body) = dr_testkit::http_get(&format!("{url}/metrics")).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The families of one grouping key, with only that key's samples.
pub fn group<'a>(page: &'a str, job: &str, instance: &str) -> Vec<MetricFamily<'a>> {
    exposition::parse(page)
        .unwrap()
        .into_iter()
        .filter_map(|mut family| {
            family
                .samples
                .retain(|s| s.label("job") == Some(job) && s.label("instance") == Some(instance));
            (!family.samples.is_empty() && !family.name.starts_with("push_")).then_some(family)
        })
        .collect()
}

/// The `le` bounds of a histogram family, in page order.
pub fn buckets(family: &MetricFamily<'_>) -> Vec<String> {
    family
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .filter_map(|s| s.label("le").map(str::to_string))
        .collect()
}

pub fn family<'f, 'a>(families: &'f [MetricFamily<'a>], name: &str) -> &'f MetricFamily<'a> {
    families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("family {name} missing"))
}

/// `dr-collector` (the binary at `bin`) as a service on a free loopback port, pushing every
/// second, with `env` on top (the targets, the Pushgateway, the timeout); its guard and
/// base URL once `/healthz` answers (within 20 s).
pub fn start_service(bin: &str, workdir: &Workdir, env: &[(&str, &str)]) -> (ChildGuard, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(bin);
    cmd.env("DR_COLLECTOR_INTERVAL", "1s")
        .env("DR_COLLECTOR_TIMEOUT", "500ms")
        .env("DR_COLLECTOR_LISTEN", &listen)
        .env("DR_COLLECTOR_LOG_FORMAT", "json")
        .env_remove("RUST_LOG");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let guard = ChildGuard::spawn(
        "dr-collector",
        cmd,
        &workdir.path().join("collector.log"),
        false,
    )
    .unwrap();
    let base = format!("http://{listen}");
    guard
        .wait_http_ok(
            &format!("{base}/healthz"),
            std::time::Duration::from_secs(20),
        )
        .unwrap();
    (guard, base)
}
