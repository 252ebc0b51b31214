//! The detector's second opinion: `GET <detector>/score` must say anomalous (or a score
//! above its threshold). A detector that cannot be asked does not confirm.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Score {
    score: f64,
    threshold: f64,
    #[serde(default)]
    anomalous: bool,
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
    let score = Score::deserialize(&answer).map_err(Unconfirmed::NotAScore)?;
    if score.anomalous || score.score > score.threshold {
        Ok(Confirmed {
            detail: format!("score {} > threshold {}", score.score, score.threshold),
            answer,
        })
    } else {
        Err(Unconfirmed::Calm {
            score: score.score,
            threshold: score.threshold,
        })
    }
}
