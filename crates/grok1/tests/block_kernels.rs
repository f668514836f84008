//! The fused products of GGUF's K-quant and legacy block types
//! (`backend::cpu::types::{q2_k, .., q5_1}`) against activations quantised
//! per block (`types::q8_blocks`), on every instruction set this machine has:
//!
//! - each SIMD version bit-identical to the scalar reference, over random
//!   blocks (random bytes, sane f16 scales) and random activations, for
//!   several `k`, weight row counts not a multiple of 8 and activation row
//!   counts not a multiple of 4, and a product of many rows equal to each row
//!   alone (the batch width changes nothing);
//! - the scalar fused dot against the exact dequantisation of the weights
//!   (`GgmlType::dequantize_row`, which matches gguf-py) times the
//!   dequantised activations, in f64, within float rounding (the bound is
//!   stated with `rounding_bound`).

use grok1::backend::cpu::kernels::{self, RowBlock};
use grok1::backend::cpu::types::iq1_m::IQ1M;
use grok1::backend::cpu::types::iq1_s::IQ1S;
use grok1::backend::cpu::types::iq2_s::IQ2S;
use grok1::backend::cpu::types::iq2_xs::IQ2XS;
use grok1::backend::cpu::types::iq2_xxs::IQ2XXS;
use grok1::backend::cpu::types::iq3_s::IQ3S;
use grok1::backend::cpu::types::iq3_xxs::IQ3XXS;
use grok1::backend::cpu::types::iq4_nl::IQ4NL;
use grok1::backend::cpu::types::iq4_xs::IQ4XS;
use grok1::backend::cpu::types::q2_k::Q2K;
use grok1::backend::cpu::types::q3_k::Q3K;
use grok1::backend::cpu::types::q4_0::Q4_0;
use grok1::backend::cpu::types::q4_1::Q4_1;
use grok1::backend::cpu::types::q4_k::Q4K;
use grok1::backend::cpu::types::q5_0::Q5_0;
use grok1::backend::cpu::types::q5_1::Q5_1;
use grok1::backend::cpu::types::q5_k::Q5K;
use grok1::backend::cpu::types::q6_k::Q6K;
use grok1::backend::cpu::types::q8_blocks::{tile_ints, ActQ8, QuantBlock, BSUM_VALUES};
use grok1::backend::cpu::{CpuBackend, Isa};
use grok1::backend::{Backend, RowMatrix};
use grok1::quant::GgmlType;
use grok1::weights::TensorData;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// Each block type: its ggml type, and the bytes of its codes (zeroed to
/// read the min part of each weight, for the types with mins).
fn code_bytes(t: GgmlType) -> Option<std::ops::Range<usize>> {
    match t {
        GgmlType::Q4K => Some(16..144),
        GgmlType::Q5K => Some(16..176),
        GgmlType::Q2K => Some(16..80),
        GgmlType::Q4_1 => Some(4..20),
        GgmlType::Q5_1 => Some(4..24),
        _ => None,
    }
}

/// `rows` random weight rows of `blocks` blocks of `T`: random bytes, the
/// f16 scales set to random values of either sign and moderate size (a
/// random f16 could be infinite or NaN).
fn random_rows<T: QuantBlock>(rows: usize, blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rows * blocks * T::BYTES)
        .map(|_| rng.random())
        .collect();
    for block in bytes.chunks_exact_mut(T::BYTES) {
        let mut v = || rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-12..2));
        let sb = v();
        block[T::SB_AT..T::SB_AT + 2].copy_from_slice(&half::f16::from_f32(sb).to_le_bytes());
        set_sa::<T>(block, v());
    }
    bytes
}

