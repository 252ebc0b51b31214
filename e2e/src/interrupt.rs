//! Ctrl-C and SIGTERM set a flag that every wait checks, so the drill unwinds and its
//! guards stop exactly the processes it started.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handlers on `rt`.
pub fn install(rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    rt.spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("dr-drill: interrupted; stopping what the drill started");
    });
    Ok(())
}

/// An error once interrupted: call it in every loop.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn sleep(duration: std::time::Duration) -> anyhow::Result<()> {
    check()?;
    std::thread::sleep(duration);
    check()
}
