//! The members' own `/metrics`, read twice a short window apart, for the diagnosis: leader
//! changes and the WAL fsync p99 *now* (counters and histograms since start say nothing
//! about now). Optional and bounded: a member whose metrics cannot be read adds no
//! evidence, and the whole look takes at most the window plus two bounded reads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::cluster::ClusterView;
use crate::diagnosis::MemberSigns;
use crate::etcd::EtcdAccess;

/// Between the two reads: long enough to see an election storm (a leader moved every
/// couple of seconds) and a handful of fsyncs.
pub const WINDOW: Duration = Duration::from_secs(2);
/// Each read's own bound.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Fewer fsyncs than this in the window make no p99.
const MIN_FSYNCS: f64 = 5.0;

const LEADER_CHANGES: &str = "etcd_server_leader_changes_seen_total";
const FSYNC_BUCKET: &str = "etcd_disk_wal_fsync_duration_seconds_bucket";

/// One read: the two families we use.
#[derive(Clone, Debug, Default, PartialEq)]
struct Reading {
    leader_changes: Option<f64>,
    /// (le, cumulative count), in page order.
    fsync_buckets: Vec<(f64, f64)>,
}

/// Samples every answering member's `/metrics` at its client URL, `WINDOW` apart.
pub async fn sample(access: &EtcdAccess, view: &ClusterView) -> MemberSigns {
    let mut signs = MemberSigns {
        window_seconds: WINDOW.as_secs_f64(),
        ..MemberSigns::default()
    };
    let client = match http_client(access) {
        Ok(client) => client,
        Err(why) => {
            signs.unreadable.insert("*".into(), why);
            return signs;
        }
    };
    let targets: Vec<(String, String)> = view
        .members
        .iter()
        .filter(|m| m.status.is_some() && !m.endpoint.is_empty())
        .map(|m| {
            (
                m.name.clone(),
                format!("{}/metrics", m.endpoint.trim_end_matches('/')),
            )
        })
        .collect();
    let started = Instant::now();
    let first = read_all(&client, &targets).await;
    tokio::time::sleep(WINDOW.saturating_sub(started.elapsed())).await;
    let second = read_all(&client, &targets).await;
    signs.window_seconds = started.elapsed().as_secs_f64();
    for (name, _) in &targets {
        match (first.get(name), second.get(name)) {
            (Some(Ok(a)), Some(Ok(b))) => {
                if let (Some(x), Some(y)) = (a.leader_changes, b.leader_changes) {
                    signs.leader_changes.insert(name.clone(), (y - x).max(0.0));
                }
                if let Some(p99) = p99(&a.fsync_buckets, &b.fsync_buckets) {
                    signs.fsync_p99.insert(name.clone(), p99);
                }
            }
            (Some(Err(why)), _) | (_, Some(Err(why))) => {
                signs.unreadable.insert(name.clone(), why.clone());
            }
            _ => {}
        }
    }
    signs
}

fn http_client(access: &EtcdAccess) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(READ_TIMEOUT);
    if let Some(tls) = &access.tls {
        let material = tls.current();
        if let Some(ca) = &material.ca_pem {
            let cert = reqwest::Certificate::from_pem(ca).map_err(|e| format!("--cacert: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(pem) = material.identity_pem() {
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|e| format!("--cert/--key: {e}"))?;
            builder = builder.identity(identity);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

async fn read_all(
    client: &reqwest::Client,
    targets: &[(String, String)],
) -> BTreeMap<String, Result<Reading, String>> {
    let mut reads = JoinSet::new();
    for (name, url) in targets {
        let (client, name, url) = (client.clone(), name.clone(), url.clone());
        reads.spawn(async move { (name, read(&client, &url).await) });
    }
    let mut found = BTreeMap::new();
    while let Some(done) = reads.join_next().await {
        if let Ok((name, reading)) = done {
            found.insert(name, reading);
        }
    }
    found
}

async fn read(client: &reqwest::Client, url: &str) -> Result<Reading, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()));
    }
    let page = response.text().await.map_err(|e| format!("{url}: {e}"))?;
    Ok(parse(&page))
}

/// The two families from an exposition page; other lines are ignored.
fn parse(page: &str) -> Reading {
    let mut reading = Reading::default();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix(LEADER_CHANGES) {
            if rest.starts_with([' ', '{']) {
                reading.leader_changes = last_number(rest);
            }
        } else if let Some(rest) = line.strip_prefix(FSYNC_BUCKET) {
            let le = rest
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|le| le.parse::<f64>().ok());
            if let (Some(le), Some(count)) = (le, last_number(rest)) {
                reading.fsync_buckets.push((le, count));
            }
        }
    }
    reading
}

fn last_number(rest: &str) -> Option<f64> {
    // `{labels} value [timestamp]`: the value follows the closing brace (or the name).
    let after = rest.rsplit_once('}').map_or(rest, |(_, v)| v);
    after.split_whitespace().next()?.parse().ok()
}

/// The upper bound of the bucket that holds the 99th percentile of the fsyncs between
/// the two reads; `None` with too few of them.
fn p99(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let mut deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let was = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, (count - was).max(0.0))
        })
        .collect();
    deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = deltas.last()?.1;
    if total < MIN_FSYNCS {
        return None;
    }
    deltas
        .iter()
        .find(|(_, cumulative)| *cumulative >= 0.99 * total)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x\n\
etcd_server_leader_changes_seen_total 3\n\
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 10\n\
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.512\"} 20\n\
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"1.024\"} 30\n\
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 30\n\
etcd_server_leader_changes_seen_total_other 9\n";

    #[test]
    fn reads_the_two_families() {
        let r = parse(PAGE);
        assert_eq!(r.leader_changes, Some(3.0));
        assert_eq!(r.fsync_buckets.len(), 4);
        assert_eq!(r.fsync_buckets[3], (f64::INFINITY, 30.0));
    }

    #[test]
    fn p99_is_of_the_window_only() {
        let before = parse(PAGE).fsync_buckets;
        // 10 more fsyncs, all slow (between 0.512 and 1.024 s).
        let after = vec![
            (0.001, 10.0),
            (0.512, 20.0),
            (1.024, 40.0),
            (f64::INFINITY, 40.0),
        ];
        assert_eq!(p99(&before, &after), Some(1.024));
        // 10 more, all fast.
        let after = vec![
            (0.001, 20.0),
            (0.512, 30.0),
            (1.024, 40.0),
            (f64::INFINITY, 40.0),
        ];
        assert_eq!(p99(&before, &after), Some(0.001));
        // Too few to say.
        assert_eq!(p99(&before, &before), None);
    }
}
