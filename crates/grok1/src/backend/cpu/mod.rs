//! The CPU backend: kernels chosen at run time from the CPU's features, work
//! split over all cores with rayon.
//!
//! Its modules come in layers, each importing only from the layers before it
//! (`common` <- `types` <- `arch` <- `kernels` <- this module), so there is
//! no import cycle:
//! - `common`: the instruction sets (`Isa`), aligned buffers, shared constants;
//! - `types/`: one module per data type the kernels read (the checkpoint's
//!   int8 matrices, GGUF Q8_0 rows, the int8 output projection, f32 rows, f32
//!   KV pages): its layout, the activations its products pair with, and the
//!   scalar reference of those products;
//! - `arch/x86/`, `arch/arm/`: the SIMD versions, one directory per
//!   instruction set architecture and files named by product, and which
//!   instruction set this CPU runs (`Isa::detect`);
//! - `kernels` and `attention::pages`: each kernel's entry point, which
//!   checks its shapes and runs the instruction set's version or the scalar
//!   one;
//! - this module and `attention`: the products and attention, cut into tasks;
//!   the block types of row-stored (GGUF) weights map to their products in
//!   one table, `row_kernels`.
//!
//! A new block type (IQ3_S, say) is a module in `types/` (its layout, its
//! `QuantBlock` integers and `TileBlock` form), its SIMD versions in `arch/`
//! (`Avx2Block`, `VnniBlock`), and a row in `row_kernels`.
//!
//! Weights are `[k, n]` (the checkpoint computes `x @ W`) and read in place from
//! the memory map. A product's weight rows are cut into splits (inside one
//! scale group, up to 1024 rows, chosen from `k` alone) and its columns into
//! blocks whose accumulators stay in L1; a task takes one block through a run
//! of consecutive splits, so it streams its rows sequentially and every weight
//! byte is read once per call whatever the number of activation rows. The
//! splits' sums are added in a fixed order, so results do not depend on the
//! batch or the thread count.

mod arch;
pub mod attention;
pub mod common;
pub mod kernels;
pub mod types;

use rayon::prelude::*;

use super::{
    quantize_row_i8, AttentionParams, Backend, F32Matrix, Int8Rows, MatmulJob, Precision,
    QuantMatrix, RowMatrix, RowPosition,
};
use crate::kv_cache::KvCache;
use crate::quant::GgmlType;
pub use common::Isa;
use common::PARALLEL_MIN_MACS;
use types::int8_ckpt::{pack_activations, ActI8, Q8Rows};
use types::iq1_m::IQ1M;
use types::iq1_s::IQ1S;
use types::iq2_s::IQ2S;
use types::iq2_xs::IQ2XS;
use types::iq2_xxs::IQ2XXS;
use types::iq3_s::IQ3S;
use types::iq3_xxs::IQ3XXS;
use types::iq4_nl::IQ4NL;
use types::iq4_xs::IQ4XS;
use types::q2_k::Q2K;
use types::q3_k::Q3K;
use types::q4_0::Q4_0;
use types::q4_1::Q4_1;
use types::q4_k::Q4K;
use types::q5_0::Q5_0;
use types::q5_1::Q5_1;
use types::q5_k::Q5K;
use types::q6_k::Q6K;
use types::q8_0::{pair_rows, ActQ8_0};
use types::q8_blocks::ActQ8;

