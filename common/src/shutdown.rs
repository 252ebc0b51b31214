//! The signal that starts a graceful drain: SIGTERM (Kubernetes) or Ctrl-C (a person).

/// Resolves on the first SIGTERM or SIGINT. If the handler cannot be installed the
/// future never resolves for that signal; the other still works.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C, draining"),
        () = terminate => tracing::info!("received SIGTERM, draining"),
    }
}

/// Turns a one-shot `shutdown` into a flag every task can read (`*flag.borrow()`) or wait
/// on (`flag.wait_for(|stopped| *stopped)`): it turns true once `shutdown` resolves.
pub fn flag(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn the_flag_turns_true_for_every_watcher_when_shutdown_resolves() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = super::flag(async move {
            let _ = rx.await;
        });
        let mut watcher = stop.clone();
        assert!(!*stop.borrow());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watcher.wait_for(|stopped| *stopped))
            .await
            .unwrap()
            .unwrap();
        assert!(*stop.borrow());
    }
}