/// Sets a block's f16 scale `sa` to `v`: at `T::SA_AT`, or for IQ1_M, whose
/// `sa` is spread over the top nibbles of its four u16 scales, there.
fn set_sa<T: QuantBlock>(block: &mut [u8], v: f32) {
    let bits = half::f16::from_f32(v).to_bits();
    block[T::SA_AT..T::SA_AT + 2].copy_from_slice(&bits.to_le_bytes());
    if T::sa_bits(block) != bits {
        for j in 0..4 {
            let at = 48 + 2 * j;
            let s = u16::from_le_bytes([block[at], block[at + 1]]);
            let s = (s & 0x0FFF) | (bits >> (4 * j) & 0x0F) << 12;
            block[at..at + 2].copy_from_slice(&s.to_le_bytes());
        }
    }
    assert_eq!(T::sa_bits(block), bits, "set_sa: the scale is elsewhere");
}

fn random_acts(m: usize, k: usize, rng: &mut impl Rng) -> Vec<f32> {
    let scale = 2f32.powi(rng.random_range(-6..6));
    (0..m * k)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

fn matrix(t: GgmlType, rows: usize, k: usize, bytes: Vec<u8>) -> RowMatrix {
    RowMatrix {
        rows,
        cols: k,
        dtype: t,
        data: TensorData::owned(bytes),
    }
}

/// The bound on |fused - exact| for one weight row against one activation
/// row: with `mag = sum_i (|w_i| + 2 |min_i|) |x_i|` (in f64; `min_i` the
/// part of weight `i` its codes do not carry, so `|w_i| + 2 |min_i|` bounds
/// the size of both parts of it), each dequantised weight is within 3
/// roundings of its two parts (`d * sc` times the code, minus `dmin *
/// min`), and the fused sum's terms within 3 roundings each (the integer to
/// f32, `sa * dx`, the FMA) with at most one rounding of the running sum per
/// term added: `(2 * terms + 6) * eps * mag`, `terms` the FMAs of the row.
fn rounding_bound(terms: usize, mag: f64) -> f64 {
    (2 * terms + 6) as f64 * f64::from(f32::EPSILON) * mag
}

/// Scalar fused dot vs exact dequantisation in f64, and every ISA's kernel
/// (and the backend's batched product) vs the scalar one, bit for bit.
fn check_type<T: RowBlock>(t: GgmlType, blocks: usize, rows: usize, m: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let k = blocks * T::VALUES;
    let bytes = random_rows::<T>(rows, blocks, &mut rng);
    let x = random_acts(m, k, &mut rng);
    let act = ActQ8::quantize(Isa::Scalar, &x, m, k, T::VALUES);
    // The activations: the same on every ISA, their sums exact.
    for isa in Isa::available() {
        let other = ActQ8::quantize(isa, &x, m, k, T::VALUES);
        assert_eq!(other.q, act.q, "{t} {}: activation codes", isa.name());
        assert!(
            other
                .d
                .iter()
                .zip(&act.d)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{t} {}: activation scales",
            isa.name()
        );
    }
    for (i, s) in act.bsums.iter().enumerate() {
        let want: i32 = act.q[i * BSUM_VALUES..(i + 1) * BSUM_VALUES]
            .iter()
            .map(|&v| i32::from(v))
            .sum();
        assert_eq!(i32::from(*s), want, "{t}: bsum {i}");
    }
    let mut scalar = vec![0f32; rows * m];
    kernels::dot_rows_q8::<T>(Isa::Scalar, act.rows(0..m), &bytes, &mut scalar);

    // Against the exact dequantisation.
    let row_len = blocks * T::BYTES;
    let mut w = vec![0f32; k];
    let mut mins = vec![0f32; k];
    for c in 0..rows {
        let row = &bytes[c * row_len..(c + 1) * row_len];
        t.dequantize_row(row, &mut w);
        if let Some(codes) = code_bytes(t) {
            let mut zeroed = row.to_vec();
            for block in zeroed.chunks_exact_mut(T::BYTES) {
                block[codes.clone()].fill(0);
            }
            t.dequantize_row(&zeroed, &mut mins);
        }
        for i in 0..m {
            let xd = act.dequantize_row(i);
            let (mut exact, mut mag) = (0f64, 0f64);
            for r in 0..k {
                let (wv, xv) = (f64::from(w[r]), f64::from(xd[r]));
                exact += wv * xv;
                mag += (wv.abs() + 2.0 * f64::from(mins[r]).abs()) * xv.abs();
            }
            let terms = blocks * if T::HAS_B { 2 } else { 1 };
            let got = f64::from(scalar[c * m + i]);
            assert!(
                (got - exact).abs() <= rounding_bound(terms, mag),
                "{t}: row {c} x act {i}: fused {got}, exact {exact} (magnitude {mag})"
            );
        }
    }

    // Every ISA's kernel, on all rows at once and on each activation row
    // alone; and the backend's product (tasks, runs) on all rows.
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; rows * m];
        // Quantised on this ISA: with the tiles of its tile kernel, where it
        // has one and there are enough rows.
        let own = ActQ8::quantize(isa, &x, m, k, T::VALUES);
        kernels::dot_rows_q8::<T>(isa, own.rows(0..m), &bytes, &mut out);
        assert!(
            out.iter()
                .zip(&scalar)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{t} {}: kernel differs from scalar",
            isa.name()
        );
        for i in 0..m {
            let mut one = vec![f32::NAN; rows];
            kernels::dot_rows_q8::<T>(isa, act.rows(i..i + 1), &bytes, &mut one);
            for c in 0..rows {
                assert_eq!(
                    one[c].to_bits(),
                    scalar[c * m + i].to_bits(),
                    "{t} {}: activation row {i} alone differs",
                    isa.name()
                );
            }
        }
        let w = matrix(t, rows, k, bytes.clone());
        let mut full = vec![f32::NAN; m * rows];
        CpuBackend::with_isa(isa).matmul_rows_fast(&x, &w, &mut full);
        for i in 0..m {
            for c in 0..rows {
                assert_eq!(
                    full[i * rows + c].to_bits(),
                    scalar[c * m + i].to_bits(),
                    "{t} {}: backend product differs",
                    isa.name()
                );
            }
        }
    }
}

