//! Throughput of the int8 matrix product and the f32 row dot on large weights:
//! `kernel_bench [k n m reps]` prints GB/s of weights streamed (and GFLOP/s),
//! in the exact mode and with int8 activations, cycling through enough copies
//! of the matrix to exceed the caches; with no arguments also the f32 row dot
//! of the output projection. `KERNEL_BENCH_FORMAT=q8_0` times the same shapes
//! as GGUF Q8_0 rows (`n` rows of `k`) instead; `KERNEL_BENCH_FORMAT=q4_k`
//! (or any K-quant, legacy or i-quant block type's name) times that type's fused
//! product: first its kernel alone on one thread over 1 MiB of rows (in
//! cache: the arithmetic's speed) at `m` and at 4 activation rows, then the
//! whole product on the pool over matrices that exceed the caches.
//! `KERNEL_BENCH_CACHE_KIB` sets the rows timed in cache (default 1024; 256
//! fits a 512 KiB L2, where a shared L3 may hold other tenants' lines), and
//! `KERNEL_BENCH_CACHE_SECS` the least time spent on those passes.

use std::time::Instant;

use grok1::backend::cpu::types::q8_blocks::{ActQ8, QuantBlock};
use grok1::backend::cpu::types::{
    iq1_m::IQ1M, iq1_s::IQ1S, iq2_s::IQ2S, iq2_xs::IQ2XS, iq2_xxs::IQ2XXS, iq3_s::IQ3S,
    iq3_xxs::IQ3XXS, iq4_nl::IQ4NL, iq4_xs::IQ4XS, q2_k::Q2K, q3_k::Q3K, q4_0::Q4_0, q4_1::Q4_1,
    q4_k::Q4K, q5_0::Q5_0, q5_1::Q5_1, q5_k::Q5K, q6_k::Q6K,
};
use grok1::backend::cpu::{kernels, CpuBackend, Isa};
use grok1::backend::{Backend, F32Matrix, QuantMatrix, RowMatrix};
use grok1::quant::GgmlType;
use grok1::weights::{DType, TensorData};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (k, n, m, reps) = match args[..] {
        [k, n, m, r] => (k, n, m, r),
        _ => (6144, 32768, 1, 10),
    };
    // Enough distinct matrices to exceed the caches (as a model's layers do),
    // used in turn: decoding streams its weights from memory.
    let mib: usize = std::env::var("KERNEL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let copies = (mib << 20).div_ceil(k * n).max(1);
    match std::env::var("KERNEL_BENCH_FORMAT").as_deref() {
        Ok("q8_0") => return q8_0(k, n, m, reps, copies),
        Ok("q2_k") => return blocks::<Q2K>(GgmlType::Q2K, k, n, m, reps, copies),
        Ok("q3_k") => return blocks::<Q3K>(GgmlType::Q3K, k, n, m, reps, copies),
        Ok("q4_k") => return blocks::<Q4K>(GgmlType::Q4K, k, n, m, reps, copies),
        Ok("q5_k") => return blocks::<Q5K>(GgmlType::Q5K, k, n, m, reps, copies),
        Ok("q6_k") => return blocks::<Q6K>(GgmlType::Q6K, k, n, m, reps, copies),
        Ok("q4_0") => return blocks::<Q4_0>(GgmlType::Q4_0, k, n, m, reps, copies),
        Ok("q4_1") => return blocks::<Q4_1>(GgmlType::Q4_1, k, n, m, reps, copies),
        Ok("q5_0") => return blocks::<Q5_0>(GgmlType::Q5_0, k, n, m, reps, copies),
        Ok("q5_1") => return blocks::<Q5_1>(GgmlType::Q5_1, k, n, m, reps, copies),
        Ok("iq4_nl") => return blocks::<IQ4NL>(GgmlType::IQ4_NL, k, n, m, reps, copies),
        Ok("iq4_xs") => return blocks::<IQ4XS>(GgmlType::IQ4_XS, k, n, m, reps, copies),
        Ok("iq3_s") => return blocks::<IQ3S>(GgmlType::IQ3_S, k, n, m, reps, copies),
        Ok("iq3_xxs") => return blocks::<IQ3XXS>(GgmlType::IQ3_XXS, k, n, m, reps, copies),
        Ok("iq2_s") => return blocks::<IQ2S>(GgmlType::IQ2_S, k, n, m, reps, copies),
        Ok("iq2_xs") => return blocks::<IQ2XS>(GgmlType::IQ2_XS, k, n, m, reps, copies),
        Ok("iq2_xxs") => return blocks::<IQ2XXS>(GgmlType::IQ2_XXS, k, n, m, reps, copies),
        Ok("iq1_s") => return blocks::<IQ1S>(GgmlType::IQ1_S, k, n, m, reps, copies),
        Ok("iq1_m") => return blocks::<IQ1M>(GgmlType::IQ1_M, k, n, m, reps, copies),
        Ok(other) if !other.is_empty() => panic!("KERNEL_BENCH_FORMAT={other}: no such type"),
        _ => {}
    }
    let ws: Vec<QuantMatrix> = (0..copies)
        .map(|c| {
            let weight: Vec<u8> = (0..k * n).map(|i| ((i + c) * 7 % 251) as u8).collect();
            let scales: Vec<u8> = (0..n)
                .flat_map(|_| half::bf16::from_f32(0.01).to_bits().to_le_bytes())
                .collect();
            QuantMatrix {
                k,
                n,
                groups: 1,
                weight: TensorData::owned(weight),
                scales: TensorData::owned(scales),
                scale_dtype: DType::BF16,
            }
        })
        .collect();
    let backend = CpuBackend::new();
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut out = vec![0f32; m * n];
    for fast in [false, true] {
        let product = |w: &QuantMatrix, out: &mut [f32]| {
            if fast {
                backend.matmul_q8_fast(&x, w, out)
            } else {
                backend.matmul_q8(&x, w, out)
            }
        };
        let name = format!("q8{} [{k} x {n}] m={m}", if fast { " int8" } else { "" });
        let secs = time_products(&ws, reps, &mut out, product);
        report(&name, k * n, 2 * m * k * n, reps, secs, &backend);
    }
    if args.len() == 4 {
        // A shape was asked for: the int8 product only.
        return;
    }
    let rows = 131072;
    let d = 6144 / 2;
    let e: Vec<u8> = (0..rows * d)
        .flat_map(|i| ((i % 17) as f32 * 0.001).to_le_bytes())
        .collect();
    let e = F32Matrix {
        rows,
        cols: d,
        data: TensorData::owned(e),
    };
    let x: Vec<f32> = (0..m * d).map(|i| (i % 11) as f32 * 0.01).collect();
    let mut out = vec![0f32; m * rows];
    backend.matmul_transposed_f32(&x, &e, &mut out, grok1::Precision::F32);
    let start = Instant::now();
    for _ in 0..reps {
        backend.matmul_transposed_f32(&x, &e, &mut out, grok1::Precision::F32);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "f32 rows [{rows} x {d}] m={m}: {:.2} GB/s",
        (rows * d * 4 * reps) as f64 / secs / 1e9
    );
}

