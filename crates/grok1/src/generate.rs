//! Generation of one sequence: prefill the prompt, then sample token by token
//! through the KV cache until a stop condition, streaming tokens as they become
//! final.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::kv_cache::KvType;
use crate::model::{ForwardOptions, Grok1, LogitsRows, ModelError, SequenceInput};
use crate::parallel::{broadcast_u32s, Collective};
use crate::sampling::{Sampler, SamplingError, SamplingParams};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("stop sequence {0} is empty")]
    EmptyStopSequence(usize),
    /// Tensor parallel: rank 0 refused the request (it reports why).
    #[error("rank 0 refused the generation")]
    RefusedByRank0,
}

/// When generation ends.
#[derive(Clone, Debug, PartialEq)]
pub struct StopConditions {
    /// Stop when this token is drawn (it is not returned); `None` to ignore eos.
    pub eos: Option<u32>,
    /// Stop when the output ends with one of these; the match is not returned.
    pub stop_sequences: Vec<Vec<u32>>,
    pub max_tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    /// Index into `stop_sequences`.
    StopSequence(usize),
    MaxTokens,
    /// The model's context (`sequence_len`) is full.
    ContextFull,
    /// The token callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated tokens, without eos or a matched stop sequence.
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Forward steps after the prefill.
    pub decode_steps: usize,
}

/// Length of the longest suffix of `tokens` that is a proper prefix of a stop sequence:
/// those tokens may still become a stop match and are held back.
fn pending_stop_prefix(tokens: &[u32], stops: &[Vec<u32>]) -> usize {
    let mut held = 0;
    for stop in stops {
        for len in (held + 1..stop.len()).rev() {
            if len <= tokens.len() && tokens[tokens.len() - len..] == stop[..len] {
                held = len;
                break;
            }
        }
    }
    held
}

/// Tensor parallel: what rank 0 tells the others after each sampled token.
/// `[CONTINUE, token]`: run `token`; `[STOP, reason, index, tokens...]`:
/// generation ended with rank 0's output `tokens`.
const CONTINUE: u32 = 0;
const STOP: u32 = 1;

fn stop_message(reason: &StopReason, tokens: &[u32]) -> Vec<u32> {
    let code = match reason {
        StopReason::Eos => [STOP, 0, 0],
        StopReason::StopSequence(i) => [STOP, 1, *i as u32],
        StopReason::MaxTokens => [STOP, 2, 0],
        StopReason::ContextFull => [STOP, 3, 0],
        StopReason::Cancelled => [STOP, 4, 0],
    };
    code.iter().chain(tokens).copied().collect()
}

/// The reason and tokens of a stop message.
fn stop_reason(message: &[u32]) -> (StopReason, Vec<u32>) {
    let tokens = message.get(3..).unwrap_or_default().to_vec();
    let reason = match message {
        [_, 0, _, ..] => StopReason::Eos,
        [_, 1, i, ..] => StopReason::StopSequence(*i as usize),
        [_, 2, _, ..] => StopReason::MaxTokens,
        [_, 3, _, ..] => StopReason::ContextFull,
        _ => StopReason::Cancelled,
    };
    (reason, tokens)
}

/// Generates a continuation of `prompt`. `on_tokens` receives tokens as they
/// become final (never eos or a stop match); returning `Break` stops generation.
///
/// Tensor parallel (a model split over several ranks), every rank calls this:
/// rank 0's prompt and stop conditions count, rank 0 samples each token and
/// tells the others, which run the same forward passes (`on_tokens` is only
/// called on rank 0).
/// The KV cache is f32 ([`generate_with`] takes another type).
pub fn generate(
    model: &Grok1,
    prompt: &[u32],
    sampling: &SamplingParams,
    stop: &StopConditions,
    options: ForwardOptions,
    on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    generate_with(
        model,
        prompt,
        sampling,
        stop,
        options,
        KvType::F32,
        on_tokens,
    )
}