macro_rules! block_type_tests {
    ($($name:ident: $t:ty, $g:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $name(blocks in 1usize..10, rows in 1usize..20, m in 1usize..40, seed in any::<u64>()) {
                    check_type::<$t>($g, blocks, rows, m, seed);
                }
            )*
        }
    };
}

block_type_tests! {
    q4_k_products_on_every_isa: Q4K, GgmlType::Q4K;
    q6_k_products_on_every_isa: Q6K, GgmlType::Q6K;
    q2_k_products_on_every_isa: Q2K, GgmlType::Q2K;
    q3_k_products_on_every_isa: Q3K, GgmlType::Q3K;
    q5_k_products_on_every_isa: Q5K, GgmlType::Q5K;
    q4_0_products_on_every_isa: Q4_0, GgmlType::Q4_0;
    q4_1_products_on_every_isa: Q4_1, GgmlType::Q4_1;
    q5_0_products_on_every_isa: Q5_0, GgmlType::Q5_0;
    q5_1_products_on_every_isa: Q5_1, GgmlType::Q5_1;
    iq4_nl_products_on_every_isa: IQ4NL, GgmlType::IQ4_NL;
    iq4_xs_products_on_every_isa: IQ4XS, GgmlType::IQ4_XS;
    iq3_xxs_products_on_every_isa: IQ3XXS, GgmlType::IQ3_XXS;
    iq3_s_products_on_every_isa: IQ3S, GgmlType::IQ3_S;
    iq2_xxs_products_on_every_isa: IQ2XXS, GgmlType::IQ2_XXS;
    iq2_xs_products_on_every_isa: IQ2XS, GgmlType::IQ2_XS;
    iq2_s_products_on_every_isa: IQ2S, GgmlType::IQ2_S;
    iq1_s_products_on_every_isa: IQ1S, GgmlType::IQ1_S;
    iq1_m_products_on_every_isa: IQ1M, GgmlType::IQ1_M;
}

