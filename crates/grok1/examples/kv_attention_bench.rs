//! Time of one decode row's attention over a cache of each KV type, at
//! Grok-1's head shape (48 query heads, 8 key heads of 128):
//! `kv_attention_bench [depth] [reps]` (default 4096, 50) prints, per type,
//! the best and median of `reps` calls over one layer of a cache filled to
//! `depth` tokens, and the bytes of keys and values read. Eight layers' worth
//! of pages are cycled through so a call reads its pages from memory, as a
//! model's layers do. Best-of-N, so a busy machine's noise stays out of the
//! best figure.

use std::time::Instant;

use grok1::backend::cpu::CpuBackend;
use grok1::backend::{AttentionParams, Backend, Precision, RowPosition};
use grok1::{KvCache, KvType, ModelConfig};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let depth = args.first().copied().unwrap_or(4096);
    let reps = args.get(1).copied().unwrap_or(50);
    let layers = 8;
    let mut cfg = ModelConfig::grok1();
    cfg.num_layers = layers;
    let (hd, kvw, qw) = (cfg.key_size, cfg.kv_width(), cfg.q_width());
    let backend = CpuBackend::new();
    println!(
        "one decode row, depth {depth}, {} threads, best and median of {reps} (us)",
        rayon::current_num_threads()
    );
    for kv_type in KvType::ALL {
        let mut cache = KvCache::with_capacity(&cfg, depth, 1, kv_type);
        let seq = cache.add_sequence();
        cache.reserve(seq, depth).unwrap();
        let mut x = 0x9E37_79B9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2001) as f32 / 1000.0 - 1.0
        };
        for pos in 0..depth {
            for layer in 0..layers {
                let k: Vec<f32> = (0..kvw).map(|_| next()).collect();
                let v: Vec<f32> = (0..kvw).map(|_| next()).collect();
                cache.write(layer, seq, pos, &k, &v);
            }
        }
        cache.commit(seq, &vec![5; depth], 0);
        let q: Vec<f32> = (0..qw).map(|_| next()).collect();
        let params = AttentionParams {
            num_q_heads: cfg.num_q_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            multiplier: cfg.attn_output_multiplier as f32,
            softcap: cfg.attn_softcap as f32,
            precision: Precision::Fast,
        };
        let rows = [RowPosition {
            seq,
            pos: depth - 1,
        }];
        let mut out = vec![0f32; qw];
        let mut times = Vec::new();
        for rep in 0..reps + layers {
            let start = Instant::now();
            backend.attention(&q, &rows, &cache, rep % layers, &params, &mut out);
            if rep >= layers {
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        let bytes = depth * 2 * cfg.num_kv_heads * kv_type.row_bytes(hd);
        println!(
            "{kv_type:>5}: best {:8.1} median {:8.1}; {:.1} MiB of keys and values a layer",
            times[0],
            times[times.len() / 2],
            bytes as f64 / (1 << 20) as f64
        );
    }
}