/// The Q8_0 row products (f32 and int8 activations) on `copies` matrices of
/// `n` rows of `k`.
fn q8_0(k: usize, n: usize, m: usize, reps: usize, copies: usize) {
    let ws: Vec<RowMatrix> = (0..copies)
        .map(|c| {
            let mut data = Vec::with_capacity(n * k / 32 * 34);
            for b in 0..n * k / 32 {
                data.extend(half::f16::from_f32(0.01 + (b % 7) as f32 * 0.001).to_le_bytes());
                data.extend((0..32).map(|i| ((b * 32 + i + c) * 7 % 251) as u8));
            }
            RowMatrix {
                rows: n,
                cols: k,
                dtype: GgmlType::Q8_0,
                data: TensorData::owned(data),
            }
        })
        .collect();
    let backend = CpuBackend::new();
    let isa = backend.isa();
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    // The kernels alone on one thread over 1 MiB of rows (in cache: the
    // arithmetic's speed), best of many passes.
    let row_bytes = k / 32 * 34;
    // (No more than the matrix has.)
    let rows = ((cache_bytes() / row_bytes).max(8) / 8 * 8).min(n);
    let w = &ws[0].data.bytes()[..rows * row_bytes];
    let act = grok1::backend::cpu::types::q8_0::ActQ8_0::quantize(isa, &x, m, k);
    let xp = grok1::backend::cpu::types::q8_0::pair_rows(&x, m, k);
    let mut out = vec![0f32; rows * m];
    let shape = format!("[{rows} x {k}] m={m}");
    in_cache("q8_0", &shape, rows * row_bytes, isa, || {
        kernels::dot_q8_0_rows(isa, &x, m, k, w, &mut out)
    });
    if kernels::q8_0_paired(isa, m) {
        // The tile kernel that prefill takes from this many rows on.
        in_cache("q8_0 paired", &shape, rows * row_bytes, isa, || {
            kernels::dot_q8_0_rows_paired(isa, &xp, m, k, w, &mut out)
        });
    }
    in_cache("q8_0 int8", &shape, rows * row_bytes, isa, || {
        kernels::dot_q8_0_rows_int8(isa, act.rows(0..m), w, &mut out)
    });
    let mut out = vec![0f32; m * n];
    for fast in [false, true] {
        let product = |w: &RowMatrix, out: &mut [f32]| {
            if fast {
                backend.matmul_rows_fast(&x, w, out)
            } else {
                backend.matmul_rows(&x, w, out)
            }
        };
        let name = format!("q8_0{} [{n} x {k}] m={m}", if fast { " int8" } else { "" });
        let secs = time_products(&ws, reps, &mut out, product);
        report(&name, n * k / 32 * 34, 2 * m * k * n, reps, secs, &backend);
    }
}

