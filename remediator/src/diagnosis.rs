//! Why the remediator was called: one of a small set of diagnoses, with the evidence that
//! chose it. Pure (the inputs are the alert, the detector's explanation, the cluster view
//! and the members' sampled metrics), so every rule is tested without etcd.
//!
//! The rules, first match wins:
//! 1. a member does not answer Status: `member_unavailable` (hard fact, whatever was said);
//! 2. NOSPACE is raised: `space` (etcd is read-only; reclaiming is the only way back);
//! 3. every member answers but none names a leader: `leader_instability`;
//! 4. the members' own metrics over a short window: a leader change seen ->
//!    `leader_instability`; WAL fsync p99 at or over [`SLOW_FSYNC_SECONDS`] -> `slow_disk`;
//! 5. the alert: a `etcd_dr_diagnosis` label, else a known rule name ([`for_alert`]);
//! 6. the detector's explanation: the feature group with at least [`DOMINANT_SHARE`] of the
//!    error; a space or fragmentation reading needs etcd to agree (rule 7 holds, or the db
//!    is at least [`SPACE_AGREES_RATIO`] of its quota);
//! 7. etcd's sizes: db at or over [`SPACE_RATIO`] of its quota -> `space`; at least
//!    [`FRAGMENTATION_RATIO`] of the file free and [`FRAGMENTATION_MIN_BYTES`] to reclaim
//!    -> `fragmentation`;
//! 8. otherwise `unknown`.
//!
//! Hazards (rules 1, 3, 4) come before what the alert or the model says, because the space
//! plan's defrag blocks each member in turn: the wrong medicine for a sick member, an
//! election storm or a slow disk.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::ClusterView;

/// db size over quota at which etcd's own sizes say "space".
pub const SPACE_RATIO: f64 = 0.8;
/// db size over quota at which etcd agrees with a model that reads "space" (its features
/// see growth toward the quota before the quota is near).
pub const SPACE_AGREES_RATIO: f64 = 0.5;
/// Share of the db file that is free (reclaimable by a defrag) to call it fragmented...
pub const FRAGMENTATION_RATIO: f64 = 0.5;
/// ...when that is also at least this many bytes (a small db is not worth a defrag).
pub const FRAGMENTATION_MIN_BYTES: i64 = 8 * 1024 * 1024;
/// A feature group carrying this share of the detector's error explains the score.
pub const DOMINANT_SHARE: f64 = 0.5;
/// The etcd mixin's warning level for WAL fsync p99.
pub const SLOW_FSYNC_SECONDS: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Diagnosis {
    Space,
    Fragmentation,
    MemberUnavailable,
    LeaderInstability,
    SlowDisk,
    Unknown,
}

impl Diagnosis {
    pub const ALL: [Diagnosis; 6] = [
        Diagnosis::Space,
        Diagnosis::Fragmentation,
        Diagnosis::MemberUnavailable,
        Diagnosis::LeaderInstability,
        Diagnosis::SlowDisk,
        Diagnosis::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::Space => "space",
            Diagnosis::Fragmentation => "fragmentation",
            Diagnosis::MemberUnavailable => "member_unavailable",
            Diagnosis::LeaderInstability => "leader_instability",
            Diagnosis::SlowDisk => "slow_disk",
            Diagnosis::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == text)
    }

    /// Space and fragmentation are what compaction and defrag repair.
    pub fn reclaims_space(self) -> bool {
        matches!(self, Diagnosis::Space | Diagnosis::Fragmentation)
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the diagnosis is based on, for the audit log and the answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// `etcd`, `member_metrics`, `alert` or `detector`.
    pub source: &'static str,
    pub detail: String,
}

fn evidence(source: &'static str, detail: String) -> Evidence {
    Evidence { source, detail }
}

/// The diagnosis with its evidence (the deciding item first) and, for a member that is
/// down, whether quorum still holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub diagnosis: Diagnosis,
    pub evidence: Vec<Evidence>,
    /// `Some` for `member_unavailable`: what the cluster view says of quorum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<bool>,
}

