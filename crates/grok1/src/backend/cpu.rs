//! The CPU backend: portable Rust kernels, multi-threaded with rayon.
//!
//! Weights are `[k, n]` (the checkpoint computes `x @ W`), so a product streams
//! the weight row by row and accumulates `x[m, r] * W[r, cols]` into a block of
//! output columns; threads take disjoint column blocks, so every weight byte is
//! read once per call whatever the number of rows.

use rayon::prelude::*;

use super::{AttentionParams, Backend, F32Matrix, Precision, QuantMatrix, RowPosition};
use crate::kv_cache::KvCache;

/// Output columns per task: 64 int8 bytes per weight row keeps each row read
/// a whole cache line while leaving enough tasks for every core.
const COL_BLOCK: usize = 64;

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

/// Writes the column-major blocks `out_t[n][m]` into row-major `out[m][n]`.
fn transpose_into(out_t: &[f32], m: usize, n: usize, out: &mut [f32]) {
    for (j, col) in out_t.chunks_exact(m).enumerate().take(n) {
        for (i, &v) in col.iter().enumerate() {
            out[i * n + j] = v;
        }
    }
}

/// One column block of `x @ W` for an int8 matrix: returns `[bw][m]` (column-major).
///
/// Dequantisation is exact f32 (int8 * f32(scale)) and factored per scale group:
/// `sum_r x*(q*s) = s * sum_r x*q`, equal within f32 rounding.
fn q8_block(x: &[f32], m: usize, w: &QuantMatrix, n0: usize, bw: usize) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let rows_per_group = k / w.groups;
    let weight = w.weight_bytes();
    let mut total = vec![0f32; m * bw];
    let mut acc = vec![0f32; m * bw];
    let mut wf = vec![0f32; bw];
    let mut scales = vec![0f32; bw];
    for g in 0..w.groups {
        w.scales_into(g, n0..n0 + bw, &mut scales);
        acc.fill(0.0);
        for r in g * rows_per_group..(g + 1) * rows_per_group {
            let row = &weight[r * n + n0..r * n + n0 + bw];
            for (f, &b) in wf.iter_mut().zip(row) {
                *f = b as i8 as f32;
            }
            for i in 0..m {
                let xv = x[i * k + r];
                let a = &mut acc[i * bw..(i + 1) * bw];
                for (a, &f) in a.iter_mut().zip(&wf) {
                    *a += xv * f;
                }
            }
        }
        for i in 0..m {
            let t = &mut total[i * bw..(i + 1) * bw];
            for ((t, &a), &s) in t.iter_mut().zip(&acc[i * bw..(i + 1) * bw]).zip(&scales) {
                *t += a * s;
            }
        }
    }
    let mut block = vec![0f32; bw * m];
    for i in 0..m {
        for j in 0..bw {
            block[j * m + i] = total[i * bw + j];
        }
    }
    block
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn matmul_q8(&self, x: &[f32], w: &QuantMatrix, out: &mut [f32]) {
        let (k, n) = (w.k, w.n);
        let m = x.len() / k;
        assert_eq!(x.len(), m * k, "matmul_q8: input is not [m, {k}]");
        assert_eq!(out.len(), m * n, "matmul_q8: output is not [{m}, {n}]");
        let mut out_t = vec![0f32; n * m];
        out_t
            .par_chunks_mut(COL_BLOCK * m.max(1))
            .enumerate()
            .for_each(|(b, chunk)| {
                let n0 = b * COL_BLOCK;
                let bw = chunk.len() / m.max(1);
                chunk.copy_from_slice(&q8_block(x, m, w, n0, bw));
            });
        transpose_into(&out_t, m, n, out);
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
        const ROWS_PER_TASK: usize = 256;
        let mut out_t = vec![0f32; e.rows * m];
        out_t
            .par_chunks_mut(ROWS_PER_TASK * m.max(1))
            .enumerate()
            .for_each(|(b, chunk)| {
                let mut row = vec![0f32; d];
                for (j, col) in chunk.chunks_exact_mut(m.max(1)).enumerate() {
                    e.row_into(b * ROWS_PER_TASK + j, &mut row);
                    precision.cast(&mut row);
                    for (i, o) in col.iter_mut().enumerate() {
                        let xi = &x[i * d..(i + 1) * d];
                        *o = xi.iter().zip(&row).map(|(a, b)| a * b).sum();
                    }
                }
            });
        transpose_into(&out_t, m, e.rows, out);
    }

    fn matmul_f32(&self, x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]) {
        let m = x.len() / k;
        assert_eq!(w.len(), k * n, "matmul_f32: weight is not [{k}, {n}]");
        assert_eq!(out.len(), m * n, "matmul_f32: output size");
        out.par_chunks_mut(n).enumerate().for_each(|(i, o)| {
            o.fill(0.0);
            for r in 0..k {
                let xv = x[i * k + r];
                for (o, &wv) in o.iter_mut().zip(&w[r * n..(r + 1) * n]) {
                    *o += xv * wv;
                }
            }
        });
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
        let hd = p.head_dim;
        let group = p.num_q_heads / p.num_kv_heads;
        let page_size = cache.page_size();
        assert_eq!(q.len(), rows.len() * p.num_q_heads * hd);
        assert_eq!(out.len(), q.len());
        out.par_chunks_mut(hd).enumerate().for_each(|(task, o)| {
            let (row, head) = (task / p.num_q_heads, task % p.num_q_heads);
            let RowPosition { seq, pos } = rows[row];
            let kv_head = head / group;
            let qv = &q[task * hd..(task + 1) * hd];
            let pages = cache.pages(seq);
            let mask = cache.key_mask(seq);
            let mut scores = Vec::with_capacity(pos + 1);
            for j in 0..=pos {
                let keys = cache.keys(layer, pages[j / page_size], kv_head);
                let kv = &keys[(j % page_size) * hd..(j % page_size + 1) * hd];
                let dot: f32 = qv.iter().zip(kv).map(|(a, b)| a * b).sum();
                // scores = (q . k) * multiplier, then 30 * tanh(s / 30), in f32
                let s = p.precision.cast_one(dot) * p.multiplier;
                let s = p.softcap * (s / p.softcap).tanh();
                scores.push(if mask[j] { s } else { -1e30 });
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                let w = p.precision.cast_one(s / sum);
                let values = cache.values(layer, pages[j / page_size], kv_head);
                let vv = &values[(j % page_size) * hd..(j % page_size + 1) * hd];
                for (o, &v) in o.iter_mut().zip(vv) {
                    *o += w * v;
                }
            }
            p.precision.cast(o);
        });
    }
}
