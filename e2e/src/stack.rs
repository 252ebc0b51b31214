//! The stack one scenario runs on: etcd, Pushgateway, Alertmanager and Prometheus from
//! the harness, then the four etcd-dr binaries, all on loopback in the scenario's
//! directory. Dropping it stops exactly these processes (the harness' guards).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use dr_testkit::{
    Alertmanager, AlertmanagerOptions, ChildGuard, EtcdCluster, EtcdOptions, EtcdVersion,
    Prometheus, PrometheusOptions, Pushgateway, PushgatewayOptions, RestoreMarkers, Tmpfs, Workdir,
    free_port, http_get,
};

pub const ALERT_NAME: &str = "EtcdAnomalyScoreHigh";
/// The space incident of the dataset and the drill alike (the model learned what this
/// looks like): 8 keys of 512 KiB rewritten 12 times a second, history that compact +
/// defrag reclaim. Add `--duration`, and `--max-bytes` to stop short of the quota.
pub const SPACE_STORM: [&str; 11] = [
    "bigkey",
    "--overwrite",
    "--keys",
    "8",
    "--value-size",
    "512KiB",
    "--rate",
    "12",
    "--concurrency",
    "2",
    "--duration",
];
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct StackOptions<'a> {
    pub dir: &'a Path,
    pub bin_dir: &'a Path,
    pub version: EtcdVersion,
    pub members: usize,
    pub quota_bytes: u64,
    pub step: Duration,
    pub model: Option<&'a Path>,
    /// Load the anomaly alert rule (for a later `close_loop`); without, Prometheus only
    /// records (a dataset).
    pub alert_rule: bool,
    /// etcd's data dirs on a tmpfs of their own (the drill): the host disk's stalls (a CI
    /// machine's neighbours) then cannot raise etcd's fsync latency, so what the detector
    /// sees is the scenario's incident alone. Recordings keep the disk (`false`).
    pub etcd_on_tmpfs: bool,
}

/// The tmpfs under the drill's etcd data: three members' WAL (64 MB segments), their
/// databases at the quota and a restore's new data dirs beside the old ones. Pages are
/// only used as written.
const ETCD_TMPFS_SIZE: &str = "6g";

pub struct Stack {
    // Field order is drop order: the services go before the servers they talk to.
    pub loadgen: Option<ChildGuard>,
    pub services: Vec<ChildGuard>,
    pub prometheus: Prometheus,
    pub alertmanager: Alertmanager,
    pub pushgateway: Pushgateway,
    pub etcd: EtcdCluster,
    /// After `etcd`: unmounted once the members are stopped.
    pub etcd_tmpfs: Option<Tmpfs>,
    pub detector_url: String,
    pub remediator_url: String,
    pub snapshot_dir: PathBuf,
    /// Where the remediator's restore commands and the drill meet.
    pub markers: RestoreMarkers,
    pub bin_dir: PathBuf,
    pub dir: PathBuf,
    /// Rule alerts the remediator acts on without the detector (`--space-alerts`), set
    /// before `close_loop`; none by default, so only the model's alert acts.
    pub space_alerts: Vec<String>,
    /// Where the detector is in `services` once the loop is closed.
    detector: Option<usize>,
    pending: Option<PendingLoop>,
}

/// What `close_loop` needs from `start`.
struct PendingLoop {
    detector_port: u16,
    remediator_port: u16,
    token_file: PathBuf,
    interval: String,
    model: Option<PathBuf>,
    quota_bytes: u64,
}

