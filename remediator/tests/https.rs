//! The listener over HTTPS (`--tls-cert-file`, `--tls-key-file`), as Alertmanager reaches
//! it: the webhook with the right token is answered, `/actions` wants the token too, plain
//! HTTP gets no answer on the TLS port, and a new certificate is served without a restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use dr_testkit::generate_tls;
use reqwest::StatusCode;
use support::{RESOLVED, SecretDir, http_client, runtime, serve};

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "https-token";

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn https_listener_wants_the_token_refuses_plain_http_and_takes_a_new_certificate() {
    let work = tempfile::tempdir().unwrap();
    let first = generate_tls(&work.path().join("pki-1")).unwrap();
    let second = generate_tls(&work.path().join("pki-2")).unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut secret = SecretDir::new(
        &work.path().join("listener"),
        &[
            ("tls.crt", read(&first.server_cert)),
            ("tls.key", read(&first.server_key)),
        ],
    );
    let flags = [
        "--webhook-token-file".to_owned(),
        token.display().to_string(),
        "--tls-cert-file".to_owned(),
        secret.path("tls.crt").display().to_string(),
        "--tls-key-file".to_owned(),
        secret.path("tls.key").display().to_string(),
    ];
    // No etcd: nothing here gets past the gate's first checks.
    let nowhere = [format!("http://127.0.0.1:{}", dr_testkit::free_port())];
    let rt = runtime();
    rt.block_on(async {
        let served = serve(&nowhere, &work.path().join("snapshots"), &flags).await;
        let base = format!("https://127.0.0.1:{}", served.addr.port());
        let trusts_first = http_client(Some(&read(&first.ca_cert)));
        let trusts_second = http_client(Some(&read(&second.ca_cert)));
        tokio::time::timeout(LIMIT, async {
            let webhook = |client: &reqwest::Client, token: Option<&str>| {
                let mut request = client
                    .post(format!("{base}/webhook"))
                    .header("content-type", "application/json")
                    .body(RESOLVED);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                request.send()
            };
            let response = webhook(&trusts_first, Some(TOKEN)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["skipped"].as_str().unwrap().starts_with("resolved"),
                "{body}"
            );
            let response = webhook(&trusts_first, None).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

            let actions = format!("{base}/actions");
            let response = trusts_first.get(&actions).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let response = trusts_first
                .get(&actions)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);

            // Plain HTTP on the TLS port: the handshake fails, no HTTP answer comes back.
            let plain = http_client(None)
                .get(format!("http://{}/healthz", served.addr))
                .send()
                .await;
            assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

            // A client that trusts another CA refuses the certificate.
            assert!(
                trusts_second
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_err()
            );

            // The certificate rotates: the next connection gets the new one.
            secret.update(&[
                ("tls.crt", read(&second.server_cert)),
                ("tls.key", read(&second.server_key)),
            ]);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match trusts_second.get(format!("{base}/healthz")).send().await {
                    Ok(response) if response.status() == StatusCode::OK => break,
                    other => assert!(
                        Instant::now() < deadline,
                        "the new certificate is not served after 15 s: {other:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // A new client: the old one may still hold a connection made before.
            let fresh = http_client(Some(&read(&first.ca_cert)));
            assert!(
                fresh.get(format!("{base}/healthz")).send().await.is_err(),
                "the old certificate is still served"
            );
        })
        .await
        .expect("the HTTPS test finishes in time");
        served.stop().await;
    });
}
