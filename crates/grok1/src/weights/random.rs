//! Deterministic random weights in the official storage layout, for `grok1 init`
//! (benchmark checkpoints), tests and the embedded demo model.
//!
//! Every tensor is cut into 1 MiB chunks, each drawn from its own ChaCha8 stream
//! seeded from (seed, tensor index, stream, chunk), so the bytes do not depend on
//! the thread count and multi-gigabyte tensors are generated in parallel and
//! written as they are made.
//!
//! Distributions (shaped like the fixtures' random models): embeddings
//! N(0, emb_std); RMSNorm scales N(1, 0.2); router N(0, (2/sqrt(d))^2); quantised
//! weights int8 drawn from a normal of standard deviation 42 (so 127 is three
//! sigma) with bf16 scales of about 1/(42 sqrt(K)) per (group, column), giving
//! dequantised weights of standard deviation 1/sqrt(K).

use std::io::{self, Write};

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::ckpt0::{checkpoint_layout, ParamKind, ParamSpec};
use super::pickle_writer::Payload;
use super::{
    DType, DenseTensor, QuantizedTensor, StoredTensor, TensorData, TensorKind, TensorStore,
};
use crate::config::ModelConfig;

const CHUNK: usize = 1 << 20;
/// Chunks generated in parallel before they are written (64 MiB).
const BATCH: usize = 64;
/// Standard deviation of the int8 values.
const INT8_SIGMA: f64 = 42.0;

/// Which bytes of a parameter a stream produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// f32 values of a dense tensor, or the int8 values of a quantised one.
    Values,
    /// bf16 scales of a quantised tensor.
    Scales,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn chunk_rng(seed: u64, index: usize, stream: Stream, chunk: usize) -> ChaCha8Rng {
    let mut s = splitmix64(seed);
    s = splitmix64(s ^ index as u64);
    s = splitmix64(s ^ (stream as u64 + 1));
    s = splitmix64(s ^ chunk as u64);
    ChaCha8Rng::seed_from_u64(s)
}

/// Inverse of the standard normal CDF (Acklam's rational approximation,
/// relative error below 1.2e-9), used once to build the int8 lookup table.
#[allow(clippy::excessive_precision)] // the published coefficients, as published
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383577518672690e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549671010366111e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Maps 16 random bits to an int8 value distributed like round(N(0, 42^2)).
fn int8_table() -> &'static [i8; 65536] {
    static TABLE: std::sync::OnceLock<Box<[i8; 65536]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0i8; 65536]);
        for (i, v) in t.iter_mut().enumerate() {
            let z = inverse_normal_cdf((i as f64 + 0.5) / 65536.0);
            *v = (z * INT8_SIGMA).round().clamp(-127.0, 127.0) as i8;
        }
        t
    })
}

/// What the random values of one stream look like.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// f32 values N(mean, std^2).
    Normal {
        mean: f32,
        std: f32,
    },
    Int8,
    /// bf16 scales `base * (1 + 0.05 N(0,1))`.
    Scales {
        base: f32,
    },
}

impl Fill {
    fn element_size(self) -> usize {
        match self {
            Fill::Normal { .. } => 4,
            Fill::Int8 => 1,
            Fill::Scales { .. } => 2,
        }
    }

    fn fill(self, rng: &mut ChaCha8Rng, out: &mut [u8]) {
        match self {
            Fill::Normal { mean, std } => {
                for b in out.chunks_exact_mut(4) {
                    let z: f32 = rng.sample(StandardNormal);
                    b.copy_from_slice(&(mean + std * z).to_le_bytes());
                }
            }
            Fill::Int8 => {
                let table = int8_table();
                let mut bits = vec![0u8; out.len() * 2];
                rng.fill(&mut bits[..]);
                for (o, pair) in out.iter_mut().zip(bits.chunks_exact(2)) {
                    *o = table[u16::from_le_bytes([pair[0], pair[1]]) as usize] as u8;
                }
            }
            Fill::Scales { base } => {
                for b in out.chunks_exact_mut(2) {
                    let z: f32 = rng.sample(StandardNormal);
                    let s = base * (1.0 + 0.05 * z.clamp(-3.0, 3.0));
                    b.copy_from_slice(&bf16::from_f32(s).to_bits().to_le_bytes());
                }
            }
        }
    }
}

/// One random stream of one parameter, writable in chunks.
pub struct RandomPayload {
    seed: u64,
    index: usize,
    stream: Stream,
    fill: Fill,
    len: u64,
}

