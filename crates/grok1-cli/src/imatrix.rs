//! `grok1 imatrix`: an importance matrix from calibration text, through the
//! model's own forward pass.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::args::ImatrixArgs;
use crate::model_source;
use crate::progress::Bar;

pub fn imatrix(args: ImatrixArgs) -> anyhow::Result<ExitCode> {
    if args.out.symlink_metadata().is_ok() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading --data {}", args.data.display()))?;
    let loaded = model_source::load_args(&args.model)?;
    let tokenizer = model_source::model_tokenizer(&loaded, args.tokenizer.as_deref())?;
    let model = &loaded.model;
    let context = model.config().sequence_len;
    let chunk_size = args.chunk_size as usize;
    if chunk_size > context {
        bail!("--chunk-size {chunk_size} is longer than the model's context of {context} tokens");
    }
    let tokens = tokenizer.encode(&text);
    if tokens.is_empty() {
        bail!("--data {} holds no text to tokenize", args.data.display());
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(&t) = tokens.iter().find(|&&t| t >= vocab) {
        bail!(
            "the tokenizer gives id {t}, which the model's {vocab}-token vocabulary lacks: pass the model's --tokenizer"
        );
    }
    let mut chunks: Vec<&[u32]> = tokens.chunks(chunk_size).collect();
    if let Some(n) = args.chunks {
        chunks.truncate(n as usize);
    }
    let started = Instant::now();
    let dataset = args.data.display().to_string();
    let imatrix = grok1::imatrix::collect(
        model,
        &chunks,
        args.model.precision(),
        &dataset,
        &Bar::new(true),
    )?;
    imatrix.write_gguf(&args.out)?;
    let used: usize = chunks.iter().map(|c| c.len()).sum();
    eprintln!(
        "grok1: {} entries from {used} tokens in {} chunks ({:.1} s) written to {}",
        imatrix.entries.len(),
        chunks.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
