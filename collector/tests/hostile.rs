//! The collector against hostile metrics endpoints: garbage bytes (as a body and instead
//! of HTTP), a 100 MB page, a server that accepts and never answers (or sends headers and
//! then nothing), duplicated families and series, and a redirect loop. `--once` exits 1
//! with one line naming the target and the problem; the service keeps running and counts
//! each failure under its reason in `etcd_dr_collector_scrapes_total`.
//!
//! The endpoints are a tiny HTTP server written here on a loopback port: it IS the hostile
//! endpoint, so it answers raw bytes exactly as each case needs.
#![allow(clippy::unwrap_used)] // a test that cannot set up should fail loudly

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dr_testkit::{Workdir, free_port, http_get, run_within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_dr-collector");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/etcd-3.4.23-metrics.txt"
);

/// What the page of the 100 MB case would weigh, were it read to the end.
const HUGE_BYTES: u64 = 100 << 20;
/// The collector's cap (`dr_collector::scrape::MAX_PAGE_BYTES`).
const CAP: u64 = dr_collector::scrape::MAX_PAGE_BYTES as u64;

/// How each hostile endpoint answers a request.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// HTTP 200, text/plain, a body of pseudo-random bytes (not UTF-8).
    GarbageBody,
    /// No HTTP at all: pseudo-random bytes, then the connection closes.
    GarbageWire,
    /// HTTP 200 without a length, then 100 MB of plausible exposition lines until EOF.
    Huge,
    /// HTTP 200 that declares 100 MB up front.
    HugeDeclared,
    /// Accepts, reads the request and never answers.
    Silent,
    /// Headers of a 1000-byte page, then nothing.
    HeadersThenSilence,
    /// etcd's real page served twice in one body: every HELP line appears twice.
    DuplicatedFamilies,
    /// etcd's real page with one kept series repeated (no HELP or TYPE to trip on).
    DuplicatedSeries,
    /// 302 to itself, forever.
    RedirectLoop,
}

/// A hostile endpoint on a loopback port, on its own thread and runtime; stopped (every
/// connection closed) on drop.
struct Hostile {
    addr: SocketAddr,
    /// Body bytes the server managed to write before the client hung up.
    written: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hostile {
    fn start(mode: Mode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = written.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            if let Ok((stream, _)) = accepted {
                                tokio::spawn(answer(stream, mode, counter.clone()));
                            }
                        }
                        _ = &mut stopped => break,
                    }
                }
            });
            // Dropping the runtime drops every connection task, and so every socket.
        });
        Hostile {
            addr,
            written,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Deterministic bytes with no UTF-8 structure (xorshift).
fn garbage(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8 | 0x80
        })
        .collect()
}

fn fixture() -> String {
    std::fs::read_to_string(FIXTURE).unwrap()
}

async fn answer(mut stream: TcpStream, mode: Mode, written: Arc<AtomicU64>) {
    // Every request of these tests is a GET without a body: read its head, at most 16 KB.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    let page = |body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let _ = match mode {
        Mode::GarbageBody => stream.write_all(&page(&garbage(4096))).await,
        Mode::GarbageWire => stream.write_all(&garbage(4096)).await,
        Mode::Huge | Mode::HugeDeclared => {
            let length = match mode {
                Mode::HugeDeclared => format!("Content-Length: {HUGE_BYTES}\r\n"),
                _ => "Connection: close\r\n".into(),
            };
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{length}\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let line = "etcd_mvcc_put_total 12345\n".repeat(2500);
            let mut sent = 0u64;
            while sent < HUGE_BYTES {
                if stream.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                sent += line.len() as u64;
                written.store(sent, Ordering::SeqCst);
            }
            Ok(())
        }
        Mode::Silent => std::future::pending().await,
        Mode::HeadersThenSilence => {
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\netcd_";
            let _ = stream.write_all(head.as_bytes()).await;
            std::future::pending().await
        }
        Mode::DuplicatedFamilies => {
            stream
                .write_all(&page(fixture().repeat(2).as_bytes()))
                .await
        }
        Mode::DuplicatedSeries => {
            let body = format!("{}etcd_server_has_leader 1\n", fixture());
            stream.write_all(&page(body.as_bytes())).await
        }
        Mode::RedirectLoop => {
            let redirect = "HTTP/1.1 302 Found\r\nLocation: /metrics\r\nContent-Length: 0\r\n\r\n";
            stream.write_all(redirect.as_bytes()).await
        }
    };
    let _ = stream.shutdown().await;
}

