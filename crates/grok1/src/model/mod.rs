//! The Grok-1 forward pass (shared/docs/grok1-model.md), written once against
//! the [`Backend`] trait.

pub mod attention;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod weights;

use std::collections::HashSet;
use std::sync::Arc;

use crate::backend::{cpu::CpuBackend, Backend, Precision, RowPosition};
use crate::config::ModelConfig;
use crate::kv_cache::{CacheError, KvCache, KvType, SeqId};
use crate::parallel::{Collective, SingleProcess};
use crate::weights::{TensorStore, WeightError};
use moe::RouterDecisions;
use rope::Rope;
pub use weights::Weights;

/// Bad input to a forward pass. Nothing is computed or cached when one is returned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("token id {token} at position {position} of sequence {sequence} is outside the vocabulary (ids 0..{vocab})")]
    TokenOutOfRange {
        token: u32,
        vocab: usize,
        sequence: usize,
        position: usize,
    },
    #[error("sequence {sequence} has no tokens")]
    EmptyInput { sequence: usize },
    #[error("context overflow: sequence {sequence} would hold {needed} tokens, but the model's context is {max} (sequence_len)")]
    ContextOverflow {
        sequence: usize,
        needed: usize,
        max: usize,
    },
    #[error("sequence {sequence} appears twice in one batch")]
    DuplicateSequence { sequence: usize },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// One sequence's new tokens in a batched forward call.
#[derive(Clone, Copy, Debug)]
pub struct SequenceInput<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
}

/// Which of one input's rows to compute logits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowLogits {
    None,
    Last,
    All,
}

/// Which rows' logits to compute.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LogitsRows {
    /// Every new token's row (prefill scoring, `grok1 logits`).
    All,
    /// Only the last new token of each sequence (generation).
    #[default]
    Last,
    /// A choice per input sequence (a serving step mixes prefill chunks that
    /// need no logits, scoring requests that need all, and decoding).
    PerInput(Vec<RowLogits>),
}

#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    pub precision: Precision,
    pub logits: LogitsRows,
}

/// What one forward call read: the basis of the memory roofline in `grok1 bench`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForwardStats {
    /// Bytes of weights read (each matrix counted once per call, however many
    /// rows it multiplied; experts only when some row was routed to them).
    pub weight_bytes: u64,
    /// Per layer, how many distinct experts ran.
    pub experts_read: Vec<usize>,
}

/// Logits of the selected rows, row-major `[rows, vocab]`, in input order.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    pub logits: Vec<f32>,
    pub vocab: usize,
    /// For each logits row: (index of its sequence in the input, position).
    pub rows: Vec<(usize, usize)>,
    pub stats: ForwardStats,
}

impl ForwardOutput {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The last row belonging to input sequence `index`.
    pub fn last_row_of(&self, index: usize) -> Option<&[f32]> {
        let i = self.rows.iter().rposition(|&(s, _)| s == index)?;
        Some(self.row(i))
    }
}

/// Intermediates recorded by a traced forward (the golden tests compare them).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// `[layers + 2]` of `[rows, d]`: the scaled embeddings, each layer's output,
    /// and the output of the final norm.
    pub hidden: Vec<Vec<f32>>,
    /// Per layer, the router's decisions for every row.
    pub router: Vec<RouterDecisions>,
    /// When set, the squared inputs of every layer's matrix products are
    /// added to it (an importance matrix's statistics).
    pub input_squares: Option<InputSquares>,
}

/// Per weight matrix (by its GGUF tensor name), the sum over rows of each
/// input column's square and the rows summed, per expert for the merged
/// expert tensors: what llama.cpp's imatrix collects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputSquares {
    pub entries: std::collections::BTreeMap<String, SquareSums>,
}

/// One tensor's sums: `matrices` runs of `cols` sums, and rows per matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct SquareSums {
    pub cols: usize,
    pub sums: Vec<f64>,
    pub rows: Vec<u64>,
}

