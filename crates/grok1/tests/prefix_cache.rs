//! The prefix cache: a request served from cached KV pages gets exactly what it
//! gets computed from scratch (f32 precision: bit-identical logits and ids),
//! whether its cached prefix ends inside a page, on a page boundary, or covers
//! the whole prompt; pages are never leaked, idle cached pages are evicted when
//! room is needed, and a full cache makes admission wait instead of failing.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{metric, wait_for};
use grok1::engine::{
    CancelToken, EngineConfig, EngineHandle, Event, FinishReason, Request, SnapshotError,
    TokenLogprob,
};
use grok1::sampling::SamplingParams;
use grok1::weights::random::random_store;
use grok1::{ForwardOptions, Grok1, KvType, LogitsRows, ModelConfig, Precision, SequenceInput};
use grok1_tokenizer::Tokenizer;

/// How long a test waits for the engine to let its pages go.
const WAIT: Duration = Duration::from_secs(60);

const PAGE: usize = grok1::kv_cache::DEFAULT_PAGE_SIZE;

fn model() -> Grok1 {
    let cfg = ModelConfig::tiny();
    let store = random_store(&cfg, 11);
    Grok1::from_store(cfg, &store).unwrap()
}

/// Deterministic "text" of `n` ids (salted so prompts can differ).
fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 37 + salt * 101) % 1000)
        .collect()
}

fn config(prefix_cache: bool) -> EngineConfig {
    EngineConfig {
        max_batch: 8,
        max_queue: 64,
        context: 128,
        kv_tokens: 8 * 128,
        prefill_chunk: 24,
        precision: Precision::F32,
        prefix_cache,
        kv_type: KvType::F32,
    }
}

fn engine(config: EngineConfig) -> EngineHandle {
    EngineHandle::start(model(), Arc::new(Tokenizer::grok1()), config)
}

/// What a request returned: ids, each token's logprob with its 5 best
/// alternatives, finish reason, and the prompt tokens served from the cache.
#[derive(Debug, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    reason: FinishReason,
    cached_tokens: usize,
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> (Request, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let req = Request {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop_token_ids: vec![],
        stop_strings: vec![],
        logprobs: Some(5),
        prompt_logprobs: false,
        constraint: None,
        sink: Box::new(move |e| tx.send(e).is_ok()),
    };
    (req, rx)
}

fn collect(rx: mpsc::Receiver<Event>) -> Outcome {
    let mut out = Outcome {
        tokens: vec![],
        logprobs: vec![],
        reason: FinishReason::Error("no Done".into()),
        cached_tokens: usize::MAX,
    };
    for e in rx.iter() {
        match e {
            Event::Token { token, logprob, .. } => {
                out.tokens.push(token);
                out.logprobs.extend(logprob);
            }
            Event::Done {
                reason,
                cached_tokens,
                ..
            } => {
                out.reason = reason;
                out.cached_tokens = cached_tokens;
                break;
            }
            _ => {}
        }
    }
    out
}

fn run(engine: &EngineHandle, prompt: &[u32], max_tokens: usize) -> Outcome {
    let (req, rx) = request(prompt.to_vec(), max_tokens);
    engine.submit(req).unwrap();
    collect(rx)
}

/// Bitwise equality of what two runs returned (f32 logprobs compared as bits).
fn assert_same(got: &Outcome, want: &Outcome, what: &str) {
    assert_eq!(got.tokens, want.tokens, "{what}: ids");
    assert_eq!(got.reason, want.reason, "{what}: finish reason");
    assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}");
    for (i, (a, b)) in got.logprobs.iter().zip(&want.logprobs).enumerate() {
        let bits = |l: &TokenLogprob| {
            let mut v = vec![(l.token, l.logprob.to_bits())];
            v.extend(l.top.iter().map(|&(t, p)| (t, p.to_bits())));
            v
        };
        assert_eq!(bits(a), bits(b), "{what}: logprobs of token {i}");
    }
}

