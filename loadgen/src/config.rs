//! Command-line flags (each also read from `DR_LOADGEN_<FLAG>`), checked once at start-up.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use dr_common::duration::parse_duration;
use dr_common::telemetry::LogFormat;
use dr_common::tls::TlsMaterial;

use crate::size::parse_size;

#[derive(Parser, Debug)]
#[command(
    name = "dr-loadgen",
    version,
    about = "Drives etcd with steady traffic, big-value storms or key churn, then prints what it saw"
)]
pub struct Args {
    /// etcd client URLs, e.g. http://127.0.0.1:2379 or https://10.0.0.1:2379 with
    /// --cacert/--cert/--key. Comma-separated or repeated.
    #[arg(
        long,
        env = "DR_LOADGEN_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub endpoints: Vec<String>,

    /// CA certificate that signed etcd's serving certificate (PEM).
    #[arg(long, env = "DR_LOADGEN_CACERT")]
    pub cacert: Option<PathBuf>,

    /// Client certificate for etcd's mTLS client port (PEM); needs --key.
    #[arg(long, env = "DR_LOADGEN_CERT")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM); needs --cert.
    #[arg(long, env = "DR_LOADGEN_KEY")]
    pub key: Option<PathBuf>,

    /// How long to wait for etcd to answer at start-up before giving up.
    #[arg(long, env = "DR_LOADGEN_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Deadline for one etcd request.
    #[arg(long, env = "DR_LOADGEN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Print the summary as one line of JSON on stdout instead of text.
    #[arg(long, env = "DR_LOADGEN_JSON", global = true)]
    pub json: bool,

    /// Log line format (logs go to stderr; RUST_LOG sets the level, default warn).
    #[arg(long, env = "DR_LOADGEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub scenario: ScenarioArgs,
}

#[derive(Subcommand, Debug)]
pub enum ScenarioArgs {
    /// Mixed reads and writes of Kubernetes-sized values (1-10 KB) over a bounded key space,
    /// with a watcher on the prefix and a fraction of keys on short leases.
    Steady {
        #[command(flatten)]
        load: LoadArgs,
        /// Size of the key space.
        #[arg(long, env = "DR_LOADGEN_KEYS", default_value_t = 1000)]
        keys: u64,
        /// Fraction of writes attached to a short lease (their keys expire with it).
        #[arg(long, env = "DR_LOADGEN_LEASE_FRACTION", default_value_t = 0.1)]
        lease_fraction: f64,
        /// Time to live of those leases; a new one is granted every half TTL.
        #[arg(long, env = "DR_LOADGEN_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
        lease_ttl: Duration,
        /// Watchers on the prefix, each counting the events it sees.
        #[arg(long, env = "DR_LOADGEN_WATCHERS", default_value_t = 1)]
        watchers: usize,
    },
    /// Large values written in a loop as new keys, so the db grows toward its quota; stops
    /// when etcd answers NOSPACE. With --overwrite, rewrites a fixed set of keys instead
    /// (history that compact + defrag can reclaim, unlike new keys).
    Bigkey {
        #[command(flatten)]
        load: LoadArgs,
        /// Size of each value (etcd refuses requests above --max-request-bytes, 1.5 MiB by default).
        #[arg(long, env = "DR_LOADGEN_VALUE_SIZE", default_value = "1MiB", value_parser = parse_size)]
        value_size: u64,
        /// Rewrite --keys keys round-robin instead of creating new ones.
        #[arg(long, env = "DR_LOADGEN_OVERWRITE")]
        overwrite: bool,
        /// How many keys --overwrite rewrites.
        #[arg(long, env = "DR_LOADGEN_KEYS", default_value_t = 8)]
        keys: u64,
    },
    /// The same few keys rewritten fast: revision history and fragmentation.
    Churn {
        #[command(flatten)]
        load: LoadArgs,
        /// How many keys are rewritten round-robin.
        #[arg(long, env = "DR_LOADGEN_KEYS", default_value_t = 10)]
        keys: u64,
        /// Size of each value.
        #[arg(long, env = "DR_LOADGEN_VALUE_SIZE", default_value = "1KiB", value_parser = parse_size)]
        value_size: u64,
    },
}

/// Flags every scenario takes.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Operations per second, all tasks together [default: steady 100, bigkey 20, churn 500].
    #[arg(long, env = "DR_LOADGEN_RATE")]
    pub rate: Option<f64>,

    /// Stop after this long.
    #[arg(long, env = "DR_LOADGEN_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop once this many bytes (keys and values) have been sent in writes.
    #[arg(long, env = "DR_LOADGEN_MAX_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub max_bytes: u64,

    /// Every key lives under `<prefix><scenario>/`.
    #[arg(long, env = "DR_LOADGEN_PREFIX", default_value = "/dr-loadgen/")]
    pub prefix: String,

    /// Concurrent tasks issuing requests.
    #[arg(long, env = "DR_LOADGEN_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// Seed for keys, sizes and values; the summary prints the one used, to replay a run.
    #[arg(long, env = "DR_LOADGEN_SEED")]
    pub seed: Option<u64>,
}

