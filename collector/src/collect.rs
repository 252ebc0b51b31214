//! One collection: scrape a member's page, keep the allowed families, push them. Retries
//! each step with backoff inside the interval, so a blip does not cost a whole interval.

use std::collections::HashSet;
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

/// Why a page's text cannot be pushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// It does not parse, or holds no family at all.
    #[error("{0}")]
    NotExposition(String),
    /// A kept series appears twice (`expfmt` parses that; the Pushgateway refuses it).
    #[error("series {0} appears twice in the page; the Pushgateway would refuse the push")]
    DuplicateSeries(String),
}

/// Parses `page` and keeps the families `allowlist` allows. A page that does not parse,
/// or holds no family at all, is not an exposition page; one that repeats a kept series
/// (same name, same labels) would be refused by the Pushgateway, so it is refused here,
/// naming the series, instead of as a push error.
pub fn filter_page(page: &str, allowlist: &Allowlist) -> Result<Filtered, PageError> {
    let families =
        exposition::parse(page).map_err(|err| PageError::NotExposition(err.to_string()))?;
    if families.is_empty() {
        return Err(PageError::NotExposition(
            "no metric families in the page".into(),
        ));
    }
    let kept: Vec<_> = families
        .into_iter()
        .filter(|family| allowlist.allows(family.name))
        .collect();
    let mut seen = HashSet::new();
    for sample in kept.iter().flat_map(|family| &family.samples) {
        let mut labels: Vec<(&str, &str)> = sample.labels.iter().collect();
        labels.sort_unstable();
        if !seen.insert((sample.name, labels)) {
            return Err(PageError::DuplicateSeries(series_name(sample)));
        }
    }
    let samples = kept.iter().map(|family| family.samples.len()).sum();
    let mut text = String::with_capacity(page.len() / 2);
    exposition::write(&kept, &mut text, false);
    // The Pushgateway must read back what was kept. It does not when a family named like
    // a histogram's or summary's `_bucket`/`_sum`/`_count` is written after it (a page
    // that gave the TYPE after such samples; found by the property tests): it would join
    // that family and refuse the push. Refused here, naming the page, not the Pushgateway.
    match exposition::parse(&text) {
        Ok(again) if again.len() == kept.len() => {}
        Ok(again) => {
            return Err(PageError::NotExposition(format!(
                "{} kept families read back as {}: a histogram or summary sample before its TYPE line?",
                kept.len(),
                again.len()
            )));
        }
        Err(err) => {
            return Err(PageError::NotExposition(format!(
                "the kept families would not reach the Pushgateway intact ({}): a histogram or summary sample before its TYPE line?",
                err.message
            )));
        }
    }
    Ok(Filtered {
        text,
        pushed: Pushed {
            families: kept.len(),
            samples,
        },
    })
}

/// `name{label="value",...}` on one line and at most about 200 characters.
fn series_name(sample: &exposition::Sample<'_>) -> String {
    let labels: Vec<String> = sample
        .labels
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    let full = format!("{}{{{}}}", sample.name, labels.join(","));
    let mut short: String = full.chars().take(200).collect();
    if short.len() < full.len() {
        short.push_str("...");
    }
    short
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
        let outcome = scrape::fetch_page(
            &etcd_http,
            &target.metrics_url,
            presents_identity,
            self.etcd_http.timeout(),
        )
        .await
        .and_then(|page| {
            let url = target.metrics_url.to_string();
            filter_page(&page, &self.allowlist).map_err(|err| match err {
                PageError::NotExposition(detail) => CollectError::NotExposition { url, detail },
                PageError::DuplicateSeries(_) => CollectError::DuplicateSeries {
                    url,
                    detail: err.to_string(),
                },
            })
        });
        self.metrics.count_scrape(&target.instance, &outcome);
        outcome
    }

    async fn push(&self, target: &Target, filtered: &Filtered) -> Result<Pushed, CollectError> {
        let url = push::grouping_url(&self.pushgateway_url, &self.job, &target.instance);
        let mut body = filtered.text.clone();
        body.push_str(&push::target_up(true));
        let outcome = push::push(&self.push_http, &url, body).await;
        self.metrics.count_push(&target.instance, &outcome);
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
        self.metrics.count_push(&target.instance, &outcome);
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

    #[test]
    fn a_repeated_series_is_refused_by_name_and_the_same_name_with_other_labels_is_not() {
        let allow = Allowlist::new(&[".*".to_owned()]).unwrap();
        let page = "# TYPE a counter\na{x=\"1\",y=\"2\"} 1\na{x=\"2\"} 1\nb 3\n";
        assert_eq!(filter_page(page, &allow).unwrap().pushed.samples, 3);
        // The same label set in another order is the same series.
        let twice = format!("{page}a{{ y=\"2\", x=\"1\" }} 5\n");
        let err = filter_page(&twice, &allow).unwrap_err();
        assert_eq!(err, PageError::DuplicateSeries("a{y=\"2\",x=\"1\"}".into()));
        assert!(
            err.to_string().contains("Pushgateway would refuse"),
            "{err}"
        );
        // Only what is pushed counts: a family the allowlist drops may repeat.
        let dropped = format!("{page}b 4\n");
        let only_a = Allowlist::new(&["a".to_owned()]).unwrap();
        assert!(filter_page(&dropped, &only_a).is_ok());
        assert!(matches!(
            filter_page(&dropped, &allow),
            Err(PageError::DuplicateSeries(series)) if series == "b{}"
        ));
        // Buckets before their histogram's TYPE form a family of their own, which the
        // Pushgateway would fold into the histogram written before it.
        let late_type =
            "# HELP h x\nh_bucket{le=\"+Inf\"} 1\n# TYPE h histogram\nh_sum 1\nh_count 1\n";
        let err = filter_page(late_type, &allow).unwrap_err();
        assert!(err.to_string().contains("before its TYPE line"), "{err}");
        assert!(filter_page(late_type, &Allowlist::new(&["h".to_owned()]).unwrap()).is_ok());
        assert!(matches!(
            filter_page("\n", &allow),
            Err(PageError::NotExposition(_))
        ));
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
