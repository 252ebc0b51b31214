//! The detector's second opinion: `GET <detector>/score` must say anomalous (a detector
//! from before `anomalous` was answered: a score above its threshold). A detector that
//! cannot be asked, or whose worst member is still warming up its baseline, does not
//! confirm.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Score {
    score: f64,
    threshold: f64,
    anomalous: Option<bool>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    baseline: Option<Baseline>,
}

/// A format 2 detector's view of the member's own history.
#[derive(Debug, Deserialize)]
struct Baseline {
    ready: bool,
    steps: u64,
    min_steps: u64,
}

/// Why the detector did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum Unconfirmed {
    /// `score` cannot be joined to the URL (the parse error's text: reqwest does not
    /// export its type).
    #[error("detector URL {detector}: {reason}")]
    Url { detector: Url, reason: String },
    #[error("detector unreachable at {url}: {error}")]
    Unreachable { url: Url, error: reqwest::Error },
    #[error("detector answer from {url} unreadable: {error}")]
    Unreadable { url: Url, error: reqwest::Error },
    /// Not a success; the start of the body says why.
    #[error("detector answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("detector answer is not a score: {0}")]
    NotAScore(serde_json::Error),
    #[error("detector does not confirm: score {score} <= threshold {threshold}")]
    Calm { score: f64, threshold: f64 },
    /// The score is high but the member's baseline has too little history to trust it.
    #[error(
        "detector does not confirm: {instance} is warming up its baseline ({steps} of {min_steps} steps of history), scored {score} but never anomalous until then"
    )]
    WarmingUp {
        instance: String,
        score: f64,
        steps: u64,
        min_steps: u64,
    },
}

/// The detector's yes: a line for the log and its whole answer (the explanation the
/// diagnosis reads, whatever shape it has today).
#[derive(Debug)]
pub struct Confirmed {
    pub detail: String,
    pub answer: serde_json::Value,
}

pub async fn ask(
    client: &reqwest::Client,
    detector: &Url,
    timeout: Duration,
) -> Result<Confirmed, Unconfirmed> {
    let url = detector.join("score").map_err(|err| Unconfirmed::Url {
        detector: detector.clone(),
        reason: err.to_string(),
    })?;
    let response = client
        .get(url.clone())
        .timeout(timeout)
        .send()
        .await
        .map_err(|error| Unconfirmed::Unreachable {
            url: url.clone(),
            error,
        })?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|error| Unconfirmed::Unreadable { url, error })?;
    if !status.is_success() {
        return Err(Unconfirmed::Status {
            status,
            body: body.chars().take(300).collect(),
        });
    }
    let answer: serde_json::Value = serde_json::from_str(&body).map_err(Unconfirmed::NotAScore)?;
    judge(answer)
}

/// The detector's answer read as a yes or a no.
fn judge(answer: serde_json::Value) -> Result<Confirmed, Unconfirmed> {
    let score = Score::deserialize(&answer).map_err(Unconfirmed::NotAScore)?;
    let above = score.score > score.threshold;
    match (&score.baseline, score.anomalous.unwrap_or(above)) {
        (_, true) => Ok(Confirmed {
            detail: format!("score {} > threshold {}", score.score, score.threshold),
            answer,
        }),
        (Some(b), false) if above && !b.ready => Err(Unconfirmed::WarmingUp {
            instance: score.instance.unwrap_or_else(|| "the member".into()),
            score: score.score,
            steps: b.steps,
            min_steps: b.min_steps,
        }),
        (_, false) => Err(Unconfirmed::Calm {
            score: score.score,
            threshold: score.threshold,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_detectors_anomalous_decides_and_a_warming_up_member_never_confirms() {
        let yes = judge(json!({"score": 5.0, "threshold": 3.0, "anomalous": true})).unwrap();
        assert!(yes.detail.contains("5"), "{}", yes.detail);
        // Above the threshold while its baseline warms up: the detector says no, and why.
        let warming = json!({
            "instance": "etcd-1", "score": 5.0, "threshold": 3.0, "anomalous": false,
            "baseline": {"ready": false, "steps": 12, "min_steps": 60, "fitted_at": 1.0}
        });
        let err = judge(warming).unwrap_err();
        assert!(matches!(err, Unconfirmed::WarmingUp { .. }), "{err}");
        assert!(err.to_string().contains("etcd-1") && err.to_string().contains("12 of 60"));
        // Calm is calm, with or without a baseline.
        let calm = judge(json!({"score": 1.0, "threshold": 3.0, "anomalous": false})).unwrap_err();
        assert!(matches!(calm, Unconfirmed::Calm { .. }), "{calm}");
        // A detector from before `anomalous`: the score against the threshold.
        assert!(judge(json!({"score": 5.0, "threshold": 3.0})).is_ok());
        assert!(judge(json!({"score": 1.0, "threshold": 3.0})).is_err());
        assert!(matches!(
            judge(json!({"threshold": 3.0})).unwrap_err(),
            Unconfirmed::NotAScore(_)
        ));
    }
}
