//! `grok1 bench`: prompt-processing and generation speed, printed like
//! llama-bench, with the weight bytes read per token, the memory bandwidth
//! measured in the same run and the fraction of that roofline reached.

use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use grok1::bench::{self, stddev, summarize, BenchResult, BenchSpec};
use serde_json::json;

use crate::args::BenchArgs;
use crate::model_source;

/// Under mpirun only rank 0 prints (every rank runs the same measurements).
macro_rules! say {
    ($($t:tt)*) => {
        if crate::parallel::is_root() {
            println!($($t)*)
        }
    };
}

/// [`say`] for stderr.
macro_rules! note {
    ($($t:tt)*) => {
        if crate::parallel::is_root() {
            eprintln!($($t)*)
        }
    };
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

struct Row<'a> {
    model: &'a str,
    size_gib: f64,
    params_b: f64,
    backend: &'a str,
    threads: usize,
}

impl Row<'_> {
    fn print(&self, test: &str, rates: &[f64]) {
        let (median, min, max) = summarize(rates);
        say!(
            "| {} | {:.2} GiB | {:.2} B | {} | {} | {test} | {median:.2} ({min:.2} - {max:.2}) |",
            self.model,
            self.size_gib,
            self.params_b,
            self.backend,
            self.threads
        );
    }
}

/// What a run is of, recorded in every JSON line as llama-bench does.
struct RunInfo {
    model: String,
    /// The `--model` path; None for the built-in demo model.
    model_path: Option<String>,
    model_size_bytes: u64,
    model_params: u64,
    precision: String,
    backend: String,
    threads: usize,
    /// When the run started, RFC 3339 in UTC.
    timestamp: String,
}

