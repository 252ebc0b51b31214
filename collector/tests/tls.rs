//! Scraping etcd's mTLS client port (`--client-cert-auth`) with certificates made in the
//! test: the right CA and client certificate work; a wrong CA or a missing client
//! certificate fail with a message that says TLS.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

mod support;

use dr_collector::error::CollectError;
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, Pushgateway, generate_unrelated_ca};
use support::{collector, config, group, pushgateway_page};

fn tls_etcd() -> EtcdCluster {
    EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        tls: true,
        ..EtcdOptions::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_over_mtls_and_pushes() {
    let etcd = tls_etcd();
    let tls = etcd.tls().unwrap();
    let pushgateway = Pushgateway::start().unwrap();
    let url = etcd.member(0).client_metrics_url();
    assert!(url.starts_with("https://"), "{url}");
    let config = config(&[
        "--etcd-metrics-url",
        &url,
        "--instance",
        "tls-member",
        "--pushgateway-url",
        &pushgateway.url(),
        "--cacert",
        tls.ca_cert.to_str().unwrap(),
        "--cert",
        tls.client_cert.to_str().unwrap(),
        "--key",
        tls.client_key.to_str().unwrap(),
    ]);
    let pushed = collector(&config)
        .collect_once(&config.targets[0])
        .await
        .unwrap();
    assert!(pushed.families > 10, "{pushed:?}");
    let page = pushgateway_page(&pushgateway.url());
    assert!(
        group(&page, "etcd", "tls-member")
            .iter()
            .any(|f| f.name == "etcd_server_has_leader")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_with_a_tls_message() {
    let etcd = tls_etcd();
    let tls = etcd.tls().unwrap();
    let stranger = generate_unrelated_ca(etcd.workdir(), "wrong").unwrap();
    let url = etcd.member(0).client_metrics_url();
    let config = config(&[
        "--etcd-metrics-url",
        &url,
        "--pushgateway-url",
        "http://127.0.0.1:9",
        "--cacert",
        stranger.ca_cert.to_str().unwrap(),
        "--cert",
        tls.client_cert.to_str().unwrap(),
        "--key",
        tls.client_key.to_str().unwrap(),
    ]);
    let err = collector(&config)
        .collect_once(&config.targets[0])
        .await
        .unwrap_err();
    assert!(matches!(err, CollectError::EtcdTls { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("TLS failure") && message.contains(&url),
        "{message}"
    );
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused_by_etcd() {
    let etcd = tls_etcd();
    let tls = etcd.tls().unwrap();
    let config = config(&[
        "--etcd-metrics-url",
        &etcd.member(0).client_metrics_url(),
        "--pushgateway-url",
        "http://127.0.0.1:9",
        "--cacert",
        tls.ca_cert.to_str().unwrap(),
    ]);
    let err = collector(&config)
        .collect_once(&config.targets[0])
        .await
        .unwrap_err();
    assert!(matches!(err, CollectError::EtcdTls { .. }), "{err}");
    assert!(err.to_string().contains("give --cert and --key"), "{err}");
}

/// A client certificate renewed on disk is used by the next scrape of the same collector,
/// with no restart: first a certificate etcd refuses, then, after the swap, the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_is_used_by_the_next_scrape() {
    let etcd = tls_etcd();
    let tls = etcd.tls().unwrap();
    let stranger = generate_unrelated_ca(etcd.workdir(), "old").unwrap();
    let pushgateway = Pushgateway::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    // Written aside and renamed in place, as a certificate manager does.
    let install = |from: &std::path::Path, to: &std::path::Path| {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).unwrap();
        std::fs::rename(&aside, to).unwrap();
    };
    install(&stranger.client_cert, &cert);
    install(&stranger.client_key, &key);
    let config = config(&[
        "--etcd-metrics-url",
        &etcd.member(0).client_metrics_url(),
        "--pushgateway-url",
        &pushgateway.url(),
        "--cacert",
        tls.ca_cert.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let collector = collector(&config);
    let target = &config.targets[0];
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        // Refused: under TLS 1.3 the server judges the client certificate after the client
        // has finished its side of the handshake, so the refusal can arrive as a TLS alert
        // or as the connection closing under the first request, depending on timing.
        let err = collector.collect_once(target).await.unwrap_err();
        assert!(
            matches!(
                err,
                CollectError::EtcdTls { .. } | CollectError::EtcdUnreachable { .. }
            ),
            "{err}"
        );

        install(&tls.client_cert, &cert);
        install(&tls.client_key, &key);
        // The files are looked at once a second at most.
        tokio::time::sleep(dr_collector::config::RELOAD_CHECK_INTERVAL).await;
        let pushed = collector.collect_once(target).await.unwrap();
        assert!(pushed.families > 10, "{pushed:?}");
    })
    .await
    .expect("the scrapes end in time");
}
