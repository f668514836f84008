//! The `grok1` command: run xAI's Grok-1 from its official checkpoint.

#![forbid(unsafe_code)]

mod args;
mod bench;
mod chat;
mod convert;
mod eval;
mod generate;
mod imatrix;
mod inspect;
mod model_source;
mod parallel;
mod progress;
mod serve;
mod tokenize;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// The subcommand's name, as typed.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Generate(_) => "generate",
        Command::Logits(_) => "logits",
        Command::Inspect(_) => "inspect",
        Command::Init(_) => "init",
        Command::Tokenize(_) => "tokenize",
        Command::Detokenize(_) => "detokenize",
        Command::Bench(_) => "bench",
        Command::Serve(_) => "serve",
        Command::Chat(_) => "chat",
        Command::Convert(_) => "convert",
        Command::Imatrix(_) => "imatrix",
        Command::Eval(_) => "eval",
        Command::SandboxExec(_) => "sandbox-exec",
        Command::Completions(_) => "completions",
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    parallel::check_command(command_name(&cli.command))?;
    match cli.command {
        Command::Generate(a) => generate::generate(a),
        Command::Logits(a) => generate::logits(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Init(a) => inspect::init(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Detokenize(a) => tokenize::detokenize(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Chat(a) => chat::chat(a),
        Command::Convert(a) => convert::convert(a),
        Command::Imatrix(a) => imatrix::imatrix(a),
        Command::Eval(a) => eval::eval(a),
        Command::SandboxExec(a) => eval::sandbox_exec(a),
        Command::Completions(a) => completions(a),
    }
}

/// Writes the completion script of `a.shell` to stdout.
fn completions(a: args::CompletionsArgs) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    clap_complete::generate(
        a.shell,
        &mut Cli::command(),
        "grok1",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

/// With `GROK1_PEAK_RSS=1`, reports the process's peak resident memory on exit
/// (Linux `VmHWM`): a measurement that, unlike a parent's rusage, does not count
/// the pages of whatever forked us.
fn report_peak_rss() {
    if std::env::var_os("GROK1_PEAK_RSS").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // Under mpirun every rank reports its own, labelled.
    let rank = match parallel::size() {
        1 => String::new(),
        _ => format!(" (rank {})", parallel::collective().rank()),
    };
    match status.lines().find(|l| l.starts_with("VmHWM:")) {
        Some(line) => eprintln!("grok1: peak RSS {}{rank}", line["VmHWM:".len()..].trim()),
        None => eprintln!("grok1: peak RSS unavailable on this platform{rank}"),
    }
}

/// Logs go to stderr, whatever the level: scripts read `generate`'s last
/// stdout line and `bench --json`'s JSON line. `--log-level` wins over
/// RUST_LOG; without either the level is info.
fn init_logging(flag: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

fn main() -> ExitCode {
    grok1::runtime::keep_freed_buffers();
    let cli = Cli::parse();
    if cli.check_args {
        // Nothing runs, MPI included: the parse above has accepted the line.
        eprintln!("grok1: arguments accepted: {}", command_name(&cli.command));
        return ExitCode::SUCCESS;
    }
    if let Err(err) = init_logging(cli.log_level.as_deref()) {
        eprintln!("grok1: error: {err}");
        return ExitCode::from(2);
    }
    let runtime = match parallel::start() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("grok1: error: {}", error_text(&err));
            return ExitCode::from(2);
        }
    };
    let result = run(cli);
    report_peak_rss();
    match result {
        Ok(code) => code,
        // A closed pipe (`grok1 generate ... | head`) is not an error (under
        // mpirun rank 0 told the others to stop before it returned).
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if parallel::size() > 1 => {
            // An error every rank reached together: rank 0 says it and all
            // end normally. Any other: the rank says it and ends the whole
            // job, whose other ranks may be waiting for it.
            let rank = parallel::collective().rank();
            // After rank 0 stopped its engine the others have gone home.
            let agreed = err.chain().any(is_agreed) || (rank == 0 && parallel::engine_stopped());
            if !agreed {
                eprintln!("grok1: error (rank {rank}): {}", error_text(&err));
                runtime.abort(2);
            } else if rank == 0 {
                eprintln!("grok1: error: {}", error_text(&err));
            }
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("grok1: error: {}", error_text(&err));
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error every rank of a job reaches at the same point: a command or
/// option not split yet, ranks holding different models or started with
/// different engine settings, a model that cannot be split (found once
/// every rank holds the same config and tensor table), or a step whose
/// failure the ranks shared (`parallel::agree`).
fn is_agreed(e: &(dyn std::error::Error + 'static)) -> bool {
    use grok1::parallel::ParallelError;
    use grok1::LoadError;
    let different = |p: &ParallelError| {
        matches!(
            p,
            ParallelError::DifferentModels { .. } | ParallelError::DifferentSettings { .. }
        )
    };
    e.downcast_ref::<parallel::NotSplit>().is_some()
        || e.downcast_ref::<parallel::Refused>().is_some()
        || e.downcast_ref::<ParallelError>().is_some_and(different)
        || match e.downcast_ref::<LoadError>() {
            Some(LoadError::Parallel(p)) => different(p),
            Some(LoadError::Build { .. }) => true,
            Some(LoadError::Shards(grok1::weights::shard_set::ShardSetError::Agreed {
                ..
            })) => true,
            _ => false,
        }
}

/// The error and its causes joined by ": ", as `{:#}` writes them, leaving
/// out a cause whose text the message already ends with (the library's
/// errors print their source after the path, and anyhow's chain would print
/// it again: "x.model: No such file: No such file").
pub(crate) fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