impl Stack {
    pub fn start(o: &StackOptions) -> Result<Self> {
        let sub = |name: &str| Workdir::fixed(o.dir.join(name));
        let etcd_tmpfs = if o.etcd_on_tmpfs {
            Some(Tmpfs::mount(ETCD_TMPFS_SIZE).context(
                "mounting a tmpfs for etcd's data (needs root; --etcd-on-disk runs without)",
            )?)
        } else {
            None
        };
        let etcd = EtcdCluster::start(EtcdOptions {
            version: o.version,
            members: o.members,
            quota_backend_bytes: Some(o.quota_bytes),
            workdir: Some(sub("etcd")?),
            data_root: etcd_tmpfs.as_ref().map(|t| t.path().to_path_buf()),
            ..EtcdOptions::default()
        })?;
        let pushgateway = Pushgateway::start_with(PushgatewayOptions {
            workdir: Some(sub("pushgateway")?),
            ..PushgatewayOptions::default()
        })?;
        let [collector_port, detector_port, remediator_port] =
            [free_port(), free_port(), free_port()];
        let token_file = o.dir.join("webhook-token");
        fs::write(&token_file, "drill-token-not-secret\n").context("writing the token")?;
        let alertmanager = Alertmanager::start_with(AlertmanagerOptions {
            config_yaml: alertmanager_config(remediator_port, &token_file),
            workdir: Some(sub("alertmanager")?),
            ..AlertmanagerOptions::default()
        })?;
        let step = o.step.as_secs().max(1);
        let prometheus = Prometheus::start_with(PrometheusOptions {
            scrape_configs: scrape_configs(
                &pushgateway.addr(),
                &[collector_port, detector_port, remediator_port],
            ),
            rule_files: if o.alert_rule {
                vec![("etcd-dr.yml".into(), rules(step))]
            } else {
                Vec::new()
            },
            scrape_interval: Duration::from_secs(step),
            evaluation_interval: Duration::from_secs(step),
            alertmanager_url: Some(alertmanager.url()),
            workdir: Some(sub("prometheus")?),
            ..PrometheusOptions::default()
        })?;

        let mut stack = Self {
            loadgen: None,
            services: Vec::new(),
            prometheus,
            alertmanager,
            pushgateway,
            etcd,
            etcd_tmpfs,
            detector_url: format!("http://127.0.0.1:{detector_port}"),
            remediator_url: format!("http://127.0.0.1:{remediator_port}"),
            snapshot_dir: o.dir.join("snapshots"),
            markers: RestoreMarkers::new(&o.dir.join("restore-markers"))?,
            bin_dir: o.bin_dir.to_path_buf(),
            dir: o.dir.to_path_buf(),
            space_alerts: Vec::new(),
            detector: None,
            pending: None,
        };
        fs::create_dir_all(&stack.snapshot_dir)?;
        let interval = format!("{step}s");

        let mut collector = vec!["--pushgateway-url".to_owned(), stack.pushgateway.url()];
        // Instances named after the members, so scores and alerts say which one.
        for (m, url) in stack.etcd.members().iter().zip(stack.etcd.metrics_urls()) {
            collector.extend(["--etcd-metrics-url".to_owned(), format!("{url}/metrics")]);
            collector.extend(["--instance".to_owned(), m.name.clone()]);
        }
        collector.extend(["--interval".into(), interval.clone()]);
        // A scrape and push must fit in the interval.
        collector.extend(["--timeout".into(), format!("{}ms", step * 800)]);
        collector.extend(["--listen".into(), format!("127.0.0.1:{collector_port}")]);
        stack.spawn_service("dr-collector", &collector, collector_port)?;
        stack.pending = Some(PendingLoop {
            detector_port,
            remediator_port,
            token_file,
            interval,
            model: o.model.map(Path::to_path_buf),
            quota_bytes: o.quota_bytes,
        });
        Ok(stack)
    }

    /// Starts the detector and the remediator: from now on an alert leads to a repair.
    /// Separate from `start` so that the cluster's start-up (elections, the first writes)
    /// is out of the detector's window before it scores.
    pub fn close_loop(&mut self) -> Result<()> {
        let p = self.pending.take().context("the loop is closed already")?;

        let mut detector = vec![
            "serve".to_owned(),
            "--prometheus-url".into(),
            self.prometheus.url(),
            "--refresh".into(),
            p.interval.clone(),
            "--listen".into(),
            format!("127.0.0.1:{}", p.detector_port),
        ];
        if let Some(model) = &p.model {
            detector.extend(["--model".into(), model.display().to_string()]);
        }
        self.spawn_service("dr-detector", &detector, p.detector_port)?;
        self.detector = Some(self.services.len() - 1);

        let mut remediator = vec![
            "--etcd-endpoints".to_owned(),
            self.etcd.client_endpoints().join(","),
            "--snapshot-dir".into(),
            self.snapshot_dir.display().to_string(),
            "--detector-url".into(),
            self.detector_url.clone(),
            "--webhook-token-file".into(),
            p.token_file.display().to_string(),
            "--alert-name".into(),
            ALERT_NAME.into(),
            "--etcd-quota-bytes".into(),
            p.quota_bytes.to_string(),
            "--health-wait".into(),
            "3s".into(),
            "--cooldown".into(),
            "2m".into(),
            // Loopback answers in milliseconds; a dead member should cost seconds, not
            // the default 5 s per call, when the health check decides on a restore.
            "--etcd-timeout".into(),
            "2s".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", p.remediator_port),
        ];
        if !self.space_alerts.is_empty() {
            remediator.extend(["--space-alerts".into(), self.space_alerts.join(",")]);
        }
        remediator.extend(self.markers.remediator_flags(&self.etcd)?);
        self.spawn_service("dr-remediator", &remediator, p.remediator_port)?;
        Ok(())
    }

    /// Stops the detector (the `rule-only` scenario): the model's alert can no longer be
    /// confirmed, nor fire.
    pub fn stop_detector(&mut self) -> Result<()> {
        let index = self
            .detector
            .take()
            .context("the detector is not running")?;
        self.services[index].stop()?;
        Ok(())
    }

