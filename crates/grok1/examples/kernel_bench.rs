//! Throughput of the int8 matrix product and the f32 row dot on large weights:
//! `kernel_bench [k n m reps]` prints GB/s of weights streamed (and GFLOP/s),
//! in the exact mode and with int8 activations, cycling through enough copies
//! of the matrix to exceed the caches; with no arguments also the f32 row dot
//! of the output projection. `KERNEL_BENCH_FORMAT=q8_0` times the same shapes
//! as GGUF Q8_0 rows (`n` rows of `k`) instead.

use std::time::Instant;

use grok1::backend::{cpu::CpuBackend, Backend, F32Matrix, QuantMatrix, RowMatrix};
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
    if std::env::var("KERNEL_BENCH_FORMAT").as_deref() == Ok("q8_0") {
        return q8_0(k, n, m, reps, copies);
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
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
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