/// The model's logits for `tokens` computed from scratch, one row per position.
fn logits_from_scratch(m: &Grok1, tokens: &[u32], kv_type: KvType) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache_of(tokens.len(), 1, kv_type);
    let seq = cache.add_sequence();
    let out = m
        .forward(
            &mut cache,
            &[SequenceInput { seq, tokens }],
            &ForwardOptions {
                logits: LogitsRows::All,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    (0..out.rows.len()).map(|r| out.row(r).to_vec()).collect()
}

/// At the level of the cache and the model: a sequence that takes a cached
/// prefix and computes the rest gets bit-identical logits for the rest, in
/// every KV type (against the uncached run in the same type).
#[test]
fn logits_after_a_cached_prefix_are_bit_identical() {
    for kv_type in KvType::ALL {
        logits_after_a_cached_prefix_in(kv_type);
    }
}

fn logits_after_a_cached_prefix_in(kv_type: KvType) {
    let m = model();
    let first = ids(50, 0);
    let mut cache = m.new_cache_of(8 * 128, 8, kv_type);
    let pad = m.config().pad_token;
    // The first sequence, computed in uneven chunks and published.
    let a = cache.add_sequence();
    for chunk in first.chunks(13) {
        m.forward(
            &mut cache,
            &[SequenceInput {
                seq: a,
                tokens: chunk,
            }],
            &ForwardOptions::default(),
            None,
        )
        .unwrap();
    }
    cache.publish(a).unwrap();
    cache.remove_sequence_keeping_prefix(a).unwrap();
    let cases: [(&str, Vec<u32>, usize); 4] = [
        // (what, prompt, tokens the cache gives)
        (
            "prefix ending mid-page",
            [&first[..37], &ids(9, 1)[..]].concat(),
            37,
        ),
        (
            "prefix on a page boundary",
            [&first[..32], &ids(9, 2)[..]].concat(),
            32,
        ),
        ("a prompt entirely cached", first.clone(), 49),
        (
            "a prompt entirely cached, page-aligned",
            first[..48].to_vec(),
            47,
        ),
    ];
    for (what, prompt, reused) in cases {
        let want = logits_from_scratch(&m, &prompt, kv_type);
        let b = cache.add_sequence();
        let got = cache
            .attach_prefix(b, &prompt[..prompt.len() - 1], pad)
            .unwrap();
        assert_eq!(got, reused, "{what}: tokens reused");
        let out = m
            .forward(
                &mut cache,
                &[SequenceInput {
                    seq: b,
                    tokens: &prompt[reused..],
                }],
                &ForwardOptions {
                    logits: LogitsRows::All,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        for r in 0..out.rows.len() {
            let (pos, row) = (reused + r, out.row(r));
            assert!(
                row.iter()
                    .zip(&want[pos])
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{kv_type} {what}: logits at position {pos} differ"
            );
        }
        cache.remove_sequence(b).unwrap();
    }
    assert_eq!(cache.pages_in_use(), 0);
}

/// The choices of one request (`submit_all`) compute their prompt once: the
/// first computes it, the others wait for its full pages and take them from
/// the cache (they computed it four times over before), with the same ids and
/// logprobs as the request run alone without the cache. Requests that share
/// a system prompt and come at the same time do the same.
#[test]
fn choices_of_one_request_compute_their_prompt_once() {
    let cached = engine(config(true));
    let plain = engine(config(false));
    // Three full pages and two tokens: the prefill takes three chunks of 24.
    let prompt = ids(3 * PAGE + 2, 30);
    let (reqs, rxs): (Vec<_>, Vec<_>) = (0..4).map(|_| request(prompt.clone(), 6)).unzip();
    cached.submit_all(reqs, &CancelToken::new()).unwrap();
    let got: Vec<Outcome> = rxs.into_iter().map(collect).collect();
    let want = run(&plain, &prompt, 6);
    for (i, got) in got.iter().enumerate() {
        assert_same(got, &want, &format!("choice {i}"));
        let reused = if i == 0 { 0 } else { 3 * PAGE };
        assert_eq!(got.cached_tokens, reused, "choice {i}: cached_tokens");
    }

    let system = ids(2 * PAGE + 5, 31);
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| [&system[..], &ids(4 + i, 40 + i as u32)[..]].concat())
        .collect();
    // One submission, so the three arrive together. Submitted one by one, a
    // busy host could finish the first before the engine saw the second,
    // which then (rightly) reused the first's partly filled page as well.
    let (reqs, rxs): (Vec<_>, Vec<_>) = prompts.iter().map(|p| request(p.clone(), 4)).unzip();
    cached.submit_all(reqs, &CancelToken::new()).unwrap();
    for (i, (rx, prompt)) in rxs.into_iter().zip(&prompts).enumerate() {
        let got = collect(rx);
        assert_same(&got, &run(&plain, prompt, 4), &format!("request {i}"));
        let reused = if i == 0 { 0 } else { 2 * PAGE };
        assert_eq!(got.cached_tokens, reused, "request {i}: cached_tokens");
    }
    wait_for("every page to be let go", WAIT, || {
        cached.in_flight() == 0 && metric(&cached, "grok1_kv_cache_used_pages") == 0.0
    });
    cached.shutdown(Duration::from_secs(1));
    plain.shutdown(Duration::from_secs(1));
}

/// Through the engine: requests served from a prefix a finished request left
/// get the same ids and logprobs (bit for bit) as an engine without the cache,
/// and report how many prompt tokens they reused.
#[test]
fn requests_from_a_cached_prefix_match_their_uncached_twins() {
    let cached = engine(config(true));
    let plain = engine(config(false));
    let base = ids(40, 0);
    let first = run(&cached, &base, 8);
    assert_same(&first, &run(&plain, &base, 8), "the first request");
    assert_eq!(first.cached_tokens, 0);
    // 8 generated, 7 of them fed back: 47 tokens cached, the last page partly.
    let cases: [(&str, Vec<u32>, usize); 6] = [
        (
            "prefix ending mid-page",
            [&base[..37], &ids(9, 1)[..]].concat(),
            37,
        ),
        (
            "prefix on a page boundary",
            [&base[..32], &ids(9, 2)[..]].concat(),
            32,
        ),
        ("a prompt entirely cached", base.clone(), 39),
        (
            "a prompt entirely cached, page-aligned",
            base[..32].to_vec(),
            31,
        ),
        (
            "the prompt and the reply (a conversation's next turn)",
            [&base[..], &first.tokens[..7], &ids(5, 3)[..]].concat(),
            47,
        ),
        ("nothing shared", ids(30, 4), 0),
    ];
    for (what, prompt, reused) in cases {
        let got = run(&cached, &prompt, 10);
        let want = run(&plain, &prompt, 10);
        assert_same(&got, &want, what);
        assert_eq!(got.cached_tokens, reused, "{what}: cached_tokens");
        assert_eq!(want.cached_tokens, 0, "{what}: without the cache");
    }
    assert_eq!(metric(&cached, "grok1_prefix_cache_queries_total"), 7.0);
    assert_eq!(metric(&cached, "grok1_prefix_cache_hits_total"), 5.0);
    assert_eq!(
        metric(&cached, "grok1_prefix_cache_hit_tokens_total"),
        (37 + 32 + 39 + 31 + 47) as f64
    );
    assert_eq!(metric(&plain, "grok1_prefix_cache_queries_total"), 0.0);
    assert_eq!(metric(&plain, "grok1_kv_cache_cached_pages"), 0.0);
    assert!(metric(&cached, "grok1_kv_cache_cached_pages") > 0.0);
    cached.shutdown(Duration::from_secs(1));
    plain.shutdown(Duration::from_secs(1));
}

/// Many requests at once sharing system prompts, a third of them cancelled at
/// random points: every one that finishes matches its uncached twin, and once
/// the engine is idle no page is held.
#[test]
fn concurrent_requests_with_cancellations_match_and_leak_no_page() {
    let cached = engine(EngineConfig {
        kv_tokens: 24 * PAGE,
        ..config(true)
    });
    let plain = engine(config(false));
    let systems = [ids(35, 10), ids(50, 11)];
    let prompts: Vec<Vec<u32>> = (0..24)
        .map(|i| [&systems[i % 2][..], &ids(1 + i % 7, 20 + i as u32)[..]].concat())
        .collect();
    let (tx, rx) = mpsc::channel();
    let mut cancels = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let (mut req, _) = request(prompt.clone(), 12);
        let tx = tx.clone();
        // Every third request hangs up after a few tokens (0 to 4).
        let hang_up = (i % 3 == 0).then_some(i % 5);
        let mut seen = 0;
        req.sink = Box::new(move |e| {
            if matches!(e, Event::Token { .. }) {
                seen += 1;
            }
            let _ = tx.send((i, e));
            hang_up.is_none_or(|n| seen <= n)
        });
        let cancel = CancelToken::new();
        cached.submit_all(vec![req], &cancel).unwrap();
        cancels.push(cancel);
    }
    drop(tx);
    // One more is cancelled from outside while it may still be queued.
    cancels[7].cancel();
    let mut outcomes: Vec<Vec<Event>> = (0..prompts.len()).map(|_| Vec::new()).collect();
    for (i, e) in rx.iter() {
        outcomes[i].push(e);
    }
    let mut finished = 0;
    for (i, events) in outcomes.into_iter().enumerate() {
        let (etx, erx) = mpsc::channel();
        for e in events {
            etx.send(e).unwrap();
        }
        drop(etx);
        let got = collect(erx);
        if got.reason == FinishReason::Cancelled {
            assert!(i % 3 == 0 || i == 7, "request {i} was not cancelled");
            continue;
        }
        assert!(i % 3 != 0, "request {i} should have been cancelled");
        assert_same(&got, &run(&plain, &prompts[i], 12), &format!("request {i}"));
        finished += 1;
    }
    assert!(finished >= 14, "{finished} finished");
    wait_for("every page to be let go", WAIT, || {
        cached.in_flight() == 0 && metric(&cached, "grok1_kv_cache_used_pages") == 0.0
    });
    assert!(metric(&cached, "grok1_prefix_cache_hits_total") > 0.0);
    // What the idle engine keeps is cached pages, all of them reusable.
    let kept = metric(&cached, "grok1_kv_cache_cached_pages");
    assert!(kept > 0.0 && kept <= 24.0, "{kept}");
    cached.shutdown(Duration::from_secs(1));
    plain.shutdown(Duration::from_secs(1));
}

/// A cache of 8 pages filled with idle cached pages: new requests evict the
/// least recently used ones and still get exact results; a prefix used since
/// survives.
#[test]
fn eviction_under_pressure_keeps_results_exact() {
    let cached = engine(EngineConfig {
        max_batch: 2,
        kv_tokens: 8 * PAGE,
        ..config(true)
    });
    let plain = engine(config(false));
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| ids(40, 30 + i)).collect();
    for (i, p) in prompts.iter().enumerate() {
        let got = run(&cached, p, 6);
        assert_same(&got, &run(&plain, p, 6), &format!("request {i}"));
        assert_eq!(got.cached_tokens, 0);
        // The most recent prompt stays in use: it is never the one evicted.
        if i > 0 {
            let again = run(&cached, &prompts[0], 6);
            assert_eq!(again.cached_tokens, 39, "prompt 0 after request {i}");
        }
    }
    assert!(metric(&cached, "grok1_prefix_cache_evicted_pages_total") > 0.0);
    // (The gauges are set after the step that sent the last `Done`.)
    wait_for("every page to be let go", WAIT, || {
        metric(&cached, "grok1_kv_cache_used_pages") == 0.0
    });
    assert!(metric(&cached, "grok1_kv_cache_cached_pages") <= 8.0);
    // The two most recently used prompts are still whole.
    assert_eq!(run(&cached, &prompts[5], 6).cached_tokens, 39);
    assert_eq!(run(&cached, &prompts[0], 6).cached_tokens, 39);
    cached.shutdown(Duration::from_secs(1));
    plain.shutdown(Duration::from_secs(1));
}

