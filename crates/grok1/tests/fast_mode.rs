//! The reduced-precision modes against the official reference's f32 outputs,
//! on every kernel path the machine has:
//!
//! - the fast mode (an int8 copy of the output projection, activations
//!   quantised to int8 for it; everything before it is the f32 mode's, so
//!   every row is routed as in f32);
//! - the int8 mode (the fast mode, plus activations quantised to int8 in blocks
//!   of 32 for the int8 weights' products).
//!
//! Any precision that moves the router's input moves some rows to other
//! experts where the reference's top-2 are nearly tied (these tiny random
//! models have router gaps down to 3e-4), and from there on their sequence
//! follows another (equally valid) computation: the reference's own bf16 run
//! does so on about a third of the fixtures' rows. So the rules, like the
//! fixtures' bf16 rules, with a bound given as a fraction of the fixture's
//! largest logit (`max_abs_logit` in tolerances.json):
//!
//! - every row and decode step whose experts, in every layer, are the f32
//!   mode's (for it and the earlier rows of its sequence): logits within the
//!   bound of the reference, top-1 equal to the reference's where the
//!   reference's margin exceeds twice the bound, greedy ids equal at every such
//!   decode step whose margin exceeds twice the bound (the reference's token is
//!   fed back each step, so later steps are checked too);
//! - the fast mode changes no route; the int8 mode at most twice as many as
//!   this crate's bf16 mode (which matches the reference's bf16 run, measured
//!   in the same test) plus a tenth of the rows, and leaves at least a quarter
//!   of the rows and steps to the first rule.
//!
//! A GGUF's K-quant, legacy and i-quant weights (read with activations
//! quantised per block in both modes) are held to the int8 mode's rules against the same
//! file's f32 mode (its exact dequantisation): `check_gguf_blocks`.
//!
//! Measured (printed by `cargo test --test fast_mode -- --nocapture`): see
//! README "Correctness".

mod common;

use common::{max_abs_diff, Fixture};
use grok1::backend::cpu::Isa;
use grok1::model::Trace;
use grok1::sampling::argmax;
use grok1::{ForwardOptions, Grok1, LogitsRows, Precision, SequenceInput};

/// Bound on |fast - reference| as a fraction of the fixture's largest logit:
/// two int8 roundings of at most 1/254 of each row's absmax, summed over `d`
/// terms of mixed sign (measured: 1.0% on tiny-moe, 0.8% on tiny-vocab, where
/// d = 64 and 32 leave little averaging; a wider model averages more).
const FAST_REL: f32 = 0.02;
/// Bound on |int8 - reference| as a fraction of the fixture's largest logit,
/// on rows routed as in the f32 mode: int8 roundings of at most 1/254 of each
/// block's absmax in every product, on models whose `d` (64 and 32) leaves
/// little averaging (measured 5.0% and 2.9%; the bf16 mode: 4.6% and 4.3%).
const INT8_REL: f32 = 0.06;

/// Whether row `r` picks the same experts in `exact` and `other` in every layer.
fn same_route(exact: &Trace, other: &Trace, r: usize, k: usize) -> bool {
    exact.router.iter().zip(&other.router).all(|(e, f)| {
        let mut a = e.experts[r * k..(r + 1) * k].to_vec();
        let mut b = f.experts[r * k..(r + 1) * k].to_vec();
        a.sort_unstable();
        b.sort_unstable();
        a == b
    })
}

fn forward_traced(
    model: &Grok1,
    cache: &mut grok1::KvCache,
    batch: &[SequenceInput],
    precision: Precision,
    logits: LogitsRows,
) -> (grok1::ForwardOutput, Trace) {
    let mut trace = Trace::default();
    let out = model
        .forward(
            cache,
            batch,
            &ForwardOptions { precision, logits },
            Some(&mut trace),
        )
        .expect("forward");
    (out, trace)
}

/// What one precision gave on one fixture.
struct Outcome {
    /// Largest |logit - reference| on same-route rows, as a fraction of the largest logit.
    worst_rel: f32,
    exempt: usize,
    total: usize,
    top1_checked: usize,
    greedy_checked: usize,
}