fn summary_json(
    spec: &BenchSpec,
    r: &BenchResult,
    bandwidth: f64,
    info: &RunInfo,
) -> serde_json::Value {
    let (pp, pp_min, pp_max) = summarize(&r.prompt_tokens_per_s);
    let (tg, tg_min, tg_max) = summarize(&r.gen_tokens_per_s);
    let per_token = r.weight_bytes_per_step / spec.batch.max(1) as f64;
    let roofline = if r.weight_bytes_per_step > 0.0 {
        bandwidth * 1e9 / r.weight_bytes_per_step * spec.batch as f64
    } else {
        0.0
    };
    json!({
        "model": info.model,
        "model_path": info.model_path,
        "model_size_bytes": info.model_size_bytes,
        "model_params": info.model_params,
        "precision": info.precision,
        "backend": info.backend,
        "threads": info.threads,
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("GROK1_COMMIT"),
        "timestamp": info.timestamp,
        "prompt_tokens": spec.prompt_tokens,
        "gen_tokens": spec.gen_tokens,
        "batch": spec.batch,
        "depth": spec.depth,
        "kv_type": spec.kv_type.name(),
        "repeat": spec.repeat,
        "prompt_tokens_per_s": pp,
        "prompt_tokens_per_s_min": pp_min,
        "prompt_tokens_per_s_max": pp_max,
        "prompt_tokens_per_s_stddev": stddev(&r.prompt_tokens_per_s),
        "prompt_gflops": pp * r.flops_per_prompt_token / 1e9,
        "gen_tokens_per_s": tg,
        "gen_tokens_per_s_min": tg_min,
        "gen_tokens_per_s_max": tg_max,
        "gen_tokens_per_s_stddev": stddev(&r.gen_tokens_per_s),
        "weight_bytes_per_step": r.weight_bytes_per_step,
        "weight_bytes_per_token": per_token,
        "distinct_experts_per_step": r.experts_per_step,
        "mem_bandwidth_gbs": bandwidth,
        "roofline_gen_tokens_per_s": roofline,
        "roofline_fraction": if roofline > 0.0 { tg / roofline } else { 0.0 },
        "ranks": crate::parallel::size(),
        "prompt_comm_fraction": r.prompt_comm_fraction,
        "gen_comm_fraction": r.gen_comm_fraction,
        "gen_comm_bytes_per_token": r.gen_comm_bytes_per_token,
    })
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("setting the thread count")?;
    }
    anyhow::ensure!(args.repeat > 0, "--repeat must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let threads = rayon::current_num_threads();
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("formatting the start time")?;
    let loaded = model_source::load_args(&args.model)?;
    crate::parallel::arm_wait_limit();
    let model = &loaded.model;
    let cfg = model.config();
    anyhow::ensure!(
        args.depth.saturating_add(args.prompt_tokens) <= cfg.sequence_len,
        "--depth {} plus --prompt-tokens {} is longer than the model's context ({})",
        args.depth,
        args.prompt_tokens,
        cfg.sequence_len
    );
    anyhow::ensure!(
        args.depth < cfg.sequence_len,
        "--depth {} leaves no room to generate in the model's context ({})",
        args.depth,
        cfg.sequence_len
    );
    // Test names as llama-bench writes them ("pp512 @ d4096").
    let at = if args.depth > 0 {
        format!(" @ d{}", args.depth)
    } else {
        String::new()
    };
    note!(
        "grok1: measuring memory read bandwidth on {} MiB...",
        args.bandwidth_mib
    );
    // The roofline is the best bandwidth the memory gave during the run: on a
    // shared machine one probe can land in a neighbour's burst and read low
    // (the decode then seemed to beat it), so it is probed again after each
    // test and the best reading kept.
    let probe = || bench::memory_bandwidth(args.bandwidth_mib << 20, 5);
    let mut bandwidth = probe();
    let backend = model.backend().name();
    let backend = backend.split(" (").next().unwrap_or("cpu").to_string();
    let params = cfg.parameter_count();
    let size = model.weights().byte_len();
    let row = Row {
        model: &cfg.name,
        size_gib: gib(size),
        params_b: params as f64 / 1e9,
        backend: &backend,
        threads,
    };
    let info = RunInfo {
        model: cfg.name.clone(),
        model_path: args.model.model.as_ref().map(|p| p.display().to_string()),
        model_size_bytes: size,
        model_params: params,
        precision: args
            .model
            .precision
            .and_then(|p| p.to_possible_value())
            .map_or("fast".to_string(), |v| v.get_name().to_string()),
        backend: backend.clone(),
        threads,
        timestamp,
    };
    let mut report = |line: &str| note!("grok1: bench {line}");
    let main_spec = BenchSpec {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        batch: args.batch,
        depth: args.depth,
        repeat: args.repeat,
        seed: args.seed,
        precision: args.model.precision(),
        kv_type: args.model.kv_type(args.model.precision()),
    };
    if !args.json {
        say!("| model | size | params | backend | threads | test | t/s (median, min - max) |");
        say!("| --- | ---: | ---: | --- | ---: | --- | ---: |");
    }
    if args.sweep {
        let mut lines = Vec::new();
        for p in [16, 64, 128, 512]
            .into_iter()
            .filter(|&p| args.depth + p <= cfg.sequence_len)
        {
            let spec = BenchSpec {
                prompt_tokens: p,
                gen_tokens: 0,
                ..main_spec.clone()
            };
            let r = bench::run(model, &spec, &mut report)?;
            bandwidth = bandwidth.max(probe());
            if args.json {
                lines.push(summary_json(&spec, &r, bandwidth, &info));
            } else {
                row.print(&format!("pp{p}{at}"), &r.prompt_tokens_per_s);
            }
        }
        for b in [1, 2, 4, 8] {
            let spec = BenchSpec {
                prompt_tokens: 0,
                batch: b,
                ..main_spec.clone()
            };
            let r = bench::run(model, &spec, &mut report)?;
            bandwidth = bandwidth.max(probe());
            if args.json {
                lines.push(summary_json(&spec, &r, bandwidth, &info));
            } else {
                let j = summary_json(&spec, &r, bandwidth, &info);
                row.print(
                    &format!("tg{} batch {b}{at}", spec.gen_tokens),
                    &r.gen_tokens_per_s,
                );
                say!(
                    "|  |  |  |  |  | (batch {b}: {:.2} GB read per step, {:.2} experts per layer, {:.0}% of the roofline) |  |",
                    r.weight_bytes_per_step / 1e9,
                    r.experts_per_step,
                    100.0 * j["roofline_fraction"].as_f64().unwrap_or(0.0)
                );
            }
        }
        for l in lines {
            say!("{l}");
        }
    }
    let r = bench::run(model, &main_spec, &mut report)?;
    bandwidth = bandwidth.max(probe());
    let summary = summary_json(&main_spec, &r, bandwidth, &info);
    if args.json {
        say!("{summary}");
    } else {
        if main_spec.prompt_tokens > 0 {
            row.print(
                &format!("pp{}{at}", main_spec.prompt_tokens),
                &r.prompt_tokens_per_s,
            );
        }
        if main_spec.gen_tokens > 0 {
            row.print(
                &format!("tg{} batch {}{at}", main_spec.gen_tokens, main_spec.batch),
                &r.gen_tokens_per_s,
            );
        }
        say!();
        say!(
            "prompt processing: {:.1} GFLOP/s ({:.2} GFLOP per token in the matrix products)",
            summary["prompt_gflops"].as_f64().unwrap_or(0.0),
            r.flops_per_prompt_token / 1e9
        );
        say!(
            "generation: {:.3} GB of weights read per step ({:.3} GB per token; {:.2} of {} experts per layer per step)",
            r.weight_bytes_per_step / 1e9,
            summary["weight_bytes_per_token"].as_f64().unwrap_or(0.0) / 1e9,
            r.experts_per_step,
            cfg.num_experts
        );
        say!(
            "memory read bandwidth (best of the probes in this run): {bandwidth:.1} GB/s; roofline {:.2} tokens/s; reached {:.0}%",
            summary["roofline_gen_tokens_per_s"].as_f64().unwrap_or(0.0),
            100.0 * summary["roofline_fraction"].as_f64().unwrap_or(0.0)
        );
        let ranks = crate::parallel::size();
        if ranks > 1 {
            say!(
                "tensor parallel over {ranks} ranks (rank 0's figures): communication {:.1}% of prompt processing, {:.1}% of generation; {:.1} KiB sent per generated token",
                100.0 * r.prompt_comm_fraction,
                100.0 * r.gen_comm_fraction,
                r.gen_comm_bytes_per_token / 1024.0
            );
        }
        say!("(times exclude tokenization and sampling; tokens are random ids)");
    }
    Ok(ExitCode::SUCCESS)
}