/// The legacy types' blocks hold 32 values: longer rows (more blocks than a
/// proptest case takes) and more activation rows than one pass of the AVX2
/// kernel, and weight rows past one task, through the backend.
#[test]
fn long_rows_and_many_activation_rows() {
    check_type::<Q4_0>(GgmlType::Q4_0, 96, 37, 13, 1);
    check_type::<Q4K>(GgmlType::Q4K, 11, 150, 6, 2);
    check_type::<Q6K>(GgmlType::Q6K, 4, 300, 3, 3);
    check_type::<IQ4NL>(GgmlType::IQ4_NL, 96, 37, 13, 4);
    check_type::<IQ2XXS>(GgmlType::IQ2_XXS, 11, 150, 6, 5);
    // One activation row longer than 8192 values (Grok-1's expert down
    // projections take 32768): the decode kernel reads a block of each of
    // eight weight rows at a time instead of whole rows.
    check_type::<Q4K>(GgmlType::Q4K, 36, 19, 1, 6);
    check_type::<Q6K>(GgmlType::Q6K, 36, 9, 1, 7);
    check_type::<Q2K>(GgmlType::Q2K, 36, 9, 1, 8);
    check_type::<Q3K>(GgmlType::Q3K, 36, 9, 1, 9);
    check_type::<Q5K>(GgmlType::Q5K, 36, 9, 1, 10);
    check_type::<IQ4XS>(GgmlType::IQ4_XS, 36, 9, 1, 11);
    // One activation row against whole rows of 256-value blocks read in two
    // streams (45 rows: two parts of two groups of eight, then a group and
    // five rows left).
    check_type::<Q4K>(GgmlType::Q4K, 4, 45, 1, 17);
    check_type::<Q6K>(GgmlType::Q6K, 4, 45, 1, 18);
    check_type::<Q2K>(GgmlType::Q2K, 4, 45, 1, 19);
    check_type::<Q3K>(GgmlType::Q3K, 4, 45, 1, 20);
    check_type::<IQ4XS>(GgmlType::IQ4_XS, 4, 45, 1, 21);
    check_type::<IQ2XXS>(GgmlType::IQ2_XXS, 4, 45, 1, 22);
    // One activation row against 16 or more rows of a legacy type: the rows
    // are read in eight parts side by side (37 rows: parts of 4, 5 left).
    check_type::<Q4_0>(GgmlType::Q4_0, 12, 37, 1, 12);
    check_type::<Q4_1>(GgmlType::Q4_1, 12, 37, 1, 13);
    check_type::<Q5_0>(GgmlType::Q5_0, 12, 16, 1, 14);
    check_type::<Q5_1>(GgmlType::Q5_1, 12, 37, 1, 15);
    check_type::<IQ4NL>(GgmlType::IQ4_NL, 12, 37, 1, 16);
}

/// Rows of no values (k = 0) are empty sums: every ISA writes 0 to each
/// output (the scalar kernel wrote nothing and left what was there).
#[test]
fn empty_rows_give_zeros_on_every_isa() {
    fn empty<T: RowBlock>(t: GgmlType) {
        for m in [1, 3, 17] {
            for isa in Isa::available() {
                let act = ActQ8::quantize(isa, &[], m, 0, T::VALUES);
                let mut out = vec![f32::NAN; 5 * m];
                kernels::dot_rows_q8::<T>(isa, act.rows(0..m), &[], &mut out);
                assert!(
                    out.iter().all(|&v| v == 0.0),
                    "{t} {} m={m}: {out:?}",
                    isa.name()
                );
            }
        }
    }
    empty::<Q4K>(GgmlType::Q4K);
    empty::<Q6K>(GgmlType::Q6K);
    empty::<Q4_0>(GgmlType::Q4_0);
    empty::<IQ3XXS>(GgmlType::IQ3_XXS);
    empty::<IQ4XS>(GgmlType::IQ4_XS);
}