    fn spawn_service(&mut self, name: &str, args: &[String], port: u16) -> Result<()> {
        let mut cmd = Command::new(self.bin_dir.join(name));
        cmd.args(args).current_dir(&self.dir);
        let log = self.dir.join(format!("{name}.log"));
        let guard = ChildGuard::spawn(name, cmd, &log, false)?;
        let healthz = format!("http://127.0.0.1:{port}/healthz");
        guard.wait_until("answering /healthz", READY_TIMEOUT, || {
            Ok(http_get(&healthz)?.0 == 200)
        })?;
        self.services.push(guard);
        Ok(())
    }

    /// Steady Kubernetes-like traffic at `rate` ops/s (the normal the model knows),
    /// replacing any running steady load.
    pub fn start_steady_load(&mut self, rate: u32, seed: u64) -> Result<()> {
        if let Some(mut old) = self.loadgen.take() {
            old.stop()?;
        }
        let rate = rate.to_string();
        let seed = seed.to_string();
        let cmd = self.loadgen_command(&[
            "steady",
            "--rate",
            &rate,
            "--keys",
            "500",
            "--duration",
            "60m",
            "--seed",
            &seed,
        ]);
        self.loadgen = Some(ChildGuard::spawn(
            "dr-loadgen steady",
            cmd,
            &self.dir.join("loadgen-steady.log"),
            false,
        )?);
        Ok(())
    }

    /// A dr-loadgen command against this stack's etcd, summary as JSON on stdout.
    pub fn loadgen_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("dr-loadgen"));
        cmd.arg("--endpoints")
            .arg(self.etcd.client_endpoints().join(","))
            .arg("--json")
            .args(args)
            .current_dir(&self.dir);
        cmd
    }

    /// Snapshot files the remediator kept.
    pub fn snapshots(&self) -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.snapshot_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "db") {
                found.push(path);
            }
        }
        Ok(found)
    }
}

/// The chart's routing: the model's alert and the rule alerts that may act go to the
/// remediator (which acts only on those it is configured for); the rest page a person
/// (here: nobody).
fn alertmanager_config(remediator_port: u16, token_file: &Path) -> String {
    format!(
        "route:
  receiver: person
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - receiver: remediator
      matchers: ['alertname=~\"{ALERT_NAME}|EtcdNoSpace|EtcdMembersDown\"']
receivers:
  - name: person
  - name: remediator
    webhook_configs:
      - url: http://127.0.0.1:{remediator_port}/webhook
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {}
",
        token_file.display()
    )
}

fn scrape_configs(pushgateway: &str, service_ports: &[u16]) -> String {
    let services: Vec<String> = service_ports
        .iter()
        .map(|p| format!("'127.0.0.1:{p}'"))
        .collect();
    format!(
        "- job_name: pushgateway
  honor_labels: true
  static_configs:
    - targets: ['{pushgateway}']
- job_name: etcd-dr
  honor_labels: true
  static_configs:
    - targets: [{}]
",
        services.join(", ")
    )
}

/// The chart's anomaly rules: the main one with a `for` of ten steps (the chart's default
/// is 5 m of 30 s steps): a few noisy steps must not start a repair (five let one burst of
/// slow WAL fsyncs on a busy CI disk fire it on normal load); and the fast one, the fast
/// score above its threshold for two steps (the chart's 1 m). And two of the
/// chart's safety-net rules over what the collector pushes, in steps: NOSPACE, and a
/// member whose scrape fails (`etcd_dr_collector_target_up` 0). NOSPACE as the chart
/// writes it: etcd raises the alarm with the db anywhere from 96% to 102% of the quota, so
/// the db at the quota, or near it while etcd refuses requests with ResourceExhausted.
fn rules(step_seconds: u64) -> String {
    format!(
        "groups:
  - name: etcd-dr
    rules:
      - alert: {ALERT_NAME}
        expr: max by (instance) (etcd_dr_anomaly_score) > on () group_left max(etcd_dr_anomaly_threshold)
        for: {}s
        labels:
          severity: critical
      - alert: {ALERT_NAME}
        expr: max by (instance) (etcd_dr_anomaly_fast_score) > on () group_left max(etcd_dr_anomaly_fast_threshold)
        for: {}s
        labels:
          severity: critical
          speed: fast
      - alert: EtcdNoSpace
        expr: (etcd_mvcc_db_total_size_in_bytes / etcd_server_quota_backend_bytes >= 1) or on (job, instance) (etcd_mvcc_db_total_size_in_bytes / etcd_server_quota_backend_bytes >= 0.9 and on (job, instance) sum by (job, instance) (rate(grpc_server_handled_total{{grpc_code=\"ResourceExhausted\"}}[{}s])) > 0)
        for: {}s
        labels:
          severity: critical
          etcd_dr_diagnosis: space
      - alert: EtcdMembersDown
        expr: count by (job) (etcd_dr_collector_target_up == 0) > 0
        for: {}s
        labels:
          severity: critical
          etcd_dr_diagnosis: member_unavailable
",
        10 * step_seconds,
        2 * step_seconds,
        5 * step_seconds,
        2 * step_seconds,
        3 * step_seconds
    )
}