/// The first rule for `precision` with bound `rel`, counting the rows it exempts.
fn check(name: &str, isa: Isa, precision: Precision, rel: f32) -> Outcome {
    let fx = Fixture::open(name);
    let model: Grok1 = fx.load_model_with(isa);
    let k = model.config().num_selected_experts;
    let cols = fx.logit_cols();
    let max_logit = fx.tolerances["max_abs_logit"].as_f64().unwrap() as f32;
    let bound = rel * max_logit;
    let mut worst = 0f32;
    let (mut top1_checked, mut greedy_checked, mut exempt, mut total) = (0, 0, 0, 0);
    for s in 0..3 {
        let tokens = fx.tokens(&format!("prefill_seq{s}_tokens.npy"));
        let run = |precision| {
            let mut cache = model.new_cache(tokens.len(), 1);
            let seq = cache.add_sequence();
            let batch = [SequenceInput {
                seq,
                tokens: &tokens,
            }];
            forward_traced(&model, &mut cache, &batch, precision, LogitsRows::All)
        };
        let (_, exact) = run(Precision::F32);
        let (out, fast) = run(precision);
        let want = fx.f32(&format!("prefill_seq{s}_logits_f32.npy"));
        let top_ids = fx.i32(&format!("prefill_seq{s}_top8_ids_f32.npy"));
        let top_logits = fx.f32(&format!("prefill_seq{s}_top8_logits_f32.npy"));
        let mut routed_alike = true;
        for t in 0..tokens.len() {
            total += 1;
            routed_alike &= same_route(&exact, &fast, t, k);
            if !routed_alike {
                exempt += 1;
                continue;
            }
            let row = out.row(t);
            let got: Vec<f32> = cols.iter().map(|&c| row[c]).collect();
            let (err, at) = max_abs_diff(&got, &want.data[t * cols.len()..(t + 1) * cols.len()]);
            assert!(
                err <= bound,
                "{name} ({}) prefill seq{s} row {t}: |fast - reference| = {err} at column {} > {bound}",
                isa.name(),
                cols[at]
            );
            worst = worst.max(err);
            if top_logits.data[t * 8] - top_logits.data[t * 8 + 1] > 2.0 * bound {
                assert_eq!(
                    argmax(row),
                    top_ids.data[t * 8] as usize,
                    "{name} seq{s} row {t}: top-1"
                );
                top1_checked += 1;
            }
        }
    }
    // Decoding: both prompts batched, 16 greedy steps, the reference's ids fed
    // back, the f32 mode run alongside for the routes.
    let prompts: Vec<Vec<u32>> = (0..2)
        .map(|j| fx.tokens(&format!("decode_prompt{j}_tokens.npy")))
        .collect();
    let new_cache = || {
        let mut cache = model.new_cache(prompts.iter().map(|p| p.len() + 16).sum(), 2);
        let seqs = [cache.add_sequence(), cache.add_sequence()];
        (cache, seqs)
    };
    let (mut exact_cache, exact_seqs) = new_cache();
    let (mut cache, seqs) = new_cache();
    let mut inputs = prompts.clone();
    let mut routed_alike = [true, true];
    for step in 0..16 {
        let batch = |seqs: &[grok1::SeqId; 2]| -> Vec<SequenceInput> {
            (0..2)
                .map(|j| SequenceInput {
                    seq: seqs[j],
                    tokens: &inputs[j],
                })
                .collect()
        };
        let (_, exact) = forward_traced(
            &model,
            &mut exact_cache,
            &batch(&exact_seqs),
            Precision::F32,
            LogitsRows::Last,
        );
        let (out, fast) = forward_traced(
            &model,
            &mut cache,
            &batch(&seqs),
            precision,
            LogitsRows::Last,
        );
        // Trace rows: the batch's rows in order (each prompt, then one per step).
        let mut first_row = 0;
        let mut next_inputs = inputs.clone();
        for (j, input) in inputs.iter().enumerate() {
            let rows = first_row..first_row + input.len();
            first_row = rows.end;
            let ids = fx.i32(&format!("decode_prompt{j}_ids_f32.npy")).data;
            next_inputs[j] = vec![ids[step] as u32];
            total += 1;
            for r in rows {
                routed_alike[j] &= same_route(&exact, &fast, r, k);
            }
            if !routed_alike[j] {
                exempt += 1;
                continue;
            }
            let logits = fx.f32(&format!("decode_prompt{j}_logits_f32.npy")).data;
            let top = fx
                .f32(&format!("decode_prompt{j}_top8_logits_f32.npy"))
                .data;
            let row = out.last_row_of(j).unwrap();
            let got: Vec<f32> = cols.iter().map(|&c| row[c]).collect();
            let n = cols.len();
            let (err, _) = max_abs_diff(&got, &logits[step * n..(step + 1) * n]);
            assert!(
                err <= bound,
                "{name} decode prompt {j} step {step}: {err} > {bound}"
            );
            worst = worst.max(err);
            if top[step * 8] - top[step * 8 + 1] > 2.0 * bound {
                assert_eq!(
                    argmax(row),
                    ids[step] as usize,
                    "{name} prompt {j} step {step}: greedy id"
                );
                greedy_checked += 1;
            }
        }
        inputs = next_inputs;
    }
    println!(
        "{name} {precision:?} mode ({}): max |logit - reference| {worst:.3e} = {:.2}% of the largest logit on rows routed as in f32; {exempt} of {total} rows/steps changed experts; top-1 checked on {top1_checked} rows, greedy ids on {greedy_checked} of 32 steps",
        isa.name(),
        100.0 * worst / max_logit,
    );
    Outcome {
        worst_rel: worst / max_logit,
        exempt,
        total,
        top1_checked,
        greedy_checked,
    }
}

