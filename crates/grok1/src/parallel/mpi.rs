//! The MPI collective (rsmpi over the system's OpenMPI or MPICH): one rank per
//! process of `mpirun -np N`, shared memory between ranks of one machine,
//! TCP or InfiniBand between machines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;

use super::{Collective, ParallelError, Traffic, TrafficCounter};

/// True when this process was started by an MPI launcher (mpirun/mpiexec of
/// OpenMPI or MPICH, Slurm's srun with PMI/PMIx): only then is MPI started,
/// so that a plain `grok1 ...` never needs an MPI daemon.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// MPI itself, started; dropping it finalises MPI (after the last collective).
pub struct MpiRuntime {
    _universe: Universe,
    collective: Arc<MpiCollective>,
}

impl MpiRuntime {
    /// Starts MPI when launched by an MPI launcher; `None` otherwise.
    pub fn init() -> Result<Option<MpiRuntime>, ParallelError> {
        if !launched_by_mpi() {
            return Ok(None);
        }
        // The forward pass runs on a rayon worker and the drivers on the main
        // thread, never at once: calls are serialised, not funnelled.
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| ParallelError::Mpi("MPI was already initialised".into()))?;
        if matches!(provided, Threading::Single | Threading::Funneled) {
            return Err(ParallelError::Mpi(format!(
                "the MPI library offers thread level {provided:?}; grok1 needs Serialized"
            )));
        }
        let world = universe.world();
        let collective = Arc::new(MpiCollective {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world: Mutex::new(World(world)),
            traffic: TrafficCounter::default(),
            wait_limit_nanos: AtomicU64::new(0),
        });
        Ok(Some(MpiRuntime {
            _universe: universe,
            collective,
        }))
    }

    pub fn collective(&self) -> Arc<MpiCollective> {
        self.collective.clone()
    }
}

/// `MPI_COMM_WORLD`. rsmpi's handle is a raw pointer, so neither `Send` nor
/// `Sync`; the mutex around it serialises every call, which is what the
/// thread level `Serialized` asks of us.
struct World(SimpleCommunicator);

// SAFETY: MPI was initialised at MPI_THREAD_SERIALIZED (checked in `init`),
// which allows calls from any thread as long as no two run at once; every use
// of the communicator goes through `MpiCollective::world`'s mutex.
unsafe impl Send for World {}

/// The collective over `MPI_COMM_WORLD`.
pub struct MpiCollective {
    rank: usize,
    size: usize,
    world: Mutex<World>,
    traffic: TrafficCounter,
    /// See [`Collective::set_wait_limit`]; 0: none.
    wait_limit_nanos: AtomicU64,
}

/// How a collective waits for the other ranks.
#[derive(Clone, Copy)]
enum Wait {
    /// Up to the wait limit, if one is set.
    Limited,
    /// Without limit (a follower waiting for rank 0's next order).
    Idle,
}

impl MpiCollective {
    fn with_world<T>(&self, sent: usize, f: impl FnOnce(&SimpleCommunicator) -> T) -> T {
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let out = f(&world.0);
        self.traffic.add(sent, start);
        out
    }

    /// Ends every rank's process at once (after a rank's own error, so that
    /// the others do not wait for it in a collective).
    pub fn abort(&self, code: i32) -> ! {
        let world = self.world.lock().unwrap_or_else(|e| e.into_inner());
        world.0.abort(code)
    }

