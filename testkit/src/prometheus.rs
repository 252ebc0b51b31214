//! Prometheus on loopback (Debian `prometheus`), with short scrape and evaluation intervals.
//!
//! The harness writes `prometheus.yml` itself: global intervals, `rule_files: [rules/*]`,
//! the optional Alertmanager, then the caller's scrape configs. `--web.enable-lifecycle`
//! allows [`Prometheus::reload`] after rule files change.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::http::{http_get, http_post, url_encode};
use crate::loopback::{LoopbackServer, ServerKind};
use crate::process::{STARTUP_TIMEOUT, Workdir};

/// How to start [`Prometheus`].
#[derive(Debug)]
pub struct PrometheusOptions {
    /// The YAML list that goes under `scrape_configs:` (`- job_name: ...` items at column 0).
    pub scrape_configs: String,
    /// `(file name, contents)` of rule files, loaded from `rules/`.
    pub rule_files: Vec<(String, String)>,
    pub scrape_interval: Duration,
    pub evaluation_interval: Duration,
    /// Where to send alerts (`http://host:port`).
    pub alertmanager_url: Option<String>,
    /// `--rules.alert.resend-delay`; the default 1m would delay every drill.
    pub resend_delay: Duration,
    pub extra_args: Vec<String>,
    pub workdir: Option<Workdir>,
    pub startup_timeout: Duration,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        Self {
            scrape_configs: String::new(),
            rule_files: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            evaluation_interval: Duration::from_secs(1),
            alertmanager_url: None,
            resend_delay: Duration::from_secs(5),
            extra_args: Vec::new(),
            workdir: None,
            startup_timeout: STARTUP_TIMEOUT,
        }
    }
}

/// Prometheus' part in [`LoopbackServer`]: it keeps where its config and rules are.
pub struct PrometheusKind {
    config_path: PathBuf,
    rules_dir: PathBuf,
}

impl ServerKind for PrometheusKind {
    const NAME: &'static str = "prometheus";
    const BINARY_ENV: &'static str = "DR_PROMETHEUS_BIN";
    const BINARIES: &'static [&'static str] = &["prometheus"];
    const PACKAGE: &'static str = "the Debian package prometheus";
}

/// A running Prometheus, stopped on drop.
pub type Prometheus = LoopbackServer<PrometheusKind>;

impl Prometheus {
    /// Starts Prometheus (1 s scrape interval) and waits for `/-/ready`.
    pub fn start(
        scrape_configs_yaml: &str,
        rule_files: &[(&str, &str)],
        evaluation_interval: Duration,
        alertmanager_url: Option<&str>,
    ) -> Result<Self> {
        Self::start_with(PrometheusOptions {
            scrape_configs: scrape_configs_yaml.to_owned(),
            rule_files: rule_files
                .iter()
                .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
                .collect(),
            evaluation_interval,
            alertmanager_url: alertmanager_url.map(str::to_owned),
            ..PrometheusOptions::default()
        })
    }

    pub fn start_with(mut opts: PrometheusOptions) -> Result<Self> {
        let workdir = opts.workdir.take();
        Self::start_in(workdir, opts.startup_timeout, |workdir| {
            let rules_dir = workdir.subdir("rules")?;
            for (name, contents) in &opts.rule_files {
                write_rule(&rules_dir, name, contents)?;
            }
            let config_path = workdir.path().join("prometheus.yml");
            let config = render_config(&opts)?;
            fs::write(&config_path, config)
                .with_context(|| format!("writing {}", config_path.display()))?;
            let data = workdir.subdir("prometheus-data")?;
            let mut args = vec![
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!(
                    "--rules.alert.resend-delay={}",
                    prom_duration(opts.resend_delay)
                ),
                "--web.enable-lifecycle".to_owned(),
                "--web.enable-admin-api".to_owned(),
            ];
            args.extend(opts.extra_args.iter().cloned());
            Ok((
                args,
                PrometheusKind {
                    config_path,
                    rules_dir,
                },
            ))
        })
    }

