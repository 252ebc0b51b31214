//! Criterion benchmarks of the exposition parser and writer on a real etcd 3.4.23 page
//! (146 KB, 123 families, 1246 samples), the page the collector scrapes every interval.

use std::hint::black_box;
use std::process::exit;

use criterion::{Criterion, criterion_group, criterion_main};
use dr_collector::exposition::{parse, write};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/etcd-3.4.23-metrics.txt"
);

fn exposition(c: &mut Criterion) {
    let text = match std::fs::read_to_string(FIXTURE) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("cannot read {FIXTURE}: {err}");
            exit(1);
        }
    };
    // Dropping the families is part of the cost of a scrape, so it stays in the timing.
    c.bench_function("parse_etcd_metrics", |b| b.iter(|| parse(black_box(&text))));

    let families = match parse(&text) {
        Ok(families) => families,
        Err(err) => {
            eprintln!("{FIXTURE}: {err}");
            exit(1);
        }
    };
    let mut out = String::with_capacity(text.len());
    c.bench_function("write_etcd_metrics", |b| {
        b.iter(|| {
            out.clear();
            write(black_box(&families), &mut out, false);
            out.len()
        })
    });
}

criterion_group!(benches, exposition);
criterion_main!(benches);
