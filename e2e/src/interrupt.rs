//! Ctrl-C and SIGTERM set a flag that every wait checks, so the drill unwinds and its
//! guards stop exactly the processes it started.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// The error every wait returns once interrupted; callers tell it from a failure with
/// [`is_interrupted`].
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

pub fn is_interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Interrupted>())
}

/// An error once interrupted: call it in every loop.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Sleeps in slices short enough that an interrupt is honoured within 100 ms.
pub fn sleep(duration: std::time::Duration) -> anyhow::Result<()> {
    const SLICE: std::time::Duration = std::time::Duration::from_millis(100);
    let until = std::time::Instant::now() + duration;
    loop {
        check()?;
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(SLICE));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn sleep_wakes_for_an_interrupt() {
        let started = Instant::now();
        let waker = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            super::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let slept = super::sleep(Duration::from_secs(30));
        waker.join().unwrap();
        super::INTERRUPTED.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(
            slept.as_ref().is_err_and(super::is_interrupted),
            "an interrupted sleep must say so: {slept:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
