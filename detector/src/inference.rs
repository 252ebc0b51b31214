//! The serving forward pass: the same LSTM autoencoder as `model`, from the same
//! safetensors, on plain f32 slices. All encoder input projections are one matrix product
//! up front; the decoder's input is constant (the repeated encoder state), so its
//! projection is computed once; what is left per step is a tight `h x 4h` recurrence.
//! It runs on the caller's thread and never touches candle or its thread pool.

use anyhow::{Context, bail};

use crate::model::Architecture;
use crate::model_dir::ModelBundle;
use crate::scoring::{self, Score};

/// Weights laid out for the loops below: matrices transposed so the inner loop walks
/// contiguous memory, and the two LSTM biases summed.
#[derive(Clone, Debug)]
pub struct FusedModel {
    window: usize,
    n_features: usize,
    hidden: usize,
    /// `[F][4H]`
    enc_wih_t: Vec<f32>,
    /// `[H][4H]`
    enc_whh_t: Vec<f32>,
    enc_bias: Vec<f32>,
    /// `[H][4H]`
    dec_wih_t: Vec<f32>,
    /// `[H][4H]`
    dec_whh_t: Vec<f32>,
    dec_bias: Vec<f32>,
    /// `[H][F]`
    out_w_t: Vec<f32>,
    out_bias: Vec<f32>,
}

