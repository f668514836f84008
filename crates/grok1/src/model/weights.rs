//! The model's weights, found by name in a `TensorStore` and checked for shape.

use std::ops::Range;

use crate::backend::{F32Matrix, Matrix, QuantMatrix, RowMatrix};
use crate::config::ModelConfig;
use crate::parallel::Shard;
use crate::weights::shard::{inputs_of, outputs_of, rows_of, SliceOf};
use crate::weights::{DType, StoredTensor, TensorKind, TensorStore, WeightError};

/// The three weights of the 8 experts of one layer.
#[derive(Clone, Debug)]
pub struct ExpertWeights {
    /// `[num_experts]` of `[d, ffn]`; the GELU branch. ckpt-0 `.../moe/linear/w`
    pub linear: Vec<Matrix>,
    /// `[num_experts]` of `[d, ffn]`; the linear branch. ckpt-0 `.../moe/linear_v/w`
    pub linear_v: Vec<Matrix>,
    /// `[num_experts]` of `[ffn, d]`; the down projection. ckpt-0 `.../moe/linear_1/w`
    pub linear_1: Vec<Matrix>,
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
    pub wq: Matrix,
    /// `[d, Hkv*hd]`. ckpt-0 `.../multi_head_attention/key/w`
    pub wk: Matrix,
    /// `[d, Hkv*hd]`. ckpt-0 `.../multi_head_attention/value/w`
    pub wv: Matrix,
    /// `[Hq*hd, d]`. ckpt-0 `.../multi_head_attention/linear/w`
    pub wo: Matrix,
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
    /// `[vocab, d]`, the input embedding (f32 in ckpt-0, any type in GGUF).
    /// ckpt-0 `language_model/in_out_embed/embeddings`, GGUF `token_embd`
    pub embedding: RowMatrix,
    /// `[vocab, d]`, the output projection: the embedding itself (Grok-1 ties
    /// them), or GGUF's `output` where a file stores its own.
    pub output: RowMatrix,
    /// `[d]`. ckpt-0 `language_model/rms_norm/scale`
    pub final_norm: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    /// The part of the model these weights are (tensor parallel): the
    /// attention heads, expert columns and vocabulary rows of one rank.
    pub shard: Shard,
    /// The token ids whose rows `embedding` and `output` hold (all of them
    /// for the whole model).
    pub vocab_rows: Range<usize>,
}

impl Weights {
    /// True when the output projection is the embedding itself (Grok-1 ties
    /// them) rather than a matrix of its own.
    pub fn output_is_tied(&self) -> bool {
        std::ptr::eq(
            self.output.data.bytes().as_ptr(),
            self.embedding.data.bytes().as_ptr(),
        )
    }

    /// Bytes of every weight as stored (what a file of this model holds).
    pub fn byte_len(&self) -> u64 {
        let output = if self.output_is_tied() {
            0
        } else {
            self.output.byte_len() as u64
        };
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                l.dense_bytes()
                    + (0..l.experts.linear.len())
                        .map(|e| l.experts.bytes(e))
                        .sum::<u64>()
            })
            .sum();
        self.embedding.byte_len() as u64 + output + 4 * self.final_norm.len() as u64 + layers
    }
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
fn quantized(store: &TensorStore, name: &str, shape: &[usize]) -> Result<Vec<Matrix>, WeightError> {
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
        .map(|i| {
            Matrix::Int8Grouped(QuantMatrix {
                k,
                n,
                groups: q.groups,
                weight: q.weight.slice(i * k * n, k * n),
                scales: q
                    .scales
                    .slice(i * q.groups * n * scale_size, q.groups * n * scale_size),
                scale_dtype: q.scale_dtype,
            })
        })
        .collect())
}

fn one(mut v: Vec<Matrix>) -> Matrix {
    v.pop().expect("a 2-D weight holds one matrix")
}

