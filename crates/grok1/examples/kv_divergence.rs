//! How far a compact KV cache moves the model's next-token distributions:
//! `kv_divergence [tokens] [prompt_seed]` generates `tokens` (default 1000)
//! after a 16-token prompt on the demo model (sampled at temperature 1 from
//! the f32 cache's distributions), then reads the whole sequence again with a
//! cache of each type and prints, per precision (f32, fast, int8) and type,
//! the mean and largest KL divergence KL(p_f32cache || p_type) over the
//! generated positions' next-token distributions, and how often the most
//! likely token differs. The sequence is read in chunks of 128 positions,
//! the f32-cache run and the other in step.

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

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let generated = args.first().copied().unwrap_or(1000) as usize;
    let seed = args.get(1).copied().unwrap_or(7);
    let cfg = ModelConfig::demo();
    let store = random_store(&cfg, grok1::config::DEMO_SEED);
    let model = Grok1::from_store(cfg.clone(), &store).unwrap();
    let prompt: Vec<u32> = (0..16u64)
        .map(|i| ((i * 7919 + seed * 104_729) % 30_000 + 1000) as u32)
        .collect();
    println!(
        "demo model, {} tokens (16 prompt + {generated} generated at temperature 1, seed {seed})",
        prompt.len() + generated
    );
    println!("| precision | KV type | KV bytes/token | mean KL | max KL | top token differs |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for precision in [Precision::F32, Precision::Fast, Precision::Int8] {
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
        for kv_type in [KvType::Bf16, KvType::Q8_0] {
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
