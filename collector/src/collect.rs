//! One collection: scrape a member's page, keep the allowed families, push them. Retries
//! each step with backoff inside the interval, so a blip does not cost a whole interval.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Client, Url};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::allowlist::Allowlist;
use crate::config::{Config, Target};
use crate::error::CollectError;
use crate::exposition;
use crate::metrics::{CollectorMetrics, InstanceLabels};
use crate::{push, scrape};

/// The first retry waits this long; each next one twice as long, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What a successful collection pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub families: usize,
    pub samples: usize,
}

/// The allowed families of a page, re-emitted as exposition text without timestamps
/// (the Pushgateway refuses pushed samples that carry them).
#[derive(Debug, Clone)]
pub struct Filtered {
    pub text: String,
    pub pushed: Pushed,
}

/// Parses `page` and keeps the families `allowlist` allows. A page that does not parse,
/// or holds no family at all, is not an exposition page.
pub fn filter_page(page: &str, allowlist: &Allowlist) -> Result<Filtered, String> {
    let families = exposition::parse(page).map_err(|err| err.to_string())?;
    if families.is_empty() {
        return Err("no metric families in the page".into());
    }
    let kept: Vec<_> = families
        .into_iter()
        .filter(|family| allowlist.allows(family.name))
        .collect();
    let samples = kept.iter().map(|family| family.samples.len()).sum();
    let mut text = String::with_capacity(page.len() / 2);
    exposition::write(&kept, &mut text, false);
    Ok(Filtered {
        text,
        pushed: Pushed {
            families: kept.len(),
            samples,
        },
    })
}

pub struct Collector {
    etcd_http: scrape::EtcdHttp,
    push_http: Client,
    pushgateway_url: Url,
    job: String,
    allowlist: Allowlist,
    metrics: CollectorMetrics,
}

