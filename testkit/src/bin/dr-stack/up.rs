//! `dr-stack up`: one function per server, each starting it in its subdirectory of DIR
//! and adding its lines to `stack.env`; then [`record`] writes what was started and lets
//! go of the processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use dr_testkit::etcd::EtcdMember;
use dr_testkit::loopback::{LoopbackServer, ServerKind};
use dr_testkit::prometheus::expand_placeholders;
use dr_testkit::{
    Alertmanager, AlertmanagerOptions, EtcdCluster, EtcdOptions, EtcdVersion, Prometheus,
    PrometheusOptions, Pushgateway, PushgatewayOptions, Workdir,
};

use crate::pids::{PidEntry, is_ours, read_pids, write_pids};
use crate::{MemberState, State, canonical};

/// The subdirectories of DIR the servers run in, in start order.
const SERVER_DIRS: [&str; 4] = ["etcd", "pushgateway", "alertmanager", "prometheus"];

#[derive(clap::Args)]
pub struct UpArgs {
    #[arg(long, env = "DR_STACK_DIR")]
    dir: PathBuf,
    /// etcd members: 1 or 3 (0: no etcd).
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// etcd server version: 3.4 (Debian), 3.6 (vendored), 3.5 or 3.7 (ci/install-etcd-versions.sh).
    #[arg(long = "etcd", default_value = "3.4")]
    etcd_version: String,
    /// --quota-backend-bytes for etcd.
    #[arg(long)]
    quota: Option<u64>,
    /// https client URLs with client-certificate auth (certificates in DIR/etcd/tls).
    #[arg(long)]
    tls: bool,
    /// Start a Pushgateway.
    #[arg(long)]
    pushgateway: bool,
    /// Start Prometheus (implied by --prometheus-config or --rules). Without a config it
    /// scrapes the Pushgateway, if started, with honor_labels.
    #[arg(long)]
    prometheus: bool,
    /// Scrape configs: the YAML list under `scrape_configs:` (a leading `scrape_configs:`
    /// line is accepted). `${PUSHGATEWAY_ADDR}`, `${ALERTMANAGER_ADDR}` and `${NAME}` of
    /// any set environment variable are substituted.
    #[arg(long, value_name = "FILE")]
    prometheus_config: Option<PathBuf>,
    /// Rule files for Prometheus (repeatable; placeholders substituted as above).
    #[arg(long = "rules", value_name = "FILE", num_args = 1..)]
    rules: Vec<PathBuf>,
    /// Start Alertmanager with this config (Prometheus is wired to it).
    #[arg(long, value_name = "FILE")]
    alertmanager_config: Option<PathBuf>,
    /// Prometheus scrape interval, seconds.
    #[arg(long, default_value_t = 1)]
    scrape_interval: u64,
    /// Prometheus rule evaluation interval, seconds.
    #[arg(long, default_value_t = 1)]
    evaluation_interval: u64,
}

impl UpArgs {
    fn wants_prometheus(&self) -> bool {
        self.prometheus || self.prometheus_config.is_some() || !self.rules.is_empty()
    }
}

/// `stack.env`'s lines, in the order the servers add them.
struct StackEnv(Vec<(String, String)>);

impl StackEnv {
    fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.push((key.to_owned(), value.into()));
    }

    /// `<ROLE>_URL` and `<ROLE>_ADDR` of a started server.
    fn set_server<K: ServerKind>(&mut self, role: &str, server: &LoopbackServer<K>) {
        self.set(&format!("{role}_URL"), server.url());
        self.set(&format!("{role}_ADDR"), server.addr());
    }

    /// `export KEY='value'` lines.
    fn render(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
            .collect()
    }
}

/// Starts the servers `a` asks for in DIR, records them, and leaves them running.
pub fn up(a: UpArgs) -> Result<()> {
    let dir = claim_dir(&a.dir)?;
    let mut env = StackEnv(vec![("DR_STACK_DIR".into(), dir.display().to_string())]);
    // Everything started below is stopped by the guards if a later step fails.
    let etcd = if a.members > 0 {
        Some(start_etcd(&a, &dir, &mut env)?)
    } else {
        None
    };
    let pushgateway = if a.pushgateway {
        Some(start_pushgateway(&dir, &mut env)?)
    } else {
        None
    };
    let alertmanager = match &a.alertmanager_config {
        Some(config) => Some(start_alertmanager(config, &dir, &mut env)?),
        None => None,
    };
    let prometheus = if a.wants_prometheus() {
        let (pg, am) = (pushgateway.as_ref(), alertmanager.as_ref());
        Some(start_prometheus(&a, &dir, pg, am, &mut env)?)
    } else {
        None
    };
    record(&dir, etcd, pushgateway, alertmanager, prometheus, &env)
}

