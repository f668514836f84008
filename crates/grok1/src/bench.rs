//! Speed measurements for `grok1 bench`: prompt processing and generation
//! throughput, the weight bytes a generation step reads, and the machine's memory
//! read bandwidth measured in the same run, which together give the fraction of
//! the memory roofline reached (decoding a MoE model is bound by the bytes of
//! weights it reads per step).
//!
//! Tokens are drawn at random (seeded) rather than sampled, so every run routes
//! tokens like real text does and sampling cost is excluded, as in llama-bench.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{ForwardOptions, Grok1, LogitsRows, ModelError, SequenceInput};
use crate::{KvType, Precision};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Tokens of the prompt-processing test (one sequence, one forward call).
    pub prompt_tokens: usize,
    /// Decode steps of the generation test.
    pub gen_tokens: usize,
    /// Sequences decoded together in the generation test.
    pub batch: usize,
    /// Tokens of context in each sequence's cache before either test starts
    /// (llama-bench's `-d`): attention's cost grows with it.
    pub depth: usize,
    /// Timed repetitions of each test (after one warm-up).
    pub repeat: usize,
    pub seed: u64,
    pub precision: Precision,
    /// The element type of the KV cache.
    pub kv_type: KvType,
}

/// Results of one configuration; rates are per repetition.
#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    pub prompt_tokens_per_s: Vec<f64>,
    /// All sequences' tokens per second of decoding.
    pub gen_tokens_per_s: Vec<f64>,
    /// Mean weight bytes read by one decode step (all sequences of the batch).
    pub weight_bytes_per_step: f64,
    /// Mean number of distinct experts run per layer per decode step.
    pub experts_per_step: f64,
    /// Multiply-adds x 2 of one prompt token (matrix products only).
    pub flops_per_prompt_token: f64,
    /// Tensor parallel: the share of the timed prompt-processing time this
    /// process spent in collectives (waiting for slower ranks included).
    pub prompt_comm_fraction: f64,
    /// The same for the decode steps.
    pub gen_comm_fraction: f64,
    /// Bytes this process sent in collectives per generated token.
    pub gen_comm_bytes_per_token: f64,
}

/// The sample standard deviation (n - 1 in the divisor, as llama-bench's
/// `stddev_ts`); 0 for fewer than two values.
pub fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let squares: f64 = v.iter().map(|x| (x - mean).powi(2)).sum();
    (squares / (v.len() - 1) as f64).sqrt()
}

/// Median and (min, max) of a sample.
pub fn summarize(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// The machine's memory read bandwidth in GB/s: the best of `repeats` reads
/// of a `bytes` buffer (far larger than the caches) by every thread of the
/// pool at once, as the kernels read weights. Each thread first writes and
/// then reads its own contiguous part (its pages land on its memory node), and
/// all start together, so a slow start or a short last chunk does not count.
/// The read loop is the ISA's widest (`kernels::read_sum`): checked against a
/// STREAM-style loop in C (bench/stream_read.sh).
pub fn memory_bandwidth(bytes: usize, repeats: usize) -> f64 {
    use crate::backend::cpu::{kernels::read_sum, Isa};
    let isa = Isa::detect();
    let threads = rayon::current_num_threads().max(1);
    let per_thread = (bytes / 8).div_ceil(threads).max(1024);
    let parts: Vec<Vec<u64>> = rayon::broadcast(|ctx| {
        let first = (ctx.index() * per_thread) as u64;
        (first..first + per_thread as u64).collect()
    });
    let total = (per_thread * threads * 8) as f64;
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let sums = rayon::broadcast(|ctx| read_sum(isa, &parts[ctx.index() % parts.len()]));
        let secs = start.elapsed().as_secs_f64();
        // Keep the sums alive so the reads are not optimised away.
        std::hint::black_box(sums);
        best = best.max(total / secs / 1e9);
    }
    best
}

fn random_tokens(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    // Ids 3.. avoid the pad (masked), bos and eos ids.
    (0..n).map(|_| rng.random_range(3..vocab as u32)).collect()
}

/// Puts `depth` random tokens of context into each of `seqs`, in
/// prompt-sized calls (untimed).
fn fill_context(
    model: &Grok1,
    cache: &mut crate::kv_cache::KvCache,
    seqs: &[crate::kv_cache::SeqId],
    depth: usize,
    options: &ForwardOptions,
    rng: &mut ChaCha8Rng,
    report: &mut dyn FnMut(&str),
) -> Result<(), ModelError> {
    /// Tokens per call: long contexts go in pieces, as the server feeds them.
    const CHUNK: usize = 512;
    for (i, &seq) in seqs.iter().enumerate() {
        let mut done = 0;
        while done < depth {
            report(&format!(
                "context of {depth} tokens, sequence {}/{}: {done}",
                i + 1,
                seqs.len()
            ));
            let tokens = random_tokens(rng, CHUNK.min(depth - done), model.config().vocab_size);
            model.forward(
                cache,
                &[SequenceInput {
                    seq,
                    tokens: &tokens,
                }],
                options,
                None,
            )?;
            done += tokens.len();
        }
    }
    Ok(())
}