impl RandomPayload {
    /// The random payload of `stream` for the parameter `spec` of `config`.
    pub fn new(config: &ModelConfig, spec: &ParamSpec, stream: Stream, seed: u64) -> Self {
        let (fill, elements) = match (&spec.kind, stream) {
            (ParamKind::Dense { shape }, Stream::Values) => {
                let fill = if spec.path.ends_with("in_out_embed/embeddings") {
                    Fill::Normal {
                        mean: 0.0,
                        std: config.emb_std.unwrap_or(0.006) as f32,
                    }
                } else if spec.path.ends_with("router/w") {
                    Fill::Normal {
                        mean: 0.0,
                        std: 2.0 / (config.emb_size as f32).sqrt(),
                    }
                } else {
                    Fill::Normal {
                        mean: 1.0,
                        std: 0.2,
                    }
                };
                (fill, shape.iter().product::<usize>())
            }
            (ParamKind::Quantized { shape, .. }, Stream::Values) => {
                (Fill::Int8, shape.iter().product::<usize>())
            }
            (ParamKind::Quantized { shape, groups }, Stream::Scales) => {
                let k = shape[shape.len() - 2];
                let base = (1.0 / (INT8_SIGMA * (k as f64).sqrt())) as f32;
                let elements = shape.iter().product::<usize>() / k * groups;
                (Fill::Scales { base }, elements)
            }
            (ParamKind::Dense { .. }, Stream::Scales) => {
                panic!("dense parameter {} has no scales", spec.path)
            }
        };
        RandomPayload {
            seed,
            index: spec.index,
            stream,
            fill,
            len: (elements * fill.element_size()) as u64,
        }
    }

    fn chunk(&self, i: usize) -> Vec<u8> {
        let start = i * CHUNK;
        let end = ((i + 1) * CHUNK).min(self.len as usize);
        let mut out = vec![0u8; end - start];
        let mut rng = chunk_rng(self.seed, self.index, self.stream, i);
        self.fill.fill(&mut rng, &mut out);
        out
    }

    /// All bytes in memory (small tensors, the demo model).
    pub fn to_vec(&self) -> Vec<u8> {
        let chunks = (self.len as usize).div_ceil(CHUNK);
        let parts: Vec<Vec<u8>> = (0..chunks).into_par_iter().map(|i| self.chunk(i)).collect();
        parts.concat()
    }
}

impl Payload for RandomPayload {
    fn byte_len(&self) -> u64 {
        self.len
    }

    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let chunks = (self.len as usize).div_ceil(CHUNK);
        for first in (0..chunks).step_by(BATCH) {
            let last = (first + BATCH).min(chunks);
            let parts: Vec<Vec<u8>> = (first..last)
                .into_par_iter()
                .map(|i| self.chunk(i))
                .collect();
            for part in parts {
                out.write_all(&part)?;
            }
        }
        Ok(())
    }
}

/// A whole random model held in memory (the embedded demo model, tests): the
/// same bytes `grok1 init` would write for `config` and `seed`.
pub fn random_store(config: &ModelConfig, seed: u64) -> TensorStore {
    let mut store = TensorStore::default();
    for spec in checkpoint_layout(config) {
        let values =
            TensorData::owned(RandomPayload::new(config, &spec, Stream::Values, seed).to_vec());
        let kind = match &spec.kind {
            ParamKind::Dense { shape } => TensorKind::Dense(DenseTensor {
                dtype: DType::F32,
                shape: shape.clone(),
                data: values,
            }),
            ParamKind::Quantized { shape, groups } => TensorKind::Int8Grouped(QuantizedTensor {
                shape: shape.clone(),
                groups: *groups,
                weight: values,
                scales: TensorData::owned(
                    RandomPayload::new(config, &spec, Stream::Scales, seed).to_vec(),
                ),
                scale_dtype: DType::BF16,
            }),
        };
        store.insert(StoredTensor {
            name: spec.path.clone(),
            file: format!("<memory>/{}", spec.file_name()).into(),
            kind,
        });
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_table_is_a_symmetric_normal() {
        let t = int8_table();
        let mean: f64 = t.iter().map(|&v| v as f64).sum::<f64>() / 65536.0;
        let var: f64 = t.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 65536.0;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var.sqrt() - INT8_SIGMA).abs() < 0.5, "{}", var.sqrt());
        assert_eq!(t.iter().copied().max(), Some(127));
        assert_eq!(t.iter().copied().min(), Some(-127));
    }

    #[test]
    fn payload_does_not_depend_on_chunking_of_writes() {
        let cfg = ModelConfig::tiny();
        let layout = super::super::ckpt0::checkpoint_layout(&cfg);
        let spec = &layout[2];
        let a = RandomPayload::new(&cfg, spec, Stream::Values, 7);
        let mut written = Vec::new();
        RandomPayload::new(&cfg, spec, Stream::Values, 7)
            .write_to(&mut written)
            .unwrap();
        assert_eq!(a.to_vec(), written);
        assert_ne!(
            RandomPayload::new(&cfg, spec, Stream::Values, 8).to_vec(),
            written
        );
    }
}
