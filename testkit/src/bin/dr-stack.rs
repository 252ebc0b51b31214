//! `dr-stack`: the real stack for shell scripts. `up` starts servers, writes
//! `DIR/stack.env`, `DIR/pids` and `DIR/stack.json`, and exits leaving them running;
//! `down` stops exactly the recorded processes after checking each is still ours.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use dr_testkit::etcd::{EtcdMember, member_healthy};
use dr_testkit::process::{
    ChildGuard, STARTUP_TIMEOUT, STOP_TIMEOUT, Workdir, pid_alive, pid_cmdline, pid_start_time,
    stop_foreign_pid,
};
use dr_testkit::prometheus::expand_placeholders;
use dr_testkit::{
    Alertmanager, AlertmanagerOptions, EtcdCluster, EtcdOptions, EtcdVersion, Prometheus,
    PrometheusOptions, Pushgateway, PushgatewayOptions, http_get,
};

#[derive(Parser)]
#[command(
    version,
    about = "Start and stop the real etcd-dr stack on loopback ports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the stack in DIR and exit, leaving it running.
    Up(UpArgs),
    /// Stop every process recorded in DIR/pids (each checked to be ours first). Idempotent.
    Down {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
    },
    /// Print DIR/stack.env.
    Env {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
    },
    /// Stop etcd member N (0-based, or its name: etcd-N), keeping its data dir.
    StopMember {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
        n: String,
    },
    /// Restart etcd member N (0-based, or its name) with its data dir
    /// (`--initial-cluster-state existing`).
    StartMember {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
        n: String,
    },
    /// Wait until every running etcd member reports healthy.
    WaitHealthy {
        #[arg(long, env = "DR_STACK_DIR")]
        dir: PathBuf,
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, env = "DR_STACK_DIR")]
    dir: PathBuf,
    /// etcd members: 1 or 3 (0: no etcd).
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// etcd server version: 3.4 (Debian) or 3.6 (vendored).
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

/// What `up` started; read back by the other commands.
#[derive(Serialize, Deserialize)]
struct State {
    dir: PathBuf,
    etcd_members: Vec<MemberState>,
}

#[derive(Serialize, Deserialize)]
struct MemberState {
    name: String,
    client_url: String,
    health_url: String,
    log_path: PathBuf,
    bin: PathBuf,
    /// The restart command line (`--initial-cluster-state existing`).
    restart_args: Vec<String>,
}

/// One line of `DIR/pids`: `PID ROLE START_TIME`.
#[derive(Debug, Clone, PartialEq)]
struct PidEntry {
    pid: u32,
    role: String,
    start_time: u64,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dr-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up(args) => up(args),
        Cmd::Down { dir } => down(&canonical(&dir)?),
        Cmd::Env { dir } => {
            let p = dir.join("stack.env");
            let s = fs::read_to_string(&p)
                .with_context(|| format!("reading {} (is the stack up?)", p.display()))?;
            print!("{s}");
            Ok(())
        }
        Cmd::StopMember { dir, n } => stop_member(&canonical(&dir)?, &n),
        Cmd::StartMember { dir, n } => start_member(&canonical(&dir)?, &n),
        Cmd::WaitHealthy { dir, timeout } => {
            wait_healthy(&canonical(&dir)?, Duration::from_secs(timeout))
        }
    }
}

fn canonical(dir: &Path) -> Result<PathBuf> {
    dir.canonicalize()
        .with_context(|| format!("{} does not exist (is the stack up?)", dir.display()))
}