    pub fn config_path(&self) -> &Path {
        &self.kind().config_path
    }

    pub fn rules_dir(&self) -> &Path {
        &self.kind().rules_dir
    }

    /// Re-reads the config and every file in `rules/` (`POST /-/reload`).
    pub fn reload(&self) -> Result<()> {
        let (status, body) = http_post(&format!("{}/-/reload", self.url()), "text/plain", b"")?;
        if status != 200 {
            return Err(self
                .guard()
                .failure(&format!("reload answered {status}: {}", body.trim())));
        }
        Ok(())
    }

    /// Writes (or replaces) a rule file and reloads.
    pub fn set_rule_file(&self, name: &str, contents: &str) -> Result<()> {
        write_rule(self.rules_dir(), name, contents)?;
        self.reload()
    }

    /// Instant query; returns `data.result` (a vector's samples).
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let url = format!("{}/api/v1/query?query={}", self.url(), url_encode(promql));
        let (status, body) = http_get(&url)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("query {promql:?} answered {status}: {body}"))?;
        if v["status"] != "success" {
            bail!("query {promql:?} failed ({status}): {}", v["error"]);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `query` until it returns at least one sample.
    pub fn wait_for_query(&self, promql: &str, timeout: Duration) -> Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            let res = self.query(promql);
            if let Ok(r) = &res
                && !r.is_empty()
            {
                return res;
            }
            if start.elapsed() >= timeout {
                let last = match res {
                    Ok(_) => "empty result".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                return Err(self.guard().failure(&format!(
                    "query {promql:?} returned nothing within {timeout:?} (last: {last})"
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn write_rule(dir: &Path, name: &str, contents: &str) -> Result<()> {
    if name.contains('/') || name.is_empty() {
        bail!("rule file name {name:?} must be a plain file name");
    }
    let p = dir.join(name);
    fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))
}

fn render_config(opts: &PrometheusOptions) -> Result<String> {
    let interval = prom_duration(opts.scrape_interval);
    let mut c = format!(
        "global:\n  scrape_interval: {interval}\n  \
         # must not exceed the interval; the default 10s would be rejected\n  \
         scrape_timeout: {interval}\n  evaluation_interval: {}\n\
         rule_files:\n  - rules/*\n",
        prom_duration(opts.evaluation_interval)
    );
    if let Some(am) = &opts.alertmanager_url {
        let addr = am
            .strip_prefix("http://")
            .with_context(|| format!("alertmanager URL {am:?} must start with http://"))?
            .trim_end_matches('/');
        c.push_str(&format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{addr}']\n"
        ));
    }
    let scrape = opts.scrape_configs.trim_end();
    if scrape.trim().is_empty() {
        c.push_str("scrape_configs: []\n");
    } else {
        c.push_str("scrape_configs:\n");
        c.push_str(scrape);
        c.push('\n');
    }
    Ok(c)
}

/// Prometheus duration syntax: whole seconds as `Ns`, else milliseconds.
fn prom_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs().max(1))
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Replaces `${NAME}` for the given names, leaving everything else (such as relabel
/// `${1}`) alone.
pub fn expand_placeholders(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(prom_duration(Duration::from_secs(1)), "1s");
        assert_eq!(prom_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn config_has_alerting_and_scrapes() {
        let c = render_config(&PrometheusOptions {
            scrape_configs: "- job_name: x\n  static_configs:\n    - targets: ['a:1']\n".into(),
            alertmanager_url: Some("http://127.0.0.1:9093".into()),
            ..PrometheusOptions::default()
        })
        .unwrap();
        assert!(c.contains("targets: ['127.0.0.1:9093']"), "{c}");
        assert!(c.contains("scrape_configs:\n- job_name: x"), "{c}");
        assert!(c.contains("scrape_timeout: 1s"), "{c}");
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            expand_placeholders("t: ['${A}'] r: ${1}", &[("A", "h:1")]),
            "t: ['h:1'] r: ${1}"
        );
    }
}