/// Extreme codes and activations: every code at its largest with scales at
/// their largest and activations at +-127 (the integer sums' worst case for
/// i16 pairs and i32 totals), on every ISA.
#[test]
fn extreme_blocks_match_the_scalar_kernel() {
    fn extreme<T: RowBlock>(t: GgmlType) {
        let blocks = 2;
        let k = blocks * T::VALUES;
        for fill in [0xFFu8, 0x00, 0x80, 0x7F] {
            let mut bytes = vec![fill; 3 * blocks * T::BYTES];
            for block in bytes.chunks_exact_mut(T::BYTES) {
                let half_f16 = half::f16::from_f32(0.5).to_le_bytes();
                block[T::SB_AT..T::SB_AT + 2].copy_from_slice(&half_f16);
                set_sa::<T>(block, 0.5);
            }
            for sign in [1f32, -1.0] {
                // 17 activation rows: the tile kernels' two tiles, one of
                // them a single row.
                let m = 17;
                let x = vec![sign; m * k];
                let act = ActQ8::quantize(Isa::Scalar, &x, m, k, T::VALUES);
                let mut scalar = vec![0f32; 3 * m];
                kernels::dot_rows_q8::<T>(Isa::Scalar, act.rows(0..m), &bytes, &mut scalar);
                let mut w = vec![0f32; k];
                t.dequantize_row(&bytes[..blocks * T::BYTES], &mut w);
                // Against the activations as quantised (the legacy types'
                // q8_0 scale is rounded to f16, as llama.cpp's).
                let xd = act.dequantize_row(0);
                let exact: f64 = w
                    .iter()
                    .zip(&xd)
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                let mag: f64 = w.iter().map(|&w| f64::from(w.abs())).sum::<f64>() * 4.0;
                assert!(
                    (f64::from(scalar[0]) - exact).abs() <= rounding_bound(4 * blocks, mag),
                    "{t} fill {fill:#x}: fused {}, exact {exact}",
                    scalar[0]
                );
                for isa in Isa::available() {
                    let own = ActQ8::quantize(isa, &x, m, k, T::VALUES);
                    let mut out = vec![0f32; 3 * m];
                    kernels::dot_rows_q8::<T>(isa, own.rows(0..m), &bytes, &mut out);
                    assert!(
                        out.iter()
                            .zip(&scalar)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{t} {} fill {fill:#x}: differs from scalar",
                        isa.name()
                    );
                }
            }
        }
    }
    extreme::<Q4K>(GgmlType::Q4K);
    extreme::<Q6K>(GgmlType::Q6K);
    extreme::<Q2K>(GgmlType::Q2K);
    extreme::<Q3K>(GgmlType::Q3K);
    extreme::<Q5K>(GgmlType::Q5K);
    extreme::<Q4_0>(GgmlType::Q4_0);
    extreme::<Q4_1>(GgmlType::Q4_1);
    extreme::<Q5_0>(GgmlType::Q5_0);
    extreme::<Q5_1>(GgmlType::Q5_1);
    extreme::<IQ4NL>(GgmlType::IQ4_NL);
    extreme::<IQ4XS>(GgmlType::IQ4_XS);
    extreme::<IQ3XXS>(GgmlType::IQ3_XXS);
    extreme::<IQ3S>(GgmlType::IQ3_S);
    extreme::<IQ2XXS>(GgmlType::IQ2_XXS);
    extreme::<IQ2XS>(GgmlType::IQ2_XS);
    extreme::<IQ2S>(GgmlType::IQ2_S);
    extreme::<IQ1S>(GgmlType::IQ1_S);
    extreme::<IQ1M>(GgmlType::IQ1_M);
}

/// The tile form of each block type (`TileBlock`: codes in value order,
/// sub-block scales, coefficients of the sums of 16), which the tile kernels
/// multiply, gives the same integers as its `ints`, on random blocks and
/// activations.
#[test]
fn tile_form_gives_the_block_integers() {
    fn check<T: RowBlock>(t: GgmlType) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let bytes = random_rows::<T>(1, 1, &mut rng);
            let x = random_acts(1, T::VALUES, &mut rng);
            let act = ActQ8::quantize(Isa::Scalar, &x, 1, T::VALUES, T::VALUES);
            let want = T::ints(&bytes, &act.q, &act.bsums, act.xsum[0]);
            let got = tile_ints::<T>(&bytes, &act.q, &act.bsums);
            assert_eq!(got.0, want.0, "{t}: a");
            if T::HAS_B {
                assert_eq!(got.1, want.1, "{t}: b");
            }
        }
        // The AVX2 tiles add CODE_MAX-bounded products up in i16 lanes: no
        // code (or level plus LEVEL_BIAS) may leave 0..=CODE_MAX (random
        // blocks, every byte set, every byte clear).
        if !T::SIGNED_CODES || T::LEVEL_BIAS > 0 {
            let mut codes = vec![0u8; T::VALUES];
            let mut blocks = vec![vec![0xFFu8; T::BYTES], vec![0u8; T::BYTES]];
            blocks.extend((0..500).map(|_| random_rows::<T>(1, 1, &mut rng)));
            for block in &blocks {
                T::tile_codes(block, &mut codes);
                for &c in &codes {
                    let code = if T::SIGNED_CODES {
                        i32::from(c as i8) + i32::from(T::LEVEL_BIAS)
                    } else {
                        i32::from(c)
                    };
                    assert!(
                        (0..=i32::from(T::CODE_MAX)).contains(&code),
                        "{t}: code {code} outside 0..={}",
                        T::CODE_MAX
                    );
                    // The tiles divide the levels by 2^LEVEL_SHIFT exactly.
                    assert!(
                        (c as i8) % (1 << T::LEVEL_SHIFT) == 0,
                        "{t}: level {} not a multiple of 2^{}",
                        c as i8,
                        T::LEVEL_SHIFT
                    );
                }
            }
        }
        // The AMX tiles multiply each value's `sc * code + ca` as one signed
        // byte (CODE_SCALE_MAX <= 127) or as two digits (up to 8191): none
        // may pass CODE_SCALE_MAX (random blocks, and every byte set to each
        // of 0xFF, 0x00, 0x80 and 0x7F).
        assert!(
            T::CODE_SCALE_MAX <= 8191,
            "{t}: CODE_SCALE_MAX past two digits"
        );
        let mut blocks: Vec<Vec<u8>> = [0xFFu8, 0x00, 0x80, 0x7F]
            .iter()
            .map(|&fill| vec![fill; T::BYTES])
            .collect();
        blocks.extend((0..500).map(|_| random_rows::<T>(1, 1, &mut rng)));
        let (mut codes, mut sc) = (vec![0u8; T::VALUES], vec![0i32; T::VALUES / T::SUB]);
        let mut ca = vec![0i16; T::VALUES / BSUM_VALUES];
        let mut cb = ca.clone();
        for block in &blocks {
            T::tile_codes(block, &mut codes);
            T::tile_scales(block, &mut sc, &mut ca, &mut cb);
            // The AMX tiles take such types' b terms from sums of 32.
            if T::CB_PER_32 {
                for pair in cb.chunks_exact(2) {
                    assert_eq!(pair[0], pair[1], "{t}: cb differs within 32 values");
                }
            }
            for (i, &c) in codes.iter().enumerate() {
                let code = if T::SIGNED_CODES {
                    i32::from(c as i8)
                } else {
                    i32::from(c)
                };
                let v = sc[i / T::SUB] * code + i32::from(ca[i / BSUM_VALUES]);
                assert!(
                    v.abs() <= T::CODE_SCALE_MAX,
                    "{t}: value {i}'s sc * code + ca = {v} past {}",
                    T::CODE_SCALE_MAX
                );
            }
        }
    }
    check::<Q4K>(GgmlType::Q4K);
    check::<Q6K>(GgmlType::Q6K);
    check::<Q2K>(GgmlType::Q2K);
    check::<Q3K>(GgmlType::Q3K);
    check::<Q5K>(GgmlType::Q5K);
    check::<Q4_0>(GgmlType::Q4_0);
    check::<Q4_1>(GgmlType::Q4_1);
    check::<Q5_0>(GgmlType::Q5_0);
    check::<Q5_1>(GgmlType::Q5_1);
    check::<IQ4NL>(GgmlType::IQ4_NL);
    check::<IQ4XS>(GgmlType::IQ4_XS);
    check::<IQ3XXS>(GgmlType::IQ3_XXS);
    check::<IQ3S>(GgmlType::IQ3_S);
    check::<IQ2XXS>(GgmlType::IQ2_XXS);
    check::<IQ2XS>(GgmlType::IQ2_XS);
    check::<IQ2S>(GgmlType::IQ2_S);
    check::<IQ1S>(GgmlType::IQ1_S);
    check::<IQ1M>(GgmlType::IQ1_M);
}

