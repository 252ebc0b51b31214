//! The root-only fault tools: a network namespace of the test's own (its loopback up,
//! whatever was left running in it killed and the namespace deleted on drop) and a small
//! tmpfs (full at its size, grown by `resize`, unmounted on drop). Each is skipped, saying
//! why, only when it cannot be created here (not root).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use dr_testkit::{NetNs, Tmpfs, run_within};

#[test]
fn a_namespace_has_its_loopback_up_and_takes_what_runs_in_it_when_dropped() {
    let ns = match NetNs::create("dr-testkit") {
        Ok(ns) => ns,
        Err(err) => {
            eprintln!("SKIPPED: cannot create a network namespace: {err:#}");
            return;
        }
    };
    let name = ns.name().to_owned();
    let link = run_within(
        ns.command("ip").args(["-o", "link", "show", "lo"]),
        Duration::from_secs(10),
    )
    .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains("UP"), "{link}");
    // `ip netns exec` runs the program in its own place: the PID is this child's.
    let mut left = ns.command("sleep").arg("60").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.pids().contains(&left.id()) {
        assert!(Instant::now() < deadline, "sleep never showed in {name}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = left.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = left.kill();
            let _ = left.wait();
            panic!("the process left in {name} outlived it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
    let list = run_within(
        std::process::Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
}

#[test]
fn a_tmpfs_fills_at_its_size_grows_and_is_unmounted_when_dropped() {
    let tmpfs = match Tmpfs::mount("64k") {
        Ok(t) => t,
        Err(err) => {
            eprintln!("SKIPPED: cannot mount a tmpfs: {err:#}");
            return;
        }
    };
    let root = tmpfs.path().to_path_buf();
    let big = vec![7u8; 256 * 1024];
    let full = std::fs::write(root.join("big"), &big).unwrap_err();
    assert_eq!(full.raw_os_error(), Some(28), "{full}"); // ENOSPC
    tmpfs.resize("1m").unwrap();
    std::fs::write(root.join("big"), &big).unwrap();
    drop(tmpfs);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&root.display().to_string()),
        "still mounted: {mounts}"
    );
    assert!(!root.exists());
}
