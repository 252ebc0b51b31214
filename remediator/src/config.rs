//! Command-line flags (each also read from `DR_REMEDIATOR_<FLAG>`), checked once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dr_common::duration::parse_duration;
use dr_common::reload::Reloading;
use dr_common::telemetry::LogFormat;
use dr_common::tls::TlsMaterial;
use reqwest::Url;

use crate::actions::compression::Compression;
use crate::actions::proof::ProofSettings;
use crate::actions::restore::{self, CommandFlags, RestoreCommands, RestorePreset};
use crate::actions::retention::Retention;
use crate::actions::snapshot::SnapshotPolicy;
use crate::actions::store::{SECONDARY, SnapshotStore};
use crate::etcd::EtcdAccess;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dr-remediator",
    version,
    about = "Receives Alertmanager webhooks and repairs etcd safely: snapshot, compact, defrag, disarm, verify, restore"
)]
pub struct Args {
    /// etcd client URLs, e.g. https://10.0.0.1:2379,https://10.0.0.2:2379.
    #[arg(
        long,
        env = "DR_REMEDIATOR_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required_unless_present = "snapshot_fetch_latest"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Where snapshots and the audit log (`audit.jsonl`) are written.
    #[arg(
        long,
        env = "DR_REMEDIATOR_SNAPSHOT_DIR",
        required_unless_present_any = ["snapshot_fetch_latest", "bump_revision_past"]
    )]
    pub snapshot_dir: Option<PathBuf>,

    /// Object store every verified snapshot is also copied to, in the background:
    /// s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///dir.
    /// Credentials from the store's usual environment (AWS_ACCESS_KEY_ID, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, web identity, ...), never from flags.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE")]
    pub snapshot_store: Option<String>,

    /// How many snapshots to keep in --snapshot-store (the newest); default --snapshot-retain.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_RETAIN")]
    pub snapshot_store_retain: Option<usize>,

    /// Keep every snapshot younger than this in --snapshot-store (e.g. 24h; 0: none by
    /// age); default --snapshot-retain-within.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_RETAIN_WITHIN", value_parser = parse_optional_duration)]
    pub snapshot_store_retain_within: Option<MaybeDuration>,

    /// Keep the newest snapshot of each of the last N days in --snapshot-store; default
    /// --snapshot-retain-daily.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_RETAIN_DAILY")]
    pub snapshot_store_retain_daily: Option<u32>,

    /// Keep the newest snapshot of each of the last N weeks in --snapshot-store; default
    /// --snapshot-retain-weekly.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_RETAIN_WEEKLY")]
    pub snapshot_store_retain_weekly: Option<u32>,

    /// A second object store (another region or provider) that receives every snapshot
    /// too, with its own retention and proof; its failures never fail --snapshot-store's.
    /// Same URL forms and credentials environment (one set for both stores).
    #[arg(
        long,
        env = "DR_REMEDIATOR_SNAPSHOT_STORE_SECONDARY",
        requires = "snapshot_store"
    )]
    pub snapshot_store_secondary: Option<String>,

    /// How many snapshots to keep in --snapshot-store-secondary; default that of
    /// --snapshot-store.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_SECONDARY_RETAIN")]
    pub snapshot_store_secondary_retain: Option<usize>,

    /// Keep every snapshot younger than this in --snapshot-store-secondary (0: none by
    /// age); default that of --snapshot-store.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_SECONDARY_RETAIN_WITHIN", value_parser = parse_optional_duration)]
    pub snapshot_store_secondary_retain_within: Option<MaybeDuration>,

    /// One a day for the last N days in --snapshot-store-secondary; default that of
    /// --snapshot-store.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_SECONDARY_RETAIN_DAILY")]
    pub snapshot_store_secondary_retain_daily: Option<u32>,

    /// One a week for the last N weeks in --snapshot-store-secondary; default that of
    /// --snapshot-store.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_SECONDARY_RETAIN_WEEKLY")]
    pub snapshot_store_secondary_retain_weekly: Option<u32>,

    /// Compress the snapshots sent to every store: none, zstd (level 3) or zstd:LEVEL
    /// (1-19). A compressed one is stored as <name>.zst, a plain zstd frame whose checksum
    /// covers the stored bytes. Reading needs no setting: each object's name says how it
    /// was written.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_STORE_COMPRESSION", default_value = "none", value_parser = Compression::parse)]
    pub snapshot_store_compression: Compression,

    /// Time between proofs that each store's newest snapshot restores (downloaded,
    /// verified, restored into a throwaway etcd on loopback, revision and keys compared);
    /// 0: only on demand (POST /proof). Needs --snapshot-store.
    #[arg(long, env = "DR_REMEDIATOR_PROOF_INTERVAL", default_value = "6h", value_parser = parse_optional_duration)]
    pub proof_interval: MaybeDuration,

    /// The etcd server a proof starts from the restored data; the cluster's version (or
    /// newer). Found on PATH unless a path.
    #[arg(long, env = "DR_REMEDIATOR_PROOF_ETCD_BIN", default_value = "etcd")]
    pub proof_etcd_bin: PathBuf,

    /// etcdctl (3.4) or etcdutl (3.5+), for `snapshot status` and `snapshot restore` in
    /// a proof.
    #[arg(
        long,
        env = "DR_REMEDIATOR_PROOF_RESTORE_BIN",
        default_value = "etcdctl"
    )]
    pub proof_restore_bin: PathBuf,

    /// Scratch space of a proof (the download and the restored data dir, about twice the
    /// db), removed after each; default <snapshot-dir>/proof.
    #[arg(long, env = "DR_REMEDIATOR_PROOF_DIR")]
    pub proof_dir: Option<PathBuf>,

    /// Deadline for one proof of one store, download to teardown.
    #[arg(long, env = "DR_REMEDIATOR_PROOF_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub proof_timeout: Duration,

    /// Download the newest snapshot of --snapshot-store that verifies (its SHA-256 and
    /// etcd's trailer; a corrupt one is refused and the one before it tried) into DIR,
    /// print {name, sha256, bytes, path} as JSON and exit; for a restore by hand.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_FETCH_LATEST", value_name = "DIR")]
    pub snapshot_fetch_latest: Option<PathBuf>,

    /// After a restore from a snapshot, write revisions until the cluster's is past REV
    /// (the lost cluster's last revision, or more), compact there, print what was done as
    /// JSON and exit: every watch from an older revision is told it was compacted, and its
    /// client lists again. For when no etcdutl with --bump-revision is at hand (etcd 3.4).
    #[arg(long, env = "DR_REMEDIATOR_BUMP_REVISION_PAST", value_name = "REV",
        value_parser = clap::value_parser!(i64).range(1..))]
    pub bump_revision_past: Option<i64>,

    /// The most revisions --bump-revision-past writes; a larger gap is refused, untouched.
    #[arg(
        long,
        env = "DR_REMEDIATOR_BUMP_REVISION_MAX_WRITES",
        default_value_t = 1_000_000
    )]
    pub bump_revision_max_writes: u64,

    /// CA certificate that signed etcd's serving certificate (PEM).
    #[arg(long, env = "DR_REMEDIATOR_CACERT")]
    pub cacert: Option<PathBuf>,

    /// Client certificate for etcd (PEM), e.g. /etc/kubernetes/pki/etcd/healthcheck-client.crt; needs --key.
    #[arg(long, env = "DR_REMEDIATOR_CERT")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM); needs --cert.
    #[arg(long, env = "DR_REMEDIATOR_KEY")]
    pub key: Option<PathBuf>,

    /// dr-detector base URL; when set, a remediation needs `GET <url>/score` to confirm.
    #[arg(long, env = "DR_REMEDIATOR_DETECTOR_URL")]
    pub detector_url: Option<Url>,

    /// File holding the bearer token /webhook and /actions want; without it they are open.
    /// Read again when it changes.
    #[arg(long, env = "DR_REMEDIATOR_WEBHOOK_TOKEN_FILE")]
    pub webhook_token_file: Option<PathBuf>,

    /// Serve HTTPS with this certificate (PEM, chain first); needs --tls-key-file. Read
    /// again when it changes.
    #[arg(long, env = "DR_REMEDIATOR_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, env = "DR_REMEDIATOR_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// The alert that triggers a remediation; other alerts are skipped.
    #[arg(
        long,
        env = "DR_REMEDIATOR_ALERT_NAME",
        default_value = "EtcdAnomalyScoreHigh"
    )]
    pub alert_name: String,

    /// Rule alerts that start the space plan without the detector's confirmation, e.g.
    /// EtcdNoSpace,EtcdDatabaseQuotaLowSpace,EtcdDatabaseHighFragmentationRatio. The
    /// diagnosis still decides the plan (a member down or an election storm is never
    /// defragmented). Empty: only --alert-name acts.
    #[arg(long, env = "DR_REMEDIATOR_SPACE_ALERTS", value_delimiter = ',')]
    pub space_alerts: Vec<String>,

    /// How long to let etcd settle after the repair before checking its health.
    #[arg(long, env = "DR_REMEDIATOR_HEALTH_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub health_wait: Duration,

    /// After a remediation, the same alert (fingerprint) is skipped for this long.
    #[arg(long, env = "DR_REMEDIATOR_COOLDOWN", default_value = "10m", value_parser = parse_duration)]
    pub cooldown: Duration,

    /// What to do when etcd is still unavailable after the repair.
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_MODE", value_enum, default_value_t = RestoreMode::None)]
    pub restore_mode: RestoreMode,

    /// Fills the restore commands for a known layout (explicit --restore-*-cmd flags win).
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_PRESET", value_enum)]
    pub restore_preset: Option<RestorePreset>,

    /// etcd's static pod manifest, for --restore-preset kubeadm.
    #[arg(long, env = "DR_REMEDIATOR_KUBEADM_MANIFEST", default_value = restore::KUBEADM_MANIFEST)]
    pub kubeadm_manifest: String,

    /// Shell command that stops a member. Placeholders: {member} {data_dir} {new_data_dir}
    /// {old_data_dir} {snapshot} {peer_url} {initial_cluster} {cluster_token} {work_dir}
    /// {action_id}.
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_STOP_CMD")]
    pub restore_stop_cmd: Option<String>,

    /// Shell command that restores {snapshot} into {new_data_dir}.
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_CMD")]
    pub restore_cmd: Option<String>,

    /// Shell command that puts {new_data_dir} in place of {data_dir}, keeping the old one as {old_data_dir}.
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_SWAP_CMD")]
    pub restore_swap_cmd: Option<String>,

    /// Shell command that starts a member again.
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_START_CMD")]
    pub restore_start_cmd: Option<String>,

    /// Each member's data dir; {member} is replaced by the member name.
    #[arg(
        long,
        env = "DR_REMEDIATOR_MEMBER_DATA_DIR",
        default_value = "/var/lib/etcd"
    )]
    pub member_data_dir: String,

    /// Deadline for each restore command.
    #[arg(long, env = "DR_REMEDIATOR_RESTORE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub restore_timeout: Duration,

    /// This replica's name in the etcd lock's owner key: a restarted process releases the
    /// locks of its own name left by its killed predecessor. Must differ between replicas.
    /// Default: an id made once and kept in `<snapshot-dir>/identity`.
    #[arg(long, env = "DR_REMEDIATOR_IDENTITY")]
    pub identity: Option<String>,

    /// Alertmanager's base URL; a retry of a skipped rule alert asks it whether the alert
    /// still fires (`GET /api/v2/alerts`). Without it, such a retry trusts the alert for
    /// --retry-skipped-for.
    #[arg(long, env = "DR_REMEDIATOR_ALERTMANAGER_URL")]
    pub alertmanager_url: Option<Url>,

    /// An alert skipped because another run held the lock is retried, while it still
    /// fires, for this long after the skip.
    #[arg(long, env = "DR_REMEDIATOR_RETRY_SKIPPED_FOR", default_value = "10m", value_parser = parse_duration)]
    pub retry_skipped_for: Duration,

    /// The first wait before retrying a skipped alert; it doubles after each busy attempt,
    /// up to 30s (or this, if longer).
    #[arg(long, env = "DR_REMEDIATOR_RETRY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub retry_interval: Duration,

    /// At most this many attempts per skipped alert; 0 turns retries off.
    #[arg(long, env = "DR_REMEDIATOR_RETRY_MAX_ATTEMPTS", default_value_t = 20)]
    pub retry_max_attempts: u32,

    /// Log the plan and touch nothing.
    #[arg(long, env = "DR_REMEDIATOR_DRY_RUN")]
    pub dry_run: bool,

    /// Take one verified snapshot into --snapshot-dir, print it as JSON and exit
    /// (0 on success, 1 with the reason otherwise); no server, no webhook.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_ONCE")]
    pub snapshot_once: bool,

    /// Address for /webhook, /actions, /healthz, /readyz and /metrics.
    #[arg(long, env = "DR_REMEDIATOR_LISTEN", default_value = "0.0.0.0:9312")]
    pub listen: SocketAddr,

    /// Time between scheduled snapshots.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,

    /// How many snapshots to keep (the newest), whatever their age.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_RETAIN", default_value_t = 5)]
    pub snapshot_retain: usize,

    /// Also keep every snapshot younger than this (e.g. 24h); 0: none by age.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_RETAIN_WITHIN", default_value = "0", value_parser = parse_optional_duration)]
    pub snapshot_retain_within: MaybeDuration,

    /// Also keep the newest snapshot of each of the last N days (UTC), today included.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_RETAIN_DAILY", default_value_t = 0)]
    pub snapshot_retain_daily: u32,

    /// Also keep the newest snapshot of each of the last N weeks (from Monday, UTC).
    #[arg(
        long,
        env = "DR_REMEDIATOR_SNAPSHOT_RETAIN_WEEKLY",
        default_value_t = 0
    )]
    pub snapshot_retain_weekly: u32,

    /// Space quota assumed for members that do not report theirs (etcd before 3.6);
    /// etcd's default is 2 GiB.
    #[arg(
        long,
        env = "DR_REMEDIATOR_ETCD_QUOTA_BYTES",
        default_value_t = 2 * 1024 * 1024 * 1024
    )]
    pub etcd_quota_bytes: u64,

    /// Deadline for ordinary etcd calls (status, alarm, compact, put).
    #[arg(long, env = "DR_REMEDIATOR_ETCD_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub etcd_timeout: Duration,

    /// Deadline for defragmenting one member (it blocks the member while it runs).
    #[arg(long, env = "DR_REMEDIATOR_DEFRAG_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub defrag_timeout: Duration,

    /// Deadline for one snapshot download.
    #[arg(long, env = "DR_REMEDIATOR_SNAPSHOT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub snapshot_timeout: Duration,

    /// Log line format.
    #[arg(long, env = "DR_REMEDIATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export spans over OTLP/gRPC to this collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "DR_REMEDIATOR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestoreMode {
    /// Never restore; a person decides.
    None,
    /// Run the configured restore commands.
    Command,
}

