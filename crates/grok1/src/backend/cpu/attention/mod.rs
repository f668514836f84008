//! Causal attention over the paged KV cache.
//!
//! The f32 and fast modes walk the cache a page at a time with an online
//! softmax (a running maximum and denominator per query, the output rescaled
//! when the maximum grows), for a tile of up to [`TILE_ROWS`] query rows of
//! one sequence and the query heads that share a key head: each page's keys
//! and values are read from memory once per tile instead of once per query
//! row and head, and no task holds a score per cached position. Every query's
//! arithmetic is the same whatever tile it is in, so a prompt processed in
//! one pass and token by token give the same values.
//!
//! The bf16 mode rounds the normalised weights to bf16 before they multiply
//! the values, as the reference does, which needs every score first; it keeps
//! the two-pass form.

pub mod pages;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod raw_page;

use std::ops::Range;

use rayon::prelude::*;

use super::common::{Isa, PARALLEL_MIN_MACS};
use crate::backend::{AttentionParams, Precision, RowPosition};
use crate::kv_cache::KvCache;

/// Query rows per tile. With Grok-1's six query heads per key head a tile's
/// running outputs take 48 KiB, beside the 16 KiB of one page's keys and
/// values at the default page size.
pub const TILE_ROWS: usize = 16;

/// `out[row, head] = softmax(softcap(q[row, head] . K^T)) V` over each row's
/// sequence positions `0..=pos` (pad keys masked). `q` and `out` are
/// `[rows, Hq * hd]`.
pub fn attend(
    isa: Isa,
    q: &[f32],
    rows: &[RowPosition],
    cache: &KvCache,
    layer: usize,
    p: &AttentionParams,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    assert_eq!(q.len(), rows.len() * p.num_q_heads * hd);
    assert_eq!(out.len(), q.len());
    if rows.is_empty() {
        return;
    }
    if p.precision == Precision::Bf16 {
        return attend_bf16(isa, q, rows, cache, layer, p, out);
    }
    let units = work_units(rows, p.num_q_heads, p.num_kv_heads);
    let run = |u: &Unit| attend_unit(isa, q, rows, u, cache, layer, p);
    let macs: usize = rows.iter().map(|r| 2 * (r.pos + 1)).sum::<usize>() * p.num_q_heads * hd;
    let outs: Vec<Vec<f32>> = if macs < PARALLEL_MIN_MACS {
        units.iter().map(run).collect()
    } else {
        units.par_iter().map(run).collect()
    };
    let width = p.num_q_heads * hd;
    for (u, o) in units.iter().zip(&outs) {
        let per_row = u.heads.len() * hd;
        for (r, src) in u.rows.clone().zip(o.chunks_exact(per_row)) {
            let at = r * width + u.heads.start * hd;
            out[at..at + per_row].copy_from_slice(src);
        }
    }
}

/// One task: consecutive query rows of one sequence and some of the query
/// heads that read key head `kv_head`.
struct Unit {
    rows: Range<usize>,
    heads: Range<usize>,
    kv_head: usize,
}

/// Tiles of up to [`TILE_ROWS`] consecutive rows of the same sequence, times
/// each key head's group of query heads; the groups are cut into single
/// heads when there would be fewer tasks than threads (decoding a few
/// sequences).
fn work_units(rows: &[RowPosition], num_q_heads: usize, num_kv_heads: usize) -> Vec<Unit> {
    let mut tiles = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || i - start == TILE_ROWS || rows[i].seq != rows[start].seq {
            tiles.push(start..i);
            start = i;
        }
    }
    let group = num_q_heads / num_kv_heads;
    let threads = rayon::current_num_threads();
    let per_unit = if tiles.len() * num_kv_heads >= threads {
        group
    } else {
        group.div_ceil(threads.div_ceil(tiles.len() * num_kv_heads))
    };
    let mut units = Vec::new();
    for tile in tiles {
        for kv_head in 0..num_kv_heads {
            let first = kv_head * group;
            for h in (first..first + group).step_by(per_unit) {
                units.push(Unit {
                    rows: tile.clone(),
                    heads: h..(h + per_unit).min(first + group),
                    kv_head,
                });
            }
        }
    }
    units
}

