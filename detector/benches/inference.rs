//! One forward pass of the default model on one window, as `/score` runs it, the same
//! weights scored as a format 2 model (transforms, baseline, calibrated per-feature max),
//! and the baseline x86-64 build of the pass (what a CPU without AVX2 and FMA runs).
//! `cargo bench -p dr-detector --bench inference`

use criterion::{Criterion, criterion_group, criterion_main};
use dr_detector::model::fused::FusedModel;
use dr_detector::model::inference::Scorer;
use dr_detector::model::model_dir::{FORMAT_VERSION_2, ModelBundle, ScoringV2};
use dr_detector::model::scoring;
use dr_detector::model::transform;
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

    // The same weights as a format 2 model: transforms, a baseline and the calibrated
    // per-feature max over the last steps instead of the window's mean squared error.
    let mut v2 = scorer.bundle.clone();
    v2.meta.format_version = FORMAT_VERSION_2;
    let treatments: Vec<_> = meta
        .features
        .iter()
        .map(|f| transform::treatment(&f.name, meta.step_seconds).0)
        .collect();
    v2.meta.scoring_v2 = Some(ScoringV2 {
        transforms: treatments.iter().map(|t| t.transform).collect(),
        scored: treatments.iter().map(|t| t.scored).collect(),
        tail_steps: 5,
        calibration: vec![1.0; meta.features.len()],
        calibration_quantile: 0.99,
        calibration_floor: 1.0,
        max_false_alarms_per_1000: 0.5,
        alert_for_steps: 10,
        calibration_false_alarms_per_1000: 0.0,
        data_files: Vec::new(),
    });
    let v2 = match Scorer::new(v2) {
        Ok(scorer) => scorer,
        Err(err) => panic!("the format 2 variant must load: {err:#}"),
    };
    let Some(baseline) = v2.instance_baseline(&data.rows, None) else {
        panic!("a format 2 model has instance baselines")
    };
    c.bench_function("inference_v2", |b| {
        b.iter(|| v2.score_against(std::hint::black_box(&values), &mask, Some(&baseline)))
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
