//! Pacing: every task takes the next slot of one fixed schedule, `1/rate` apart. A task
//! that comes late by up to `MAX_LAG` keeps its place (timer and scheduling jitter, a slow
//! request now and then); later than that the schedule restarts from now, so a stalled
//! etcd sees fewer requests, never a flood of catch-up slots when it recovers.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How far behind the schedule may run and still be caught up.
const MAX_LAG: Duration = Duration::from_millis(25);

#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// `rate` is operations per second, positive and finite (the config checks).
    pub fn new(rate: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(None),
        }
    }

    /// Takes the next free slot, which is at most `MAX_LAG` in the past.
    pub fn reserve(&self, now: Instant) -> Instant {
        // The guarded value is a plain Instant, valid even if a holder panicked.
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let earliest = now.checked_sub(MAX_LAG).unwrap_or(now);
        let slot = next.map_or(now, |next| next.max(earliest));
        *next = Some(slot + self.interval);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced_when_everyone_asks_at_once() {
        let pacer = Pacer::new(100.0);
        let now = Instant::now();
        let slots: Vec<_> = (0..5).map(|_| pacer.reserve(now)).collect();
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(*slot, now + Duration::from_millis(10) * i as u32);
        }
    }

    #[test]
    fn a_pause_does_not_turn_into_a_burst() {
        let pacer = Pacer::new(100.0);
        let start = Instant::now();
        pacer.reserve(start);
        let later = start + Duration::from_secs(1);
        let slots: Vec<_> = (0..10).map(|_| pacer.reserve(later)).collect();
        let due_now = slots.iter().filter(|slot| **slot <= later).count();
        // A second of missed slots, but only MAX_LAG's worth (25 ms at 10 ms) is due.
        assert_eq!(due_now, 3);
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(10));
        }
    }

    /// Four tasks, each asking again as soon as its slot has come and its call is done;
    /// returns how many slots fell within one simulated second.
    fn simulate(rate: f64, call: impl Fn(usize) -> Duration) -> usize {
        let pacer = Pacer::new(rate);
        let start = Instant::now();
        let end = start + Duration::from_secs(1);
        let mut free_at = [start; 4];
        let mut ops = 0;
        loop {
            let (task, &asks) = free_at.iter().enumerate().min_by_key(|(_, t)| **t).unwrap();
            let slot = pacer.reserve(asks);
            if slot >= end {
                return ops;
            }
            free_at[task] = slot.max(asks) + call(ops);
            ops += 1;
        }
    }

    #[test]
    fn holds_the_rate_not_what_the_tasks_could_do() {
        // 3 ms calls: four tasks could do 1333/s.
        assert_eq!(simulate(250.0, |_| Duration::from_millis(3)), 250);
    }

    #[test]
    fn holds_the_rate_through_occasional_slow_calls() {
        // Every 40 calls, four in a row take 20 ms: all tasks busy, the schedule slips
        // 12 ms behind, and catching up keeps the rate.
        let slow = |n: usize| (n / 4) % 10 == 0;
        let ops = simulate(500.0, |n| {
            Duration::from_millis(if slow(n) { 20 } else { 3 })
        });
        assert!((495..=500).contains(&ops), "{ops} of 500");
    }
}
