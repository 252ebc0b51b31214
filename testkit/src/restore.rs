//! The remediator's restore procedure for harness members (`--restore-mode command`),
//! where the caller owns the etcd processes, as systemd or the kubelet would on a node:
//! etcdctl restores; "stop" and "start" are requests written as marker files, which the
//! caller answers with [`RestoreMarkers::answer`].

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::etcd::{CLUSTER_TOKEN, EtcdCluster, EtcdVersion, etcdctl_binary};

/// What [`RestoreMarkers::answer`] did for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerAction {
    Stopped(String),
    Started(String),
}

pub struct RestoreMarkers {
    dir: PathBuf,
    stopped: BTreeSet<String>,
    started: BTreeSet<String>,
}

impl RestoreMarkers {
    /// Markers live in `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            stopped: BTreeSet::new(),
            started: BTreeSet::new(),
        })
    }

    /// The remediator's restore flags for `cluster`'s members. The stop command returns
    /// once the caller has answered (bounded: 30 s); the start command returns at once.
    pub fn remediator_flags(&self, cluster: &EtcdCluster) -> Result<Vec<String>> {
        let etcdctl = etcdctl_binary()?;
        let m = self.dir.display();
        // etcd 3.6 panics ("failed to update; member unknown") on a data dir that
        // etcdctl 3.4 restored from a 3.6 snapshot under a new token: 3.4's restore does
        // not rewrite the membership 3.6 reads from the backend. The original token keeps
        // the member IDs, and 3.6 starts and serves. (etcdutl is the tool for 3.5+.)
        let token = match cluster.version() {
            EtcdVersion::V3_4 => "{cluster_token}",
            EtcdVersion::V3_5 | EtcdVersion::V3_6 | EtcdVersion::V3_7 => CLUSTER_TOKEN,
        };
        Ok(vec![
            "--restore-mode".into(),
            "command".into(),
            "--restore-stop-cmd".into(),
            format!(
                "touch {m}/stop-{{member}}; for i in $(seq 300); do \
                 [ -e {m}/stopped-{{member}} ] && exit 0; sleep 0.1; done; exit 1"
            ),
            "--restore-cmd".into(),
            format!(
                "ETCDCTL_API=3 {} snapshot restore {{snapshot}} --name {{member}} \
                 --initial-cluster {{initial_cluster}} --initial-advertise-peer-urls {{peer_url}} \
                 --initial-cluster-token {token} --data-dir {{new_data_dir}}",
                etcdctl.display()
            ),
            "--restore-swap-cmd".into(),
            "mv {data_dir} {old_data_dir} && mv {new_data_dir} {data_dir}".into(),
            "--restore-start-cmd".into(),
            format!("touch {m}/start-{{member}}"),
            "--member-data-dir".into(),
            format!("{}/{{member}}.data", cluster.data_root().display()),
            "--restore-timeout".into(),
            "60s".into(),
        ])
    }

    /// Answers the requests written since the last call: stops each member asked to stop
    /// (if it still runs) and says so, starts each member asked to start.
    pub fn answer(&mut self, cluster: &mut EtcdCluster) -> Result<Vec<MarkerAction>> {
        let mut done = Vec::new();
        for i in 0..cluster.len() {
            let name = cluster.member(i).name.clone();
            if self.dir.join(format!("stop-{name}")).exists() && !self.stopped.contains(&name) {
                cluster.stop_member(i)?;
                fs::write(self.dir.join(format!("stopped-{name}")), b"")?;
                self.stopped.insert(name.clone());
                done.push(MarkerAction::Stopped(name.clone()));
            }
            if self.dir.join(format!("start-{name}")).exists() && !self.started.contains(&name) {
                cluster.start_member(i)?;
                self.started.insert(name.clone());
                done.push(MarkerAction::Started(name));
            }
        }
        Ok(done)
    }

    /// Members started on request so far.
    pub fn started(&self) -> usize {
        self.started.len()
    }

    /// True when no request was ever written.
    pub fn untouched(&self) -> Result<bool> {
        Ok(fs::read_dir(&self.dir)?.next().is_none())
    }
}
