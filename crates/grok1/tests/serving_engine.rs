//! The serving engine: continuous batching gives every request exactly what
//! it would get alone, stop rules, cancellation, admission limits, preemption
//! under KV pressure, and prompt log-probabilities for scoring.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{metric, wait_for, Fixture};
use grok1::engine::{
    CancelToken, EngineConfig, EngineHandle, Event, FinishReason, Request, SubmitError,
};
use grok1::generate::{generate, StopConditions};
use grok1::sampling::SamplingParams;
use grok1::{ForwardOptions, Grok1, LogitsRows, Precision, SequenceInput};
use grok1_tokenizer::Tokenizer;

/// How long a test waits for the engine to let its pages go.
const WAIT: Duration = Duration::from_secs(30);

fn config() -> EngineConfig {
    EngineConfig {
        max_batch: 16,
        max_queue: 32,
        context: 128,
        kv_tokens: 16 * 128,
        prefill_chunk: 64,
        precision: Precision::F32,
        prefix_cache: true,
        kv_type: grok1::KvType::F32,
    }
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::grok1())
}

struct Outcome {
    tokens: Vec<u32>,
    text: String,
    reason: FinishReason,
    prompt_logprobs: Option<Vec<Option<grok1::engine::TokenLogprob>>>,
    completion_tokens: usize,
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> (Request, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let req = Request {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop_token_ids: vec![],
        stop_strings: vec![],
        logprobs: None,
        prompt_logprobs: false,
        constraint: None,
        sink: Box::new(move |e| tx.send(e).is_ok()),
    };
    (req, rx)
}

fn collect(rx: mpsc::Receiver<Event>) -> Outcome {
    let mut out = Outcome {
        tokens: vec![],
        text: String::new(),
        reason: FinishReason::Cancelled,
        prompt_logprobs: None,
        completion_tokens: 0,
    };
    for e in rx.iter() {
        match e {
            Event::Token { token, text, .. } => {
                out.tokens.push(token);
                out.text.push_str(&text);
            }
            Event::Text(t) => out.text.push_str(&t),
            Event::PromptLogprobs(lp) => out.prompt_logprobs = Some(lp),
            Event::Done {
                reason,
                completion_tokens,
                ..
            } => {
                out.reason = reason;
                out.completion_tokens = completion_tokens;
                break;
            }
        }
    }
    out
}

fn greedy(model: &Grok1, prompt: &[u32], n: usize) -> Vec<u32> {
    generate(
        model,
        prompt,
        &SamplingParams::default(),
        &StopConditions {
            eos: None,
            stop_sequences: vec![],
            max_tokens: n,
        },
        ForwardOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap()
    .tokens
}

/// 16 prompts of different lengths from the fixture's real-text prompt.
fn prompts(fx: &Fixture) -> Vec<Vec<u32>> {
    let base = fx.tokens("decode_prompt0_tokens.npy");
    let other = fx.tokens("decode_prompt1_tokens.npy");
    (0..16)
        .map(|i| {
            let mut p: Vec<u32> = if i % 2 == 0 {
                base.clone()
            } else {
                other.clone()
            };
            p.truncate(1 + i % p.len());
            p.extend((0..i as u32 * 3).map(|j| 100 + j * 17 + i as u32));
            p
        })
        .collect()
}

#[test]
fn batched_requests_get_exactly_the_greedy_continuation() {
    let fx = Fixture::open("tiny-vocab");
    let reference = fx.load_model();
    let prompts = prompts(&fx);
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&reference, p, 12)).collect();
    let engine = EngineHandle::start(fx.load_model(), tokenizer(), config());
    // Alone.
    let (req, rx) = request(prompts[5].clone(), 12);
    engine.submit(req).unwrap();
    assert_eq!(collect(rx).tokens, want[5]);
    // All 16 at once, batched together.
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (req, rx) = request(p.clone(), 12);
            engine.submit(req).unwrap();
            rx
        })
        .collect();
    for (i, rx) in receivers.into_iter().enumerate() {
        let got = collect(rx);
        assert_eq!(got.tokens, want[i], "request {i}");
        assert_eq!(got.reason, FinishReason::Length);
        assert_eq!(got.completion_tokens, 12);
        let text = Tokenizer::grok1()
            .decode_after(&prompts[i], &want[i])
            .unwrap();
        assert_eq!(got.text, text, "request {i}: streamed text");
    }
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn preemption_under_kv_pressure_keeps_results_exact() {
    let fx = Fixture::open("tiny-vocab");
    let reference = fx.load_model();
    let prompts = prompts(&fx);
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&reference, p, 20)).collect();
    // Room for about three sequences at a time: most requests wait or are preempted.
    let engine = EngineHandle::start(
        fx.load_model(),
        tokenizer(),
        EngineConfig {
            kv_tokens: 3 * 64,
            ..config()
        },
    );
    // One submission, so that they contend for the cache however busy the
    // host is (sent one by one, each could finish before the next arrived).
    let (reqs, receivers): (Vec<_>, Vec<_>) =
        prompts.iter().map(|p| request(p.clone(), 20)).unzip();
    engine.submit_all(reqs, &CancelToken::new()).unwrap();
    for (i, rx) in receivers.into_iter().enumerate() {
        assert_eq!(collect(rx).tokens, want[i], "request {i}");
    }
    assert_eq!(engine.in_flight(), 0);
    let metrics = engine.metrics().render();
    let preemptions: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("grok1_preemptions_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        preemptions > 0,
        "the test should force preemption: {metrics}"
    );
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn stop_strings_and_eos_end_requests() {
    let fx = Fixture::open("tiny-vocab");
    let engine = EngineHandle::start(fx.load_model(), tokenizer(), config());
    let prompt = fx.tokens("decode_prompt0_tokens.npy");
    // The reference continuation: "FACEFACEikasikasikasikasikasikas Big Big Big ..."
    let (mut req, rx) = request(prompt.clone(), 16);
    req.stop_strings = vec!["ikasika".into()];
    engine.submit(req).unwrap();
    let out = collect(rx);
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(out.text, "FACEFACE");
    let (mut req, rx) = request(prompt.clone(), 16);
    req.stop_token_ids = vec![76183];
    engine.submit(req).unwrap();
    let out = collect(rx);
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(out.tokens, vec![41351, 41351]);
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn a_dropped_client_frees_its_slot() {
    let fx = Fixture::open("tiny-vocab");
    let engine = EngineHandle::start(fx.load_model(), tokenizer(), config());
    let (req, rx) = request(vec![422, 3033, 356], 100);
    engine.submit(req).unwrap();
    // Read one token, then hang up.
    let first = rx.recv().unwrap();
    assert!(matches!(first, Event::Token { .. }));
    drop(rx);
    let start = std::time::Instant::now();
    while engine.in_flight() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cancelled request still in flight"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(engine
        .metrics()
        .render()
        .contains("grok1_requests_finished_total{reason=\"cancelled\"} 1"));
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn admission_limits_and_validation() {
    let fx = Fixture::open("tiny-vocab");
    let engine = EngineHandle::start(
        fx.load_model(),
        tokenizer(),
        EngineConfig {
            max_batch: 1,
            max_queue: 1,
            ..config()
        },
    );
    let (a, _ra) = request(vec![5; 10], 100);
    let (b, _rb) = request(vec![6; 10], 100);
    let (c, _rc) = request(vec![7; 10], 100);
    engine.submit(a).unwrap();
    engine.submit(b).unwrap();
    assert!(matches!(
        engine.submit(c),
        Err(SubmitError::QueueFull { limit: 2, .. })
    ));
    let (too_long, _r) = request(vec![5; 100], 29);
    let err = engine.submit(too_long).unwrap_err();
    assert_eq!(err.to_string(), "this model's maximum context length is 128 tokens, but 100 prompt tokens and 29 max_tokens were requested (129 in total); shorten the prompt or lower max_tokens");
    let (bad, _r) = request(vec![5, 131072], 1);
    assert!(matches!(
        engine.submit(bad),
        Err(SubmitError::TokenOutOfRange {
            token: 131072,
            position: 1,
            ..
        })
    ));
    let (empty, _r) = request(vec![], 1);
    assert_eq!(engine.submit(empty), Err(SubmitError::EmptyPrompt));
    engine.shutdown(Duration::from_millis(10));
    let (late, _r) = request(vec![5], 1);
    assert_eq!(engine.submit(late), Err(SubmitError::ShuttingDown));
}

#[test]
fn prompt_logprobs_score_the_prompt() {
    let fx = Fixture::open("tiny-moe");
    let model = fx.load_model();
    let prompt = fx.tokens("prefill_seq2_tokens.npy");
    // Reference: log-softmax of the full forward's rows.
    let mut cache = model.new_cache(prompt.len(), 1);
    let seq = cache.add_sequence();
    let out = model
        .forward(
            &mut cache,
            &[SequenceInput {
                seq,
                tokens: &prompt,
            }],
            &ForwardOptions {
                logits: LogitsRows::All,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let engine = EngineHandle::start(
        model,
        tokenizer(),
        EngineConfig {
            prefill_chunk: 7,
            ..config()
        },
    );
    let (mut req, rx) = request(prompt.clone(), 0);
    req.prompt_logprobs = true;
    req.logprobs = Some(3);
    engine.submit(req).unwrap();
    let got = collect(rx);
    assert_eq!(got.reason, FinishReason::Length);
    assert!(got.tokens.is_empty());
    let lp = got.prompt_logprobs.expect("prompt logprobs");
    assert_eq!(lp.len(), prompt.len());
    assert!(lp[0].is_none());
    for p in 1..prompt.len() {
        let row = out.row(p - 1);
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let want = row[prompt[p] as usize] as f64 - lse;
        let entry = lp[p].as_ref().unwrap();
        assert_eq!(entry.token, prompt[p]);
        assert!((entry.logprob as f64 - want).abs() < 1e-5, "position {p}");
        assert_eq!(entry.top.len(), 3);
        assert!(entry.top[0].1 >= entry.top[1].1);
    }
    engine.shutdown(Duration::from_secs(1));
}

/// Requests whose events arrive, tagged, on one channel: in the engine's order.
fn tagged(
    prompt: Vec<u32>,
    max_tokens: usize,
    tag: usize,
    tx: &mpsc::Sender<(usize, Event)>,
    per_event: Duration,
) -> Request {
    let tx = tx.clone();
    let (mut req, _) = request(prompt, max_tokens);
    req.sink = Box::new(move |e| {
        std::thread::sleep(per_event);
        tx.send((tag, e)).is_ok()
    });
    req
}

/// Submits a request that `cancel` ends.
fn submit_cancellable(engine: &EngineHandle, request: Request, cancel: &CancelToken) {
    engine.submit_all(vec![request], cancel).unwrap();
}

#[test]
fn a_cancelled_request_is_dropped_while_prefilling_or_anywhere_in_the_queue() {
    let fx = Fixture::open("tiny-vocab");
    let engine = EngineHandle::start(
        fx.load_model(),
        tokenizer(),
        EngineConfig {
            max_batch: 2,
            prefill_chunk: 2,
            ..config()
        },
    );
    let (tx, rx) = mpsc::channel();
    // A decodes slowly (its sink takes 5 ms an event), B prefills 120 tokens two
    // a step; C and D wait, D behind C.
    let slow = Duration::from_millis(5);
    let (cancel_b, cancel_d) = (CancelToken::new(), CancelToken::new());
    engine
        .submit(tagged(vec![5, 6, 7], 100, 0, &tx, slow))
        .unwrap();
    let b = tagged(vec![9; 120], 4, 1, &tx, Duration::ZERO);
    submit_cancellable(&engine, b, &cancel_b);
    engine
        .submit(tagged(vec![11; 4], 3, 2, &tx, Duration::ZERO))
        .unwrap();
    let d = tagged(vec![13; 4], 3, 3, &tx, Duration::ZERO);
    submit_cancellable(&engine, d, &cancel_d);
    assert!(matches!(rx.recv().unwrap(), (0, Event::Token { .. })));
    assert_eq!(metric(&engine, "grok1_running_sequences"), 2.0);
    assert_eq!(metric(&engine, "grok1_queue_depth"), 2.0);
    cancel_b.cancel();
    cancel_d.cancel();
    // B and D end, without a token, long before A's 100 tokens; C then runs.
    let mut order = Vec::new();
    for (tag, event) in rx.iter() {
        match event {
            Event::Done {
                reason,
                completion_tokens,
                ..
            } => {
                order.push(tag);
                if tag == 1 || tag == 3 {
                    assert_eq!(reason, FinishReason::Cancelled, "request {tag}");
                    assert_eq!(completion_tokens, 0, "request {tag}");
                } else {
                    assert_eq!(reason, FinishReason::Length, "request {tag}");
                }
                if order.len() == 4 {
                    break;
                }
            }
            Event::Token { .. } => assert!(tag == 0 || tag == 2, "request {tag} ran"),
            _ => {}
        }
    }
    let mut first = order[..2].to_vec();
    first.sort();
    assert_eq!(first, [1, 3], "cancelled requests end first: {order:?}");
    wait_for("the pages to be released", WAIT, || {
        metric(&engine, "grok1_kv_cache_used_pages") == 0.0 && engine.in_flight() == 0
    });
    assert_eq!(
        metric(
            &engine,
            "grok1_requests_finished_total{reason=\"cancelled\"}"
        ),
        2.0
    );
    // A request cancelled before it is queued never reaches a step.
    let steps = metric(&engine, "grok1_step_seconds_count");
    let cancel_e = CancelToken::new();
    cancel_e.cancel();
    let e = tagged(vec![15; 100], 4, 4, &tx, Duration::ZERO);
    submit_cancellable(&engine, e, &cancel_e);
    let (tag, event) = rx.recv().unwrap();
    assert_eq!(tag, 4);
    assert!(matches!(
        event,
        Event::Done {
            reason: FinishReason::Cancelled,
            ..
        }
    ));
    assert_eq!(metric(&engine, "grok1_step_seconds_count"), steps);
    engine.shutdown(Duration::from_secs(1));
}

#[test]
fn a_group_of_requests_is_admitted_all_or_none() {
    let fx = Fixture::open("tiny-vocab");
    let engine = EngineHandle::start(
        fx.load_model(),
        tokenizer(),
        EngineConfig {
            max_batch: 1,
            max_queue: 3,
            ..config()
        },
    );
    // A holds the engine at its first token until the gate opens.
    let (gate_tx, gate) = mpsc::channel::<()>();
    let (mut a, ra) = request(vec![5, 6, 7], 2);
    let mut sink = a.sink;
    a.sink = Box::new(move |e| {
        let _ = gate.recv();
        sink(e)
    });
    engine.submit(a).unwrap();
    let group = |n: usize| {
        let (tx, rx) = mpsc::channel();
        let requests = (0..n)
            .map(|i| {
                let tx = tx.clone();
                let (mut req, _) = request(vec![20 + i as u32; 8], 2);
                req.sink = Box::new(move |e| tx.send(e).is_ok());
                req
            })
            .collect::<Vec<_>>();
        (requests, rx)
    };
    let (four, four_rx) = group(4);
    assert_eq!(
        engine.submit_all(four, &CancelToken::new()),
        Err(SubmitError::QueueFull {
            in_flight: 1,
            limit: 4
        })
    );
    let (five, _) = group(5);
    let err = engine.submit_all(five, &CancelToken::new()).unwrap_err();
    assert_eq!(
        err,
        SubmitError::TooManyRequests {
            requests: 5,
            limit: 4
        }
    );
    // One bad request refuses the group before any slot is taken.
    let (mut bad, _) = group(2);
    bad[1].prompt = vec![];
    assert_eq!(
        engine.submit_all(bad, &CancelToken::new()),
        Err(SubmitError::EmptyPrompt)
    );
    assert_eq!(engine.in_flight(), 1);
    let (three, three_rx) = group(3);
    engine.submit_all(three, &CancelToken::new()).unwrap();
    assert_eq!(engine.in_flight(), 4);
    drop(gate_tx);
    assert_eq!(collect(ra).reason, FinishReason::Length);
    let done = three_rx
        .iter()
        .filter(|e| matches!(e, Event::Done { .. }))
        .take(3)
        .count();
    assert_eq!(done, 3);
    assert!(
        four_rx.try_recv().is_err(),
        "a refused group must not run any of its requests"
    );
    assert_eq!(metric(&engine, "grok1_requests_total"), 4.0);
    engine.shutdown(Duration::from_secs(1));
}

/// `prompt + max_tokens` overflowed for a library caller asking for
/// `usize::MAX` tokens (a panic in debug builds, a wrapped sum let through in
/// release); it is refused for the context like any other large value.
#[test]
fn max_tokens_of_usize_max_is_refused_for_the_context() {
    let fx = Fixture::open("tiny-vocab");
    let engine = EngineHandle::start(fx.load_model(), tokenizer(), config());
    let (req, _rx) = request(vec![5, 6, 7], usize::MAX);
    match engine.submit(req) {
        Err(e) => assert!(e.to_string().contains("maximum context length"), "{e}"),
        Ok(()) => panic!("a request of usize::MAX tokens was admitted"),
    }
    engine.shutdown(Duration::from_secs(1));
}