/// A tensor `(*lead, rows, cols)` of float or ggml block type, split into its
/// `lead` row matrices. `shape` is the expected numpy shape.
fn row_matrices(t: &StoredTensor, shape: &[usize]) -> Result<Vec<RowMatrix>, WeightError> {
    let Some((dtype, found, data)) = t.as_ggml() else {
        return Err(WeightError::Mismatch {
            file: t.file.clone(),
            tensor: t.name.clone(),
            expected: "a float or ggml block tensor".into(),
            found: t.dtype_label(),
        });
    };
    if found != shape {
        return Err(shape_error(t, shape));
    }
    // A vector is one row.
    let shape = if shape.len() == 1 {
        vec![1, shape[0]]
    } else {
        shape.to_vec()
    };
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let count: usize = shape[..shape.len() - 2].iter().product();
    let row_len = dtype.row_bytes(cols).ok_or_else(|| WeightError::Invalid {
        file: t.file.clone(),
        tensor: t.name.clone(),
        reason: format!(
            "rows of {cols} values are not whole {dtype} blocks of {}",
            dtype.block_size()
        ),
    })?;
    let matrix_len = rows * row_len;
    if data.len() != count * matrix_len {
        return Err(WeightError::Invalid {
            file: t.file.clone(),
            tensor: t.name.clone(),
            reason: format!(
                "{} bytes of data for {count} x {rows} rows of {row_len} bytes",
                data.len()
            ),
        });
    }
    Ok((0..count)
        .map(|i| RowMatrix {
            rows,
            cols,
            dtype,
            data: data.slice(i * matrix_len, matrix_len),
        })
        .collect())
}

fn row_matrix(
    store: &TensorStore,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<RowMatrix, WeightError> {
    let t = store.get(name)?;
    Ok(row_matrices(t, &[rows, cols])?.remove(0))
}

/// A small tensor of any float or block type decoded to f32, in its stored
/// order; `shape` is the expected numpy shape.
fn decoded(store: &TensorStore, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
    let t = store.get(name)?;
    let cols = *shape.last().unwrap_or(&1);
    let matrix = row_matrices(t, shape)?.remove(0);
    let mut out = vec![0f32; matrix.rows * cols];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        matrix.row_into(r, row);
    }
    Ok(out)
}

/// A weight for `x @ W` with `W: [k, n]`, stored as `[n, k]` rows.
fn linear(store: &TensorStore, name: &str, k: usize, n: usize) -> Result<Matrix, WeightError> {
    Ok(Matrix::Rows(row_matrix(store, name, n, k)?))
}

/// Cuts one rank's part out of each split weight as it is found (tensor
/// parallel): whole key/value head groups of attention (q, k, v outputs and
/// o inputs), 1/N of every expert's hidden width (w1 and v outputs, w2
/// inputs), 1/N of the vocabulary rows. Norms and router stay whole.
struct Splitter<'a> {
    store: &'a TensorStore,
    shard: Shard,
    /// The store holds this rank's parts already cut (a rank of a shard set,
    /// `weights::shard_set`): each split tensor is read whole at its part's
    /// shape.
    presliced: bool,
}

/// How a weight's split axis divides: `units` pieces that must stay whole
/// (heads, head groups, vocabulary rows), each `width` columns or rows wide.
#[derive(Clone, Copy)]
struct Units {
    count: usize,
    width: usize,
    what: &'static str,
}

impl Splitter<'_> {
    fn slice_of<'n>(&self, t: &'n StoredTensor) -> SliceOf<'n> {
        SliceOf {
            file: &t.file,
            tensor: &t.name,
            ranks: self.shard.count,
        }
    }

    /// This rank's range along the split axis of tensor `name`.
    fn range(&self, name: &str, units: Units) -> Result<Range<usize>, WeightError> {
        let t = self.store.get(name)?;
        match self.shard.range(units.count) {
            Some(r) => Ok(r.start * units.width..r.end * units.width),
            None => Err(WeightError::Invalid {
                file: t.file.clone(),
                tensor: t.name.clone(),
                reason: format!(
                    "cannot be split over {} ranks: its {} {} do not divide by {}",
                    self.shard.count, units.count, units.what, self.shard.count
                ),
            }),
        }
    }

    /// The length a tensor's split axis of `full` is stored at: `full`, or
    /// this rank's part of it in a presliced store.
    fn stored(&self, name: &str, full: usize, units: Units) -> Result<usize, WeightError> {
        if !self.presliced || self.shard.is_whole() {
            return Ok(full);
        }
        Ok(self.range(name, units)?.len())
    }

    /// True when the tensors read are this rank's as they are.
    fn as_read(&self) -> bool {
        self.shard.is_whole() || self.presliced
    }

    fn outputs(&self, m: Matrix, name: &str, units: Units) -> Result<Matrix, WeightError> {
        if self.as_read() {
            return Ok(m);
        }
        Ok(outputs_of(&m, self.range(name, units)?))
    }

    fn inputs(&self, m: Matrix, name: &str, units: Units) -> Result<Matrix, WeightError> {
        if self.as_read() {
            return Ok(m);
        }
        let range = self.range(name, units)?;
        inputs_of(&m, range, self.slice_of(self.store.get(name)?))
    }

    fn vocab(&self, m: RowMatrix, name: &str) -> Result<RowMatrix, WeightError> {
        if self.as_read() {
            return Ok(m);
        }
        let units = Units {
            count: m.rows,
            width: 1,
            what: "vocabulary rows",
        };
        Ok(rows_of(&m, self.range(name, units)?))
    }

    /// Rows of the embedding or output projection as stored.
    fn vocab_stored(&self, name: &str, vocab: usize) -> Result<usize, WeightError> {
        let units = Units {
            count: vocab,
            width: 1,
            what: "vocabulary rows",
        };
        self.stored(name, vocab, units)
    }

    fn vocab_rows(&self, vocab: usize) -> Range<usize> {
        self.shard.range(vocab).unwrap_or(0..vocab)
    }
}

