//! One forward pass of the default model on one window, as `/score` runs it, and the
//! baseline x86-64 build of the same pass (what a CPU without AVX2 and FMA runs).
//! `cargo bench -p dr-detector --bench inference`

use criterion::{Criterion, criterion_group, criterion_main};
use dr_detector::model::fused::FusedModel;
use dr_detector::model::inference::Scorer;
use dr_detector::model::model_dir::ModelBundle;
use dr_detector::model::scoring;
use dr_detector::training::dataset::Dataset;
use dr_detector::training::synth::{SynthOptions, generate};

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
        load_scale: 1.0,
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

    let fused =
        match FusedModel::from_safetensors(&meta.architecture, meta.window, &scorer.bundle.weights)
        {
            Ok(fused) => fused,
            Err(err) => panic!("the default weights must load: {err:#}"),
        };
    let Some(x) = scoring::prepare(&values, &mask, &meta.normalisation) else {
        panic!("an unmasked window must normalise")
    };
    c.bench_function("inference_portable", |b| {
        b.iter(|| fused.reconstruct_portable(std::hint::black_box(&x)))
    });
}

criterion_group!(benches, inference);
criterion_main!(benches);
