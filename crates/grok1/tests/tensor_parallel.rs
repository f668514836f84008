//! Tensor parallel without MPI: every rank of an N-way split runs as a thread
//! of this process (`parallel::threads`), through the same loading, forward
//! and generation code the MPI ranks run. Parity with the golden files and
//! with the single process; refusals of models that cannot be split or that
//! differ between ranks.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{assert_close, fixtures, max_abs_diff, model_dir, prefill, Fixture};
use grok1::generate::{generate, StopConditions};
use grok1::parallel::threads::on_ranks;
use grok1::parallel::{Collective, ParallelError};
use grok1::progress::NoProgress;
use grok1::sampling::SamplingParams;
use grok1::{ForwardOptions, Grok1, LoadError, Precision};

fn load(path: &Path, c: Arc<dyn Collective>) -> Result<Grok1, LoadError> {
    grok1::load_parallel(path, &NoProgress, c).map(|l| l.model)
}

/// Greedy ids of `prompt` through `generate` (rank 0 samples, the others follow).
fn greedy(model: &Grok1, prompt: &[u32], steps: usize) -> Vec<u32> {
    let stop = StopConditions {
        eos: None,
        stop_sequences: Vec::new(),
        max_tokens: steps,
    };
    let sampling = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let mut streamed = Vec::new();
    let out = generate(
        model,
        prompt,
        &sampling,
        &stop,
        ForwardOptions::default(),
        &mut |t| {
            streamed.extend_from_slice(t);
            ControlFlow::Continue(())
        },
    )
    .expect("generate");
    if model.collective().rank() == 0 {
        assert_eq!(streamed, out.tokens, "streamed tokens");
    } else {
        assert!(streamed.is_empty(), "only rank 0 streams");
    }
    out.tokens
}

/// What one rank computed for a fixture: prefill logits of the three
/// prompts and greedy ids of the two decode prompts.
struct RankRun {
    prefill: Vec<Vec<f32>>,
    greedy: Vec<Vec<u32>>,
    kv_heads_cached: usize,
}

fn run_fixture(model: &Grok1, fx: &Fixture) -> RankRun {
    let prefill_logits = (0..3)
        .map(|s| {
            let tokens = fx.tokens(&format!("prefill_seq{s}_tokens.npy"));
            prefill(model, &tokens, Precision::F32, None).logits
        })
        .collect();
    let greedy_ids = (0..2)
        .map(|j| {
            greedy(
                model,
                &fx.tokens(&format!("decode_prompt{j}_tokens.npy")),
                16,
            )
        })
        .collect();
    let cache = model.new_cache(16, 1);
    RankRun {
        prefill: prefill_logits,
        greedy: greedy_ids,
        kv_heads_cached: cache.kv_heads(),
    }
}

/// The f32 parity checks of fixture `name` split over `n` ranks.
fn check_split(name: &str, n: usize) {
    let fx = Fixture::open(name);
    let runs = on_ranks(n, |c| {
        run_fixture(&load(&model_dir(name), c).expect("load"), &fx)
    });
    let tol = fx.tol("tol_f32_logits_abs");
    let cols = fx.logit_cols();
    let vocab = fx.config.vocab_size;
    let mut worst = 0f32;
    for (s, logits) in runs[0].prefill.iter().enumerate() {
        let want = fx.f32(&format!("prefill_seq{s}_logits_f32.npy"));
        let rows = logits.len() / vocab;
        for t in 0..rows {
            let got: Vec<f32> = cols.iter().map(|&c| logits[t * vocab + c]).collect();
            let what = format!("{name} N={n} prefill seq{s} row {t}");
            let want_row = &want.data[t * cols.len()..(t + 1) * cols.len()];
            worst = worst.max(assert_close(&what, &got, want_row, tol));
        }
        let last = fx.f32(&format!("prefill_seq{s}_last_logits_f32.npy"));
        let what = format!("{name} N={n} prefill seq{s} last row");
        worst = worst.max(assert_close(
            &what,
            &logits[(rows - 1) * vocab..],
            &last.data,
            tol,
        ));
    }
    eprintln!("{name} N={n}: prefill logits max abs error {worst:.3e} (tolerance {tol:.0e})");
    for j in 0..2 {
        let want = fx.i32(&format!("decode_prompt{j}_ids_f32.npy")).data;
        let exact = fx.tolerances["greedy_f32"][j]["steps_exact"]
            .as_u64()
            .unwrap() as usize;
        let got: Vec<i32> = runs[0].greedy[j].iter().map(|&t| t as i32).collect();
        assert_eq!(
            got[..exact],
            want[..exact],
            "{name} N={n} greedy ids of prompt {j}"
        );
    }
    // Every rank ends with rank 0's tokens and logits, and caches only its heads.
    let whole = fx.load_model().new_cache(16, 1).kv_heads();
    for (rank, run) in runs.iter().enumerate() {
        assert_eq!(
            run.greedy, runs[0].greedy,
            "{name} N={n} rank {rank} tokens"
        );
        assert_eq!(
            run.prefill, runs[0].prefill,
            "{name} N={n} rank {rank} logits"
        );
        assert_eq!(
            run.kv_heads_cached * n,
            whole,
            "{name} N={n} rank {rank} cache"
        );
    }
}