/// The alert that called us: its name and labels.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Configured as a space alert (`--space-alerts`): means `space` when its name is not
    /// one [`for_alert`] knows.
    pub space_rule: bool,
}

/// The detector's explanation of its score, read defensively from `GET /score`: only what
/// parses is kept, and anything unknown is no evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub instance: Option<String>,
    pub score: Option<f64>,
    pub threshold: Option<f64>,
    /// Feature name to its share of the error, the known and numeric ones.
    pub shares: BTreeMap<String, f64>,
}

/// The detector's answer as an explanation; `None` when it carries no usable shares.
pub fn explanation(body: &Value) -> Option<Explanation> {
    let shares: BTreeMap<String, f64> = body
        .get("feature_shares")?
        .as_object()?
        .iter()
        .filter_map(|(name, share)| {
            let share = share.as_f64()?;
            (share.is_finite() && share >= 0.0).then(|| (name.clone(), share))
        })
        .collect();
    if shares.is_empty() {
        return None;
    }
    Some(Explanation {
        instance: body
            .get("instance")
            .and_then(Value::as_str)
            .map(str::to_owned),
        score: body.get("score").and_then(Value::as_f64),
        threshold: body.get("threshold").and_then(Value::as_f64),
        shares,
    })
}

/// Which diagnosis a detector feature points to (the default model's names).
fn feature_group(feature: &str) -> Option<Diagnosis> {
    match feature {
        // A burst of writes fills the db: space, if etcd's sizes agree (rule 6).
        "db_size_over_quota" | "db_growth_rate" | "db_growth_per_request" | "write_fraction" => {
            Some(Diagnosis::Space)
        }
        "fragmentation" => Some(Diagnosis::Fragmentation),
        "leader_changes" | "failed_proposals" => Some(Diagnosis::LeaderInstability),
        "wal_fsync_p99" | "backend_commit_p99" | "slow_applies" => Some(Diagnosis::SlowDisk),
        _ => None,
    }
}

/// The diagnosis a known alert name means (the chart's rules, and the etcd mixin's, which
/// spell them `etcdNoLeader`).
pub fn for_alert(name: &str) -> Option<Diagnosis> {
    let mut chars = name.chars();
    let name: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    match name.as_str() {
        "EtcdNoSpace"
        | "EtcdDatabaseQuotaLowSpace"
        | "EtcdDatabaseSpaceReclaimable"
        | "EtcdExcessiveDatabaseGrowth" => Some(Diagnosis::Space),
        "EtcdDatabaseHighFragmentationRatio" => Some(Diagnosis::Fragmentation),
        "EtcdMembersDown" | "EtcdInsufficientMembers" | "EtcdMemberScrapeFailing" => {
            Some(Diagnosis::MemberUnavailable)
        }
        "EtcdNoLeader" | "EtcdHighNumberOfLeaderChanges" | "EtcdHighNumberOfFailedProposals" => {
            Some(Diagnosis::LeaderInstability)
        }
        "EtcdHighFsyncDurations" | "EtcdHighCommitDurations" => Some(Diagnosis::SlowDisk),
        _ => None,
    }
}

/// What the members' `/metrics` showed over a short window; empty when not reachable.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberSigns {
    /// Member name to the leader changes it saw in the window.
    pub leader_changes: BTreeMap<String, f64>,
    /// Member name to its WAL fsync p99 (seconds, upper bucket bound) in the window.
    pub fsync_p99: BTreeMap<String, f64>,
    pub window_seconds: f64,
    /// Members whose metrics could not be read, and why.
    pub unreadable: BTreeMap<String, String>,
}

