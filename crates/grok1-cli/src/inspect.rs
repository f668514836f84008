//! `grok1 inspect` and `grok1 init`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use grok1::progress::NoProgress;
use grok1::weights::{ckpt0, gguf, safetensors, TensorKind};
use grok1::ModelConfig;

use crate::args::{InitArgs, InspectArgs, Preset};
use crate::progress::Bar;

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// `inspect` of a GGUF model: header, metadata (arrays summarised), tensors.
fn inspect_gguf(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let model = gguf::GgufModel::open(file)?;
    for part in &model.parts {
        println!(
            "file: {} (GGUF v{}, {} tensors, data at byte {})",
            part.path.display(),
            part.version,
            part.tensors.len(),
            part.data_start
        );
    }
    println!("metadata:");
    for (key, value) in &model.parts[0].metadata {
        println!("  {key} = {}", value.summary());
    }
    match model.config() {
        Ok(cfg) => println!(
            "config (from the metadata):\n{}",
            serde_json::to_string_pretty(&cfg)?
        ),
        Err(e) => println!("config: not a runnable Grok-1 model: {e}"),
    }
    print_tensor_table(&model.store);
    Ok(ExitCode::SUCCESS)
}

/// `inspect` of a Hugging Face safetensors model.
fn inspect_safetensors(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let model = safetensors::SafetensorsModel::open(dir)?;
    for f in &model.files {
        println!("file: {}", f.display());
    }
    match model.config() {
        Ok(cfg) => println!(
            "config (from config.json and the tensors):\n{}",
            serde_json::to_string_pretty(&cfg)?
        ),
        Err(e) => println!("config: not a runnable Grok-1 model: {e}"),
    }
    print_tensor_table(&model.store);
    Ok(ExitCode::SUCCESS)
}

/// The tensors of a row-stored model, then totals by type.
fn print_tensor_table(store: &grok1::weights::TensorStore) {
    println!();
    println!(
        "{:>5}  {:<52} {:<8} {:<24} {:>12}",
        "index", "name", "type", "shape", "bytes"
    );
    let mut by_type: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let (mut params, mut bytes) = (0u64, 0u64);
    for (i, t) in store.iter().enumerate() {
        let label = t.dtype_label();
        let entry = by_type.entry(label.clone()).or_default();
        entry.0 += 1;
        entry.1 += t.byte_count() as u64;
        params += t.element_count() as u64;
        bytes += t.byte_count() as u64;
        println!(
            "{i:>5}  {:<52} {label:<8} {:<24} {:>12}",
            t.name,
            format!("{:?}", t.shape()),
            t.byte_count()
        );
    }
    println!();
    let types: Vec<String> = by_type
        .iter()
        .map(|(k, (n, b))| format!("{k} {n} tensors {}", human_bytes(*b)))
        .collect();
    println!(
        "{} tensors, {params} parameters ({:.3} B), {} of payload ({:.2} bits per weight): {}",
        store.len(),
        params as f64 / 1e9,
        human_bytes(bytes),
        bytes as f64 * 8.0 / params.max(1) as f64,
        types.join(", ")
    );
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    if grok1::weights::shard_set::is_shard_set(&args.model) {
        return inspect_shard_set(&args.model);
    }
    if let Some(file) = gguf::find(&args.model)? {
        return inspect_gguf(&file);
    }
    if safetensors::is_safetensors_dir(&args.model) {
        return inspect_safetensors(&args.model);
    }
    let paths = ckpt0::locate(&args.model)?;
    let (config, source) = match &paths.config {
        Some(p) => (ModelConfig::load(p)?, p.display().to_string()),
        None => (
            ModelConfig::grok1(),
            "no config.json: the grok-1 preset".to_string(),
        ),
    };
    let store = ckpt0::read_checkpoint(
        &paths.tensors,
        &config,
        paths.config.as_deref(),
        &NoProgress,
    )?;
    let mut shown = config.clone();
    shown.tensors = None;
    shown.num_tensors = None;
    println!("checkpoint: {}", paths.tensors.display());
    println!("config ({source}):");
    println!("{}", serde_json::to_string_pretty(&shown)?);
    println!();
    println!(
        "{:>5}  {:<16} {:<52} {:<14} {:<18} {:>6} {:>12}",
        "index", "file", "path", "dtype", "shape", "groups", "bytes"
    );
    let (mut params, mut bytes, mut int8_bytes, mut scale_bytes, mut f32_bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, t) in store.iter().enumerate() {
        let file = t
            .file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let groups = match &t.kind {
            TensorKind::Int8Grouped(q) => {
                int8_bytes += q.weight.len() as u64;
                scale_bytes += q.scales.len() as u64;
                q.groups.to_string()
            }
            TensorKind::Dense(d) => {
                f32_bytes += d.data.len() as u64;
                "-".to_string()
            }
            TensorKind::Blocks(_) => "-".to_string(),
        };
        params += t.element_count() as u64;
        bytes += t.byte_count() as u64;
        println!(
            "{i:>5}  {file:<16} {:<52} {:<14} {:<18} {groups:>6} {:>12}",
            t.name,
            t.dtype_label(),
            format!("{:?}", t.shape()),
            t.byte_count()
        );
    }
    println!();
    println!(
        "{} tensors, {params} parameters ({:.3} B), {bytes} bytes of payload ({}): int8 weights {}, scales {}, float tensors {}",
        store.len(),
        params as f64 / 1e9,
        human_bytes(bytes),
        human_bytes(int8_bytes),
        human_bytes(scale_bytes),
        human_bytes(f32_bytes),
    );
    Ok(ExitCode::SUCCESS)
}