fn up(a: UpArgs) -> Result<()> {
    fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = canonical(&a.dir)?;
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
    for name in ["etcd", "pushgateway", "alertmanager", "prometheus"] {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing stale {}", p.display()))?;
        }
    }
    let sub = |name: &str| Workdir::fixed(dir.join(name)).map(Workdir::detached);
    let mut env: Vec<(String, String)> = vec![("DR_STACK_DIR".into(), dir.display().to_string())];

    // Everything started below is stopped by the guards if a later step fails.
    let etcd = if a.members > 0 {
        let version = EtcdVersion::parse(&a.etcd_version)?;
        let c = EtcdCluster::start(EtcdOptions {
            version,
            members: a.members,
            quota_backend_bytes: a.quota,
            tls: a.tls,
            workdir: Some(sub("etcd")?),
            ..EtcdOptions::default()
        })?;
        let join = |f: &dyn Fn(&EtcdMember) -> String| {
            c.members().iter().map(f).collect::<Vec<_>>().join(",")
        };
        env.push(("ETCD_VERSION".into(), version.as_str().into()));
        env.push(("ETCD_MEMBERS".into(), c.len().to_string()));
        env.push(("ETCD_ENDPOINTS".into(), c.client_endpoints().join(",")));
        env.push((
            "ETCD_METRICS_URLS".into(),
            join(&|m| format!("{}/metrics", m.metrics_url)),
        ));
        env.push(("ETCD_HEALTH_URLS".into(), join(&|m| m.health_url.clone())));
        env.push((
            "ETCD_CLIENT_METRICS_URLS".into(),
            join(&|m| m.client_metrics_url()),
        ));
        env.push((
            "ETCD_DATA_DIRS".into(),
            join(&|m| m.data_dir.display().to_string()),
        ));
        env.push((
            "ETCD_LOGS".into(),
            join(&|m| m.log_path.display().to_string()),
        ));
        if let Some(t) = c.tls() {
            env.push(("ETCD_CACERT".into(), t.ca_cert.display().to_string()));
            env.push(("ETCD_CERT".into(), t.client_cert.display().to_string()));
            env.push(("ETCD_KEY".into(), t.client_key.display().to_string()));
        }
        Some(c)
    } else {
        None
    };

    let pushgateway = if a.pushgateway {
        let pg = Pushgateway::start_with(PushgatewayOptions {
            workdir: Some(sub("pushgateway")?),
            ..PushgatewayOptions::default()
        })?;
        env.push(("PUSHGATEWAY_URL".into(), pg.url()));
        env.push(("PUSHGATEWAY_ADDR".into(), pg.addr()));
        Some(pg)
    } else {
        None
    };

    let alertmanager = match &a.alertmanager_config {
        Some(f) => {
            let config = fs::read_to_string(f)
                .with_context(|| format!("reading Alertmanager config {}", f.display()))?;
            let am = Alertmanager::start_with(AlertmanagerOptions {
                config_yaml: config,
                workdir: Some(sub("alertmanager")?),
                ..AlertmanagerOptions::default()
            })?;
            env.push(("ALERTMANAGER_URL".into(), am.url()));
            env.push(("ALERTMANAGER_ADDR".into(), am.addr()));
            Some(am)
        }
        None => None,
    };

    let prometheus = if a.prometheus || a.prometheus_config.is_some() || !a.rules.is_empty() {
        let known: Vec<(&str, String)> = [
            (
                "PUSHGATEWAY_ADDR",
                pushgateway.as_ref().map(Pushgateway::addr),
            ),
            (
                "ALERTMANAGER_ADDR",
                alertmanager.as_ref().map(Alertmanager::addr),
            ),
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
            None => match &pushgateway {
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
            let text = fs::read_to_string(f)
                .with_context(|| format!("reading rule file {}", f.display()))?;
            rule_files.push((name, substitute(&text, &known)?));
        }
        let p = Prometheus::start_with(PrometheusOptions {
            scrape_configs,
            rule_files,
            scrape_interval: Duration::from_secs(a.scrape_interval.max(1)),
            evaluation_interval: Duration::from_secs(a.evaluation_interval.max(1)),
            alertmanager_url: alertmanager.as_ref().map(Alertmanager::url),
            workdir: Some(sub("prometheus")?),
            ..PrometheusOptions::default()
        })?;
        env.push(("PROMETHEUS_URL".into(), p.url()));
        Some(p)
    } else {
        None
    };

    // All up: record, then let go of the processes.
    let mut state = State {
        dir: dir.clone(),
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
        .map(|(role, pid)| PidEntry {
            pid,
            role,
            start_time: pid_start_time(pid).unwrap_or(0),
        })
        .collect();
    write_pids(&dir, &entries)?;
    fs::write(
        dir.join("stack.json"),
        serde_json::to_string_pretty(&state)?,
    )
    .context("writing stack.json")?;
    let env_text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect();
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

fn read_state(dir: &Path) -> Result<State> {
    let p = dir.join("stack.json");
    let text = fs::read_to_string(&p)
        .with_context(|| format!("reading {} (is the stack up?)", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn read_pids(dir: &Path) -> Result<Vec<PidEntry>> {
    let p = dir.join("pids");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [pid, role, start] => Ok(PidEntry {
                    pid: pid.parse()?,
                    role: (*role).to_owned(),
                    start_time: start.parse()?,
                }),
                _ => bail!("bad line in {}: {l:?}", p.display()),
            }
        })
        .collect()
}

fn write_pids(dir: &Path, entries: &[PidEntry]) -> Result<()> {
    let mut text =
        String::from("# PID ROLE START_TIME (from /proc/PID/stat); written by dr-stack\n");
    for e in entries {
        text.push_str(&format!("{} {} {}\n", e.pid, e.role, e.start_time));
    }
    let p = dir.join("pids");
    let tmp = dir.join("pids.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
}

/// The PID is alive, started when we recorded, and its command line names DIR: the
/// same process, not a recycled PID.
fn is_ours(e: &PidEntry, dir: &Path) -> bool {
    pid_alive(e.pid)
        && pid_start_time(e.pid) == Some(e.start_time)
        && pid_cmdline(e.pid).is_some_and(|c| c.contains(&*dir.to_string_lossy()))
}

fn down(dir: &Path) -> Result<()> {
    let entries = read_pids(dir)?;
    let mut failures = Vec::new();
    // Reverse start order: Prometheus first, etcd last.
    for e in entries.iter().rev() {
        if !is_ours(e, dir) {
            if pid_alive(e.pid) {
                eprintln!(
                    "dr-stack: pid {} ({}) is no longer the process we started; left alone",
                    e.pid, e.role
                );
            }
            continue;
        }
        match stop_foreign_pid(e.pid, STOP_TIMEOUT) {
            Ok(()) => eprintln!("dr-stack: stopped {} (pid {})", e.role, e.pid),
            Err(err) => failures.push(format!("{} (pid {}): {err:#}", e.role, e.pid)),
        }
    }
    if !failures.is_empty() {
        bail!("could not stop: {}", failures.join("; "));
    }
    write_pids(dir, &[])?;
    Ok(())
}

/// Member `n` by index or by name: restore templates know members by name.
fn member_state<'a>(state: &'a State, n: &str) -> Result<&'a MemberState> {
    let found = match n.parse::<usize>() {
        Ok(i) => state.etcd_members.get(i),
        Err(_) => state.etcd_members.iter().find(|m| m.name == n),
    };
    found.with_context(|| {
        let names: Vec<&str> = state.etcd_members.iter().map(|m| m.name.as_str()).collect();
        format!("no etcd member {n} (the stack has {})", names.join(", "))
    })
}

fn stop_member(dir: &Path, n: &str) -> Result<()> {
    let state = read_state(dir)?;
    let name = &member_state(&state, n)?.name;
    let mut entries = read_pids(dir)?;
    if let Some(e) = entries.iter().find(|e| &e.role == name)
        && is_ours(e, dir)
    {
        stop_foreign_pid(e.pid, STOP_TIMEOUT)?;
        eprintln!("dr-stack: stopped {name} (pid {})", e.pid);
    }
    entries.retain(|e| &e.role != name);
    write_pids(dir, &entries)
}

fn start_member(dir: &Path, n: &str) -> Result<()> {
    let state = read_state(dir)?;
    let m = member_state(&state, n)?;
    let mut entries = read_pids(dir)?;
    if entries.iter().any(|e| e.role == m.name && is_ours(e, dir)) {
        bail!("{} is already running", m.name);
    }
    let mut cmd = Command::new(&m.bin);
    cmd.args(&m.restart_args).current_dir(dir.join("etcd"));
    let guard = ChildGuard::spawn(&m.name, cmd, &m.log_path, true)?;
    let health = m.health_url.clone();
    guard.wait_until(&format!("answering on {health}"), STARTUP_TIMEOUT, || {
        http_get(&health).map(|_| true)
    })?;
    let pid = guard.disarm();
    entries.retain(|e| e.role != m.name);
    entries.push(PidEntry {
        pid,
        role: m.name.clone(),
        start_time: pid_start_time(pid).unwrap_or(0),
    });
    write_pids(dir, &entries)?;
    eprintln!("dr-stack: started {} (pid {pid})", m.name);
    Ok(())
}

fn wait_healthy(dir: &Path, timeout: Duration) -> Result<()> {
    let state = read_state(dir)?;
    let entries = read_pids(dir)?;
    let deadline = Instant::now() + timeout;
    for m in &state.etcd_members {
        if !entries.iter().any(|e| e.role == m.name && is_ours(e, dir)) {
            continue;
        }
        let member = EtcdMember {
            name: m.name.clone(),
            data_dir: PathBuf::new(),
            client_url: m.client_url.clone(),
            peer_url: String::new(),
            metrics_url: String::new(),
            health_url: m.health_url.clone(),
            log_path: m.log_path.clone(),
        };
        loop {
            match member_healthy(&member) {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} not healthy within {timeout:?}: {e:#}\n--- last lines of {} ---\n{}",
                        m.name,
                        m.log_path.display(),
                        dr_testkit::process::log_tail(&m.log_path, 25)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    Ok(())
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