/// Requests that each need most of the cache, sent together into a cache
/// already full of cached pages: they wait for room, one after another, and
/// all finish exactly; none is refused or fails.
#[test]
fn admission_waits_when_the_cache_is_full() {
    let cached = engine(EngineConfig {
        max_batch: 4,
        kv_tokens: 5 * PAGE,
        ..config(true)
    });
    let plain = engine(config(false));
    // Fill the cache with idle cached pages.
    run(&cached, &ids(70, 40), 5);
    // The engine files a finished sequence's pages and counts it after its
    // last event reaches the client.
    wait_for("the first request's pages to be cached", WAIT, || {
        metric(&cached, "grok1_kv_cache_cached_pages") == 5.0
    });
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| ids(50, 50 + i)).collect();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (req, rx) = request(p.clone(), 20);
            cached.submit(req).unwrap();
            rx
        })
        .collect();
    for (i, rx) in receivers.into_iter().enumerate() {
        let got = collect(rx);
        assert_eq!(got.reason, FinishReason::Length, "request {i}");
        assert_same(&got, &run(&plain, &prompts[i], 20), &format!("request {i}"));
    }
    // 70 prompt tokens need 5 pages: the first request's leftovers were evicted.
    assert!(metric(&cached, "grok1_prefix_cache_evicted_pages_total") >= 5.0);
    wait_for("five requests counted as finished", WAIT, || {
        metric(&cached, "grok1_requests_finished_total{reason=\"length\"}") == 5.0
    });
    cached.shutdown(Duration::from_secs(1));
    plain.shutdown(Duration::from_secs(1));
}