/// A shard set (`convert --shards N`): its ranks and their files; each
/// rank's directory is inspected as the model file it holds.
fn inspect_shard_set(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (set, ranks) = grok1::weights::shard_set::describe(dir)?;
    println!(
        "shard set: {} ({} ranks, fingerprint {})",
        dir.display(),
        set.ranks,
        set.fingerprint
    );
    println!("split: {}", set.split);
    for (path, m) in &ranks {
        let files: Vec<String> = m
            .files
            .iter()
            .map(|f| format!("{} ({} bytes)", f.name, f.bytes))
            .collect();
        println!(
            "rank {} of {}: {} ({:?}, {} tensors): {}",
            m.rank,
            m.ranks,
            path.display(),
            m.format,
            m.tensors.len(),
            files.join(", ")
        );
    }
    if ranks.len() < set.ranks {
        println!(
            "{} of {} rank directories are here (each machine needs only its own)",
            ranks.len(),
            set.ranks
        );
    }
    println!("(inspect a rank's directory for its tensors)");
    Ok(ExitCode::SUCCESS)
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let mut config = match (args.preset, &args.config) {
        (_, Some(path)) => ModelConfig::load(path)?,
        (Some(Preset::Tiny), None) => ModelConfig::tiny(),
        (Some(Preset::Grok1), None) | (None, None) => ModelConfig::grok1(),
    };
    if let Some(layers) = args.layers {
        anyhow::ensure!(layers > 0, "--layers must be at least 1");
        if layers != config.num_layers {
            config.name = format!("{} ({layers} of {} layers)", config.name, config.num_layers);
        }
        config.num_layers = layers;
    }
    if let Some(vocab) = args.vocab {
        config.vocab_size = vocab;
    }
    config.seed = Some(args.seed);
    config.emb_std.get_or_insert(0.006);
    config.validate()?;
    let layout_bytes: u64 = ckpt0::checkpoint_layout(&config)
        .iter()
        .map(|s| {
            let elements = s.element_count() as u64;
            match s.scales_shape() {
                Some(scales) => elements + 2 * scales.iter().product::<usize>() as u64,
                None => 4 * elements,
            }
        })
        .sum();
    eprintln!(
        "grok1: writing {} ({} layers, vocab {}), {} of weights, to {}",
        config.name,
        config.num_layers,
        config.vocab_size,
        human_bytes(layout_bytes),
        args.out.display()
    );
    let started = Instant::now();
    ckpt0::write_random_checkpoint(&args.out, &config, args.seed, &Bar::new(true))
        .context("writing the checkpoint")?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "grok1: wrote {} tensor files in {secs:.1} s ({:.0} MB/s)",
        ckpt0::checkpoint_layout(&config).len(),
        layout_bytes as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