/// DIR, created if missing and cleared of an earlier stack's data; refused while a
/// stack of ours runs there.
fn claim_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = canonical(dir)?;
    let live: Vec<PidEntry> = read_pids(&dir)?
        .into_iter()
        .filter(|e| is_ours(e, &dir))
        .collect();
    if !live.is_empty() {
        bail!(
            "a stack is already running in {} ({} processes); run `dr-stack down` first",
            dir.display(),
            live.len()
        );
    }
    // Nothing of ours runs here, so data from an earlier stack is stale: an old etcd data
    // dir would remember the old peer ports and never form the new cluster.
    for name in SERVER_DIRS {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing stale {}", p.display()))?;
        }
    }
    Ok(dir)
}

/// `DIR/name`, whose processes outlive `up` (their own process group).
fn server_dir(dir: &Path, name: &str) -> Result<Workdir> {
    Workdir::fixed(dir.join(name)).map(Workdir::detached)
}

fn start_etcd(a: &UpArgs, dir: &Path, env: &mut StackEnv) -> Result<EtcdCluster> {
    let version = EtcdVersion::parse(&a.etcd_version)?;
    let c = EtcdCluster::start(EtcdOptions {
        version,
        members: a.members,
        quota_backend_bytes: a.quota,
        tls: a.tls,
        workdir: Some(server_dir(dir, "etcd")?),
        ..EtcdOptions::default()
    })?;
    let join =
        |f: &dyn Fn(&EtcdMember) -> String| c.members().iter().map(f).collect::<Vec<_>>().join(",");
    env.set("ETCD_VERSION", version.as_str());
    env.set("ETCD_MEMBERS", c.len().to_string());
    env.set("ETCD_ENDPOINTS", c.client_endpoints().join(","));
    env.set(
        "ETCD_METRICS_URLS",
        join(&|m| format!("{}/metrics", m.metrics_url)),
    );
    env.set("ETCD_HEALTH_URLS", join(&|m| m.health_url.clone()));
    env.set(
        "ETCD_CLIENT_METRICS_URLS",
        join(&|m| m.client_metrics_url()),
    );
    env.set(
        "ETCD_DATA_DIRS",
        join(&|m| m.data_dir.display().to_string()),
    );
    env.set("ETCD_LOGS", join(&|m| m.log_path.display().to_string()));
    if let Some(t) = c.tls() {
        env.set("ETCD_CACERT", t.ca_cert.display().to_string());
        env.set("ETCD_CERT", t.client_cert.display().to_string());
        env.set("ETCD_KEY", t.client_key.display().to_string());
    }
    Ok(c)
}

fn start_pushgateway(dir: &Path, env: &mut StackEnv) -> Result<Pushgateway> {
    let pg = Pushgateway::start_with(PushgatewayOptions {
        workdir: Some(server_dir(dir, "pushgateway")?),
        ..PushgatewayOptions::default()
    })?;
    env.set_server("PUSHGATEWAY", &pg);
    Ok(pg)
}

fn start_alertmanager(config: &Path, dir: &Path, env: &mut StackEnv) -> Result<Alertmanager> {
    let config_yaml = fs::read_to_string(config)
        .with_context(|| format!("reading Alertmanager config {}", config.display()))?;
    let am = Alertmanager::start_with(AlertmanagerOptions {
        config_yaml,
        workdir: Some(server_dir(dir, "alertmanager")?),
        ..AlertmanagerOptions::default()
    })?;
    env.set_server("ALERTMANAGER", &am);
    Ok(am)
}