/// Why the flags were refused at start-up; the text names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--etcd-endpoints {endpoint}: not a URL ({reason}); want http(s)://host:port")]
    NotAUrl { endpoint: String, reason: String },
    #[error("--etcd-endpoints {0}: want an http:// or https:// URL with a host")]
    NotHttp(String),
    #[error("--snapshot-retain must be at least 1")]
    NoRetention,
    #[error("--snapshot-store-retain must be at least 1")]
    NoStoreRetention,
    #[error("--snapshot-store-secondary-retain must be at least 1")]
    NoSecondaryRetention,
    #[error("--snapshot-fetch-latest needs --snapshot-store")]
    FetchWithoutStore,
    #[error("{0}")]
    Store(#[from] crate::actions::store::StoreError),
    #[error("--alert-name must not be empty")]
    NoAlertName,
    #[error("--snapshot-dir {}: cannot create: {error}", .path.display())]
    SnapshotDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--webhook-token-file {}: cannot read: {error}", .path.display())]
    TokenUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--webhook-token-file {}: empty", .0.display())]
    TokenEmpty(PathBuf),
    /// The TLS files, as dr-common reads them.
    #[error("{0}")]
    Tls(String),
    /// The listener's certificate and key.
    #[error("--tls-cert-file/--tls-key-file: {0}")]
    ListenerTls(String),
    #[error("--identity {0:?}: want a non-empty name without '/'")]
    BadIdentity(String),
    #[error("{}: cannot keep the replica identity: {error}", .path.display())]
    IdentityFile {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `--restore-mode command` without this command and without a preset that has it.
    #[error("--restore-mode command needs {0} (or --restore-preset)")]
    RestoreCommand(&'static str),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    /// Where snapshots go (with the audit log), how many stay, how long one may take.
    pub snapshots: SnapshotPolicy,
    /// etcd's TLS files, read again when they change.
    pub tls: Option<Arc<Reloading<TlsMaterial>>>,
    pub detector_url: Option<Url>,
    /// The bearer token, read again when its file changes; never empty.
    pub webhook_token: Option<Arc<Reloading<String>>>,
    /// The listener's certificate: HTTPS when set.
    pub listener_tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
    pub alert_name: String,
    /// `--space-alerts`, without empty names.
    pub space_alerts: Vec<String>,
    pub health_wait: Duration,
    pub cooldown: Duration,
    /// `Some` with `--restore-mode command`.
    pub restore: Option<RestoreCommands>,
    pub dry_run: bool,
    /// Names this replica's etcd lock keys.
    pub identity: String,
    pub alertmanager_url: Option<Url>,
    /// How alerts skipped as busy are retried; `None` when turned off.
    pub retry: Option<RetryPolicy>,
    pub snapshot_once: bool,
    /// How stores are proven restorable; `Some` with a store.
    pub proof: Option<ProofSettings>,
    /// `--snapshot-fetch-latest`: download into this dir and exit.
    pub snapshot_fetch_latest: Option<PathBuf>,
    /// `--bump-revision-past`: the revision to move past, and the most writes for it.
    pub bump_revision_past: Option<(i64, u64)>,
    pub listen: SocketAddr,
    pub snapshot_interval: Duration,
    pub etcd_quota_bytes: u64,
    pub etcd_timeout: Duration,
    pub defrag_timeout: Duration,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        for endpoint in &args.etcd_endpoints {
            let url = Url::parse(endpoint).map_err(|err| ConfigError::NotAUrl {
                endpoint: endpoint.clone(),
                reason: err.to_string(),
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::NotHttp(endpoint.clone()));
            }
        }
        if args.snapshot_retain == 0 {
            return Err(ConfigError::NoRetention);
        }
        let local_retention = Retention {
            count: args.snapshot_retain,
            within: args.snapshot_retain_within.unwrap_or_default(),
            daily: args.snapshot_retain_daily,
            weekly: args.snapshot_retain_weekly,
        };
        let store_retention = Retention {
            count: args.snapshot_store_retain.unwrap_or(args.snapshot_retain),
            within: args
                .snapshot_store_retain_within
                .map_or(local_retention.within, Option::unwrap_or_default),
            daily: args
                .snapshot_store_retain_daily
                .unwrap_or(local_retention.daily),
            weekly: args
                .snapshot_store_retain_weekly
                .unwrap_or(local_retention.weekly),
        };
        if store_retention.count == 0 {
            return Err(ConfigError::NoStoreRetention);
        }
        let secondary_retention = Retention {
            count: args
                .snapshot_store_secondary_retain
                .unwrap_or(store_retention.count),
            within: args
                .snapshot_store_secondary_retain_within
                .map_or(store_retention.within, Option::unwrap_or_default),
            daily: args
                .snapshot_store_secondary_retain_daily
                .unwrap_or(store_retention.daily),
            weekly: args
                .snapshot_store_secondary_retain_weekly
                .unwrap_or(store_retention.weekly),
        };
        if secondary_retention.count == 0 {
            return Err(ConfigError::NoSecondaryRetention);
        }
        let store = args
            .snapshot_store
            .as_deref()
            .map(|url| {
                SnapshotStore::open(url, store_retention.count, &[]).map(|mut store| {
                    store.retention = store_retention;
                    store.compression = args.snapshot_store_compression;
                    store
                })
            })
            .transpose()?;
        let secondary = match (&store, args.snapshot_store_secondary.as_deref()) {
            (Some(primary), Some(url)) => {
                let mut secondary = SnapshotStore::open(url, secondary_retention.count, &[])?;
                secondary.retention = secondary_retention;
                secondary.compression = args.snapshot_store_compression;
                // One set of metric families, labelled by store.
                secondary.metrics = primary.metrics.for_store(SECONDARY);
                Some(Arc::new(secondary))
            }
            _ => None,
        };
        let store = store.map(Arc::new);
        if args.snapshot_fetch_latest.is_some() && store.is_none() {
            return Err(ConfigError::FetchWithoutStore);
        }
        // A download or a revision bump, run once by hand, needs no snapshot dir of its own
        // (a download's dir stands in) and leaves no identity file.
        let one_off = args.snapshot_fetch_latest.is_some() || args.bump_revision_past.is_some();
        let Some(snapshot_dir) = args
            .snapshot_dir
            .clone()
            .or_else(|| args.snapshot_fetch_latest.clone())
            .or_else(|| args.bump_revision_past.map(|_| std::env::temp_dir()))
        else {
            return Err(ConfigError::FetchWithoutStore);
        };
        if args.alert_name.is_empty() {
            return Err(ConfigError::NoAlertName);
        }
        std::fs::create_dir_all(&snapshot_dir).map_err(|error| ConfigError::SnapshotDir {
            path: snapshot_dir.clone(),
            error,
        })?;
        let identity = match args.identity {
            Some(name) if name.is_empty() || name.contains('/') => {
                return Err(ConfigError::BadIdentity(name));
            }
            Some(name) => name,
            None => kept_identity(&snapshot_dir, !args.dry_run && !one_off)?,
        };
        // parse_duration refuses 0, so the window and interval are never empty.
        let retry = (args.retry_max_attempts > 0).then_some(RetryPolicy {
            window: args.retry_skipped_for,
            interval: args.retry_interval,
            max_attempts: args.retry_max_attempts,
        });
        let webhook_token = args
            .webhook_token_file
            .as_deref()
            .map(webhook_token)
            .transpose()?
            .map(Arc::new);
        let tls = TlsMaterial::reloading(
            args.cacert.as_deref(),
            args.cert.as_deref(),
            args.key.as_deref(),
            RELOAD_CHECK_INTERVAL,
        )
        .map_err(ConfigError::Tls)?
        .map(Arc::new);
        let listener_tls = match (args.tls_cert_file.as_deref(), args.tls_key_file.as_deref()) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Arc::new(
                dr_common::https::server_tls(cert, key, RELOAD_CHECK_INTERVAL)
                    .map_err(ConfigError::ListenerTls)?,
            )),
            (Some(_), None) => {
                return Err(ConfigError::ListenerTls(
                    "the certificate needs its key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::ListenerTls(
                    "the key needs its certificate".into(),
                ));
            }
        };
        let restore = match args.restore_mode {
            RestoreMode::None => None,
            RestoreMode::Command => Some(RestoreCommands::resolve(
                args.restore_preset,
                &args.kubeadm_manifest,
                CommandFlags {
                    stop: args.restore_stop_cmd,
                    restore: args.restore_cmd,
                    swap: args.restore_swap_cmd,
                    start: args.restore_start_cmd,
                },
                args.member_data_dir,
                args.restore_timeout,
            )?),
        };
        Ok(Config {
            etcd_endpoints: args.etcd_endpoints,
            proof: store.as_ref().map(|_| ProofSettings {
                interval: args.proof_interval,
                etcd_bin: args.proof_etcd_bin,
                restore_bin: args.proof_restore_bin,
                scratch: args.proof_dir.unwrap_or_else(|| snapshot_dir.join("proof")),
                timeout: args.proof_timeout,
            }),
            snapshots: SnapshotPolicy {
                dir: snapshot_dir,
                retention: local_retention,
                timeout: args.snapshot_timeout,
                store,
                secondary,
                // --snapshot-once exits after its snapshot: a background upload would die.
                upload_inline: args.snapshot_once,
            },
            tls,
            detector_url: args.detector_url,
            webhook_token,
            listener_tls,
            alert_name: args.alert_name,
            space_alerts: args
                .space_alerts
                .into_iter()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect(),
            health_wait: args.health_wait,
            cooldown: args.cooldown,
            restore,
            dry_run: args.dry_run,
            identity,
            alertmanager_url: args.alertmanager_url,
            retry,
            snapshot_once: args.snapshot_once,
            snapshot_fetch_latest: args.snapshot_fetch_latest,
            bump_revision_past: args
                .bump_revision_past
                .map(|past| (past, args.bump_revision_max_writes)),
            listen: args.listen,
            snapshot_interval: args.snapshot_interval,
            etcd_quota_bytes: args.etcd_quota_bytes,
            etcd_timeout: args.etcd_timeout,
            defrag_timeout: args.defrag_timeout,
            log_format: args.log_format,
            otlp_endpoint: args.otlp_endpoint,
        })
    }
}

