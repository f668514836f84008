//! The kernels the forward pass needs, behind one trait so that the model is
//! written once for every device. `cpu` is the reference implementation; a CUDA
//! backend implements the same operations on device memory.

pub mod cpu;

use half::bf16;

use crate::kv_cache::{KvCache, SeqId};
use crate::quant::GgmlType;
use crate::weights::{DType, TensorData};

/// Activation precision of a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Every activation, the KV cache and all matmuls in f32, weights dequantised
    /// exactly (int8 * f32(scale)). The golden tests' acceptance mode.
    #[default]
    F32,
    /// The reference as released (`fprop_dtype = bfloat16`): activations, the
    /// residual stream, the KV cache and matmul outputs rounded to bf16 where the
    /// reference casts; norms, attention scores, softmax and the router in f32;
    /// dot products accumulated in f32 and rounded once. Weights are dequantised
    /// exactly, as XLA:CPU fuses the int8 * scale product into the dot (rounding
    /// them to bf16 first lands measurably farther from the reference's bf16 run).
    Bf16,
    /// The f32 mode's arithmetic, except that the tied output projection (the
    /// `vocab x d` matrix read for every generated token) reads an int8 copy made
    /// once, with one f32 scale per vocabulary row, against the activations
    /// quantised to int8 per row; its products are summed exactly in i32, so
    /// every kernel path gives the same logits. A quarter of the f32 bytes; the
    /// logits move by the bounds `tests/fast_mode.rs` states. A projection
    /// stored in 8 bits or fewer (a quantised GGUF) is read as stored; a Q8_0
    /// one against activations quantised to Q8_0 blocks, as in the int8 mode.
    /// A GGUF's K-quant, legacy (Q4_0 .. Q5_1) and i-quant weights are
    /// multiplied as llama.cpp does, against activations quantised per block
    /// (q8_K, q8_0):
    /// `Precision::quantizes_rows`.
    Fast,
    /// The fast mode, and the int8 weights' products (every layer's) read their
    /// activations quantised to int8 in blocks of 32 rows, multiplied as
    /// integers (`cpu::types::int8_ckpt`): as llama.cpp runs its quantised types. So do
    /// a GGUF's Q8_0 weights (activations in Q8_0 blocks along `k`, as
    /// llama.cpp's Q8_0 dot). Less arithmetic per weight byte; on the tiny
    /// fixture models it changes experts about twice as often as the
    /// reference's own bf16 run (`tests/fast_mode.rs`). Opt-in.
    Int8,
}

impl Precision {
    /// Whether the output projection is read as its int8 copy.
    pub fn int8_output(self) -> bool {
        matches!(self, Precision::Fast | Precision::Int8)
    }

    /// Whether products with row-stored weights of type `dtype` read their
    /// activations quantised per block ([`Backend::matmul_rows_fast`]): in
    /// the int8 mode every type with an integer kernel; in the fast mode the
    /// K-quant, legacy and i-quant block types (which llama.cpp, and every
    /// user of such a file, runs so), not Q8_0, whose fast mode stays as it
    /// was.
    pub fn quantizes_rows(self, dtype: crate::quant::GgmlType) -> bool {
        match self {
            Precision::Int8 => true,
            Precision::Fast => !dtype.is_float() && dtype != crate::quant::GgmlType::Q8_0,
            Precision::F32 | Precision::Bf16 => false,
        }
    }

    /// Rounds `x` to the activation dtype in place (a no-op in f32 mode).
    pub fn cast(self, x: &mut [f32]) {
        if self == Precision::Bf16 {
            for v in x {
                *v = round_bf16(*v);
            }
        }
    }

    pub fn cast_one(self, x: f32) -> f32 {
        match self {
            Precision::F32 | Precision::Fast | Precision::Int8 => x,
            Precision::Bf16 => round_bf16(x),
        }
    }
}

/// Rounds to the nearest bfloat16 (ties to even), returned as f32.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

#[inline]
fn f32_le(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// An int8 matrix `[k, n]` (computing `x @ W`) with scales `[groups, n]` grouped
/// along `k`: row `r` uses scale group `r / (k / groups)`.
#[derive(Clone, Debug)]
pub struct QuantMatrix {
    pub k: usize,
    pub n: usize,
    pub groups: usize,
    /// `k * n` int8 values, row-major.
    pub weight: TensorData,
    /// `groups * n` scales.
    pub scales: TensorData,
    pub scale_dtype: DType,
}

impl QuantMatrix {
    pub fn weight_bytes(&self) -> &[u8] {
        self.weight.bytes()
    }

    /// Scales of group `g` as f32, written into `out[..n]`.
    pub fn scales_into(&self, g: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let b = self.scales.bytes();
        let (first, len) = (g * self.n + cols.start, cols.len().min(out.len()));
        // One loop per dtype (this runs for every task of every product).
        match self.scale_dtype {
            DType::F32 => {
                let src = &b[4 * first..4 * (first + len)];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            _ => {
                let src = &b[2 * first..2 * (first + len)];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
                }
            }
        }
    }

    /// Bytes read from memory by one full product with this matrix.
    pub fn byte_len(&self) -> usize {
        self.weight.len() + self.scales.len()
    }
}

/// A row-major f32 matrix `[rows, cols]` read in place from its file (the
/// embedding); rows are little-endian f32 bytes, not necessarily 4-aligned.
#[derive(Clone, Debug)]
pub struct F32Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: TensorData,
}