/// Every rule of the module doc, in order.
pub fn diagnose(
    alert: &AlertFacts,
    detector: Option<&Explanation>,
    view: &ClusterView,
    signs: &MemberSigns,
) -> Finding {
    let found = |diagnosis, evidence: Vec<Evidence>| Finding {
        diagnosis,
        evidence,
        quorum: None,
    };
    // 1: a member that does not answer.
    let silent = view.silent();
    if !silent.is_empty() {
        let quorum = view.quorum_holds();
        let mut ev = vec![evidence(
            "etcd",
            format!(
                "{} of {} members do not answer: {}",
                silent.len(),
                view.members.len(),
                silent.join(", ")
            ),
        )];
        ev.push(evidence(
            "etcd",
            quorum.clone().unwrap_or_else(|| "quorum lost".into()),
        ));
        return Finding {
            diagnosis: Diagnosis::MemberUnavailable,
            evidence: ev,
            quorum: Some(quorum.is_some()),
        };
    }
    // 2: NOSPACE.
    if view.nospace {
        return found(
            Diagnosis::Space,
            vec![evidence("etcd", "NOSPACE alarm raised".into())],
        );
    }
    // 3: nobody leads although everyone answers: an election under way.
    if view.leader().is_none() {
        return found(
            Diagnosis::LeaderInstability,
            vec![evidence(
                "etcd",
                "every member answers but none names a leader".into(),
            )],
        );
    }
    // 4: what the members' own metrics show now.
    if let Some((member, changes)) = signs.leader_changes.iter().find(|(_, c)| **c > 0.0) {
        return found(
            Diagnosis::LeaderInstability,
            vec![evidence(
                "member_metrics",
                format!(
                    "{member} saw {changes} leader change(s) in {:.1} s",
                    signs.window_seconds
                ),
            )],
        );
    }
    if let Some((member, p99)) = signs
        .fsync_p99
        .iter()
        .find(|(_, p)| **p >= SLOW_FSYNC_SECONDS)
    {
        return found(
            Diagnosis::SlowDisk,
            vec![evidence(
                "member_metrics",
                format!(
                    "{member}: WAL fsync p99 <= {p99} s (at or over {SLOW_FSYNC_SECONDS} s) in {:.1} s",
                    signs.window_seconds
                ),
            )],
        );
    }
    let sizes = size_evidence(view);
    // 5: the alert says what it is about.
    let labelled = alert
        .labels
        .get("etcd_dr_diagnosis")
        .and_then(|d| Diagnosis::parse(d));
    let configured = alert.space_rule.then_some(Diagnosis::Space);
    if let Some(diagnosis) = labelled.or_else(|| for_alert(&alert.name)).or(configured) {
        let how = if labelled.is_some() {
            format!("label etcd_dr_diagnosis={diagnosis} on {}", alert.name)
        } else if for_alert(&alert.name).is_some() {
            format!("alert {} means {diagnosis}", alert.name)
        } else {
            format!("alert {} is a configured space alert", alert.name)
        };
        let mut ev = vec![evidence("alert", how)];
        ev.extend(sizes.iter().map(|(_, e)| e.clone()));
        return found(diagnosis, ev);
    }
    // 6: the detector's explanation, when one group carries most of the error.
    if let Some(explanation) = detector {
        let mut groups: BTreeMap<Diagnosis, f64> = BTreeMap::new();
        for (feature, share) in &explanation.shares {
            if let Some(group) = feature_group(feature) {
                *groups.entry(group).or_default() += share;
            }
        }
        let total: f64 = explanation.shares.values().sum();
        let top = groups
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(d, s)| (*d, *s));
        if let Some((group, share)) = top {
            let share = if total > 0.0 { share / total } else { 0.0 };
            if share >= DOMINANT_SHARE {
                let said = evidence(
                    "detector",
                    format!(
                        "{:.0}% of the error is {group} features ({})",
                        share * 100.0,
                        top_features(&explanation.shares)
                    ),
                );
                if !group.reclaims_space() {
                    return found(group, vec![said]);
                }
                // Acting never outruns proof: etcd must show the space to reclaim.
                if let Some((measured, ev)) = sizes.first() {
                    return found(*measured, vec![said, ev.clone()]);
                }
                if let Some(ev) = quota_evidence(view, SPACE_AGREES_RATIO) {
                    return found(Diagnosis::Space, vec![said, ev]);
                }
                return found(
                    Diagnosis::Unknown,
                    vec![
                        said,
                        evidence(
                            "etcd",
                            "etcd's sizes do not show space to reclaim; not acting on the \
                             model alone"
                                .into(),
                        ),
                    ],
                );
            }
        }
    }
    // 7: etcd's own sizes.
    if let Some((measured, ev)) = sizes.into_iter().next() {
        return found(measured, vec![ev]);
    }
    found(
        Diagnosis::Unknown,
        vec![evidence(
            "etcd",
            "every member answers with a leader, no alarm, no size or metric out of line".into(),
        )],
    )
}