/// Runs `dr-collector --once` against `url` (no Pushgateway: the scrape fails first).
fn once(url: &str, extra: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = run_within(
        Command::new(BIN)
            .args([
                "--once",
                "--etcd-metrics-url",
                url,
                "--pushgateway-url",
                "http://127.0.0.1:9",
            ])
            .args(extra)
            .env_remove("RUST_LOG"),
        Duration::from_secs(60),
    )
    .unwrap();
    (output, started.elapsed())
}

/// `--once` against `mode` exits 1 within `within`, with exactly one line on stderr that
/// names the target and says `problem`; returns that line.
fn once_refuses(mode: Mode, extra: &[&str], problem: &str, within: Duration) -> String {
    let server = Hostile::start(mode);
    let url = server.url();
    let (output, took) = once(&url, extra);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{mode:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{mode:?}: one line: {stderr}");
    let line = stderr.trim_end().to_owned();
    assert!(
        line.starts_with(&format!("dr-collector: scrape {url}: ")),
        "{mode:?}: names the target: {line}"
    );
    assert!(line.contains(problem), "{mode:?}: want {problem:?}: {line}");
    assert!(line.len() < 400, "{mode:?}: a short line: {line}");
    assert!(took < within, "{mode:?}: took {took:?}");
    println!("{mode:?} ({took:?}): {line}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    line
}

const QUICK: Duration = Duration::from_secs(10);

#[test]
fn once_refuses_a_garbage_body() {
    once_refuses(
        Mode::GarbageBody,
        &[],
        "not an exposition page: not UTF-8 text",
        QUICK,
    );
}

#[test]
fn once_refuses_an_answer_that_is_not_http() {
    once_refuses(Mode::GarbageWire, &[], "the answer is not HTTP: ", QUICK);
}

#[test]
fn once_stops_reading_a_100_mb_page_at_the_cap() {
    let server = Hostile::start(Mode::Huge);
    let (output, took) = once(&server.url(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "scrape {}: page larger than {CAP} bytes",
            server.url()
        )),
        "{stderr}"
    );
    assert!(took < QUICK, "took {took:?}");
    // The collector hung up near the cap: the rest of the 100 MB was never sent (what
    // the server wrote includes what the sockets' buffers took).
    let sent = server.written.load(Ordering::SeqCst);
    assert!(
        (CAP..CAP + (16 << 20)).contains(&sent),
        "the server wrote {sent} bytes"
    );
}

#[test]
fn once_refuses_a_declared_100_mb_page_before_reading_it() {
    let server = Hostile::start(Mode::HugeDeclared);
    let (output, _) = once(&server.url(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("page larger than {CAP} bytes")),
        "{stderr}"
    );
    let sent = server.written.load(Ordering::SeqCst);
    assert!(sent < CAP + (16 << 20), "the server wrote {sent} bytes");
}

#[test]
fn once_gives_up_on_a_silent_server_at_its_timeout() {
    let line = once_refuses(
        Mode::Silent,
        &["--timeout", "500ms"],
        "no answer within 500ms (--timeout)",
        Duration::from_secs(5),
    );
    assert!(!line.contains("unreachable"), "{line}");
}

#[test]
fn once_gives_up_on_a_body_that_never_comes_at_its_timeout() {
    once_refuses(
        Mode::HeadersThenSilence,
        &["--timeout", "500ms"],
        "no answer within 500ms (--timeout)",
        Duration::from_secs(5),
    );
}

#[test]
fn once_refuses_duplicated_families_naming_the_line() {
    let lines = fixture().lines().count();
    // The second copy of the page starts at line `lines + 1` with a HELP line again.
    once_refuses(
        Mode::DuplicatedFamilies,
        &[],
        &format!(
            "not an exposition page: line {}: second HELP line",
            lines + 1
        ),
        QUICK,
    );
}

#[test]
fn once_refuses_a_duplicated_series_before_the_pushgateway_does() {
    once_refuses(
        Mode::DuplicatedSeries,
        &[],
        "series etcd_server_has_leader{} appears twice in the page",
        QUICK,
    );
}

#[test]
fn once_names_a_redirect_loop_without_following_it() {
    once_refuses(
        Mode::RedirectLoop,
        &[],
        "HTTP 302 redirect to \"/metrics\": the collector follows no redirects",
        QUICK,
    );
}

/// `etcd_dr_collector_scrapes_total{instance, result="error", reason}` on a `/metrics`
/// page, 0 if absent.
fn failures(metrics: &str, instance: &str, reason: &str) -> f64 {
    let prefix = format!(
        "etcd_dr_collector_scrapes_total{{instance=\"{instance}\",result=\"error\",reason=\"{reason}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_service_keeps_running_and_counts_each_hostile_endpoint_by_reason() {
    let cases = [
        (Mode::GarbageBody, "garbage-body", "not_exposition"),
        (Mode::GarbageWire, "garbage-wire", "not_http"),
        (Mode::Huge, "huge", "too_large"),
        (Mode::Silent, "silent", "timeout"),
        (Mode::DuplicatedFamilies, "dup-families", "not_exposition"),
        (Mode::DuplicatedSeries, "dup-series", "duplicate_series"),
        (Mode::RedirectLoop, "redirect", "redirect"),
    ];
    let servers: Vec<Hostile> = cases
        .iter()
        .map(|(mode, ..)| Hostile::start(*mode))
        .collect();
    let urls: Vec<String> = servers.iter().map(Hostile::url).collect();
    let instances: Vec<&str> = cases.iter().map(|(_, instance, _)| *instance).collect();
    let workdir = Workdir::temp("collector-hostile").unwrap();
    let (targets, instances) = (urls.join(","), instances.join(","));
    let pushgateway = format!("http://127.0.0.1:{}", free_port());
    let (mut guard, base) = support::start_service(
        BIN,
        &workdir,
        &[
            ("DR_COLLECTOR_ETCD_METRICS_URL", &targets),
            ("DR_COLLECTOR_INSTANCE", &instances),
            ("DR_COLLECTOR_PUSHGATEWAY_URL", &pushgateway),
            ("DR_COLLECTOR_TIMEOUT", "300ms"),
        ],
    );

    // Every endpoint fails under its own reason, more than once: the service goes on
    // collecting interval after interval.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, metrics) = http_get(&format!("{base}/metrics")).unwrap();
        assert_eq!(status, 200);
        let counted = cases
            .iter()
            .all(|(_, instance, reason)| failures(&metrics, instance, reason) >= 2.0);
        if counted {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "not every failure counted twice within 30 s:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (_, instance, reason) in cases {
        // Nothing else: each endpoint fails in exactly its one way.
        for other in dr_collector::error::CollectError::SCRAPE_REASONS {
            let n = failures(&metrics, instance, other);
            assert!(
                (other == reason) == (n > 0.0),
                "{instance}: {other} = {n}\n{metrics}"
            );
        }
    }
    assert!(guard.is_running(), "the collector must outlive its targets");
    let (status, body) = http_get(&format!("{base}/readyz")).unwrap();
    assert_eq!(status, 503, "nothing was ever pushed: {body}");
    let status = guard.stop().unwrap().expect("collector was running");
    assert!(
        status.success(),
        "drains and exits 0 on SIGTERM: {status:?}"
    );
    drop(servers);
}