impl InputSquares {
    /// Adds the rows of `x` (`[rows, cols]`) as inputs of matrix `matrix` of
    /// `matrices` of tensor `name`.
    pub(crate) fn add(
        &mut self,
        name: String,
        matrix: usize,
        matrices: usize,
        cols: usize,
        x: &[f32],
    ) {
        let e = self.entries.entry(name).or_insert_with(|| SquareSums {
            cols,
            sums: vec![0.0; matrices * cols],
            rows: vec![0; matrices],
        });
        let sums = &mut e.sums[matrix * cols..(matrix + 1) * cols];
        for row in x.chunks_exact(cols) {
            for (s, &v) in sums.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        e.rows[matrix] += (x.len() / cols) as u64;
    }
}

/// A loaded model: config, weights and the backend that runs it.
pub struct Grok1 {
    config: ModelConfig,
    /// The shapes this process computes: `config` with the heads and expert
    /// width of its shard (the same as `config` for the whole model).
    local: ModelConfig,
    collective: Arc<dyn Collective>,
    weights: Weights,
    backend: Box<dyn Backend>,
    rope: Rope,
    gates: GateMode,
    /// The fast mode's int8 copy of the output projection, made on first use.
    fast_output: std::sync::OnceLock<crate::backend::Int8Rows>,
}

/// How the selected experts' outputs are weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateMode {
    /// The official model: each expert weighted by its softmax probability over
    /// all experts, not renormalised over the selected ones.
    #[default]
    Official,
    /// llama.cpp's `grok` graph: the selected probabilities renormalised to sum
    /// to 1 (for comparing with llama.cpp; not the released model's maths).
    Renormalized,
}

impl Grok1 {
    /// Builds the model from the tensors of a store, checking every shape.
    pub fn from_store(config: ModelConfig, store: &TensorStore) -> Result<Self, WeightError> {
        let weights = Weights::from_store(&config, store)?;
        Ok(Self::new(config, weights, Box::new(CpuBackend::new())))
    }

    /// One rank's part of the model (tensor parallel over `collective`):
    /// its slice of each split weight, from a store holding the whole model.
    pub fn from_store_parallel(
        config: ModelConfig,
        store: &TensorStore,
        collective: Arc<dyn Collective>,
    ) -> Result<Self, WeightError> {
        let weights = Weights::from_store_shard(&config, store, collective.shard())?;
        Ok(Self::new_parallel(
            config,
            weights,
            Box::new(CpuBackend::new()),
            collective,
        ))
    }

    /// One rank's part of the model from a store holding only that part,
    /// already cut (a rank of a shard set): mapped as it is, nothing copied.
    pub fn from_presliced_store(
        config: ModelConfig,
        store: &TensorStore,
        collective: Arc<dyn Collective>,
    ) -> Result<Self, WeightError> {
        let weights = Weights::from_presliced_store(&config, store, collective.shard())?;
        Ok(Self::new_parallel(
            config,
            weights,
            Box::new(CpuBackend::new()),
            collective,
        ))
    }

    pub fn new(config: ModelConfig, weights: Weights, backend: Box<dyn Backend>) -> Self {
        Self::new_parallel(config, weights, backend, Arc::new(SingleProcess))
    }

    /// A model whose `weights` are the part `collective.shard()` of the whole
    /// (panics if they are another part: a caller's mistake, not bad input).
    pub fn new_parallel(
        config: ModelConfig,
        weights: Weights,
        backend: Box<dyn Backend>,
        collective: Arc<dyn Collective>,
    ) -> Self {
        assert_eq!(
            weights.shard,
            collective.shard(),
            "weights of another shard than the collective's rank"
        );
        let rope = Rope::new(config.key_size, config.rope_base);
        let n = weights.shard.count;
        let local = ModelConfig {
            num_q_heads: config.num_q_heads / n,
            num_kv_heads: config.num_kv_heads / n,
            ffn_size: config.ffn_size / n,
            ..config.clone()
        };
        Grok1 {
            config,
            local,
            collective,
            weights,
            backend,
            rope,
            gates: GateMode::Official,
            fast_output: std::sync::OnceLock::new(),
        }
    }

    /// The int8 copy of the output projection the fast mode reads, made now if
    /// it is not yet (a pass over the `vocab x d` matrix); `None` when the
    /// projection is stored in 8 bits or fewer already (a quantised GGUF),
    /// which the fast mode then reads as it is.
    pub fn fast_output(&self) -> Option<&crate::backend::Int8Rows> {
        let output = &self.weights.output;
        if !output.dtype.is_float() {
            return None;
        }
        Some(self.fast_output.get_or_init(|| {
            crate::backend::Int8Rows::quantize(output.rows, output.cols, |r, out| {
                output.row_into(r, out)
            })
        }))
    }

