//! Command-line flags (each also read from `DR_COLLECTOR_<FLAG>`), checked once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dr_common::duration::parse_duration;
use dr_common::reload::Reloading;
use dr_common::telemetry::LogFormat;
use dr_common::tls::TlsMaterial;
use reqwest::Url;

use crate::allowlist::Allowlist;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dr-collector",
    version,
    about = "Scrapes etcd's /metrics, keeps the families that matter and pushes them to a Prometheus Pushgateway"
)]
pub struct Args {
    /// etcd metrics endpoint, e.g. http://127.0.0.1:2381/metrics (kubeadm) or
    /// https://10.0.0.1:2379/metrics with --cacert/--cert/--key. Repeat for several members.
    #[arg(
        long = "etcd-metrics-url",
        env = "DR_COLLECTOR_ETCD_METRICS_URL",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_metrics_urls: Vec<Url>,

    /// Pushgateway base URL, e.g. http://pushgateway:9091.
    #[arg(long, env = "DR_COLLECTOR_PUSHGATEWAY_URL")]
    pub pushgateway_url: Url,

    /// Time between two scrape-and-push cycles.
    #[arg(long, env = "DR_COLLECTOR_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,

    /// The `job` of the Pushgateway grouping key.
    #[arg(long, env = "DR_COLLECTOR_JOB", default_value = "etcd")]
    pub job: String,

    /// The `instance` of the grouping key, one per metrics URL in the same order; defaults to
    /// each URL's host:port (what Prometheus itself would call it).
    #[arg(
        long = "instance",
        env = "DR_COLLECTOR_INSTANCE",
        value_delimiter = ','
    )]
    pub instances: Vec<String>,

    /// Also keep families whose whole name matches this regular expression (repeatable; the
    /// environment variable takes one, join alternatives with `|`).
    #[arg(long = "allow", env = "DR_COLLECTOR_ALLOW")]
    pub allow: Vec<String>,

    /// CA certificate that signed etcd's serving certificate (PEM).
    #[arg(long, env = "DR_COLLECTOR_CACERT")]
    pub cacert: Option<PathBuf>,

    /// Client certificate for etcd's mTLS client port (PEM); needs --key.
    #[arg(long, env = "DR_COLLECTOR_CERT")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM); needs --cert.
    #[arg(long, env = "DR_COLLECTOR_KEY")]
    pub key: Option<PathBuf>,

    /// Scrape and push once, then exit: 0 on success, 1 with a one-line reason otherwise.
    #[arg(long, env = "DR_COLLECTOR_ONCE")]
    pub once: bool,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "DR_COLLECTOR_LISTEN", default_value = "0.0.0.0:9310")]
    pub listen: SocketAddr,

    /// Deadline for one scrape or one push.
    #[arg(long, env = "DR_COLLECTOR_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Log line format.
    #[arg(long, env = "DR_COLLECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export spans over OTLP/gRPC to this collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "DR_COLLECTOR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// One etcd member to scrape and the grouping key it is pushed under.
