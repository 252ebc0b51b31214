//! Load for `POST /score` from a separate process:
//! `cargo run -p dr-detector --example load_score -- [URL] [CONCURRENCY] [SECONDS]`.
//! Posts a window shaped for the default model over keep-alive connections and prints
//! JSON with requests per second and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::Context;
use dr_detector::model::model_dir::ModelBundle;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9311/score".into());
    let concurrency: usize = args
        .next()
        .map_or(Ok(16), |a| a.parse())
        .context("CONCURRENCY")?;
    let seconds: u64 = args
        .next()
        .map_or(Ok(10), |a| a.parse())
        .context("SECONDS")?;
    let meta = ModelBundle::default_model()?.meta;
    // A plausible normal window: each feature at its training mean, with a small wobble.
    let window: Vec<Vec<f64>> = (0..meta.window)
        .map(|t| {
            meta.normalisation
                .mean
                .iter()
                .zip(&meta.normalisation.std)
                .map(|(m, s)| m + s * 0.3 * ((t as f64) * 0.7).sin())
                .collect()
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "window": window }))?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ok = match client.post(&url).body(body.clone()).send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        ok && response.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.context("a load task failed")?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{}",
        serde_json::json!({
            "url": url,
            "concurrency": concurrency,
            "seconds": elapsed,
            "requests": latencies.len(),
            "errors": errors,
            "requests_per_second": latencies.len() as f64 / elapsed,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
        })
    );
    Ok(())
}
