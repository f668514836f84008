//! `grok1 serve`: the OpenAI-compatible server, and the engine settings it
//! shares with `grok1 chat`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use grok1::engine::{EngineConfig, EngineHandle};
use grok1::Grok1;
use grok1_server::{AppState, ConnectionLimits, HeaderValue, ServerConfig};

use crate::args::{EngineArgs, ServeArgs};
use crate::model_source;

/// Sets the worker thread count, once, before any parallel work.
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(threads) = threads {
        anyhow::ensure!(threads > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("setting the thread count")?;
    }
    Ok(())
}

/// Bytes of physical memory, where the system says (Linux's /proc/meminfo).
fn physical_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The engine's limits from the flags and the model.
pub fn engine_config(
    args: &EngineArgs,
    model: &Grok1,
    precision: grok1::Precision,
    kv_type: grok1::KvType,
) -> anyhow::Result<EngineConfig> {
    anyhow::ensure!(args.max_batch > 0, "--max-batch must be at least 1");
    anyhow::ensure!(args.prefill_chunk > 0, "--prefill-chunk must be at least 1");
    let context = args.ctx.unwrap_or(model.config().sequence_len);
    anyhow::ensure!(context > 0, "--ctx must be at least 1");
    anyhow::ensure!(
        context <= model.config().sequence_len,
        "--ctx {context} is longer than the model's context ({})",
        model.config().sequence_len
    );
    let per_token = grok1::KvCache::bytes_per_token(model.config(), kv_type);
    let kv_tokens = match (args.kv_tokens, args.kv_memory) {
        (Some(tokens), _) => tokens,
        (None, Some(mib)) => {
            let tokens =
                grok1::KvCache::tokens_in(model.config(), mib.saturating_mul(1 << 20), kv_type);
            anyhow::ensure!(
                tokens >= context,
                "--kv-memory {mib} MiB holds {tokens} tokens at --kv-type {kv_type} ({per_token} bytes each), not one request of --ctx {context} tokens"
            );
            tokens
        }
        (None, None) => (context.saturating_mul(args.max_batch) / 4).max(context),
    };
    anyhow::ensure!(
        kv_tokens >= context,
        "--kv-tokens {kv_tokens} cannot hold one request of --ctx {context} tokens"
    );
    // The cache is allocated whole at start: a size past the machine's memory
    // (or past what an allocation can express) would abort, not fail.
    let kv_bytes = per_token.checked_mul(kv_tokens);
    let memory = physical_memory();
    if kv_bytes.is_none_or(|b| b > isize::MAX as usize || memory.is_some_and(|m| b > m)) {
        let needs = kv_bytes.map_or("more bytes than a 64-bit size holds".to_string(), |b| {
            format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        });
        let has = memory.map_or(String::new(), |m| {
            format!(
                " (this machine has {:.1} GiB)",
                m as f64 / (1u64 << 30) as f64
            )
        });
        anyhow::bail!(
            "a KV cache of {kv_tokens} tokens needs {needs}{has}; lower --kv-tokens or --kv-memory (or --max-batch, which sets the default)"
        );
    }
    Ok(EngineConfig {
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        context,
        kv_tokens,
        prefill_chunk: args.prefill_chunk,
        precision,
        prefix_cache: !args.no_prefix_cache,
        kv_type,
    })
}

/// Fewer connections than this cannot serve a batch and its health checks.
const MIN_CONNECTIONS: usize = 8;

/// The connection cap: `--max-connections`, or what the descriptor limit leaves.
fn max_connections(flag: Option<usize>) -> anyhow::Result<usize> {
    let budget = grok1_server::descriptor_budget();
    let describe = |b: &grok1_server::DescriptorBudget| {
        format!(
            "the descriptor limit (RLIMIT_NOFILE {}) with {} descriptors open leaves room for {} connections",
            b.limit, b.open, b.connections
        )
    };
    match (flag, budget) {
        (Some(0), _) => anyhow::bail!("--max-connections must be at least 1"),
        (Some(n), Some(b)) if n > b.connections => anyhow::bail!(
            "--max-connections {n} does not fit: {}; raise the limit (ulimit -n) or ask for fewer",
            describe(&b)
        ),
        (Some(n), _) => Ok(n),
        (None, Some(b)) if b.connections < MIN_CONNECTIONS => {
            anyhow::bail!("{}; raise it (ulimit -n) to serve", describe(&b))
        }
        (None, Some(b)) => Ok(b.connections),
        (None, None) => Ok(1024),
    }
}

