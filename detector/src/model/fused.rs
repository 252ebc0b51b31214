//! The serving forward pass: the same LSTM autoencoder as `lstm`, from the same
//! safetensors, on plain f32 slices. All encoder input projections are one matrix product
//! up front; the decoder's input is constant (the repeated encoder state), so its
//! projection is computed once; what is left per step is a tight `h x 4h` recurrence,
//! walked in column blocks whose sums stay in registers (see [`Blocked`]).
//! It runs on the caller's thread and never touches candle or its thread pool.
//!
//! On x86-64 with AVX2 and FMA (checked once at run time) the same code is compiled a
//! second time for those instructions: the default model's window took 145 µs on baseline
//! x86-64 (SSE2, 4 lanes, no fused multiply-add) and the recurrence alone cannot go much
//! under 80 µs there; the `inference` bench has the numbers. Calling that copy is the one
//! `unsafe` in the crate.

use anyhow::{Context, bail};

use crate::model::lstm::Architecture;

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
    enc_whh: Blocked,
    enc_bias: Vec<f32>,
    /// `[H][4H]`
    dec_wih_t: Vec<f32>,
    /// `[H][4H]`
    dec_whh: Blocked,
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

/// `out += x · M` for an input-major `M` (`x.len()` rows of `out.len()`): the projections
/// outside the recurrence, small enough that register blocking would not pay.
#[inline(always)]
fn add_product(x: &[f32], m: &[f32], out: &mut [f32]) {
    for (&xk, row) in x.iter().zip(m.chunks_exact(out.len())) {
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += xk * wv;
        }
    }
}

/// How a kernel multiplies and adds: [`Separate`] rounds twice, as baseline x86-64 must
/// (`mul_add` there is a libm call), [`Fused`] once, where the target has the instruction.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(target_arch = "x86_64")]
struct Fused;

