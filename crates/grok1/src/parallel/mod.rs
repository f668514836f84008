//! Tensor parallelism as a layer (shared/docs/architecture.md, "Parallelism is
//! a layer, not a fork of the model"): one model split over `size` processes,
//! each holding part [`Shard`] of every split tensor. The forward pass calls a
//! [`Collective`] after attention's output projection, after the MoE, and to
//! gather the logits; the single-process one ([`SingleProcess`]) does nothing.
//! The MPI one lives behind the `mpi` feature ([`mpi`]); [`threads`] runs the
//! ranks as threads of one process (tests, and a check of the split itself).

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod threads;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Which part of a model one process holds: part `rank` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub count: usize,
}

impl Shard {
    /// The whole model, in one process.
    pub const WHOLE: Shard = Shard { rank: 0, count: 1 };

    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// This part of `0..total` cut into `count` equal pieces; `None` when
    /// `count` does not divide `total`.
    pub fn range(self, total: usize) -> Option<Range<usize>> {
        if self.count == 0 || !total.is_multiple_of(self.count) {
            return None;
        }
        let part = total / self.count;
        Some(self.rank * part..(self.rank + 1) * part)
    }
}

/// Time and bytes a process spent in collectives (for `grok1 bench`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    /// Collective calls made.
    pub calls: u64,
    /// Bytes this process sent (its own contribution to each collective).
    pub bytes_sent: u64,
    /// Wall-clock seconds inside collectives, waiting for the slowest rank included.
    pub seconds: f64,
}

/// Counters a collective keeps; see [`Traffic`].
#[derive(Debug, Default)]
pub struct TrafficCounter {
    calls: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

impl TrafficCounter {
    /// Counts one call that sent `bytes`, started at `start`.
    pub fn add(&self, bytes: usize, start: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> Traffic {
        Traffic {
            calls: self.calls.load(Ordering::Relaxed),
            bytes_sent: self.bytes.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

/// The communication the forward pass and its drivers need. Every rank makes
/// the same calls in the same order (MPI's rule for collectives).
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;

    /// Every rank's `local` (the same length on every rank) in rank order:
    /// `out[r * local.len()..]` is rank `r`'s.
    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]);

    /// Every rank's bytes, of any length, in rank order.
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>>;

    /// Rank 0's `bytes` replace every other rank's (of any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>);

    /// Rank 0's `parts[r]` (any length; read on rank 0 only, one per rank)
    /// to each rank `r`, rank 0's own included: each rank receives its
    /// share, not the whole. This default broadcasts every part and each
    /// rank keeps its own (what threads sharing memory or one process pay
    /// nothing for); MPI sends each rank its part alone.
    fn scatter_bytes(&self, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut all = Vec::new();
        if self.rank() == 0 {
            assert_eq!(parts.len(), self.size(), "scatter_bytes: one part a rank");
            for part in parts {
                all.extend_from_slice(&(part.len() as u64).to_le_bytes());
            }
            for part in parts {
                all.extend_from_slice(part);
            }
        }
        self.broadcast_bytes(&mut all);
        let len = |r: usize| {
            let at = 8 * r;
            u64::from_le_bytes(all[at..at + 8].try_into().expect("8 bytes")) as usize
        };
        let start = 8 * self.size() + (0..self.rank()).map(len).sum::<usize>();
        all[start..start + len(self.rank())].to_vec()
    }

    /// [`broadcast_bytes`](Self::broadcast_bytes) for a rank that waits for
    /// rank 0's next order with nothing else to do (a serving engine's
    /// follower while rank 0 waits for requests): no wait limit applies
    /// until rank 0 has sent (see [`set_wait_limit`](Self::set_wait_limit)).
    fn wait_for_broadcast(&self, bytes: &mut Vec<u8>) {
        self.broadcast_bytes(bytes);
    }

    /// From now on, a collective that waits longer than `limit` for the
    /// other ranks ends the job with an error naming it (a rank that died or
    /// hangs), instead of waiting forever. `None`: wait without limit.
    fn set_wait_limit(&self, limit: Option<std::time::Duration>) {
        let _ = limit;
    }

    /// Ends this process and, where the transport can, every other rank's
    /// (after an error on one rank that the others would wait for).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }

    /// Time and bytes spent in collectives so far.
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// `x` summed over the ranks, the same bits on every rank: the parts are
    /// gathered and added in rank order, so the result depends neither on the
    /// MPI library's reduction algorithm nor on which rank computes it.
    fn all_reduce_sum(&self, x: &mut [f32]) {
        let n = self.size();
        if n == 1 {
            return;
        }
        let mut all = vec![0f32; n * x.len()];
        self.all_gather_f32(x, &mut all);
        x.copy_from_slice(&all[..x.len()]);
        for part in all.chunks_exact(x.len().max(1)).skip(1) {
            for (s, &v) in x.iter_mut().zip(part) {
                *s += v;
            }
        }
    }

    /// Which part of the model this process holds.
    fn shard(&self) -> Shard {
        Shard {
            rank: self.rank(),
            count: self.size(),
        }
    }
}

/// One process holding the whole model: every collective is a copy or nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather_f32(&self, local: &[f32], out: &mut [f32]) {
        out.copy_from_slice(local);
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        vec![local.to_vec()]
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>) {}
    fn scatter_bytes(&self, parts: &[Vec<u8>]) -> Vec<u8> {
        parts[0].clone()
    }
    fn all_reduce_sum(&self, _x: &mut [f32]) {}
}

/// The single-process collective, shared.
pub fn single_process() -> Arc<dyn Collective> {
    Arc::new(SingleProcess)
}

