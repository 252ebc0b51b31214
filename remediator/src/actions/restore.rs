//! Restore through operator-supplied commands: stop every member, restore the verified
//! snapshot into a new data dir per member, swap it in (the old dir is kept), start, then
//! wait for health. The kubeadm preset fills the commands for static-pod etcd.
//!
//! Placeholders (values are shell-quoted when substituted): `{snapshot}` `{member}`
//! `{data_dir}` `{new_data_dir}` `{old_data_dir}` `{peer_url}` `{initial_cluster}`
//! `{cluster_token}` `{work_dir}`.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

use crate::actions::snapshot::verify_file;
use crate::actions::verify::{self, Health};
use crate::cluster::{EtcdAccess, MemberView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestorePreset {
    /// Static-pod etcd as kubeadm lays it out: manifest in /etc/kubernetes/manifests,
    /// data in /var/lib/etcd, `etcdutl` (etcd 3.5+) and `crictl` on the node.
    Kubeadm,
}

/// The four command templates and where members keep their data.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreCommands {
    pub stop: String,
    pub restore: String,
    pub swap: String,
    pub start: String,
    /// `{member}` is replaced by the member name.
    pub data_dir: String,
    pub timeout: Duration,
}

const KUBEADM_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";

impl RestoreCommands {
    /// Explicit commands win over the preset; all four must be known in the end.
    pub fn resolve(
        preset: Option<RestorePreset>,
        stop: Option<String>,
        restore: Option<String>,
        swap: Option<String>,
        start: Option<String>,
        data_dir: String,
        timeout: Duration,
    ) -> Result<Self, String> {
        let defaults = preset.map(|preset| match preset {
            RestorePreset::Kubeadm => kubeadm(),
        });
        let pick = |given: Option<String>, flag: &str, default: Option<&str>| {
            given
                .or_else(|| default.map(str::to_owned))
                .ok_or_else(|| format!("--restore-mode command needs {flag} (or --restore-preset)"))
        };
        let d = defaults.as_ref();
        Ok(RestoreCommands {
            stop: pick(stop, "--restore-stop-cmd", d.map(|d| d.stop.as_str()))?,
            restore: pick(restore, "--restore-cmd", d.map(|d| d.restore.as_str()))?,
            swap: pick(swap, "--restore-swap-cmd", d.map(|d| d.swap.as_str()))?,
            start: pick(start, "--restore-start-cmd", d.map(|d| d.start.as_str()))?,
            data_dir,
            timeout,
        })
    }
}

fn kubeadm() -> RestoreCommands {
    RestoreCommands {
        // Moving the manifest away makes the kubelet stop the pod; wait until it is gone.
        stop: format!(
            "mv {KUBEADM_MANIFEST} {{work_dir}}/etcd.yaml.restore && \
             for i in $(seq 120); do crictl ps --name '^etcd$' -q | grep -q . || exit 0; sleep 1; done; \
             echo 'etcd container still running' >&2; exit 1"
        ),
        restore: "etcdutl snapshot restore {snapshot} --name {member} \
                  --initial-cluster {initial_cluster} --initial-advertise-peer-urls {peer_url} \
                  --initial-cluster-token {cluster_token} --data-dir {new_data_dir}"
            .into(),
        swap: "mv {data_dir} {old_data_dir} && mv {new_data_dir} {data_dir}".into(),
        start: format!("mv {{work_dir}}/etcd.yaml.restore {KUBEADM_MANIFEST}"),
        data_dir: "/var/lib/etcd".into(),
        timeout: Duration::from_secs(300),
    }
}

/// What one restore did, for the audit log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RestoreReport {
    pub snapshot: String,
    pub cluster_token: String,
    /// The data dirs that were swapped out and kept.
    pub old_data_dirs: Vec<String>,
    pub health: Health,
}

/// Restores `snapshot` onto `members` (as they were before the incident).
pub async fn run(
    commands: &RestoreCommands,
    access: &EtcdAccess,
    members: &[MemberView],
    snapshot: &Path,
    work_dir: &Path,
    action_id: &str,
) -> Result<RestoreReport, String> {
    // A snapshot is good only after its trailer verifies, also right before we use it.
    let snap = snapshot.to_path_buf();
    tokio::task::spawn_blocking(move || verify_file(&snap))
        .await
        .map_err(|err| format!("verifying task failed: {err}"))??;
    let cluster_token = format!("etcd-dr-restore-{action_id}");
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let contexts: Vec<Vec<(&str, String)>> = members
        .iter()
        .map(|m| {
            let data_dir = commands.data_dir.replace("{member}", &m.name);
            vec![
                ("snapshot", snapshot.display().to_string()),
                ("member", m.name.clone()),
                ("new_data_dir", format!("{data_dir}.restore-{action_id}")),
                ("old_data_dir", format!("{data_dir}.old-{action_id}")),
                ("data_dir", data_dir),
                ("peer_url", m.peer_url.clone()),
                ("initial_cluster", initial_cluster.clone()),
                ("cluster_token", cluster_token.clone()),
                ("work_dir", work_dir.display().to_string()),
            ]
        })
        .collect();
    // Every member stops before any is restored: a restored member must not meet an old one.
    for (step, template) in [
        ("stop", &commands.stop),
        ("restore", &commands.restore),
        ("swap", &commands.swap),
        ("start", &commands.start),
    ] {
        for (member, context) in members.iter().zip(&contexts) {
            let command = render(template, context);
            tracing::info!(step, member = %member.name, %command, "restore command");
            run_command(&command, commands.timeout)
                .await
                .map_err(|err| format!("restore {step} of {}: {err}", member.name))?;
        }
    }
    let deadline = Instant::now() + commands.timeout;
    let health = loop {
        let health = verify::check(access, &cluster_token).await;
        if health == Health::Healthy || Instant::now() >= deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Ok(RestoreReport {
        snapshot: snapshot.display().to_string(),
        cluster_token,
        old_data_dirs: contexts
            .iter()
            .filter_map(|c| {
                c.iter()
                    .find(|(k, _)| *k == "old_data_dir")
                    .map(|(_, v)| v.clone())
            })
            .collect(),
        health,
    })
}

/// Substitutes `{name}` placeholders with shell-quoted values.
pub fn render(template: &str, context: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in context {
        out = out.replace(&format!("{{{name}}}"), &shell_quote(value));
    }
    out
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

async fn run_command(command: &str, timeout: Duration) -> Result<(), String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| format!("did not finish within {timeout:?}"))?
        .map_err(|err| format!("cannot run sh: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted_and_quoted() {
        let context = vec![
            ("data_dir", "/var/lib/etcd".to_owned()),
            ("member", "it's".to_owned()),
        ];
        assert_eq!(
            render("mv {data_dir} /x/{member}", &context),
            r"mv '/var/lib/etcd' /x/'it'\''s'"
        );
    }

    #[test]
    fn explicit_commands_win_over_the_preset() {
        let commands = RestoreCommands::resolve(
            Some(RestorePreset::Kubeadm),
            Some("true".into()),
            None,
            None,
            None,
            "/d".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(commands.stop, "true");
        assert!(commands.restore.starts_with("etcdutl snapshot restore"));
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_stderr() {
        let err = run_command("echo boom >&2; exit 3", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("boom"), "{err}");
        let err = run_command("sleep 5", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
    }
}
