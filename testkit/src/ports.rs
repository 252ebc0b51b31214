//! Free loopback ports that do not collide across parallel tests.
//!
//! Binding `127.0.0.1:0` and releasing the port leaves a window in which the kernel can
//! hand the same port to someone else, most often as the ephemeral source port of an
//! outgoing connection (etcd peers open many). So ports are picked at random *below* the
//! kernel's ephemeral range, checked by binding them, and remembered process-wide so one
//! test binary never hands out the same port twice. Parallel test binaries pick from a
//! random spot in a ~10k-port range, which keeps cross-process collisions unlikely.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// Lowest port we hand out: above the well-known/registered ports that common services use.
const RANGE_FLOOR: u16 = 15000;

static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();

/// A loopback TCP port that was free when checked and has not been handed out before
/// in this process.
///
/// # Panics
/// Only if no port in the whole range can be bound, which means the machine is broken.
pub fn free_port() -> u16 {
    let handed = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    let (lo, hi) = candidate_range();
    let span = u32::from(hi - lo);
    let mut next = random_u32() % span;
    for _ in 0..span {
        let port = lo + (next % span) as u16;
        next = next.wrapping_add(1);
        let mut set = handed.lock().unwrap_or_else(|e| e.into_inner());
        if set.contains(&port) {
            continue;
        }
        if is_bindable(port) {
            set.insert(port);
            return port;
        }
    }
    // Fall back to whatever the kernel gives rather than failing a test run.
    let mut set = handed.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..64 {
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            && let Ok(addr) = listener.local_addr()
            && set.insert(addr.port())
        {
            return addr.port();
        }
    }
    panic!("no free loopback port found");
}

fn is_bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `[RANGE_FLOOR, start of the ephemeral range)`, or a sane default if /proc is unreadable.
fn candidate_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start > RANGE_FLOOR + 1000 {
        (RANGE_FLOOR, ephemeral_start)
    } else {
        // Unusual kernel setting: the ephemeral range starts low, so use the space above it.
        (61000, 65000)
    }
}

/// Randomness without a dependency: std's hasher keys are random per process.
fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_bindable() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| *p >= RANGE_FLOOR));
        assert!(is_bindable(ports[0]));
    }
}
