//! Latency and bandwidth of the tensor-parallel collectives at Grok-1's
//! message sizes, through the same `Collective` the forward pass calls.
//! Run by `bench/allreduce.sh` (`mpirun -np N target/release/examples/allreduce`).
//!
//! Per decoded token Grok-1 runs 2 all-reduces of `d` = 6144 f32 per layer (64
//! layers) and one of the embedding, plus one gather of the logits
//! (131072 / N f32 from each rank); a prefill of T tokens multiplies the
//! all-reduces by T.

use std::time::Instant;

use grok1::parallel::mpi::MpiRuntime;
use grok1::parallel::Collective;

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `reps` calls of `f`, after a few warm-ups; every rank
/// takes the slowest rank's time of each call (the time a token waits).
fn time(c: &dyn Collective, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut secs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f();
        let mine = start.elapsed().as_secs_f64() as f32;
        let mut all = vec![0f32; c.size()];
        c.all_gather_f32(&[mine], &mut all);
        secs.push(all.iter().copied().fold(0f32, f32::max) as f64);
    }
    median(&mut secs)
}

fn main() {
    // As the grok1 binary does: large freed buffers are reused, not unmapped.
    grok1::runtime::keep_freed_buffers();
    let runtime = match MpiRuntime::init() {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!(
                "allreduce: run under mpirun (mpirun -np 2 target/release/examples/allreduce)"
            );
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("allreduce: {e}");
            std::process::exit(2);
        }
    };
    let c = runtime.collective();
    let n = c.size();
    let d = 6144;
    let vocab = 131072;
    let root = c.rank() == 0;
    if root {
        println!("| operation | message per rank | ranks | median time | bus bandwidth |");
        println!("| --- | ---: | ---: | ---: | ---: |");
    }
    for (label, floats) in [
        ("all-reduce, decode (1 token x d)", d),
        ("all-reduce, 16 tokens x d", 16 * d),
        ("all-reduce, prefill 128 tokens x d", 128 * d),
    ] {
        let mut x = vec![1f32; floats];
        let reps = if floats > 100_000 { 20 } else { 200 };
        let t = time(&*c, reps, || c.all_reduce_sum(&mut x));
        // Bytes each rank moves in and out (the gather-based sum receives the
        // other ranks' parts): (N - 1) x message.
        let bus = (n - 1) as f64 * floats as f64 * 4.0 / t;
        if root {
            println!(
                "| {label} | {} KiB | {n} | {:.1} us | {:.2} GB/s |",
                floats * 4 / 1024,
                t * 1e6,
                bus / 1e9
            );
        }
    }
    let part = vocab / n;
    let local = vec![1f32; part];
    let mut all = vec![0f32; part * n];
    let t = time(&*c, 100, || c.all_gather_f32(&local, &mut all));
    if root {
        println!(
            "| gather logits (1 row, vocab / N) | {} KiB | {n} | {:.1} us | {:.2} GB/s |",
            part * 4 / 1024,
            t * 1e6,
            (n - 1) as f64 * part as f64 * 4.0 / t / 1e9
        );
        let mut x = vec![1f32; d];
        let per_token = time(&*c, 200, || c.all_reduce_sum(&mut x)) * (2 * 64 + 1) as f64 + t;
        println!();
        println!(
            "per decoded token of the full Grok-1 (64 layers: 129 all-reduces of d, one logits gather): {:.2} ms of communication",
            per_token * 1e3
        );
    } else {
        let mut x = vec![1f32; d];
        time(&*c, 200, || c.all_reduce_sum(&mut x));
    }
}