    fn limit(&self, wait: Wait) -> Option<Duration> {
        match (wait, self.wait_limit_nanos.load(Ordering::Relaxed)) {
            (Wait::Idle, _) | (_, 0) => None,
            (Wait::Limited, nanos) => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Answers every "who is there" from a rank whose wait ran out
    /// ([`MpiCollective::silent_ranks`]): a rank waiting in a collective is
    /// alive, and says so.
    fn answer_pings(world: &SimpleCommunicator) {
        while let Some(asker) = receive_byte(world, PING) {
            // One byte: sent eagerly, the asker is polling for it.
            world.process_at_rank(asker).send_with_tag(&1u8, PONG);
        }
    }

    /// The ranks that do not answer within [`PING_WAIT`] (hung, stopped, or
    /// busy outside any collective): asked when this rank's wait ran out,
    /// to name them instead of only the rank that waited.
    fn silent_ranks(&self, world: &SimpleCommunicator) -> Vec<usize> {
        let mut silent: Vec<usize> = (0..self.size).filter(|&r| r != self.rank).collect();
        for &r in &silent {
            world.process_at_rank(r as i32).send_with_tag(&1u8, PING);
        }
        let start = Instant::now();
        while !silent.is_empty() && start.elapsed() < PING_WAIT {
            Self::answer_pings(world);
            while let Some(answered) = receive_byte(world, PONG) {
                silent.retain(|&r| r as i32 != answered);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        silent
    }

    /// Polls a nonblocking collective until it completes. Past the wait
    /// limit it says which collective waited and which ranks do not answer,
    /// and ends the job: a blocking call would wait forever for a rank that
    /// hangs.
    fn complete<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        world: &SimpleCommunicator,
        mut request: Request<'a, D, S>,
        wait: Wait,
        what: &dyn Fn() -> String,
    ) {
        let limit = self.limit(wait);
        let start = Instant::now();
        loop {
            request = match request.test() {
                Ok(_) => return,
                Err(pending) => pending,
            };
            let waited = start.elapsed();
            if limit.is_some_and(|l| waited > l) {
                let silent = self.silent_ranks(world);
                let line = format!(
                    "grok1: error (rank {}): {} waited {:.1} s for the other ranks (the wait limit): {}; ending the job\n",
                    self.rank,
                    what(),
                    waited.as_secs_f64(),
                    silent_text(&silent)
                );
                // One write: several ranks say this at once, and mpirun
                // passes on what each wrote as it comes.
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                world.abort(3);
            }
            if waited > Duration::from_millis(1) {
                Self::answer_pings(world);
            }
            // Spin first (a collective takes microseconds), then offer the
            // core to threads still computing; past a second the wait is
            // idle or stuck, and a millisecond more per poll costs nothing.
            if waited > Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(1));
            } else if waited > Duration::from_millis(1) {
                std::thread::yield_now();
            }
        }
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, first: Wait) {
        let sent = if self.rank == 0 { bytes.len() } else { 0 };
        self.with_world(sent, |w| {
            let mut len = bytes.len() as u64;
            mpi::request::scope(|scope| {
                let r = w
                    .process_at_rank(0)
                    .immediate_broadcast_into(scope, &mut len);
                self.complete(w, r, first, &|| {
                    "the broadcast of rank 0's message length".into()
                });
            });
            bytes.resize(len as usize, 0);
            // Every rank knows the length now: nothing more to send (Open
            // MPI refused empty parts in the all-gather, `padded_counts`).
            if len == 0 {
                return;
            }
            mpi::request::scope(|scope| {
                let r = w
                    .process_at_rank(0)
                    .immediate_broadcast_into(scope, &mut bytes[..]);
                self.complete(w, r, Wait::Limited, &|| {
                    format!("the broadcast of rank 0's {len}-byte message")
                });
            });
        });
    }
}

/// Tags of the point-to-point "who is there" a rank sends when its wait
/// runs out, and of the answers (collectives never match point-to-point
/// messages, so these cannot be taken for a collective's; under 32767, the
/// least tag bound MPI allows).
const PING: i32 = 31_001;
const PONG: i32 = PING + 1;

/// How long a rank whose wait ran out waits for the others' answers.
const PING_WAIT: Duration = Duration::from_secs(2);

/// The byte counts of a varcount collective whose parts are `lens` long,
/// and the byte (0 or 1) added to each: where one part is empty every part
/// gets one more, for Open MPI refused the all-gather with an empty part
/// (MPI_ERR_ARG, also with the empty part at a real address). The receiver
/// takes the byte back off.
fn padded_counts(lens: &[u64]) -> (usize, Vec<usize>) {
    let pad = usize::from(lens.contains(&0));
    (pad, lens.iter().map(|&l| l as usize + pad).collect())
}

/// Takes a waiting one-byte message of `tag` from any rank, if there is
/// one: its sender.
fn receive_byte(world: &SimpleCommunicator, tag: i32) -> Option<i32> {
    let (message, status) = world.any_process().immediate_matched_probe_with_tag(tag)?;
    let mut byte = 0u8;
    message.matched_receive_into(&mut byte);
    Some(status.source_rank())
}

/// The ranks that did not answer, as the error says them.
fn silent_text(silent: &[usize]) -> String {
    let list = |r: &[usize]| {
        r.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match silent {
        // Also seen on a rank whose wait ran out just after another's: the
        // job's teardown (SIGCONT before SIGTERM) woke a stopped rank.
        [] => format!("every other rank answered within {} s: one may be computing a step longer than the limit, or was stopped and has just resumed", PING_WAIT.as_secs()),
        [r] => format!("rank {r} does not answer (it hangs, was stopped, or is busy outside any collective)"),
        _ => format!("ranks {} do not answer (they hang, were stopped, or are busy outside any collective)", list(silent)),
    }
}

/// `counts` as MPI's `int` counts and displacements, refused past 2^31 - 1.
fn counts_and_displacements(counts: &[usize]) -> (Vec<i32>, Vec<i32>) {
    let mut displs = Vec::with_capacity(counts.len());
    let mut at = 0usize;
    for &c in counts {
        displs.push(i32::try_from(at).expect("collective message over 2 GiB"));
        at += c;
    }
    let counts = counts
        .iter()
        .map(|&c| i32::try_from(c).expect("collective message over 2 GiB"))
        .collect();
    (counts, displs)
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]) {
        assert_eq!(out.len(), local.len() * self.size, "all_gather_f32 sizes");
        self.with_world(4 * local.len(), |w| {
            mpi::request::scope(|scope| {
                let r = w.immediate_all_gather_into(scope, local, out);
                self.complete(w, r, Wait::Limited, &|| {
                    format!("an all-gather of {} f32 a rank", local.len())
                });
            })
        });
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        self.with_world(local.len(), |w| {
            let mut lens = vec![0u64; self.size];
            let own = local.len() as u64;
            mpi::request::scope(|scope| {
                let r = w.immediate_all_gather_into(scope, &own, &mut lens[..]);
                self.complete(w, r, Wait::Limited, &|| {
                    "an all-gather of message lengths".into()
                });
            });
            let (pad, counts) = padded_counts(&lens);
            let padded;
            let local = if pad == 1 {
                padded = [local, &[0]].concat();
                &padded[..]
            } else {
                local
            };
            let mut all = vec![0u8; counts.iter().sum()];
            let (c, d) = counts_and_displacements(&counts);
            {
                let mut parts = PartitionMut::new(&mut all[..], &c[..], &d[..]);
                mpi::request::scope(|scope| {
                    let r = w.immediate_all_gather_varcount_into(scope, local, &mut parts);
                    self.complete(w, r, Wait::Limited, &|| {
                        format!(
                            "an all-gather of {} bytes in all",
                            counts.iter().sum::<usize>()
                        )
                    });
                });
            }
            let mut at = 0;
            counts
                .iter()
                .map(|&n| {
                    at += n;
                    all[at - n..at - pad].to_vec()
                })
                .collect()
        })
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        self.broadcast(bytes, Wait::Limited);
    }