#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// The forward pass compiled for AVX2 and FMA, for the CPUs that have them. The only
/// `unsafe` in the crate: a function compiled for instructions the CPU may lack is unsafe
/// to call (and, before Rust 1.86, to declare).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2_fma {
    use super::{Fused, FusedModel};

    pub fn available() -> bool {
        // Cached by std after the first call: one load and a test.
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Callers check [`available`] first.
    pub fn reconstruct(model: &FusedModel, x: &[f32]) -> Vec<f32> {
        debug_assert!(available());
        // SAFETY: `reconstruct_avx2_fma` uses AVX2 and FMA instructions and the caller
        // checked `available()` on this CPU; unchecked, the call could hit an illegal
        // instruction.
        unsafe { reconstruct_avx2_fma(model, x) }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reconstruct_avx2_fma(model: &FusedModel, x: &[f32]) -> Vec<f32> {
        model.reconstruct_with::<Fused>(x)
    }
}

/// Output columns summed together in registers: 32 floats are 8 SSE registers, enough
/// independent sums to hide the adds' latency on baseline x86-64, and few enough to stay
/// in the 16 registers with the weights being loaded.
const LANES: usize = 32;

/// A `rows x cols` matrix (input index major, as `transpose` leaves it) repacked as
/// `[cols / LANES][rows][LANES]`, the last block zero-padded. `x · M` then walks each block
/// once, top to bottom, with its `LANES` sums held in registers: the plain row-by-row loop
/// loaded and stored every sum once per input, twice the memory traffic per multiply-add.
/// Each sum still adds its inputs in order 0, 1, 2, ..., so results are unchanged to the bit.
#[derive(Clone, Debug)]
struct Blocked {
    rows: usize,
    cols: usize,
    packed: Vec<[f32; LANES]>,
}

impl Blocked {
    fn new(m: &[f32], rows: usize, cols: usize) -> Blocked {
        let blocks = cols.div_ceil(LANES);
        let mut packed = vec![[0.0; LANES]; blocks * rows];
        for b in 0..blocks {
            for r in 0..rows {
                for l in 0..LANES.min(cols - b * LANES) {
                    packed[b * rows + r][l] = m[r * cols + b * LANES + l];
                }
            }
        }
        Blocked { rows, cols, packed }
    }

    /// Length of the output buffer `accumulate` needs: `cols` rounded up to whole blocks.
    fn padded_cols(&self) -> usize {
        self.cols.div_ceil(LANES) * LANES
    }

    /// `out += x · M`; `out` is `padded_cols()` long (the padding receives zeros).
    #[inline(always)]
    fn accumulate<M: MulAdd>(&self, x: &[f32], out: &mut [f32]) {
        for (block, sums) in self
            .packed
            .chunks_exact(self.rows)
            .zip(out.chunks_exact_mut(LANES))
        {
            let mut acc = [0.0; LANES];
            acc.copy_from_slice(sums);
            for (&xk, w) in x.iter().zip(block) {
                for (a, &wv) in acc.iter_mut().zip(w) {
                    *a = M::mul_add(xk, wv, *a);
                }
            }
            sums.copy_from_slice(&acc);
        }
    }
}

/// `e^x` for f32 without a libm call: range reduction to `2^k * e^r` and a degree-6
/// polynomial (Cephes' expf coefficients), about 1 ulp. Branch-free, so the gate loops
/// below vectorise; with the recurrence, the gates' exponentials are most of a step's time.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick: `round`/`floor` are libm calls on
    // baseline x86-64 and would stop the loop from vectorising.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let k = shifted - MAGIC;
    // The same k as an integer, read off the mantissa (one ulp of `shifted` is 1): an
    // `as i32` cast saturates and maps NaN to 0, which x86 does lane by lane.
    let k_int = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.0e-1;
    let p = p * r * r + r + 1.0;
    // The clamp keeps k in -126..=127, a normal exponent.
    p * f32::from_bits(((k_int + 127) as u32) << 23)
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
        // PyTorch stores `[out][in]`; the loops want input-major.
        let transposed = |name: &str, rows: usize, cols: usize| {
            get(name, &[rows, cols]).map(|m| transpose(&m, rows, cols))
        };
        let recurrent = |name: &str| transposed(name, 4 * h, h).map(|m| Blocked::new(&m, h, 4 * h));
        let sum = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(x, y)| x + y).collect();
        Ok(FusedModel {
            window,
            n_features: f,
            hidden: h,
            enc_wih_t: transposed("encoder.weight_ih_l0", 4 * h, f)?,
            enc_whh: recurrent("encoder.weight_hh_l0")?,
            enc_bias: sum(
                get("encoder.bias_ih_l0", &[4 * h])?,
                get("encoder.bias_hh_l0", &[4 * h])?,
            ),
            dec_wih_t: transposed("decoder.weight_ih_l0", 4 * h, h)?,
            dec_whh: recurrent("decoder.weight_hh_l0")?,
            dec_bias: sum(
                get("decoder.bias_ih_l0", &[4 * h])?,
                get("decoder.bias_hh_l0", &[4 * h])?,
            ),
            out_w_t: transposed("output.weight", f, h)?,
            out_bias: get("output.bias", &[f])?,
        })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// One LSTM step: `gates` (`whh.padded_cols()` long) holds the input projection plus
    /// bias on entry.
    #[inline(always)]
    fn step<M: MulAdd>(&self, whh: &Blocked, gates: &mut [f32], h: &mut [f32], c: &mut [f32]) {
        let hd = self.hidden;
        whh.accumulate::<M>(h, gates);
        // PyTorch's gate order: input, forget, cell, output.
        let (i_gate, rest) = gates[..4 * hd].split_at_mut(hd);
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
        #[cfg(target_arch = "x86_64")]
        if avx2_fma::available() {
            return avx2_fma::reconstruct(self, x);
        }
        self.reconstruct_portable(x)
    }

    /// The baseline build of [`reconstruct`](Self::reconstruct), whatever the CPU has:
    /// what CPUs without AVX2 and FMA run (the tests and the bench run it everywhere).
    pub fn reconstruct_portable(&self, x: &[f32]) -> Vec<f32> {
        self.reconstruct_with::<Separate>(x)
    }

    /// [`reconstruct`](Self::reconstruct) with each multiply-add done as `M` does it;
    /// inlined whole into its caller, so the caller's target features decide the code.
    #[inline(always)]
    fn reconstruct_with<M: MulAdd>(&self, x: &[f32]) -> Vec<f32> {
        let (w, f, hd) = (self.window, self.n_features, self.hidden);
        let g4 = 4 * hd;
        // Encoder input projections for every step at once: [W][4H], each step's row
        // padded to whole blocks for the recurrence.
        let stride = self.enc_whh.padded_cols();
        let mut projections = vec![0.0f32; w * stride];
        for (t, dst) in projections.chunks_exact_mut(stride).enumerate() {
            let dst = &mut dst[..g4];
            dst.copy_from_slice(&self.enc_bias);
            add_product(&x[t * f..(t + 1) * f], &self.enc_wih_t, dst);
        }
        let mut h = vec![0.0f32; hd];
        let mut c = vec![0.0f32; hd];
        for gates in projections.chunks_exact_mut(stride) {
            self.step::<M>(&self.enc_whh, gates, &mut h, &mut c);
        }
        // The decoder's input is the final encoder state at every step.
        let mut dec_in = self.dec_bias.clone();
        add_product(&h, &self.dec_wih_t, &mut dec_in);
        h.fill(0.0);
        c.fill(0.0);
        let mut gates = vec![0.0f32; self.dec_whh.padded_cols()];
        let mut out = Vec::with_capacity(w * f);
        for _ in 0..w {
            gates[..g4].copy_from_slice(&dec_in);
            self.step::<M>(&self.dec_whh, &mut gates, &mut h, &mut c);
            let start = out.len();
            out.extend_from_slice(&self.out_bias);
            add_product(&h, &self.out_w_t, &mut out[start..start + f]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lstm::{Autoencoder, init_varmap, varmap_to_safetensors};
    use crate::model::model_dir::ModelBundle;
    use crate::model::scoring;

    #[test]
    fn fused_forward_agrees_with_candle() {
        // Whole blocks of gate columns, one padded block, and a padded second block.
        for (f, h) in [(9, 32), (3, 5), (4, 9)] {
            fused_agrees_with_candle(f, h);
        }
    }

    fn fused_agrees_with_candle(f: usize, h: usize) {
        let w = 30;
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
            for (path, got) in both_paths(&fused, x) {
                assert_eq!(got.len(), w * f);
                let worst = largest_difference(&got, want);
                assert!(
                    worst < 1e-5,
                    "F {f} H {h} {path}: differs from candle by {worst}"
                );
                let (sa, sb) = (
                    scoring::score_reconstruction(x, &got, &vec![false; w]).score,
                    scoring::score_reconstruction(x, want, &vec![false; w]).score,
                );
                assert!((sa - sb).abs() < 1e-5, "{path}: {sa} vs {sb}");
            }
        }
    }

    /// What this CPU runs, and the baseline build (the same on a CPU without AVX2 and FMA).
    fn both_paths(fused: &FusedModel, x: &[f32]) -> [(&'static str, Vec<f32>); 2] {
        [
            ("dispatched", fused.reconstruct(x)),
            ("portable", fused.reconstruct_portable(x)),
        ]
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    }

    /// The shipped weights, on etcd-shaped windows: what ci/check-detector-reference.sh
    /// compares with numpy goes through the fused forward, and this ties it to candle.
    #[test]
    fn fused_forward_agrees_with_candle_on_the_shipped_model() {
        use crate::training::dataset::Dataset;
        use crate::training::synth::{SynthOptions, generate};
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
            load_scale: 1.0,
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
            for (path, got) in both_paths(&fused, x) {
                let worst = largest_difference(&got, want);
                assert!(worst < 1e-4, "{path}: differs from candle by {worst}");
            }
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
