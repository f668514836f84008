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
    let dtype = match (args.format, args.dtype) {
        (ConvertFormat::Ckpt, ConvertType::Int8) => None,
        (ConvertFormat::Ckpt, other) => bail!(
            "--format ckpt holds int8 weights with bf16 scales: use --type int8, not {other:?}"
        ),
        (_, ConvertType::Int8) => {
            bail!("--type int8 is the official checkpoint's encoding: it goes with --format ckpt")
        }
        (_, ConvertType::F32) => Some(GgmlType::F32),
        (_, ConvertType::F16) => Some(GgmlType::F16),
        (_, ConvertType::Bf16) => Some(GgmlType::BF16),
        (_, ConvertType::Q8_0) => Some(GgmlType::Q8_0),
        (_, ConvertType::Q6K) => Some(GgmlType::Q6K),
        (_, ConvertType::Q4K) => Some(GgmlType::Q4K),
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
    let context = || {
        format!(
            "converting {} to {}",
            args.model.display(),
            args.out.display()
        )
    };
    if args.force && args.out.exists() {
        if args.out.is_dir() {
            std::fs::remove_dir_all(&args.out)
        } else {
            std::fs::remove_file(&args.out)
        }
        .with_context(|| format!("removing {}", args.out.display()))?;
    }
    let bar = Bar::new(true);
    let weights = loaded.model.weights();
    let report = match (args.format, dtype) {
        (ConvertFormat::Ckpt, _) | (_, None) => {
            grok1::convert::convert_to_ckpt(&cfg, weights, &args.out, &bar).with_context(context)?
        }
        (format, Some(dtype)) => {
            let format = match format {
                ConvertFormat::Safetensors => OutFormat::Safetensors,
                _ => OutFormat::Gguf,
            };
            run_convert(
                &cfg,
                weights,
                Some(&tokenizer),
                format,
                dtype,
                &args.out,
                &bar,
            )
            .with_context(context)?
        }
    };
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