/// A duration or none (`0`, `off`). An alias, so that clap takes it as one value.
pub type MaybeDuration = Option<Duration>;

/// A duration, or `0`/`off` for none.
fn parse_optional_duration(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "0" | "off" | "" => Ok(None),
        other => parse_duration(other).map(Some),
    }
}

/// How an alert skipped as busy is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// From the skip to the last attempt.
    pub window: Duration,
    /// The first wait; doubled after each busy attempt up to [`RetryPolicy::MAX_WAIT`].
    pub interval: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The longest wait between two attempts (unless the interval is longer): a lock
    /// freed is seen within this.
    pub const MAX_WAIT: Duration = Duration::from_secs(30);

    /// The wait after `wait`.
    pub fn next_wait(&self, wait: Duration) -> Duration {
        (wait * 2).min(Self::MAX_WAIT.max(self.interval))
    }
}

/// The identity file in the snapshot dir: it lives as long as the audit log beside it,
/// so a replica keeps its name across restarts, also where the pod's name changes.
pub const IDENTITY_FILE: &str = "identity";

/// The identity kept in `dir`, made there when missing; `keep` false (dry-run, which
/// takes no lock and writes nothing but its audit log) makes one for this process only.
fn kept_identity(dir: &Path, keep: bool) -> Result<String, ConfigError> {
    let path = dir.join(IDENTITY_FILE);
    let fail = |error| ConfigError::IdentityFile {
        path: path.clone(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() && !text.trim().contains('/') => {
            return Ok(text.trim().to_owned());
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(err)),
    }
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| fail(std::io::Error::other("no randomness from the system")))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("remediator-{id}");
    if !keep {
        return Ok(id);
    }
    // Written whole or not at all: a torn file would rename the replica.
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(fail)?;
    Ok(id)
}

