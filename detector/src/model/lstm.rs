//! The LSTM autoencoder in candle, used for training and offline evaluation. The encoder
//! reads the W x F normalised window; its final hidden state, repeated W times, drives the
//! decoder, whose hidden states a linear layer maps back to F features. Weight names
//! follow PyTorch (`encoder.weight_ih_l0`, ...) so other tools can read the file.

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::rnn::{LSTM, LSTMConfig, RNN};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

pub const KIND: &str = "lstm_autoencoder";

/// The model's shape as stored in model.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub kind: String,
    pub n_features: usize,
    pub hidden: usize,
}

impl Architecture {
    pub fn new(n_features: usize, hidden: usize) -> Architecture {
        Architecture {
            kind: KIND.to_string(),
            n_features,
            hidden,
        }
    }

    /// Every tensor in the weights file with its shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (f, h) = (self.n_features, self.hidden);
        let mut shapes = Vec::new();
        for (prefix, input) in [("encoder", f), ("decoder", h)] {
            shapes.push((format!("{prefix}.weight_ih_l0"), vec![4 * h, input]));
            shapes.push((format!("{prefix}.weight_hh_l0"), vec![4 * h, h]));
            shapes.push((format!("{prefix}.bias_ih_l0"), vec![4 * h]));
            shapes.push((format!("{prefix}.bias_hh_l0"), vec![4 * h]));
        }
        shapes.push(("output.weight".into(), vec![f, h]));
        shapes.push(("output.bias".into(), vec![f]));
        shapes
    }
}

/// SplitMix64: a tiny seeded generator, so initial weights and batch order depend only
/// on the seed (candle's CPU RNG cannot be seeded).
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Fresh trainable weights for `arch`, PyTorch's default LSTM/Linear initialisation
/// (uniform in +-1/sqrt(fan)), drawn from `seed`.
pub fn init_varmap(arch: &Architecture, seed: u64) -> anyhow::Result<VarMap> {
    let mut rng = SeededRng::new(seed);
    let varmap = VarMap::new();
    let bound_lstm = 1.0 / (arch.hidden as f64).sqrt();
    let bound_out = 1.0 / (arch.hidden as f64).sqrt();
    {
        let mut vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
        // Sorted names: the draw order, and so the weights, do not depend on a hash order.
        let mut shapes = arch.tensor_shapes();
        shapes.sort();
        for (name, shape) in shapes {
            let bound = if name.starts_with("output") {
                bound_out
            } else {
                bound_lstm
            };
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?;
            vars.insert(name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

/// The candle model.
pub struct Autoencoder {
    encoder: LSTM,
    decoder: LSTM,
    output: Linear,
    hidden: usize,
}

impl Autoencoder {
    pub fn new(arch: &Architecture, vb: VarBuilder) -> anyhow::Result<Autoencoder> {
        anyhow::ensure!(arch.kind == KIND, "unknown model kind `{}`", arch.kind);
        let encoder = candle_nn::lstm(
            arch.n_features,
            arch.hidden,
            LSTMConfig::default(),
            vb.pp("encoder"),
        )
        .context("encoder weights")?;
        let decoder = candle_nn::lstm(
            arch.hidden,
            arch.hidden,
            LSTMConfig::default(),
            vb.pp("decoder"),
        )
        .context("decoder weights")?;
        let output = candle_nn::linear(arch.hidden, arch.n_features, vb.pp("output"))
            .context("output weights")?;
        Ok(Autoencoder {
            encoder,
            decoder,
            output,
            hidden: arch.hidden,
        })
    }

    /// Loads the model from a safetensors buffer; shapes are checked against `arch`.
    pub fn from_safetensors(arch: &Architecture, bytes: &[u8]) -> anyhow::Result<Autoencoder> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .context("reading model.safetensors")?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Autoencoder::new(arch, vb)
    }

    /// `[batch, window, features]` in, the reconstruction of the same shape out.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, window, _) = x.dims3()?;
        let encoded = self.encoder.seq(x)?;
        let last = encoded
            .last()
            .ok_or_else(|| candle_core::Error::Msg("empty window".into()))?
            .h()
            .clone();
        let repeated = last
            .unsqueeze(1)?
            .broadcast_as((batch, window, self.hidden))?
            .contiguous()?;
        let decoded = self.decoder.seq(&repeated)?;
        let hidden = self.decoder.states_to_tensor(&decoded)?;
        self.output.forward(&hidden)
    }

    /// Reconstructs many normalised windows (each `window * features` long), in batches.
    pub fn reconstruct(
        &self,
        windows: &[Vec<f32>],
        window: usize,
        n_features: usize,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(windows.len());
        for chunk in windows.chunks(512) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let x = Tensor::from_vec(flat, (chunk.len(), window, n_features), &Device::Cpu)?;
            let recon = self.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            out.extend(recon.chunks(window * n_features).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}

/// One f32 tensor in the form the safetensors writer takes.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &F32View {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The current weights as a safetensors buffer (names sorted, little-endian f32).
pub fn varmap_to_safetensors(varmap: &VarMap) -> anyhow::Result<Vec<u8>> {
    let tensors: Vec<(String, Tensor)> = {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
        vars.iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    };
    let mut views: Vec<(String, F32View)> = tensors
        .into_iter()
        .map(|(name, tensor)| {
            let shape = tensor.dims().to_vec();
            let values = tensor.flatten_all()?.to_vec1::<f32>()?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((name, F32View { shape, bytes }))
        })
        .collect::<candle_core::Result<_>>()?;
    views.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::tensor::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), None)
        .context("serialising weights")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(seed: u64) -> (VarMap, Autoencoder) {
        let arch = Architecture::new(3, 8);
        let varmap = init_varmap(&arch, seed).unwrap();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        (varmap, Autoencoder::new(&arch, vb).unwrap())
    }

    #[test]
    fn reconstruction_has_the_input_shape() {
        let (_, m) = model(1);
        let x = Tensor::zeros((4, 5, 3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.forward(&x).unwrap().dims(), [4, 5, 3]);
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let a = varmap_to_safetensors(&model(7).0).unwrap();
        let b = varmap_to_safetensors(&model(7).0).unwrap();
        let c = varmap_to_safetensors(&model(8).0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn saved_weights_load_to_the_same_reconstruction() {
        let arch = Architecture::new(3, 8);
        let (varmap, m) = model(3);
        let bytes = varmap_to_safetensors(&varmap).unwrap();
        let loaded = Autoencoder::from_safetensors(&arch, &bytes).unwrap();
        let window: Vec<f32> = (0..15).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = m.reconstruct(std::slice::from_ref(&window), 5, 3).unwrap();
        let b = loaded.reconstruct(&[window], 5, 3).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn loading_refuses_weights_of_another_shape() {
        let (varmap, _) = model(3);
        let bytes = varmap_to_safetensors(&varmap).unwrap();
        let err = Autoencoder::from_safetensors(&Architecture::new(4, 8), &bytes);
        assert!(err.is_err());
    }

    #[test]
    fn shuffle_is_a_permutation_fixed_by_the_seed() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        SeededRng::new(5).shuffle(&mut a);
        SeededRng::new(5).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }
}