/// The split units of a config's weights.
struct SplitUnits {
    /// q columns and o rows: one key/value head's group of query heads.
    q_groups: Units,
    /// k and v columns: one key/value head.
    kv_heads: Units,
    /// Expert hidden columns.
    ffn: Units,
}

impl SplitUnits {
    fn of(cfg: &ModelConfig) -> Self {
        let kv = cfg.num_kv_heads;
        SplitUnits {
            q_groups: Units {
                count: kv,
                width: cfg.q_width() / kv.max(1),
                what: "key/value head groups",
            },
            kv_heads: Units {
                count: kv,
                width: cfg.key_size,
                what: "key/value heads",
            },
            ffn: Units {
                count: cfg.ffn_size,
                width: 1,
                what: "expert hidden columns",
            },
        }
    }
}

impl Weights {
    /// Finds every parameter of `cfg` in `store`: by official path (ckpt-0), or
    /// by the names of whichever row-stored layout the store holds (GGUF, the
    /// Hugging Face conversions).
    pub fn from_store(cfg: &ModelConfig, store: &TensorStore) -> Result<Self, WeightError> {
        Self::from_store_shard(cfg, store, Shard::WHOLE)
    }

    /// [`Weights::from_store`] for one rank of a tensor-parallel model: only
    /// its part of each split weight (see `Splitter`); the error of a model
    /// that cannot be split so names the tensor.
    pub fn from_store_shard(
        cfg: &ModelConfig,
        store: &TensorStore,
        shard: Shard,
    ) -> Result<Self, WeightError> {
        Self::from_split(
            cfg,
            store,
            Splitter {
                store,
                shard,
                presliced: false,
            },
        )
    }

    /// One rank's weights from a store that holds only its part, already
    /// cut (a rank of a shard set): each split tensor must have its part's
    /// shape, and is used as it is, mapped.
    pub fn from_presliced_store(
        cfg: &ModelConfig,
        store: &TensorStore,
        shard: Shard,
    ) -> Result<Self, WeightError> {
        Self::from_split(
            cfg,
            store,
            Splitter {
                store,
                shard,
                presliced: true,
            },
        )
    }

    fn from_split(
        cfg: &ModelConfig,
        store: &TensorStore,
        split: Splitter,
    ) -> Result<Self, WeightError> {
        let split = &split;
        match RowLayout::detect(store) {
            Some(layout) => Self::from_row_layout(cfg, store, layout, split),
            None => Self::from_official_names(cfg, store, split),
        }
    }