/// Row splits per scale group: enough tasks for the threads even when a
/// product is one activation row by a narrow matrix (a small model's every
/// product), while each split stays long enough to stream.
const SPLITS_PER_GROUP: usize = 8;
/// Bounds on the weight rows of one split.
const SPLIT_ROWS: std::ops::RangeInclusive<usize> = 64..=1024;
/// Columns of a block are never cut below this (unless `n` is): a task's row
/// segments stay long enough for the prefetchers.
const MIN_BLOCK_COLS: usize = 256;
/// Accumulators per task (`m * nb` floats, 64 KiB) where the kernel reads them
/// for every few weight rows, and the columns per task of the kernels that
/// keep their sums in registers: at one activation row a row segment spans
/// 16 KiB of weights, long enough for the prefetchers (measured: 4 KiB
/// segments streamed 25% slower).
const TILE_FLOATS: usize = 16384;
/// Bound on the partial sums held at once.
const WAVE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    isa: Isa,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The best kernels for this CPU (`GROK1_KERNELS=scalar` forces the portable ones).
    pub fn new() -> Self {
        CpuBackend { isa: Isa::detect() }
    }

    pub fn with_isa(isa: Isa) -> Self {
        CpuBackend { isa }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// The activations of an int8 product, as its kernels read them.
enum Activations {
    /// f32, packed by `pack_activations` (exact mode).
    F32(Vec<f32>),
    /// Quantised to int8 per block (fast mode).
    Int8(ActI8),
}

impl CpuBackend {
    /// `out = x @ w` for an int8 matrix with grouped scales; `int8` quantises
    /// the activations (`types::int8_ckpt::ActI8`), else they stay f32.
    fn q8_product(&self, x: &[f32], w: &QuantMatrix, out: &mut [f32], int8: bool) {
        let (k, n) = (w.k, w.n);
        let m = x.len() / k;
        assert_eq!(x.len(), m * k, "matmul_q8: input is not [m, {k}]");
        assert_eq!(out.len(), m * n, "matmul_q8: output is not [{m}, {n}]");
        out.fill(0.0);
        if m == 0 || n == 0 {
            return;
        }
        let weight = w.weight_bytes();
        let splits = row_splits(k, w.groups);
        let acts = if int8 {
            let ranges: Vec<_> = splits.iter().map(|(_, rows)| rows.clone()).collect();
            Activations::Int8(ActI8::quantize(self.isa, x, m, k, &ranges))
        } else {
            Activations::F32(pack_activations(x, m, k))
        };
        // Column blocks change no sum, only the work per task: as wide as the
        // accumulator tile allows, narrower where the splits alone leave too few
        // tasks for the threads.
        let nb = if n <= 16 {
            n
        } else {
            let want_blocks = (4 * rayon::current_num_threads()).div_ceil(splits.len());
            let fair = n.div_ceil(want_blocks).max(MIN_BLOCK_COLS);
            // Multiples of 64 columns where there is room: the int8 decode
            // kernels step 32 (AVX2) or 64 (VNNI) columns at a time and leave
            // the rest of a block to the scalar kernel.
            // Kernels that keep their sums in registers read a task's
            // accumulators once per block of weight rows: the columns stay at
            // their one-row width (measured at full width, 3 and 4 rows: 16 KiB
            // row segments streamed 1.3 and 1.15x faster than the 5 and 4 KiB
            // of `TILE_FLOATS / m`).
            let tile_rows = if m <= kernels::register_stream_rows(self.isa, int8) {
                1
            } else {
                m
            };
            let nb = (TILE_FLOATS / tile_rows).min(fair).clamp(16, n);
            if nb >= 64 {
                nb / 64 * 64
            } else {
                nb / 16 * 16
            }
        };
        let blocks = n.div_ceil(nb);
        // A task takes one block through a run of consecutive splits, summing
        // them in order; the runs are then added in order. A run is all the
        // splits (whole blocks, where there are at least as many as threads:
        // no partial sums to hold, and the prefill kernels' per-call work
        // spread over the most rows; runs of one 128-row split made a d1024
        // expert's prefill product 1.3x slower in f32, 1.6x with AMX) or one
        // split (a product too narrow for that): both add the splits' terms
        // in order from zero ((0 + s0) + s1 + ...), so the sums depend
        // neither on the threads nor on the block width (which differs
        // between instruction sets and row counts). Runs of a few splits
        // would group the terms differently ((s0 + s1) + (s2 + s3)).
        let per_task = if blocks >= rayon::current_num_threads() {
            splits.len()
        } else {
            1
        };
        let runs: Vec<std::ops::Range<usize>> = (0..splits.len())
            .step_by(per_task)
            .map(|s| s..(s + per_task).min(splits.len()))
            .collect();
        let per_block = runs.len() * m * nb * 4;
        let wave = (WAVE_BYTES / per_block.max(1)).max(1);
        for first in (0..blocks).step_by(wave) {
            let last = (first + wave).min(blocks);
            let tasks: Vec<(usize, usize)> = (first..last)
                .flat_map(|b| (0..runs.len()).map(move |t| (b, t)))
                .collect();
            let task = |(b, t): (usize, usize)| {
                let n0 = b * nb;
                let width = nb.min(n - n0);
                let mut total = vec![0f32; m * width];
                let mut scales = vec![0f32; width];
                for s in runs[t].clone() {
                    let (g, rows) = &splits[s];
                    w.scales_into(*g, n0..n0 + width, &mut scales);
                    let block = Q8Rows {
                        w: weight,
                        n,
                        rows: rows.clone(),
                        n0,
                    };
                    match &acts {
                        Activations::F32(xp) => {
                            kernels::q8_block(self.isa, xp, m, &block, &scales, &mut total)
                        }
                        Activations::Int8(a) => {
                            kernels::q8_block_fast(self.isa, a, s, &block, &scales, &mut total)
                        }
                    }
                }
                total
            };
            let partials: Vec<Vec<f32>> = if m * k * n < PARALLEL_MIN_MACS {
                tasks.into_iter().map(task).collect()
            } else {
                tasks.into_par_iter().map(task).collect()
            };
            // Add the runs of each block in order (a fixed summation order).
            for (t, acc) in partials.iter().enumerate() {
                let b = first + t / runs.len();
                let n0 = b * nb;
                let width = nb.min(n - n0);
                for i in 0..m {
                    let o = &mut out[i * n + n0..i * n + n0 + width];
                    for (o, &a) in o.iter_mut().zip(&acc[i * width..(i + 1) * width]) {
                        *o += a;
                    }
                }
            }
        }
    }
}

/// Output rows a task of [`row_runs`] writes at a time.
const OUT_BAND: usize = 16;

/// `out[m, rows]` from a product computed in tasks of up to 256 weight rows
/// (fewer for a small matrix, so every thread gets work): `task` gets the
/// first row of its run and its column-major block (`[run][m]`).
///
/// Each task writes its block into its own columns of `out` while the block
/// is in cache, 16 rows of `out` at a time (a transpose of the whole
/// `[rows][m]` product after the tasks, on one thread, took a tenth of a
/// 128-token prompt's time).
fn by_row_runs(m: usize, rows: usize, out: &mut [f32], task: impl Fn(usize, &mut [f32]) + Sync) {
    let per_task = rows
        .div_ceil(4 * rayon::current_num_threads())
        .clamp(16, 256);
    row_runs(m, rows, per_task, out, task);
}

/// [`by_row_runs`] in tasks of `per_task` weight rows (the last may have
/// fewer), side by side on the pool.
fn row_runs(
    m: usize,
    rows: usize,
    per_task: usize,
    out: &mut [f32],
    task: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert!(
        out.len() >= m * rows && per_task > 0,
        "row_runs: output of {} for [{m}, {rows}] in tasks of {per_task}",
        out.len()
    );
    let dst = OutColumns(out.as_mut_ptr());
    (0..rows.div_ceil(per_task)).into_par_iter().for_each(|b| {
        let first = b * per_task;
        let count = per_task.min(rows - first);
        let mut chunk = vec![0f32; count * m];
        task(first, &mut chunk);
        for i0 in (0..m).step_by(OUT_BAND) {
            let h = OUT_BAND.min(m - i0);
            // SAFETY: the `h` runs `out[i * rows + first..][..count]`, `i` in
            // `i0..i0 + h <= m`, lie inside `out` (asserted above) and are
            // this task's alone: tasks hold disjoint `first..first + count`.
            let mut runs: [&mut [f32]; OUT_BAND] = std::array::from_fn(|t| {
                if t < h {
                    unsafe {
                        std::slice::from_raw_parts_mut(dst.at((i0 + t) * rows + first), count)
                    }
                } else {
                    &mut []
                }
            });
            for (r, src) in chunk.chunks_exact(m).enumerate() {
                for (run, &v) in runs[..h].iter_mut().zip(&src[i0..i0 + h]) {
                    run[r] = v;
                }
            }
        }
    });
}

/// `out`'s storage, for tasks that write disjoint columns of it.
#[derive(Clone, Copy)]
struct OutColumns(*mut f32);

// SAFETY: only `row_runs` uses it, whose tasks write disjoint elements
// while it holds `out` mutably borrowed.
unsafe impl Send for OutColumns {}
// SAFETY: as above.
unsafe impl Sync for OutColumns {}

impl OutColumns {
    /// # Safety
    /// `at` inside the output.
    unsafe fn at(self, at: usize) -> *mut f32 {
        // SAFETY: the caller's.
        unsafe { self.0.add(at) }
    }
}

/// Activation rows per pass of the f32 Q8_0 kernel over a run of weight rows
/// (its widest group).
const Q8_0_ACT_ROWS: usize = 4;
/// Bytes of weight rows in a run that activation rows use while it is in L2.
const RUN_BYTES: usize = 128 << 10;

/// `out[m, n] = x . W^T` for `n` row-stored weight rows of `row_bytes` bytes,
/// in tasks of rows (as [`by_row_runs`]), each task's rows in runs of about
/// `run_bytes` that the activation rows pass over, `per_pass` at a time,
/// while the run is in L2 (a whole task's rows against all activation rows at
/// once read the activations, megabytes at full width, once per weight row
/// in a row-outer kernel, or the task's rows once per activation row in an
/// activation-outer one). `dot(rows, i0, g, dots)` writes the products of
/// activation rows `i0..i0 + g` with weight rows `rows` into `dots`
/// (`[rows][g]`); the kernels do the same operations for each pair whatever
/// the grouping, so the result does not depend on it.
fn rows_in_runs(
    m: usize,
    n: usize,
    row_bytes: usize,
    run_bytes: usize,
    per_pass: usize,
    out: &mut [f32],
    dot: impl Fn(std::ops::Range<usize>, usize, usize, &mut [f32]) + Sync,
) {
    let run = (run_bytes / row_bytes.max(1)).max(1);
    let per_pass = per_pass.clamp(1, m.max(1));
    by_row_runs(m, n, out, |first, chunk| {
        let rows = chunk.len() / m;
        if run >= rows && per_pass == m {
            // One pass over all the task's rows.
            dot(first..first + rows, 0, m, chunk);
            return;
        }
        let mut dots = vec![0f32; run.min(rows) * per_pass];
        for r0 in (0..rows).step_by(run) {
            let count = run.min(rows - r0);
            for i0 in (0..m).step_by(per_pass) {
                let g = per_pass.min(m - i0);
                dot(
                    first + r0..first + r0 + count,
                    i0,
                    g,
                    &mut dots[..count * g],
                );
                for (r, d) in dots[..count * g].chunks_exact(g).enumerate() {
                    chunk[(r0 + r) * m + i0..(r0 + r) * m + i0 + g].copy_from_slice(d);
                }
            }
        }
    });
}

/// The row splits of a `[k, n]` matrix with `groups` scale groups:
/// (group, rows), in order. They depend on `k` and `groups` only, never on the
/// batch or the threads, so the order of every sum is fixed.
fn row_splits(k: usize, groups: usize) -> Vec<(usize, std::ops::Range<usize>)> {
    let per_group = k / groups;
    let size = per_group
        .div_ceil(SPLITS_PER_GROUP)
        .clamp(*SPLIT_ROWS.start(), *SPLIT_ROWS.end());
    let chunks = per_group.div_ceil(size).max(1);
    let size = per_group.div_ceil(chunks);
    let mut splits = Vec::new();
    for g in 0..groups {
        let mut r = g * per_group;
        while r < (g + 1) * per_group {
            let end = (r + size).min((g + 1) * per_group);
            splits.push((g, r..end));
            r = end;
        }
    }
    splits
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!(
            "cpu {} ({} threads)",
            self.isa.name(),
            rayon::current_num_threads()
        )
    }

    fn matmul_q8(&self, x: &[f32], w: &QuantMatrix, out: &mut [f32]) {
        self.q8_product(x, w, out, false);
    }

    fn matmul_q8_fast(&self, x: &[f32], w: &QuantMatrix, out: &mut [f32]) {
        self.q8_product(x, w, out, true);
    }

    fn matmul_many(&self, jobs: &mut [MatmulJob<'_>], precision: Precision) {
        // Each product spreads its own tasks over the pool too; work stealing
        // mixes them, so the threads stay busy until the last one ends.
        jobs.par_iter_mut()
            .for_each(|job| self.matmul(job.x, job.w, job.out, precision));
    }

    fn matmul_rows(&self, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
        let (k, n) = (w.cols, w.rows);
        let m = x.len() / k.max(1);
        assert_eq!(x.len(), m * k, "matmul_rows: input is not [m, {k}]");
        assert_eq!(out.len(), m * n, "matmul_rows: output is not [{m}, {n}]");
        if m == 0 || n == 0 {
            return;
        }
        (row_kernels(w.dtype).f32_acts)(self.isa, x, w, out)
    }

    fn matmul_rows_fast(&self, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
        let (k, n) = (w.cols, w.rows);
        let m = x.len() / k.max(1);
        match row_kernels(w.dtype).quantized_acts {
            Some(product) if m > 0 && n > 0 && x.len() == m * k => {
                assert_eq!(out.len(), m * n, "matmul_rows: output is not [{m}, {n}]");
                product(self.isa, x, w, out)
            }
            // No integer kernel for this type (or nothing to do, or a shape
            // error that matmul_rows reports).
            _ => self.matmul_rows(x, w, out),
        }
    }

    fn matmul_transposed_f32(
        &self,
        x: &[f32],
        e: &F32Matrix,
        out: &mut [f32],
        precision: Precision,
    ) {
        let d = e.cols;
        let m = x.len() / d;
        assert_eq!(
            x.len(),
            m * d,
            "matmul_transposed_f32: input is not [m, {d}]"
        );
        assert_eq!(out.len(), m * e.rows, "matmul_transposed_f32: output size");
        if m == 0 {
            return;
        }
        by_row_runs(m, e.rows, out, |first, chunk| {
            let rows = chunk.len() / m;
            if precision == Precision::Bf16 {
                // The reference casts the embedding to bf16 for the product.
                let mut row = vec![0f32; d];
                let mut bytes = Vec::with_capacity(rows * d * 4);
                for r in first..first + rows {
                    e.row_into(r, &mut row);
                    precision.cast(&mut row);
                    bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
                }
                kernels::dot_f32_bytes(self.isa, x, m, d, &bytes, chunk);
            } else {
                let bytes = &e.data.bytes()[first * d * 4..(first + rows) * d * 4];
                kernels::dot_f32_bytes(self.isa, x, m, d, bytes, chunk);
            }
        });
    }

    fn matmul_int8_rows(&self, x: &[f32], w: &Int8Rows, out: &mut [f32]) {
        let k = w.cols;
        let m = x.len() / k.max(1);
        assert_eq!(x.len(), m * k, "matmul_int8_rows: input is not [m, {k}]");
        assert_eq!(out.len(), m * w.rows, "matmul_int8_rows: output size");
        if m == 0 || w.rows == 0 {
            return;
        }
        let mut xq = vec![0i8; m * k];
        let sx: Vec<f32> = x
            .chunks_exact(k)
            .zip(xq.chunks_exact_mut(k))
            .map(|(v, q)| quantize_row_i8(v, q))
            .collect();
        // Rows in runs used by every activation row while in L2 (the kernel
        // reads a whole task's rows once per group of up to four activation
        // rows).
        rows_in_runs(m, w.rows, k, RUN_BYTES, m, out, |rows, i0, g, dots| {
            let weights = &w.data[rows.start * k..rows.end * k];
            let mut sums = vec![0i32; rows.len() * g];
            kernels::dot_i8_rows(self.isa, &xq[i0 * k..(i0 + g) * k], g, weights, &mut sums);
            for (j, (d, s)) in dots
                .chunks_exact_mut(g)
                .zip(sums.chunks_exact(g))
                .enumerate()
            {
                for (t, (d, &s)) in d.iter_mut().zip(s).enumerate() {
                    *d = (sx[i0 + t] * w.scales[rows.start + j]) * s as f32;
                }
            }
        });
    }

    fn matmul_f32(&self, x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]) {
        let m = x.len() / k;
        assert_eq!(w.len(), k * n, "matmul_f32: weight is not [{k}, {n}]");
        assert_eq!(out.len(), m * n, "matmul_f32: output size");
        let row = |(i, o): (usize, &mut [f32])| {
            o.fill(0.0);
            for r in 0..k {
                let xv = x[i * k + r];
                for (o, &wv) in o.iter_mut().zip(&w[r * n..(r + 1) * n]) {
                    *o += xv * wv;
                }
            }
        };
        if m * k * n < PARALLEL_MIN_MACS {
            out.chunks_mut(n).enumerate().for_each(row);
        } else {
            out.par_chunks_mut(n).enumerate().for_each(row);
        }
    }

    fn attention(
        &self,
        q: &[f32],
        rows: &[RowPosition],
        cache: &KvCache,
        layer: usize,
        p: &AttentionParams,
        out: &mut [f32],
    ) {
        attention::attend(self.isa, q, rows, cache, layer, p, out);
    }

    fn gelu_mul(&self, h: &mut [f32], v: &[f32]) {
        kernels::gelu_mul(self.isa, h, v);
    }
}