impl F32Matrix {
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        &self.data.bytes()[r * self.cols * 4..(r + 1) * self.cols * 4]
    }

    /// Row `r` decoded into `out`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let b = self.row_bytes(r);
        for (i, o) in out.iter_mut().enumerate() {
            *o = f32_le(b, i);
        }
    }
}

/// A matrix of int8 rows with one f32 scale per row (`row r = scales[r] *
/// data[r]`): the fast mode's copy of the output projection.
#[derive(Clone, Debug)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantises `v` to int8 symmetrically (absmax / 127, round half away from
/// zero); returns the scale (0 for an all-zero row).
pub fn quantize_row_i8(v: &[f32], out: &mut [i8]) -> f32 {
    // `>` rather than f32::max (which it equals here, NaN skipped): it vectorises.
    let absmax = v
        .iter()
        .fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
    if absmax == 0.0 || !absmax.is_finite() {
        out.fill(0);
        return if absmax.is_finite() { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / absmax;
    for (o, &x) in out.iter_mut().zip(v) {
        *o = round_half_away(x * inv) as i8;
    }
    absmax / 127.0
}

/// `v.round() as i32` (half away from zero) for |v| < 2^23, without the libm
/// call `round` compiles to on x86-64 (this runs on every activation of the
/// fast mode): `v - trunc(v)` is exact there.
#[inline]
pub(crate) fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

impl Int8Rows {
    /// Quantises `rows` rows of `cols` values, row `r` read by `row_into`.
    pub fn quantize(rows: usize, cols: usize, row_into: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        use rayon::prelude::*;
        let mut data = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows];
        data.par_chunks_mut(cols.max(1))
            .zip(scales.par_iter_mut())
            .enumerate()
            .for_each_init(
                || vec![0f32; cols],
                |buf, (r, (out, scale))| {
                    row_into(r, buf);
                    *scale = quantize_row_i8(buf, out);
                },
            );
        Int8Rows {
            rows,
            cols,
            data,
            scales,
        }
    }

    pub fn row(&self, r: usize) -> &[i8] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Bytes read by one full product.
    pub fn byte_len(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
}

/// A matrix stored as `rows` output rows of `cols` inputs each (`[n, k]`, so a
/// product computes `out = x @ W^T`), in any ggml type: the orientation of GGUF
/// files and Hugging Face checkpoints, and of the tied embedding in every format.
#[derive(Clone, Debug)]
pub struct RowMatrix {
    pub rows: usize,
    pub cols: usize,
    pub dtype: GgmlType,
    /// `rows` rows of `dtype.row_bytes(cols)` bytes each.
    pub data: TensorData,
}

impl RowMatrix {
    /// Bytes of one row.
    pub fn row_len(&self) -> usize {
        self.dtype
            .row_bytes(self.cols)
            .expect("row length checked when the matrix was built")
    }

    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let len = self.row_len();
        &self.data.bytes()[r * len..(r + 1) * len]
    }

    /// Row `r` decoded into `out[..cols]`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        self.dtype.dequantize_row(self.row_bytes(r), out);
    }

    /// The same matrix as an [`F32Matrix`] when it is stored in f32.
    pub fn as_f32(&self) -> Option<F32Matrix> {
        (self.dtype == GgmlType::F32).then(|| F32Matrix {
            rows: self.rows,
            cols: self.cols,
            data: self.data.clone(),
        })
    }

    pub fn byte_len(&self) -> usize {
        self.data.len()
    }
}

/// A weight of a linear layer `[k, n]` (inputs, outputs), in whichever layout
/// its file holds.
#[derive(Clone, Debug)]
pub enum Matrix {
    /// The official checkpoint's int8 `[k, n]` with grouped scales.
    Int8Grouped(QuantMatrix),
    /// `[n, k]` rows of any ggml type (GGUF, safetensors).
    Rows(RowMatrix),
}

impl Matrix {
    /// Inputs.
    pub fn k(&self) -> usize {
        match self {
            Matrix::Int8Grouped(q) => q.k,
            Matrix::Rows(r) => r.cols,
        }
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        match self {
            Matrix::Int8Grouped(q) => q.n,
            Matrix::Rows(r) => r.rows,
        }
    }

    /// Bytes read from memory by one full product with this matrix.
    pub fn byte_len(&self) -> usize {
        match self {
            Matrix::Int8Grouped(q) => q.byte_len(),
            Matrix::Rows(r) => r.byte_len(),
        }
    }

