//! The model's weights, found by name in a `TensorStore` and checked for shape.

use crate::backend::{F32Matrix, QuantMatrix};
use crate::config::ModelConfig;
use crate::weights::{DType, StoredTensor, TensorKind, TensorStore, WeightError};

/// The three weights of the 8 experts of one layer.
#[derive(Clone, Debug)]
pub struct ExpertWeights {
    /// `[num_experts]` of `[d, ffn]`; the GELU branch. ckpt-0 `.../moe/linear/w`
    pub linear: Vec<QuantMatrix>,
    /// `[num_experts]` of `[d, ffn]`; the linear branch. ckpt-0 `.../moe/linear_v/w`
    pub linear_v: Vec<QuantMatrix>,
    /// `[num_experts]` of `[ffn, d]`; the down projection. ckpt-0 `.../moe/linear_1/w`
    pub linear_1: Vec<QuantMatrix>,
}

impl ExpertWeights {
    /// Bytes of expert `e`'s three matrices (weights and scales).
    pub fn bytes(&self, e: usize) -> u64 {
        (self.linear[e].byte_len() + self.linear_v[e].byte_len() + self.linear_1[e].byte_len())
            as u64
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `[d]`, before attention. ckpt-0 `.../rms_norm/scale`
    pub attn_norm: Vec<f32>,
    /// `[d]`, on the attention output. ckpt-0 `.../rms_norm_1/scale`
    pub attn_out_norm: Vec<f32>,
    /// `[d]`, before the MoE. ckpt-0 `.../rms_norm_2/scale`
    pub moe_norm: Vec<f32>,
    /// `[d]`, on the MoE output. ckpt-0 `.../rms_norm_3/scale`
    pub moe_out_norm: Vec<f32>,
    /// `[d, Hq*hd]`. ckpt-0 `.../multi_head_attention/query/w`
    pub wq: QuantMatrix,
    /// `[d, Hkv*hd]`. ckpt-0 `.../multi_head_attention/key/w`
    pub wk: QuantMatrix,
    /// `[d, Hkv*hd]`. ckpt-0 `.../multi_head_attention/value/w`
    pub wv: QuantMatrix,
    /// `[Hq*hd, d]`. ckpt-0 `.../multi_head_attention/linear/w`
    pub wo: QuantMatrix,
    /// `[d, num_experts]`, f32. ckpt-0 `.../router/w`
    pub router: Vec<f32>,
    pub experts: ExpertWeights,
}

impl LayerWeights {
    /// Bytes a layer reads whatever the routing: attention, router and norms.
    pub fn dense_bytes(&self) -> u64 {
        let f32_values = self.attn_norm.len()
            + self.attn_out_norm.len()
            + self.moe_norm.len()
            + self.moe_out_norm.len()
            + self.router.len();
        let quantized =
            self.wq.byte_len() + self.wk.byte_len() + self.wv.byte_len() + self.wo.byte_len();
        (quantized + 4 * f32_values) as u64
    }
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `[vocab, d]`, f32, tied input embedding and output projection.
    /// ckpt-0 `language_model/in_out_embed/embeddings`
    pub embedding: F32Matrix,
    /// `[d]`. ckpt-0 `language_model/rms_norm/scale`
    pub final_norm: Vec<f32>,
    pub layers: Vec<LayerWeights>,
}

fn shape_error(t: &StoredTensor, expected: &[usize]) -> WeightError {
    WeightError::Mismatch {
        file: t.file.clone(),
        tensor: t.name.clone(),
        expected: format!("shape {expected:?}"),
        found: format!("shape {:?}", t.shape()),
    }
}

fn dense_f32(store: &TensorStore, name: &str, shape: &[usize]) -> Result<F32Matrix, WeightError> {
    let t = store.get(name)?;
    let TensorKind::Dense(dense) = &t.kind else {
        return Err(WeightError::Mismatch {
            file: t.file.clone(),
            tensor: t.name.clone(),
            expected: "a float32 array".into(),
            found: t.dtype_label(),
        });
    };
    if dense.dtype != DType::F32 {
        return Err(WeightError::Mismatch {
            file: t.file.clone(),
            tensor: t.name.clone(),
            expected: "dtype float32".into(),
            found: format!("dtype {}", dense.dtype),
        });
    }
    if dense.shape != shape {
        return Err(shape_error(t, shape));
    }
    let cols = *shape.last().unwrap_or(&1);
    Ok(F32Matrix {
        rows: dense.shape.iter().product::<usize>() / cols.max(1),
        cols,
        data: dense.data.clone(),
    })
}

/// A small f32 tensor copied into an aligned vector.
fn small_f32(store: &TensorStore, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
    let m = dense_f32(store, name, shape)?;
    let mut out = vec![0f32; m.rows * m.cols];
    for (r, chunk) in out.chunks_exact_mut(m.cols).enumerate() {
        m.row_into(r, chunk);
    }
    Ok(out)
}

/// An int8 tensor `(*lead, K, N)` split into its `lead` matrices.
fn quantized(
    store: &TensorStore,
    name: &str,
    shape: &[usize],
) -> Result<Vec<QuantMatrix>, WeightError> {
    let t = store.get(name)?;
    let TensorKind::Int8Grouped(q) = &t.kind else {
        return Err(WeightError::Mismatch {
            file: t.file.clone(),
            tensor: t.name.clone(),
            expected: "an int8 weight with scales".into(),
            found: t.dtype_label(),
        });
    };
    if q.shape != shape {
        return Err(shape_error(t, shape));
    }
    let (k, n) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let count: usize = shape[..shape.len() - 2].iter().product();
    let scale_size = q.scale_dtype.size();
    if q.groups == 0 || k % q.groups != 0 || q.scales.len() != count * q.groups * n * scale_size {
        return Err(WeightError::Invalid {
            file: t.file.clone(),
            tensor: t.name.clone(),
            reason: format!(
                "{} scale groups do not fit a contracting axis of {k}",
                q.groups
            ),
        });
    }
    Ok((0..count)
        .map(|i| QuantMatrix {
            k,
            n,
            groups: q.groups,
            weight: q.weight.slice(i * k * n, k * n),
            scales: q
                .scales
                .slice(i * q.groups * n * scale_size, q.groups * n * scale_size),
            scale_dtype: q.scale_dtype,
        })
        .collect())
}

fn one(mut v: Vec<QuantMatrix>) -> QuantMatrix {
    v.pop().expect("a 2-D weight holds one matrix")
}

impl Weights {
    /// Finds every parameter of `cfg` in `store` by its official path.
    pub fn from_store(cfg: &ModelConfig, store: &TensorStore) -> Result<Self, WeightError> {
        let d = cfg.emb_size;
        let (e, ff) = (cfg.num_experts, cfg.ffn_size);
        let embedding = dense_f32(
            store,
            "language_model/in_out_embed/embeddings",
            &[cfg.vocab_size, d],
        )?;
        let final_norm = small_f32(store, "language_model/rms_norm/scale", &[d])?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = |suffix: &str| format!("transformer/decoder_layer_{i}/{suffix}");
                Ok(LayerWeights {
                    attn_norm: small_f32(store, &p("rms_norm/scale"), &[d])?,
                    attn_out_norm: small_f32(store, &p("rms_norm_1/scale"), &[d])?,
                    moe_norm: small_f32(store, &p("rms_norm_2/scale"), &[d])?,
                    moe_out_norm: small_f32(store, &p("rms_norm_3/scale"), &[d])?,
                    wq: one(quantized(
                        store,
                        &p("multi_head_attention/query/w"),
                        &[d, cfg.q_width()],
                    )?),
                    wk: one(quantized(
                        store,
                        &p("multi_head_attention/key/w"),
                        &[d, cfg.kv_width()],
                    )?),
                    wv: one(quantized(
                        store,
                        &p("multi_head_attention/value/w"),
                        &[d, cfg.kv_width()],
                    )?),
                    wo: one(quantized(
                        store,
                        &p("multi_head_attention/linear/w"),
                        &[cfg.q_width(), d],
                    )?),
                    router: small_f32(store, &p("router/w"), &[d, e])?,
                    experts: ExpertWeights {
                        linear: quantized(store, &p("moe/linear/w"), &[e, d, ff])?,
                        linear_v: quantized(store, &p("moe/linear_v/w"), &[e, d, ff])?,
                        linear_1: quantized(store, &p("moe/linear_1/w"), &[e, ff, d])?,
                    },
                })
            })
            .collect::<Result<Vec<_>, WeightError>>()?;
        Ok(Weights {
            embedding,
            final_norm,
            layers,
        })
    }
}
