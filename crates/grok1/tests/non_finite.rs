//! A model whose arithmetic produces NaN (issue 22 item 16): generation and
//! the serving engine fail the request with an error naming the cause, in
//! every precision, instead of decoding NaN (or the zeros the int8 output
//! projection made of it) as token 0.

use std::ops::ControlFlow;
use std::sync::{mpsc, Arc};

use grok1::engine::{EngineConfig, EngineHandle, Event, FinishReason, Request};
use grok1::generate::{generate, GenerateError, StopConditions};
use grok1::sampling::{SamplingError, SamplingParams};
use grok1::weights::random::random_store;
use grok1::weights::{DenseTensor, StoredTensor, TensorData, TensorKind, TensorStore};
use grok1::{ForwardOptions, Grok1, ModelConfig, Precision};
use grok1_tokenizer::Tokenizer;

/// The tiny random model with NaN in its final norm's scale.
fn nan_model() -> Grok1 {
    let cfg = ModelConfig::tiny();
    let mut store = TensorStore::default();
    for t in random_store(&cfg, 3).iter() {
        let mut t: StoredTensor = t.clone();
        if t.name == "language_model/rms_norm/scale" {
            let nan: Vec<u8> = (0..cfg.emb_size)
                .flat_map(|_| f32::NAN.to_le_bytes())
                .collect();
            let TensorKind::Dense(dense) = &t.kind else {
                panic!("the final norm is dense");
            };
            t.kind = TensorKind::Dense(DenseTensor {
                data: TensorData::owned(nan),
                ..dense.clone()
            });
        }
        store.insert(t);
    }
    Grok1::from_store(cfg, &store).unwrap()
}

#[test]
fn generation_refuses_nan_logits_in_every_precision() {
    let model = nan_model();
    for precision in [
        Precision::F32,
        Precision::Bf16,
        Precision::Fast,
        Precision::Int8,
    ] {
        for temperature in [0.0, 0.7] {
            let err = generate(
                &model,
                &[5, 6, 7],
                &SamplingParams {
                    temperature,
                    ..Default::default()
                },
                &StopConditions {
                    eos: None,
                    stop_sequences: vec![],
                    max_tokens: 4,
                },
                ForwardOptions {
                    precision,
                    ..Default::default()
                },
                &mut |_| ControlFlow::Continue(()),
            )
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    GenerateError::Sampling(SamplingError::NonFiniteLogit { token: 0, .. })
                ),
                "{precision:?}, temperature {temperature}: {err}"
            );
        }
    }
}

#[test]
fn the_engine_fails_a_request_with_nan_logits() {
    let engine = EngineHandle::start(
        nan_model(),
        Arc::new(Tokenizer::grok1()),
        EngineConfig {
            max_batch: 2,
            max_queue: 2,
            context: 64,
            kv_tokens: 128,
            prefill_chunk: 16,
            precision: Precision::Fast,
            prefix_cache: true,
            kv_type: grok1::KvType::F32,
        },
    );
    let (tx, rx) = mpsc::channel();
    engine
        .submit(Request {
            prompt: vec![5, 6, 7],
            max_tokens: 4,
            sampling: SamplingParams::default(),
            stop_token_ids: vec![],
            stop_strings: vec![],
            logprobs: None,
            prompt_logprobs: false,
            constraint: None,
            sink: Box::new(move |e| tx.send(e).is_ok()),
        })
        .unwrap();
    let events: Vec<Event> = rx.iter().collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Token { .. })),
        "{events:?}"
    );
    match events.last() {
        Some(Event::Done {
            reason: FinishReason::Error(message),
            completion_tokens: 0,
            ..
        }) => assert!(
            message.starts_with("the model produced a non-finite logit (NaN for token 0)"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}
