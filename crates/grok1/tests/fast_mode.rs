//! The fast mode (an int8 copy of the output projection, activations quantised
//! to int8 for it) against the official reference's f32 outputs, on every
//! kernel path the machine has. Its bounds, like the fixtures' bf16 rules:
//!
//! - logits within `FAST_REL` of the largest reference logit of the fixture
//!   (`max_abs_logit` in tolerances.json), on every prefill row and decode step;
//! - top-1 equal to the reference's where the reference's margin exceeds twice
//!   that bound;
//! - greedy ids equal to the reference's at every decode step whose margin
//!   exceeds twice that bound (the reference's token is fed back each step,
//!   so later steps are checked too).
//!
//! Measured (printed by `cargo test --test fast_mode -- --nocapture`): see
//! README "Correctness".

mod common;

use common::{max_abs_diff, prefill, Fixture};
use grok1::backend::cpu::Isa;
use grok1::sampling::argmax;
use grok1::{ForwardOptions, Grok1, LogitsRows, Precision, SequenceInput};

/// Bound on |fast - reference| as a fraction of the fixture's largest logit:
/// two int8 roundings of at most 1/254 of each row's absmax, summed over `d`
/// terms of mixed sign (measured: 1.0% on tiny-moe, 0.8% on tiny-vocab, where
/// d = 64 and 32 leave little averaging; a wider model averages more).
const FAST_REL: f32 = 0.02;

fn check(name: &str, isa: Isa) -> (f32, usize, usize) {
    let fx = Fixture::open(name);
    let model: Grok1 = fx.load_model_with(isa);
    let cols = fx.logit_cols();
    let bound = FAST_REL * fx.tolerances["max_abs_logit"].as_f64().unwrap() as f32;
    let mut worst = 0f32;
    let (mut top1_checked, mut greedy_checked) = (0, 0);
    for s in 0..3 {
        let tokens = fx.tokens(&format!("prefill_seq{s}_tokens.npy"));
        let out = prefill(&model, &tokens, Precision::Fast, None);
        let want = fx.f32(&format!("prefill_seq{s}_logits_f32.npy"));
        let top_ids = fx.i32(&format!("prefill_seq{s}_top8_ids_f32.npy"));
        let top_logits = fx.f32(&format!("prefill_seq{s}_top8_logits_f32.npy"));
        for t in 0..tokens.len() {
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
    // Decoding: both prompts batched, 16 greedy steps, the reference's ids fed back.
    let prompts: Vec<Vec<u32>> = (0..2)
        .map(|j| fx.tokens(&format!("decode_prompt{j}_tokens.npy")))
        .collect();
    let mut cache = model.new_cache(prompts.iter().map(|p| p.len() + 16).sum(), 2);
    let seqs = [cache.add_sequence(), cache.add_sequence()];
    let mut inputs = prompts.clone();
    for step in 0..16 {
        let batch: Vec<SequenceInput> = (0..2)
            .map(|j| SequenceInput {
                seq: seqs[j],
                tokens: &inputs[j],
            })
            .collect();
        let options = ForwardOptions {
            precision: Precision::Fast,
            logits: LogitsRows::Last,
        };
        let out = model.forward(&mut cache, &batch, &options, None).unwrap();
        for (j, input) in inputs.iter_mut().enumerate() {
            let ids = fx.i32(&format!("decode_prompt{j}_ids_f32.npy")).data;
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
            *input = vec![ids[step] as u32];
        }
    }
    println!(
        "{name} fast mode ({}): max |fast - reference| {worst:.3e} = {:.2}% of the largest logit (bound {:.0}%); top-1 checked on {top1_checked} rows, greedy ids on {greedy_checked} of 32 steps",
        isa.name(),
        100.0 * worst / (bound / FAST_REL),
        100.0 * FAST_REL
    );
    (worst, top1_checked, greedy_checked)
}

#[test]
fn tiny_moe_fast_mode_within_its_bounds() {
    for isa in Isa::available() {
        let (_, top1, greedy) = check("tiny-moe", isa);
        assert!(top1 > 0 && greedy > 0, "the rules checked nothing");
    }
}

#[test]
fn tiny_vocab_fast_mode_within_its_bounds() {
    for isa in Isa::available() {
        let (_, top1, greedy) = check("tiny-vocab", isa);
        assert!(top1 > 0 && greedy > 0, "the rules checked nothing");
    }
}

#[test]
fn fast_mode_changes_only_the_output_projection() {
    // The hidden state before the projection is the f32 mode's exactly: the
    // fast mode differs from f32 by the int8 product alone.
    let fx = Fixture::open("tiny-moe");
    let model = fx.load_model();
    let tokens = fx.tokens("prefill_seq2_tokens.npy");
    let run = |precision| {
        let mut trace = grok1::model::Trace::default();
        let out = prefill(&model, &tokens, precision, Some(&mut trace));
        (out.logits, trace.hidden)
    };
    let (f32_logits, f32_hidden) = run(Precision::F32);
    let (fast_logits, fast_hidden) = run(Precision::Fast);
    assert_eq!(f32_hidden, fast_hidden);
    assert_ne!(
        f32_logits, fast_logits,
        "the fast mode did not change the projection"
    );
    let q = model
        .fast_output()
        .expect("an f32 embedding gets an int8 copy");
    assert_eq!(q.rows, model.config().vocab_size);
    assert_eq!(q.byte_len(), q.rows * q.cols + 4 * q.rows);
}