/// A product of row-stored weights (GGUF's layout): `out[m, rows] = x[m,
/// cols] . W^T`, its shapes checked and neither `m` nor `rows` zero.
type RowProduct = fn(Isa, &[f32], &RowMatrix, &mut [f32]);

/// The products of one block type of row-stored weights.
struct RowKernels {
    /// With f32 activations.
    f32_acts: RowProduct,
    /// With activations quantised per block (the fast and int8 modes);
    /// `None`: the f32 one in every mode.
    quantized_acts: Option<RowProduct>,
}

/// The block types of row-stored weights and their products: a type with
/// fused kernels has its row here, every other type is decoded to f32 a few
/// rows at a time.
fn row_kernels(dtype: GgmlType) -> RowKernels {
    match dtype {
        GgmlType::Q8_0 => RowKernels {
            f32_acts: q8_0_rows_f32,
            quantized_acts: Some(q8_0_rows_int8),
        },
        GgmlType::Q4K => quantized::<Q4K>(),
        GgmlType::Q6K => quantized::<Q6K>(),
        GgmlType::Q2K => quantized::<Q2K>(),
        GgmlType::Q3K => quantized::<Q3K>(),
        GgmlType::Q5K => quantized::<Q5K>(),
        GgmlType::Q4_0 => quantized::<Q4_0>(),
        GgmlType::Q4_1 => quantized::<Q4_1>(),
        GgmlType::Q5_0 => quantized::<Q5_0>(),
        GgmlType::Q5_1 => quantized::<Q5_1>(),
        GgmlType::IQ4_NL => quantized::<IQ4NL>(),
        GgmlType::IQ4_XS => quantized::<IQ4XS>(),
        GgmlType::IQ3_XXS => quantized::<IQ3XXS>(),
        GgmlType::IQ3_S => quantized::<IQ3S>(),
        GgmlType::IQ2_XXS => quantized::<IQ2XXS>(),
        GgmlType::IQ2_XS => quantized::<IQ2XS>(),
        GgmlType::IQ2_S => quantized::<IQ2S>(),
        GgmlType::IQ1_S => quantized::<IQ1S>(),
        GgmlType::IQ1_M => quantized::<IQ1M>(),
        _ => RowKernels {
            f32_acts: decoded_rows_f32,
            quantized_acts: None,
        },
    }
}

