//! One forward pass of the default model on one window, as `/score` runs it.
//! `cargo bench -p dr-detector --bench inference`

use criterion::{Criterion, criterion_group, criterion_main};
use dr_detector::dataset::Dataset;
use dr_detector::inference::Scorer;
use dr_detector::model_dir::ModelBundle;
use dr_detector::synth::{SynthOptions, generate};

fn inference(c: &mut Criterion) {
    let scorer = match ModelBundle::default_model().and_then(Scorer::new) {
        Ok(scorer) => scorer,
        Err(err) => panic!("the default model must load: {err:#}"),
    };
    let meta = &scorer.bundle.meta;
    let csv = generate(&SynthOptions {
        rows: 200,
        step_seconds: meta.step_seconds,
        seed: 9,
        incidents: 0,
    });
    let data = match Dataset::parse(&csv) {
        Ok(data) => data,
        Err(err) => panic!("synthetic data must parse: {err:#}"),
    };
    let values = data.window_values(100, meta.window);
    let mask = vec![false; meta.window];
    c.bench_function("inference", |b| {
        b.iter(|| scorer.score(std::hint::black_box(&values), &mask))
    });
}

criterion_group!(benches, inference);
criterion_main!(benches);
