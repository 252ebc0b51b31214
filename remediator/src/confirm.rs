//! The detector's second opinion: `GET <detector>/score` must say anomalous (or a score
//! above its threshold). A detector that cannot be asked does not confirm.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Score {
    score: f64,
    threshold: f64,
    #[serde(default)]
    anomalous: bool,
}

/// `Ok(detail)` when confirmed, `Err(reason)` when not.
pub async fn ask(
    client: &reqwest::Client,
    detector: &Url,
    timeout: Duration,
) -> Result<String, String> {
    let url = detector
        .join("score")
        .map_err(|err| format!("detector URL {detector}: {err}"))?;
    let response = client
        .get(url.clone())
        .timeout(timeout)
        .send()
        .await
        .map_err(|err| format!("detector unreachable at {url}: {err}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|err| format!("detector answer from {url} unreadable: {err}"))?;
    if !status.is_success() {
        return Err(format!(
            "detector answered {status}: {}",
            body.chars().take(300).collect::<String>()
        ));
    }
    let score: Score = serde_json::from_str(&body)
        .map_err(|err| format!("detector answer is not a score: {err}"))?;
    if score.anomalous || score.score > score.threshold {
        Ok(format!(
            "score {} > threshold {}",
            score.score, score.threshold
        ))
    } else {
        Err(format!(
            "detector does not confirm: score {} <= threshold {}",
            score.score, score.threshold
        ))
    }
}