#[test]
fn tiny_moe_split_2_4_8_matches_the_reference() {
    for n in [2, 4, 8] {
        check_split("tiny-moe", n);
    }
}

#[test]
fn tiny_vocab_split_2_4_8_matches_the_reference() {
    for n in [2, 4, 8] {
        check_split("tiny-vocab", n);
    }
}

/// An N-way split of a model file against the same file in one process:
/// every prefill logit within `tol`, greedy ids identical.
fn check_against_single_process(path: &Path, n: usize, tol: f32) {
    let fx = Fixture::open("tiny-moe");
    let single = load(path, grok1::parallel::single_process()).expect("load whole");
    let want = run_fixture(&single, &fx);
    let runs = on_ranks(n, |c| run_fixture(&load(path, c).expect("load"), &fx));
    let mut worst = 0f32;
    for (got, want) in runs[0].prefill.iter().zip(&want.prefill) {
        worst = worst.max(max_abs_diff(got, want).0);
    }
    eprintln!(
        "{} N={n}: max abs logit difference from one process {worst:.3e}",
        path.display()
    );
    assert!(worst <= tol, "{}: {worst:e} > {tol:e}", path.display());
    assert_eq!(runs[0].greedy, want.greedy, "{} greedy ids", path.display());
}

#[test]
fn gguf_q8_0_and_safetensors_split_match_one_process() {
    let tol = Fixture::open("tiny-moe").tol("tol_f32_logits_abs");
    let gguf: PathBuf = fixtures().join("gguf/tiny-moe-q8_0.gguf");
    let st: PathBuf = fixtures().join("safetensors/keyfan");
    for n in [2, 4, 8] {
        check_against_single_process(&gguf, n, tol);
        check_against_single_process(&st, n, tol);
    }
}

/// The errors of every rank loading tiny-moe split over `n`.
fn split_errors(n: usize) -> Vec<String> {
    on_ranks(n, |c| match load(&model_dir("tiny-moe"), c) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("tiny-moe cannot be split over {n}"),
    })
}

#[test]
fn a_split_that_cuts_rows_or_heads_is_refused_naming_the_tensor() {
    for e in split_errors(3) {
        assert!(
            e.contains("`language_model/in_out_embed/embeddings`: cannot be split over 3 ranks: its 1024 vocabulary rows do not divide by 3"),
            "{e}"
        );
    }
    // 16 divides the vocabulary but not the 8 key/value heads.
    for e in split_errors(16) {
        assert!(
            e.contains("`transformer/decoder_layer_0/multi_head_attention/query/w`: cannot be split over 16 ranks: its 8 key/value head groups"),
            "{e}"
        );
    }
}

#[test]
fn ranks_holding_different_models_are_refused_naming_rank_and_difference() {
    let errors = on_ranks(3, |c| {
        let name = if c.rank() == 2 {
            "tiny-vocab"
        } else {
            "tiny-moe"
        };
        match load(&model_dir(name), c) {
            Err(LoadError::Parallel(e)) => e,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("rank 2's model differs"),
        }
    });
    for e in &errors {
        let ParallelError::DifferentModels { rank, difference } = e else {
            panic!("{e}")
        };
        assert_eq!(*rank, 2);
        assert!(difference.starts_with("config field `"), "{difference}");
    }
    assert!(errors[0]
        .to_string()
        .starts_with("rank 2 holds a different model than rank 0"));
    assert_eq!(errors[0], errors[1]);
}

