//! One progress line on stderr: rewritten in place on a terminal, a plain line every few
//! seconds otherwise (logs and CI output stay readable).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::ctx::Ctx;
use crate::size::human;
use crate::stats::Totals;

const TERMINAL_EVERY: Duration = Duration::from_millis(250);
const PLAIN_EVERY: Duration = Duration::from_secs(10);
/// Carriage return and erase-line: the next line replaces this one.
const REWRITE: &str = "\r\x1b[2K";

/// Runs until the run stops, then clears its line.
pub fn spawn(ctx: Arc<Ctx>, scenario: &'static str) -> JoinHandle<()> {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        TERMINAL_EVERY
    } else {
        PLAIN_EVERY
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                () = ctx.stop.stopped() => break,
                _ = ticks.tick() => {}
            }
            let text = line(
                scenario,
                ctx.started.elapsed(),
                ctx.load.duration,
                ctx.stats.totals(),
            );
            if terminal {
                eprint!("{REWRITE}{text}");
            } else {
                eprintln!("{text}");
            }
        }
        if terminal {
            eprint!("{REWRITE}");
        }
    })
}

fn line(scenario: &str, elapsed: Duration, duration: Duration, totals: Totals) -> String {
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    format!(
        "{scenario} {:.1}s/{:.0}s  ops {} ({:.0}/s)  errors {}  written {}",
        elapsed.as_secs_f64(),
        duration.as_secs_f64(),
        totals.ops,
        totals.ops as f64 / seconds,
        totals.errors,
        human(totals.bytes_written),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_time_rate_errors_and_bytes() {
        let totals = Totals {
            ops: 250,
            errors: 3,
            bytes_written: 3 << 20,
        };
        assert_eq!(
            line(
                "churn",
                Duration::from_millis(2500),
                Duration::from_secs(60),
                totals
            ),
            "churn 2.5s/60s  ops 250 (100/s)  errors 3  written 3.0 MiB"
        );
    }
}