/// [`generate`] with a KV cache of `kv_type` (the same on every rank).
pub fn generate_with(
    model: &Grok1,
    prompt: &[u32],
    sampling: &SamplingParams,
    stop: &StopConditions,
    options: ForwardOptions,
    kv_type: KvType,
    on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    let collective = model.collective();
    if collective.rank() != 0 {
        return follow(model, options, kv_type);
    }
    let checked = check_request(model, prompt, sampling, stop);
    if collective.size() > 1 {
        // [max_tokens (2 words), prompt...], or nothing for a refusal.
        let max = stop.max_tokens as u64;
        let header: Vec<u32> = match &checked {
            Ok(_) => [max as u32, (max >> 32) as u32]
                .into_iter()
                .chain(prompt.iter().copied())
                .collect(),
            Err(_) => Vec::new(),
        };
        broadcast_u32s(collective, &header);
    }
    let mut sampler = checked?;
    let announce = |step: &[u32]| {
        if collective.size() > 1 {
            broadcast_u32s(collective, step);
        }
    };
    let context = model.config().sequence_len;
    // Saturating: `--max-tokens` of u64::MAX means "until the context is full",
    // not a sum that wraps to a cache too small for the prompt.
    let tokens = prompt.len().saturating_add(stop.max_tokens).min(context);
    let mut cache = model.new_cache_of(tokens, 1, kv_type);
    let seq = cache.add_sequence();
    let options = ForwardOptions {
        logits: LogitsRows::Last,
        ..options
    };
    let mut history = prompt.to_vec();
    let mut out: Vec<u32> = Vec::new();
    let mut emitted = 0;
    let mut decode_steps = 0;
    let started = Instant::now();
    if stop.max_tokens == 0 {
        model.validate_prompt(prompt)?;
        return Ok(Generation {
            tokens: out,
            stop_reason: StopReason::MaxTokens,
            prefill_time: Duration::ZERO,
            decode_time: Duration::ZERO,
            decode_steps,
        });
    }
    let mut logits = model
        .forward(
            &mut cache,
            &[SequenceInput {
                seq,
                tokens: prompt,
            }],
            &options,
            None,
        )?
        .logits;
    let prefill_time = started.elapsed();
    let reason = loop {
        let next = match sampler.sample(&logits, &history) {
            Ok(next) => next,
            Err(e) => {
                announce(&stop_message(&StopReason::Cancelled, &out));
                return Err(e.into());
            }
        };
        if Some(next) == stop.eos {
            break StopReason::Eos;
        }
        out.push(next);
        history.push(next);
        if let Some(i) = stop.stop_sequences.iter().position(|s| out.ends_with(s)) {
            out.truncate(out.len() - stop.stop_sequences[i].len());
            break StopReason::StopSequence(i);
        }
        let safe = out.len() - pending_stop_prefix(&out[emitted..], &stop.stop_sequences);
        if safe > emitted {
            let flow = on_tokens(&out[emitted..safe]);
            emitted = safe;
            if flow.is_break() {
                break StopReason::Cancelled;
            }
        }
        if out.len() >= stop.max_tokens {
            break StopReason::MaxTokens;
        }
        if history.len() >= context {
            break StopReason::ContextFull;
        }
        announce(&[CONTINUE, next]);
        logits = model
            .forward(
                &mut cache,
                &[SequenceInput {
                    seq,
                    tokens: &[next],
                }],
                &options,
                None,
            )?
            .logits;
        decode_steps += 1;
    };
    announce(&stop_message(&reason, &out));
    if emitted < out.len() && reason != StopReason::Cancelled {
        let _ = on_tokens(&out[emitted..]);
    }
    Ok(Generation {
        tokens: out,
        stop_reason: reason,
        prefill_time,
        decode_time: started.elapsed() - prefill_time,
        decode_steps,
    })
}

/// What [`generate_with`] refuses before it computes anything: an empty
/// prompt, ids outside the vocabulary, a prompt longer than the context, an
/// empty stop sequence, sampling values out of range. A caller under mpirun
/// may check it on every rank before they part (a refusal found by the
/// forward pass comes from every rank at once, with no rank 0 to say it).
/// The sampler to use.
pub fn check_request(
    model: &Grok1,
    prompt: &[u32],
    sampling: &SamplingParams,
    stop: &StopConditions,
) -> Result<Sampler, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    model.validate_prompt(prompt)?;
    if let Some(i) = stop.stop_sequences.iter().position(Vec::is_empty) {
        return Err(GenerateError::EmptyStopSequence(i));
    }
    Ok(Sampler::new(sampling.clone())?)
}

/// A rank other than 0 of a split model: the same forward passes as rank 0,
/// on the prompt and tokens rank 0 sends.
fn follow(
    model: &Grok1,
    options: ForwardOptions,
    kv_type: KvType,
) -> Result<Generation, GenerateError> {
    let collective: &dyn Collective = model.collective();
    let header = broadcast_u32s(collective, &[]);
    if header.len() < 3 {
        return Err(GenerateError::RefusedByRank0);
    }
    let max_tokens = (u64::from(header[0]) | (u64::from(header[1]) << 32)) as usize;
    let prompt = &header[2..];
    let context = model.config().sequence_len;
    let started = Instant::now();
    let done = |tokens, stop_reason, prefill_time, decode_steps| Generation {
        tokens,
        stop_reason,
        prefill_time,
        decode_time: started.elapsed().saturating_sub(prefill_time),
        decode_steps,
    };
    if max_tokens == 0 {
        model.validate_prompt(prompt)?;
        return Ok(done(Vec::new(), StopReason::MaxTokens, Duration::ZERO, 0));
    }
    // The cache rank 0 makes, so that both fill up at the same step.
    let mut cache = model.new_cache_of(
        prompt.len().saturating_add(max_tokens).min(context),
        1,
        kv_type,
    );
    let seq = cache.add_sequence();
    let options = ForwardOptions {
        logits: LogitsRows::Last,
        ..options
    };
    let run = |cache: &mut crate::KvCache, tokens: &[u32]| {
        model.forward(cache, &[SequenceInput { seq, tokens }], &options, None)
    };
    run(&mut cache, prompt)?;
    let prefill_time = started.elapsed();
    let mut steps = 0;
    loop {
        let step = broadcast_u32s(collective, &[]);
        match step.as_slice() {
            [CONTINUE, token] => {
                run(&mut cache, &[*token])?;
                steps += 1;
            }
            message => {
                let (reason, tokens) = stop_reason(message);
                return Ok(done(tokens, reason, prefill_time, steps));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stops = vec![vec![5, 6, 7], vec![9]];
        assert_eq!(pending_stop_prefix(&[1, 5], &stops), 1);
        assert_eq!(pending_stop_prefix(&[1, 5, 6], &stops), 2);
        assert_eq!(pending_stop_prefix(&[1, 6], &stops), 0);
        assert_eq!(pending_stop_prefix(&[], &stops), 0);
    }
}
