//! The mixture of experts: an f32 router picks the top experts of each token
//! and only those experts run, each once on all the tokens routed to it.

use super::norm::softmax;
use super::GateMode;
use crate::backend::{Backend, MatmulJob, Precision};
use crate::config::ModelConfig;
use crate::model::weights::{LayerWeights, Part, RowLayout};
use crate::model::InputSquares;

/// What the router decided for a batch of rows (for tests and tracing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouterDecisions {
    /// `[rows, num_experts]` router logits (f32).
    pub logits: Vec<f32>,
    /// `[rows, num_experts]` softmax probabilities.
    pub probs: Vec<f32>,
    /// `[rows, k]` selected experts, by descending probability (ties: lower id).
    pub experts: Vec<usize>,
    /// `[rows, k]` their gates: the probabilities themselves, not renormalised.
    pub gates: Vec<f32>,
}

/// Router in f32: `p = softmax(m @ Wr)`, then the top `k` of `p`.
pub fn route(
    backend: &dyn Backend,
    cfg: &ModelConfig,
    w: &LayerWeights,
    m: &[f32],
    mode: GateMode,
) -> RouterDecisions {
    let (d, e, k) = (cfg.emb_size, cfg.num_experts, cfg.num_selected_experts);
    let rows = m.len() / d;
    let mut logits = vec![0f32; rows * e];
    backend.matmul_f32(m, &w.router, d, e, &mut logits);
    let mut probs = logits.clone();
    let mut experts = Vec::with_capacity(rows * k);
    let mut gates = Vec::with_capacity(rows * k);
    for p in probs.chunks_exact_mut(e) {
        softmax(p);
        let mut order: Vec<usize> = (0..e).collect();
        // Stable sort by descending probability keeps lower ids first on ties.
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let total: f32 = match mode {
            GateMode::Official => 1.0,
            GateMode::Renormalized => order[..k].iter().map(|&x| p[x]).sum(),
        };
        for &x in &order[..k] {
            experts.push(x);
            gates.push(p[x] / total);
        }
    }
    RouterDecisions {
        logits,
        probs,
        experts,
        gates,
    }
}

/// `sum over selected experts of gate * expert(m)` with
/// `expert(m) = (gelu(m @ W_linear) * (m @ W_linear_v)) @ W_linear_1`.
/// Not yet rounded to the activation dtype: a tensor-parallel rank's result is
/// its share of the hidden width, summed across ranks first. `cfg.ffn_size`
/// is this process's width. With `squares`, adds each expert's inputs to
/// it (`layer` names the tensors).
#[allow(clippy::too_many_arguments)]
pub fn moe_block(
    backend: &dyn Backend,
    cfg: &ModelConfig,
    w: &LayerWeights,
    layer: usize,
    m: &[f32],
    precision: Precision,
    mode: GateMode,
    squares: Option<&mut InputSquares>,
) -> (Vec<f32>, RouterDecisions) {
    let (d, ff, k) = (cfg.emb_size, cfg.ffn_size, cfg.num_selected_experts);
    let rows = m.len() / d;
    let router = route(backend, cfg, w, m, mode);
    // Group the rows by expert so each expert's weights are read once per call.
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); cfg.num_experts];
    for r in 0..rows {
        for j in 0..k {
            let gate = precision.cast_one(router.gates[r * k + j]);
            routed[router.experts[r * k + j]].push((r, gate));
        }
    }
    // expert(x) for the rows routed to each expert, in routed order; the
    // experts' products run side by side (`matmul_many`), phase by phase.
    let active: Vec<usize> = (0..cfg.num_experts)
        .filter(|&e| !routed[e].is_empty())
        .collect();
    let inputs: Vec<Vec<f32>> = active
        .iter()
        .map(|&e| {
            let mut x = Vec::with_capacity(routed[e].len() * d);
            for &(r, _) in &routed[e] {
                x.extend_from_slice(&m[r * d..(r + 1) * d]);
            }
            x
        })
        .collect();
    let mut h: Vec<Vec<f32>> = active
        .iter()
        .map(|&e| vec![0f32; routed[e].len() * ff])
        .collect();
    let mut hv = h.clone();
    let mut jobs: Vec<MatmulJob> = Vec::with_capacity(2 * active.len());
    for (((&e, x), h), hv) in active.iter().zip(&inputs).zip(&mut h).zip(&mut hv) {
        jobs.push(MatmulJob {
            x,
            w: &w.experts.linear[e],
            out: h,
        });
        jobs.push(MatmulJob {
            x,
            w: &w.experts.linear_v[e],
            out: hv,
        });
    }
    backend.matmul_many(&mut jobs, precision);
    drop(jobs);
    // In the reference the expert outputs pass through an f32 one-hot einsum, so
    // from here to the final sum everything stays f32 whatever the activation
    // dtype: gelu(h) * hv, the down projection (an f32 x bf16 dot that XLA
    // computes with the int8 * scale product unrounded), gate * out and the sum.
    for (h, hv) in h.iter_mut().zip(&mut hv) {
        precision.cast(h);
        precision.cast(hv);
        backend.gelu_mul(h, hv);
    }
    if let Some(s) = squares {
        let e_all = cfg.num_experts;
        let name = |part| {
            RowLayout::Gguf
                .merged_experts(part, layer)
                .unwrap_or_default()
        };
        for ((&e, x), h) in active.iter().zip(&inputs).zip(&h) {
            s.add(name(Part::Gate), e, e_all, d, x);
            s.add(name(Part::Up), e, e_all, d, x);
            s.add(name(Part::Down), e, e_all, ff, h);
        }
    }
    let mut ys: Vec<Vec<f32>> = active
        .iter()
        .map(|&e| vec![0f32; routed[e].len() * d])
        .collect();
    let mut jobs: Vec<MatmulJob> = active
        .iter()
        .zip(&h)
        .zip(&mut ys)
        .map(|((&e, x), out)| MatmulJob {
            x,
            w: &w.experts.linear_1[e],
            out,
        })
        .collect();
    backend.matmul_many(&mut jobs, precision);
    drop(jobs);
    // The weighted sum in expert order (`active` is ascending).
    let mut out = vec![0f32; rows * d];
    for (&e, y) in active.iter().zip(&ys) {
        for (i, &(r, gate)) in routed[e].iter().enumerate() {
            let o = &mut out[r * d..(r + 1) * d];
            for (o, &v) in o.iter_mut().zip(&y[i * d..(i + 1) * d]) {
                *o += gate * v;
            }
        }
    }
    (out, router)
}
