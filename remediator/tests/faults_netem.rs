//! Fault drill (issue 18): a slow and lossy network between the remediator and etcd.
//!
//! The test makes a network namespace of its own and runs itself again inside it
//! (`ip netns exec NAME <this test binary> inner_...`): etcd (3 members) and the remediator
//! then live on that namespace's loopback, and nothing done to it reaches the machine's.
//! Inside, after the keys are written, the loopback gets 300 ms of delay and 20% loss:
//! `tc qdisc add dev lo root netem delay 300ms loss 20%` where the kernel has netem; where
//! it has not (CONFIG_NET_SCH_NETEM unset, as on the machines this was written on), the
//! same through a delaying proxy in front of each member's client port (300 ms each way,
//! connections redirected to it with an iptables REDIRECT) and an iptables `statistic`
//! rule that drops 20% of those packets; the test prints which.
//!
//! The remediator's deadline for an etcd call (`--etcd-timeout 500ms`) is shorter than
//! one round trip: every look at etcd times out, the webhook answers in bounded time
//! and nothing is touched. With the impairment gone, the next alert repairs.
//!
//! Run: `cargo test -p dr-remediator --test faults_netem -- --nocapture` (as root; the
//! test is skipped, saying why, only when the namespace cannot be created).
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use dr_remediator::audit::Phase;
use dr_testkit::netns::{self, NetNs};
use dr_testkit::{EtcdCluster, EtcdOptions, EtcdVersion, run_within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

use support::{client, firing_space, remediator, runtime, seeded, step};

/// Names the namespace the inner test must find itself in.
const NS_ENV: &str = "DR_FAULTS_NETNS";
const INNER: &str = "inner_slow_lossy_network_in_its_namespace";
const DELAY: Duration = Duration::from_millis(300);
const LOSS: f64 = 0.2;
/// The whole inner run, etcd start-up included.
const INNER_LIMIT: Duration = Duration::from_secs(170);

#[test]
fn a_slow_lossy_network_fires_timeouts_never_hangs_and_touches_nothing() {
    let ns = match NetNs::create("dr-faults") {
        Ok(ns) => ns,
        Err(err) => {
            eprintln!(
                "fault-drill: SKIPPED the slow-network drill: cannot create a network namespace: {err:#}"
            );
            return;
        }
    };
    // Creating it needed root and `ip`; the impairment needs these too.
    for tool in ["tc", "iptables"] {
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .collect::<Vec<_>>();
        path.extend(["/usr/sbin".into(), "/sbin".into()]);
        assert!(
            path.iter().any(|d| d.join(tool).is_file()),
            "{tool} not found: ci/install-deps.sh installs iproute2 and iptables"
        );
    }
    let mut cmd = ns.command(std::env::current_exe().unwrap());
    cmd.args([
        INNER,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(NS_ENV, ns.name());
    let out = run_within(&mut cmd, INNER_LIMIT).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "inside {}: {}\n{stdout}\n{stderr}",
        ns.name(),
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the inner test did not run: {stdout}"
    );
    assert!(stderr.contains("fault-drill: slow network"), "{stderr}");
}

/// Forwards 127.0.0.1:<its port> to `upstream`, each direction `DELAY` late; it connects
/// from 127.0.0.2, which the REDIRECT rule leaves alone.
async fn delay_proxy(upstream: SocketAddr) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                let Ok(outbound) = socket.connect(upstream).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(late(ri, wo), late(ro, wi));
            });
        }
    });
    port
}