/// The activation test vector of [`activations_quantised_as_llama_cpp`]:
/// four blocks of 256 (an irregular ramp; halves of integers, whose codes
/// are ties, with the first largest magnitude negative; a quadratic ramp;
/// zeros), exact in f32 and the same in `bench/llama_q8_acts.c`.
fn llama_test_vector() -> Vec<f32> {
    let mut x = vec![0f32; 1024];
    for i in 0..256 {
        x[i] = ((i * 7919) % 2001) as f32 - 1000.0;
        x[i] /= 997.0;
        x[256 + i] = (i % 254) as f32 - 127.0 + 0.5;
        x[512 + i] = (i * i % 97) as f32 * 0.013 - 0.6;
    }
    x[256 + 10] = -127.0;
    x[256 + 200] = 127.0;
    x
}

/// Activations are quantised as llama.cpp's CPU backend quantises them (q8_K
/// for the K-quants, q8_0 for the legacy types), on every ISA: per block,
/// the scale's bits and `sum((i + 1) * q[i])`, as printed by
/// `bench/llama_q8_acts.c` built against llama.cpp 0.3.36's ggml.
#[test]
fn activations_quantised_as_llama_cpp() {
    const Q8_K: [(u32, i64); 4] = [
        (0x3c016565, -25409),
        (0x3f800000, 1311650),
        (0xbba731b7, -224503),
        (0x00000000, 0),
    ];
    const Q8_0: [(u32, i64); 32] = [
        (0x3c016000, 7016),
        (0x3c008000, 736),
        (0x3bff2000, -12047),
        (0x3bfca000, 9024),
        (0x3bfd6000, -1996),
        (0x3bfe6000, -3734),
        (0x3c002000, 9310),
        (0x3bf9c000, -5638),
        (0x3f800000, -56009),
        (0x3f3e8000, -52367),
        (0x3efc0000, -44840),
        (0x3e75e000, -21628),
        (0x3e830000, 45713),
        (0x3f020000, 56264),
        (0x3f800000, 45965),
        (0x3f7f0000, 46591),
        (0x3ba74000, 7757),
        (0x3b9d2000, 15536),
        (0x3ba74000, -7322),
        (0x3ba74000, 3901),
        (0x3b9d2000, 12671),
        (0x3ba74000, -3701),
        (0x3ba74000, 4979),
        (0x3b9d2000, 12146),
        (0x00000000, 0),
        (0x00000000, 0),
        (0x00000000, 0),
        (0x00000000, 0),
        (0x00000000, 0),
        (0x00000000, 0),
        (0x00000000, 0),
        (0x00000000, 0),
    ];
    let x = llama_test_vector();
    for isa in Isa::available() {
        for (block, want) in [(256, &Q8_K[..]), (32, &Q8_0[..])] {
            let act = ActQ8::quantize(isa, &x, 1, x.len(), block);
            for (b, &(d, sum)) in want.iter().enumerate() {
                let q = &act.q[b * block..(b + 1) * block];
                let got: i64 = q
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as i64 + 1) * i64::from(v))
                    .sum();
                assert_eq!(
                    act.d[b].to_bits(),
                    d,
                    "{} block {b} of {block}: scale",
                    isa.name()
                );
                assert_eq!(got, sum, "{} block {b} of {block}: codes", isa.name());
            }
        }
    }
}