/// Prometheus with the given scrape configs (else a scrape of the Pushgateway, if any)
/// and rule files, placeholders filled in, wired to the Alertmanager if any.
fn start_prometheus(
    a: &UpArgs,
    dir: &Path,
    pushgateway: Option<&Pushgateway>,
    alertmanager: Option<&Alertmanager>,
    env: &mut StackEnv,
) -> Result<Prometheus> {
    let known: Vec<(&str, String)> = [
        ("PUSHGATEWAY_ADDR", pushgateway.map(Pushgateway::addr)),
        ("ALERTMANAGER_ADDR", alertmanager.map(Alertmanager::addr)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    let scrape_configs = match &a.prometheus_config {
        Some(f) => {
            let text = fs::read_to_string(f)
                .with_context(|| format!("reading Prometheus config {}", f.display()))?;
            substitute(&scrape_list(&text), &known)
                .with_context(|| format!("in {}", f.display()))?
        }
        None => match pushgateway {
            Some(pg) => format!(
                "- job_name: pushgateway\n  honor_labels: true\n  static_configs:\n    - targets: ['{}']\n",
                pg.addr()
            ),
            None => String::new(),
        },
    };
    let mut rule_files = Vec::new();
    for f in &a.rules {
        let name = f
            .file_name()
            .with_context(|| format!("rule file {} has no name", f.display()))?
            .to_string_lossy()
            .into_owned();
        let text =
            fs::read_to_string(f).with_context(|| format!("reading rule file {}", f.display()))?;
        rule_files.push((name, substitute(&text, &known)?));
    }
    let p = Prometheus::start_with(PrometheusOptions {
        scrape_configs,
        rule_files,
        scrape_interval: Duration::from_secs(a.scrape_interval.max(1)),
        evaluation_interval: Duration::from_secs(a.evaluation_interval.max(1)),
        alertmanager_url: alertmanager.map(Alertmanager::url),
        workdir: Some(server_dir(dir, "prometheus")?),
        ..PrometheusOptions::default()
    })?;
    env.set("PROMETHEUS_URL", p.url());
    Ok(p)
}

/// All up: writes `stack.json`, `pids` and `stack.env` (also printed), then lets go of
/// the processes.
fn record(
    dir: &Path,
    etcd: Option<EtcdCluster>,
    pushgateway: Option<Pushgateway>,
    alertmanager: Option<Alertmanager>,
    prometheus: Option<Prometheus>,
    env: &StackEnv,
) -> Result<()> {
    let mut state = State {
        dir: dir.to_path_buf(),
        etcd_members: Vec::new(),
    };
    if let Some(c) = &etcd {
        for (i, m) in c.members().iter().enumerate() {
            let (bin, restart_args) = c.member_command(i, true)?;
            state.etcd_members.push(MemberState {
                name: m.name.clone(),
                client_url: m.client_url.clone(),
                health_url: m.health_url.clone(),
                log_path: m.log_path.clone(),
                bin,
                restart_args,
            });
        }
    }
    let mut roles: Vec<(String, u32)> = Vec::new();
    if let Some(c) = etcd {
        roles.extend(c.disarm());
    }
    if let Some(pg) = pushgateway {
        roles.push(("pushgateway".into(), pg.disarm()));
    }
    if let Some(am) = alertmanager {
        roles.push(("alertmanager".into(), am.disarm()));
    }
    if let Some(p) = prometheus {
        roles.push(("prometheus".into(), p.disarm()));
    }
    let entries: Vec<PidEntry> = roles
        .into_iter()
        .map(|(role, pid)| PidEntry::started(role, pid))
        .collect();
    write_pids(dir, &entries)?;
    fs::write(
        dir.join("stack.json"),
        serde_json::to_string_pretty(&state)?,
    )
    .context("writing stack.json")?;
    let env_text = env.render();
    fs::write(dir.join("stack.env"), &env_text).context("writing stack.env")?;
    print!("{env_text}");
    Ok(())
}

/// Accepts either the bare list or a document whose only key is `scrape_configs:`.
fn scrape_list(text: &str) -> String {
    let mut lines = text.lines();
    let mut out = Vec::new();
    let mut found = false;
    for l in lines.by_ref() {
        if l.trim_end() == "scrape_configs:" {
            found = true;
            break;
        }
        out.push(l);
    }
    if found {
        lines.collect::<Vec<_>>().join("\n")
    } else {
        out.join("\n")
    }
}

/// Substitutes known `${NAME}`s, then any `${NAME}` set in the environment. A known
/// placeholder whose server was not started is an error that says which flag is missing.
fn substitute(text: &str, known: &[(&str, String)]) -> Result<String> {
    for (name, flag) in [
        ("PUSHGATEWAY_ADDR", "--pushgateway"),
        ("ALERTMANAGER_ADDR", "--alertmanager-config"),
    ] {
        if text.contains(&format!("${{{name}}}")) && !known.iter().any(|(k, _)| *k == name) {
            bail!("uses ${{{name}}} but {flag} was not given");
        }
    }
    let mut vars: Vec<(&str, &str)> = known.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let env_vals: Vec<(String, String)> = placeholder_names(text)
        .into_iter()
        .filter_map(|n| Some((n.clone(), std::env::var(&n).ok()?)))
        .collect();
    vars.extend(env_vals.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Ok(expand_placeholders(text, &vars))
}

/// `${NAME}` names with NAME in `[A-Z_][A-Z0-9_]*` (so relabel `${1}` is left alone).
fn placeholder_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find('}') {
            let name = &rest[..j];
            let valid = name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if valid {
                names.push(name.to_owned());
            }
        }
    }
    names
}

fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_placeholder_names() {
        assert_eq!(
            placeholder_names("a ${PUSHGATEWAY_ADDR} ${1} ${lower} ${X_2}"),
            vec!["PUSHGATEWAY_ADDR", "X_2"]
        );
    }

    #[test]
    fn missing_server_for_placeholder_is_an_error() {
        let err = substitute("t: ${PUSHGATEWAY_ADDR}", &[]).unwrap_err();
        assert!(err.to_string().contains("--pushgateway"));
    }

    #[test]
    fn strips_scrape_configs_key() {
        assert_eq!(
            scrape_list("scrape_configs:\n- job_name: a"),
            "- job_name: a"
        );
        assert_eq!(scrape_list("- job_name: a"), "- job_name: a");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