/// The outputs of one unit, `[rows][heads][hd]`, by an online softmax over
/// the sequence's pages.
fn attend_unit(
    isa: Isa,
    q: &[f32],
    rows: &[RowPosition],
    u: &Unit,
    cache: &KvCache,
    layer: usize,
    p: &AttentionParams,
) -> Vec<f32> {
    let hd = p.head_dim;
    let width = p.num_q_heads * hd;
    let ps = cache.page_size();
    let tile = &rows[u.rows.clone()];
    let seq = tile[0].seq;
    let pages = cache.pages(seq);
    let mask = cache.key_mask(seq);
    let g = u.heads.len();
    let nq = tile.len() * g;
    let mut o = vec![0f32; nq * hd];
    // Per query: the largest score so far and the softmax's denominator
    // relative to it.
    let mut max = vec![f32::NEG_INFINITY; nq];
    let mut sum = vec![0f32; nq];
    let mut s = vec![0f32; g * ps];
    let last = tile.iter().map(|r| r.pos).max().unwrap_or(0);
    for (pi, &page) in pages[..=last / ps].iter().enumerate() {
        let start = pi * ps;
        let keys = cache.keys(layer, page, u.kv_head);
        let values = cache.values(layer, page, u.kv_head);
        for (r, row) in tile.iter().enumerate() {
            if row.pos < start {
                continue;
            }
            let n = (row.pos + 1 - start).min(ps);
            let mask = &mask[start..start + n];
            let at = (u.rows.start + r) * width + u.heads.start * hd;
            pages::page_scores(isa, &q[at..at + g * hd], g, keys, ps, n, &mut s);
            let o_row = &mut o[r * g * hd..(r + 1) * g * hd];
            for (j, (sj, oi)) in s.chunks_mut(ps).zip(o_row.chunks_exact_mut(hd)).enumerate() {
                let (sj, i) = (&mut sj[..n], r * g + j);
                let page_max = pages::softcap_scores(isa, sj, p.multiplier, p.softcap, mask);
                if page_max > max[i] {
                    if max[i] > f32::NEG_INFINITY {
                        let scale = (max[i] - page_max).exp();
                        sum[i] *= scale;
                        oi.iter_mut().for_each(|x| *x *= scale);
                    }
                    max[i] = page_max;
                }
                sum[i] += pages::exp_shifted(isa, sj, max[i]);
            }
            pages::page_values(isa, &s, g, ps, n, values, o_row);
        }
    }
    for (oi, &total) in o.chunks_exact_mut(hd).zip(&sum) {
        let inv = 1.0 / total;
        oi.iter_mut().for_each(|x| *x *= inv);
    }
    o
}

/// The bf16 mode: one task per row and query head, every score first, the
/// weights rounded to bf16 after the softmax as the reference's casts do.
fn attend_bf16(
    isa: Isa,
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
    let positions: usize = rows.iter().map(|r| r.pos + 1).sum::<usize>() / rows.len().max(1);
    // The multiply-adds undercount a task's cost here (softmax, exps, the
    // scores buffer), hence the lower bar than for the products.
    let min_tasks = (PARALLEL_MIN_MACS / 8 / (2 * positions * hd).max(1)).max(1);
    out.par_chunks_mut(hd)
        .enumerate()
        .with_min_len(min_tasks)
        .for_each(|(task, o)| {
            let (row, head) = (task / p.num_q_heads, task % p.num_q_heads);
            let RowPosition { seq, pos } = rows[row];
            let kv_head = head / group;
            let qv = &q[task * hd..(task + 1) * hd];
            let pages = cache.pages(seq);
            let mask = &cache.key_mask(seq)[..=pos];
            // Whole pages of scores, cut to the positions after.
            let mut scores = vec![0f32; (pos / page_size + 1) * page_size];
            for (j, (chunk, &page)) in scores.chunks_mut(page_size).zip(pages).enumerate() {
                let n = (pos + 1 - j * page_size).min(page_size);
                let keys = cache.keys(layer, page, kv_head);
                pages::page_scores(isa, qv, 1, keys, page_size, n, chunk);
            }
            scores.truncate(pos + 1);
            for (s, &keep) in scores.iter_mut().zip(mask) {
                let x = p.precision.cast_one(*s) * p.multiplier;
                *s = if keep {
                    p.softcap * (x / p.softcap).tanh()
                } else {
                    -1e30
                };
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
                for (c, o) in o.iter_mut().enumerate() {
                    *o += w * values.get(hd, j % page_size, c);
                }
            }
            p.precision.cast(o);
        });
}