    /// Chooses how expert outputs are weighted (the official maths by default).
    pub fn set_gate_mode(&mut self, mode: GateMode) {
        self.gates = mode;
    }

    pub fn gate_mode(&self) -> GateMode {
        self.gates
    }

    /// The weights, as views into their files.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The processes this model is split over (one for the whole model).
    pub fn collective(&self) -> &dyn Collective {
        &*self.collective
    }

    /// [`collective`](Self::collective), shared.
    pub fn shared_collective(&self) -> Arc<dyn Collective> {
        self.collective.clone()
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Floating-point operations of the matrix products of one token (2 per
    /// multiply-add: attention projections and the selected experts; the
    /// attention scores and the output projection are left out).
    pub fn flops_per_token(&self) -> f64 {
        let c = &self.config;
        let d = c.emb_size as f64;
        let attention = 2.0 * d * (c.q_width() + c.kv_width()) as f64;
        let experts = c.num_selected_experts as f64 * 3.0 * d * c.ffn_size as f64;
        2.0 * c.num_layers as f64 * (attention + experts)
    }

    /// An f32 KV cache able to hold `tokens` positions over at most
    /// `sequences` sequences.
    pub fn new_cache(&self, tokens: usize, sequences: usize) -> KvCache {
        self.new_cache_of(tokens, sequences, KvType::F32)
    }

    /// A KV cache of `kv_type` able to hold `tokens` positions over at most
    /// `sequences` sequences.
    pub fn new_cache_of(&self, tokens: usize, sequences: usize, kv_type: KvType) -> KvCache {
        // This process's key/value heads only.
        KvCache::with_capacity(&self.local, tokens, sequences, kv_type)
    }

    /// A KV cache of `num_pages` pages of `page_size` tokens of `kv_type`,
    /// for this process's key/value heads (a serving engine's).
    pub fn new_paged_cache(&self, num_pages: usize, page_size: usize, kv_type: KvType) -> KvCache {
        KvCache::with_type(&self.local, num_pages, page_size, kv_type)
    }

    /// Checks a prompt for a fresh sequence (ids in range, fits the context)
    /// without running it.
    pub fn validate_prompt(&self, tokens: &[u32]) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput { sequence: 0 });
        }
        let vocab = self.config.vocab_size;
        if let Some(p) = tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange {
                token: tokens[p],
                vocab,
                sequence: 0,
                position: p,
            });
        }
        if tokens.len() > self.config.sequence_len {
            return Err(ModelError::ContextOverflow {
                sequence: 0,
                needed: tokens.len(),
                max: self.config.sequence_len,
            });
        }
        Ok(())
    }

    fn validate(&self, cache: &KvCache, inputs: &[SequenceInput]) -> Result<(), ModelError> {
        let vocab = self.config.vocab_size;
        let mut seen = HashSet::new();
        for (i, input) in inputs.iter().enumerate() {
            if !seen.insert(input.seq) {
                return Err(ModelError::DuplicateSequence { sequence: i });
            }
            if input.tokens.is_empty() {
                return Err(ModelError::EmptyInput { sequence: i });
            }
            if let Some(p) = input.tokens.iter().position(|&t| t as usize >= vocab) {
                return Err(ModelError::TokenOutOfRange {
                    token: input.tokens[p],
                    vocab,
                    sequence: i,
                    position: cache.len(input.seq)? + p,
                });
            }
            let needed = cache.len(input.seq)? + input.tokens.len();
            if needed > self.config.sequence_len {
                return Err(ModelError::ContextOverflow {
                    sequence: i,
                    needed,
                    max: self.config.sequence_len,
                });
            }
        }
        Ok(())
    }

    /// Runs the new tokens of every input sequence through the model in one call,
    /// appending their keys and values to `cache`, and returns the logits of the
    /// rows `options.logits` selects. With `trace`, records the intermediates.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        inputs: &[SequenceInput],
        options: &ForwardOptions,
        trace: Option<&mut Trace>,
    ) -> Result<ForwardOutput, ModelError> {
        if rayon::current_thread_index().is_some() {
            return self.forward_here(cache, inputs, options, trace);
        }
        // Called from outside the thread pool: run the pass on one of its
        // workers, so that its many parallel products start and end without a
        // hand-off to this thread and back each time (a futex sleep and wake
        // per product, a few percent of a decoding step). The result is the same.
        rayon::scope(|_| self.forward_here(cache, inputs, options, trace))
    }

    fn forward_here(
        &self,
        cache: &mut KvCache,
        inputs: &[SequenceInput],
        options: &ForwardOptions,
        mut trace: Option<&mut Trace>,
    ) -> Result<ForwardOutput, ModelError> {
        self.validate(cache, inputs)?;
        let cfg = &self.config;
        let p = options.precision;
        let d = cfg.emb_size;
        // Reserve every sequence's pages first, so a full cache fails before any
        // sequence is changed.
        let starts: Vec<usize> = inputs
            .iter()
            .map(|i| cache.len(i.seq))
            .collect::<Result<_, _>>()?;
        let before = cache.free_pages();
        for (input, &start) in inputs.iter().zip(&starts) {
            if let Err(e) = cache.reserve(input.seq, start + input.tokens.len()) {
                for (input, &start) in inputs.iter().zip(&starts) {
                    cache.truncate(input.seq, start)?;
                }
                debug_assert_eq!(cache.free_pages(), before);
                return Err(e.into());
            }
        }
        let mut rows = Vec::new();
        let mut tokens = Vec::new();
        for (input, &start) in inputs.iter().zip(&starts) {
            for (j, &t) in input.tokens.iter().enumerate() {
                rows.push(RowPosition {
                    seq: input.seq,
                    pos: start + j,
                });
                tokens.push(t);
            }
            cache.commit(input.seq, input.tokens, cfg.pad_token);
        }

        // x = E[tokens] * embedding_multiplier_scale; split by vocabulary, the
        // rank holding a token's row fills it and the others add zeros.
        let mut x = vec![0f32; tokens.len() * d];
        let emb_mult = p.cast_one(cfg.embedding_multiplier_scale as f32);
        let vocab_rows = &self.weights.vocab_rows;
        for (row, &t) in x.chunks_exact_mut(d).zip(&tokens) {
            if !vocab_rows.contains(&(t as usize)) {
                continue;
            }
            self.weights
                .embedding
                .row_into(t as usize - vocab_rows.start, row);
            p.cast(row);
            for v in row.iter_mut() {
                *v *= emb_mult;
            }
        }
        let collective = &*self.collective;
        collective.all_reduce_sum(&mut x);
        p.cast(&mut x);
        if let Some(t) = trace.as_deref_mut() {
            t.hidden.push(x.clone());
        }
        let mut squares = trace.as_deref_mut().and_then(|t| t.input_squares.take());

        let eps = cfg.rms_norm_eps as f32;
        let backend = &*self.backend;
        let f32_bytes = std::mem::size_of::<f32>() as u64;
        let mut stats = ForwardStats {
            weight_bytes: tokens.len() as u64 * self.weights.embedding.row_len() as u64,
            experts_read: Vec::with_capacity(cfg.num_layers),
        };
        for (l, w) in self.weights.layers.iter().enumerate() {
            // a = rms_norm(x); a = attention(a); a = rms_norm_1(a); x = x + a
            let a = norm::rms_norm(&x, &w.attn_norm, eps, p);
            let local = &self.local;
            let mut a = attention::attention_block(
                backend,
                local,
                &self.rope,
                w,
                l,
                &a,
                &rows,
                cache,
                p,
                squares.as_mut(),
            );
            // Each rank's heads' share of the output projection, summed.
            collective.all_reduce_sum(&mut a);
            p.cast(&mut a);
            let a = norm::rms_norm(&a, &w.attn_out_norm, eps, p);
            add_into(&mut x, &a, p);
            // m = rms_norm_2(x); m = moe(m); m = rms_norm_3(m); x = x + m
            let m = norm::rms_norm(&x, &w.moe_norm, eps, p);
            let (mut m, router) =
                moe::moe_block(backend, local, w, l, &m, p, self.gates, squares.as_mut());
            // Each rank's share of every expert's hidden width, summed.
            collective.all_reduce_sum(&mut m);
            p.cast(&mut m);
            let m = norm::rms_norm(&m, &w.moe_out_norm, eps, p);
            add_into(&mut x, &m, p);
            let experts: std::collections::BTreeSet<usize> =
                router.experts.iter().copied().collect();
            stats.weight_bytes +=
                w.dense_bytes() + experts.iter().map(|&e| w.experts.bytes(e)).sum::<u64>();
            stats.experts_read.push(experts.len());
            if let Some(t) = trace.as_deref_mut() {
                t.hidden.push(x.clone());
                t.router.push(router);
            }
        }
        let x = norm::rms_norm(&x, &self.weights.final_norm, eps, p);
        if let Some(t) = trace {
            t.hidden.push(x.clone());
            t.input_squares = squares;
        }

        // logits = (x @ E^T) * output_multiplier_scale, for the selected rows
        let mut selected = Vec::new();
        let mut out_rows = Vec::new();
        let mut r = 0;
        for (i, input) in inputs.iter().enumerate() {
            let n = input.tokens.len();
            let choice = match &options.logits {
                LogitsRows::All => RowLogits::All,
                LogitsRows::Last => RowLogits::Last,
                LogitsRows::PerInput(v) => v.get(i).copied().unwrap_or(RowLogits::Last),
            };
            let chosen = match choice {
                RowLogits::All => r..r + n,
                RowLogits::Last => r + n - 1..r + n,
                RowLogits::None => r..r,
            };
            for row in chosen {
                selected.extend_from_slice(&x[row * d..(row + 1) * d]);
                out_rows.push((i, rows[row].pos));
            }
            r += n;
        }
        // This rank's vocabulary columns of the logits; gathered below.
        let vocab = self.weights.vocab_rows.len();
        let output = &self.weights.output;
        let mut logits = vec![0f32; out_rows.len() * vocab];
        let fast = p.int8_output().then(|| self.fast_output()).flatten();
        match (fast, output.as_f32()) {
            (Some(q), _) => {
                stats.weight_bytes += q.byte_len() as u64 + d as u64;
                backend.matmul_int8_rows(&selected, q, &mut logits);
            }
            (None, Some(e)) => {
                stats.weight_bytes += output.byte_len() as u64 + d as u64 * f32_bytes;
                backend.matmul_transposed_f32(&selected, &e, &mut logits, p);
            }
            // Stored in fewer bits already: no bf16 cast of the weights to mimic;
            // the fast modes read it with int8 activations where the backend
            // has an integer kernel for its type (Q8_0).
            (None, None) => {
                stats.weight_bytes += output.byte_len() as u64 + d as u64 * f32_bytes;
                if p.int8_output() {
                    backend.matmul_rows_fast(&selected, output, &mut logits);
                } else {
                    backend.matmul_rows(&selected, output, &mut logits);
                }
            }
        }
        p.cast(&mut logits);
        let out_mult = p.cast_one(cfg.output_multiplier_scale as f32);
        for v in logits.iter_mut() {
            *v *= out_mult;
        }
        p.cast(&mut logits);
        let (mut logits, vocab) = gather_vocabulary(collective, logits, vocab, out_rows.len());
        // The int8 output projection quantises a NaN hidden row to zeros, and
        // all-zero logits decode as id 0: such a row's logits are NaN instead,
        // for the sampler to refuse.
        for (hidden, row) in selected.chunks_exact(d).zip(logits.chunks_exact_mut(vocab)) {
            if hidden.iter().any(|v| !v.is_finite()) {
                row.fill(f32::NAN);
            }
        }
        Ok(ForwardOutput {
            logits,
            vocab,
            rows: out_rows,
            stats,
        })
    }
}

/// Every rank's `[rows, part]` logits (its vocabulary slice, in rank order) as
/// `[rows, parts * part]`, on every rank.
fn gather_vocabulary(
    collective: &dyn Collective,
    local: Vec<f32>,
    part: usize,
    rows: usize,
) -> (Vec<f32>, usize) {
    let n = collective.size();
    if n == 1 {
        return (local, part);
    }
    let mut all = vec![0f32; n * local.len()];
    collective.all_gather_f32(&local, &mut all);
    let vocab = n * part;
    let mut logits = vec![0f32; rows * vocab];
    for (rank, shard) in all.chunks_exact(local.len().max(1)).enumerate() {
        for (r, src) in shard.chunks_exact(part.max(1)).enumerate() {
            logits[r * vocab + rank * part..r * vocab + (rank + 1) * part].copy_from_slice(src);
        }
    }
    (logits, vocab)
}

/// `x += a` (the residual add, in the activation dtype).
fn add_into(x: &mut [f32], a: &[f32], p: Precision) {
    for (x, &a) in x.iter_mut().zip(a) {
        *x = p.cast_one(*x + a);
    }
}