    fn scatter_bytes(&self, parts: &[Vec<u8>]) -> Vec<u8> {
        let root = self.rank == 0;
        if root {
            assert_eq!(parts.len(), self.size, "scatter_bytes: one part a rank");
        }
        let sent = if root {
            parts.iter().map(Vec::len).sum()
        } else {
            0
        };
        self.with_world(sent, |w| {
            let mut lens = vec![0u64; self.size];
            if root {
                for (l, p) in lens.iter_mut().zip(parts) {
                    *l = p.len() as u64;
                }
            }
            mpi::request::scope(|scope| {
                let r = w
                    .process_at_rank(0)
                    .immediate_broadcast_into(scope, &mut lens[..]);
                self.complete(w, r, Wait::Limited, &|| {
                    "the broadcast of a scatter's part lengths".into()
                });
            });
            let (pad, counts) = padded_counts(&lens);
            let mut mine = vec![0u8; counts[self.rank]];
            let what = || {
                format!(
                    "a scatter of {} bytes in all",
                    counts.iter().sum::<usize>() - pad * self.size
                )
            };
            if root {
                let mut send = Vec::with_capacity(counts.iter().sum());
                for part in parts {
                    send.extend_from_slice(part);
                    send.resize(send.len() + pad, 0);
                }
                let (c, d) = counts_and_displacements(&counts);
                let partition = Partition::new(&send[..], &c[..], &d[..]);
                mpi::request::scope(|scope| {
                    let r = w.process_at_rank(0).immediate_scatter_varcount_into_root(
                        scope,
                        &partition,
                        &mut mine[..],
                    );
                    self.complete(w, r, Wait::Limited, &what);
                });
            } else {
                mpi::request::scope(|scope| {
                    let r = w
                        .process_at_rank(0)
                        .immediate_scatter_varcount_into(scope, &mut mine[..]);
                    self.complete(w, r, Wait::Limited, &what);
                });
            }
            mine.truncate(counts[self.rank] - pad);
            mine
        })
    }

    fn wait_for_broadcast(&self, bytes: &mut Vec<u8>) {
        self.broadcast(bytes, Wait::Idle);
    }

    fn set_wait_limit(&self, limit: Option<Duration>) {
        let nanos = limit.map_or(0, |l| l.as_nanos().clamp(1, u64::MAX as u128) as u64);
        self.wait_limit_nanos.store(nanos, Ordering::Relaxed);
    }

    fn abort(&self, code: i32) -> ! {
        MpiCollective::abort(self, code)
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}
