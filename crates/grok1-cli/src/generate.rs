//! `grok1 generate` and `grok1 logits`.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::Context;
use grok1::generate::{StopConditions, StopReason};
use grok1::sampling::SamplingParams;
use grok1::{ForwardOptions, LogitsRows, SequenceInput};
use grok1_tokenizer::Tokenizer;

use crate::args::{GenerateArgs, LogitsArgs, PromptArgs};
use crate::model_source;

fn prompt_ids(prompt: &PromptArgs, tokenizer: &Tokenizer) -> anyhow::Result<Vec<u32>> {
    match (&prompt.prompt, &prompt.tokens) {
        (Some(text), _) => {
            let ids = tokenizer.encode(text);
            anyhow::ensure!(
                !ids.is_empty(),
                "--prompt is empty: give some text or --tokens"
            );
            Ok(ids)
        }
        (None, Some(tokens)) => Ok(tokens.0.clone()),
        (None, None) => anyhow::bail!("give --prompt TEXT or --tokens IDS"),
    }
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    crate::serve::set_threads(args.threads)?;
    let loaded = model_source::load_args(&args.model)?;
    crate::parallel::arm_wait_limit();
    let model = &loaded.model;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let stop = StopConditions {
        eos: (!args.ignore_eos).then_some(model.config().eos_token),
        stop_sequences: args.stop_tokens.iter().map(|t| t.0.clone()).collect(),
        max_tokens: args.max_tokens,
    };
    // Under mpirun every rank reads the tokenizer and the prompt, and they
    // learn together whether any refused them (a rank that went on alone
    // would end the job by MPI_Abort).
    let (tokenizer, prompt) = crate::parallel::agree((|| {
        let tokenizer = model_source::model_tokenizer(&loaded, args.tokenizer.as_deref())?;
        let prompt = prompt_ids(&args.prompt, &tokenizer)?;
        grok1::generate::check_request(model, &prompt, &sampling, &stop)?;
        Ok((tokenizer, prompt))
    })())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut decoder = tokenizer.stream_decoder_after(&prompt);
    let mut write_error = None;
    let mut ends_with_newline = true;
    let mut emit = |text: &str, out: &mut dyn Write| -> std::io::Result<()> {
        if !text.is_empty() {
            ends_with_newline = text.ends_with('\n');
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    };
    let options = ForwardOptions {
        precision: args.model.precision(),
        ..Default::default()
    };
    let kv_type = args.model.kv_type(options.precision);
    let result = grok1::generate::generate_with(
        model,
        &prompt,
        &sampling,
        &stop,
        options,
        kv_type,
        &mut |tokens| {
            let text = match decoder.push(tokens) {
                Ok(text) => text,
                // An id the tokenizer lacks (a model with a larger vocabulary).
                Err(_) => tokens.iter().map(|t| format!("[{t}]")).collect(),
            };
            match emit(&text, &mut out) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    // Under mpirun the other ranks ran the same steps; rank 0 alone writes.
    if !crate::parallel::is_root() {
        return Ok(ExitCode::SUCCESS);
    }
    emit(&decoder.finish(), &mut out)?;
    if args.print_ids {
        if !ends_with_newline {
            writeln!(out)?;
        }
        let ids: Vec<String> = result.tokens.iter().map(u32::to_string).collect();
        writeln!(out, "{}", ids.join(","))?;
    } else if !ends_with_newline {
        writeln!(out)?;
    }
    out.flush()?;
    let reason = match result.stop_reason {
        StopReason::Eos => "end of sequence".to_string(),
        StopReason::StopSequence(i) => format!("stop sequence {}", i + 1),
        StopReason::MaxTokens => "max tokens".to_string(),
        StopReason::ContextFull => "context full".to_string(),
        StopReason::Cancelled => "cancelled".to_string(),
    };
    let decode_rate = if result.decode_time.as_secs_f64() > 0.0 {
        result.decode_steps as f64 / result.decode_time.as_secs_f64()
    } else {
        0.0
    };
    eprintln!(
        "grok1: prompt {} tokens in {:.3} s ({:.1} tok/s); generated {} tokens, {:.1} tok/s; stopped: {reason}",
        prompt.len(),
        result.prefill_time.as_secs_f64(),
        prompt.len() as f64 / result.prefill_time.as_secs_f64().max(1e-9),
        result.tokens.len(),
        decode_rate,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn logits(args: LogitsArgs) -> anyhow::Result<ExitCode> {
    let loaded = model_source::load_args(&args.model)?;
    crate::parallel::arm_wait_limit();
    let model = &loaded.model;
    let tokens = crate::parallel::agree(match &args.prompt.tokens {
        Some(t) => Ok(t.0.clone()),
        None => model_source::model_tokenizer(&loaded, args.tokenizer.as_deref())
            .and_then(|tokenizer| prompt_ids(&args.prompt, &tokenizer)),
    })?;
    // Under mpirun every rank runs rank 0's tokens, and refuses them alike.
    let tokens = grok1::parallel::broadcast_u32s(model.collective(), &tokens);
    crate::parallel::agree(model.validate_prompt(&tokens).map_err(Into::into))?;
    let options = ForwardOptions {
        precision: args
            .model
            .precision
            .map_or(grok1::Precision::F32, Into::into),
        logits: LogitsRows::All,
    };
    // f32 unless asked: the logits are compared with the reference's.
    let kv_type = args
        .model
        .kv_type
        .map_or(grok1::KvType::default_for(options.precision), Into::into);
    let mut cache = model.new_cache_of(tokens.len(), 1, kv_type);
    let seq = cache.add_sequence();
    let out = model.forward(
        &mut cache,
        &[SequenceInput {
            seq,
            tokens: &tokens,
        }],
        &options,
        None,
    )?;
    if !crate::parallel::is_root() {
        return Ok(ExitCode::SUCCESS);
    }
    // A regular file is replaced whole (an interrupted run never leaves a
    // truncated .npy under the requested name); a FIFO or device is written
    // through, never replaced.
    grok1::files::write_output(&args.out, |w| {
        grok1::npy::write_f32(w, &[tokens.len(), out.vocab], &out.logits)
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "grok1: wrote logits [{}, {}] to {}",
        tokens.len(),
        out.vocab,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
