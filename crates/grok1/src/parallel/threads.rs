//! Ranks as threads of one process: the split model checked without MPI
//! (the tensor-parallel tests run every shard of a fixture side by side).
//! Each rank must run its forward passes on its own rayon pool: a rank blocked
//! in a collective must not hold a worker another rank needs.

use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use super::{Collective, Traffic, TrafficCounter};

#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

/// One rank of a [`group`].
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
    traffic: TrafficCounter,
}

/// Runs `f` on each of `size` ranks, each on its own thread with its own
/// one-thread rayon pool (a rank blocked in a collective holds no worker
/// another rank needs); the results in rank order.
pub fn on_ranks<T: Send>(size: usize, f: impl Fn(Arc<dyn Collective>) -> T + Sync) -> Vec<T> {
    let ranks = group(size);
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .expect("rayon pool");
                    pool.install(|| f(c))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

/// `size` ranks that exchange data through shared memory; hand one to each thread.
pub fn group(size: usize) -> Vec<Arc<ThreadRank>> {
    let shared = Arc::new(Shared {
        barrier: Barrier::new(size),
        slots: Mutex::new(vec![Vec::new(); size]),
    });
    (0..size)
        .map(|rank| {
            Arc::new(ThreadRank {
                rank,
                size,
                shared: shared.clone(),
                traffic: TrafficCounter::default(),
            })
        })
        .collect()
}

impl ThreadRank {
    /// Every rank's bytes: each posts its own, all wait, all read, all wait
    /// again (so no rank posts the next call's bytes before all have read).
    fn exchange(&self, local: Vec<u8>) -> Vec<Vec<u8>> {
        let start = Instant::now();
        let sent = local.len();
        self.shared.slots.lock().expect("slots")[self.rank] = local;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().expect("slots").clone();
        self.shared.barrier.wait();
        self.traffic.add(sent, start);
        all
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]) {
        let bytes = local.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.exchange(bytes);
        for (part, dst) in all.iter().zip(out.chunks_exact_mut(local.len().max(1))) {
            for (o, b) in dst.iter_mut().zip(part.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        self.exchange(local.to_vec())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        let mine = if self.rank == 0 {
            bytes.clone()
        } else {
            Vec::new()
        };
        *bytes = self.exchange(mine).swap_remove(0);
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_gather_and_broadcast_agree_on_every_rank() {
        let ranks = group(3);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let mut x = vec![r, 10.0 * r, 0.1];
                        c.all_reduce_sum(&mut x);
                        let mut gathered = vec![0f32; 6];
                        c.all_gather_f32(&[r, -r], &mut gathered);
                        let mut b = if c.rank() == 0 { vec![7u8, 8] } else { vec![1] };
                        c.broadcast_bytes(&mut b);
                        let names = c.all_gather_bytes(&vec![b'a'; c.rank() + 1]);
                        (x, gathered, b, names)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (x, gathered, b, names) in &results {
            assert_eq!(x, &vec![3.0, 30.0, 0.1f32 + 0.1 + 0.1]);
            assert_eq!(gathered, &vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
            assert_eq!(b, &vec![7, 8]);
            assert_eq!(names, &vec![b"a".to_vec(), b"aa".to_vec(), b"aaa".to_vec()]);
        }
        assert_eq!(ranks[1].traffic().calls, 4);
    }

    /// Each rank gets its own part of rank 0's, an empty one included (the
    /// parts other ranks pass are not read); one process gets part 0.
    #[test]
    fn a_scatter_gives_each_rank_its_part() {
        let parts = vec![vec![1u8, 2, 3], Vec::new(), vec![9; 5]];
        let got = on_ranks(3, |c| {
            let garbage = vec![vec![7u8]; c.rank()];
            c.scatter_bytes(if c.rank() == 0 { &parts } else { &garbage })
        });
        assert_eq!(got, parts);
        let one = crate::parallel::single_process();
        assert_eq!(one.scatter_bytes(&[vec![4, 5]]), vec![4, 5]);
    }
}
