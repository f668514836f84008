//! Generation of one sequence: prefill the prompt, then sample token by token
//! through the KV cache until a stop condition, streaming tokens as they become
//! final.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::kv_cache::KvType;
use crate::model::{ForwardOptions, Grok1, LogitsRows, ModelError, SequenceInput};
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

/// Generates a continuation of `prompt`. `on_tokens` receives tokens as they
/// become final (never eos or a stop match); returning `Break` stops generation.
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

/// [`generate`] with a KV cache of `kv_type`.
pub fn generate_with(
    model: &Grok1,
    prompt: &[u32],
    sampling: &SamplingParams,
    stop: &StopConditions,
    options: ForwardOptions,
    kv_type: KvType,
    on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if let Some(i) = stop.stop_sequences.iter().position(Vec::is_empty) {
        return Err(GenerateError::EmptyStopSequence(i));
    }
    let mut sampler = Sampler::new(sampling.clone())?;
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
        let next = sampler.sample(&logits, &history)?;
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
