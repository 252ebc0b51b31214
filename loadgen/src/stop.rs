//! Why and when a run ends. The first reason wins; every task watches the same flag, so
//! Ctrl-C, the deadline, the byte budget and NOSPACE all stop the run the same way.

use serde::Serialize;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// `--max-bytes` sent.
    MaxBytes,
    /// etcd refused a write for lack of space (bigkey's expected end).
    Nospace,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// An error that retrying cannot fix (request too large, permission denied, ...).
    FatalError,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Duration => "duration",
            StopReason::MaxBytes => "max_bytes",
            StopReason::Nospace => "nospace",
            StopReason::Interrupted => "interrupted",
            StopReason::FatalError => "fatal_error",
        }
    }
}

#[derive(Debug)]
pub struct Stop(watch::Sender<Option<StopReason>>);

impl Default for Stop {
    fn default() -> Self {
        Self(watch::Sender::new(None))
    }
}

impl Stop {
    /// Ends the run unless it has already ended for another reason.
    pub fn stop(&self, reason: StopReason) {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    pub fn reason(&self) -> Option<StopReason> {
        *self.0.borrow()
    }

    /// Resolves once the run has ended (at once if it already has).
    pub async fn stopped(&self) {
        self.wait_for(Option::is_some).await;
    }

    /// Resolves once the run has been interrupted (Ctrl-C, SIGTERM).
    pub async fn interrupted(&self) {
        self.wait_for(|reason| *reason == Some(StopReason::Interrupted))
            .await;
    }

    async fn wait_for(&self, done: impl FnMut(&Option<StopReason>) -> bool) {
        let mut rx = self.0.subscribe();
        // Cannot fail: `self` holds the sender.
        let _ = rx.wait_for(done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_wakes_waiters() {
        let stop = std::sync::Arc::new(Stop::default());
        let waiter = tokio::spawn({
            let stop = stop.clone();
            async move { stop.stopped().await }
        });
        assert_eq!(stop.reason(), None);
        stop.stop(StopReason::Nospace);
        stop.stop(StopReason::Interrupted);
        assert_eq!(stop.reason(), Some(StopReason::Nospace));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // Later waiters return at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), stop.stopped())
            .await
            .unwrap();
        let not_interrupted =
            tokio::time::timeout(std::time::Duration::from_millis(50), stop.interrupted()).await;
        assert!(not_interrupted.is_err(), "NOSPACE is not an interruption");
    }
}
