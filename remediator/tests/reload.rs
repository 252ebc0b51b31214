//! The token and the etcd client certificates rotate under a running remediator, laid out
//! as a Secret volume (a `..data` symlink swap): the next webhook is checked against the
//! new token and the next etcd call is made with the new certificates, against a real etcd
//! that requires client certificates and, after its own rotation, trusts the new CA only.
//! A half-done rotation keeps the last good material.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, generate_tls};
use reqwest::StatusCode;
use serde_json::Value;
use support::{SecretDir, firing_with_fingerprint, http_client, runtime, serve};

/// The whole test, etcd's restart included, ends within this.
const LIMIT: Duration = Duration::from_secs(180);

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    fingerprint: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("{base}/webhook"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(firing_with_fingerprint(fingerprint))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Posts until `done` says the answer is the awaited one (a change is seen within the
/// reload interval, a second); fails with the last answer past 15 s.
async fn post_until(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    what: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (status, body) = post(client, base, token, &format!("{what}-{attempt}")).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {status} {body} after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn started(status: StatusCode, _: &Value) -> bool {
    status == StatusCode::ACCEPTED
}

#[test]
fn token_and_etcd_certificates_rotate_without_a_restart() {
    let mut etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        tls: true,
        ..EtcdOptions::default()
    })
    .unwrap();
    let old = etcd.tls().unwrap().clone();
    let work = tempfile::tempdir().unwrap();
    let new = generate_tls(&work.path().join("new-pki")).unwrap();
    let mut secret = SecretDir::new(
        &work.path().join("secret"),
        &[
            ("token", b"old-token\n".to_vec()),
            ("ca.crt", read(&old.ca_cert)),
            ("tls.crt", read(&old.client_cert)),
            ("tls.key", read(&old.client_key)),
        ],
    );
    let path = |name: &str| secret.path(name).display().to_string();
    let flags = [
        "--webhook-token-file".to_owned(),
        path("token"),
        "--cacert".to_owned(),
        path("ca.crt"),
        "--cert".to_owned(),
        path("tls.crt"),
        "--key".to_owned(),
        path("tls.key"),
        "--dry-run".to_owned(),
    ];
    let endpoints = etcd.client_endpoints();
    let rt = runtime();
    let served = rt.block_on(serve(&endpoints, &work.path().join("snapshots"), &flags));
    let base = format!("http://{}", served.addr);
    let client = http_client(None);

    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            // The old token and certificates work.
            let (status, body) = post(&client, &base, "old-token", "before").await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");

            // etcd now trusts only the new CA and serves a certificate it signed: the
            // remediator's old material no longer reaches it.
            for (from, to) in [
                (&new.ca_cert, &old.ca_cert),
                (&new.server_cert, &old.server_cert),
                (&new.server_key, &old.server_key),
            ] {
                std::fs::copy(from, to).unwrap();
            }
            tokio::task::block_in_place(|| {
                etcd.stop_member(0).unwrap();
                etcd.start_member(0).unwrap();
                etcd.wait_healthy(Duration::from_secs(60)).unwrap();
            });
            let (status, body) = post(&client, &base, "old-token", "old-certs").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(
                body["skipped"]
                    .as_str()
                    .unwrap()
                    .contains("etcd not safe to act on"),
                "{body}"
            );

            // Half a rotation: an empty token and a certificate without its key. Neither
            // is taken: the old token still opens the door, nobody gets in without one.
            secret.update(&[
                ("token", b"\n".to_vec()),
                ("ca.crt", read(&new.ca_cert)),
                ("tls.crt", read(&new.client_cert)),
                ("tls.key", read(&old.client_key)),
            ]);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let (status, body) = post(&client, &base, "old-token", "half").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (status, _) = post(&client, &base, "", "half-empty").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let metrics = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for file in ["webhook_token", "etcd_client_tls"] {
                let line = format!("etcd_dr_reloads_total{{file=\"{file}\",result=\"failed\"}} 1");
                assert!(metrics.contains(&line), "{line} in:\n{metrics}");
            }

            // The whole rotation: the next webhook wants the new token, and the next etcd
            // call reaches etcd with the new certificates.
            secret.update(&[
                ("token", b"new-token\n".to_vec()),
                ("ca.crt", read(&new.ca_cert)),
                ("tls.crt", read(&new.client_cert)),
                ("tls.key", read(&new.client_key)),
            ]);
            let (status, body) = post_until(&client, &base, "new-token", "after", started).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            let (status, body) = post(&client, &base, "old-token", "old-token").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        })
        .await
        .expect("the rotation test finishes in time");
        served.stop().await;
    });
}