/// The size readings that call for a repair, space before fragmentation.
fn size_evidence(view: &ClusterView) -> Vec<(Diagnosis, Evidence)> {
    let mut found = Vec::new();
    let statuses = || {
        view.members
            .iter()
            .filter_map(|m| m.status.as_ref().map(|s| (m, s)))
    };
    if let Some(ev) = quota_evidence(view, SPACE_RATIO) {
        found.push((Diagnosis::Space, ev));
    }
    if let Some((m, s)) = statuses().find(|(_, s)| {
        let free = s.db_size - s.db_size_in_use.max(0);
        s.db_size > 0
            && free >= FRAGMENTATION_MIN_BYTES
            && free as f64 >= FRAGMENTATION_RATIO * s.db_size as f64
    }) {
        found.push((
            Diagnosis::Fragmentation,
            evidence(
                "etcd",
                format!(
                    "{}: {} of {} db bytes are free ({:.0}%)",
                    m.name,
                    s.db_size - s.db_size_in_use,
                    s.db_size,
                    100.0 * (s.db_size - s.db_size_in_use) as f64 / s.db_size as f64
                ),
            ),
        ));
    }
    found
}

/// The first member whose db is at least `ratio` of its quota.
fn quota_evidence(view: &ClusterView, ratio: f64) -> Option<Evidence> {
    view.members.iter().find_map(|m| {
        let s = m.status.as_ref()?;
        (s.quota_bytes > 0 && s.db_size.max(0) as f64 >= ratio * s.quota_bytes as f64).then(|| {
            evidence(
                "etcd",
                format!(
                    "{}: db {} bytes is {:.0}% of its quota {}",
                    m.name,
                    s.db_size,
                    100.0 * s.db_size as f64 / s.quota_bytes as f64,
                    s.quota_bytes
                ),
            )
        })
    })
}

