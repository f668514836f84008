//! A prefix's keys and values between the KV cache and a [`KvSnapshot`]'s
//! layout (per position, per layer: the keys of every key/value head, then
//! their values), on one process or a model split over ranks, where each
//! rank's cache holds its own heads (rank `r` the `r`-th equal share, in
//! order). Every rank runs the same calls, in the same order: rank 0's
//! engine after it sent the plan (`Plan::Export` / `Plan::Import`), the
//! others in `follow`. On one process the collective passes the bytes
//! through, so there is one path for both.
//!
//! Moved a layer and a run of positions at a time, each message under
//! [`MAX_MESSAGE`] bytes: MPI counts are 32-bit, and a whole conversation of
//! Grok-1 (512 KiB of f32 a position) would be gigabytes at once.

use crate::kv_cache::{KvCache, SeqId};
use crate::parallel::Collective;

use super::SnapshotError;

/// The largest message of one transfer step.
const MAX_MESSAGE: usize = 64 << 20;

/// Positions a message holds at `floats` f32 each.
fn run_len(floats: usize) -> usize {
    (MAX_MESSAGE / (4 * floats.max(1))).max(1)
}

/// Widths of a position's keys (or values) of one layer: every head's, and
/// each rank's share.
struct Widths {
    whole: usize,
    local: usize,
}

fn widths(cache: &KvCache, c: &dyn Collective, head_dim: usize) -> Widths {
    let local = cache.kv_heads() * head_dim;
    Widths {
        whole: local * c.size(),
        local,
    }
}

fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Moves keys and values between a cache and a snapshot's layout, `run`
/// positions a message.
pub(super) struct Mover<'a> {
    c: &'a dyn Collective,
    w: Widths,
    run: usize,
}

impl<'a> Mover<'a> {
    /// Messages under [`MAX_MESSAGE`] for `cache`'s heads on each rank of `c`.
    pub(super) fn new(cache: &KvCache, c: &'a dyn Collective, head_dim: usize) -> Self {
        let w = widths(cache, c, head_dim);
        // Rank 0 receives every rank's share: the whole width a position.
        let run = run_len(2 * w.whole);
        Mover { c, w, run }
    }

