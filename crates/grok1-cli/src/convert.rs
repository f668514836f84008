//! `grok1 convert`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use grok1::convert::{convert as run_convert, OutFormat};
use grok1::quant::GgmlType;

use crate::args::{ConvertArgs, ConvertFormat, ConvertType};
use crate::model_source;
use crate::progress::Bar;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let dtype = match args.dtype {
        ConvertType::F32 => GgmlType::F32,
        ConvertType::F16 => GgmlType::F16,
        ConvertType::Bf16 => GgmlType::BF16,
        ConvertType::Q8_0 => GgmlType::Q8_0,
        ConvertType::Q6K => GgmlType::Q6K,
        ConvertType::Q4K => GgmlType::Q4K,
        ConvertType::Int8 => {
            bail!("--type int8 is the official checkpoint's encoding: it goes with --format ckpt")
        }
    };
    let format = match args.format {
        ConvertFormat::Gguf => OutFormat::Gguf,
        ConvertFormat::Safetensors => OutFormat::Safetensors,
        ConvertFormat::Ckpt => {
            bail!("--format ckpt is not written yet: convert to gguf or safetensors (issue 7)")
        }
    };
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    if args.model == args.out {
        bail!("--out must differ from --model");
    }
    let loaded = model_source::load(Some(&args.model))?;
    let cfg = loaded.model.config().clone();
    let tokenizer_path = args
        .tokenizer
        .as_deref()
        .or(loaded.tokenizer_file.as_deref());
    let tokenizer = model_source::tokenizer(tokenizer_path, None)?;
    let started = Instant::now();
    let report = run_convert(
        &cfg,
        loaded.model.weights(),
        Some(&tokenizer),
        format,
        dtype,
        &args.out,
        &Bar::new(true),
    )
    .with_context(|| {
        format!(
            "converting {} to {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mb = report.bytes_written as f64 / 1e6;
    eprintln!(
        "grok1: wrote {} tensors, {:.1} MB ({:.2} bits per weight) to {} in {secs:.1} s ({:.0} MB/s written){}",
        report.tensors,
        mb,
        report.bytes_written as f64 * 8.0 / report.parameters.max(1) as f64,
        args.out.display(),
        mb / secs.max(1e-9),
        peak_rss_kib()
            .map(|k| format!(", peak RSS {:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
