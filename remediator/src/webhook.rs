//! Alertmanager's webhook payload (version 4) and the checks on a request before anything
//! else looks at it: the bearer token, then which alert it is about.

use std::collections::BTreeMap;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::diagnosis::AlertFacts;

/// The body Alertmanager POSTs (fields we do not use are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_key: String,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// The label that tells the model's fast alert from its main one (the chart's second
/// rule of the same name).
pub const SPEED_LABEL: &str = "speed";

/// Alertmanager's fingerprint of a label set (Prometheus' `LabelSet.Fingerprint`: FNV-1a,
/// 64 bits, over the names in order, each name and value followed by the byte 255).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in labels {
        for part in [name.as_bytes(), value.as_bytes()] {
            for &byte in part.iter().chain(&[255u8]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    format!("{hash:016x}")
}

/// What the payload asks of us.
#[derive(Debug, PartialEq)]
pub enum Trigger {
    /// A firing alert we act on; the fingerprint keys its cooldown. `by_rule`: one of the
    /// rule alerts (acts without the detector), not the model's.
    Fire {
        fingerprint: String,
        alert: AlertFacts,
        by_rule: bool,
    },
    /// Our alert is there, but none of it is firing any more: its name.
    Resolved { alert: String },
    /// Only other alerts: their names.
    Other { names: Vec<String> },
}

/// Why a body is not a webhook we read (answered 400).
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not an Alertmanager webhook body: {0}")]
    NotAWebhook(serde_json::Error),
    #[error("webhook payload version {0:?}; this receiver speaks version 4")]
    Version(String),
}

impl Payload {
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        let payload: Payload = serde_json::from_slice(body).map_err(PayloadError::NotAWebhook)?;
        if payload.version != "4" {
            return Err(PayloadError::Version(payload.version));
        }
        Ok(payload)
    }

    /// The first firing alert named `model_alert` or one of `rule_alerts` triggers;
    /// otherwise why not.
    pub fn trigger(&self, model_alert: &str, rule_alerts: &[String]) -> Trigger {
        let ours: Vec<&Alert> = self
            .alerts
            .iter()
            .filter(|a| {
                a.labels
                    .get("alertname")
                    .is_some_and(|n| n == model_alert || rule_alerts.contains(n))
            })
            .collect();
        if ours.is_empty() {
            let names = self
                .alerts
                .iter()
                .filter_map(|a| a.labels.get("alertname").cloned())
                .collect();
            return Trigger::Other { names };
        }
        match ours.iter().find(|a| a.status == "firing") {
            Some(alert) => Trigger::Fire {
                alert: AlertFacts {
                    name: alert.labels.get("alertname").cloned().unwrap_or_default(),
                    labels: alert.labels.clone(),
                    space_rule: alert.labels.get("alertname").map(String::as_str)
                        != Some(model_alert),
                },
                by_rule: alert.labels.get("alertname").map(String::as_str) != Some(model_alert),
                fingerprint: if alert.labels.get("alertname").map(String::as_str)
                    == Some(model_alert)
                    && alert.labels.contains_key(SPEED_LABEL)
                {
                    // The model's fast alert is its main alert, sooner: one cooldown for
                    // both, or the main one would repair again what the fast one just did.
                    let mut main = alert.labels.clone();
                    main.remove(SPEED_LABEL);
                    fingerprint(&main)
                } else if alert.fingerprint.is_empty() {
                    // Older senders leave it out; the group key is the next stable name.
                    self.group_key.clone()
                } else {
                    alert.fingerprint.clone()
                },
            },
            None => Trigger::Resolved {
                alert: ours
                    .first()
                    .and_then(|a| a.labels.get("alertname"))
                    .cloned()
                    .unwrap_or_default(),
            },
        }
    }
}

