//! Restore through operator-supplied commands: stop every member, restore the verified
//! snapshot into a new data dir per member, swap it in (the old data is kept), start, then
//! wait for health. The kubeadm preset fills the commands for static-pod etcd. A failure
//! before any swap starts the stopped members again on their untouched data.
//!
//! Placeholders (values are shell-quoted when substituted): `{snapshot}` `{member}`
//! `{data_dir}` `{new_data_dir}` `{old_data_dir}` `{peer_url}` `{initial_cluster}`
//! `{cluster_token}` `{work_dir}` `{action_id}`.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

use crate::actions::snapshot::verify_file;
use crate::actions::verify::{self, Health};
use crate::cluster::MemberView;
use crate::config::ConfigError;
use crate::error::{ActionError, CommandError};
use crate::etcd::EtcdAccess;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestorePreset {
    /// Static-pod etcd as kubeadm lays it out, restored on the node the remediator runs
    /// on (single-member clusters only): the manifest (--kubeadm-manifest) moved away and
    /// back, data in --member-data-dir, `etcdctl` and `flock` in the remediator's image.
    Kubeadm,
}

/// The restore commands given as flags; each one given wins over the preset's.
#[derive(Clone, Debug, Default)]
pub struct CommandFlags {
    pub stop: Option<String>,
    pub restore: Option<String>,
    pub swap: Option<String>,
    pub start: Option<String>,
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
    /// Where the restore writes and where the old data is kept: paths built from
    /// `{data_dir}` and `{action_id}` (substituted as they are, not quoted).
    pub new_data_dir: String,
    pub old_data_dir: String,
    /// The commands reach only the member on this node (a preset that moves a local
    /// manifest): a cluster of more than one member is not restored with them.
    pub node_local: bool,
    pub timeout: Duration,
}

/// kubeadm's static pod manifest for etcd.
pub const KUBEADM_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";

impl RestoreCommands {
    /// Explicit commands win over the preset; all four must be known in the end.
    pub fn resolve(
        preset: Option<RestorePreset>,
        kubeadm_manifest: &str,
        given: CommandFlags,
        data_dir: String,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let preset = preset.map(|preset| match preset {
            RestorePreset::Kubeadm => Kubeadm::commands(kubeadm_manifest),
        });
        let pick = |given: Option<String>, flag: &'static str, preset: Option<&str>| {
            given
                .or_else(|| preset.map(str::to_owned))
                .ok_or(ConfigError::RestoreCommand(flag))
        };
        let p = preset.as_ref();
        Ok(RestoreCommands {
            stop: pick(given.stop, "--restore-stop-cmd", p.map(|p| p.stop.as_str()))?,
            restore: pick(
                given.restore,
                "--restore-cmd",
                p.map(|p| p.restore.as_str()),
            )?,
            swap: pick(given.swap, "--restore-swap-cmd", p.map(|p| p.swap.as_str()))?,
            start: pick(
                given.start,
                "--restore-start-cmd",
                p.map(|p| p.start.as_str()),
            )?,
            data_dir,
            new_data_dir: p.map_or(SIBLING_NEW, |p| p.new_data_dir).into(),
            old_data_dir: p.map_or(SIBLING_OLD, |p| p.old_data_dir).into(),
            node_local: p.is_some_and(|p| p.node_local),
            timeout,
        })
    }
}

/// Without a preset the restored and the old data dir sit beside the data dir.
const SIBLING_NEW: &str = "{data_dir}.restore-{action_id}";
const SIBLING_OLD: &str = "{data_dir}.old-{action_id}";

/// A preset's commands and layout.
struct Preset {
    stop: String,
    restore: String,
    swap: String,
    start: String,
    new_data_dir: &'static str,
    old_data_dir: &'static str,
    node_local: bool,
}

/// Static-pod etcd on the remediator's own node. Everything stays inside the two
/// directories the chart mounts (the manifests dir and the data dir), so the restored data
/// is written inside the data dir and only its `member` directory is swapped.
struct Kubeadm;

impl Kubeadm {
    /// How long the stop waits for the kubelet to stop etcd.
    const STOP_WAIT_SECONDS: u32 = 120;