/// Every prefill logit of tiny-moe's three prompts in `precision`, on rank 0
/// of an `n`-way split (one process for `n` = 1).
fn prefill_in(n: usize, precision: Precision) -> Vec<f32> {
    let fx = Fixture::open("tiny-moe");
    let runs = on_ranks(n, |c| {
        let model = load(&model_dir("tiny-moe"), c).expect("load");
        (0..3)
            .flat_map(|s| {
                let tokens = fx.tokens(&format!("prefill_seq{s}_tokens.npy"));
                prefill(&model, &tokens, precision, None).logits
            })
            .collect::<Vec<f32>>()
    });
    runs.into_iter().next().expect("rank 0")
}

#[test]
fn every_precision_split_stays_near_one_process() {
    // bf16 rounds the summed parts once where one process rounds the whole
    // sum; the int8 mode quantises each rank's part of the activations in
    // its own blocks: the reference's bf16 tolerance bounds both. The fast
    // mode is the f32 maths with the vocabulary rows' int8 copies, the same
    // rows on whichever rank: the f32 tolerance.
    let fx = Fixture::open("tiny-moe");
    let (bf16, f32) = (fx.tol("tol_bf16_logits_abs"), fx.tol("tol_f32_logits_abs"));
    for (precision, tol) in [
        (Precision::Bf16, bf16),
        (Precision::Fast, f32),
        (Precision::Int8, bf16),
    ] {
        let one = prefill_in(1, precision);
        for n in [2, 8] {
            let (err, _) = max_abs_diff(&prefill_in(n, precision), &one);
            eprintln!("{precision:?} N={n}: max abs logit difference from one process {err:.3e}");
            assert!(err <= tol, "{precision:?} N={n}: {err:e} > {tol:e}");
        }
    }
}

#[test]
fn row_slices_stay_mapped_and_slices_inside_rows_are_copied() {
    let check = |path: PathBuf, copied_q: bool| {
        let models = on_ranks(2, |c| load(&path, c).expect("load"));
        let w = models[1].weights();
        let mapped = |m: &grok1::backend::Matrix| match m {
            grok1::backend::Matrix::Int8Grouped(q) => q.weight.is_mapped(),
            grok1::backend::Matrix::Rows(r) => r.data.is_mapped(),
        };
        let l = &w.layers[0];
        assert!(
            w.embedding.data.is_mapped(),
            "{}: embedding rows",
            path.display()
        );
        assert_eq!(w.embedding.rows * 2, 1024);
        assert_eq!(w.vocab_rows, 512..1024);
        // ckpt-0 stores [in, out]: q/k/v and w1/v are split inside rows.
        // Row-stored files hold [out, in]: o and w2 are.
        assert_eq!(mapped(&l.wq), !copied_q, "{}: q", path.display());
        assert_eq!(
            mapped(&l.experts.linear[3]),
            !copied_q,
            "{}: w1",
            path.display()
        );
        assert_eq!(mapped(&l.wo), copied_q, "{}: o", path.display());
        assert_eq!(
            mapped(&l.experts.linear_1[3]),
            copied_q,
            "{}: w2",
            path.display()
        );
        assert_eq!((l.wq.n(), l.wk.n(), l.wo.k()), (128, 64, 128));
        assert_eq!(
            (l.experts.linear[0].n(), l.experts.linear_1[0].k()),
            (44, 44)
        );
    };
    check(model_dir("tiny-moe"), true);
    check(fixtures().join("gguf/tiny-moe-q8_0.gguf"), false);
}

#[test]
fn every_rank_ends_a_generation_as_rank_0_does() {
    use grok1::generate::{GenerateError, StopReason};
    let fx = Fixture::open("tiny-moe");
    let prompt = fx.tokens("decode_prompt0_tokens.npy");
    // The reference continues 261, 160, 757, 204, 204, ...
    let cases = [
        (
            None,
            vec![vec![204, 204]],
            StopReason::StopSequence(0),
            vec![261, 160, 757],
        ),
        (Some(757), vec![], StopReason::Eos, vec![261, 160]),
        (
            None,
            vec![],
            StopReason::MaxTokens,
            vec![261, 160, 757, 204, 204, 204],
        ),
    ];
    let sampling = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let runs = on_ranks(2, |c| {
        let model = load(&model_dir("tiny-moe"), c).expect("load");
        let mut results = Vec::new();
        for (eos, stops, _, _) in &cases {
            let stop = StopConditions {
                eos: *eos,
                stop_sequences: stops.clone(),
                max_tokens: 6,
            };
            let options = ForwardOptions::default();
            let out = generate(&model, &prompt, &sampling, &stop, options, &mut |_| {
                ControlFlow::Continue(())
            })
            .expect("generate");
            results.push((out.stop_reason, out.tokens));
        }
        // Rank 0 refuses a bad request before anything runs; the others hear it.
        let bad = StopConditions {
            eos: None,
            stop_sequences: vec![vec![]],
            max_tokens: 4,
        };
        let options = ForwardOptions::default();
        let refused = generate(&model, &prompt, &sampling, &bad, options, &mut |_| {
            ControlFlow::Continue(())
        });
        (results, refused.unwrap_err())
    });
    for (rank, (results, refused)) in runs.iter().enumerate() {
        for ((_, _, reason, tokens), got) in cases.iter().zip(results) {
            assert_eq!(got, &(reason.clone(), tokens.clone()), "rank {rank}");
        }
        let want = match rank {
            0 => GenerateError::EmptyStopSequence(0),
            _ => GenerateError::RefusedByRank0,
        };
        assert_eq!(refused, &want, "rank {rank}");
    }
}

