//! `grok1 convert`: a loaded model (any format) written out as GGUF (llama.cpp's
//! `grok` layout) or safetensors (the keyfan/grok-1-hf layout), tensor by
//! tensor, re-encoded into a chosen ggml type or llama-quantize mix
//! (`mix.rs`), the quantisers optionally weighted by an importance matrix.
//!
//! Memory stays bounded whatever the model size: the source is read through
//! its memory map and each output tensor is produced a block of rows at a time
//! (dequantised to f32, re-encoded, appended to the file), so the peak is a
//! few blocks of rows, never a whole tensor or model.

use std::io::Write;
use std::path::{Path, PathBuf};

use grok1_tokenizer::{PieceKind, Tokenizer};

use rayon::prelude::*;

use crate::backend::Matrix;
use crate::config::ModelConfig;
use crate::imatrix::Imatrix;
use crate::model::weights::{Part, RowLayout};
use crate::model::Weights;
use crate::progress::Progress;
use crate::quant::{quantize_row_weighted, GgmlType};

mod mix;
pub mod shards;
pub use mix::{fallback, MatrixRole, Mix, ModelShape, Scheme};

/// Output container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Gguf,
    Safetensors,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    /// The importance matrix does not fit the model.
    #[error("{0}")]
    Imatrix(String),
}

/// How `convert_with` writes the model.
#[derive(Clone, Copy, Debug)]
pub struct ConvertOptions<'a> {
    pub format: OutFormat,
    pub scheme: Scheme,
    /// Column importance for the quantisers' scale searches.
    pub imatrix: Option<&'a Imatrix>,
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub bytes_written: u64,
    /// Elements of the source model read.
    pub parameters: u64,
    /// Matrices encoded with importance from the imatrix.
    pub weighted_matrices: usize,
}

/// Where the values of one output tensor come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A vector or a small f32 matrix stored as is.
    Values(&'a [f32]),
    /// The router `[d, E]`, written `[E, d]`.
    Router(&'a [f32], usize, usize),
    /// A linear layer, written as its `[out, in]` rows.
    Linear(&'a Matrix),
    /// One matrix per expert, written as one `[E, out, in]` tensor.
    Experts(&'a [Matrix]),
    /// The embedding or output projection rows.
    Rows(&'a crate::backend::RowMatrix),
}

struct Planned<'a> {
    name: String,
    /// numpy order; the last axis is the row.
    shape: Vec<usize>,
    dtype: GgmlType,
    source: Source<'a>,
    /// Column importance of each matrix (one per expert of an expert
    /// tensor), where an imatrix gives it.
    importance: Vec<Option<Vec<f32>>>,
    /// One rank's columns of a tensor split inside its rows (a shard set):
    /// `source` is the whole tensor, whose rows of `.1` values are each
    /// encoded whole (some encoders weigh a block by its row's mean square)
    /// and only the bytes `.0` of each written.
    keep: Option<(std::ops::Range<usize>, usize)>,
    /// The matrices' role, where they are split over ranks by it.
    part: Option<Part>,
    /// One rank's rows of each matrix of a tensor split along its rows (a
    /// shard set); all of them when `None`.
    rows: Option<std::ops::Range<usize>>,
}

impl Planned<'_> {
    /// Values of each row read from the source.
    fn source_cols(&self) -> usize {
        match &self.keep {
            Some((_, whole)) => *whole,
            None => *self.shape.last().unwrap(),
        }
    }

    fn bytes(&self) -> u64 {
        let row = self.dtype.row_bytes(*self.shape.last().unwrap()).unwrap() as u64;
        row * self.shape[..self.shape.len() - 1].iter().product::<usize>() as u64
    }
}

fn plan<'a>(
    cfg: &ModelConfig,
    w: &'a Weights,
    layout: RowLayout,
    scheme: Scheme,
) -> Vec<Planned<'a>> {
    let d = cfg.emb_size;
    let e = cfg.num_experts;
    let shape = ModelShape {
        layers: cfg.num_layers,
        experts: e,
        gqa: cfg.num_q_heads / cfg.num_kv_heads.max(1),
        has_output: !w.output_is_tied(),
    };
    let type_of = |part: Part, layer: usize, cols: usize| {
        scheme.matrix_type(MatrixRole { part, layer, cols }, shape)
    };
    let name = |part: Part, layer: usize| layout.name(part, layer, None);
    let mut out = Vec::new();
    let vector = |name: String, v: &'a [f32]| Planned {
        name,
        shape: vec![v.len()],
        dtype: GgmlType::F32,
        source: Source::Values(v),
        importance: Vec::new(),
        keep: None,
        part: None,
        rows: None,
    };
    let linear = |name: String, part: Part, layer: usize, m: &'a Matrix| Planned {
        name,
        shape: vec![m.n(), m.k()],
        dtype: type_of(part, layer, m.k()),
        source: Source::Linear(m),
        importance: Vec::new(),
        keep: None,
        part: Some(part),
        rows: None,
    };
    out.push(Planned {
        name: name(Part::Embedding, 0),
        shape: vec![w.embedding.rows, w.embedding.cols],
        dtype: type_of(Part::Embedding, 0, d),
        source: Source::Rows(&w.embedding),
        importance: Vec::new(),
        keep: None,
        part: Some(Part::Embedding),
        rows: None,
    });
    if shape.has_output {
        out.push(Planned {
            name: name(Part::Output, 0),
            shape: vec![w.output.rows, w.output.cols],
            dtype: type_of(Part::Output, 0, d),
            source: Source::Rows(&w.output),
            importance: Vec::new(),
            keep: None,
            part: Some(Part::Output),
            rows: None,
        });
    }
    for (i, l) in w.layers.iter().enumerate() {
        let p = |part: Part| name(part, i);
        out.push(vector(p(Part::AttnNorm), &l.attn_norm));
        out.push(vector(p(Part::AttnOutNorm), &l.attn_out_norm));
        out.push(vector(p(Part::MoeNorm), &l.moe_norm));
        out.push(vector(p(Part::MoeOutNorm), &l.moe_out_norm));
        out.push(linear(p(Part::Query), Part::Query, i, &l.wq));
        out.push(linear(p(Part::Key), Part::Key, i, &l.wk));
        out.push(linear(p(Part::Value), Part::Value, i, &l.wv));
        out.push(linear(p(Part::AttnOut), Part::AttnOut, i, &l.wo));
        out.push(Planned {
            name: p(Part::Router),
            shape: vec![e, d],
            dtype: GgmlType::F32,
            source: Source::Router(&l.router, d, e),
            importance: Vec::new(),
            keep: None,
            part: None,
            rows: None,
        });
        for (part, mats) in [
            (Part::Gate, &l.experts.linear),
            (Part::Up, &l.experts.linear_v),
            (Part::Down, &l.experts.linear_1),
        ] {
            match layout.merged_experts(part, i) {
                Some(merged) => out.push(Planned {
                    name: merged,
                    shape: vec![mats.len(), mats[0].n(), mats[0].k()],
                    dtype: type_of(part, i, mats[0].k()),
                    source: Source::Experts(mats),
                    importance: Vec::new(),
                    keep: None,
                    part: Some(part),
                    rows: None,
                }),
                None => {
                    for (x, m) in mats.iter().enumerate() {
                        out.push(linear(layout.name(part, i, Some(x)), part, i, m));
                    }
                }
            }
        }
    }
    out.push(vector(name(Part::FinalNorm, 0), &w.final_norm));
    out
}