    /// Lets the OS drop this matrix's mapped pages from the resident set (the
    /// bytes stay readable); see [`TensorData::release`].
    pub fn release(&self) {
        match self {
            Matrix::Rows(r) => r.data.release(),
            Matrix::Int8Grouped(q) => {
                q.weight.release();
                q.scales.release();
            }
        }
    }
}

/// One product of [`Backend::matmul_many`]: `out = x @ w`.
pub struct MatmulJob<'a> {
    pub x: &'a [f32],
    pub w: &'a Matrix,
    pub out: &'a mut [f32],
}

/// Where one activation row sits: its sequence and its position in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPosition {
    pub seq: SeqId,
    pub pos: usize,
}

/// The constants of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q . k` (`attn_output_multiplier`).
    pub multiplier: f32,
    /// `s = softcap * tanh(s / softcap)`.
    pub softcap: f32,
    pub precision: Precision,
}

/// The operations of the forward pass that carry its cost.
pub trait Backend: Send + Sync {
    fn name(&self) -> String;

    /// `out[m, n] = x[m, k] @ W[k, n]` for an int8 weight with grouped scales,
    /// dequantised exactly in f32; `x` is row-major `[m, k]`, `out` `[m, n]`.
    fn matmul_q8(&self, x: &[f32], w: &QuantMatrix, out: &mut [f32]);

    /// [`Backend::matmul_q8`] in the int8 mode: a backend may quantise the
    /// activations to int8 for integer products (the CPU backend does, in
    /// blocks of 32 rows: `cpu::types::int8_ckpt`); by default it is the exact product.
    fn matmul_q8_fast(&self, x: &[f32], w: &QuantMatrix, out: &mut [f32]) {
        self.matmul_q8(x, w, out)
    }

    /// `out[m, r] = x[m, :] . W[r, :]` for a row-stored weight of any ggml type,
    /// each row dequantised exactly to f32.
    fn matmul_rows(&self, x: &[f32], w: &RowMatrix, out: &mut [f32]);

    /// [`Backend::matmul_rows`] where the precision quantises the activations
    /// ([`Precision::quantizes_rows`]): a backend may quantise them to int8
    /// where the weight's type has an integer kernel (the CPU backend does for
    /// Q8_0, the K-quants, the legacy types and the i-quants, in the weights' blocks along
    /// `k`, as llama.cpp's dot products); by default, and for the other
    /// types, it is the exact product.
    fn matmul_rows_fast(&self, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
        self.matmul_rows(x, w, out)
    }

    /// `out = x @ W` whatever the weight's layout, in the given precision
    /// (the int8 mode changes the int8 checkpoint's products,
    /// [`Backend::matmul_q8_fast`], and the fast and int8 modes the rows'
    /// products as [`Precision::quantizes_rows`] says,
    /// [`Backend::matmul_rows_fast`]).
    fn matmul(&self, x: &[f32], w: &Matrix, out: &mut [f32], precision: Precision) {
        match w {
            Matrix::Int8Grouped(q) if precision == Precision::Int8 => {
                self.matmul_q8_fast(x, q, out)
            }
            Matrix::Int8Grouped(q) => self.matmul_q8(x, q, out),
            Matrix::Rows(r) if precision.quantizes_rows(r.dtype) => {
                self.matmul_rows_fast(x, r, out)
            }
            Matrix::Rows(r) => self.matmul_rows(x, r, out),
        }
    }

    /// Several independent products `job.out = job.x @ job.w`, which a backend
    /// may run side by side: in decoding each is too small to keep every core
    /// busy alone (q, k and v; the selected experts). The results are those of
    /// [`Backend::matmul`] on each job.
    fn matmul_many(&self, jobs: &mut [MatmulJob<'_>], precision: Precision) {
        for job in jobs {
            self.matmul(job.x, job.w, job.out, precision);
        }
    }

    /// `out[m, r] = x[m, :] . E[r, :]`: the tied output projection.
    fn matmul_transposed_f32(
        &self,
        x: &[f32],
        e: &F32Matrix,
        out: &mut [f32],
        precision: Precision,
    );

    /// `out[m, r] = x[m, :] . W[r, :]` for int8 rows, with each row of `x`
    /// quantised to int8 first and the products summed exactly in i32.
    fn matmul_int8_rows(&self, x: &[f32], w: &Int8Rows, out: &mut [f32]);

    /// `out[m, n] = x[m, k] @ w[k, n]` with an f32 weight (the router).
    fn matmul_f32(&self, x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]);

    /// Causal attention of each query row over its sequence's cached keys and
    /// values (positions `0..=pos`, pad keys masked). `q` is `[rows, Hq * hd]`,
    /// `out` the same shape.
    fn attention(
        &self,
        q: &[f32],
        rows: &[RowPosition],
        cache: &KvCache,
        layer: usize,
        params: &AttentionParams,
        out: &mut [f32],
    );

    /// The gated expert activation, in place: `h = gelu_tanh(h) * v`.
    fn gelu_mul(&self, h: &mut [f32], v: &[f32]) {
        for (a, &b) in h.iter_mut().zip(v) {
            *a = crate::model::norm::gelu_tanh(*a) * b;
        }
    }
}