/// Rank 0's `u32` values to every rank.
pub fn broadcast_u32s(c: &dyn Collective, values: &[u32]) -> Vec<u32> {
    if c.size() == 1 {
        return values.to_vec();
    }
    let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    c.broadcast_bytes(&mut bytes);
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Why processes cannot run one model together.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParallelError {
    /// Every rank reaches this error together (rank 0 reports it).
    #[error("rank {rank} holds a different model than rank 0: {difference}")]
    DifferentModels { rank: usize, difference: String },
    /// Every rank reaches this error together (rank 0 reports it).
    #[error("rank {rank} was started with other settings than rank 0: {difference}")]
    DifferentSettings { rank: usize, difference: String },
    #[error("MPI: {0}")]
    Mpi(String),
}

/// What identifies a model across ranks: its config and its tensor table
/// (names, types and shapes, not the payloads), one `key: value` per line.
pub fn model_description(
    config: &crate::ModelConfig,
    store: &crate::weights::TensorStore,
) -> String {
    let mut lines = config_lines(config);
    lines.extend(tensor_lines(store));
    lines.join("\n")
}

/// The config part of [`model_description`].
pub fn config_lines(config: &crate::ModelConfig) -> Vec<String> {
    let mut lines = Vec::new();
    let mut config = config.clone();
    // Derived, or metadata that does not change the maths.
    config.tensors = None;
    config.num_tensors = None;
    config.name = String::new();
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&config) {
        for (k, v) in fields {
            lines.push(format!("config field `{k}`: {v}"));
        }
    }
    lines
}

/// The tensor table part of [`model_description`], sorted.
pub fn tensor_lines(store: &crate::weights::TensorStore) -> Vec<String> {
    let mut tensors: Vec<String> = store
        .iter()
        .map(|t| tensor_line(&t.name, &t.dtype_label(), t.shape()))
        .collect();
    tensors.sort();
    tensors
}

/// One line of a tensor table.
pub fn tensor_line(name: &str, dtype: &str, shape: &[usize]) -> String {
    format!("tensor `{name}`: {dtype} {shape:?}")
}

/// The first difference between rank 0's description and another's.
fn first_difference(root: &str, other: &str) -> Option<String> {
    // Lines are "<kind> `<name>`: <value>"; names hold no "`: ".
    let split = |l: &str| match l.split_once("`: ") {
        Some((k, v)) => (format!("{k}`"), v.to_string()),
        None => (l.to_string(), String::new()),
    };
    let key = |l: &str| split(l).0;
    let ours: std::collections::BTreeMap<String, &str> =
        root.lines().map(|l| (key(l), l)).collect();
    let theirs: std::collections::BTreeMap<String, &str> =
        other.lines().map(|l| (key(l), l)).collect();
    for (k, line) in &ours {
        match theirs.get(k) {
            None => return Some(format!("{k} is missing (rank 0 has it)")),
            Some(t) if t != line => {
                return Some(format!("{k} is {} (rank 0: {})", split(t).1, split(line).1));
            }
            _ => {}
        }
    }
    theirs
        .keys()
        .find(|k| !ours.contains_key(*k))
        .map(|k| format!("{k} is not in rank 0's model"))
}

/// The lowest rank whose description differs from rank 0's, and how; every
/// rank gets the same answer.
fn first_rank_differing(c: &dyn Collective, description: &str) -> Option<(usize, String)> {
    if c.size() == 1 {
        return None;
    }
    let all = c.all_gather_bytes(description.as_bytes());
    let root = String::from_utf8_lossy(&all[0]);
    all.iter().enumerate().skip(1).find_map(|(rank, other)| {
        first_difference(&root, &String::from_utf8_lossy(other)).map(|d| (rank, d))
    })
}

/// Checks that every rank holds the same model ([`model_description`]).
pub fn check_same_model(c: &dyn Collective, description: &str) -> Result<(), ParallelError> {
    match first_rank_differing(c, description) {
        Some((rank, difference)) => Err(ParallelError::DifferentModels { rank, difference }),
        None => Ok(()),
    }
}

/// Checks that every rank runs with the same settings, `description` being
/// one "setting `<name>`: <value>" line each.
pub fn check_same_settings(c: &dyn Collective, description: &str) -> Result<(), ParallelError> {
    match first_rank_differing(c, description) {
        Some((rank, difference)) => Err(ParallelError::DifferentSettings { rank, difference }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_cover_the_whole_without_overlap() {
        let parts: Vec<_> = (0..4)
            .map(|rank| Shard { rank, count: 4 }.range(88))
            .collect();
        assert_eq!(
            parts,
            [Some(0..22), Some(22..44), Some(44..66), Some(66..88)]
        );
        assert_eq!(Shard { rank: 0, count: 3 }.range(8), None);
        assert_eq!(Shard::WHOLE.range(7), Some(0..7));
    }

    #[test]
    fn differences_name_the_field_and_both_values() {
        let a = "config field `num_layers`: 2\ntensor `x`: float32 [4]";
        let b = "config field `num_layers`: 3\ntensor `x`: float32 [4]";
        assert_eq!(
            first_difference(a, b).unwrap(),
            "config field `num_layers` is 3 (rank 0: 2)"
        );
        let c = "config field `num_layers`: 2";
        assert_eq!(
            first_difference(a, c).unwrap(),
            "tensor `x` is missing (rank 0 has it)"
        );
        assert_eq!(
            first_difference(c, a).unwrap(),
            "tensor `x` is not in rank 0's model"
        );
        assert_eq!(first_difference(a, a), None);
    }
}
