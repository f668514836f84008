//! The SIMD kernels against the portable scalar ones, and the matrix-product
//! driver against a plain f64 product, on random shapes including ragged ones
//! (dimensions that are not multiples of the vector width or the task size).

use grok1::backend::cpu::attention::pages;
use grok1::backend::cpu::common::Aligned;
use grok1::backend::cpu::kernels;
use grok1::backend::cpu::types::{int8_ckpt, q8_0};
use grok1::backend::cpu::CpuBackend;
use grok1::backend::cpu::Isa;
use grok1::backend::{quantize_row_i8, Backend, F32Matrix, Int8Rows, QuantMatrix, RowMatrix};
use grok1::kv_cache::ValuesPage;
use grok1::quant::GgmlType;
use grok1::weights::{DType, TensorData};
use proptest::prelude::*;

fn quant(k: usize, n: usize, groups: usize, seed: u64) -> (QuantMatrix, Vec<i8>, Vec<f32>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let w: Vec<i8> = (0..k * n)
        .map(|_| (next() % 255) as i64 as i8)
        .map(|v| v.max(-127))
        .collect();
    let s: Vec<f32> = (0..groups * n)
        .map(|_| half::bf16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5).to_f32())
        .collect();
    let m = QuantMatrix {
        k,
        n,
        groups,
        weight: TensorData::owned(w.iter().map(|&v| v as u8).collect()),
        scales: TensorData::owned(
            s.iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        ),
        scale_dtype: DType::BF16,
    };
    (m, w, s)
}

fn reference(
    x: &[f32],
    m: usize,
    w: &[i8],
    s: &[f32],
    k: usize,
    n: usize,
    groups: usize,
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for r in 0..k {
            let g = r / (k / groups);
            for j in 0..n {
                out[i * n + j] += x[i * k + r] as f64 * (w[r * n + j] as f64 * s[g * n + j] as f64);
            }
        }
    }
    out
}

/// `rows` rows of `blocks` Q8_0 blocks (an f16 scale, then 32 int8 values
/// `val(..) + lowest`), and the same values dequantised, row-major `[rows, 32 *
/// blocks]`.
fn q8_0_rows(
    rows: usize,
    blocks: usize,
    lowest: i64,
    val: &dyn Fn(usize, u64) -> u64,
) -> (Vec<u8>, Vec<f64>) {
    let k = 32 * blocks;
    let mut bytes = Vec::new();
    let mut dense = vec![0f64; rows * k];
    for r in 0..rows {
        for b in 0..blocks {
            let d = half::f16::from_f32(0.001 + val(r * blocks + b, 5) as f32 * 1e-4);
            bytes.extend(d.to_le_bytes());
            for t in 0..32 {
                let q = val((r * blocks + b) * 32 + t, 9) as i64 + lowest;
                bytes.push(q as i8 as u8);
                dense[r * k + 32 * b + t] = d.to_f64() * q as f64;
            }
        }
    }
    (bytes, dense)
}