/// What a served request returned: ids, each token's logprob, and the
/// prompt tokens served from the prefix cache.
type Served = (Vec<u32>, Vec<f32>, usize);

/// A greedy request of `max_tokens` with each token's logprob, and where
/// its events arrive.
fn greedy_logprobs(
    prompt: Vec<u32>,
    max_tokens: usize,
) -> (
    grok1::engine::Request,
    std::sync::mpsc::Receiver<grok1::engine::Event>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let request = grok1::engine::Request {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop_token_ids: vec![],
        stop_strings: vec![],
        logprobs: Some(0),
        prompt_logprobs: false,
        constraint: None,
        sink: Box::new(move |e| tx.send(e).is_ok()),
    };
    (request, rx)
}

/// A request's ids, their logprobs and its cached prompt tokens.
fn outcome(rx: std::sync::mpsc::Receiver<grok1::engine::Event>) -> Served {
    use grok1::engine::Event;
    let mut out: Served = (vec![], vec![], 0);
    for e in rx.iter() {
        match e {
            Event::Token { token, logprob, .. } => {
                out.0.push(token);
                out.1.extend(logprob.map(|l| l.logprob));
            }
            Event::Done { cached_tokens, .. } => {
                out.2 = cached_tokens;
                break;
            }
            _ => {}
        }
    }
    out
}

/// Requests through an engine: three at once sharing a 37-token prefix (it
/// ends inside a page), then a later turn extending the first prompt and its
/// reply, then a prompt that is wholly a cached prefix. The cache holds 12
/// pages, fewer than the three need together: admission waits and idle
/// cached pages are evicted.
fn serve_requests(engine: &grok1::engine::EngineHandle) -> Vec<Served> {
    let shared: Vec<u32> = (0..37).map(|i| 3 + (i * 37) % 1000).collect();
    let prompt = |tail: u32| {
        let mut p = shared.clone();
        p.extend((0..9).map(|i| 5 + (i * 13 + tail * 101) % 1000));
        p
    };
    // A group is admitted together, so what it finds cached does not
    // depend on when the engine thread takes each request.
    let submit = |prompts: Vec<Vec<u32>>| {
        let (requests, receivers): (Vec<_>, Vec<_>) =
            prompts.into_iter().map(|p| greedy_logprobs(p, 10)).unzip();
        engine
            .submit_all(requests, &grok1::engine::CancelToken::new())
            .expect("submit");
        receivers
    };
    let collect = outcome;
    let first = submit((0..3).map(prompt).collect());
    let mut served: Vec<Served> = first.into_iter().map(collect).collect();
    let mut turn = prompt(0);
    turn.extend(&served[0].0);
    turn.extend([7, 8, 9]);
    served.push(
        submit(vec![turn])
            .into_iter()
            .map(collect)
            .next()
            .expect("one"),
    );
    served.push(
        submit(vec![shared[..32].to_vec()])
            .into_iter()
            .map(collect)
            .next()
            .expect("one"),
    );
    served
}

fn engine_config(prefix_cache: bool) -> grok1::engine::EngineConfig {
    grok1::engine::EngineConfig {
        max_batch: 4,
        max_queue: 16,
        context: 128,
        kv_tokens: 12 * grok1::kv_cache::DEFAULT_PAGE_SIZE,
        prefill_chunk: 20,
        precision: Precision::F32,
        prefix_cache,
        kv_type: grok1::KvType::F32,
    }
}

