//! One window scored by the default (format 2) model as `/score` scores it (transforms,
//! the instance's baseline, the fused forward pass, calibrated per-feature errors and
//! their max), and the baseline x86-64 build of the pass (what a CPU without AVX2 and FMA
//! runs).
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
    // As serving scores a live window: against its instance's own baseline.
    let Some(baseline) = scorer.instance_baseline(&data.rows, None) else {
        panic!("the default model is format 2 and has instance baselines")
    };
    c.bench_function("inference", |b| {
        b.iter(|| scorer.score_against(std::hint::black_box(&values), &mask, Some(&baseline)))
    });

    let fused =
        match FusedModel::from_safetensors(&meta.architecture, meta.window, &scorer.bundle.weights)
        {
            Ok(fused) => fused,
            Err(err) => panic!("the default weights must load: {err:#}"),
        };
    let transforms = meta
        .scoring_v2
        .as_ref()
        .map_or(&[][..], |v2| v2.transforms.as_slice());
    let Some(x) = scoring::prepare_v2(&values, &mask, transforms, &baseline) else {
        panic!("an unmasked window must normalise")
    };
    c.bench_function("inference_portable", |b| {
        b.iter(|| fused.reconstruct_portable(std::hint::black_box(&x)))
    });
}

criterion_group!(benches, inference);
criterion_main!(benches);