    fn from_official_names(
        cfg: &ModelConfig,
        store: &TensorStore,
        split: &Splitter,
    ) -> Result<Self, WeightError> {
        let d = cfg.emb_size;
        let (e, ff) = (cfg.num_experts, cfg.ffn_size);
        let units = SplitUnits::of(cfg);
        let embedding_name = "language_model/in_out_embed/embeddings";
        let vocab = split.vocab_stored(embedding_name, cfg.vocab_size)?;
        let embedding =
            split.vocab(row_matrix(store, embedding_name, vocab, d)?, embedding_name)?;
        let final_norm = small_f32(store, "language_model/rms_norm/scale", &[d])?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = |suffix: &str| format!("transformer/decoder_layer_{i}/{suffix}");
                let attention = |suffix: &str, k: usize, n: usize, outputs: Option<Units>| {
                    let name = p(suffix);
                    let (k, n) = match outputs {
                        Some(u) => (k, split.stored(&name, n, u)?),
                        None => (split.stored(&name, k, units.q_groups)?, n),
                    };
                    let m = one(quantized(store, &name, &[k, n])?);
                    match outputs {
                        Some(u) => split.outputs(m, &name, u),
                        None => split.inputs(m, &name, units.q_groups),
                    }
                };
                let experts = |suffix: &str, k: usize, n: usize, outputs: bool| {
                    let name = p(suffix);
                    let (k, n) = match outputs {
                        true => (k, split.stored(&name, n, units.ffn)?),
                        false => (split.stored(&name, k, units.ffn)?, n),
                    };
                    quantized(store, &name, &[e, k, n])?
                        .into_iter()
                        .map(|m| match outputs {
                            true => split.outputs(m, &name, units.ffn),
                            false => split.inputs(m, &name, units.ffn),
                        })
                        .collect::<Result<Vec<_>, WeightError>>()
                };
                let (q, kv) = (Some(units.q_groups), Some(units.kv_heads));
                Ok(LayerWeights {
                    attn_norm: small_f32(store, &p("rms_norm/scale"), &[d])?,
                    attn_out_norm: small_f32(store, &p("rms_norm_1/scale"), &[d])?,
                    moe_norm: small_f32(store, &p("rms_norm_2/scale"), &[d])?,
                    moe_out_norm: small_f32(store, &p("rms_norm_3/scale"), &[d])?,
                    wq: attention("multi_head_attention/query/w", d, cfg.q_width(), q)?,
                    wk: attention("multi_head_attention/key/w", d, cfg.kv_width(), kv)?,
                    wv: attention("multi_head_attention/value/w", d, cfg.kv_width(), kv)?,
                    wo: attention("multi_head_attention/linear/w", cfg.q_width(), d, None)?,
                    router: small_f32(store, &p("router/w"), &[d, e])?,
                    experts: ExpertWeights {
                        linear: experts("moe/linear/w", d, ff, true)?,
                        linear_v: experts("moe/linear_v/w", d, ff, true)?,
                        linear_1: experts("moe/linear_1/w", ff, d, false)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, WeightError>>()?;
        Ok(Weights {
            output: embedding.clone(),
            embedding,
            final_norm,
            layers,
            shard: split.shard,
            vocab_rows: split.vocab_rows(cfg.vocab_size),
        })
    }

    /// A layout of `[out, in]` matrices (shared/docs/formats.md); experts
    /// merged into `[E, out, in]` tensors where the layout has them (GGUF; files
    /// from before llama.cpp merged them have one tensor per expert).
    fn from_row_layout(
        cfg: &ModelConfig,
        store: &TensorStore,
        layout: RowLayout,
        split: &Splitter,
    ) -> Result<Self, WeightError> {
        let d = cfg.emb_size;
        let (e, ff) = (cfg.num_experts, cfg.ffn_size);
        let units = SplitUnits::of(cfg);
        let name = |part: Part, layer: usize| layout.name(part, layer, None);
        let embedding_name = name(Part::Embedding, 0);
        let vocab = split.vocab_stored(&embedding_name, cfg.vocab_size)?;
        let embedding = split.vocab(
            row_matrix(store, &embedding_name, vocab, d)?,
            &embedding_name,
        )?;
        let output_name = name(Part::Output, 0);
        let output = match store.get(&output_name) {
            Ok(_) => split.vocab(row_matrix(store, &output_name, vocab, d)?, &output_name)?,
            Err(_) => embedding.clone(),
        };
        let final_norm = decoded(store, &name(Part::FinalNorm, 0), &[d])?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = |part: Part| name(part, i);
                // Gate and up are split by their outputs, down by its inputs.
                let cut = |m: Matrix, name: &str, part: Part| match part {
                    Part::Down => split.inputs(m, name, units.ffn),
                    _ => split.outputs(m, name, units.ffn),
                };
                let experts = |part: Part, rows: usize, cols: usize| {
                    // Gate and up are stored [ff, d] (outputs as rows), down [d, ff].
                    let stored = |name: &str| match part {
                        Part::Down => {
                            Ok::<_, WeightError>((rows, split.stored(name, cols, units.ffn)?))
                        }
                        _ => Ok((split.stored(name, rows, units.ffn)?, cols)),
                    };
                    if let Some(merged) = layout.merged_experts(part, i) {
                        if let Ok(t) = store.get(&merged) {
                            let (rows, cols) = stored(&merged)?;
                            return row_matrices(t, &[e, rows, cols])?
                                .into_iter()
                                .map(|m| cut(Matrix::Rows(m), &merged, part))
                                .collect();
                        }
                    }
                    (0..e)
                        .map(|x| {
                            let single = layout.name(part, i, Some(x));
                            let (rows, cols) = stored(&single)?;
                            let m = Matrix::Rows(row_matrix(store, &single, rows, cols)?);
                            cut(m, &single, part)
                        })
                        .collect::<Result<Vec<_>, WeightError>>()
                };
                let mut post_moe = p(Part::MoeOutNorm);
                if store.get(&post_moe).is_err() && layout == RowLayout::Gguf {
                    // Newer llama.cpp files name it `post_ffw_norm`.
                    post_moe = format!("blk.{i}.post_ffw_norm.weight");
                }
                let router = decoded(store, &p(Part::Router), &[e, d])?;
                // Stored [E, d]; the router multiplies x @ Wr with Wr [d, E].
                let router = (0..d * e).map(|j| router[(j % e) * d + j / e]).collect();
                let attention = |part: Part, k: usize, n: usize, outputs: Option<Units>| {
                    let name = p(part);
                    let (k, n) = match outputs {
                        Some(u) => (k, split.stored(&name, n, u)?),
                        None => (split.stored(&name, k, units.q_groups)?, n),
                    };
                    let m = linear(store, &name, k, n)?;
                    match outputs {
                        Some(u) => split.outputs(m, &name, u),
                        None => split.inputs(m, &name, units.q_groups),
                    }
                };
                let (q, kv) = (Some(units.q_groups), Some(units.kv_heads));
                Ok(LayerWeights {
                    attn_norm: decoded(store, &p(Part::AttnNorm), &[d])?,
                    attn_out_norm: decoded(store, &p(Part::AttnOutNorm), &[d])?,
                    moe_norm: decoded(store, &p(Part::MoeNorm), &[d])?,
                    moe_out_norm: decoded(store, &post_moe, &[d])?,
                    wq: attention(Part::Query, d, cfg.q_width(), q)?,
                    wk: attention(Part::Key, d, cfg.kv_width(), kv)?,
                    wv: attention(Part::Value, d, cfg.kv_width(), kv)?,
                    wo: attention(Part::AttnOut, cfg.q_width(), d, None)?,
                    router,
                    experts: ExpertWeights {
                        linear: experts(Part::Gate, ff, d)?,
                        linear_v: experts(Part::Up, ff, d)?,
                        linear_1: experts(Part::Down, d, ff)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, WeightError>>()?;
        Ok(Weights {
            embedding,
            output,
            final_norm,
            layers,
            shard: split.shard,
            vocab_rows: split.vocab_rows(cfg.vocab_size),
        })
    }
}

/// The parameters of the model, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Embedding,
    /// The output projection when a file stores one apart from the embedding.
    Output,
    FinalNorm,
    AttnNorm,
    AttnOutNorm,
    MoeNorm,
    MoeOutNorm,
    Query,
    Key,
    Value,
    AttnOut,
    Router,
    /// The GELU branch (`linear`).
    Gate,
    /// The linear branch (`linear_v`).
    Up,
    /// The down projection (`linear_1`).
    Down,
}

/// The files whose matrices are stored `[out, in]`, and their tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowLayout {
    /// llama.cpp's `grok` GGUF.
    Gguf,
    /// keyfan/grok-1-hf safetensors.
    Keyfan,
    /// hpcai-tech/grok-1 safetensors.
    Hpcai,
}

impl RowLayout {
    /// The layout whose embedding name the store holds.
    pub fn detect(store: &TensorStore) -> Option<RowLayout> {
        [RowLayout::Gguf, RowLayout::Keyfan, RowLayout::Hpcai]
            .into_iter()
            .find(|l| store.get(&l.name(Part::Embedding, 0, None)).is_ok())
    }

    /// The tensor holding `part` of layer `layer` (of expert `expert` for the
    /// expert matrices stored one per expert).
    pub fn name(self, part: Part, layer: usize, expert: Option<usize>) -> String {
        let e = expert.unwrap_or(0);
        match self {
            RowLayout::Gguf => {
                let global = match part {
                    Part::Embedding => Some("token_embd"),
                    Part::Output => Some("output"),
                    Part::FinalNorm => Some("output_norm"),
                    _ => None,
                };
                if let Some(g) = global {
                    return format!("{g}.weight");
                }
                let local = match part {
                    Part::AttnNorm => "attn_norm",
                    Part::AttnOutNorm => "attn_output_norm",
                    Part::MoeNorm => "ffn_norm",
                    Part::MoeOutNorm => "layer_output_norm",
                    Part::Query => "attn_q",
                    Part::Key => "attn_k",
                    Part::Value => "attn_v",
                    Part::AttnOut => "attn_output",
                    Part::Router => "ffn_gate_inp",
                    Part::Gate => return format!("blk.{layer}.ffn_gate.{e}.weight"),
                    Part::Up => return format!("blk.{layer}.ffn_up.{e}.weight"),
                    Part::Down => return format!("blk.{layer}.ffn_down.{e}.weight"),
                    Part::Embedding | Part::Output | Part::FinalNorm => unreachable!(),
                };
                format!("blk.{layer}.{local}.weight")
            }
            RowLayout::Keyfan => {
                let l = format!("transformer.decoder_layer.{layer}");
                match part {
                    Part::Embedding => "transformer.in_out_embed.weight".into(),
                    Part::Output => "lm_head.weight".into(),
                    Part::FinalNorm => "transformer.rms_norm.weight".into(),
                    Part::AttnNorm => format!("{l}.rms_norm.weight"),
                    Part::AttnOutNorm => format!("{l}.rms_norm_1.weight"),
                    Part::MoeNorm => format!("{l}.rms_norm_2.weight"),
                    Part::MoeOutNorm => format!("{l}.rms_norm_3.weight"),
                    Part::Query => format!("{l}.multi_head_attention.query.weight"),
                    Part::Key => format!("{l}.multi_head_attention.key.weight"),
                    Part::Value => format!("{l}.multi_head_attention.value.weight"),
                    Part::AttnOut => format!("{l}.multi_head_attention.linear.weight"),
                    Part::Router => format!("{l}.router.weight"),
                    Part::Gate => format!("{l}.moe.{e}.linear.weight"),
                    Part::Up => format!("{l}.moe.{e}.linear_v.weight"),
                    Part::Down => format!("{l}.moe.{e}.linear_1.weight"),
                }
            }
            RowLayout::Hpcai => {
                let l = format!("model.layers.{layer}");
                match part {
                    Part::Embedding => "model.embed_tokens.weight".into(),
                    Part::Output => "lm_head.weight".into(),
                    Part::FinalNorm => "model.norm.scale".into(),
                    Part::AttnNorm => format!("{l}.pre_attn_norm.scale"),
                    Part::AttnOutNorm => format!("{l}.post_attn_norm.scale"),
                    Part::MoeNorm => format!("{l}.pre_moe_norm.scale"),
                    Part::MoeOutNorm => format!("{l}.post_moe_norm.scale"),
                    Part::Query => format!("{l}.attn.q_proj.weight"),
                    Part::Key => format!("{l}.attn.k_proj.weight"),
                    Part::Value => format!("{l}.attn.v_proj.weight"),
                    Part::AttnOut => format!("{l}.attn.o_proj.weight"),
                    Part::Router => format!("{l}.moe_block.gate.weight"),
                    Part::Gate => format!("{l}.moe_block.experts.{e}.linear.weight"),
                    Part::Up => format!("{l}.moe_block.experts.{e}.linear_v.weight"),
                    Part::Down => format!("{l}.moe_block.experts.{e}.linear_1.weight"),
                }
            }
        }
    }

    /// The merged `[E, out, in]` tensor of an expert matrix, where the layout has one.
    pub fn merged_experts(self, part: Part, layer: usize) -> Option<String> {
        let name = match (self, part) {
            (RowLayout::Gguf, Part::Gate) => "ffn_gate_exps",
            (RowLayout::Gguf, Part::Up) => "ffn_up_exps",
            (RowLayout::Gguf, Part::Down) => "ffn_down_exps",
            _ => return None,
        };
        Some(format!("blk.{layer}.{name}.weight"))
    }
}