fn check_fast(name: &str) {
    for isa in Isa::available() {
        let fast = check(name, isa, Precision::Fast, FAST_REL);
        assert_eq!(fast.exempt, 0, "{name}: the fast mode changed experts");
        assert!(
            fast.top1_checked > 0 && fast.greedy_checked > 0,
            "the rules checked nothing"
        );
    }
}

fn check_int8(name: &str) {
    let bf16 = check(name, Isa::Scalar, Precision::Bf16, INT8_REL);
    for isa in Isa::available() {
        let int8 = check(name, isa, Precision::Int8, INT8_REL);
        assert!(int8.worst_rel <= INT8_REL);
        assert!(
            int8.exempt <= 2 * bf16.exempt + int8.total / 10,
            "{name}: {} of {} rows changed experts (bf16 mode: {})",
            int8.exempt,
            int8.total,
            bf16.exempt
        );
        assert!(
            4 * (int8.total - int8.exempt) >= int8.total,
            "{name}: fewer than a quarter of the rows checked"
        );
    }
}

#[test]
fn tiny_moe_fast_mode_within_its_bounds() {
    check_fast("tiny-moe");
}

#[test]
fn tiny_vocab_fast_mode_within_its_bounds() {
    check_fast("tiny-vocab");
}

#[test]
fn tiny_moe_int8_mode_within_its_bounds() {
    check_int8("tiny-moe");
}

#[test]
fn tiny_vocab_int8_mode_within_its_bounds() {
    check_int8("tiny-vocab");
}

#[test]
fn what_each_mode_quantises() {
    let fx = Fixture::open("tiny-moe");
    let model = fx.load_model();
    let tokens = fx.tokens("prefill_seq2_tokens.npy");
    let run = |precision| {
        let mut trace = Trace::default();
        let out = common::prefill(&model, &tokens, precision, Some(&mut trace));
        (out.logits, trace.hidden)
    };
    let (f32_logits, f32_hidden) = run(Precision::F32);
    // Fast: the hidden state before the projection is the f32 mode's exactly,
    // the int8 projection alone differs.
    let (fast_logits, fast_hidden) = run(Precision::Fast);
    assert_eq!(f32_hidden, fast_hidden);
    assert_ne!(
        f32_logits, fast_logits,
        "the fast mode did not change the projection"
    );
    // Int8: the embeddings are exact, every layer's output moves (its products
    // read int8 activations).
    let (int8_logits, int8_hidden) = run(Precision::Int8);
    assert_eq!(f32_hidden[0], int8_hidden[0]);
    for (l, (a, b)) in f32_hidden.iter().zip(&int8_hidden).enumerate().skip(1) {
        assert_ne!(a, b, "layer {l}: the int8 mode did not quantise");
    }
    assert_ne!(fast_logits, int8_logits);
    let q = model
        .fast_output()
        .expect("an f32 embedding gets an int8 copy");
    assert_eq!(q.rows, model.config().vocab_size);
    assert_eq!(q.byte_len(), q.rows * q.cols + 4 * q.rows);
}

