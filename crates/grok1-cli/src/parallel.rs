//! `mpirun -np N grok1 ...`: one model over N processes (tensor parallel).
//! MPI starts only when an MPI launcher started this process (and the binary
//! was built with the `mpi` feature); otherwise every command runs as one
//! process, as without MPI.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;

use grok1::parallel::Collective;

static COLLECTIVE: OnceLock<Arc<dyn Collective>> = OnceLock::new();

/// The environment variable that sets how long a rank waits in a collective
/// for the others before it ends the job (seconds; 0: forever).
pub const WAIT_LIMIT_VAR: &str = "GROK1_MPI_TIMEOUT";

/// The wait limit when [`WAIT_LIMIT_VAR`] is not set: under 30 s so that,
/// with the polling, the 2 s for the other ranks' answers (which names the
/// hung one) and MPI_Abort after it, a hung rank ends the job within 30 s of
/// the step that needed it (a 30 s limit alone ended it at 30.06 s).
const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(25);

static WAIT_LIMIT: OnceLock<Option<Duration>> = OnceLock::new();

/// [`WAIT_LIMIT_VAR`] read: `None` for no limit.
fn wait_limit_from(value: Option<&str>) -> anyhow::Result<Option<Duration>> {
    let Some(value) = value else {
        return Ok(Some(DEFAULT_WAIT_LIMIT));
    };
    let seconds: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{WAIT_LIMIT_VAR}={value:?}: expected seconds (a number >= 0; 0 waits forever)"
            )
        })?;
    Ok((seconds > 0.0).then(|| Duration::from_secs_f64(seconds)))
}

/// From now on a collective that waits longer than the wait limit for the
/// other ranks (one died or hangs) ends the job with an error. Called once
/// the model is loaded: ranks may take very different times to load it.
pub fn arm_wait_limit() {
    let limit = WAIT_LIMIT
        .get()
        .copied()
        .unwrap_or(Some(DEFAULT_WAIT_LIMIT));
    collective().set_wait_limit(limit);
}

/// The processes the model is split over (this one alone without mpirun).
pub fn collective() -> Arc<dyn Collective> {
    COLLECTIVE
        .get()
        .cloned()
        .unwrap_or_else(grok1::parallel::single_process)
}

/// True on the process that talks to the user: rank 0, or the only one.
pub fn is_root() -> bool {
    collective().rank() == 0
}

/// Processes in the job.
pub fn size() -> usize {
    collective().size()
}

/// MPI, while it runs; dropping it finalises MPI.
pub struct Runtime {
    #[cfg(feature = "mpi")]
    mpi: Option<grok1::parallel::mpi::MpiRuntime>,
}

impl Runtime {
    /// Ends every process of the job now (after an error on one rank, which
    /// the others would otherwise wait for in their next collective).
    pub fn abort(&self, code: i32) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.collective().abort(code);
        }
        let _ = code;
    }
}

/// The job size an MPI launcher announced, if any (OpenMPI, MPICH/PMI).
#[cfg_attr(feature = "mpi", allow(dead_code))]
fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Starts MPI when launched by mpirun (with the `mpi` feature).
pub fn start() -> anyhow::Result<Runtime> {
    let limit = wait_limit_from(std::env::var(WAIT_LIMIT_VAR).ok().as_deref())?;
    let _ = WAIT_LIMIT.set(limit);
    #[cfg(feature = "mpi")]
    {
        let mpi = grok1::parallel::mpi::MpiRuntime::init()?;
        if let Some(m) = &mpi {
            let c: Arc<dyn Collective> = m.collective();
            let _ = COLLECTIVE.set(c);
        }
        Ok(Runtime { mpi })
    }
    #[cfg(not(feature = "mpi"))]
    {
        if let Some(n) = launcher_size().filter(|&n| n > 1) {
            anyhow::bail!(
                "started by an MPI launcher as one of {n} processes, but this grok1 was built \
                 without MPI: build it with `cargo build --release -p grok1-cli --features mpi`"
            );
        }
        Ok(Runtime {})
    }
}