/// `a 0.61, b 0.20, c 0.10`: the three largest shares.
fn top_features(shares: &BTreeMap<String, f64>) -> String {
    let mut sorted: Vec<_> = shares.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1));
    sorted
        .iter()
        .take(3)
        .map(|(n, s)| format!("{n} {s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MemberStatus, MemberView};
    use serde_json::json;

    const MB: i64 = 1024 * 1024;

    fn member(id: u64, leader: u64, db: i64, in_use: i64) -> MemberView {
        MemberView {
            id,
            name: format!("m{id}"),
            endpoint: format!("http://127.0.0.1:{id}"),
            peer_url: String::new(),
            status: Some(MemberStatus {
                leader,
                db_size: db,
                db_size_in_use: in_use,
                quota_bytes: 100 * MB as u64,
                revision: 1,
                raft_term: 2,
                version: "3.6.0".into(),
                errors: Vec::new(),
            }),
            error: None,
        }
    }

    fn healthy(db: i64, in_use: i64) -> ClusterView {
        ClusterView {
            members: (1..=3).map(|id| member(id, 1, db, in_use)).collect(),
            nospace: false,
            corrupt: false,
            alarms_error: None,
        }
    }

    fn alert(name: &str) -> AlertFacts {
        AlertFacts {
            name: name.into(),
            labels: BTreeMap::new(),
            space_rule: false,
        }
    }

    fn shares(pairs: &[(&str, f64)]) -> Explanation {
        explanation(&json!({"score": 2.0, "threshold": 1.0,
            "feature_shares": pairs.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()}))
        .unwrap()
    }

    fn d(alert_name: &str, ex: Option<&Explanation>, view: &ClusterView) -> Diagnosis {
        diagnose(&alert(alert_name), ex, view, &MemberSigns::default()).diagnosis
    }

    #[test]
    fn explanations_are_read_defensively() {
        assert_eq!(explanation(&json!({"score": 1.0})), None);
        assert_eq!(explanation(&json!({"feature_shares": "x"})), None);
        assert_eq!(explanation(&json!({"feature_shares": {"a": "high"}})), None);
        let e = explanation(&json!({"feature_shares": {"leader_changes": 0.7, "odd": null, "neg": -1}, "instance": "m1"}))
            .unwrap();
        assert_eq!(e.shares.len(), 1);
        assert_eq!(e.instance.as_deref(), Some("m1"));
        // Unknown features are no evidence.
        let unknown = shares(&[("brand_new_feature", 1.0)]);
        assert_eq!(
            d("EtcdAnomalyScoreHigh", Some(&unknown), &healthy(MB, MB)),
            Diagnosis::Unknown
        );
    }

    #[test]
    fn the_detector_names_the_hazards() {
        let view = healthy(MB, MB);
        let leader = shares(&[
            ("leader_changes", 0.5),
            ("failed_proposals", 0.2),
            ("fragmentation", 0.3),
        ]);
        assert_eq!(
            d("EtcdAnomalyScoreHigh", Some(&leader), &view),
            Diagnosis::LeaderInstability
        );
        let disk = shares(&[
            ("wal_fsync_p99", 0.4),
            ("backend_commit_p99", 0.3),
            ("db_size_over_quota", 0.3),
        ]);
        assert_eq!(
            d("EtcdAnomalyScoreHigh", Some(&disk), &view),
            Diagnosis::SlowDisk
        );
        // No group dominates: nothing to go on.
        let mixed = shares(&[
            ("wal_fsync_p99", 0.3),
            ("leader_changes", 0.3),
            ("fragmentation", 0.4),
        ]);
        assert_eq!(
            d("EtcdAnomalyScoreHigh", Some(&mixed), &view),
            Diagnosis::Unknown
        );
    }

    #[test]
    fn space_from_the_model_needs_etcd_to_agree() {
        let space = shares(&[("db_size_over_quota", 0.8), ("db_growth_rate", 0.2)]);
        assert_eq!(
            d("EtcdAnomalyScoreHigh", Some(&space), &healthy(MB, MB)),
            Diagnosis::Unknown
        );
        assert_eq!(
            d(
                "EtcdAnomalyScoreHigh",
                Some(&space),
                &healthy(90 * MB, 80 * MB)
            ),
            Diagnosis::Space
        );
        assert_eq!(
            d(
                "EtcdAnomalyScoreHigh",
                Some(&space),
                &healthy(40 * MB, 4 * MB)
            ),
            Diagnosis::Fragmentation
        );
        // A burst of writes, or a storm of big values (growth per request), reads as
        // space under the same condition: with the db at 60% of its quota a compaction
        // and defrag fit; at 1% or 24% (a storm on a big quota) nothing does, and a
        // person is asked.
        let writes = shares(&[("write_fraction", 0.7), ("grpc_request_rate", 0.3)]);
        let storm = shares(&[("db_growth_per_request", 0.9), ("db_growth_rate", 0.1)]);
        for explained in [&writes, &storm] {
            let diagnose = |view: &ClusterView| d("EtcdAnomalyScoreHigh", Some(explained), view);
            assert_eq!(diagnose(&healthy(60 * MB, 50 * MB)), Diagnosis::Space);
            assert_eq!(diagnose(&healthy(MB, MB)), Diagnosis::Unknown);
            assert_eq!(diagnose(&healthy(24 * MB, 24 * MB)), Diagnosis::Unknown);
        }
        // Without any explanation, etcd's sizes alone.
        assert_eq!(
            d("EtcdAnomalyScoreHigh", None, &healthy(40 * MB, 4 * MB)),
            Diagnosis::Fragmentation
        );
        assert_eq!(
            d("EtcdAnomalyScoreHigh", None, &healthy(4 * MB, MB)),
            Diagnosis::Unknown,
            "small db"
        );
    }

    #[test]
    fn hard_facts_win_over_what_was_said() {
        let space = shares(&[("db_size_over_quota", 1.0)]);
        let mut view = healthy(90 * MB, 80 * MB);
        view.members[2].status = None;
        view.members[2].error = Some("connection refused".into());
        let f = diagnose(
            &alert("EtcdNoSpace"),
            Some(&space),
            &view,
            &MemberSigns::default(),
        );
        assert_eq!(f.diagnosis, Diagnosis::MemberUnavailable);
        assert_eq!(f.quorum, Some(true));
        view.members[1].status = None;
        let f = diagnose(&alert("EtcdNoSpace"), None, &view, &MemberSigns::default());
        assert_eq!(f.quorum, Some(false));

        let mut view = healthy(MB, MB);
        view.nospace = true;
        assert_eq!(d("EtcdHighFsyncDurations", None, &view), Diagnosis::Space);
        let mut view = healthy(MB, MB);
        for m in &mut view.members {
            if let Some(s) = m.status.as_mut() {
                s.leader = 0;
            }
        }
        assert_eq!(d("EtcdNoSpace", None, &view), Diagnosis::LeaderInstability);

        let mut signs = MemberSigns {
            window_seconds: 2.0,
            ..MemberSigns::default()
        };
        signs.leader_changes.insert("m2".into(), 1.0);
        let f = diagnose(
            &alert("EtcdDatabaseQuotaLowSpace"),
            Some(&space),
            &healthy(90 * MB, 80 * MB),
            &signs,
        );
        assert_eq!(f.diagnosis, Diagnosis::LeaderInstability);
        assert!(
            f.evidence[0].detail.contains("m2 saw 1 leader change"),
            "{f:?}"
        );
        signs.leader_changes.clear();
        signs.fsync_p99.insert("m1".into(), 1.024);
        let f = diagnose(&alert("EtcdNoSpace"), None, &healthy(MB, MB), &signs);
        assert_eq!(f.diagnosis, Diagnosis::SlowDisk);
    }

    #[test]
    fn alerts_and_labels_name_their_diagnosis() {
        let view = healthy(MB, MB);
        assert_eq!(d("EtcdNoSpace", None, &view), Diagnosis::Space);
        assert_eq!(
            d("EtcdDatabaseHighFragmentationRatio", None, &view),
            Diagnosis::Fragmentation
        );
        assert_eq!(
            d("EtcdHighNumberOfLeaderChanges", None, &view),
            Diagnosis::LeaderInstability
        );
        assert_eq!(
            d("EtcdHighCommitDurations", None, &view),
            Diagnosis::SlowDisk
        );
        let mut labelled = alert("SiteSpecificAlert");
        labelled
            .labels
            .insert("etcd_dr_diagnosis".into(), "slow_disk".into());
        assert_eq!(
            diagnose(&labelled, None, &view, &MemberSigns::default()).diagnosis,
            Diagnosis::SlowDisk
        );
        for d in Diagnosis::ALL {
            assert_eq!(Diagnosis::parse(d.as_str()), Some(d));
            assert_eq!(json!(d), json!(d.as_str()));
        }
    }
}
