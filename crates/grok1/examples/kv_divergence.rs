//! How far a compact KV cache moves the model's next-token distributions:
//! `kv_divergence [tokens] [prompt_seed] [MODEL [PRECISIONS [TYPES]]]`
//! generates `tokens` (default 1000) after a 16-token prompt (sampled at
//! temperature 1 from the f32 cache's distributions), then reads the whole
//! sequence again with a cache of each type and prints, per precision and
//! type, the mean and largest KL divergence KL(p_f32cache || p_type) over the
//! generated positions' next-token distributions, and how often the most
//! likely token differs. The sequence is read in chunks of 128 positions,
//! the f32-cache run and the other in step.
//!
//! MODEL: any model path `grok1` reads (default: the demo model), e.g. a
//! 2-layer full-width Grok-1 from `grok1 init --preset grok-1 --layers 2`.
//! PRECISIONS: comma-separated f32, fast, int8 (default all three); TYPES:
//! bf16, q8_0 (default both). On a large model each precision's generation
//! is the slow part: with a MODEL, the sequence is generated once, in the
//! first precision, and read by every precision.

use grok1::generate::{generate_with, StopConditions};
use grok1::sampling::SamplingParams;
use grok1::weights::random::random_store;
use grok1::{ForwardOptions, Grok1, KvType, LogitsRows, ModelConfig, Precision, SequenceInput};

const CHUNK: usize = 128;

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    row.iter().map(|&x| x as f64 - log_sum).collect()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

/// Per generated position: KL(f32 cache || `kv_type` cache) and whether the
/// top token agrees.
fn divergence(
    model: &Grok1,
    tokens: &[u32],
    first: usize,
    precision: Precision,
    kv_type: KvType,
) -> Vec<(f64, bool)> {
    let options = ForwardOptions {
        precision,
        logits: LogitsRows::All,
    };
    let mut exact = model.new_cache_of(tokens.len(), 1, KvType::F32);
    let mut typed = model.new_cache_of(tokens.len(), 1, kv_type);
    let (a, b) = (exact.add_sequence(), typed.add_sequence());
    let mut out = Vec::new();
    for (c, chunk) in tokens.chunks(CHUNK).enumerate() {
        let run = |cache: &mut grok1::KvCache, seq| {
            let input = [SequenceInput { seq, tokens: chunk }];
            model.forward(cache, &input, &options, None).unwrap()
        };
        let (p, q) = (run(&mut exact, a), run(&mut typed, b));
        for r in 0..chunk.len() {
            // Row r predicts position c * CHUNK + r + 1.
            if c * CHUNK + r + 1 < first {
                continue;
            }
            let (lp, lq) = (log_softmax(p.row(r)), log_softmax(q.row(r)));
            let kl: f64 = lp.iter().zip(&lq).map(|(x, y)| x.exp() * (x - y)).sum();
            out.push((kl.max(0.0), argmax(p.row(r)) == argmax(q.row(r))));
        }
    }
    out
}

fn parse_precision(name: &str) -> Precision {
    match name {
        "f32" => Precision::F32,
        "fast" => Precision::Fast,
        "int8" => Precision::Int8,
        other => panic!("unknown precision {other} (f32, fast, int8)"),
    }
}

fn parse_kv_type(name: &str) -> KvType {
    match name {
        "bf16" => KvType::Bf16,
        "q8_0" => KvType::Q8_0,
        other => panic!("unknown KV type {other} (bf16, q8_0)"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| {
        args.get(i)
            .map(|a| a.parse::<u64>().expect("tokens and seed are numbers"))
            .unwrap_or(default)
    };
    let generated = number(0, 1000) as usize;
    let seed = number(1, 7);
    let model_path = args
        .get(2)
        .filter(|p| !p.is_empty() && p.as_str() != "demo");
    let precisions: Vec<Precision> = args
        .get(3)
        .map(|l| l.split(',').map(parse_precision).collect())
        .unwrap_or_else(|| vec![Precision::F32, Precision::Fast, Precision::Int8]);
    let kv_types: Vec<KvType> = args
        .get(4)
        .map(|l| l.split(',').map(parse_kv_type).collect())
        .unwrap_or_else(|| vec![KvType::Bf16, KvType::Q8_0]);
    let (model, name) = match model_path {
        Some(path) => {
            let loaded = grok1::load(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (loaded.model, path.clone())
        }
        None => {
            let cfg = ModelConfig::demo();
            let store = random_store(&cfg, grok1::config::DEMO_SEED);
            (
                Grok1::from_store(cfg, &store).unwrap(),
                "demo model".to_string(),
            )
        }
    };
    let cfg = model.config().clone();
    let vocab = cfg.vocab_size as u64;
    let prompt: Vec<u32> = (0..16u64)
        .map(|i| ((i * 7919 + seed * 104_729) % 30_000.min(vocab - 1) + 1000.min(vocab / 2)) as u32)
        .collect();
    println!(
        "{name}, {} tokens (16 prompt + {generated} generated at temperature 1, seed {seed})",
        prompt.len() + generated
    );
    println!("| precision | KV type | KV bytes/token | mean KL | max KL | top token differs |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let mut shared: Option<Vec<u32>> = None;
    for precision in precisions {
        let sampling = SamplingParams {
            temperature: 1.0,
            seed,
            ..Default::default()
        };
        let stop = StopConditions {
            eos: None,
            stop_sequences: Vec::new(),
            max_tokens: generated,
        };
        let options = ForwardOptions {
            precision,
            ..Default::default()
        };
        let tokens = match &shared {
            Some(tokens) => tokens.clone(),
            None => {
                let g = generate_with(
                    &model,
                    &prompt,
                    &sampling,
                    &stop,
                    options,
                    KvType::F32,
                    &mut |_| std::ops::ControlFlow::Continue(()),
                )
                .unwrap();
                let tokens = [&prompt[..], &g.tokens[..]].concat();
                if model_path.is_some() {
                    shared = Some(tokens.clone());
                }
                tokens
            }
        };
        for &kv_type in &kv_types {
            let d = divergence(&model, &tokens, prompt.len(), precision, kv_type);
            let mean = d.iter().map(|x| x.0).sum::<f64>() / d.len() as f64;
            let max = d.iter().map(|x| x.0).fold(0f64, f64::max);
            let differs = d.iter().filter(|x| !x.1).count();
            println!(
                "| {precision:?} | {kv_type} | {} | {mean:.3e} | {max:.3e} | {differs} of {} |",
                grok1::KvCache::bytes_per_token(&cfg, kv_type),
                d.len()
            );
        }
    }
}
