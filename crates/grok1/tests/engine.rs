//! Bad input to the forward pass, the KV cache under pressure, and generation's
//! stop conditions, on a random-weight model built in memory.

use std::ops::ControlFlow;

use grok1::generate::{generate, GenerateError, StopConditions, StopReason};
use grok1::kv_cache::CacheError;
use grok1::sampling::{argmax, SamplingParams};
use grok1::weights::random::random_store;
use grok1::weights::{TensorData, TensorKind, TensorStore};
use grok1::{ForwardOptions, Grok1, LogitsRows, ModelConfig, ModelError, SequenceInput};

fn model() -> Grok1 {
    let cfg = ModelConfig::tiny();
    let store = random_store(&cfg, 3);
    Grok1::from_store(cfg, &store).unwrap()
}

#[test]
fn out_of_range_tokens_are_rejected_before_anything_runs() {
    let m = model();
    let mut cache = m.new_cache(16, 1);
    let seq = cache.add_sequence();
    let err = m
        .forward(
            &mut cache,
            &[SequenceInput {
                seq,
                tokens: &[5, 1024, 6],
            }],
            &ForwardOptions::default(),
            None,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "token id 1024 at position 1 of sequence 0 is outside the vocabulary (ids 0..1024)"
    );
    assert_eq!(cache.len(seq).unwrap(), 0, "nothing was cached");
    assert_eq!(cache.free_pages(), cache.total_pages());
}

#[test]
fn an_empty_token_list_is_rejected() {
    let m = model();
    let mut cache = m.new_cache(16, 1);
    let seq = cache.add_sequence();
    let err = m.forward(
        &mut cache,
        &[SequenceInput { seq, tokens: &[] }],
        &ForwardOptions::default(),
        None,
    );
    assert_eq!(err.unwrap_err(), ModelError::EmptyInput { sequence: 0 });
    let err = generate(
        &m,
        &[],
        &SamplingParams::default(),
        &stop(4),
        Default::default(),
        &mut |_| ControlFlow::Continue(()),
    );
    assert_eq!(err.unwrap_err(), GenerateError::EmptyPrompt);
}

#[test]
fn context_overflow_is_rejected() {
    let m = model();
    let max = m.config().sequence_len;
    let mut cache = m.new_cache(max + 16, 1);
    let seq = cache.add_sequence();
    let long: Vec<u32> = (0..max as u32 + 1).map(|i| 3 + i % 100).collect();
    let err = m
        .forward(
            &mut cache,
            &[SequenceInput { seq, tokens: &long }],
            &ForwardOptions::default(),
            None,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "context overflow: sequence 0 would hold 129 tokens, but the model's context is 128 (sequence_len)"
    );
    // Filling the context exactly is fine; one more token is not.
    m.forward(
        &mut cache,
        &[SequenceInput {
            seq,
            tokens: &long[..max],
        }],
        &ForwardOptions::default(),
        None,
    )
    .unwrap();
    let err = m.forward(
        &mut cache,
        &[SequenceInput { seq, tokens: &[7] }],
        &ForwardOptions::default(),
        None,
    );
    assert!(matches!(
        err,
        Err(ModelError::ContextOverflow { needed: 129, .. })
    ));
}

#[test]
fn a_full_cache_fails_without_changing_any_sequence() {
    let m = model();
    let mut cache = m.new_cache(32, 0); // 2 pages of 16
    let a = cache.add_sequence();
    let b = cache.add_sequence();
    let opts = ForwardOptions::default();
    m.forward(
        &mut cache,
        &[SequenceInput {
            seq: a,
            tokens: &[5; 10],
        }],
        &opts,
        None,
    )
    .unwrap();
    let err = m
        .forward(
            &mut cache,
            &[
                SequenceInput {
                    seq: a,
                    tokens: &[6; 4],
                },
                SequenceInput {
                    seq: b,
                    tokens: &[7; 20],
                },
            ],
            &opts,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Cache(CacheError::Full { .. })),
        "{err}"
    );
    assert_eq!(cache.len(a).unwrap(), 10);
    assert_eq!(cache.len(b).unwrap(), 0);
    assert_eq!(cache.free_pages(), 1);
    // Freeing a sequence makes room again.
    cache.remove_sequence(a).unwrap();
    m.forward(
        &mut cache,
        &[SequenceInput {
            seq: b,
            tokens: &[7; 20],
        }],
        &opts,
        None,
    )
    .unwrap();
}