/// A command or option that does not run split over several processes yet;
/// every rank refuses it alike.
#[derive(Debug, thiserror::Error)]
pub enum NotSplit {
    #[error("`grok1 {command}` does not run under mpirun yet ({ranks} processes); generate, logits, bench, serve, chat and eval do")]
    Command { command: &'static str, ranks: usize },
    #[error("{what} does not run under mpirun yet ({ranks} processes)")]
    Option { what: &'static str, ranks: usize },
}

/// Whether rank 0 has stopped its engine ([`StopEngine`]).
static ENGINE_STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops a serving engine when dropped, on every way out of a command: its
/// last plan sends a split model's other ranks home (they exit 0, as after
/// SIGTERM), so an error rank 0 returns after that is its own to say, and
/// ends no job by MPI_Abort ([`engine_stopped`]).
pub struct StopEngine<'a>(pub &'a grok1::engine::EngineHandle);

impl Drop for StopEngine<'_> {
    fn drop(&mut self) {
        self.0.shutdown(std::time::Duration::from_secs(1));
        ENGINE_STOPPED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether this process stopped its engine (on rank 0: the other ranks
/// have been sent home).
pub fn engine_stopped() -> bool {
    ENGINE_STOPPED.load(std::sync::atomic::Ordering::SeqCst)
}

/// An error every rank returns alike before the ranks part: one in the
/// command line itself, which every rank finds (they share it), or a step
/// that failed on some rank ([`agree`]). Rank 0 says it and every rank
/// exits 2, without ending the job by MPI_Abort.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Every rank's outcome of a step that runs before the ranks part and may
/// fail on some of them only (what rank 0 alone reads, such as the
/// tokenizer or a session file; a file one machine lacks): unless every
/// rank succeeded, each returns the same [`Refused`], with rank 0's message
/// where it failed, else the first failing rank's, named. A rank that went
/// on alone would wait in a collective for the others until the wait limit
/// and end the job by MPI_Abort. One process: `result` as it is.
pub fn agree<T>(result: anyhow::Result<T>) -> anyhow::Result<T> {
    let c = collective();
    if c.size() == 1 {
        return result;
    }
    // 0 for success, else 1 and the message (which may be empty).
    let local = match &result {
        Ok(_) => vec![0],
        Err(e) => [&[1][..], crate::error_text(e).as_bytes()].concat(),
    };
    let all = c.all_gather_bytes(&local);
    match all.iter().position(|m| m.first() != Some(&0)) {
        None => result,
        Some(rank) => {
            let text = String::from_utf8_lossy(all[rank].get(1..).unwrap_or_default());
            Err(Refused(match rank {
                0 => text.into_owned(),
                _ => format!("rank {rank}: {text}"),
            })
            .into())
        }
    }
}

/// Whether a command runs split over several processes; the others are
/// refused under mpirun rather than run N times side by side.
pub fn check_command(command: &'static str) -> Result<(), NotSplit> {
    let ranks = size();
    let split = matches!(
        command,
        "generate" | "logits" | "bench" | "serve" | "chat" | "eval"
    );
    if ranks > 1 && !split {
        return Err(NotSplit::Command { command, ranks });
    }
    Ok(())
}

/// Refuses an option (`what`, as the user would read it) under mpirun
/// when `used`; every rank refuses it alike.
pub fn refuse_split(used: bool, what: &'static str) -> Result<(), NotSplit> {
    let ranks = size();
    if used && ranks > 1 {
        return Err(NotSplit::Option { what, ranks });
    }
    Ok(())
}

/// The serving engine's settings that every rank must share, checked across
/// the ranks: an error (on every rank alike) names the first rank that
/// differs from rank 0 and how.
pub fn check_same_engine(config: &grok1::engine::EngineConfig) -> anyhow::Result<()> {
    let description = [
        format!("setting `--kv-type`: {}", config.kv_type),
        format!("setting `--no-prefix-cache`: {}", !config.prefix_cache),
        format!("setting `--precision`: {:?}", config.precision),
        format!("setting `KV cache tokens`: {}", config.kv_tokens),
    ]
    .join("\n");
    grok1::parallel::check_same_settings(&*collective(), &description)?;
    Ok(())
}

/// On a rank other than 0, runs the steps rank 0's engine sends until it
/// stops (`Some`: the command is done on this rank); on rank 0, `None`.
pub fn follow_engine(
    model: &grok1::Grok1,
    config: &grok1::engine::EngineConfig,
) -> anyhow::Result<Option<std::process::ExitCode>> {
    check_same_engine(config)?;
    if is_root() {
        return Ok(None);
    }
    // Rank 0 decides when the job stops and says so in its plan: SIGINT and
    // SIGTERM, which mpirun sends to every rank, are left to rank 0 to act on.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal listener")?;
    let _listening = {
        let _in_runtime = signals.enter();
        use tokio::signal::unix::{signal, SignalKind};
        [SignalKind::interrupt(), SignalKind::terminate()]
            .map(|kind| signal(kind).context("listening for SIGINT and SIGTERM"))
    };
    grok1::engine::follow(model, config)?;
    Ok(Some(std::process::ExitCode::SUCCESS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_mpirun_one_process_runs_every_command() {
        assert_eq!(size(), 1);
        assert!(is_root());
        assert!(check_command("serve").is_ok());
        assert!(refuse_split(true, "--session").is_ok());
        // No launcher in the test environment (cargo test is not run by mpirun).
        assert_eq!(launcher_size(), None);
    }

    #[test]
    fn the_wait_limit_is_seconds_or_zero_for_none() {
        assert_eq!(wait_limit_from(None).unwrap(), Some(DEFAULT_WAIT_LIMIT));
        assert_eq!(
            wait_limit_from(Some("2.5")).unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(wait_limit_from(Some("0")).unwrap(), None);
        for bad in ["", "-1", "nan", "inf", "5s"] {
            let e = wait_limit_from(Some(bad)).unwrap_err().to_string();
            assert!(e.starts_with("GROK1_MPI_TIMEOUT="), "{e}");
        }
    }
}