/// A row-dot case for the Q8_0 proptests: `k = 32 * blocks`, Q8_0 rows with
/// values from `lowest` to 127 (`q8_0_rows`), and `m` activation rows in
/// [-2, 2).
fn q8_0_case(
    rows: usize,
    blocks: usize,
    m: usize,
    seed: u64,
    lowest: i64,
) -> (usize, Vec<u8>, Vec<f64>, Vec<f32>) {
    let k = 32 * blocks;
    let span = (128 - lowest) as u64;
    let val = |i: usize, salt: u64| ((i as u64).wrapping_mul(2654435761) ^ seed ^ salt) % span;
    let (bytes, dense) = q8_0_rows(rows, blocks, lowest, &val);
    let x = (0..m * k).map(|i| val(i, 3) as f32 / 64.0 - 2.0).collect();
    (k, bytes, dense, x)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn int8_row_dots_are_exact_on_every_isa(k in 0usize..300, rows in 1usize..12, g in 1usize..10, seed in any::<u64>()) {
        let val = |i: usize| (((i as u64).wrapping_mul(2654435761) ^ seed) % 255) as i64 - 127;
        let x: Vec<i8> = (0..g * k).map(|i| val(i) as i8).collect();
        let w: Vec<i8> = (0..rows * k).map(|i| val(i + 7919) as i8).collect();
        let want: Vec<i32> = (0..rows * g)
            .map(|o| {
                let (r, t) = (o / g, o % g);
                (0..k).map(|i| x[t * k + i] as i32 * w[r * k + i] as i32).sum()
            })
            .collect();
        for isa in Isa::available() {
            let mut got = vec![7i32; rows * g];
            kernels::dot_i8_rows(isa, &x, g, &w, &mut got);
            prop_assert_eq!(&got, &want, "{}", isa.name());
        }
    }

    #[test]
    fn fast_output_product_on_every_isa(k in 1usize..200, rows in 1usize..600, m in 1usize..5, seed in any::<u64>()) {
        let e: Vec<f32> = (0..rows * k).map(|i| (((i as u64 ^ seed).wrapping_mul(0x9E37_79B9)) % 2001) as f32 / 1000.0 - 1.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 + 11) % 101) as f32 / 50.0 - 1.0).collect();
        let q = Int8Rows::quantize(rows, k, |r, out| out.copy_from_slice(&e[r * k..(r + 1) * k]));
        let mut scalar = vec![0f32; m * rows];
        CpuBackend::with_isa(Isa::Scalar).matmul_int8_rows(&x, &q, &mut scalar);
        for isa in Isa::available() {
            let mut out = vec![0f32; m * rows];
            CpuBackend::with_isa(isa).matmul_int8_rows(&x, &q, &mut out);
            // Integer sums: every path is bit-identical.
            prop_assert!(out == scalar, "{} differs from scalar", isa.name());
        }
        // Against the exact product: each operand is within half a step
        // (absmax / 254) of its value, so the error is bounded by
        // sum |x||dw| + |dx||w| + |dx||dw|.
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let ax = xi.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 254.0;
            for r in 0..rows {
                let er = &e[r * k..(r + 1) * k];
                let aw = er.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 254.0;
                let exact: f64 = xi.iter().zip(er).map(|(&a, &b)| a as f64 * b as f64).sum();
                let bound: f64 = xi.iter().zip(er).map(|(&a, &b)| a.abs() as f64 * aw + b.abs() as f64 * ax + ax * aw).sum::<f64>() * 1.001 + 1e-6;
                let got = scalar[i * rows + r] as f64;
                prop_assert!((got - exact).abs() <= bound, "row {} x {}: {} vs {} (bound {})", r, i, got, exact, bound);
            }
        }
    }

    #[test]
    fn q8_product_on_every_isa(k_div in 1usize..40, groups in prop_oneof![Just(1usize), Just(2), Just(8)], n in 1usize..150, m in 1usize..10, seed in any::<u64>()) {
        let k = k_div * groups * if seed % 3 == 0 { 37 } else { 1 };
        let (w, wq, s) = quant(k, n, groups, seed);
        let x: Vec<f32> = (0..m * k).map(|i| (((i as u64 * 2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        let want = reference(&x, m, &wq, &s, k, n, groups);
        let mut scalar = vec![0f32; m * n];
        CpuBackend::with_isa(Isa::Scalar).matmul_q8(&x, &w, &mut scalar);
        for (got, want) in scalar.iter().zip(&want) {
            let bound = 1e-5 * (k as f64).sqrt() * (1.0 + want.abs());
            prop_assert!((*got as f64 - want).abs() <= bound, "scalar {} vs f64 {}", got, want);
        }
        for isa in Isa::available() {
            let mut out = vec![0f32; m * n];
            CpuBackend::with_isa(isa).matmul_q8(&x, &w, &mut out);
            // Same FMAs in the same order: bit-identical to the scalar kernels.
            prop_assert!(out == scalar, "{} differs from scalar", isa.name());
        }
    }

    #[test]
    fn fast_q8_block_on_every_isa(cuts in proptest::collection::vec(1usize..300, 1..4), nb in 1usize..300, extra in 0usize..40, m in prop_oneof![1usize..14, 14usize..40], seed in any::<u64>()) {
        fast_q8_block_case(&cuts, nb, extra, m, seed)?;
    }

    #[test]
    fn fast_q8_product_is_within_its_bound(k_div in 1usize..40, groups in prop_oneof![Just(1usize), Just(2), Just(8)], n in 1usize..150, m in 1usize..10, seed in any::<u64>()) {
        let k = k_div * groups * if seed % 3 == 0 { 37 } else { 1 };
        let (w, wq, s) = quant(k, n, groups, seed);
        let x: Vec<f32> = (0..m * k).map(|i| (((i as u64 * 2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect();
        let exact = reference(&x, m, &wq, &s, k, n, groups);
        let mut scalar = vec![0f32; m * n];
        CpuBackend::with_isa(Isa::Scalar).matmul_q8_fast(&x, &w, &mut scalar);
        for isa in Isa::available() {
            let mut out = vec![0f32; m * n];
            CpuBackend::with_isa(isa).matmul_q8_fast(&x, &w, &mut out);
            prop_assert!(out == scalar, "{} differs from scalar", isa.name());
        }
        // Each activation is within half a step (its block's absmax / 254) of
        // its value, blocks no longer than 32: the error is at most
        // sum over r of |w[r][j] s| * max|x| over r's 32-row window / 254.
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            // max|x| over each r's 32-row window, once per activation row.
            let ax: Vec<f64> = (0..k).map(|r| {
                let lo = r.saturating_sub(31);
                let hi = (r + 32).min(k);
                xi[lo..hi].iter().fold(0f32, |a, v| a.max(v.abs())) as f64
            }).collect();
            for j in 0..n {
                let bound: f64 = (0..k).map(|r| {
                    (wq[r * n + j] as f64 * s[(r / (k / groups)) * n + j] as f64).abs() * ax[r] / 254.0
                }).sum::<f64>() * 1.001 + 1e-5 * (1.0 + exact[i * n + j].abs());
                let got = scalar[i * n + j] as f64;
                prop_assert!((got - exact[i * n + j]).abs() <= bound, "[{}, {}]: {} vs {} (bound {})", i, j, got, exact[i * n + j], bound);
            }
        }
    }

    #[test]
    fn q8_block_kernel_on_every_isa(rows in 1usize..600, nb in 1usize..300, extra in 0usize..20, m in 1usize..20, wide in any::<bool>(), seed in any::<u64>()) {
        // Wide rows (a page or more apart) take the row-by-row conversion.
        let n = nb + extra + if wide { 4096 } else { 0 };
        let n0 = extra / 2;
        let (_, w, _) = quant(rows, n, 1, seed);
        let w: Vec<u8> = w.iter().map(|&v| v as u8).collect();
        let xt: Vec<f32> = (0..rows * m).map(|i| (i % 17) as f32 * 0.25 - 2.0).collect();
        let scales: Vec<f32> = (0..nb).map(|j| 0.01 + (j % 7) as f32 * 0.003).collect();
        let mut want = vec![0.5f32; m * nb];
        let block = int8_ckpt::Q8Rows { w: &w, n, rows: 0..rows, n0 };
        int8_ckpt::q8_block_scalar(&xt, m, &block, &scales, &mut want);
        for isa in Isa::available() {
            let mut total = vec![0.5f32; m * nb];
            kernels::q8_block(isa, &xt, m, &block, &scales, &mut total);
            prop_assert!(total == want, "{}", isa.name());
        }
    }

    #[test]
    fn q8_0_row_dots_on_every_isa(blocks in 1usize..12, rows in 1usize..20, m in 1usize..10, seed in any::<u64>()) {
        let (k, bytes, dense, x) = q8_0_case(rows, blocks, m, seed, -127);
        let mut scalar = vec![0f32; rows * m];
        kernels::dot_q8_0_rows(Isa::Scalar, &x, m, k, &bytes, &mut scalar);
        for r in 0..rows {
            for i in 0..m {
                let want: f64 = (0..k).map(|t| x[i * k + t] as f64 * dense[r * k + t]).sum();
                let scale: f64 = (0..k).map(|t| (x[i * k + t] as f64 * dense[r * k + t]).abs()).sum();
                prop_assert!((scalar[r * m + i] as f64 - want).abs() <= 1e-6 * scale + 1e-9, "row {} x {}", r, i);
            }
        }
        for isa in Isa::available() {
            let mut out = vec![0f32; rows * m];
            kernels::dot_q8_0_rows(isa, &x, m, k, &bytes, &mut out);
            // The same operations in the same order: bit-identical.
            prop_assert!(out == scalar, "{} differs from scalar", isa.name());
            // And each row alone gives what it gives in the batch.
            for i in 0..m {
                let mut alone = vec![0f32; rows];
                kernels::dot_q8_0_rows(isa, &x[i * k..(i + 1) * k], 1, k, &bytes, &mut alone);
                for r in 0..rows {
                    prop_assert!(alone[r] == out[r * m + i], "{}: row {} alone differs", isa.name(), i);
                }
            }
        }
    }

    #[test]
    fn q8_0_paired_tiles_match_the_row_kernel(blocks in 1usize..40, rows in 1usize..12, m in 1usize..40, seed in any::<u64>()) {
        // Up to 20 pairs (two pair groups), chunks of blocks with a short last
        // one, a tile with one weight row left over.
        let (k, bytes, _, x) = q8_0_case(rows, blocks, m, seed, -128);
        let mut scalar = vec![0f32; rows * m];
        kernels::dot_q8_0_rows(Isa::Scalar, &x, m, k, &bytes, &mut scalar);
        let xp = q8_0::pair_rows(&x, m, k);
        for isa in Isa::available() {
            let mut out = vec![0f32; rows * m];
            kernels::dot_q8_0_rows_paired(isa, &xp, m, k, &bytes, &mut out);
            prop_assert!(out == scalar, "{} differs from scalar", isa.name());
        }
    }

    #[test]
    fn q8_0_int8_row_dots_on_every_isa(blocks in 1usize..12, rows in 1usize..40, m in 1usize..40, seed in any::<u64>()) {
        // Values over the whole int8 range (-128 included).
        let (k, bytes, dense, x) = q8_0_case(rows, blocks, m, seed, -128);
        let act = q8_0::ActQ8_0::quantize(Isa::Scalar, &x, m, k);
        let mut scalar = vec![0f32; rows * m];
        kernels::dot_q8_0_rows_int8(Isa::Scalar, act.rows(0..m), &bytes, &mut scalar);
        for r in 0..rows {
            for i in 0..m {
                // The scalar kernel is the dot of the dequantised activations
                // and weights (up to f32 rounding) ...
                let xd = |t: usize| act.q[i * k + t] as f64 * act.s[i * blocks + t / 32] as f64;
                let want: f64 = (0..k).map(|t| xd(t) * dense[r * k + t]).sum();
                let scale: f64 = (0..k).map(|t| (xd(t) * dense[r * k + t]).abs()).sum();
                let got = scalar[r * m + i] as f64;
                prop_assert!((got - want).abs() <= 1e-6 * scale + 1e-9, "row {} x {}: {} vs {}", r, i, got, want);
                // ... and within the activations' rounding of the f32 product:
                // each value moves by at most half a step (absmax / 254).
                let exact: f64 = (0..k).map(|t| x[i * k + t] as f64 * dense[r * k + t]).sum();
                let bound: f64 = (0..k)
                    .map(|t| 0.5 * act.s[i * blocks + t / 32] as f64 * dense[r * k + t].abs())
                    .sum();
                prop_assert!((got - exact).abs() <= bound * 1.0001 + 1e-6 * scale + 1e-9, "row {} x {}", r, i);
            }
        }
        for isa in Isa::available() {
            let other = q8_0::ActQ8_0::quantize(isa, &x, m, k);
            prop_assert!(other.q == act.q && other.s == act.s, "{} quantises differently", isa.name());
            let mut out = vec![0f32; rows * m];
            // (Quantised on the ISA: the AMX kernel reads its own layout.)
            kernels::dot_q8_0_rows_int8(isa, other.rows(0..m), &bytes, &mut out);
            // The same operations in the same order: bit-identical.
            prop_assert!(out == scalar, "{} differs from scalar", isa.name());
            for i in 0..m {
                let alone = q8_0::ActQ8_0::quantize(isa, &x[i * k..(i + 1) * k], 1, k);
                let mut one = vec![0f32; rows];
                kernels::dot_q8_0_rows_int8(isa, alone.rows(0..1), &bytes, &mut one);
                for r in 0..rows {
                    prop_assert!(one[r] == out[r * m + i], "{}: row {} alone differs", isa.name(), i);
                }
            }
        }
    }

    #[test]
    fn f32_row_dots_on_every_isa(d in 1usize..200, m in 1usize..6, rows in 1usize..20, offset in 0usize..4, seed in any::<u64>()) {
        // Rows start at an odd byte offset, as payloads in a pickle do.
        let e: Vec<f32> = (0..rows * d).map(|i| ((i as u64 ^ seed) % 97) as f32 * 0.01 - 0.5).collect();
        let mut bytes = vec![0u8; offset];
        bytes.extend(e.iter().flat_map(|v| v.to_le_bytes()));
        let x: Vec<f32> = (0..m * d).map(|i| (i % 29) as f32 * 0.1 - 1.4).collect();
        for isa in Isa::available() {
            let mut got = vec![0f32; rows * m];
            kernels::dot_f32_bytes(isa, &x, m, d, &bytes[offset..], &mut got);
            for r in 0..rows {
                for i in 0..m {
                    let want: f64 = (0..d).map(|j| x[i * d + j] as f64 * e[r * d + j] as f64).sum();
                    let g = got[r * m + i] as f64;
                    // Summation order differs: within f32 rounding of the length.
                    prop_assert!((g - want).abs() <= 1e-6 * d as f64 * (1.0 + want.abs()), "{}: row {} x {}: {} vs {}", isa.name(), r, i, g, want);
                }
            }
        }
    }
}

/// `kernels::q8_block_fast` on every ISA against the scalar kernel, for
/// splits of the given lengths (ragged quads and blocks), weights over the
/// whole int8 range (-128 included), activations with outliers.
fn fast_q8_block_case(
    cuts: &[usize],
    nb: usize,
    extra: usize,
    m: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let k: usize = cuts.iter().sum();
    let splits: Vec<std::ops::Range<usize>> = cuts
        .iter()
        .scan(0, |at, &c| {
            *at += c;
            Some(*at - c..*at)
        })
        .collect();
    let n = nb + extra;
    let n0 = extra / 2;
    let val = |i: usize, salt: u64| {
        ((i as u64).wrapping_mul(2654435761) ^ seed ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 40
    };
    let w: Vec<u8> = (0..k * n).map(|i| val(i, 1) as u8).collect();
    let x: Vec<f32> = (0..m * k)
        .map(|i| {
            let v = (val(i, 2) % 2001) as f32 / 1000.0 - 1.0;
            if val(i, 3) % 53 == 0 {
                v * 40.0
            } else {
                v
            }
        })
        .collect();
    let scales: Vec<f32> = (0..nb).map(|j| 0.01 + (j % 7) as f32 * 0.003).collect();
    // Quantised on every path: the same values.
    let act = int8_ckpt::ActI8::quantize(Isa::Scalar, &x, m, k, &splits);
    for isa in Isa::available() {
        let other = int8_ckpt::ActI8::quantize(isa, &x, m, k, &splits);
        prop_assert!(
            other.q == act.q && other.sx == act.sx && other.xsum == act.xsum,
            "{} quantises differently",
            isa.name()
        );
    }
    for (s, rows) in splits.iter().enumerate() {
        let block = int8_ckpt::Q8Rows {
            w: &w,
            n,
            rows: rows.clone(),
            n0,
        };
        let mut want = vec![0.5f32; m * nb];
        kernels::q8_block_fast(Isa::Scalar, &act, s, &block, &scales, &mut want);
        for isa in Isa::available() {
            let mut total = vec![0.5f32; m * nb];
            kernels::q8_block_fast(isa, &act, s, &block, &scales, &mut total);
            // Integer sums, then the same f32 steps: bit-identical.
            prop_assert!(
                total == want,
                "{} differs from scalar (split {})",
                isa.name(),
                s
            );
            // Each row alone (another kernel shape) gives the same values.
            let i = seed as usize % m;
            let alone = int8_ckpt::ActI8::quantize(isa, &x[i * k..(i + 1) * k], 1, k, &splits);
            let mut one = vec![0.5f32; nb];
            kernels::q8_block_fast(isa, &alone, s, &block, &scales, &mut one);
            prop_assert!(
                one[..] == total[i * nb..(i + 1) * nb],
                "{}: row {} alone differs",
                isa.name(),
                i
            );
        }
    }
    Ok(())
}

#[test]
fn fast_q8_block_in_many_panel_chunks() {
    // Splits long enough that the tile kernels cut them into several chunks
    // of packed panels (their sums carried between chunks), 35 rows (two full
    // AMX tiles and a ragged one), a ragged last block.
    fast_q8_block_case(&[4096, 45], 272, 16, 35, 7).unwrap();
}

#[test]
fn tied_projection_matches_row_dots() {
    let (rows, d, m) = (300, 45, 3);
    let e: Vec<f32> = (0..rows * d)
        .map(|i| (i % 31) as f32 * 0.02 - 0.3)
        .collect();
    let mut bytes = vec![7u8; 3];
    bytes.extend(e.iter().flat_map(|v| v.to_le_bytes()));
    let data = TensorData::owned(bytes).slice(3, rows * d * 4);
    let matrix = F32Matrix {
        rows,
        cols: d,
        data,
    };
    let x: Vec<f32> = (0..m * d).map(|i| (i % 7) as f32 * 0.3).collect();
    for isa in Isa::available() {
        let mut out = vec![0f32; m * rows];
        CpuBackend::with_isa(isa).matmul_transposed_f32(
            &x,
            &matrix,
            &mut out,
            grok1::Precision::F32,
        );
        for i in 0..m {
            for r in 0..rows {
                let want: f32 = (0..d).map(|j| x[i * d + j] * e[r * d + j]).sum();
                assert!(
                    (out[i * rows + r] - want).abs() < 1e-4,
                    "{} row {r}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn q8_product_with_several_row_splits_and_column_blocks() {
    // k over several 1024-row splits in 4 groups, n over several column blocks.
    let (k, n, m, groups) = (4 * 600, 20_000, 2, 4);
    let (w, wq, s) = quant(k, n, groups, 42);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let want = reference(&x, m, &wq, &s, k, n, groups);
    let mut scalar = vec![0f32; m * n];
    CpuBackend::with_isa(Isa::Scalar).matmul_q8(&x, &w, &mut scalar);
    let worst = scalar
        .iter()
        .zip(&want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0f64, f64::max);
    assert!(worst < 1e-3, "scalar vs f64: {worst}");
    for isa in Isa::available() {
        let mut out = vec![0f32; m * n];
        CpuBackend::with_isa(isa).matmul_q8(&x, &w, &mut out);
        assert!(out == scalar, "{} differs from scalar", isa.name());
    }
}

/// The sums of a product do not depend on how many threads share it (the
/// tasks' column blocks and runs of row splits follow the thread count) nor
/// on the rows beside it (the block width follows the row count), in the f32
/// mode and with int8 activations, at decode and prefill row counts.
#[test]
fn q8_product_is_the_same_on_any_number_of_threads() {
    let (k, n, groups) = (8 * 300, 9_000, 4);
    let (w, _, _) = quant(k, n, groups, 7);
    for m in [1, 3, 20] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        for isa in Isa::available() {
            let backend = CpuBackend::with_isa(isa);
            let run = |threads: usize, int8: bool| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut out = vec![0f32; m * n];
                pool.install(|| {
                    if int8 {
                        backend.matmul_q8_fast(&x, &w, &mut out)
                    } else {
                        backend.matmul_q8(&x, &w, &mut out)
                    }
                });
                out
            };
            for int8 in [false, true] {
                let one = run(1, int8);
                for threads in [2, 3, 8] {
                    assert!(
                        run(threads, int8) == one,
                        "{} m={m} int8={int8}: {threads} threads differ from 1",
                        isa.name()
                    );
                }
                for i in [0, m - 1] {
                    let mut alone = vec![0f32; n];
                    let xi = &x[i * k..(i + 1) * k];
                    if int8 {
                        backend.matmul_q8_fast(xi, &w, &mut alone)
                    } else {
                        backend.matmul_q8(xi, &w, &mut alone)
                    }
                    assert!(
                        alone[..] == one[i * n..(i + 1) * n],
                        "{} m={m} int8={int8}: row {i} alone differs",
                        isa.name()
                    );
                }
            }
        }
    }
}

/// The Q8_0 products through the backend, with enough rows for several runs
/// per task, activation rows in several passes and in AMX tiles (one
/// padded): each activation row's result is the one it gets alone (f32 and
/// int8 activations), and every ISA gives the scalar result.
#[test]
fn q8_0_products_in_runs_match_rows_alone() {
    // Rows of 13600 bytes: runs of 9 rows, fewer than the 16 a task has at
    // least, whatever the thread count.
    let (blocks, n, m) = (400, 300, 21);
    let k = 32 * blocks;
    let val = |i: usize, salt: u64| ((i as u64).wrapping_mul(2654435761) ^ salt) % 255;
    let (bytes, _) = q8_0_rows(n, blocks, -127, &val);
    let w = RowMatrix {
        rows: n,
        cols: k,
        dtype: GgmlType::Q8_0,
        data: TensorData::owned(bytes),
    };
    let x: Vec<f32> = (0..m * k).map(|i| val(i, 3) as f32 / 64.0 - 2.0).collect();
    let run = |isa: Isa, x: &[f32], fast: bool| {
        let mut out = vec![0f32; x.len() / k * n];
        let backend = CpuBackend::with_isa(isa);
        if fast {
            backend.matmul_rows_fast(x, &w, &mut out);
        } else {
            backend.matmul_rows(x, &w, &mut out);
        }
        out
    };
    for fast in [false, true] {
        let scalar = run(Isa::Scalar, &x, fast);
        for isa in Isa::available() {
            let out = run(isa, &x, fast);
            assert!(
                out == scalar,
                "{} (fast {fast}) differs from scalar",
                isa.name()
            );
            for i in 0..m {
                let alone = run(isa, &x[i * k..(i + 1) * k], fast);
                assert!(
                    alone[..] == out[i * n..(i + 1) * n],
                    "{} (fast {fast}): row {i} alone differs",
                    isa.name()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn attention_kernels_on_every_isa(n in 1usize..80, hd in prop_oneof![Just(8usize), Just(16), Just(12), Just(56), Just(128)], scale in 0.01f32..20.0, seed in any::<u64>(), masked in 0usize..4) {
        let val = |i: usize, salt: u64| (((i as u64).wrapping_mul(2654435761) ^ seed ^ salt) % 2001) as f32 / 1000.0 - 1.0;
        let q: Vec<f32> = (0..hd).map(|i| val(i, 1) * scale).collect();
        let keys: Vec<f32> = (0..n * hd).map(|i| val(i, 2)).collect();
        let values: Vec<f32> = (0..n * hd).map(|i| val(i, 3)).collect();
        // Some positions masked, never all (that case is exact in both: uniform).
        let mask: Vec<bool> = (0..n).map(|j| j == 0 || (j + seed as usize) % 4 >= masked).collect();
        let run = |isa: Isa| {
            let mut scores = vec![0f32; n];
            kernels::dot_rows(isa, &q, &keys, &mut scores);
            let raw = scores.clone();
            // The softmax as attention makes it: capped scores, exp, normalised.
            let max = pages::softcap_scores(isa, &mut scores, 0.25, 30.0, &mask);
            let inv = 1.0 / pages::exp_shifted(isa, &mut scores, max);
            scores.iter_mut().for_each(|w| *w *= inv);
            let mut out = vec![0f32; hd];
            pages::page_values(isa, &scores, 1, n, n, ValuesPage::F32(&values), &mut out);
            (raw, scores, out)
        };
        let (raw, weights, out) = run(Isa::Scalar);
        prop_assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for (w, &keep) in weights.iter().zip(&mask) {
            prop_assert!(keep || *w == 0.0, "a masked key got weight {}", w);
        }
        for isa in Isa::available() {
            let (r, w, o) = run(isa);
            for (a, b) in r.iter().zip(&raw) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()) * hd as f32, "{}: score {} vs {}", isa.name(), a, b);
            }
            for (a, b) in w.iter().zip(&weights) {
                prop_assert!((a - b).abs() <= 2e-6 + 1e-5 * b, "{}: weight {} vs {}", isa.name(), a, b);
            }
            for (a, b) in o.iter().zip(&out) {
                prop_assert!((a - b).abs() <= 1e-5, "{}: output {} vs {}", isa.name(), a, b);
            }
        }
    }

    #[test]
    fn gelu_mul_on_every_isa(n in 0usize..70, scale in 0.01f32..30.0, seed in any::<u64>()) {
        let val = |i: usize, salt: u64| (((i as u64).wrapping_mul(2654435761) ^ seed ^ salt) % 2001) as f32 / 1000.0 - 1.0;
        let h: Vec<f32> = (0..n).map(|i| val(i, 5) * scale).collect();
        let v: Vec<f32> = (0..n).map(|i| val(i, 6)).collect();
        for isa in Isa::available() {
            let mut got = h.clone();
            kernels::gelu_mul(isa, &mut got, &v);
            for i in 0..n {
                // The formula in f64: what both versions approximate.
                let x = h[i] as f64;
                let want = x * 0.5 * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)).tanh()) * v[i] as f64;
                prop_assert!((got[i] as f64 - want).abs() <= 1e-6 * (1.0 + x.abs()), "{}: gelu({}) * {} = {} vs {}", isa.name(), x, v[i], got[i], want);
            }
        }
    }
}

proptest! {
    #[test]
    fn block_quantisation_is_rounding_half_away_on_every_isa(len in 1usize..40, scale in 0.001f32..1000.0, seed in any::<u64>(), nan in any::<bool>()) {
        let mut x: Vec<f32> = (0..len).map(|i| ((((i as u64).wrapping_mul(2654435761) ^ seed) % 20001) as f32 / 10000.0 - 1.0) * scale).collect();
        // The largest magnitude anywhere (past a NaN in its vector lane too),
        // halves after scaling in every lane, and a NaN (skipped by absmax,
        // quantised to 0).
        let top = if len > 4 { 4 + (seed as usize >> 8) % (len - 4) } else { 0 };
        x[top] = scale;
        for i in (1..len).filter(|&i| i != top && i % 3 != 0) {
            let half = scale * 0.5 / 127.0 * (2 * (i % 60) + 1) as f32;
            x[i] = if i % 2 == 0 { half } else { -half };
        }
        if nan && len > 3 { x[3] = f32::NAN; }
        let absmax = x.iter().fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let inv = 127.0 / absmax;
        let want: Vec<i8> = x.iter().map(|v| if v.is_nan() { 0 } else { (v * inv).round() as i8 }).collect();
        for isa in Isa::available() {
            let mut q = vec![0i8; len];
            let s = kernels::quantize_block(isa, &x, &mut q);
            prop_assert_eq!(&q, &want, "{}", isa.name());
            prop_assert_eq!(s, absmax / 127.0);
        }
    }
}

#[test]
fn int8_quantisation_handles_zero_and_extreme_rows() {
    let mut q = vec![1i8; 4];
    assert_eq!(quantize_row_i8(&[0.0; 4], &mut q), 0.0);
    assert_eq!(q, [0; 4]);
    let s = quantize_row_i8(&[-2.0, 1.0, 0.5, 2.0], &mut q);
    assert_eq!(q, [-127, 64, 32, 127]);
    assert!((s - 2.0 / 127.0).abs() < 1e-9);
}

#[test]
fn int8_row_dots_of_empty_rows_are_zero() {
    for isa in Isa::available() {
        let mut got = vec![7i32; 6];
        kernels::dot_i8_rows(isa, &[], 3, &[], &mut got);
        assert_eq!(got, vec![0; 6], "{}", isa.name());
    }
}

/// The tile kernels' packed activations start on a cache line and hold
/// exactly the values asked for.
#[test]
fn aligned_buffers_start_on_a_cache_line() {
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let mut f = Aligned::<f32>::zeros(len);
        assert_eq!(f.len(), len);
        assert!(f.iter().all(|&v| v == 0.0));
        assert_eq!(f.as_ptr() as usize % 64, 0, "f32 x {len}");
        f.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32);
        assert!(f.iter().enumerate().all(|(i, &v)| v == i as f32));
        let b = Aligned::<i8>::zeros(len * 3);
        assert_eq!((b.len(), b.as_ptr() as usize % 64), (len * 3, 0));
    }
    // The packing puts a pair group's blocks on whole cache lines.
    let (m, k) = (21, 96);
    let x: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
    let xp = q8_0::pair_rows(&x, m, k);
    assert_eq!(xp.as_ptr() as usize % 64, 0);
    assert_eq!(xp.len(), m.div_ceil(2) * 2 * k);
}