/// Checks `Authorization: Bearer <token>` in constant time (only the length can leak).
pub fn authorized(header: Option<&str>, expected: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    given.trim().as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../../fixtures/alertmanager-0.25-webhook-firing.json");
    const RESOLVED: &str = include_str!("../../fixtures/alertmanager-0.25-webhook-resolved.json");

    #[test]
    fn the_real_firing_body_triggers_with_its_fingerprint() {
        let payload = Payload::parse(FIRING.as_bytes()).unwrap();
        assert_eq!(payload.receiver, "remediator");
        match payload.trigger("EtcdAnomalyScoreHigh", &[]) {
            Trigger::Fire {
                fingerprint,
                alert,
                by_rule,
            } => {
                assert_eq!(fingerprint, "f146eb540a7ae47b");
                assert_eq!(alert.name, "EtcdAnomalyScoreHigh");
                assert!(!by_rule);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            payload.trigger("Other", &[]),
            Trigger::Other {
                names: vec!["EtcdAnomalyScoreHigh".into()]
            }
        );
        // The same alert named as a rule trigger acts without the model.
        let rules = vec!["EtcdAnomalyScoreHigh".to_owned()];
        assert!(matches!(
            payload.trigger("Other", &rules),
            Trigger::Fire { by_rule: true, .. }
        ));
    }

    #[test]
    fn the_fast_alert_shares_the_main_alerts_fingerprint() {
        let payload = Payload::parse(FIRING.as_bytes()).unwrap();
        // Alertmanager's own fingerprint of the fixture's labels.
        assert_eq!(fingerprint(&payload.alerts[0].labels), "f146eb540a7ae47b");
        // The chart's fast rule: the same labels and `speed: fast`, its own fingerprint
        // from Alertmanager; the cooldown key is the main alert's.
        let fast = FIRING
            .replace(
                r#""severity": "critical""#,
                r#""severity": "critical", "speed": "fast""#,
            )
            .replace("f146eb540a7ae47b", "0123456789abcdef");
        let payload = Payload::parse(fast.as_bytes()).unwrap();
        assert_eq!(payload.alerts[0].labels["speed"], "fast");
        match payload.trigger("EtcdAnomalyScoreHigh", &[]) {
            Trigger::Fire {
                fingerprint,
                by_rule,
                ..
            } => {
                assert_eq!(fingerprint, "f146eb540a7ae47b");
                assert!(!by_rule);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_real_resolved_body_is_skipped() {
        let payload = Payload::parse(RESOLVED.as_bytes()).unwrap();
        assert_eq!(
            payload.trigger("EtcdAnomalyScoreHigh", &[]),
            Trigger::Resolved {
                alert: "EtcdAnomalyScoreHigh".into()
            }
        );
    }

    #[test]
    fn malformed_or_wrong_version_bodies_are_refused() {
        assert!(Payload::parse(b"{not json").is_err());
        assert!(Payload::parse(br#"{"alerts": []}"#).is_err());
        let v3 = FIRING.replace(r#""version": "4""#, r#""version": "3""#);
        let err = Payload::parse(v3.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Version(v) if v == "3"),
            "{err:?}"
        );
        assert!(err.to_string().contains("version 4"));
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cretX"), "s3cret"));
        assert!(!authorized(Some("Basic s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }
}

/// Property tests of the body parser: arbitrary bytes, arbitrary JSON, JSON shaped like the
/// payload with arbitrary values, and Alertmanager's real body with its fields removed,
/// retyped or replaced. Never a panic; every refusal a `PayloadError` whose message is one
/// line, bounded by the body; every accepted payload version 4, and `trigger` answers for
/// it. 512 cases each by default; `PROPTEST_CASES` sets the count (`ci/fuzz-long.sh`).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    const FIRING: &str = include_str!("../../fixtures/alertmanager-0.25-webhook-firing.json");

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(512)
    }

    /// The payload's own field names, and a few others, so generated objects hit the
    /// schema as often as they miss it.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "version",
                "status",
                "receiver",
                "groupKey",
                "alerts",
                "labels",
                "alertname",
                "startsAt",
                "fingerprint",
                "annotations",
                "truncatedAlerts",
            ])
            .prop_map(str::to_owned),
            "(?s).{0,12}",
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![
                "4",
                "3",
                "firing",
                "resolved",
                "EtcdAnomalyScoreHigh",
                "",
            ])
            .prop_map(Value::from),
            "(?s).{0,24}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..8)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    fn labels() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(
            key(),
            prop_oneof![leaf(), "(?s).{0,16}".prop_map(Value::from)],
            0..5,
        )
        .prop_map(|map| Value::Object(map.into_iter().collect()))
    }

    /// A version 4 payload with arbitrary alerts: right shape, any values.
    fn shaped() -> impl Strategy<Value = Value> {
        let alert = (leaf(), labels(), leaf(), leaf(), any::<bool>()).prop_map(
            |(status, labels, starts_at, fingerprint, drop_labels)| {
                let mut alert = json!({
                    "status": status,
                    "labels": labels,
                    "startsAt": starts_at,
                    "fingerprint": fingerprint,
                });
                if drop_labels {
                    alert.as_object_mut().map(|a| a.remove("labels"));
                }
                alert
            },
        );
        (leaf(), leaf(), leaf(), prop::collection::vec(alert, 0..5)).prop_map(
            |(status, receiver, group_key, alerts)| {
                json!({
                    "version": "4",
                    "status": status,
                    "receiver": receiver,
                    "groupKey": group_key,
                    "alerts": alerts,
                })
            },
        )
    }

    /// Every path to a value in `value`, as keys and indexes.
    fn paths(value: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    at.push(Value::from(k.as_str()));
                    paths(v, at, out);
                    at.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    at.push(Value::from(i));
                    paths(v, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    fn at_mut<'v>(value: &'v mut Value, path: &[Value]) -> Option<&'v mut Value> {
        path.iter().try_fold(value, |v, step| match step {
            Value::String(k) => v.get_mut(k.as_str()),
            Value::Number(i) => v.get_mut(usize::try_from(i.as_u64()?).ok()?),
            _ => None,
        })
    }

    /// The real firing body with `edits` applied: a value replaced, or removed.
    fn mutated(edits: &[(prop::sample::Index, bool, Value)]) -> Value {
        let mut body: Value = serde_json::from_str(FIRING).unwrap_or(Value::Null);
        for (which, remove, replacement) in edits {
            let mut all = Vec::new();
            paths(&body, &mut Vec::new(), &mut all);
            let path = which.get(&all).clone();
            let Some((last, parent)) = path.split_last() else {
                body = replacement.clone();
                continue;
            };
            let Some(parent) = at_mut(&mut body, parent) else {
                continue;
            };
            match (parent, last, remove) {
                (Value::Object(map), Value::String(k), true) => {
                    map.remove(k);
                }
                (Value::Array(items), Value::Number(i), true) => {
                    if let Some(i) = i.as_u64().and_then(|i| usize::try_from(i).ok()) {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                (parent, last, false) => {
                    if let Some(slot) = at_mut(parent, std::slice::from_ref(last)) {
                        *slot = replacement.clone();
                    }
                }
                _ => {}
            }
        }
        body
    }

    /// The contract: no panic (the caller runs it), a refusal typed and one bounded line,
    /// an acceptance version 4 that `trigger` can answer for.
    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        match Payload::parse(body) {
            Ok(payload) => {
                prop_assert_eq!(payload.version.as_str(), "4");
                let rules = vec!["EtcdDatabaseQuotaLowSpace".to_owned()];
                for model in ["EtcdAnomalyScoreHigh", ""] {
                    if let Trigger::Fire { alert, .. } = payload.trigger(model, &rules) {
                        prop_assert!(payload.alerts.iter().any(|a| a.status == "firing"));
                        prop_assert!(alert.name == model || rules.contains(&alert.name));
                    }
                }
            }
            Err(err) => {
                prop_assert!(matches!(
                    err,
                    PayloadError::NotAWebhook(_) | PayloadError::Version(_)
                ));
                let line = err.to_string();
                prop_assert!(!line.is_empty());
                prop_assert!(!line.contains(['\n', '\r']), "not one line: {:?}", line);
                prop_assert!(
                    line.len() <= 2 * body.len() + 200,
                    "{} bytes of message for {} of body",
                    line.len(),
                    body.len()
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_refused_in_one_line(body in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&body)?;
        }

        #[test]
        fn arbitrary_json_is_refused_in_one_line_or_read(value in json_value()) {
            check(value.to_string().as_bytes())?;
        }

        #[test]
        fn payload_shaped_json_with_any_values_never_panics(value in shaped()) {
            check(value.to_string().as_bytes())?;
        }

        #[test]
        fn the_real_body_mutated_never_panics(edits in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), leaf()), 1..5,
        )) {
            let body = mutated(&edits);
            check(body.to_string().as_bytes())?;
            check(serde_json::to_string_pretty(&body).unwrap_or_default().as_bytes())?;
        }

        #[test]
        fn the_real_body_cut_or_spliced_never_panics(
            at in any::<prop::sample::Index>(),
            cut in any::<bool>(),
            junk in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut body = FIRING.as_bytes().to_vec();
            let at = at.index(body.len());
            if cut {
                body.truncate(at);
            }
            body.splice(at..at, junk);
            check(&body)?;
        }
    }
}