/// Copies `from` to `to`, every chunk `DELAY` after it was read.
async fn late(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0
                || tx
                    .send((Instant::now() + DELAY, buffer[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// How the loopback was made slow and lossy, so it can be made whole again.
enum Impairment {
    Netem,
    ProxyAndIptables,
}

impl Impairment {
    /// Netem on `lo` where the kernel has it, else the proxies and iptables rules.
    async fn apply(etcd: &EtcdCluster) -> Impairment {
        let netem = netns::run(
            "tc",
            &[
                "qdisc", "add", "dev", "lo", "root", "netem", "delay", "300ms", "loss", "20%",
            ],
        );
        match netem {
            Ok(()) => {
                eprintln!("fault-drill: loopback impaired with tc netem delay 300ms loss 20%");
                return Impairment::Netem;
            }
            Err(err) => eprintln!(
                "fault-drill: tc netem refused ({err:#}); the same delay and loss through a proxy and iptables instead"
            ),
        }
        Self::through_proxies(etcd, &[0, 1, 2]).await
    }

    /// The delaying proxy and the random drops in front of the `members` given only.
    async fn through_proxies(etcd: &EtcdCluster, members: &[usize]) -> Impairment {
        let probability = LOSS.to_string();
        for member in members.iter().map(|&i| etcd.member(i)) {
            let upstream: SocketAddr = member
                .client_url
                .trim_start_matches("http://")
                .parse()
                .unwrap();
            let proxy = delay_proxy(upstream).await.to_string();
            let port = upstream.port().to_string();
            netns::run(
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-o",
                    "lo",
                    "-p",
                    "tcp",
                    "-s",
                    "127.0.0.1",
                    "-d",
                    "127.0.0.1",
                    "--dport",
                    &port,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &proxy,
                ],
            )
            .unwrap();
            for direction in ["--dport", "--sport"] {
                netns::run(
                    "iptables",
                    &[
                        "-A",
                        "INPUT",
                        "-i",
                        "lo",
                        "-p",
                        "tcp",
                        direction,
                        &proxy,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &probability,
                        "-j",
                        "DROP",
                    ],
                )
                .unwrap();
            }
        }
        Impairment::ProxyAndIptables
    }

    fn remove(self) {
        match self {
            Impairment::Netem => netns::run("tc", &["qdisc", "del", "dev", "lo", "root"]).unwrap(),
            Impairment::ProxyAndIptables => {
                netns::run("iptables", &["-t", "nat", "-F", "OUTPUT"]).unwrap();
                netns::run("iptables", &["-F", "INPUT"]).unwrap();
            }
        }
    }
}

#[test]
#[ignore = "runs only inside the network namespace a_slow_lossy_network_... creates"]
fn inner_slow_lossy_network_in_its_namespace() {
    let Ok(wanted) = std::env::var(NS_ENV) else {
        eprintln!("{INNER}: only runs inside the namespace its outer test creates");
        return;
    };
    // Never impair a loopback but the test's own namespace's.
    assert_eq!(
        netns::current().as_deref(),
        Some(wanted.as_str()),
        "not inside network namespace {wanted}"
    );
    let etcd = EtcdCluster::start(EtcdOptions {
        version: EtcdVersion::V3_6,
        members: 3,
        ..EtcdOptions::default()
    })
    .unwrap();
    let endpoints = etcd.client_endpoints();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let flags = ["--health-wait", "1s", "--etcd-timeout", "500ms"];
    let r = remediator(&endpoints, dir.path(), &flags);
    rt.block_on(async {
        let mut c = client(&endpoints).await;
        for i in 0..50 {
            c.put(format!("seed/{i:04}"), vec![b'k'; 10 * 1024], None)
                .await
                .unwrap();
        }
        let before = seeded(&mut c).await;
        drop(c);

        let impairment = Impairment::apply(&etcd).await;
        let round_trip = status_round_trip(&endpoints[0]).await;
        assert!(
            round_trip >= 2 * DELAY,
            "the impairment is not there: a Status took {round_trip:?}"
        );
        let asked = Instant::now();
        let alert = firing_space().replace("f146eb540a7ae47b", "fault-netem-1");
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), r.post(&alert, None))
            .await
            .expect("the webhook hung on a slow network");
        let answered = asked.elapsed();
        let impaired = body_summary(status, &body);
        // Timeouts fired and nothing was touched: the alert is refused for etcd, or (a
        // member seen, another not) answered with a plan that repairs nothing.
        let events = r.events();
        // The story: one decision, skipped for a deadline (or a run that repairs nothing).
        let decided = events.iter().filter(|e| e.step == "decide").count();
        assert!(
            decided == 1 || status == StatusCode::ACCEPTED,
            "{events:#?}"
        );
        let text = serde_json::to_string(&events).unwrap();
        assert!(
            timed_out(&text),
            "no timeout recorded: {events:#?}"
        );
        if status == StatusCode::OK {
            let skipped = body["skipped"].as_str().unwrap();
            assert!(skipped.starts_with("etcd not safe to act on"), "{skipped}");
        } else {
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            let id = body["action_id"].as_str().unwrap();
            let run = r.wait_finished(id, Duration::from_secs(120)).await;
            assert_ne!(body["diagnosis"], "space", "{run:#?}");
        }
        assert!(
            events.iter().all(|e| !(e.step == "compact"
                || e.step.starts_with("defrag ")
                || e.step == "disarm_nospace")),
            "a repair step ran on a cluster not seen whole: {events:#?}"
        );
        assert!(r.snapshots().is_empty() || status == StatusCode::ACCEPTED);

        impairment.remove();
        // With netem the members' own traffic was impaired too: let them settle.
        etcd.wait_healthy(Duration::from_secs(60)).unwrap();

        // The leader behind the slow, lossy link, the two others seen well: the cluster is not seen
        // whole, so no repair; a snapshot and an escalation at most.
        // The leader, so that the member the remediator cannot see is the one the others
        // follow.
        let leader = leader_index(&endpoints).await;
        let leader_name = etcd.member(leader).name.clone();
        let partial = Impairment::through_proxies(&etcd, &[leader]).await;
        let alert = firing_space().replace("f146eb540a7ae47b", "fault-netem-partial");
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), r.post(&alert, None))
            .await
            .expect("the webhook hung on a slow network");
        let partly = body_summary(status, &body);
        let id = body["action_id"].as_str().unwrap_or_else(|| panic!("{partly}"));
        assert_eq!(body["diagnosis"], "member_unavailable", "{partly}");
        let run = r.wait_finished(id, Duration::from_secs(120)).await;
        let seen = step(&run, "plan", Phase::Info).unwrap();
        let members = seen.detail["cluster"]["members"].as_array().unwrap();
        let silent = members.iter().find(|m| m["name"] == leader_name.as_str()).unwrap();
        assert!(silent["status"].is_null(), "{seen:?}");
        assert!(
            members
                .iter()
                .filter(|m| m["name"] != leader_name.as_str())
                .all(|m| !m["status"].is_null()),
            "{seen:?}"
        );
        // The cluster still commits: not called a lost quorum (no restore, no advice to
        // restore by hand), and no run without the cross-replica lock.
        let diagnosis = step(&run, "diagnosis", Phase::Info).unwrap();
        assert_eq!(diagnosis.detail["quorum"], true, "{diagnosis:?}");
        assert!(!run.iter().any(|e| e.step == "lock"), "{run:#?}");
        let why = silent["error"].as_str().unwrap();
        assert!(timed_out(why), "{why}");
        assert!(step(&run, "snapshot", Phase::Ok).is_some(), "{run:#?}");
        assert!(step(&run, "escalate", Phase::Ok).is_some(), "{run:#?}");
        assert!(
            run.iter().all(|e| !(e.step == "compact"
                || e.step.starts_with("defrag ")
                || e.step == "disarm_nospace")),
            "a repair step ran on a cluster not seen whole: {run:#?}"
        );
        partial.remove();
        // The run lets go of its slot after its last event: wait for that.
        tokio::time::timeout(Duration::from_secs(60), r.app.gate.idle())
            .await
            .expect("the run never let go of its slot");

        // The network whole again: the next alert repairs.
        let healed = Instant::now();
        let alert = firing_space().replace("f146eb540a7ae47b", "fault-netem-2");
        let (status, body) = r.post(&alert, None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["action_id"].as_str().unwrap().to_owned();
        let events = r.wait_finished(&id, Duration::from_secs(120)).await;
        assert_eq!(
            step(&events, "verify", Phase::Ok).unwrap().detail["verdict"],
            "healthy",
            "{events:#?}"
        );
        let mut c = client(&endpoints).await;
        let after = seeded(&mut c).await;
        assert_eq!(after, before, "keys lost or changed");
        eprintln!(
            "fault-drill: slow network: keys {} before, {} after; a Status took {:.2}s; the webhook answered in {:.1}s under the impairment ({}); one member impaired: {}; repaired {:.1}s after it was removed",
            before.0,
            after.0,
            round_trip.as_secs_f64(),
            answered.as_secs_f64(),
            impaired,
            partly,
            healed.elapsed().as_secs_f64()
        );
    });
}

/// True when `text` says a deadline fired (ours, or the gRPC call's or connect's).
fn timed_out(text: &str) -> bool {
    let text = text.to_lowercase();
    [
        "timed out",
        "timedout",
        "timeout expired",
        "no answer within",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// Index of the member that leads now.
async fn leader_index(endpoints: &[String]) -> usize {
    for (i, endpoint) in endpoints.iter().enumerate() {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        let status = c.status().await.unwrap();
        if status.header().unwrap().member_id() == status.leader() {
            return i;
        }
    }
    panic!("no member leads");
}

/// How long one Status takes on a new connection to `endpoint` (bounded by 10 s).
async fn status_round_trip(endpoint: &str) -> Duration {
    let started = Instant::now();
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(10));
    let mut c = etcd_client::Client::connect([endpoint], Some(options))
        .await
        .unwrap();
    c.status().await.unwrap();
    started.elapsed()
}

fn body_summary(status: StatusCode, body: &serde_json::Value) -> String {
    format!("{status}: {body}").chars().take(300).collect()
}