/// Keys and values exported from one engine and imported into another (a
/// saved conversation resumed) serve the next request there exactly as the
/// first engine's own cache would; a snapshot of the wrong size, or an engine
/// without the prefix cache, is refused.
#[test]
fn exported_keys_and_values_resume_exactly_in_another_engine() {
    let first_engine = engine(config(true));
    let base = ids(45, 60);
    let first = run(&first_engine, &base, 6);
    // 6 generated, 5 fed back: 50 positions cached.
    let conversation = [&base[..], &first.tokens[..5]].concat();
    let mut longer = conversation.clone();
    longer.push(first.tokens[5]);
    let snapshot = first_engine.export_prefix(longer).unwrap();
    assert_eq!(snapshot.tokens, conversation);
    let width = 2 * ModelConfig::tiny().num_layers * ModelConfig::tiny().kv_width();
    assert_eq!(snapshot.kv.len(), 50 * width);
    let resumed = engine(config(true));
    assert_eq!(resumed.import_prefix(snapshot.clone()).unwrap(), 50);
    let next = [&conversation[..], &ids(7, 61)[..]].concat();
    let got = run(&resumed, &next, 8);
    assert_eq!(got.cached_tokens, 50);
    let plain = engine(config(false));
    assert_same(&got, &run(&plain, &next, 8), "the resumed request");
    assert_same(&got, &run(&first_engine, &next, 8), "the first engine's");
    let mut short = snapshot.clone();
    short.kv.pop();
    assert!(matches!(
        resumed.import_prefix(short),
        Err(SnapshotError::Shape { tokens: 50, .. })
    ));
    assert_eq!(
        plain.import_prefix(snapshot),
        Err(SnapshotError::PrefixCacheOff)
    );
    wait_for("every page to be let go", WAIT, || {
        metric(&resumed, "grok1_kv_cache_used_pages") == 0.0
    });
    for e in [first_engine, resumed, plain] {
        e.shutdown(Duration::from_secs(1));
    }
}