    fn commands(manifest: &str) -> Preset {
        let manifest = shell_quote(manifest);
        let parked = "{work_dir}/etcd.yaml.restore-{action_id}";
        let wait = Self::STOP_WAIT_SECONDS;
        Preset {
            // Moving the manifest away makes the kubelet stop the pod. etcd holds an
            // exclusive flock on its backend file while it runs (bbolt), so the member
            // has stopped once that lock can be taken; no container runtime tool needed.
            stop: format!(
                "mv {manifest} {parked} && db={{data_dir}}/member/snap/db && \
                 for i in $(seq {wait}); do \
                 {{ [ ! -e \"$db\" ] || flock -n \"$db\" true; }} && exit 0; sleep 1; done; \
                 echo \"etcd still holds $db {wait} s after its manifest was moved\" >&2; exit 1"
            ),
            // etcdctl 3.4 (the image's) rewrites the membership etcd 3.4 and 3.5 read, not
            // the copy in the backend that 3.6 reads: the member keeps its ID only under
            // the token it had, so the manifest's token (kubeadm leaves etcd's default)
            // is reused. Safe here: there is no other member to meet.
            restore: format!(
                "token=$(sed -n 's/.*--initial-cluster-token=\\([^\" ]*\\).*/\\1/p' {parked} | head -n 1) && \
                 ETCDCTL_API=3 etcdctl snapshot restore {{snapshot}} --name {{member}} \
                 --initial-cluster {{initial_cluster}} --initial-advertise-peer-urls {{peer_url}} \
                 --initial-cluster-token \"${{token:-etcd-cluster}}\" --data-dir {{new_data_dir}}"
            ),
            swap: "{ [ ! -e {data_dir}/member ] || mv {data_dir}/member {old_data_dir}; } && \
                   mv {new_data_dir}/member {data_dir}/member && rmdir {new_data_dir}"
                .into(),
            start: format!("mv {parked} {manifest}"),
            new_data_dir: "{data_dir}/restore-{action_id}",
            old_data_dir: "{data_dir}/member.old-{action_id}",
            node_local: true,
        }
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
) -> Result<RestoreReport, ActionError> {
    // A snapshot is good only after its trailer verifies, also right before we use it.
    let snap = snapshot.to_path_buf();
    tokio::task::spawn_blocking(move || verify_file(&snap))
        .await
        .map_err(ActionError::Task)??;
    let cluster_token = format!("etcd-dr-restore-{action_id}");
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let old_data_dirs: Vec<String> = members
        .iter()
        .map(|m| {
            layout(
                &commands.old_data_dir,
                &member_data_dir(commands, m),
                action_id,
            )
        })
        .collect();
    let contexts: Vec<Vec<(&str, String)>> = members
        .iter()
        .zip(&old_data_dirs)
        .map(|(m, old_data_dir)| {
            let data_dir = member_data_dir(commands, m);
            vec![
                ("snapshot", snapshot.display().to_string()),
                ("member", m.name.clone()),
                (
                    "new_data_dir",
                    layout(&commands.new_data_dir, &data_dir, action_id),
                ),
                ("old_data_dir", old_data_dir.clone()),
                ("data_dir", data_dir),
                ("peer_url", m.peer_url.clone()),
                ("initial_cluster", initial_cluster.clone()),
                ("cluster_token", cluster_token.clone()),
                ("work_dir", work_dir.display().to_string()),
                ("action_id", action_id.to_owned()),
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
        for (i, (member, context)) in members.iter().zip(&contexts).enumerate() {
            let command = render(template, context);
            tracing::info!(step, member = %member.name, %command, "restore command");
            let Err(error) = run_command(&command, commands.timeout).await else {
                continue;
            };
            // Before any swap the data is untouched: the members stopped so far start
            // again on it (during the stops, those up to this one).
            let stopped = match step {
                "stop" => i + 1,
                "restore" => members.len(),
                _ => 0,
            };
            return Err(ActionError::Restore {
                step,
                member: member.name.clone(),
                error,
                started_again: start_again(commands, &members[..stopped], &contexts).await,
            });
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
        old_data_dirs,
        health,
    })
}

/// Runs the start command for `members` after a failed stop or restore (their data is
/// untouched) and says how that went for each.
async fn start_again(
    commands: &RestoreCommands,
    members: &[MemberView],
    contexts: &[Vec<(&str, String)>],
) -> Vec<String> {
    let mut outcomes = Vec::new();
    for (member, context) in members.iter().zip(contexts) {
        let command = render(&commands.start, context);
        tracing::warn!(member = %member.name, %command, "restore abandoned: starting the member again");
        outcomes.push(match run_command(&command, commands.timeout).await {
            Ok(()) => format!("{} started again", member.name),
            Err(err) => format!("starting {} again failed: {err}", member.name),
        });
    }
    outcomes
}

/// `--member-data-dir` for `member`.
fn member_data_dir(commands: &RestoreCommands, member: &MemberView) -> String {
    commands.data_dir.replace("{member}", &member.name)
}

/// A data dir layout template with `{data_dir}` and `{action_id}` filled in (unquoted).
fn layout(template: &str, data_dir: &str, action_id: &str) -> String {
    template
        .replace("{data_dir}", data_dir)
        .replace("{action_id}", action_id)
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

async fn run_command(command: &str, timeout: Duration) -> Result<(), CommandError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| CommandError::Timeout(timeout))?
        .map_err(CommandError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(CommandError::Exit {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
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
            KUBEADM_MANIFEST,
            CommandFlags {
                stop: Some("true".into()),
                ..CommandFlags::default()
            },
            "/d".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(commands.stop, "true");
        assert!(commands.restore.contains("etcdctl snapshot restore"));
        // The preset's layout and reach stay with its other commands.
        assert!(commands.node_local);
        assert_eq!(commands.new_data_dir, "{data_dir}/restore-{action_id}");
    }

    #[test]
    fn without_a_preset_the_data_dirs_sit_beside_and_every_member_is_reached() {
        let given = CommandFlags {
            stop: Some("a".into()),
            restore: Some("b".into()),
            swap: Some("c".into()),
            start: Some("d".into()),
        };
        let commands = RestoreCommands::resolve(
            None,
            KUBEADM_MANIFEST,
            given,
            "/d/{member}".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!commands.node_local);
        assert_eq!(
            layout(&commands.old_data_dir, "/d/m1", "x1"),
            "/d/m1.old-x1"
        );
        let missing = RestoreCommands::resolve(
            None,
            KUBEADM_MANIFEST,
            CommandFlags::default(),
            "/d".into(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(missing, ConfigError::RestoreCommand("--restore-stop-cmd")),
            "{missing}"
        );
        assert!(
            missing.to_string().contains("--restore-stop-cmd"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_stderr() {
        let err = run_command("echo boom >&2; exit 3", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Exit { .. }), "{err:?}");
        assert!(err.to_string().contains("boom"), "{err}");
        let err = run_command("sleep 5", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
}