/// GGUF Q8_0 rows with f32 activations, fused: the blocks are used where
/// they lie, never decoded to memory.
fn q8_0_rows_f32(isa: Isa, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k.max(1);
    let (row_len, bytes) = (w.row_len(), w.data.bytes());
    if kernels::q8_0_paired(isa, m) {
        // Many rows: the tile kernel, all activation rows against each
        // run of weight rows (in L2), the activations packed once.
        let xp = pair_rows(x, m, k);
        rows_in_runs(m, n, row_len, RUN_BYTES, m, out, |rows, _, _, dots| {
            let wr = &bytes[rows.start * row_len..rows.end * row_len];
            kernels::dot_q8_0_rows_paired(isa, &xp, m, k, wr, dots)
        });
        return;
    }
    rows_in_runs(
        m,
        n,
        row_len,
        RUN_BYTES,
        Q8_0_ACT_ROWS,
        out,
        |rows, i0, g, dots| {
            let wr = &bytes[rows.start * row_len..rows.end * row_len];
            kernels::dot_q8_0_rows(isa, &x[i0 * k..(i0 + g) * k], g, k, wr, dots)
        },
    );
}

/// GGUF Q8_0 rows with activations quantised to Q8_0 blocks.
fn q8_0_rows_int8(isa: Isa, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k.max(1);
    let act = ActQ8_0::quantize(isa, x, m, k);
    // All rows in one pass: the int8 kernel keeps four weight rows in L1
    // while every activation row goes by (1 byte per value, so they stay
    // in L2), which measured 7% faster at full width than passes over runs.
    let (row_len, bytes) = (w.row_len(), w.data.bytes());
    rows_in_runs(m, n, row_len, usize::MAX, m, out, |rows, i0, g, dots| {
        let wr = &bytes[rows.start * row_len..rows.end * row_len];
        kernels::dot_q8_0_rows_int8(isa, act.rows(i0..i0 + g), wr, dots)
    });
}