#[test]
fn a_sequence_twice_in_one_batch_is_rejected() {
    let m = model();
    let mut cache = m.new_cache(16, 1);
    let a = cache.add_sequence();
    let err = m
        .forward(
            &mut cache,
            &[
                SequenceInput {
                    seq: a,
                    tokens: &[5],
                },
                SequenceInput {
                    seq: a,
                    tokens: &[6],
                },
            ],
            &ForwardOptions::default(),
            None,
        )
        .unwrap_err();
    assert_eq!(err, ModelError::DuplicateSequence { sequence: 1 });
}

#[test]
fn prefill_in_chunks_equals_prefill_at_once() {
    let m = model();
    let tokens: Vec<u32> = (0..40).map(|i| 3 + (i * 37) % 1000).collect();
    let opts = ForwardOptions {
        logits: LogitsRows::All,
        ..Default::default()
    };
    let mut c1 = m.new_cache(40, 1);
    let s1 = c1.add_sequence();
    let whole = m
        .forward(
            &mut c1,
            &[SequenceInput {
                seq: s1,
                tokens: &tokens,
            }],
            &opts,
            None,
        )
        .unwrap();
    let mut c2 = m.new_cache(40, 1);
    let s2 = c2.add_sequence();
    let mut rows = Vec::new();
    for chunk in tokens.chunks(7) {
        let out = m
            .forward(
                &mut c2,
                &[SequenceInput {
                    seq: s2,
                    tokens: chunk,
                }],
                &opts,
                None,
            )
            .unwrap();
        rows.extend(out.logits);
    }
    let worst = whole
        .logits
        .iter()
        .zip(&rows)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "chunked prefill differs by {worst}");
}

#[test]
fn pad_keys_are_masked() {
    // Change only the pad token's embedding: if pad keys are never attended to,
    // no other row can see the pad position at any layer, so only its own row changes.
    let cfg = ModelConfig::tiny();
    let store = random_store(&cfg, 3);
    let mut other = TensorStore::default();
    for t in store.iter() {
        let mut t = t.clone();
        if let TensorKind::Dense(d) = &mut t.kind {
            if t.name == "language_model/in_out_embed/embeddings" {
                let mut bytes = d.data.bytes().to_vec();
                for b in &mut bytes[..cfg.emb_size * 4] {
                    *b ^= 0x5a;
                }
                d.data = TensorData::owned(bytes);
            }
        }
        other.insert(t);
    }
    let a = Grok1::from_store(cfg.clone(), &store).unwrap();
    let b = Grok1::from_store(cfg, &other).unwrap();
    let opts = ForwardOptions {
        logits: LogitsRows::All,
        ..Default::default()
    };
    let run = |m: &Grok1| {
        let mut c = m.new_cache(16, 1);
        let s = c.add_sequence();
        m.forward(
            &mut c,
            &[SequenceInput {
                seq: s,
                tokens: &[10, 11, 0, 12, 13],
            }],
            &opts,
            None,
        )
        .unwrap()
    };
    let (x, y) = (run(&a), run(&b));
    // Column 0 is the pad token's own logit, which the tied output projection
    // takes from the changed embedding row; every other column must be unchanged.
    for row in [0, 1, 3, 4] {
        assert!(
            x.row(row)[1..] == y.row(row)[1..],
            "row {row} saw the pad position"
        );
    }
    assert!(
        x.row(2)[1..] != y.row(2)[1..],
        "the pad row itself uses its embedding"
    );
}