/// `rows` rows of `k` values of block type `T`: random codes, the f16
/// scales set to small finite values.
fn random_rows<T: QuantBlock>(rows: usize, k: usize, seed: usize) -> Vec<u8> {
    let blocks = rows * k / T::VALUES;
    let mut data: Vec<u8> = (0..blocks * T::BYTES)
        .map(|i| (((i + seed) * 2_654_435_761) >> 13) as u8)
        .collect();
    for (b, block) in data.chunks_exact_mut(T::BYTES).enumerate() {
        let d = half::f16::from_f32(0.01 + (b % 7) as f32 * 0.001).to_le_bytes();
        block[T::SA_AT..T::SA_AT + 2].copy_from_slice(&d);
        if T::HAS_B {
            block[T::SB_AT..T::SB_AT + 2].copy_from_slice(&d);
        }
    }
    data
}

/// A block type's fused product: its kernel alone on one thread, in cache,
/// then the whole product (`matmul_rows_fast`) on `copies` matrices.
fn blocks<T: kernels::RowBlock>(
    dtype: GgmlType,
    k: usize,
    n: usize,
    m: usize,
    reps: usize,
    copies: usize,
) {
    let backend = CpuBackend::new();
    let isa = backend.isa();
    let row_bytes = k / T::VALUES * T::BYTES;
    let x: Vec<f32> = (0..4 * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
        .collect();
    // In cache: 1 MiB of rows (or `cache_bytes`), best of many passes.
    let rows = (cache_bytes() / row_bytes).max(8) / 8 * 8;
    let w = random_rows::<T>(rows, k, 0);
    for g in [m.min(4), 4] {
        let act = ActQ8::quantize(isa, &x[..g * k], g, k, T::VALUES);
        let mut out = vec![0f32; rows * g];
        let shape = format!("[{rows} x {k}] m={g}");
        in_cache(&dtype.to_string(), &shape, rows * row_bytes, isa, || {
            kernels::dot_rows_q8::<T>(isa, act.rows(0..g), &w, &mut out)
        });
    }
    let ws: Vec<RowMatrix> = (0..copies)
        .map(|c| RowMatrix {
            rows: n,
            cols: k,
            dtype,
            data: TensorData::owned(random_rows::<T>(n, k, c)),
        })
        .collect();
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
        .collect();
    let mut out = vec![0f32; m * n];
    // The best of `reps` products: the machine may be shared.
    let mut best = f64::MAX;
    for r in 0..reps + ws.len() {
        let start = Instant::now();
        backend.matmul_rows_fast(&x, &ws[r % ws.len()], &mut out);
        if r >= ws.len() {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    let name = format!("{dtype} fast [{n} x {k}] m={m}, best of {reps}");
    report(&name, n * row_bytes, 2 * m * k * n, 1, best, &backend);
}

/// The bytes of weight rows the in-cache timings pass over:
/// `KERNEL_BENCH_CACHE_KIB` KiB, 1 MiB by default.
fn cache_bytes() -> usize {
    std::env::var("KERNEL_BENCH_CACHE_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024)
        << 10
}

/// A kernel alone on this thread over rows in cache (`bytes` of them): the
/// best of 200 passes or of `KERNEL_BENCH_CACHE_SECS` seconds of them
/// (default 0; more on a shared host, where a pass's best needs a quiet
/// moment), printed as GB/s of weights.
fn in_cache(kernel: &str, shape: &str, bytes: usize, isa: Isa, mut pass: impl FnMut()) {
    let secs: f64 = std::env::var("KERNEL_BENCH_CACHE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let begun = Instant::now();
    let mut best = f64::MAX;
    let mut passes = 0;
    while passes < 200 || begun.elapsed().as_secs_f64() < secs {
        let start = Instant::now();
        pass();
        best = best.min(start.elapsed().as_secs_f64());
        passes += 1;
    }
    println!(
        "{kernel} kernel in cache {shape}: {:.2} GB/s of weights ({:.1} us) on one thread, {}",
        bytes as f64 / best / 1e9,
        best * 1e6,
        isa.name()
    );
}

/// Seconds for `reps` products cycling through `ws`, after one of each.
fn time_products<W>(
    ws: &[W],
    reps: usize,
    out: &mut [f32],
    product: impl Fn(&W, &mut [f32]),
) -> f64 {
    for w in ws {
        product(w, out);
    }
    let start = Instant::now();
    for r in 0..reps {
        product(&ws[r % ws.len()], out);
    }
    start.elapsed().as_secs_f64()
}

/// Prints a product's GB/s of weights (`bytes` per product) and GFLOP/s.
fn report(name: &str, bytes: usize, flops: usize, reps: usize, secs: f64, backend: &CpuBackend) {
    println!(
        "{name}: {:.2} GB/s, {:.1} GFLOP/s ({:.3} ms per product) on {}",
        (bytes * reps) as f64 / secs / 1e9,
        (flops * reps) as f64 / secs / 1e9,
        secs / reps as f64 * 1e3,
        backend.name()
    );
}
