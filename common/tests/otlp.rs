//! Spans reach an OTLP endpoint when one is configured. No OpenTelemetry collector is
//! packaged for this machine, so a loopback listener stands in for it and checks that a
//! gRPC (HTTP/2) connection arrives when spans are flushed.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::time::Duration;

use dr_common::telemetry::{LogFormat, init};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_configured_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let guard = init(LogFormat::Json, "info", "dr-test", Some(&endpoint)).unwrap();

    tracing::info_span!("remediation", step = "snapshot").in_scope(|| {
        tracing::info!("inside a span");
    });
    // Shutdown flushes the batch; it runs on a blocking thread because it waits.
    let flush = tokio::task::spawn_blocking(move || drop(guard));

    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("no connection to the OTLP endpoint within 20 s")
        .unwrap();
    let mut preface = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut preface))
        .await
        .expect("no bytes from the exporter")
        .unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    drop(socket);
    tokio::time::timeout(Duration::from_secs(30), flush)
        .await
        .expect("flushing at exit hung")
        .unwrap();
}

#[test]
fn a_malformed_endpoint_is_refused_with_a_message() {
    let err = init(LogFormat::Text, "info", "dr-test", Some("collector:4317"))
        .err()
        .expect("an endpoint without a scheme must be refused");
    assert!(err.contains("want http://"), "{err}");
}