impl Collector {
    pub fn new(config: &Config, metrics: CollectorMetrics) -> Result<Self, String> {
        if let Some(tls) = &config.tls {
            tls.count_into(&metrics.reloads);
        }
        let etcd_http = scrape::EtcdHttp::new(config.tls.clone(), config.timeout)?;
        let push_http = Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("dr-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("building the Pushgateway HTTP client: {err}"))?;
        for target in &config.targets {
            metrics.start_at_zero(&target.instance);
        }
        Ok(Collector {
            etcd_http,
            push_http,
            pushgateway_url: config.pushgateway_url.clone(),
            job: config.job.clone(),
            allowlist: config.allowlist.clone(),
            metrics,
        })
    }

    async fn scrape(&self, target: &Target) -> Result<Filtered, CollectError> {
        let (etcd_http, presents_identity) = self.etcd_http.client();
        let outcome = scrape::fetch_page(&etcd_http, &target.metrics_url, presents_identity)
            .await
            .and_then(|page| {
                filter_page(&page, &self.allowlist).map_err(|detail| CollectError::NotExposition {
                    url: target.metrics_url.to_string(),
                    detail,
                })
            });
        self.metrics.count_scrape(&target.instance, outcome.is_ok());
        outcome
    }

    async fn push(&self, target: &Target, filtered: &Filtered) -> Result<Pushed, CollectError> {
        let url = push::grouping_url(&self.pushgateway_url, &self.job, &target.instance);
        let mut body = filtered.text.clone();
        body.push_str(&push::target_up(true));
        let outcome = push::push(&self.push_http, &url, body).await;
        self.metrics.count_push(&target.instance, outcome.is_ok());
        outcome?;
        self.record_success(target, filtered.pushed);
        Ok(filtered.pushed)
    }

    /// The member did not answer: its group in the Pushgateway is replaced by
    /// `etcd_dr_collector_target_up 0` alone. The Pushgateway keeps the last push forever,
    /// so without this a stopped member would look alive with its last values. Best
    /// effort: a Pushgateway that cannot be reached now gets the next interval's push.
    async fn report_down(&self, target: &Target) {
        self.metrics.set_target_up(&target.instance, false);
        let url = push::grouping_url(&self.pushgateway_url, &self.job, &target.instance);
        let outcome = push::push(&self.push_http, &url, push::target_up(false)).await;
        self.metrics.count_push(&target.instance, outcome.is_ok());
        if let Err(err) = outcome {
            tracing::warn!(instance = %target.instance, error = %err, "cannot mark the member down in the Pushgateway");
        }
    }

    fn record_success(&self, target: &Target, pushed: Pushed) {
        self.metrics.set_target_up(&target.instance, true);
        let labels = InstanceLabels {
            instance: target.instance.clone(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.metrics.last_success.get_or_create(&labels).set(now);
        self.metrics
            .families_pushed
            .get_or_create(&labels)
            .set(i64::try_from(pushed.families).unwrap_or(i64::MAX));
    }

    /// One try at each step, for `--once`.
    pub async fn collect_once(&self, target: &Target) -> Result<Pushed, CollectError> {
        // No down-marker here: `--once` is a check whose answer is its one-line reason.
        let filtered = self.scrape(target).await?;
        self.push(target, &filtered).await
    }

    /// Scrapes, then pushes, each step retried with backoff until `deadline`. A stop request
    /// ends the retries but never an attempt under way, so a push in flight completes.
    pub async fn collect_with_retries(
        &self,
        target: &Target,
        deadline: Instant,
        stop: &watch::Receiver<bool>,
    ) -> Result<Pushed, CollectError> {
        let filtered = match retry(deadline, stop, || self.scrape(target)).await {
            Ok(filtered) => filtered,
            Err(err) => {
                // Not on shutdown: a stopping collector says nothing about the member.
                if !*stop.borrow() {
                    self.report_down(target).await;
                }
                return Err(err);
            }
        };
        retry(deadline, stop, || self.push(target, &filtered)).await
    }
}

async fn retry<T, F, Fut>(
    deadline: Instant,
    stop: &watch::Receiver<bool>,
    mut attempt: F,
) -> Result<T, CollectError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CollectError>>,
{
    let mut stop = stop.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let wake = Instant::now() + backoff;
        if wake >= deadline || *stop.borrow() {
            return Err(err);
        }
        tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "will retry");
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => return Err(err),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn failure() -> CollectError {
        CollectError::PushgatewayUnreachable {
            url: "http://pg".into(),
            detail: "refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_growing_backoff_until_an_attempt_succeeds() {
        let (_tx, stop) = watch::channel(false);
        let attempts = Cell::new(0);
        let started = Instant::now();
        let outcome = retry(started + Duration::from_secs(60), &stop, || {
            attempts.set(attempts.get() + 1);
            let n = attempts.get();
            async move { if n < 3 { Err(failure()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(outcome.unwrap(), 3);
        // 500 ms then 1 s of backoff before the third attempt.
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_before_the_deadline_with_the_last_error() {
        let (_tx, stop) = watch::channel(false);
        let attempts = Cell::new(0);
        let started = Instant::now();
        let outcome: Result<(), _> = retry(started + Duration::from_secs(3), &stop, || {
            attempts.set(attempts.get() + 1);
            async { Err(failure()) }
        })
        .await;
        assert!(matches!(
            outcome,
            Err(CollectError::PushgatewayUnreachable { .. })
        ));
        // Waits of 0.5 s, 1 s fit in 3 s; the next (2 s) would not: three attempts.
        assert_eq!(attempts.get(), 3);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_request_ends_the_retries_but_not_an_attempt() {
        let (tx, stop) = watch::channel(false);
        let attempts = Cell::new(0);
        let outcome: Result<(), _> = retry(Instant::now() + Duration::from_secs(60), &stop, || {
            attempts.set(attempts.get() + 1);
            // The stop arrives while the first attempt runs; that attempt still finishes.
            let _ = tx.send(true);
            async { Err(failure()) }
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(attempts.get(), 1, "no retry after a stop request");
    }
}