/// bf16 and q8_0 caches export their decoded keys and values and a fresh
/// engine of the same type re-encodes them to the same pages: the resumed
/// request matches the first engine's, which read its own pages.
#[test]
fn compact_caches_export_and_resume_exactly() {
    for kv_type in [KvType::Bf16, KvType::Q8_0] {
        let cfg = EngineConfig {
            kv_type,
            ..config(true)
        };
        let first = engine(cfg.clone());
        let base = ids(45, 70);
        let out = run(&first, &base, 6);
        let conversation = [&base[..], &out.tokens[..5]].concat();
        let mut longer = conversation.clone();
        longer.push(out.tokens[5]);
        let snapshot = first.export_prefix(longer).unwrap();
        let resumed = engine(cfg);
        assert_eq!(resumed.import_prefix(snapshot).unwrap(), 50);
        let next = [&conversation[..], &ids(7, 71)[..]].concat();
        let got = run(&resumed, &next, 8);
        assert_eq!(got.cached_tokens, 50);
        assert_same(&got, &run(&first, &next, 8), &format!("{kv_type} resumed"));
        for e in [first, resumed] {
            e.shutdown(Duration::from_secs(1));
        }
    }
}

/// The same cache memory holds twice f32's tokens in bf16 and about 3.5
/// times in q8_0 (18 bytes per 16 values at this model's head size of 16,
/// one short block a row, so 3.56, less the part of a page; 3.76 at Grok-1's
/// 128); requests needing four times the f32 cache's
/// pages, sent together, fill each cache to its limit and wait for room in
/// turn: all finish, as their twins in a cache large enough for all do.
#[test]
fn compact_types_hold_more_tokens_in_the_same_memory_and_admission_waits() {
    let cfg = ModelConfig::tiny();
    let memory = 16 * PAGE * grok1::KvCache::bytes_per_token(&cfg, KvType::F32);
    let tokens = |t| grok1::KvCache::tokens_in(&cfg, memory, t);
    assert_eq!(tokens(KvType::F32), 16 * PAGE);
    assert_eq!(tokens(KvType::Bf16), 2 * tokens(KvType::F32));
    // 16 pages of f32 (64 bytes a row) are 56.9 pages of q8_0 (18): 56 whole.
    assert_eq!(tokens(KvType::Q8_0), 56 * PAGE);
    // 20-token prompts and 44 tokens each: 4 pages a request, 64 in all.
    let prompts: Vec<Vec<u32>> = (0..16).map(|i| ids(20, 200 + i)).collect();
    for kv_type in KvType::ALL {
        let kv_tokens = tokens(kv_type);
        let small = engine(EngineConfig {
            max_batch: 16,
            kv_tokens,
            kv_type,
            ..config(true)
        });
        assert_eq!(
            metric(&small, "grok1_kv_cache_total_pages"),
            (kv_tokens / PAGE) as f64
        );
        let large = engine(EngineConfig {
            max_batch: 16,
            kv_tokens: 128 * PAGE,
            kv_type,
            ..config(false)
        });
        // One submission: sent one by one, a request could finish before
        // the next arrived on a busy host, and the cache would not fill.
        let (reqs, receivers): (Vec<_>, Vec<_>) =
            prompts.iter().map(|p| request(p.clone(), 44)).unzip();
        small.submit_all(reqs, &CancelToken::new()).unwrap();
        for (i, rx) in receivers.into_iter().enumerate() {
            let got = collect(rx);
            assert_eq!(got.reason, FinishReason::Length, "{kv_type} request {i}");
            let want = run(&large, &prompts[i], 44);
            assert_same(&got, &want, &format!("{kv_type} request {i}"));
        }
        wait_for("every page to be let go", WAIT, || {
            metric(&small, "grok1_kv_cache_used_pages") == 0.0
        });
        // The cache filled to its limit (the engine's high-water mark: a
        // poll while the requests ran could miss the moment on a busy host).
        let peak = metric(&small, "grok1_kv_cache_peak_used_pages");
        assert!(
            peak >= (kv_tokens / PAGE) as f64 - 1.0,
            "{kv_type}: the cache held at most {peak} of {} pages",
            kv_tokens / PAGE
        );
        for e in [small, large] {
            e.shutdown(Duration::from_secs(1));
        }
    }
}

/// The bf16 mode's keys and values are bf16 already, so its default bf16
/// cache gives the bits its f32 cache gave, in half the memory.
#[test]
fn the_bf16_mode_gives_the_same_bits_from_a_bf16_cache() {
    let m = model();
    let tokens = ids(40, 9);
    let logits = |kv_type| {
        let mut cache = m.new_cache_of(tokens.len(), 1, kv_type);
        let seq = cache.add_sequence();
        let options = ForwardOptions {
            precision: Precision::Bf16,
            logits: LogitsRows::All,
        };
        let input = [SequenceInput {
            seq,
            tokens: &tokens,
        }];
        let out = m.forward(&mut cache, &input, &options, None).unwrap();
        out.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(KvType::default_for(Precision::Bf16), KvType::Bf16);
    assert_eq!(logits(KvType::Bf16), logits(KvType::F32));
}