/// A GGUF's K-quant, legacy and i-quant weights in the fast and int8 modes (their
/// products read activations quantised per block, as llama.cpp's) against
/// the same file in the f32 mode (its own exact dequantisation), with the
/// int8 mode's rules: rows routed as in f32 within `INT8_REL` of the largest
/// logit, routes changed at most twice as often as the bf16 mode on the same
/// file plus a tenth of the rows, at least a quarter of the rows checked.
/// The file's logits must move (the quantised kernels ran).
fn check_gguf_blocks(path: &std::path::Path) {
    let open = |isa: Isa| {
        let model = grok1::weights::gguf::GgufModel::open(path).expect("open gguf");
        let config = model.config().expect("gguf config");
        let weights = grok1::model::Weights::from_store(&config, &model.store).expect("weights");
        Grok1::new(
            config,
            weights,
            Box::new(grok1::backend::cpu::CpuBackend::with_isa(isa)),
        )
    };
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    // Forty-eight short prompts of pseudo-random tokens (the same on every
    // run): a route changed early in a prompt exempts the rest of it, so many
    // short prompts count route changes more finely than a few long ones
    // (with sixteen, one near-tie flipped early moved the count by a tenth).
    let vocab = open(Isa::Scalar).config().vocab_size as u64;
    let prompts: Vec<Vec<u32>> = (0..48u64)
        .map(|s| {
            (0..4u64 + s % 5)
                .map(|t| ((t * 2_654_435_761 + s * 97 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    let run = |model: &Grok1, tokens: &[u32], precision| {
        let mut cache = model.new_cache(tokens.len(), 1);
        let seq = cache.add_sequence();
        forward_traced(
            model,
            &mut cache,
            &[SequenceInput { seq, tokens }],
            precision,
            LogitsRows::All,
        )
    };
    // Rows routed as in f32, their largest deviation, and the rows exempted.
    let compare = |isa: Isa, precision: Precision| -> (f32, usize, usize, bool) {
        let model = open(isa);
        let k = model.config().num_selected_experts;
        let (mut worst, mut exempt, mut total, mut moved) = (0f32, 0, 0, false);
        // The bound is a fraction of the largest logit of all prompts (as
        // the fixtures' `max_abs_logit`).
        let mut max_logit = 0f32;
        for tokens in &prompts {
            let (want, exact) = run(&model, tokens, Precision::F32);
            let (got, other) = run(&model, tokens, precision);
            max_logit = want.logits.iter().fold(max_logit, |m, v| m.max(v.abs()));
            let mut routed_alike = true;
            for t in 0..tokens.len() {
                total += 1;
                routed_alike &= same_route(&exact, &other, t, k);
                if !routed_alike {
                    exempt += 1;
                    continue;
                }
                let (d, _) = max_abs_diff(got.row(t), want.row(t));
                worst = worst.max(d);
                moved |= d > 0.0;
            }
        }
        (worst / max_logit, exempt, total, moved)
    };
    let (_, bf16_exempt, _, _) = compare(Isa::Scalar, Precision::Bf16);
    for isa in Isa::available() {
        for precision in [Precision::Fast, Precision::Int8] {
            let (worst, exempt, total, moved) = compare(isa, precision);
            eprintln!(
                "{name} {} {precision:?}: worst {:.2}% of the largest logit, {exempt} of {total} rows routed otherwise (bf16 mode: {bf16_exempt})",
                isa.name(),
                worst * 100.0
            );
            assert!(moved, "{name} {precision:?}: no product changed");
            assert!(
                worst <= INT8_REL,
                "{name} {} {precision:?}: {worst}",
                isa.name()
            );
            assert!(
                exempt <= 2 * bf16_exempt + total / 10,
                "{name} {precision:?}: {exempt} of {total} rows changed experts"
            );
            assert!(
                4 * (total - exempt) >= total,
                "{name}: fewer than a quarter of the rows checked"
            );
        }
    }
}

/// The grid i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M;
/// with IQ4_NL, IQ4_XS, and the ternary and FP4 types, which have no fused
/// product) in the fixture whose matrices are random blocks of each
/// (`make_fixtures.py`).
#[test]
fn gguf_i_quants_fast_and_int8_modes_within_the_int8_bounds() {
    check_gguf_blocks(&common::fixtures().join("gguf").join("tiny-iquants.gguf"));
}

#[test]
fn gguf_q4_0_fast_and_int8_modes_within_the_int8_bounds() {
    check_gguf_blocks(&common::fixtures().join("gguf").join("tiny-moe-q4_0.gguf"));
}

/// The K-quants (and IQ4_XS) need rows of 256: a random model of `d = 256`
/// (a few layers), converted to each K-quant type `convert` writes and to
/// IQ4_XS.
#[test]
fn gguf_k_quants_fast_and_int8_modes_within_the_int8_bounds() {
    use grok1::config::{ffn_size, ModelConfig};
    use grok1::quant::GgmlType;
    let tiny = ModelConfig::tiny();
    let cfg = ModelConfig {
        name: "tiny-256".into(),
        vocab_size: 512,
        emb_size: 256,
        key_size: 64,
        num_q_heads: 4,
        num_kv_heads: 2,
        widening_factor: 3.0,
        ffn_size: ffn_size(256, 3.0),
        attn_output_multiplier: 0.125,
        ..tiny
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    grok1::weights::ckpt0::write_random_checkpoint(&dir, &cfg, 7, &grok1::progress::NoProgress)
        .unwrap();
    let model = grok1::load::load(&dir)
        .expect("load the random model")
        .model;
    for dtype in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::IQ4_XS] {
        let out = tmp.path().join(format!("tiny-256-{}.gguf", dtype.name()));
        grok1::convert::convert(
            model.config(),
            model.weights(),
            None,
            grok1::convert::OutFormat::Gguf,
            dtype,
            &out,
            &grok1::progress::NoProgress,
        )
        .unwrap();
        check_gguf_blocks(&out);
    }
}