/// Fills each quantised matrix's column importance from `imatrix`; returns
/// how many matrices got one. An entry whose shape differs from the
/// model's, or an imatrix that names none of the model's matrices, is an
/// error.
fn attach_importance(tensors: &mut [Planned], imatrix: &Imatrix) -> Result<usize, ConvertError> {
    let mut weighted = 0;
    for t in tensors.iter_mut() {
        let quantised = !t.dtype.is_float() && t.shape.len() >= 2;
        if !quantised {
            continue;
        }
        let cols = *t.shape.last().unwrap();
        let matrices = if t.shape.len() == 3 { t.shape[0] } else { 1 };
        t.importance = (0..matrices)
            .map(|m| imatrix.importance(&t.name, m, matrices, cols))
            .collect::<Result<_, _>>()
            .map_err(ConvertError::Imatrix)?;
        if t.importance.iter().any(Option::is_some) {
            weighted += 1;
        }
    }
    if weighted == 0 {
        let some: Vec<&str> = imatrix.entries.keys().take(3).map(String::as_str).collect();
        return Err(ConvertError::Imatrix(format!(
            "the importance matrix names none of this model's quantised matrices (it holds {} entries, such as {})",
            imatrix.entries.len(),
            some.join(", ")
        )));
    }
    Ok(weighted)
}

/// Rows `first..first + count` of `m` decoded into `out`, in parallel.
fn decode_rows(m: &crate::backend::RowMatrix, first: usize, count: usize, out: &mut [f32]) {
    out[..count * m.cols]
        .par_chunks_mut(m.cols)
        .enumerate()
        .for_each(|(j, row)| m.row_into(first + j, row));
}

/// Output rows `first..first + count` of `m` (each `k` values) into `out`.
fn linear_rows(m: &Matrix, first: usize, count: usize, out: &mut [f32]) {
    match m {
        Matrix::Rows(r) => decode_rows(r, first, count, out),
        Matrix::Int8Grouped(q) => {
            // W is [k, n] row-major: output row j is column first + j. Tasks
            // take runs of columns; each reads its slice of every row of W.
            let per_group = q.k / q.groups;
            let w = q.weight_bytes();
            const COLS_PER_TASK: usize = 32;
            out[..count * q.k]
                .par_chunks_mut(COLS_PER_TASK * q.k)
                .enumerate()
                .for_each(|(task, rows)| {
                    let c0 = first + task * COLS_PER_TASK;
                    let width = rows.len() / q.k;
                    let mut scales = vec![0f32; width];
                    for r in 0..q.k {
                        if r % per_group == 0 {
                            q.scales_into(r / per_group, c0..c0 + width, &mut scales);
                        }
                        let src = &w[r * q.n + c0..r * q.n + c0 + width];
                        for (j, (&b, &s)) in src.iter().zip(&scales).enumerate() {
                            rows[j * q.k + r] = b as i8 as f32 * s;
                        }
                    }
                });
        }
    }
}

