//! Times `exposition::parse` on one page for `collector/bench/compare_python.sh`: prints
//! the median seconds per parse over N parses, then the family and sample counts.
//!
//! Usage: `cargo run --release -p dr-collector --example parse_timing -- FILE N`

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use dr_collector::exposition::parse;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, iterations) = match args.as_slice() {
        [path, n] => match n.parse::<usize>() {
            Ok(n) if n > 0 => (path, n),
            _ => return usage(),
        },
        _ => return usage(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("parse_timing: cannot read {path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (families, samples) = match parse(&text) {
        Ok(families) => (
            families.len(),
            families
                .iter()
                .map(|family| family.samples.len())
                .sum::<usize>(),
        ),
        Err(err) => {
            eprintln!("parse_timing: {path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Warm caches and the allocator the way the Python side's first parse does.
    for _ in 0..iterations.min(20) {
        let _ = black_box(parse(black_box(&text)));
    }
    let mut seconds: Vec<f64> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            // Freeing the families is part of a parse's cost, as it is in Python.
            let _ = black_box(parse(black_box(&text)));
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    let median = seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN);
    println!("{median:.9} {families} {samples}");
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: parse_timing FILE ITERATIONS");
    ExitCode::from(2)
}