/// How often, at most, the token and certificate files are looked at for a change: a
/// rotation is in use a second after it lands, and a busy webhook costs one `stat` a second.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The token file, kept current. At start-up a file that cannot be read or is empty is a
/// refusal; later such a state keeps the last token (an empty one would let everyone in).
fn webhook_token(path: &Path) -> Result<Reloading<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::TokenUnreadable {
        path: path.to_path_buf(),
        error,
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError::TokenEmpty(path.to_path_buf()));
    }
    let shown = path.display().to_string();
    Reloading::new(
        "webhook_token",
        vec![path.to_path_buf()],
        RELOAD_CHECK_INTERVAL,
        move |contents| {
            let token = String::from_utf8_lossy(contents.first().map_or(&[][..], Vec::as_slice))
                .trim()
                .to_owned();
            if token.is_empty() {
                return Err(format!("--webhook-token-file {shown}: empty"));
            }
            Ok(token)
        },
    )
    .map_err(|reason| ConfigError::TokenUnreadable {
        path: path.to_path_buf(),
        error: std::io::Error::other(reason),
    })
}

impl Config {
    /// How every action reaches etcd.
    pub fn etcd_access(&self) -> EtcdAccess {
        EtcdAccess {
            endpoints: self.etcd_endpoints.clone(),
            tls: self.tls.clone(),
            timeout: self.etcd_timeout,
            default_quota_bytes: self.etcd_quota_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_reads_its_environment_variable() {
        use clap::CommandFactory;
        let missing = dr_common::process::flags_without_env(&Args::command(), "DR_REMEDIATOR_");
        assert!(missing.is_empty(), "{missing:?}");
    }

    /// Refusals by clap or by the checks here, as the message a person reads.
    fn parse(extra: &[&str]) -> Result<Config, String> {
        let dir = std::env::temp_dir().join("dr-remediator-config-test");
        let dir = dir.to_string_lossy().into_owned();
        let mut args = vec![
            "dr-remediator",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--snapshot-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        let args = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.alert_name, "EtcdAnomalyScoreHigh");
        assert_eq!(config.health_wait, Duration::from_secs(30));
        assert_eq!(config.cooldown, Duration::from_secs(600));
        assert_eq!(config.listen.port(), 9312);
        assert!(config.restore.is_none());
        assert!(!config.dry_run);
        assert!(config.webhook_token.is_none());
        assert_eq!(
            config.retry,
            Some(RetryPolicy {
                window: Duration::from_secs(600),
                interval: Duration::from_secs(5),
                max_attempts: 20
            })
        );
        assert!(config.identity.starts_with("remediator-"));
        assert_eq!(
            parse(&[]).unwrap().identity,
            config.identity,
            "the identity is kept"
        );
        assert_eq!(parse(&["--identity", "pod-0"]).unwrap().identity, "pod-0");
        assert!(parse(&["--identity", "a/b"]).is_err());
        assert!(
            parse(&["--retry-max-attempts", "0"])
                .unwrap()
                .retry
                .is_none()
        );
        assert!(
            config.space_alerts.is_empty(),
            "only the model acts by default"
        );
        let config = parse(&["--space-alerts", "EtcdNoSpace, EtcdDatabaseQuotaLowSpace,"]).unwrap();
        assert_eq!(
            config.space_alerts,
            ["EtcdNoSpace", "EtcdDatabaseQuotaLowSpace"]
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        assert!(
            parse(&["--cooldown", "soon"])
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse(&["--snapshot-retain", "0"])
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            parse(&["--webhook-token-file", "/nonexistent/token"])
                .unwrap_err()
                .contains("cannot read")
        );
        assert_eq!(
            parse(&["--tls-cert-file", "/nonexistent/tls.crt"]).unwrap_err(),
            "--tls-cert-file/--tls-key-file: the certificate needs its key"
        );
        assert!(
            parse(&[
                "--tls-cert-file",
                "/nonexistent/c",
                "--tls-key-file",
                "/nonexistent/k"
            ])
            .unwrap_err()
            .contains("/nonexistent/c")
        );
        assert!(
            parse(&["--restore-mode", "command"])
                .unwrap_err()
                .contains("needs --restore-stop-cmd")
        );
        let err = Args::try_parse_from([
            "dr-remediator",
            "--etcd-endpoints",
            "ftp://x",
            "--snapshot-dir",
            "/tmp",
        ])
        .map_err(|e| e.to_string())
        .and_then(|args| Config::from_args(args).map_err(|e| e.to_string()))
        .unwrap_err();
        assert!(err.contains("want an http"), "{err}");
    }

    #[test]
    fn a_revision_bump_needs_etcd_but_no_snapshot_dir() {
        let bump = |args: &[&str]| {
            Args::try_parse_from([&["dr-remediator"], args].concat())
                .map_err(|e| e.to_string())
                .and_then(|args| Config::from_args(args).map_err(|e| e.to_string()))
        };
        let config = bump(&[
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--bump-revision-past",
            "48731",
        ])
        .unwrap();
        assert_eq!(config.bump_revision_past, Some((48731, 1_000_000)));
        let err = bump(&["--bump-revision-past", "48731"]).unwrap_err();
        assert!(err.contains("--etcd-endpoints"), "{err}");
        let err = bump(&[
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--bump-revision-past",
            "0",
        ])
        .unwrap_err();
        assert!(err.contains("--bump-revision-past"), "{err}");
    }

    #[test]
    fn store_flags_are_checked_and_fetching_needs_no_etcd() {
        assert_eq!(
            parse(&["--snapshot-store-retain", "0"]).unwrap_err(),
            "--snapshot-store-retain must be at least 1"
        );
        assert!(
            parse(&["--snapshot-store", "ftp://host/x"])
                .unwrap_err()
                .contains("want s3://")
        );
        let store = std::env::temp_dir().join("dr-remediator-config-test-store");
        let url = format!("file://{}", store.display());
        let config = parse(&["--snapshot-store", &url, "--snapshot-retain", "4"]).unwrap();
        let opened = config.snapshots.store.unwrap();
        assert_eq!(opened.retention.count, 4, "the local retention by default");
        assert!(!config.snapshots.upload_inline);
        let config = parse(&["--snapshot-store", &url, "--snapshot-once"]).unwrap();
        assert!(
            config.snapshots.upload_inline,
            "--snapshot-once exits after"
        );

        let fetch = |extra: &[&str]| {
            let mut args = vec![
                "dr-remediator",
                "--snapshot-fetch-latest",
                "/tmp/dr-fetch-test",
            ];
            args.extend_from_slice(extra);
            Args::try_parse_from(args)
                .map_err(|e| e.to_string())
                .and_then(|args| Config::from_args(args).map_err(|e| e.to_string()))
        };
        assert_eq!(
            fetch(&[]).unwrap_err(),
            "--snapshot-fetch-latest needs --snapshot-store"
        );
        let config = fetch(&["--snapshot-store", &url]).unwrap();
        assert!(config.etcd_endpoints.is_empty());
        assert_eq!(
            config.snapshot_fetch_latest.as_deref(),
            Some(Path::new("/tmp/dr-fetch-test"))
        );
    }

    #[test]
    fn compression_applies_to_every_store_and_a_bad_one_is_refused() {
        let store = std::env::temp_dir().join("dr-remediator-config-test-store3");
        let url = format!("file://{}", store.display());
        let second = format!("file://{}-b", store.display());
        let both = [
            "--snapshot-store",
            &url,
            "--snapshot-store-secondary",
            &second,
        ];
        let config = parse(&both).unwrap();
        assert_eq!(
            config.snapshots.store.unwrap().compression,
            Compression::None
        );
        let config =
            parse(&[&both[..], &["--snapshot-store-compression", "zstd:7"]].concat()).unwrap();
        let zstd = Compression::Zstd { level: 7 };
        assert_eq!(config.snapshots.store.unwrap().compression, zstd);
        assert_eq!(config.snapshots.secondary.unwrap().compression, zstd);
        let err = parse(&["--snapshot-store-compression", "gzip"]).unwrap_err();
        assert!(err.contains("--snapshot-store-compression"), "{err}");
        assert!(err.contains("want none, zstd or zstd:LEVEL"), "{err}");
    }

    #[test]
    fn retention_secondary_and_proof_flags() {
        let store = std::env::temp_dir().join("dr-remediator-config-test-store2");
        let url = format!("file://{}", store.display());
        let second = format!("file://{}-b", store.display());
        // Without a store: no proof, local retention by count only.
        let config = parse(&[]).unwrap();
        assert!(config.proof.is_none());
        assert_eq!(config.snapshots.retention, Retention::count(5));
        assert!(
            parse(&["--snapshot-store-secondary", &second])
                .unwrap_err()
                .contains("--snapshot-store"),
            "a secondary needs a primary"
        );
        let config = parse(&[
            "--snapshot-store",
            &url,
            "--snapshot-store-secondary",
            &second,
            "--snapshot-retain-within",
            "12h",
            "--snapshot-store-retain-daily",
            "7",
            "--snapshot-store-retain-weekly",
            "4",
            "--snapshot-store-secondary-retain",
            "2",
            "--snapshot-store-secondary-retain-within",
            "0",
        ])
        .unwrap();
        let day = Duration::from_secs(12 * 3600);
        assert_eq!(
            config.snapshots.retention,
            Retention {
                count: 5,
                within: day,
                daily: 0,
                weekly: 0
            }
        );
        let primary = config.snapshots.store.as_ref().unwrap();
        assert_eq!(
            primary.retention,
            Retention {
                count: 5,
                within: day,
                daily: 7,
                weekly: 4
            },
            "the local age rule by default, its own where given"
        );
        let secondary = config.snapshots.secondary.as_ref().unwrap();
        assert_eq!(
            secondary.retention,
            Retention {
                count: 2,
                within: Duration::ZERO,
                daily: 7,
                weekly: 4
            }
        );
        assert_eq!(primary.label(), "primary");
        assert_eq!(secondary.label(), "secondary");
        let proof = config.proof.unwrap();
        assert_eq!(proof.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(proof.scratch, config.snapshots.dir.join("proof"));
        assert_eq!(proof.etcd_bin, PathBuf::from("etcd"));
        let config = parse(&["--snapshot-store", &url, "--proof-interval", "0"]).unwrap();
        assert_eq!(config.proof.unwrap().interval, None, "on demand only");
        assert!(
            parse(&[
                "--snapshot-store",
                &url,
                "--snapshot-store-secondary-retain",
                "0"
            ])
            .unwrap_err()
            .contains("at least 1")
        );
    }

    #[test]
    fn kubeadm_preset_fills_every_command() {
        let config = parse(&["--restore-mode", "command", "--restore-preset", "kubeadm"]).unwrap();
        let restore = config.restore.unwrap();
        assert!(
            restore
                .stop
                .contains("'/etc/kubernetes/manifests/etcd.yaml'")
        );
        assert!(restore.restore.contains("snapshot restore"));
        let config = parse(&[
            "--restore-mode",
            "command",
            "--restore-preset",
            "kubeadm",
            "--kubeadm-manifest",
            "/srv/manifests/etcd.yaml",
        ])
        .unwrap();
        let restore = config.restore.unwrap();
        assert!(restore.stop.contains("'/srv/manifests/etcd.yaml'"));
        assert!(restore.start.ends_with("'/srv/manifests/etcd.yaml'"));
    }
}