/// Rows per block when producing a tensor: about 8 MiB of f32.
fn block_rows(cols: usize) -> usize {
    ((8 << 20) / 4 / cols.max(1)).clamp(1, 4096)
}

/// Encodes a block of rows (with their columns' importance, if any) and
/// writes it.
type Emit<'a> = dyn FnMut(&[f32], Option<&[f32]>, &mut dyn Write) -> std::io::Result<()> + 'a;

/// Writes `t`'s bytes to `out`, a block of rows at a time.
fn write_tensor(
    t: &Planned,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let cols = t.source_cols();
    let kept = t.keep.as_ref().map(|(bytes, _)| bytes.clone());
    let out_row = match &kept {
        Some(bytes) => bytes.len(),
        None => t.dtype.row_bytes(cols).unwrap(),
    } as u64;
    let mut emit =
        |rows: &[f32], importance: Option<&[f32]>, out: &mut dyn Write| -> std::io::Result<()> {
            // Rows are encoded in parallel, then written in order.
            let per_task = (1 << 16) / cols.max(1) + 1;
            let encoded: Vec<Vec<u8>> = rows
                .par_chunks(per_task * cols)
                .map(|chunk| {
                    let mut all = Vec::new();
                    let mut row_bytes = Vec::new();
                    for row in chunk.chunks_exact(cols) {
                        quantize_row_weighted(t.dtype, row, importance, &mut row_bytes);
                        match &kept {
                            Some(bytes) => all.extend_from_slice(&row_bytes[bytes.clone()]),
                            None => all.extend_from_slice(&row_bytes),
                        }
                    }
                    all
                })
                .collect();
            for e in &encoded {
                out.write_all(e)?;
            }
            progress((rows.len() / cols) as u64 * out_row);
            Ok(())
        };
    let importance = |m: usize| t.importance.get(m).and_then(|v| v.as_deref());
    match t.source {
        Source::Values(v) => emit(v, None, out)?,
        Source::Router(r, d, e) => {
            let transposed: Vec<f32> = (0..e * d).map(|j| r[(j % d) * e + j / d]).collect();
            emit(&transposed, None, out)?;
        }
        Source::Rows(m) => {
            // Pages are released a block at a time: the embedding is the
            // largest tensor (3 GiB of f32 in Grok-1).
            let len = m.row_len();
            let rows = t.rows.clone().unwrap_or(0..m.rows);
            write_blocks(
                rows.len(),
                cols,
                &mut emit,
                importance(0),
                out,
                |first, count, buf| decode_rows(m, rows.start + first, count, buf),
                |first, count| {
                    m.data
                        .slice((rows.start + first) * len, count * len)
                        .release()
                },
            )?;
        }
        Source::Linear(m) => {
            let rows = t.rows.clone().unwrap_or(0..m.n());
            write_linear(m, rows, cols, &mut emit, importance(0), out)?
        }
        Source::Experts(ms) => {
            for (x, m) in ms.iter().enumerate() {
                let rows = t.rows.clone().unwrap_or(0..m.n());
                write_linear(m, rows, cols, &mut emit, importance(x), out)?;
            }
        }
    }
    Ok(())
}

/// Rows `rows` of `[out, in]` (all of them but in a shard set's part).
fn write_linear(
    m: &Matrix,
    rows: std::ops::Range<usize>,
    cols: usize,
    emit: &mut Emit,
    importance: Option<&[f32]>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    write_blocks(
        rows.len(),
        cols,
        emit,
        importance,
        out,
        |first, count, buf| linear_rows(m, rows.start + first, count, buf),
        |_, _| {},
    )?;
    // Done with this matrix: its pages may leave the resident set.
    m.release();
    Ok(())
}

/// Emits `rows` rows of `cols` values a block at a time: `fill` decodes a
/// block into the buffer, `done` runs after the block is written.
fn write_blocks(
    rows: usize,
    cols: usize,
    emit: &mut Emit,
    importance: Option<&[f32]>,
    out: &mut dyn Write,
    mut fill: impl FnMut(usize, usize, &mut [f32]),
    mut done: impl FnMut(usize, usize),
) -> std::io::Result<()> {
    let block = block_rows(cols);
    let mut buf = vec![0f32; block * cols];
    for first in (0..rows).step_by(block) {
        let count = block.min(rows - first);
        fill(first, count, &mut buf);
        emit(&buf[..count * cols], importance, out)?;
        done(first, count);
    }
    Ok(())
}

pub(crate) const ALIGN: u64 = 32;