/// The serving engine on rank 0 of a split model, the others following its
/// steps: what rank 0 serves, and the steps each other rank ran.
fn serve_split(n: usize, prefix_cache: bool) -> (Vec<Served>, Vec<u64>) {
    let runs = on_ranks(n, |c| {
        let model = load(&model_dir("tiny-moe"), c.clone()).expect("load");
        let config = engine_config(prefix_cache);
        if c.rank() != 0 {
            let steps = grok1::engine::follow(&model, &config).expect("follow");
            return (Vec::new(), steps);
        }
        let tokenizer = Arc::new(grok1_tokenizer::Tokenizer::grok1());
        let engine = grok1::engine::EngineHandle::start(model, tokenizer, config);
        let served = serve_requests(&engine);
        engine.shutdown(std::time::Duration::from_secs(1));
        (served, 0)
    });
    let mut runs = runs.into_iter();
    let (served, _) = runs.next().expect("rank 0");
    (served, runs.map(|(_, steps)| steps).collect())
}

fn serve_one() -> Vec<Served> {
    let model = load(&model_dir("tiny-moe"), grok1::parallel::single_process()).unwrap();
    let tokenizer = Arc::new(grok1_tokenizer::Tokenizer::grok1());
    let engine = grok1::engine::EngineHandle::start(model, tokenizer, engine_config(true));
    let served = serve_requests(&engine);
    engine.shutdown(std::time::Duration::from_secs(1));
    served
}

#[test]
fn a_split_engine_serves_what_one_process_serves_and_reuses_prefixes_alike() {
    let one = serve_one();

    // The prefix cache served something: a mid-page prefix and a whole prompt.
    assert!(one[3].2 >= 37 && one[4].2 == 31, "cached tokens {one:?}");
    for n in [2, 4] {
        let (split, steps) = serve_split(n, true);
        assert!(steps.iter().all(|&s| s > 0 && s == steps[0]), "{steps:?}");
        for (i, (a, b)) in split.iter().zip(&one).enumerate() {
            assert_eq!(a.0, b.0, "N={n} request {i}: greedy ids");
            assert_eq!(a.2, b.2, "N={n} request {i}: cached tokens");
        }
        // Reused pages hold what computing the prompt from scratch on the
        // same ranks gives. Within rounding, not bit for bit: a split
        // model's forward pass is not bitwise the same over different
        // chunkings of a prompt (one process's is), and reuse changes the
        // chunking. A page replayed wrong would be far off.
        let (uncached, _) = serve_split(n, false);
        for (i, (a, b)) in split.iter().zip(&uncached).enumerate() {
            assert_eq!(a.0, b.0, "N={n} request {i}: cached vs not");
            let (worst, _) = max_abs_diff(&a.1, &b.1);
            assert!(worst < 1e-4, "N={n} request {i}: logprobs {worst:e} apart");
            assert_eq!(b.2, 0);
        }
    }
}

#[test]
fn ranks_started_with_different_settings_are_refused_naming_rank_and_setting() {
    use grok1::parallel::check_same_settings;
    let answers = on_ranks(3, |c| {
        let kv_type = if c.rank() == 2 { "bf16" } else { "f32" };
        let description =
            format!("setting `--kv-type`: {kv_type}\nsetting `--no-prefix-cache`: false");
        check_same_settings(&*c, &description)
    });
    for (rank, answer) in answers.into_iter().enumerate() {
        assert_eq!(
            answer,
            Err(ParallelError::DifferentSettings {
                rank: 2,
                difference: "setting `--kv-type` is bf16 (rank 0: f32)".into()
            }),
            "rank {rank}"
        );
    }
    let same = on_ranks(2, |c| check_same_settings(&*c, "setting `--kv-type`: f32"));
    assert!(same.iter().all(Result::is_ok));
}

/// Runs `f` with an engine on rank 0 of an `n`-way split of tiny-moe (the
/// other ranks following its steps; `n` = 1: one process), prefix cache on.
fn with_split_engine<T: Send>(n: usize, f: impl Fn(&grok1::engine::EngineHandle) -> T + Sync) -> T {
    let runs = on_ranks(n, |c| {
        let model = load(&model_dir("tiny-moe"), c.clone()).expect("load");
        let config = engine_config(true);
        if c.rank() != 0 {
            grok1::engine::follow(&model, &config).expect("follow");
            return None;
        }
        let tokenizer = Arc::new(grok1_tokenizer::Tokenizer::grok1());
        let engine = grok1::engine::EngineHandle::start(model, tokenizer, config);
        let out = f(&engine);
        engine.shutdown(std::time::Duration::from_secs(1));
        Some(out)
    });
    runs.into_iter().next().flatten().expect("rank 0's result")
}

