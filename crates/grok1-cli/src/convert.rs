//! `grok1 convert`.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use grok1::convert::{convert_with, ConvertOptions, OutFormat};

use crate::args::{ConvertArgs, ConvertFormat, ConvertType};
use crate::model_source;
use crate::progress::Bar;
use grok1_tokenizer::Tokenizer;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let scheme = match (args.format, args.dtype) {
        (ConvertFormat::Ckpt, ConvertType::Int8) => None,
        (ConvertFormat::Ckpt, ConvertType::Scheme(other)) => bail!(
            "--format ckpt holds int8 weights with bf16 scales: use --type int8, not {}",
            other.name()
        ),
        (_, ConvertType::Int8) => {
            bail!("--type int8 is the official checkpoint's encoding: it goes with --format ckpt")
        }
        (_, ConvertType::Scheme(s)) => Some(s),
    };
    if args.imatrix.is_some() && args.format != ConvertFormat::Gguf {
        bail!("--imatrix guides the quantised types of --format gguf");
    }
    // Read before the model, so that a bad file fails fast.
    let imatrix = args
        .imatrix
        .as_deref()
        .map(grok1::imatrix::Imatrix::open)
        .transpose()
        .context("reading --imatrix")?;
    // (Not `exists()`: a dangling symlink is there too.)
    if args.out.symlink_metadata().is_ok() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    if let Some(ranks) = args.shards {
        let scheme = scheme.context(
            "--shards writes GGUF or safetensors rank files; --format ckpt cannot be split",
        )?;
        return convert_shards(&args, scheme, ranks as usize, imatrix.as_ref());
    }
    let loaded = model_source::load(Some(&args.model))?;
    let cfg = loaded.model.config().clone();
    let tokenizer = tokenizer_beside(&args, &loaded.sources, loaded.tokenizer_file.as_deref())?;
    if args.force {
        clear_previous_output(&args.out, args.format)?;
    }
    let started = Instant::now();
    let context = || {
        format!(
            "converting {} to {}",
            args.model.display(),
            args.out.display()
        )
    };
    let bar = Bar::new(true);
    let weights = loaded.model.weights();
    let report = match (args.format, scheme) {
        (ConvertFormat::Ckpt, _) | (_, None) => {
            grok1::convert::convert_to_ckpt(&cfg, weights, &args.out, &bar).with_context(context)?
        }
        (format, Some(scheme)) => {
            let format = match format {
                ConvertFormat::Safetensors => OutFormat::Safetensors,
                _ => OutFormat::Gguf,
            };
            let options = ConvertOptions {
                format,
                scheme,
                imatrix: imatrix.as_ref(),
            };
            let report = convert_with(&cfg, weights, Some(&tokenizer), &options, &args.out, &bar)
                .with_context(|| match &args.imatrix {
                Some(path) => format!(
                    "{} with the importance matrix {}",
                    context(),
                    path.display()
                ),
                None => context(),
            })?;
            if let Some(path) = &args.imatrix {
                eprintln!(
                    "grok1: {} matrices quantised with importance from {}",
                    report.weighted_matrices,
                    path.display()
                );
            }
            report
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

/// The tokenizer a conversion writes (`--tokenizer`, else the one found
/// beside the model), after checking that `--out` overlaps none of the files
/// read: the model's `sources`, `--model` itself and that tokenizer.
fn tokenizer_beside(
    args: &ConvertArgs,
    sources: &[PathBuf],
    found: Option<&Path>,
) -> anyhow::Result<Tokenizer> {
    let tokenizer_path = args.tokenizer.as_deref().or(found);
    let tokenizer = model_source::tokenizer(tokenizer_path)?;
    let read: Vec<&Path> = sources
        .iter()
        .map(PathBuf::as_path)
        .chain([args.model.as_path()])
        .chain(tokenizer_path)
        .collect();
    refuse_overlap(&args.out, &read)?;
    Ok(tokenizer)
}

/// `grok1 convert --shards N`: a shard set under `--out`.
fn convert_shards(
    args: &ConvertArgs,
    scheme: grok1::convert::Scheme,
    ranks: usize,
    imatrix: Option<&grok1::imatrix::Imatrix>,
) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(true);
    let opened = grok1::load::open_model(&args.model, &bar)?;
    let tokenizer = tokenizer_beside(args, &opened.sources, opened.tokenizer_file.as_deref())?;
    if args.force {
        clear_previous_shard_set(&args.out)?;
    }
    let format = match args.format {
        ConvertFormat::Safetensors => OutFormat::Safetensors,
        _ => OutFormat::Gguf,
    };
    let options = ConvertOptions {
        format,
        scheme,
        imatrix,
    };
    let started = Instant::now();
    let report = grok1::convert::shards::write_shard_set(
        &opened.config,
        &opened.store,
        Some(&tokenizer),
        &options,
        ranks,
        &args.out,
        &bar,
    )
    .with_context(|| {
        format!(
            "converting {} to a shard set of {ranks} ranks in {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    let mb = |b: u64| b as f64 / 1e6;
    let largest = report
        .ranks
        .iter()
        .map(|r| r.bytes_written)
        .max()
        .unwrap_or(0);
    eprintln!(
        "grok1: wrote a shard set of {ranks} ranks to {}: {:.1} MB in all, {:.1} MB the largest rank, in {secs:.1} s{}",
        args.out.display(),
        mb(report.bytes_written()),
        mb(largest),
        peak_rss_kib()
            .map(|k| format!(", peak RSS {:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// With `--force --shards`: removes a previous shard set at `out` (an empty
/// directory too); refuses anything else, naming what is not a set's.
fn clear_previous_shard_set(out: &Path) -> anyhow::Result<()> {
    let meta = match out.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    if !meta.is_dir() {
        bail!(
            "--force replaces only a previous shard set, and {} is {}, not a directory",
            out.display(),
            grok1::files::kind_of(&meta)
        );
    }
    let removing = || format!("removing {}", out.display());
    if let Some(entry) = grok1::weights::shard_set::foreign_entry(out).with_context(removing)? {
        bail!(
            "--force replaces only a previous shard set, and {} holds {}, which is not part of one; remove it yourself or choose another --out",
            out.display(),
            entry.display()
        );
    }
    std::fs::remove_dir_all(out).with_context(removing)
}

/// `path` absolute, with symlinks and `..` resolved as far as it exists (the
/// rest, not yet created, cannot hold a symlink).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut real) = std::fs::canonicalize(existing) {
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        real.pop();
                    }
                    Component::Normal(name) => real.push(name),
                    _ => {}
                }
            }
            return Ok(real);
        }
        let Some(parent) = existing.parent() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no part of the path exists",
            ));
        };
        rest.extend(existing.components().next_back());
        existing = parent;
    }
}