/// The `--cors-origin` values: `*`, or a scheme and host with an optional port
/// and no path (what browsers send in `Origin`).
fn cors_origins(flags: &[String]) -> anyhow::Result<Vec<HeaderValue>> {
    flags
        .iter()
        .map(|origin| {
            let shaped = origin == "*"
                || origin.split_once("://").is_some_and(|(scheme, host)| {
                    matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
                });
            anyhow::ensure!(
                shaped,
                "--cors-origin {origin:?}: expected `*` or an origin such as http://localhost:3000 (scheme and host, no path)"
            );
            HeaderValue::from_str(origin)
                .with_context(|| format!("--cors-origin {origin:?} is not a valid header value"))
        })
        .collect()
}

/// Timeouts and the connection cap from the flags.
fn connection_limits(args: &ServeArgs) -> anyhow::Result<ConnectionLimits> {
    anyhow::ensure!(
        args.header_timeout > 0,
        "--header-timeout must be at least 1"
    );
    anyhow::ensure!(args.body_timeout > 0, "--body-timeout must be at least 1");
    Ok(ConnectionLimits {
        header_timeout: Duration::from_secs(args.header_timeout),
        body_timeout: Duration::from_secs(args.body_timeout),
        max_connections: max_connections(args.max_connections)?,
    })
}

/// What rank 0 makes before the ranks part: the tokenizer, the connection
/// limits, and the listening socket.
fn serve_setup(
    args: &ServeArgs,
    loaded: &grok1::LoadedModel,
) -> anyhow::Result<(
    Arc<grok1_tokenizer::Tokenizer>,
    ConnectionLimits,
    std::net::TcpListener,
)> {
    let tokenizer = Arc::new(model_source::model_tokenizer(
        loaded,
        args.tokenizer.as_deref(),
    )?);
    let limits = connection_limits(args)?;
    let listener = std::net::TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("serving on {}:{}", args.host, args.port))?;
    Ok((tokenizer, limits, listener))
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Checked before the model takes its time to load.
    let cors = cors_origins(&args.cors_origins)?;
    set_threads(args.engine.threads)?;
    let loaded = model_source::load_args(&args.model)?;
    let precision = args.model.precision();
    let kv_type = args.model.kv_type(precision);
    // Checked by every rank against its own memory.
    let engine_config = crate::parallel::agree(engine_config(
        &args.engine,
        &loaded.model,
        precision,
        kv_type,
    ))?;
    // Rank 0 reads the tokenizer, takes the connection limits and binds the
    // port before the others start following it, and every rank learns
    // whether that failed: a refusal after they parted (a port in use)
    // would end the job by MPI_Abort.
    let setup = crate::parallel::agree(if crate::parallel::is_root() {
        serve_setup(&args, &loaded).map(Some)
    } else {
        Ok(None)
    })?;
    // Limited from here: the others wait for rank 0's setup above without
    // a limit, as for their own loading.
    crate::parallel::arm_wait_limit();
    // Under mpirun rank 0 serves; the others run the steps it plans.
    if let Some(done) = crate::parallel::follow_engine(&loaded.model, &engine_config)? {
        return Ok(done);
    }
    let Some((tokenizer, limits, listener)) = setup else {
        unreachable!("follow_engine returns None on rank 0 alone, which read the setup")
    };
    let model = loaded.model;
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| model.config().name.clone());
    let eos = model.config().eos_token;
    // Checked against memory in `engine_config`.
    let kv_bytes =
        grok1::KvCache::bytes_per_token(model.config(), kv_type) * engine_config.kv_tokens;
    eprintln!(
        "grok1: model `{name}`; batch {} + queue {}; context {}; KV cache {} tokens of {kv_type} ({:.1} MiB, taken as used)",
        engine_config.max_batch,
        engine_config.max_queue,
        engine_config.context,
        engine_config.kv_tokens,
        kv_bytes as f64 / (1 << 20) as f64
    );
    let engine = EngineHandle::start(model, tokenizer.clone(), engine_config);
    let mut state = AppState::new(engine, tokenizer, name, eos, args.api_key.clone());
    state.cors_origins = cors;
    eprintln!(
        "grok1: at most {} connections; {} s for a request head (or idle keep-alive), {} s for a body",
        limits.max_connections,
        limits.header_timeout.as_secs(),
        limits.body_timeout.as_secs()
    );
    let config = ServerConfig {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        model_name: state.model_name.clone(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        limits,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let auth = if config.api_key.is_some() {
        "bearer key required"
    } else {
        "no API key"
    };
    runtime
        .block_on(grok1_server::serve_bound(
            listener,
            state,
            &config,
            |addr| {
                eprintln!("grok1: listening on http://{addr} ({auth}); Ctrl-C to stop");
            },
        ))
        .with_context(|| format!("serving on {}:{}", config.host, config.port))?;
    eprintln!("grok1: stopped");
    Ok(ExitCode::SUCCESS)
}
