//! `grok1 eval`: a benchmark through the engine or a server, with a progress
//! bar, a per-item result file and the final table.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use grok1::engine::{EngineConfig, EngineHandle};
use grok1_eval::backend::{DirectEngine, HttpEngine, TokenBackend};
use grok1_eval::runner::{self, Progress, RunOptions};
use grok1_eval::sandbox::{self, Limits, Sandbox};
use grok1_eval::{report, Backend, ScriptedBackend, Task};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{EvalArgs, SandboxExecArgs};
use crate::{model_source, serve};

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    crate::parallel::refuse_split(
        args.server.is_some() || args.samples.is_some(),
        "`grok1 eval --server` or `--samples` (no model to split)",
    )?;
    if !crate::parallel::is_root() {
        // Rank 0's checks of the data and the sandbox, shared.
        crate::parallel::agree(Ok(()))?;
        return follow(&args);
    }
    // Under mpirun the other ranks learn whether these checks failed (they
    // would wait for rank 0 until the wait limit and end the job by
    // MPI_Abort).
    let (task, shots, items, known, sandbox) = crate::parallel::agree(checks(&args))?;

    let options = RunOptions {
        concurrency: args.concurrency,
        limit: args.limit,
        seed: args.seed,
        out: args.out.clone(),
    };
    // What answered: the samples file, the server's model or the model loaded.
    let model_label: String;
    let (records, engine) = match (&args.server, &args.samples) {
        (_, Some(samples)) => {
            let backend = ScriptedBackend::from_samples(samples, &known, &items)?;
            model_label = format!("samples:{}", samples.display());
            eprintln!(
                "grok1: scoring {task} samples from {} ({} items)",
                samples.display(),
                items.len()
            );
            (
                run(task, &items, &backend, sandbox.as_ref(), &options)?,
                None,
            )
        }
        (Some(url), None) => {
            let tokenizer = Arc::new(model_source::tokenizer(args.tokenizer.as_deref())?);
            let http = HttpEngine::connect(
                url,
                args.api_key.clone(),
                args.server_model.clone(),
                args.engine.ctx,
            )?;
            eprintln!(
                "grok1: {task} on {} items through {url} (model `{}`), {} in flight",
                items.len(),
                http.model(),
                args.concurrency
            );
            model_label = http.model().to_string();
            let backend = TokenBackend::new(http, tokenizer);
            (
                run(task, &items, &backend, sandbox.as_ref(), &options)?,
                None,
            )
        }
        (None, None) => {
            serve::set_threads(args.engine.threads)?;
            let loaded = model_source::load_args(&args.model)?;
            crate::parallel::arm_wait_limit();
            let config = crate::parallel::agree(engine_config(&args, &loaded.model))?;
            let tokenizer = crate::parallel::agree(
                model_source::model_tokenizer(&loaded, args.tokenizer.as_deref()).map(Arc::new),
            )?;
            // Under mpirun, checks that the other ranks' settings agree.
            crate::parallel::follow_engine(&loaded.model, &config)?;
            let model = loaded.model;
            let eos = Some(model.config().eos_token);
            let name = model.config().name.clone();
            model_label = args
                .model
                .model
                .as_ref()
                .map_or_else(|| name.clone(), |p| p.display().to_string());
            let handle = EngineHandle::start(model, tokenizer.clone(), config);
            eprintln!(
                "grok1: {task} on {} items with model `{name}`, {} in flight",
                items.len(),
                args.concurrency
            );
            let backend = TokenBackend::new(
                DirectEngine {
                    handle: handle.clone(),
                    eos,
                },
                tokenizer,
            );
            let result = run(task, &items, &backend, sandbox.as_ref(), &options);
            (result?, Some(handle))
        }
    };
    if let Some(engine) = engine {
        engine.shutdown(Duration::from_secs(1));
    }
    let scores = report::scores(task.name(), &records);
    print!("{}", report::table(&scores));
    if let Some(out) = &args.out {
        eprintln!("grok1: per-item results in {}", out.display());
    }
    if args.json {
        let value = serde_json::json!({
            "task": task.name(),
            "model": model_label,
            "limit": args.limit,
            "shots": shots,
            "seed": args.seed,
            "scores": scores,
        });
        println!("{value}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The run's task, shots, selected items (and every item's id: samples may
/// answer any) and the HumanEval sandbox, checked before any model time is
/// spent.
#[allow(clippy::type_complexity)]
fn checks(
    args: &EvalArgs,
) -> anyhow::Result<(
    Task,
    usize,
    Vec<grok1_eval::Item>,
    HashSet<String>,
    Option<Sandbox>,
)> {
    let task: Task = args.task.into();
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.exec_timeout > 0.0 && args.exec_timeout.is_finite(),
        "--exec-timeout must be a positive number of seconds"
    );
    let shots = args.shots.unwrap_or(task.default_shots());
    let items = grok1_eval::data::load(task, &args.data, shots)?;
    // Samples may answer any item of the data, not only those selected.
    let known: HashSet<String> = items.iter().map(|i| i.id.clone()).collect();
    let items = runner::select(items, args.limit, args.seed);
    anyhow::ensure!(!items.is_empty(), "--limit 0 leaves nothing to run");

    // The sandbox is checked before any model time is spent.
    let sandbox = if task == Task::HumanEval {
        let helper = std::env::current_exe().context("finding the grok1 binary for the sandbox")?;
        let memory = args
            .exec_memory_mb
            .checked_mul(1 << 20)
            .filter(|&m| m >= 32 << 20)
            .context("--exec-memory-mb must be at least 32 (Python needs that much to start) and fit in 64 bits as bytes")?;
        let limits = Limits {
            time: Duration::from_secs_f64(args.exec_timeout),
            memory,
            ..Limits::default()
        };
        let sandbox = Sandbox::new(helper, &args.python, limits)?;
        let probe = sandbox.run_python("import sys\n")?;
        anyhow::ensure!(
            probe.passed(),
            "the HumanEval sandbox cannot run Python: {}",
            probe.describe()
        );
        eprintln!("grok1: HumanEval samples get {}", sandbox.containment());
        Some(sandbox)
    } else {
        None
    };
    Ok((task, shots, items, known, sandbox))
}

/// The engine's settings for a local model.
fn engine_config(args: &EvalArgs, model: &grok1::Grok1) -> anyhow::Result<EngineConfig> {
    let precision = args.model.precision();
    let kv_type = args.model.kv_type(precision);
    let mut config = serve::engine_config(&args.engine, model, precision, kv_type)?;
    // Every request in flight gets a batch slot.
    config.max_batch = config.max_batch.max(args.concurrency.min(64));
    config.kv_tokens = config.kv_tokens.max(config.context * 2);
    Ok(config)
}

/// A rank other than 0 under mpirun: loads its part of the model and runs
/// the steps rank 0's engine plans (rank 0 reads the data and scores).
fn follow(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    serve::set_threads(args.engine.threads)?;
    let loaded = model_source::load_args(&args.model)?;
    crate::parallel::arm_wait_limit();
    // The same steps as rank 0's: its engine settings, then its tokenizer.
    let config = crate::parallel::agree(engine_config(args, &loaded.model))?;
    crate::parallel::agree(Ok(()))?;
    Ok(crate::parallel::follow_engine(&loaded.model, &config)?.unwrap_or(ExitCode::SUCCESS))
}

fn run(
    task: Task,
    items: &[grok1_eval::Item],
    backend: &dyn Backend,
    sandbox: Option<&Sandbox>,
    options: &RunOptions,
) -> anyhow::Result<Vec<grok1_eval::Record>> {
    let bar = ProgressBar::new(items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(task.name().to_string());
    let progress = |p: Progress| {
        bar.set_position(p.done as u64);
        if p.done > 0 {
            bar.set_message(format!(
                "{task} {:.1}%",
                100.0 * p.correct as f64 / p.done as f64
            ));
        }
    };
    let result = runner::run(task, items, backend, sandbox, options, &progress);
    bar.finish_and_clear();
    match (&result, &options.out) {
        (Err(_), Some(out)) => Ok(result.with_context(|| {
            format!(
                "the items finished so far are in {}; run again to resume",
                out.display()
            )
        })?),
        _ => Ok(result?),
    }
}

/// The sandbox helper (`grok1 sandbox-exec`): exits with the sample's status.
pub fn sandbox_exec(args: SandboxExecArgs) -> anyhow::Result<ExitCode> {
    let code = sandbox::helper_main(&sandbox::HelperArgs {
        root: args.root,
        python: args.python,
        seconds: args.seconds,
        memory: args.memory,
        processes: args.processes,
        file_size: args.file_size,
        binds: args.bind,
        cgroups: args.cgroup,
    });
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