/// Parses the command line. `--help` and `--version` print and exit as usual; any other
/// mistake comes back as one line (clap's own report spans a screen).
pub fn parse_args<I, T>(args: I) -> Result<Args, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Args::try_parse_from(args).map_err(|err| match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        _ => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            format!("{}; see --help", first.trim_start_matches("error: "))
        }
    })
}

/// What a scenario does, with its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    Steady {
        keys: u64,
        lease_fraction: f64,
        lease_ttl_seconds: i64,
        watchers: usize,
    },
    Bigkey {
        value_size: usize,
        /// `Some(keys)` with --overwrite.
        overwrite: Option<u64>,
    },
    Churn {
        keys: u64,
        value_size: usize,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Steady { .. } => "steady",
            Scenario::Bigkey { .. } => "bigkey",
            Scenario::Churn { .. } => "churn",
        }
    }

    fn default_rate(&self) -> f64 {
        match self {
            Scenario::Steady { .. } => 100.0,
            Scenario::Bigkey { .. } => 20.0,
            Scenario::Churn { .. } => 500.0,
        }
    }
}

/// The bounds and pacing every scenario shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub rate: f64,
    pub duration: Duration,
    pub max_bytes: u64,
    /// `<--prefix><scenario>/`: where this scenario's keys live.
    pub key_prefix: String,
    pub concurrency: usize,
    pub seed: u64,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub tls: Option<TlsMaterial>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub json: bool,
    pub log_format: LogFormat,
    pub load: Load,
    pub scenario: Scenario,
}

/// Above this a run is a mistake rather than a load test.
const MAX_RATE: f64 = 1_000_000.0;
const MAX_CONCURRENCY: usize = 256;
/// kube-apiserver's default `--etcd-prefix`: never write among Kubernetes' own keys.
const KUBERNETES_PREFIX: &str = "/registry";

impl Config {
    pub fn from_args(args: Args) -> Result<Self, String> {
        for endpoint in &args.endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(str::is_empty) {
                return Err(format!(
                    "--endpoints {endpoint:?}: want http://host:port or https://host:port"
                ));
            }
        }
        let tls = TlsMaterial::from_files(
            args.cacert.as_deref(),
            args.cert.as_deref(),
            args.key.as_deref(),
        )?;
        let plain = args.endpoints.iter().find(|e| e.starts_with("http://"));
        if let (Some(_), Some(plain)) = (&tls, plain) {
            return Err(format!(
                "--endpoints {plain}: TLS flags are given, so use https:// URLs"
            ));
        }
        let (load, scenario) = match args.scenario {
            ScenarioArgs::Steady {
                load,
                keys,
                lease_fraction,
                lease_ttl,
                watchers,
            } => {
                if !(0.0..=1.0).contains(&lease_fraction) {
                    return Err(format!(
                        "--lease-fraction {lease_fraction}: want a fraction between 0 and 1"
                    ));
                }
                let ttl = i64::try_from(lease_ttl.as_secs()).unwrap_or(i64::MAX);
                if ttl < 2 {
                    return Err(
                        "--lease-ttl must be at least 2s (etcd counts whole seconds)".into(),
                    );
                }
                if watchers > MAX_CONCURRENCY {
                    return Err(format!("--watchers {watchers}: at most {MAX_CONCURRENCY}"));
                }
                let scenario = Scenario::Steady {
                    keys: positive("--keys", keys)?,
                    lease_fraction,
                    lease_ttl_seconds: ttl,
                    watchers,
                };
                (load, scenario)
            }
            ScenarioArgs::Bigkey {
                load,
                value_size,
                overwrite,
                keys,
            } => {
                let scenario = Scenario::Bigkey {
                    value_size: value_size_of(value_size)?,
                    overwrite: if overwrite {
                        Some(positive("--keys", keys)?)
                    } else {
                        None
                    },
                };
                (load, scenario)
            }
            ScenarioArgs::Churn {
                load,
                keys,
                value_size,
            } => {
                let scenario = Scenario::Churn {
                    keys: positive("--keys", keys)?,
                    value_size: value_size_of(value_size)?,
                };
                (load, scenario)
            }
        };
        let load = validate_load(load, &scenario)?;
        Ok(Config {
            endpoints: args.endpoints,
            tls,
            connect_timeout: args.connect_timeout,
            request_timeout: args.request_timeout,
            json: args.json,
            log_format: args.log_format,
            load,
            scenario,
        })
    }
}

