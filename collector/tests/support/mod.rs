//! What the collector's integration tests share: building a config as the CLI would, and
//! reading back what a real Pushgateway serves for one grouping key.
#![allow(dead_code)] // each test binary uses a different part

use dr_collector::collect::Collector;
use dr_collector::config::{Args, Config};
use dr_collector::exposition::{self, MetricFamily};
use dr_collector::metrics::CollectorMetrics;
use prometheus_client::registry::Registry;

use clap::Parser;

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