    /// Positions `0..len` of sequence `id`, every rank's heads: the
    /// snapshot's values on rank 0, empty on the others.
    pub(super) fn gather(
        &self,
        cache: &KvCache,
        id: SeqId,
        len: usize,
    ) -> Result<Vec<f32>, SnapshotError> {
        let (c, w, run) = (self.c, &self.w, self.run);
        let layers = cache.layers();
        let width = 2 * layers * w.whole;
        let root = c.rank() == 0;
        let mut out = vec![0f32; if root { len * width } else { 0 }];
        let (mut k, mut v) = (vec![0f32; w.local], vec![0f32; w.local]);
        for layer in 0..layers {
            for start in (0..len).step_by(run) {
                let end = (start + run).min(len);
                let mut bytes = Vec::with_capacity((end - start) * 8 * w.local);
                for pos in start..end {
                    cache.read(layer, id, pos, &mut k, &mut v);
                    bytes.extend(k.iter().chain(&v).flat_map(|x| x.to_le_bytes()));
                }
                let parts = c.all_gather_bytes(&bytes);
                if !root {
                    continue;
                }
                for (rank, part) in parts.iter().enumerate() {
                    if part.len() != bytes.len() {
                        return Err(SnapshotError::Ranks(format!(
                        "rank {rank} sent {} bytes of layer {layer}'s keys and values at positions {start}..{end}, rank 0 {}",
                        part.len(),
                        bytes.len()
                    )));
                    }
                    let first = rank * w.local;
                    for (i, entry) in part.chunks_exact(8 * w.local).enumerate() {
                        let at = (start + i) * width + layer * 2 * w.whole + first;
                        let (keys, values) = entry.split_at(4 * w.local);
                        for (o, x) in out[at..at + w.local].iter_mut().zip(floats(keys)) {
                            *o = x;
                        }
                        let at = at + w.whole;
                        for (o, x) in out[at..at + w.local].iter_mut().zip(floats(values)) {
                            *o = x;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes positions `0..len` of a snapshot's values (`kv`, given on
    /// rank 0 only) into sequence `id`'s pages, each rank its own heads.
    pub(super) fn scatter(
        &self,
        cache: &mut KvCache,
        id: SeqId,
        len: usize,
        kv: Option<&[f32]>,
    ) -> Result<(), SnapshotError> {
        let (c, w, run) = (self.c, &self.w, self.run);
        let layers = cache.layers();
        let width = 2 * layers * w.whole;
        let (mut k, mut v) = (vec![0f32; w.local], vec![0f32; w.local]);
        for layer in 0..layers {
            for start in (0..len).step_by(run) {
                let end = (start + run).min(len);
                // Rank 0 cuts each rank's heads out of the snapshot: per
                // position, that rank's keys, then its values.
                let mut parts = Vec::new();
                if let Some(kv) = kv {
                    parts = (0..c.size())
                        .map(|rank| {
                            let first = rank * w.local;
                            let mut part = Vec::with_capacity((end - start) * 8 * w.local);
                            for pos in start..end {
                                let at = pos * width + layer * 2 * w.whole + first;
                                for half in [at, at + w.whole] {
                                    part.extend(
                                        kv[half..half + w.local]
                                            .iter()
                                            .flat_map(|x| x.to_le_bytes()),
                                    );
                                }
                            }
                            part
                        })
                        .collect();
                }
                let bytes = c.scatter_bytes(&parts);
                if bytes.len() != (end - start) * 8 * w.local {
                    return Err(SnapshotError::Ranks(format!(
                    "rank 0 sent {} bytes of layer {layer}'s keys and values at positions {start}..{end}, rank {} expected {}",
                    bytes.len(),
                    c.rank(),
                    (end - start) * 8 * w.local
                )));
                }
                for (i, entry) in bytes.chunks_exact(8 * w.local).enumerate() {
                    let (keys, values) = entry.split_at(4 * w.local);
                    for (out, part) in [(&mut k, keys), (&mut v, values)] {
                        for (o, x) in out.iter_mut().zip(floats(part)) {
                            *o = x;
                        }
                    }
                    cache.write(layer, id, start + i, &k, &v);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::threads::on_ranks;
    use crate::ModelConfig;

    /// Value `i` of a snapshot: distinct for every position, layer, key or
    /// value and element, and exact in the f32 caches here.
    fn value(i: usize) -> f32 {
        i as f32 * 0.5 - 100.0
    }

    /// Every rank's heads, gathered and scattered a few positions a message
    /// (runs that do not divide the length): rank 0's snapshot is the whole
    /// layout, and each rank gets back exactly its heads.
    #[test]
    fn heads_move_between_ranks_and_the_snapshot_layout() {
        let cfg = ModelConfig::tiny();
        let (hd, layers, len) = (cfg.key_size, cfg.num_layers, 37);
        let whole = cfg.kv_width();
        let width = 2 * layers * whole;
        let snapshot: Vec<f32> = (0..len * width).map(value).collect();
        for n in [1, 2, 4] {
            assert!(cfg.num_kv_heads.is_multiple_of(n));
            let results = on_ranks(n, |c| {
                let local = ModelConfig {
                    num_kv_heads: cfg.num_kv_heads / n,
                    ..cfg.clone()
                };
                let mut cache = KvCache::new(&local, 4, 16);
                let id = cache.add_sequence();
                cache.reserve(id, len).unwrap();
                let kv = (c.rank() == 0).then_some(&snapshot[..]);
                let moves = |run| Mover {
                    run,
                    ..Mover::new(&cache, &*c, hd)
                };
                let (in_fives, in_threes) = (moves(5), moves(3));
                in_fives.scatter(&mut cache, id, len, kv).unwrap();
                let w = local.kv_width();
                let first = c.rank() * w;
                let (mut k, mut v) = (vec![0f32; w], vec![0f32; w]);
                for pos in 0..len {
                    for layer in 0..layers {
                        cache.read(layer, id, pos, &mut k, &mut v);
                        let at = pos * width + layer * 2 * whole + first;
                        assert_eq!(k, snapshot[at..at + w], "N={n} rank {} keys", c.rank());
                        let at = at + whole;
                        assert_eq!(v, snapshot[at..at + w], "N={n} rank {} values", c.rank());
                    }
                }
                in_threes.gather(&cache, id, len).unwrap()
            });
            assert!(results[0] == snapshot, "N={n}: gathered snapshot");
            assert!(results[1..].iter().all(|r| r.is_empty()));
        }
    }
}