/// Runs the prompt-processing and generation tests on `model`. `report` is
/// called with a line of progress before each timed run.
pub fn run(
    model: &Grok1,
    spec: &BenchSpec,
    report: &mut dyn FnMut(&str),
) -> Result<BenchResult, ModelError> {
    let cfg = model.config();
    let vocab = cfg.vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut result = BenchResult {
        flops_per_prompt_token: model.flops_per_token(),
        ..Default::default()
    };
    // Every call keeps only the last row's logits.
    let options = ForwardOptions {
        precision: spec.precision,
        logits: LogitsRows::Last,
    };
    if spec.precision.int8_output() {
        // The fast mode's copy of the output projection is made once, before
        // anything is timed (not inside the first timed run).
        let _ = model.fast_output();
    }

    // Prompt processing: one sequence, all tokens in one call, last row's
    // logits, after `depth` tokens of context (filled once, untimed; each
    // repetition cuts the cache back to them).
    let (mut prompt_time, mut prompt_comm) = (0f64, 0f64);
    if spec.prompt_tokens > 0 {
        let mut cache = model.new_cache_of(spec.depth + spec.prompt_tokens, 1, spec.kv_type);
        let seq = cache.add_sequence();
        fill_context(
            model,
            &mut cache,
            &[seq],
            spec.depth,
            &options,
            &mut rng,
            report,
        )?;
        for rep in 0..=spec.repeat {
            report(&format!(
                "pp{} run {rep}/{}",
                spec.prompt_tokens, spec.repeat
            ));
            let tokens = random_tokens(&mut rng, spec.prompt_tokens, vocab);
            cache.truncate(seq, spec.depth)?;
            let start = Instant::now();
            let comm = model.collective().traffic();
            model.forward(
                &mut cache,
                &[SequenceInput {
                    seq,
                    tokens: &tokens,
                }],
                &options,
                None,
            )?;
            let secs = start.elapsed().as_secs_f64();
            if rep > 0 {
                result.prompt_tokens_per_s.push(tokens.len() as f64 / secs);
                prompt_time += secs;
                prompt_comm += model.collective().traffic().seconds - comm.seconds;
            }
        }
    }

    // Generation: `batch` sequences from a one-token prompt (or `depth`
    // tokens of context), then decode steps of one random token per sequence.
    if spec.gen_tokens > 0 && spec.batch > 0 {
        let context = spec.depth.max(1);
        let steps = spec
            .gen_tokens
            .min(cfg.sequence_len.saturating_sub(context));
        let (mut bytes, mut experts, mut counted) = (0f64, 0f64, 0usize);
        let (mut gen_time, mut comm_time, mut comm_bytes) = (0f64, 0f64, 0f64);
        let mut cache =
            model.new_cache_of(spec.batch * (context + steps), spec.batch, spec.kv_type);
        let seqs: Vec<_> = (0..spec.batch).map(|_| cache.add_sequence()).collect();
        fill_context(
            model, &mut cache, &seqs, context, &options, &mut rng, report,
        )?;
        for rep in 0..=spec.repeat {
            report(&format!(
                "tg{} batch {} run {rep}/{}",
                steps, spec.batch, spec.repeat
            ));
            for &seq in &seqs {
                cache.truncate(seq, context)?;
            }
            let mut elapsed = 0f64;
            for _ in 0..steps {
                let next = random_tokens(&mut rng, spec.batch, vocab);
                let inputs: Vec<SequenceInput> = seqs
                    .iter()
                    .zip(next.chunks(1))
                    .map(|(&seq, tokens)| SequenceInput { seq, tokens })
                    .collect();
                let start = Instant::now();
                let comm = model.collective().traffic();
                let out = model.forward(&mut cache, &inputs, &options, None)?;
                let secs = start.elapsed().as_secs_f64();
                elapsed += secs;
                if rep > 0 {
                    let after = model.collective().traffic();
                    gen_time += secs;
                    comm_time += after.seconds - comm.seconds;
                    comm_bytes += (after.bytes_sent - comm.bytes_sent) as f64;
                    bytes += out.stats.weight_bytes as f64;
                    let layers = out.stats.experts_read.len().max(1);
                    experts += out.stats.experts_read.iter().sum::<usize>() as f64 / layers as f64;
                    counted += 1;
                }
            }
            if rep > 0 && elapsed > 0.0 {
                result
                    .gen_tokens_per_s
                    .push((steps * spec.batch) as f64 / elapsed);
            }
        }
        if counted > 0 {
            result.weight_bytes_per_step = bytes / counted as f64;
            result.experts_per_step = experts / counted as f64;
            result.gen_comm_bytes_per_token = comm_bytes / (counted * spec.batch) as f64;
        }
        if gen_time > 0.0 {
            result.gen_comm_fraction = comm_time / gen_time;
        }
    }
    if prompt_time > 0.0 {
        result.prompt_comm_fraction = prompt_comm / prompt_time;
    }
    Ok(result)
}

#[cfg(test)]
mod probe_tests {
    use super::memory_bandwidth;
    use crate::backend::cpu::{kernels::read_sum, Isa};

    #[test]
    fn every_isa_reads_every_word() {
        // Lengths around the 32-word blocks of the wide loop and its tail.
        for len in [0, 1, 7, 31, 32, 33, 64, 95, 1000, 4099] {
            let words: Vec<u64> = (0..len as u64)
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 7))
                .collect();
            let want = words.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            for isa in Isa::available() {
                assert_eq!(read_sum(isa, &words), want, "{isa:?}, {len} words");
            }
        }
    }

    #[test]
    fn the_probe_reports_a_positive_rate() {
        let gbs = memory_bandwidth(8 << 20, 2);
        assert!(gbs.is_finite() && gbs > 0.0, "{gbs}");
    }
}