#[derive(Debug, Clone)]
pub struct Target {
    pub metrics_url: Url,
    pub instance: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub targets: Vec<Target>,
    pub pushgateway_url: Url,
    pub interval: Duration,
    pub job: String,
    pub allowlist: Allowlist,
    /// etcd's TLS files, read again when they change.
    pub tls: Option<Arc<Reloading<TlsMaterial>>>,
    pub once: bool,
    pub listen: SocketAddr,
    pub timeout: Duration,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self, String> {
        for url in args
            .etcd_metrics_urls
            .iter()
            .chain(std::iter::once(&args.pushgateway_url))
        {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "{url}: want an http:// or https:// URL with a host"
                ));
            }
        }
        if args.job.is_empty() {
            return Err("--job must not be empty".into());
        }
        let instances = match args.instances.len() {
            0 => args
                .etcd_metrics_urls
                .iter()
                .map(default_instance)
                .collect(),
            n if n == args.etcd_metrics_urls.len() => args.instances.clone(),
            n => {
                return Err(format!(
                    "{n} --instance values for {} --etcd-metrics-url values; give one per URL or none",
                    args.etcd_metrics_urls.len()
                ));
            }
        };
        if let Some(empty) = instances.iter().position(String::is_empty) {
            return Err(format!("--instance number {} is empty", empty + 1));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = instances.iter().find(|i| !seen.insert(i.as_str())) {
            return Err(format!(
                "instance {dup:?} appears twice: each target needs its own grouping key"
            ));
        }
        if args.timeout >= args.interval && !args.once {
            return Err(format!(
                "--timeout ({}) must be shorter than --interval ({})",
                humantime::format_duration(args.timeout),
                humantime::format_duration(args.interval)
            ));
        }
        let tls = TlsMaterial::reloading(
            args.cacert.as_deref(),
            args.cert.as_deref(),
            args.key.as_deref(),
            RELOAD_CHECK_INTERVAL,
        )?
        .map(Arc::new);
        let targets = args
            .etcd_metrics_urls
            .into_iter()
            .zip(instances)
            .map(|(metrics_url, instance)| Target {
                metrics_url,
                instance,
            })
            .collect();
        Ok(Config {
            targets,
            pushgateway_url: args.pushgateway_url,
            interval: args.interval,
            job: args.job,
            allowlist: Allowlist::new(&args.allow)?,
            tls,
            once: args.once,
            listen: args.listen,
            timeout: args.timeout,
            log_format: args.log_format,
            otlp_endpoint: args.otlp_endpoint,
        })
    }
}

/// How often, at most, a scrape looks at the TLS files for a change (a `stat` each).
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn default_instance(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_reads_its_environment_variable() {
        use clap::CommandFactory;
        let missing = dr_common::process::flags_without_env(&Args::command(), "DR_COLLECTOR_");
        assert!(missing.is_empty(), "{missing:?}");
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("dr-collector").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::from_args(args)
    }

    #[test]
    fn defaults_name_each_target_by_host_and_port() {
        let config = parse(&[
            "--etcd-metrics-url",
            "http://127.0.0.1:2381/metrics,http://10.0.0.2:2381/metrics",
            "--pushgateway-url",
            "http://pg:9091",
        ])
        .unwrap();
        let instances: Vec<_> = config.targets.iter().map(|t| t.instance.as_str()).collect();
        assert_eq!(instances, ["127.0.0.1:2381", "10.0.0.2:2381"]);
        assert_eq!(config.interval, Duration::from_secs(60));
        assert_eq!(config.job, "etcd");
        assert!(config.tls.is_none());
    }

    #[test]
    fn instance_count_must_match_url_count() {
        let err = parse(&[
            "--etcd-metrics-url",
            "http://a:2381/metrics",
            "--etcd-metrics-url",
            "http://b:2381/metrics",
            "--instance",
            "node-1",
            "--pushgateway-url",
            "http://pg:9091",
        ])
        .unwrap_err();
        assert!(err.contains("1 --instance values for 2"), "{err}");
    }

    #[test]
    fn bad_values_exit_with_a_message() {
        let base = [
            "--etcd-metrics-url",
            "http://a:2381/metrics",
            "--pushgateway-url",
        ];
        let with = |extra: &[&str]| {
            let mut args: Vec<&str> = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args).unwrap_err()
        };
        assert!(with(&["ftp://pg"]).contains("want an http"));
        assert!(with(&["http://pg", "--interval", "soon"]).contains("not a duration"));
        assert!(with(&["http://pg", "--allow", "("]).starts_with("--allow"));
        assert!(with(&["http://pg", "--cert", "/nonexistent"]).contains("--cert needs --key"));
        assert!(
            with(&["http://pg", "--interval", "5s", "--timeout", "10s"]).contains("shorter than")
        );
        assert!(
            parse(&["--pushgateway-url", "http://pg"]).is_err(),
            "URL is required"
        );
    }
}