/// Greedy ids, their logprobs and the cached prompt tokens of one request.
fn greedy_request(engine: &grok1::engine::EngineHandle, prompt: &[u32], steps: usize) -> Served {
    let (request, rx) = greedy_logprobs(prompt.to_vec(), steps);
    engine.submit(request).expect("submit");
    outcome(rx)
}

/// A conversation's keys and values saved by a split engine (each rank's
/// heads gathered into one snapshot, the layout one process saves) and put
/// back into an engine of any split (each rank taking its heads): the next
/// turn reuses them and continues as computing it all does.
#[test]
fn a_split_engine_saves_and_resumes_a_conversation_as_one_process_does() {
    let prompt: Vec<u32> = (0..45).map(|i| 3 + (i * 53) % 1000).collect();
    let save = |n| {
        with_split_engine(n, |engine| {
            let reply = greedy_request(engine, &prompt, 6).0;
            let conversation = [&prompt[..], &reply[..]].concat();
            let snapshot = engine.export_prefix(conversation.clone()).unwrap();
            (conversation, snapshot)
        })
    };
    let (conversation, whole) = save(1);
    // Every position but the last reply token's (never fed back) is cached.
    assert_eq!(whole.tokens[..], conversation[..conversation.len() - 1]);
    let next = [&conversation[..], &[7, 8, 9][..]].concat();
    let computed = with_split_engine(1, |engine| greedy_request(engine, &next, 5));
    assert_eq!(computed.2, 0);
    let mut snapshots = vec![(1, whole.clone())];
    for n in [2, 4] {
        let (c, split) = save(n);
        assert_eq!(c, conversation, "N={n}: the reply");
        assert_eq!(split.tokens, whole.tokens, "N={n}");
        // The split's own rounding only: a head in the wrong place would be
        // another head's values altogether.
        let (worst, at) = max_abs_diff(&split.kv, &whole.kv);
        assert!(
            worst < 1e-4,
            "N={n}: value {at} is {worst:e} from one process's"
        );
        snapshots.push((n, split));
    }
    for n in [1, 2, 4] {
        for (saved_by, snapshot) in &snapshots {
            let (imported, resumed, back) = with_split_engine(n, |engine| {
                let imported = engine.import_prefix(snapshot.clone()).unwrap();
                let back = engine.export_prefix(snapshot.tokens.clone()).unwrap();
                (imported, greedy_request(engine, &next, 5), back)
            });
            let what = format!("saved by N={saved_by}, resumed at N={n}");
            assert_eq!(imported, snapshot.tokens.len(), "{what}");
            // Put in and read out again, every value lands where it was.
            assert_eq!(back.tokens, snapshot.tokens, "{what}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&back.kv) == bits(&snapshot.kv), "{what}: values moved");
            assert_eq!(resumed.2, snapshot.tokens.len(), "{what}: cached tokens");
            assert_eq!(resumed.0, computed.0, "{what}: greedy ids");
            let (worst, _) = max_abs_diff(&resumed.1, &computed.1);
            assert!(worst < 1e-4, "{what}: logprobs {worst:e} apart");
        }
    }
}

/// A session's model identity is the same whole and split (the embedding
/// rows it samples gathered from the ranks holding them), so a conversation
/// saved at one split resumes at any other.
#[test]
fn a_session_identity_is_the_same_at_every_split() {
    use grok1::session::SessionModel;
    for name in ["tiny-moe", "tiny-vocab"] {
        let identity = |n| {
            on_ranks(n, |c| {
                let model = load(&model_dir(name), c).expect("load");
                SessionModel::of(&model, Precision::F32, grok1::KvType::F32)
            })
        };
        let whole = identity(1).remove(0);
        assert!(whole.legacy_fingerprint.is_some());
        for n in [2, 4] {
            for (rank, split) in identity(n).into_iter().enumerate() {
                assert_eq!(
                    split.fingerprint, whole.fingerprint,
                    "{name} N={n} rank {rank}"
                );
                assert_eq!(split.legacy_fingerprint, None);
                let without_legacy = SessionModel {
                    legacy_fingerprint: None,
                    ..whole.clone()
                };
                assert_eq!(split, without_legacy, "{name} N={n} rank {rank}");
            }
        }
    }
}
