//! `mpirun -np N grok1 ...`: one model over N processes (tensor parallel).
//! MPI starts only when an MPI launcher started this process (and the binary
//! was built with the `mpi` feature); otherwise every command runs as one
//! process, as without MPI.

use std::sync::{Arc, OnceLock};

use grok1::parallel::Collective;

static COLLECTIVE: OnceLock<Arc<dyn Collective>> = OnceLock::new();

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

/// A command that does not run split over several processes yet; every rank
/// refuses it alike.
#[derive(Debug, thiserror::Error)]
#[error("`grok1 {command}` does not run under mpirun yet ({ranks} processes); generate, logits and bench do")]
pub struct NotSplit {
    command: &'static str,
    ranks: usize,
}

/// Whether a command runs split over several processes; the others are
/// refused under mpirun rather than run N times side by side.
pub fn check_command(command: &'static str) -> Result<(), NotSplit> {
    let ranks = size();
    if ranks > 1 && !matches!(command, "generate" | "logits" | "bench") {
        return Err(NotSplit { command, ranks });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_mpirun_one_process_runs_every_command() {
        assert_eq!(size(), 1);
        assert!(is_root());
        assert!(check_command("serve").is_ok());
        // No launcher in the test environment (cargo test is not run by mpirun).
        assert_eq!(launcher_size(), None);
    }
}