fn validate_load(args: LoadArgs, scenario: &Scenario) -> Result<Load, String> {
    let rate = args.rate.unwrap_or_else(|| scenario.default_rate());
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        return Err(format!(
            "--rate {rate}: want operations per second above 0 and at most {MAX_RATE}"
        ));
    }
    if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
        return Err(format!(
            "--concurrency {}: want 1 to {MAX_CONCURRENCY}",
            args.concurrency
        ));
    }
    let mut prefix = args.prefix;
    if prefix.is_empty() {
        return Err("--prefix must not be empty".into());
    }
    if prefix.starts_with(KUBERNETES_PREFIX) {
        return Err(format!(
            "--prefix {prefix:?} is among Kubernetes' own keys ({KUBERNETES_PREFIX}/); pick another"
        ));
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    Ok(Load {
        rate,
        duration: args.duration,
        max_bytes: args.max_bytes,
        key_prefix: format!("{prefix}{}/", scenario.name()),
        concurrency: args.concurrency,
        seed,
    })
}

fn positive(flag: &str, value: u64) -> Result<u64, String> {
    if value == 0 {
        return Err(format!("{flag} must be at least 1"));
    }
    Ok(value)
}

fn value_size_of(bytes: u64) -> Result<usize, String> {
    // Far above anything etcd accepts in one request; refuse before allocating it.
    const LIMIT: u64 = 64 << 20;
    if bytes > LIMIT {
        return Err(format!(
            "--value-size {bytes}: at most 64MiB (etcd's own request limit is lower)"
        ));
    }
    usize::try_from(bytes).map_err(|_| format!("--value-size {bytes} does not fit in memory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_reads_its_environment_variable() {
        use clap::CommandFactory;
        let missing = dr_common::process::flags_without_env(&Args::command(), "DR_LOADGEN_");
        assert!(missing.is_empty(), "{missing:?}");
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        parse_args(std::iter::once("dr-loadgen").chain(args.iter().copied()))
            .and_then(Config::from_args)
    }

    #[test]
    fn defaults_depend_on_the_scenario() {
        let steady = parse(&["--endpoints", "http://127.0.0.1:2379", "steady"]).unwrap();
        assert_eq!(steady.load.rate, 100.0);
        assert_eq!(steady.load.key_prefix, "/dr-loadgen/steady/");
        assert_eq!(steady.load.duration, Duration::from_secs(60));
        assert_eq!(steady.load.max_bytes, 1 << 30);
        assert!(!steady.json);

        let bigkey = parse(&[
            "--endpoints",
            "http://a:2379,http://b:2379",
            "bigkey",
            "--prefix",
            "/t",
            "--seed",
            "7",
            "--json",
        ])
        .unwrap();
        assert_eq!(bigkey.endpoints.len(), 2);
        assert_eq!(bigkey.load.rate, 20.0);
        assert_eq!(bigkey.load.seed, 7);
        assert_eq!(bigkey.load.key_prefix, "/t/bigkey/");
        assert!(bigkey.json, "--json is accepted after the scenario too");
        assert_eq!(
            bigkey.scenario,
            Scenario::Bigkey {
                value_size: 1 << 20,
                overwrite: None
            }
        );

        let churn = parse(&["--endpoints", "http://a:2379", "churn", "--rate", "50"]).unwrap();
        assert_eq!(churn.load.rate, 50.0);
        assert_eq!(
            churn.scenario,
            Scenario::Churn {
                keys: 10,
                value_size: 1024
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        let with = |extra: &[&str]| {
            let mut args = vec!["--endpoints", "http://127.0.0.1:2379"];
            args.extend_from_slice(extra);
            parse(&args).unwrap_err()
        };
        assert!(with(&["steady", "--rate", "0"]).contains("--rate"));
        assert!(with(&["steady", "--rate", "NaN"]).contains("--rate"));
        assert!(with(&["churn", "--concurrency", "0"]).contains("--concurrency"));
        assert!(with(&["churn", "--keys", "0"]).contains("--keys"));
        assert!(with(&["steady", "--lease-fraction", "2"]).contains("--lease-fraction"));
        assert!(with(&["steady", "--lease-ttl", "500ms"]).contains("--lease-ttl"));
        assert!(with(&["steady", "--duration", "soon"]).contains("not a duration"));
        assert!(with(&["bigkey", "--value-size", "1XB"]).contains("not a size"));
        assert!(with(&["bigkey", "--value-size", "1GiB"]).contains("at most 64MiB"));
        assert!(with(&["steady", "--prefix", "/registry/pods/"]).contains("Kubernetes"));
        assert!(with(&["--cert", "/nonexistent", "steady"]).contains("--cert needs --key"));
        let unknown = with(&["sideways"]);
        assert!(unknown.contains("unrecognized subcommand"), "{unknown}");
        assert!(!unknown.contains('\n'), "one line: {unknown}");
        assert!(
            parse(&["--endpoints", "127.0.0.1:2379", "steady"])
                .unwrap_err()
                .contains("want http://")
        );
        assert!(parse(&["steady"]).is_err(), "--endpoints is required");
    }
}
