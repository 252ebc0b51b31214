//! The `dr-stack` binary: up, env, member stop/start, down; only its own processes die.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use dr_testkit::{http_get, pid_alive, run_within};

/// Every dr-stack command ends well within this (its own waits are bounded too).
const LIMIT: Duration = Duration::from_secs(120);

fn dr_stack(args: &[&str], dir: &Path) -> Output {
    let out = run_within(
        Command::new(env!("CARGO_BIN_EXE_dr-stack"))
            .args(args)
            .arg("--dir")
            .arg(dir),
        LIMIT,
    )
    .expect("running dr-stack");
    assert!(
        out.status.success(),
        "dr-stack {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn env_value(env: &str, key: &str) -> String {
    let prefix = format!("export {key}='");
    env.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or_else(|| panic!("{key} missing from stack.env:\n{env}"))
        .to_owned()
}

fn pids(dir: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(dir.join("pids"))
        .expect("reading pids")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().expect("numeric pid"), f[1].to_owned())
        })
        .collect()
}

/// Stops the stack even if an assertion fails half-way.
struct Down<'a>(&'a Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run_within(
            Command::new(env!("CARGO_BIN_EXE_dr-stack"))
                .args(["down", "--dir"])
                .arg(self.0),
            LIMIT,
        );
    }
}

#[test]
fn up_env_member_restart_and_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    let scrape = dir.join("scrape.yml");
    std::fs::write(
        &scrape,
        "scrape_configs:\n- job_name: pg\n  honor_labels: true\n  static_configs:\n    - targets: ['${PUSHGATEWAY_ADDR}']\n",
    )
    .unwrap();
    let _down = Down(&dir);

    dr_stack(
        &[
            "up",
            "--members",
            "3",
            "--etcd",
            "3.6",
            "--pushgateway",
            "--prometheus-config",
            scrape.to_str().unwrap(),
        ],
        &dir,
    );
    let env = String::from_utf8(dr_stack(&["env"], &dir).stdout).unwrap();
    assert_eq!(env, std::fs::read_to_string(dir.join("stack.env")).unwrap());
    assert_eq!(env_value(&env, "ETCD_ENDPOINTS").split(',').count(), 3);
    let pg = env_value(&env, "PUSHGATEWAY_ADDR");
    let prom = env_value(&env, "PROMETHEUS_URL");
    for url in env_value(&env, "ETCD_HEALTH_URLS").split(',') {
        assert_eq!(http_get(url).unwrap().0, 200, "{url}");
    }
    let config = std::fs::read_to_string(dir.join("prometheus/prometheus.yml")).unwrap();
    assert!(config.contains(&format!("targets: ['{pg}']")), "{config}");
    assert_eq!(http_get(&format!("{prom}/-/ready")).unwrap().0, 200);

    let started = pids(&dir);
    assert_eq!(started.len(), 5, "{started:?}");
    assert!(started.iter().all(|(pid, _)| pid_alive(*pid)));

    // A second `up` on the same dir refuses rather than orphaning the first stack.
    let again = run_within(
        Command::new(env!("CARGO_BIN_EXE_dr-stack"))
            .args(["up", "--dir"])
            .arg(&dir),
        LIMIT,
    )
    .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let member1 = started.iter().find(|(_, r)| r == "etcd-1").unwrap().0;
    dr_stack(&["stop-member", "1"], &dir);
    assert!(!pid_alive(member1));
    dr_stack(&["start-member", "1"], &dir);
    dr_stack(&["wait-healthy"], &dir);
    let restarted = pids(&dir);
    assert_eq!(restarted.len(), 5, "{restarted:?}");

    dr_stack(&["down"], &dir);
    for (pid, role) in &restarted {
        assert!(!pid_alive(*pid), "{role} (pid {pid}) survived down");
    }
    // Idempotent.
    dr_stack(&["down"], &dir);

    // The same dir comes up again with fresh data (old peer ports would break etcd).
    dr_stack(&["up", "--members", "3", "--etcd", "3.6"], &dir);
    dr_stack(&["wait-healthy"], &dir);
    let second = pids(&dir);
    assert_eq!(second.len(), 3, "{second:?}");
    dr_stack(&["down"], &dir);
    assert!(second.iter().all(|(pid, _)| !pid_alive(*pid)));
}