pub(crate) fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// GGUF metadata values this writer emits.
pub(crate) enum Kv {
    Bool(bool),
    U32(u32),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

pub(crate) fn gguf_kv(out: &mut Vec<u8>, key: &str, v: &Kv) {
    use crate::weights::gguf::value_type as vt;
    let array_header = |out: &mut Vec<u8>, item: u32, len: usize| {
        out.extend(vt::ARRAY.to_le_bytes());
        out.extend(item.to_le_bytes());
        out.extend((len as u64).to_le_bytes());
    };
    gguf_string(out, key);
    match v {
        Kv::Bool(b) => {
            out.extend(vt::BOOL.to_le_bytes());
            out.push(u8::from(*b));
        }
        Kv::U32(x) => {
            out.extend(vt::U32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Kv::F32(x) => {
            out.extend(vt::F32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Kv::Str(s) => {
            out.extend(vt::STRING.to_le_bytes());
            gguf_string(out, s);
        }
        Kv::Strs(v) => {
            array_header(out, vt::STRING, v.len());
            v.iter().for_each(|s| gguf_string(out, s));
        }
        Kv::F32s(v) => {
            array_header(out, vt::F32, v.len());
            v.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        Kv::I32s(v) => {
            array_header(out, vt::I32, v.len());
            v.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
    }
}

fn gguf_metadata(
    cfg: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
    scheme: Scheme,
) -> Vec<(String, Kv)> {
    let mut kv = vec![
        ("general.architecture".to_string(), Kv::Str("grok".into())),
        ("general.name".into(), Kv::Str(cfg.name.clone())),
        ("general.file_type".into(), Kv::U32(scheme.file_type())),
        ("general.quantization_version".into(), Kv::U32(2)),
        (
            "grok.context_length".into(),
            Kv::U32(cfg.sequence_len as u32),
        ),
        ("grok.embedding_length".into(), Kv::U32(cfg.emb_size as u32)),
        (
            "grok.feed_forward_length".into(),
            Kv::U32(cfg.ffn_size as u32),
        ),
        ("grok.block_count".into(), Kv::U32(cfg.num_layers as u32)),
        (
            "grok.attention.head_count".into(),
            Kv::U32(cfg.num_q_heads as u32),
        ),
        (
            "grok.attention.head_count_kv".into(),
            Kv::U32(cfg.num_kv_heads as u32),
        ),
        (
            "grok.attention.key_length".into(),
            Kv::U32(cfg.key_size as u32),
        ),
        (
            "grok.attention.value_length".into(),
            Kv::U32(cfg.key_size as u32),
        ),
        ("grok.rope.freq_base".into(), Kv::F32(cfg.rope_base as f32)),
        (
            "grok.attention.layer_norm_rms_epsilon".into(),
            Kv::F32(cfg.rms_norm_eps as f32),
        ),
        ("grok.expert_count".into(), Kv::U32(cfg.num_experts as u32)),
        (
            "grok.expert_used_count".into(),
            Kv::U32(cfg.num_selected_experts as u32),
        ),
        (
            "grok.attn_logit_softcapping".into(),
            Kv::F32(cfg.attn_softcap as f32),
        ),
        (
            "grok.attention.output_scale".into(),
            Kv::F32(cfg.attn_output_multiplier as f32),
        ),
        (
            "grok.embedding_scale".into(),
            Kv::F32(cfg.embedding_multiplier_scale as f32),
        ),
        (
            "grok.logit_scale".into(),
            Kv::F32(cfg.output_multiplier_scale as f32),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Kv::U32(cfg.pad_token),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Kv::U32(cfg.eos_token)),
    ];
    // The vocabulary llama.cpp needs to load the file (its `llama` SentencePiece
    // tokenizer), when it matches the model's.
    if let Some(t) = tokenizer.filter(|t| t.vocab_size() == cfg.vocab_size) {
        let n = t.vocab_size() as u32;
        let kind = |id: u32| match t.kind(id) {
            Some(PieceKind::Normal) | None => 1,
            Some(PieceKind::Unknown) => 2,
            Some(PieceKind::Control) => 3,
            Some(PieceKind::UserDefined) => 4,
            Some(PieceKind::Unused) => 5,
            Some(PieceKind::Byte) => 6,
        };
        kv.push(("tokenizer.ggml.model".into(), Kv::Str("llama".into())));
        kv.push((
            "tokenizer.ggml.tokens".into(),
            Kv::Strs(
                (0..n)
                    .map(|i| t.id_to_piece(i).unwrap_or_default().to_string())
                    .collect(),
            ),
        ));
        kv.push((
            "tokenizer.ggml.scores".into(),
            Kv::F32s((0..n).map(|i| t.score(i).unwrap_or(0.0)).collect()),
        ));
        kv.push((
            "tokenizer.ggml.token_type".into(),
            Kv::I32s((0..n).map(kind).collect()),
        ));
        if let Some(b) = t.bos_id() {
            kv.push(("tokenizer.ggml.bos_token_id".into(), Kv::U32(b)));
        }
        kv.push((
            "tokenizer.ggml.unknown_token_id".into(),
            Kv::U32(t.unk_id()),
        ));
        kv.push(("tokenizer.ggml.add_bos_token".into(), Kv::Bool(false)));
    }
    kv
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The names a conversion writes into its output directory: safetensors'
/// (`model.safetensors`, `config.json`) and the official checkpoint's
/// (`config.json`, `ckpt-0/`).
const OUTPUT_FILES: [&str; 2] = ["model.safetensors", "config.json"];
const CKPT_DIR: &str = "ckpt-0";

/// The first entry of the directory `dir` that no conversion writes, or `None`
/// when `dir` holds only (part of) a previous conversion's output, which
/// `--force` may therefore remove. Only regular files count as outputs (a
/// symlink or FIFO named `config.json` is foreign), and in `ckpt-0/` only the
/// tensor files and their partial forms.
pub fn foreign_entry(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let (path, kind) = (entry.path(), entry.file_type()?);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = if name == CKPT_DIR && kind.is_dir() {
            match foreign_checkpoint_file(&path)? {
                Some(inner) => return Ok(Some(inner)),
                None => true,
            }
        } else {
            kind.is_file() && OUTPUT_FILES.contains(&name.as_ref())
        };
        if !ours {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The first entry of a `ckpt-0/` directory that is not a regular file named
/// as the checkpoint writer names them (`tensor00000_000`, or
/// `.tensor00000_000.partial` while it is written).
fn foreign_checkpoint_file(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let tensor_name = |n: &str| {
        n.strip_prefix("tensor")
            .and_then(|n| n.strip_suffix("_000"))
            .is_some_and(|i| i.len() >= 5 && i.bytes().all(|b| b.is_ascii_digit()))
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let partial = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".partial"));
        let named = tensor_name(&name) || partial.is_some_and(tensor_name);
        if !(named && entry.file_type()?.is_file()) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Converts `weights` (of `cfg`) into `out`, its matrices as `scheme` says
/// (a type, or a llama-quantize mix): a `.gguf` file, or a directory for
/// safetensors (`model.safetensors` and `config.json`). Files are written
/// by [`crate::files::write_output`]: replaced whole, special files written
/// through.
pub fn convert(
    cfg: &ModelConfig,
    weights: &Weights,
    tokenizer: Option<&Tokenizer>,
    format: OutFormat,
    scheme: impl Into<Scheme>,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ConvertReport, ConvertError> {
    let options = ConvertOptions {
        format,
        scheme: scheme.into(),
        imatrix: None,
    };
    convert_with(cfg, weights, tokenizer, &options, out, progress)
}

/// [`convert`] with a mix or an importance matrix.
pub fn convert_with(
    cfg: &ModelConfig,
    weights: &Weights,
    tokenizer: Option<&Tokenizer>,
    options: &ConvertOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ConvertReport, ConvertError> {
    check_options(options)?;
    let (format, scheme) = (options.format, options.scheme);
    let mut tensors = plan(cfg, weights, layout_of(format), scheme);
    let weighted_matrices = match options.imatrix {
        Some(imatrix) => attach_importance(&mut tensors, imatrix)?,
        None => 0,
    };
    write_planned(
        cfg,
        tokenizer,
        options,
        &tensors,
        weighted_matrices,
        out,
        progress,
    )
}

fn layout_of(format: OutFormat) -> RowLayout {
    match format {
        OutFormat::Gguf => RowLayout::Gguf,
        OutFormat::Safetensors => RowLayout::Keyfan,
    }
}

/// The tensors a conversion of `weights` writes: name, type and shape (numpy
/// order), in file order.
pub fn planned_tensors(
    cfg: &ModelConfig,
    weights: &Weights,
    options: &ConvertOptions,
) -> Vec<(String, GgmlType, Vec<usize>)> {
    plan(cfg, weights, layout_of(options.format), options.scheme)
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape))
        .collect()
}

/// How a role's matrices are cut over ranks (tensor parallel, the split
/// `model::weights` reads back): along their stored rows (outputs, vocabulary
/// rows) or inside them (inputs), in `count` equal units of `what`.
fn split_of(cfg: &ModelConfig, part: Part) -> Option<(bool, usize, &'static str)> {
    let (kv, ff) = (cfg.num_kv_heads, cfg.ffn_size);
    Some(match part {
        Part::Embedding | Part::Output => (true, cfg.vocab_size, "vocabulary rows"),
        Part::Query => (true, kv, "key/value head groups"),
        Part::Key | Part::Value => (true, kv, "key/value heads"),
        Part::AttnOut => (false, kv, "key/value head groups"),
        Part::Gate | Part::Up => (true, ff, "expert hidden columns"),
        Part::Down => (false, ff, "expert hidden columns"),
        _ => return None,
    })
}

/// The tensors of rank `shard`'s part of the whole conversion of `whole`:
/// each in the type the whole conversion gives it, its rows or its columns
/// cut as the model splits it, read from the whole source a block of rows at
/// a time (so memory stays bounded: nothing of the part is held). A tensor
/// that cannot be split so is refused, naming it.
fn plan_part<'a>(
    cfg: &ModelConfig,
    whole: &'a Weights,
    shard: crate::parallel::Shard,
    options: &ConvertOptions,
) -> Result<(Vec<Planned<'a>>, usize), ConvertError> {
    check_options(options)?;
    let mut tensors = plan(cfg, whole, layout_of(options.format), options.scheme);
    let weighted_matrices = match options.imatrix {
        Some(imatrix) => attach_importance(&mut tensors, imatrix)?,
        None => 0,
    };
    let ranks = shard.count;
    for t in tensors.iter_mut() {
        let Some((along_rows, count, what)) = t.part.and_then(|p| split_of(cfg, p)) else {
            continue;
        };
        let Some(units) = shard.range(count) else {
            return Err(ConvertError::Unsupported(format!(
                "tensor `{}` cannot be split over {ranks} ranks: its {count} {what} do not divide by {ranks}",
                t.name
            )));
        };
        let axis = t.shape.len() - if along_rows { 2 } else { 1 };
        let width = t.shape[axis] / count;
        let range = units.start * width..units.end * width;
        if along_rows {
            t.shape[axis] = range.len();
            t.rows = Some(range);
            continue;
        }
        // Cut inside its rows: each whole row is encoded (some encoders weigh
        // a block by its row's mean square) and this rank's bytes kept.
        let whole_cols = t.shape[axis];
        let (Some(start), Some(end)) =
            (t.dtype.row_bytes(range.start), t.dtype.row_bytes(range.end))
        else {
            return Err(ConvertError::Unsupported(format!(
                "tensor `{}` cannot be split over {ranks} ranks in {}: its rows of {whole_cols} values are {} blocks of {}, and a rank's {} columns are not whole blocks",
                t.name,
                options.scheme.name(),
                t.dtype,
                t.dtype.block_size(),
                range.len()
            )));
        };
        t.shape[axis] = range.len();
        t.keep = Some((start..end, whole_cols));
    }
    Ok((tensors, weighted_matrices))
}

/// Checks that the whole conversion of `whole` can be split over `ranks`
/// ranks, without writing anything.
pub fn check_part_split(
    cfg: &ModelConfig,
    whole: &Weights,
    ranks: usize,
    options: &ConvertOptions,
) -> Result<(), ConvertError> {
    plan_part(
        cfg,
        whole,
        crate::parallel::Shard {
            rank: 0,
            count: ranks,
        },
        options,
    )
    .map(|_| ())
}

/// [`convert_with`] for rank `shard`'s part of the model (a shard set): its
/// bytes are exactly its slice of the whole conversion's.
pub fn convert_part_with(
    cfg: &ModelConfig,
    whole: &Weights,
    shard: crate::parallel::Shard,
    tokenizer: Option<&Tokenizer>,
    options: &ConvertOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ConvertReport, ConvertError> {
    let (tensors, weighted_matrices) = plan_part(cfg, whole, shard, options)?;
    write_planned(
        cfg,
        tokenizer,
        options,
        &tensors,
        weighted_matrices,
        out,
        progress,
    )
}

fn check_options(options: &ConvertOptions) -> Result<(), ConvertError> {
    let (format, scheme) = (options.format, options.scheme);
    if let Scheme::Uniform(dtype) = scheme {
        if !GgmlType::ENCODABLE.contains(&dtype) {
            return Err(ConvertError::Unsupported(format!(
                "cannot write {dtype}; choose one of {}",
                Scheme::names().join(", ")
            )));
        }
    }
    if format == OutFormat::Safetensors && !scheme.base().is_float() {
        return Err(ConvertError::Unsupported(format!(
            "safetensors holds plain floats: use --type f32, f16 or bf16, not {}",
            scheme.name()
        )));
    }
    if options.imatrix.is_some() && scheme.base().is_float() {
        return Err(ConvertError::Unsupported(format!(
            "an importance matrix guides quantisation; {} is not quantised",
            scheme.name()
        )));
    }
    Ok(())
}

fn write_planned(
    cfg: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
    options: &ConvertOptions,
    tensors: &[Planned],
    weighted_matrices: usize,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ConvertReport, ConvertError> {
    let (format, scheme) = (options.format, options.scheme);
    let total: u64 = tensors.iter().map(Planned::bytes).sum();
    let parameters: u64 = tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    match format {
        OutFormat::Gguf => write_gguf(cfg, tokenizer, scheme, tensors, out, total, progress)?,
        OutFormat::Safetensors => write_safetensors(cfg, tensors, out, total, progress)?,
    }
    let files = match format {
        OutFormat::Gguf => vec![out.to_path_buf()],
        OutFormat::Safetensors => vec![out.join("model.safetensors"), out.join("config.json")],
    };
    let bytes_written = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(ConvertReport {
        files,
        tensors: tensors.len(),
        bytes_written,
        parameters,
        weighted_matrices,
    })
}

fn write_gguf(
    cfg: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
    scheme: Scheme,
    tensors: &[Planned],
    out: &Path,
    total: u64,
    progress: &dyn Progress,
) -> Result<(), ConvertError> {
    let kv = gguf_metadata(cfg, tokenizer, scheme);
    let mut header = Vec::new();
    header.extend(b"GGUF");
    header.extend(3u32.to_le_bytes());
    header.extend((tensors.len() as u64).to_le_bytes());
    header.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in &kv {
        gguf_kv(&mut header, k, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        gguf_string(&mut header, &t.name);
        header.extend((t.shape.len() as u32).to_le_bytes());
        for &n in t.shape.iter().rev() {
            header.extend((n as u64).to_le_bytes());
        }
        header.extend(t.dtype.id().to_le_bytes());
        header.extend(offset.to_le_bytes());
        offset = (offset + t.bytes()).div_ceil(ALIGN) * ALIGN;
    }
    header.resize(
        (header.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize,
        0,
    );
    crate::files::write_output(out, |w| {
        w.write_all(&header)?;
        progress.start("converting", total);
        let mut done = 0u64;
        for t in tensors {
            write_tensor(t, w, &mut |n| {
                done += n;
                progress.set(done);
            })?;
            let pad = (t.bytes().div_ceil(ALIGN) * ALIGN - t.bytes()) as usize;
            w.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    })
    .map_err(io(out))?;
    progress.finish();
    Ok(())
}

fn write_safetensors(
    cfg: &ModelConfig,
    tensors: &[Planned],
    dir: &Path,
    total: u64,
    progress: &dyn Progress,
) -> Result<(), ConvertError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("model.safetensors");
    // The header lists every tensor's offsets, all known from the plan.
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for t in tensors {
        let dtype = match t.dtype {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            _ => "BF16",
        };
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes()]}),
        );
        offset += t.bytes();
    }
    let mut json = serde_json::Value::Object(header).to_string();
    // Pad with spaces so the data starts 8-byte aligned, as the format advises.
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(' ');
    }
    crate::files::write_output(&path, |w| {
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(json.as_bytes())?;
        progress.start("converting", total);
        let mut done = 0u64;
        for t in tensors {
            write_tensor(t, w, &mut |n| {
                done += n;
                progress.set(done);
            })?;
        }
        Ok(())
    })
    .map_err(io(&path))?;
    progress.finish();
    let config = serde_json::json!({
        // keyfan/grok-1-hf's names, which llama.cpp's converter recognises.
        "architectures": ["GrokForCausalLM"],
        "model_type": "grok",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_size,
        "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_q_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.key_size,
        "num_local_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.num_selected_experts,
        "attn_output_multiplier": cfg.attn_output_multiplier,
        "embedding_multiplier_scale": cfg.embedding_multiplier_scale,
        "output_multiplier_scale": cfg.output_multiplier_scale,
        "max_attn_value": cfg.attn_softcap,
        "max_position_embeddings": cfg.sequence_len,
        "rope_theta": cfg.rope_base,
        "rms_norm_eps": cfg.rms_norm_eps,
        "pad_token_id": cfg.pad_token,
        "eos_token_id": cfg.eos_token,
    });
    let cpath = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    crate::files::write_output(&cpath, |w| w.write_all(text.as_bytes())).map_err(io(&cpath))?;
    Ok(())
}

/// Writes row `r` of an array into the buffer.
type FillRow<'a> = dyn Fn(usize, &mut [f32]) + 'a;

/// A dense f32 array written a block of rows at a time.
struct F32Rows<'a> {
    rows: usize,
    cols: usize,
    fill: Box<FillRow<'a>>,
}

impl crate::weights::pickle_writer::Payload for F32Rows<'_> {
    fn byte_len(&self) -> u64 {
        (self.rows * self.cols * 4) as u64
    }

    fn write_to(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let block = block_rows(self.cols);
        let mut buf = vec![0f32; block * self.cols];
        let mut bytes = Vec::with_capacity(block * self.cols * 4);
        for first in (0..self.rows).step_by(block) {
            let count = block.min(self.rows - first);
            for (j, row) in buf.chunks_exact_mut(self.cols).take(count).enumerate() {
                (self.fill)(first + j, row);
            }
            bytes.clear();
            bytes.extend(
                buf[..count * self.cols]
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            );
            out.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// The int8 weights of one or more `[k, n]` matrices in the official encoding
/// (`x @ W`, row-major, one bf16 scale per column and scale group); the scales
/// are gathered while the weights are written and written afterwards by
/// [`Int8Scales`], as the pickle holds the weight array first.
struct Int8Weights<'a> {
    mats: Vec<&'a Matrix>,
    groups: usize,
    scales: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
}

struct Int8Scales {
    len: u64,
    scales: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
}

impl crate::weights::pickle_writer::Payload for Int8Weights<'_> {
    fn byte_len(&self) -> u64 {
        self.mats.iter().map(|m| (m.k() * m.n()) as u64).sum()
    }

    fn write_to(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        for m in &self.mats {
            let (k, n) = (m.k(), m.n());
            let per_group = k / self.groups;
            // The whole int8 matrix (k*n bytes, 1/4 of its f32 size) is built
            // here because the file holds it row-major while the source gives
            // it a column at a time.
            let mut q = vec![0u8; k * n];
            let mut scales = vec![0f32; self.groups * n];
            let block = block_rows(k);
            let mut buf = vec![0f32; block * k];
            for first in (0..n).step_by(block) {
                let count = block.min(n - first);
                linear_rows(m, first, count, &mut buf);
                for (j, col) in buf.chunks_exact(k).take(count).enumerate() {
                    let o = first + j;
                    for g in 0..self.groups {
                        let part = &col[g * per_group..(g + 1) * per_group];
                        let amax = part.iter().fold(0f32, |a, v| a.max(v.abs()));
                        // Quantise against the scale as stored (bf16), so that
                        // int8 * scale is what a reader computes.
                        let s = half::bf16::from_f32(amax / 127.0).to_f32();
                        scales[g * n + o] = s;
                        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                        for (r, &v) in part.iter().enumerate() {
                            let row = g * per_group + r;
                            q[row * n + o] = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
                        }
                    }
                }
            }
            out.write_all(&q)?;
            self.scales.borrow_mut().extend(
                scales
                    .iter()
                    .flat_map(|&s| half::bf16::from_f32(s).to_le_bytes()),
            );
            m.release();
        }
        Ok(())
    }
}

impl crate::weights::pickle_writer::Payload for Int8Scales {
    fn byte_len(&self) -> u64 {
        self.len
    }

    fn write_to(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let bytes = self.scales.borrow();
        if bytes.len() as u64 != self.len {
            return Err(std::io::Error::other(
                "scales were not produced before they were written",
            ));
        }
        out.write_all(&bytes)
    }
}

/// Writes `weights` as an official-layout checkpoint (`ckpt-0/` pickles and
/// `config.json`): int8 matrices with bf16 scales, f32 embedding, norms and
/// router. Peak memory: one int8 matrix (an expert's) plus a block of rows.
pub fn convert_to_ckpt(
    cfg: &ModelConfig,
    weights: &Weights,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ConvertReport, crate::weights::WeightError> {
    use crate::weights::ckpt0::{checkpoint_layout, write_checkpoint, ParamKind, ParamSpec};
    let mut cfg = cfg.clone();
    cfg.tensors = None;
    cfg.num_tensors = None;
    cfg.seed = None;
    cfg.emb_std = None;
    let layout = checkpoint_layout(&cfg);
    let total: u64 = layout
        .iter()
        .map(|s| match &s.kind {
            ParamKind::Dense { .. } => 4 * s.element_count() as u64,
            ParamKind::Quantized { .. } => {
                s.element_count() as u64
                    + 2 * s.scales_shape().unwrap().iter().product::<usize>() as u64
            }
        })
        .sum();
    let mut payloads = |spec: &ParamSpec| payload_for(weights, spec);
    write_checkpoint(out, &cfg, total, progress, &mut payloads)?;
    let dir = out.join("ckpt-0");
    let files: Vec<PathBuf> = layout.iter().map(|s| dir.join(s.file_name())).collect();
    let bytes_written = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(ConvertReport {
        tensors: files.len(),
        files,
        bytes_written,
        parameters: layout.iter().map(|s| s.element_count() as u64).sum(),
        weighted_matrices: 0,
    })
}

fn vector_payload<'a>(v: &'a [f32]) -> Box<dyn crate::weights::pickle_writer::Payload + 'a> {
    Box::new(F32Rows {
        rows: 1,
        cols: v.len(),
        fill: Box::new(move |_, row: &mut [f32]| row.copy_from_slice(v)),
    })
}

fn quantized_payloads<'a>(
    mats: Vec<&'a Matrix>,
    spec: &crate::weights::ckpt0::ParamSpec,
) -> crate::weights::ckpt0::ParamPayloads<'a> {
    use crate::weights::ckpt0::ParamKind;
    let groups = match &spec.kind {
        ParamKind::Quantized { groups, .. } => *groups,
        ParamKind::Dense { .. } => 1,
    };
    let shared = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let len = 2 * spec
        .scales_shape()
        .map_or(0, |s| s.iter().product::<usize>()) as u64;
    (
        Box::new(Int8Weights {
            mats,
            groups,
            scales: shared.clone(),
        }),
        Some(Box::new(Int8Scales {
            len,
            scales: shared,
        })),
    )
}

/// The payloads of one official checkpoint parameter, from `weights`.
fn payload_for<'a>(
    weights: &'a Weights,
    spec: &crate::weights::ckpt0::ParamSpec,
) -> std::io::Result<crate::weights::ckpt0::ParamPayloads<'a>> {
    let bad = || std::io::Error::other(format!("no weight for checkpoint path `{}`", spec.path));
    let parts: Vec<&str> = spec.path.split('/').collect();
    match parts.as_slice() {
        ["language_model", "in_out_embed", "embeddings"] => {
            let e = &weights.embedding;
            Ok((
                Box::new(F32Rows {
                    rows: e.rows,
                    cols: e.cols,
                    fill: Box::new(move |r, row: &mut [f32]| e.row_into(r, row)),
                }),
                None,
            ))
        }
        ["language_model", "rms_norm", "scale"] => Ok((vector_payload(&weights.final_norm), None)),
        ["transformer", layer, module @ .., _param] => {
            let i: usize = layer
                .strip_prefix("decoder_layer_")
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?;
            let l = weights.layers.get(i).ok_or_else(bad)?;
            match module {
                ["rms_norm"] => Ok((vector_payload(&l.attn_norm), None)),
                ["rms_norm_1"] => Ok((vector_payload(&l.attn_out_norm), None)),
                ["rms_norm_2"] => Ok((vector_payload(&l.moe_norm), None)),
                ["rms_norm_3"] => Ok((vector_payload(&l.moe_out_norm), None)),
                ["router"] => Ok((vector_payload(&l.router), None)),
                ["multi_head_attention", "query"] => Ok(quantized_payloads(vec![&l.wq], spec)),
                ["multi_head_attention", "key"] => Ok(quantized_payloads(vec![&l.wk], spec)),
                ["multi_head_attention", "value"] => Ok(quantized_payloads(vec![&l.wv], spec)),
                ["multi_head_attention", "linear"] => Ok(quantized_payloads(vec![&l.wo], spec)),
                ["moe", "linear"] => {
                    Ok(quantized_payloads(l.experts.linear.iter().collect(), spec))
                }
                ["moe", "linear_v"] => Ok(quantized_payloads(
                    l.experts.linear_v.iter().collect(),
                    spec,
                )),
                ["moe", "linear_1"] => Ok(quantized_payloads(
                    l.experts.linear_1.iter().collect(),
                    spec,
                )),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}