/// A block type with a fused product against activations quantised in its
/// blocks; with f32 activations it is decoded exactly (the golden mode).
fn quantized<T: kernels::RowBlock>() -> RowKernels {
    RowKernels {
        f32_acts: decoded_rows_f32,
        quantized_acts: Some(q8_blocks_rows_int8::<T>),
    }
}

/// GGUF rows of block type `T` with activations quantised in `T`'s blocks
/// (`types::q8_blocks`).
fn q8_blocks_rows_int8<T: kernels::RowBlock>(isa: Isa, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k.max(1);
    let act = ActQ8::quantize(isa, x, m, k, T::VALUES);
    // All rows in one pass, as the Q8_0 kernel: eight weight rows stay in
    // L1 while every activation row goes by.
    let (row_len, bytes) = (w.row_len(), w.data.bytes());
    rows_in_runs(m, n, row_len, usize::MAX, m, out, |rows, i0, g, dots| {
        let wr = &bytes[rows.start * row_len..rows.end * row_len];
        kernels::dot_rows_q8::<T>(isa, act.rows(i0..i0 + g), wr, dots)
    });
}

/// Any other block type, decoded to f32.
fn decoded_rows_f32(isa: Isa, x: &[f32], w: &RowMatrix, out: &mut [f32]) {
    let (k, n) = (w.cols, w.rows);
    let m = x.len() / k.max(1);
    // Each task decodes a run of weight rows (a block small enough to stay
    // in L1/L2) and dots every activation row with it: each weight byte is
    // read and decoded once per call whatever `m`.
    // At least 8 rows: the AVX2 dot runs 8 rows at a time (8 independent
    // accumulators); fewer would leave it latency-bound on one.
    let block = (TILE_FLOATS / k.max(1)).clamp(8, 64);
    row_runs(m, n, block * 4, out, |first, chunk| {
        let rows = chunk.len() / m;
        let mut decoded = vec![0f32; block * k];
        let mut dots = vec![0f32; block];
        for b0 in (0..rows).step_by(block) {
            let count = block.min(rows - b0);
            for (j, dst) in decoded.chunks_exact_mut(k).take(count).enumerate() {
                w.row_into(first + b0 + j, dst);
            }
            for (i, xi) in x.chunks_exact(k).enumerate() {
                kernels::dot_rows(isa, xi, &decoded[..count * k], &mut dots[..count]);
                for (j, &v) in dots[..count].iter().enumerate() {
                    chunk[(b0 + j) * m + i] = v;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{by_row_runs, row_runs};

    /// Each task's `[rows][m]` block lands in its own columns of the
    /// `[m][rows]` output, for shapes around the band height and the task
    /// width (by_row_runs' own and an odd one), and nothing past `m * rows`
    /// is written.
    #[test]
    fn row_runs_place_every_task_block() {
        for (m, rows) in [
            (1, 5),
            (1, 700),
            (3, 16),
            (16, 17),
            (17, 300),
            (40, 1000),
            (130, 33),
        ] {
            let fill = |first: usize, chunk: &mut [f32]| {
                for (r, row) in chunk.chunks_exact_mut(m).enumerate() {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = ((first + r) * 1000 + i) as f32;
                    }
                }
            };
            for per_task in [None, Some(7)] {
                let mut out = vec![-1f32; m * rows + 2];
                match per_task {
                    None => by_row_runs(m, rows, &mut out, fill),
                    Some(p) => row_runs(m, rows, p, &mut out, fill),
                }
                for i in 0..m {
                    for j in 0..rows {
                        assert_eq!(
                            out[i * rows + j],
                            (j * 1000 + i) as f32,
                            "m {m} rows {rows} tasks {per_task:?} [{i}, {j}]"
                        );
                    }
                }
                assert_eq!(
                    out[m * rows..],
                    [-1.0; 2],
                    "m {m} rows {rows}: written past the end"
                );
            }
        }
    }
}
