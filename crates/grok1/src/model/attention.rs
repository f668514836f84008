//! The attention block: projections, RoPE, the KV cache write, causal attention
//! with the soft cap, and the output projection.

use super::rope::Rope;
use crate::backend::{AttentionParams, Backend, MatmulJob, Precision, RowPosition};
use crate::config::ModelConfig;
use crate::kv_cache::KvCache;
use crate::model::weights::{LayerWeights, Part, RowLayout};
use crate::model::InputSquares;

/// Self-attention of `a` (`[rows, d]`, already normed) for layer `layer`;
/// writes the rows' keys and values into `cache` and returns `[rows, d]`,
/// not yet rounded to the activation dtype (a tensor-parallel rank's result
/// is its heads' share, summed across ranks first). `cfg` holds this
/// process's heads.
/// With `squares`, adds the projections' inputs to it.
#[allow(clippy::too_many_arguments)]
pub fn attention_block(
    backend: &dyn Backend,
    cfg: &ModelConfig,
    rope: &Rope,
    w: &LayerWeights,
    layer: usize,
    a: &[f32],
    rows: &[RowPosition],
    cache: &mut KvCache,
    precision: Precision,
    mut squares: Option<&mut InputSquares>,
) -> Vec<f32> {
    let n = rows.len();
    if let Some(s) = squares.as_deref_mut() {
        for part in [Part::Query, Part::Key, Part::Value] {
            s.add(
                RowLayout::Gguf.name(part, layer, None),
                0,
                1,
                cfg.emb_size,
                a,
            );
        }
    }
    let (qw, kvw) = (cfg.q_width(), cfg.kv_width());
    // q = a @ Wq; k = a @ Wk; v = a @ Wv (outputs in the activation dtype)
    let mut q = vec![0f32; n * qw];
    let mut k = vec![0f32; n * kvw];
    let mut v = vec![0f32; n * kvw];
    backend.matmul_many(
        &mut [
            MatmulJob {
                x: a,
                w: &w.wq,
                out: &mut q,
            },
            MatmulJob {
                x: a,
                w: &w.wk,
                out: &mut k,
            },
            MatmulJob {
                x: a,
                w: &w.wv,
                out: &mut v,
            },
        ],
        precision,
    );
    precision.cast(&mut q);
    precision.cast(&mut k);
    precision.cast(&mut v);
    // RoPE on q and k at each row's position (f32 maths, cast back).
    for (i, row) in rows.iter().enumerate() {
        let (cos, sin) = rope.phases(row.pos);
        rope.apply(&mut q[i * qw..(i + 1) * qw], &cos, &sin);
        rope.apply(&mut k[i * kvw..(i + 1) * kvw], &cos, &sin);
    }
    precision.cast(&mut q);
    precision.cast(&mut k);
    for (i, row) in rows.iter().enumerate() {
        cache.write(
            layer,
            row.seq,
            row.pos,
            &k[i * kvw..(i + 1) * kvw],
            &v[i * kvw..(i + 1) * kvw],
        );
    }
    let params = AttentionParams {
        num_q_heads: cfg.num_q_heads,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.key_size,
        multiplier: cfg.attn_output_multiplier as f32,
        softcap: cfg.attn_softcap as f32,
        precision,
    };
    let mut o = vec![0f32; n * qw];
    backend.attention(&q, rows, cache, layer, &params, &mut o);
    if let Some(s) = squares {
        s.add(
            RowLayout::Gguf.name(Part::AttnOut, layer, None),
            0,
            1,
            qw,
            &o,
        );
    }
    // heads concatenated [rows, Hq*hd], then o @ Wo back to d
    let mut out = vec![0f32; n * cfg.emb_size];
    backend.matmul(&o, &w.wo, &mut out, precision);
    out
}