fn stop(max_tokens: usize) -> StopConditions {
    StopConditions {
        eos: Some(2),
        stop_sequences: vec![],
        max_tokens,
    }
}

/// The greedy continuation computed step by step with forward().
fn greedy_reference(m: &Grok1, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.new_cache(prompt.len() + n, 1);
    let seq = cache.add_sequence();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = m
            .forward(
                &mut cache,
                &[SequenceInput {
                    seq,
                    tokens: &input,
                }],
                &ForwardOptions::default(),
                None,
            )
            .unwrap();
        let next = argmax(&logits.logits) as u32;
        out.push(next);
        input = vec![next];
    }
    out
}

#[test]
fn generation_streams_the_greedy_continuation() {
    let m = model();
    let prompt = [17, 33, 9];
    let want = greedy_reference(&m, &prompt, 12);
    assert!(!want.contains(&2), "the fixed seed does not draw eos");
    let mut streamed = Vec::new();
    let g = generate(
        &m,
        &prompt,
        &SamplingParams::default(),
        &StopConditions {
            eos: None,
            ..stop(12)
        },
        Default::default(),
        &mut |t| {
            streamed.extend_from_slice(t);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(g.tokens, want);
    assert_eq!(streamed, want);
    assert_eq!(g.stop_reason, StopReason::MaxTokens);
}

#[test]
fn stop_sequences_end_generation_and_are_not_returned() {
    let m = model();
    let prompt = [17, 33, 9];
    let want = greedy_reference(&m, &prompt, 12);
    let stop_seq = want[5..7].to_vec();
    let first = (0..want.len() - 1)
        .find(|&i| want[i..i + 2] == stop_seq[..])
        .unwrap();
    let mut streamed = Vec::new();
    let g = generate(
        &m,
        &prompt,
        &SamplingParams::default(),
        &StopConditions {
            eos: None,
            stop_sequences: vec![vec![999_999], stop_seq.clone()],
            max_tokens: 12,
        },
        Default::default(),
        &mut |t| {
            streamed.extend_from_slice(t);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::StopSequence(1));
    assert_eq!(g.tokens, want[..first]);
    assert_eq!(
        streamed,
        want[..first],
        "held-back tokens of the match were never streamed"
    );
}

#[test]
fn eos_stops_generation() {
    let m = model();
    let prompt = [17, 33, 9];
    let want = greedy_reference(&m, &prompt, 6);
    // Declare the 4th greedy token to be eos.
    let g = generate(
        &m,
        &prompt,
        &SamplingParams::default(),
        &StopConditions {
            eos: Some(want[3]),
            ..stop(6)
        },
        Default::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let first = want.iter().position(|&t| t == want[3]).unwrap();
    assert_eq!(g.stop_reason, StopReason::Eos);
    assert_eq!(g.tokens, want[..first]);
}

#[test]
fn the_callback_can_cancel_and_context_full_stops() {
    let m = model();
    let g = generate(
        &m,
        &[5, 6],
        &SamplingParams::default(),
        &StopConditions {
            eos: None,
            ..stop(50)
        },
        Default::default(),
        &mut |_| ControlFlow::Break(()),
    )
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert_eq!(g.tokens.len(), 1);
    let prompt: Vec<u32> = (0..120).map(|i| 3 + i).collect();
    let g = generate(
        &m,
        &prompt,
        &SamplingParams::default(),
        &StopConditions {
            eos: None,
            ..stop(50)
        },
        Default::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::ContextFull);
    assert_eq!(g.tokens.len(), 8);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = model();
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        seed: 42,
        ..Default::default()
    };
    let run = |p: &SamplingParams| {
        generate(
            &m,
            &[11, 12],
            p,
            &StopConditions {
                eos: None,
                ..stop(10)
            },
            Default::default(),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap()
        .tokens
    };
    assert_eq!(run(&params), run(&params));
    assert_ne!(
        run(&params),
        run(&SamplingParams {
            seed: 43,
            ..params.clone()
        })
    );
}