/// What makes two paths the same file or directory: device and inode, so
/// that a hard link or a bind mount of the model is recognised too.
#[cfg(unix)]
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// Refuses an `--out` that is, lies inside, or contains a file or directory
/// the model was read from (its files, its directory, its config, its
/// tokenizer): writing or `--force` there would destroy the source.
fn refuse_overlap(out: &Path, sources: &[&Path]) -> anyhow::Result<()> {
    let out_real = resolve(out).with_context(|| format!("resolving {}", out.display()))?;
    let out_id = identity(&out_real);
    for &source in sources {
        let source_real = std::fs::canonicalize(source)
            .with_context(|| format!("resolving {}", source.display()))?;
        let source_id = identity(&source_real);
        if source_id.is_some() && out_real.ancestors().any(|a| identity(a) == source_id) {
            let relation = if out_id == source_id {
                "is"
            } else {
                "lies inside"
            };
            bail!(
                "--out {} {relation} {}, which the model is read from; choose an --out outside the model",
                out.display(),
                source.display()
            );
        }
        if out_id.is_some() && source_real.ancestors().any(|a| identity(a) == out_id) {
            bail!(
                "--out {} contains {}, which the model is read from; --force never removes the model being converted",
                out.display(),
                source.display()
            );
        }
    }
    Ok(())
}

/// With `--force`: makes way for the output at `out`. A directory is removed
/// only when it holds nothing but a previous conversion's output; a regular
/// file is removed for a directory format (a GGUF replaces it whole when
/// written, and writes through a FIFO or device).
fn clear_previous_output(out: &Path, format: ConvertFormat) -> anyhow::Result<()> {
    let meta = match out.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    let removing = || format!("removing {}", out.display());
    let directory_output = !matches!(format, ConvertFormat::Gguf);
    if meta.is_dir() {
        let foreign = grok1::convert::foreign_entry(out).with_context(removing)?;
        if let Some(entry) = foreign {
            bail!(
                "--force replaces only a previous output, and {} holds {}, which `grok1 convert` does not write; remove it yourself or choose another --out",
                out.display(),
                entry.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(removing)?;
    } else if directory_output && meta.is_file() {
        std::fs::remove_file(out).with_context(removing)?;
    } else if directory_output {
        bail!(
            "{} is {}: a --format {} output is a directory; choose another --out",
            out.display(),
            grok1::files::kind_of(&meta),
            format!("{format:?}").to_lowercase()
        );
    }
    Ok(())
}
