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
                fingerprint: if alert.fingerprint.is_empty() {
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