fn read_tensor(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> anyhow::Result<Vec<f32>> {
    let view = st
        .tensor(name)
        .with_context(|| format!("model.safetensors has no tensor `{name}`"))?;
    if view.dtype() != safetensors::Dtype::F32 {
        bail!("tensor `{name}` is {:?}, expected F32", view.dtype());
    }
    if view.shape() != shape {
        bail!(
            "tensor `{name}` has shape {:?}, the architecture needs {shape:?}",
            view.shape()
        );
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// `rows x cols` row-major to `cols x rows`.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `e^x` for f32 without a libm call: range reduction to `2^k * e^r` and a degree-6
/// polynomial (Cephes' expf coefficients), about 1 ulp. Branch-free, so the gate loops
/// below vectorise; the transcendental functions are most of an LSTM step's time.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick: `round`/`floor` are libm calls on
    // baseline x86-64 and would stop the loop from vectorising.
    const MAGIC: f32 = 12_582_912.0;
    let k = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.0e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 / (1.0 + exp(-2.0 * x)) - 1.0
}

impl FusedModel {
    pub fn from_safetensors(
        arch: &Architecture,
        window: usize,
        bytes: &[u8],
    ) -> anyhow::Result<FusedModel> {
        let st =
            safetensors::SafeTensors::deserialize(bytes).context("reading model.safetensors")?;
        let (f, h) = (arch.n_features, arch.hidden);
        let get = |name: &str, shape: &[usize]| read_tensor(&st, name, shape);
        let sum = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(x, y)| x + y).collect();
        Ok(FusedModel {
            window,
            n_features: f,
            hidden: h,
            enc_wih_t: transpose(&get("encoder.weight_ih_l0", &[4 * h, f])?, 4 * h, f),
            enc_whh_t: transpose(&get("encoder.weight_hh_l0", &[4 * h, h])?, 4 * h, h),
            enc_bias: sum(
                get("encoder.bias_ih_l0", &[4 * h])?,
                get("encoder.bias_hh_l0", &[4 * h])?,
            ),
            dec_wih_t: transpose(&get("decoder.weight_ih_l0", &[4 * h, h])?, 4 * h, h),
            dec_whh_t: transpose(&get("decoder.weight_hh_l0", &[4 * h, h])?, 4 * h, h),
            dec_bias: sum(
                get("decoder.bias_ih_l0", &[4 * h])?,
                get("decoder.bias_hh_l0", &[4 * h])?,
            ),
            out_w_t: transpose(&get("output.weight", &[f, h])?, f, h),
            out_bias: get("output.bias", &[f])?,
        })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// One LSTM step: `gates` holds the input projection plus bias on entry.
    fn step(&self, whh_t: &[f32], gates: &mut [f32], h: &mut [f32], c: &mut [f32]) {
        let hd = self.hidden;
        for (&hk, row) in h.iter().zip(whh_t.chunks_exact(4 * hd)) {
            for (g, &w) in gates.iter_mut().zip(row) {
                *g += hk * w;
            }
        }
        // PyTorch's gate order: input, forget, cell, output.
        let (i_gate, rest) = gates.split_at_mut(hd);
        let (f_gate, rest) = rest.split_at_mut(hd);
        let (g_gate, o_gate) = rest.split_at_mut(hd);
        i_gate.iter_mut().for_each(|v| *v = sigmoid(*v));
        f_gate.iter_mut().for_each(|v| *v = sigmoid(*v));
        g_gate.iter_mut().for_each(|v| *v = tanh(*v));
        o_gate.iter_mut().for_each(|v| *v = sigmoid(*v));
        for ((c, h), (((&i, &f), &g), &o)) in c.iter_mut().zip(h.iter_mut()).zip(
            i_gate
                .iter()
                .zip(f_gate.iter())
                .zip(g_gate.iter())
                .zip(o_gate.iter()),
        ) {
            *c = f * *c + i * g;
            *h = o * tanh(*c);
        }
    }

    /// Reconstructs one normalised step-major window (`window * n_features` values).
    pub fn reconstruct(&self, x: &[f32]) -> Vec<f32> {
        let (w, f, hd) = (self.window, self.n_features, self.hidden);
        let g4 = 4 * hd;
        // Encoder input projections for every step at once: [W][4H].
        let mut projections = Vec::with_capacity(w * g4);
        for t in 0..w {
            projections.extend_from_slice(&self.enc_bias);
            let dst = &mut projections[t * g4..(t + 1) * g4];
            for (j, &xv) in x[t * f..(t + 1) * f].iter().enumerate() {
                for (p, &wv) in dst.iter_mut().zip(&self.enc_wih_t[j * g4..(j + 1) * g4]) {
                    *p += xv * wv;
                }
            }
        }
        let mut h = vec![0.0f32; hd];
        let mut c = vec![0.0f32; hd];
        for gates in projections.chunks_exact_mut(g4) {
            self.step(&self.enc_whh_t, gates, &mut h, &mut c);
        }
        // The decoder's input is the final encoder state at every step.
        let mut dec_in = self.dec_bias.clone();
        for (k, &hk) in h.iter().enumerate() {
            for (p, &wv) in dec_in.iter_mut().zip(&self.dec_wih_t[k * g4..(k + 1) * g4]) {
                *p += hk * wv;
            }
        }
        h.fill(0.0);
        c.fill(0.0);
        let mut gates = vec![0.0f32; g4];
        let mut out = Vec::with_capacity(w * f);
        for _ in 0..w {
            gates.copy_from_slice(&dec_in);
            self.step(&self.dec_whh_t, &mut gates, &mut h, &mut c);
            let start = out.len();
            out.extend_from_slice(&self.out_bias);
            let row = &mut out[start..start + f];
            for (k, &hk) in h.iter().enumerate() {
                for (o, &wv) in row.iter_mut().zip(&self.out_w_t[k * f..(k + 1) * f]) {
                    *o += hk * wv;
                }
            }
        }
        out
    }
}

/// Why a raw window cannot be scored; the message is meant for the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WindowError {
    #[error("the window is empty; send {window} steps of {features} features")]
    Empty { window: usize, features: usize },
    #[error("the window has {got} steps; the model needs exactly {window}")]
    Steps { got: usize, window: usize },
    #[error("step {step} has {got} values; the model needs {features} ({names})")]
    Features {
        step: usize,
        got: usize,
        features: usize,
        names: String,
    },
    #[error("step {step}, feature `{feature}` is not a finite number")]
    NonFinite { step: usize, feature: String },
    #[error("every step of the window is masked (a defrag was in flight throughout)")]
    AllMasked,
}

/// A model ready to score raw windows: model.json plus the fused weights.
#[derive(Clone, Debug)]
pub struct Scorer {
    pub bundle: ModelBundle,
    fused: FusedModel,
}

impl Scorer {
    pub fn new(bundle: ModelBundle) -> anyhow::Result<Scorer> {
        let meta = &bundle.meta;
        let fused = FusedModel::from_safetensors(&meta.architecture, meta.window, &bundle.weights)
            .with_context(|| format!("loading the weights of model {}", bundle.source))?;
        Ok(Scorer { bundle, fused })
    }

    pub fn window(&self) -> usize {
        self.fused.window
    }

    pub fn n_features(&self) -> usize {
        self.fused.n_features
    }

    pub fn threshold(&self) -> f64 {
        self.bundle.meta.threshold
    }

    /// Checks a client's `[W][F]` window and flattens it step-major.
    pub fn check_window(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>, WindowError> {
        let (window, features) = (self.window(), self.n_features());
        if rows.is_empty() {
            return Err(WindowError::Empty { window, features });
        }
        if rows.len() != window {
            return Err(WindowError::Steps {
                got: rows.len(),
                window,
            });
        }
        let mut flat = Vec::with_capacity(window * features);
        for (step, row) in rows.iter().enumerate() {
            if row.len() != features {
                return Err(WindowError::Features {
                    step,
                    got: row.len(),
                    features,
                    names: self.bundle.meta.feature_names().join(", "),
                });
            }
            for (j, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    return Err(WindowError::NonFinite {
                        step,
                        feature: self.bundle.meta.features[j].name.clone(),
                    });
                }
            }
            flat.extend_from_slice(row);
        }
        Ok(flat)
    }

    /// Scores a raw step-major window of the right size; `mask` marks defrag steps.
    pub fn score(&self, values: &[f64], mask: &[bool]) -> Result<Score, WindowError> {
        let (window, features) = (self.bundle.meta.window, self.bundle.meta.features.len());
        if values.len() != window * features || mask.len() != window {
            return Err(WindowError::Steps {
                got: mask.len(),
                window,
            });
        }
        let x = scoring::prepare(values, mask, &self.bundle.meta.normalisation)
            .ok_or(WindowError::AllMasked)?;
        let recon = self.fused.reconstruct(&x);
        Ok(scoring::score_reconstruction(&x, &recon, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Autoencoder, init_varmap, varmap_to_safetensors};

    #[test]
    fn fused_forward_agrees_with_candle() {
        let (f, h, w) = (9, 32, 30);
        let arch = Architecture::new(f, h);
        let bytes = varmap_to_safetensors(&init_varmap(&arch, 11).unwrap()).unwrap();
        let candle = Autoencoder::from_safetensors(&arch, &bytes).unwrap();
        let fused = FusedModel::from_safetensors(&arch, w, &bytes).unwrap();
        let windows: Vec<Vec<f32>> = (0..4)
            .map(|k| {
                (0..w * f)
                    .map(|i| ((i * 7 + k * 13) as f32 * 0.11).sin() * (1.0 + k as f32))
                    .collect()
            })
            .collect();
        let expected = candle.reconstruct(&windows, w, f).unwrap();
        for (x, want) in windows.iter().zip(&expected) {
            let got = fused.reconstruct(x);
            assert_eq!(got.len(), w * f);
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "fused and candle differ by {worst}");
            let (sa, sb) = (
                scoring::score_reconstruction(x, &got, &vec![false; w]).score,
                scoring::score_reconstruction(x, want, &vec![false; w]).score,
            );
            assert!((sa - sb).abs() < 1e-5, "{sa} vs {sb}");
        }
    }

    /// The shipped weights, on etcd-shaped windows: what ci/check-detector-reference.sh
    /// compares with numpy goes through the fused forward, and this ties it to candle.
    #[test]
    fn fused_forward_agrees_with_candle_on_the_shipped_model() {
        use crate::dataset::Dataset;
        use crate::synth::{SynthOptions, generate};
        let bundle = ModelBundle::default_model().unwrap();
        let meta = &bundle.meta;
        let (w, f) = (meta.window, meta.features.len());
        let candle = Autoencoder::from_safetensors(&meta.architecture, &bundle.weights).unwrap();
        let fused = FusedModel::from_safetensors(&meta.architecture, w, &bundle.weights).unwrap();
        let data = Dataset::parse(&generate(&SynthOptions {
            rows: 1500,
            step_seconds: meta.step_seconds,
            seed: 9,
            incidents: 3,
        }))
        .unwrap()
        .select_features(&meta.feature_names())
        .unwrap();
        let starts = data.window_starts(w, meta.step_seconds);
        let windows: Vec<Vec<f32>> = starts
            .iter()
            .step_by((starts.len() / 12).max(1))
            .filter_map(|&s| {
                let mask = data.window_mask(s, w);
                scoring::prepare(&data.window_values(s, w), &mask, &meta.normalisation)
            })
            .collect();
        assert!(windows.len() >= 10);
        let expected = candle.reconstruct(&windows, w, f).unwrap();
        for (x, want) in windows.iter().zip(&expected) {
            let got = fused.reconstruct(x);
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "fused and candle differ by {worst}");
        }
    }

    #[test]
    fn fast_exp_tanh_and_sigmoid_match_the_library() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < 1e-6, "exp({x}): {rel}");
            assert!((tanh(x) - x.tanh()).abs() < 1e-6, "tanh({x})");
            assert!(
                (sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6,
                "sigmoid({x})"
            );
        }
        // Far outside the range: clamped, finite, and the sigmoid saturates cleanly.
        assert!((0.0..1e-37).contains(&exp(-1000.0)));
        assert!(exp(1000.0).is_finite());
        assert!(sigmoid(-1000.0) < 1e-37 && sigmoid(1000.0) == 1.0);
    }

    #[test]
    fn wrong_weights_are_refused_by_name() {
        let bytes =
            varmap_to_safetensors(&init_varmap(&Architecture::new(3, 4), 1).unwrap()).unwrap();
        let err = FusedModel::from_safetensors(&Architecture::new(3, 5), 10, &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("encoder.weight_ih_l0"), "{err}");
        assert!(FusedModel::from_safetensors(&Architecture::new(3, 4), 10, b"junk").is_err());
    }
}
