//! `grok1 chat`: a conversation in the terminal, with the server's chat
//! template and stop rule, replies streamed as they are generated.
//!
//! Enter sends a message; a line ending in `\` continues on the next line, and
//! a block between lines of `"""` is sent whole. Ctrl-C stops a reply; at the
//! prompt it (or Ctrl-D, or `/exit`) quits.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use grok1::engine::{EngineHandle, Event, Request};
use grok1::sampling::SamplingParams;
use grok1_server::chat::{self, Role};

use crate::args::ChatArgs;
use crate::model_source;
use crate::serve::{engine_config, set_threads};

/// Reads one message; `None` at the end of input or on `/exit`.
fn read_message(input: &mut dyn BufRead) -> std::io::Result<Option<String>> {
    let mut message = String::new();
    let mut block = false;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok((!message.trim().is_empty()).then_some(message));
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim() == "\"\"\"" {
            if block {
                return Ok(Some(message));
            }
            block = true;
            continue;
        }
        if block {
            message.push_str(line);
            message.push('\n');
            continue;
        }
        if message.is_empty() && line.trim() == "/exit" {
            return Ok(None);
        }
        if let Some(start) = line.strip_suffix('\\') {
            message.push_str(start);
            message.push('\n');
            continue;
        }
        message.push_str(line);
        if !message.trim().is_empty() {
            return Ok(Some(message));
        }
        message.clear();
    }
}

pub fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    set_threads(args.engine.threads)?;
    let loaded = model_source::load_args(&args.model)?;
    let tokenizer = Arc::new(loaded.tokenizer(args.tokenizer.as_deref())?);
    let model = loaded.model;
    let eos = model.config().eos_token;
    let config = engine_config(&args.engine, &model, args.model.precision())?;
    let context = config.context;
    let engine = EngineHandle::start(model, tokenizer.clone(), config);

    // Ctrl-C while a reply streams stops it; at the prompt it quits.
    let replying = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (replying, interrupted) = (replying.clone(), interrupted.clone());
        ctrlc::set_handler(move || {
            if replying.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(0);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    eprintln!("grok1 chat: Enter sends; end a line with \\ to continue it, or wrap a block in \"\"\" lines.");
    eprintln!("Ctrl-C stops a reply; Ctrl-C at the prompt, Ctrl-D or /exit quits.");
    let mut turns: Vec<(Role, String)> = Vec::new();
    if let Some(system) = &args.system {
        turns.push((Role::System, system.clone()));
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    let mut seed = args.seed;
    loop {
        write!(out, "\nUser: ")?;
        out.flush()?;
        let Some(message) = read_message(&mut input)? else {
            break;
        };
        turns.push((Role::User, message));
        let prompt = tokenizer.encode(&chat::render(&turns));
        if prompt.len() >= context {
            eprintln!("grok1: the conversation ({} tokens) fills the context ({context}); start a new chat", prompt.len());
            break;
        }
        let (tx, rx) = mpsc::channel();
        let request = Request {
            max_tokens: args.max_tokens.min(context - prompt.len()),
            prompt,
            sampling: SamplingParams {
                temperature: args.temperature,
                top_p: args.top_p,
                seed,
                ..Default::default()
            },
            stop_token_ids: vec![eos],
            stop_strings: chat::TURN_SEPARATORS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            logprobs: None,
            prompt_logprobs: false,
            sink: {
                let interrupted = interrupted.clone();
                Box::new(move |e| tx.send(e).is_ok() && !interrupted.load(Ordering::SeqCst))
            },
        };
        seed = seed.wrapping_add(1);
        interrupted.store(false, Ordering::SeqCst);
        replying.store(true, Ordering::SeqCst);
        engine.submit(request)?;
        write!(out, "\nAssistant:")?;
        out.flush()?;
        let mut reply = String::new();
        for event in rx.iter() {
            let text = match event {
                Event::Token { text, .. } | Event::Text(text) => text,
                Event::Done { .. } => break,
                Event::PromptLogprobs(_) => continue,
            };
            let text = if reply.trim().is_empty() {
                text.trim_start().to_string()
            } else {
                text
            };
            if !text.is_empty() {
                if reply.is_empty() {
                    write!(out, " ")?;
                }
                reply.push_str(&text);
                write!(out, "{text}")?;
                out.flush()?;
            }
        }
        replying.store(false, Ordering::SeqCst);
        if interrupted.swap(false, Ordering::SeqCst) {
            write!(out, " [stopped]")?;
        }
        writeln!(out)?;
        turns.push((Role::Assistant, reply));
    }
    engine.shutdown(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_continue_with_backslash_and_blocks() {
        let mut input: &[u8] = b"hello\nfirst \\\nsecond\n\"\"\"\na\n\nb\n\"\"\"\n/exit\n";
        assert_eq!(read_message(&mut input).unwrap().as_deref(), Some("hello"));
        assert_eq!(
            read_message(&mut input).unwrap().as_deref(),
            Some("first \nsecond")
        );
        assert_eq!(
            read_message(&mut input).unwrap().as_deref(),
            Some("a\n\nb\n")
        );
        assert_eq!(read_message(&mut input).unwrap(), None);
    }
}
