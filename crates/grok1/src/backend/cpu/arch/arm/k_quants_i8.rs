//! The K-quants' codes on NEON (`types::q2_k` .. `q6_k`: 256 values in
//! bit-planes of 2, 4 or 6 bits per value with extra high bits), in value
//! order, for `q8_blocks_i8`.

use std::arch::aarch64::*;

use super::q8_blocks_i8::{bits_at, store, where_set, NeonBlock};
use crate::backend::cpu::types::q2_k::Q2K;
use crate::backend::cpu::types::q3_k::Q3K;
use crate::backend::cpu::types::q4_k::Q4K;
use crate::backend::cpu::types::q5_k::Q5K;
use crate::backend::cpu::types::q6_k::Q6K;

/// Q4_K: per 64 values, the low nibbles of 32 bytes, then their high ones.
impl NeonBlock for Q4K {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (144 bytes: codes at 16..144) and 256 bytes
        // at `out` (the caller's contract).
        unsafe {
            for chunk in 0..4 {
                let q = block.add(16 + 32 * chunk);
                let o = out.add(64 * chunk);
                for (h, q) in [vld1q_u8(q), vld1q_u8(q.add(16))].into_iter().enumerate() {
                    store(o.add(16 * h), bits_at::<0>(q, 0x0F));
                    store(o.add(32 + 16 * h), bits_at::<4>(q, 0x0F));
                }
            }
        }
    }
}

/// Q5_K: Q4_K's nibbles (at 48..176), value `64 c + l` taking bit `2 c` of
/// `qh[l]` (at 16..48) as its fifth bit, `64 c + 32 + l` bit `2 c + 1`.
impl NeonBlock for Q5K {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (176 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            let qh = [vld1q_u8(block.add(16)), vld1q_u8(block.add(32))];
            for chunk in 0..4 {
                let q = block.add(48 + 32 * chunk);
                let o = out.add(64 * chunk);
                let (lo_bit, hi_bit) = (1u8 << (2 * chunk), 1u8 << (2 * chunk + 1));
                for (h, q) in [vld1q_u8(q), vld1q_u8(q.add(16))].into_iter().enumerate() {
                    let lo = vorrq_u8(bits_at::<0>(q, 0x0F), where_set(qh[h], lo_bit, 0x10));
                    let hi = vorrq_u8(bits_at::<4>(q, 0x0F), where_set(qh[h], hi_bit, 0x10));
                    store(o.add(16 * h), lo);
                    store(o.add(32 + 16 * h), hi);
                }
            }
        }
    }
}

/// Q6_K: per half of 128 values, value `32 g + l` takes nibble `g / 2` of
/// `ql[32 (g % 2) + l]` (64 bytes a half, at 0) and bit pair `g` of `qh[l]`
/// (32 bytes a half, at 128) as its top two bits.
impl NeonBlock for Q6K {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (210 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for half in 0..2 {
                let ql = block.add(64 * half);
                let qh = block.add(128 + 32 * half);
                let o = out.add(128 * half);
                // l in 0..16, then 16..32.
                for h in 0..2 {
                    let ql0 = vld1q_u8(ql.add(16 * h));
                    let ql1 = vld1q_u8(ql.add(32 + 16 * h));
                    let qh = vld1q_u8(qh.add(16 * h));
                    let top = vdupq_n_u8(0x30);
                    let highs = [
                        vandq_u8(vshlq_n_u8::<4>(qh), top),
                        vandq_u8(vshlq_n_u8::<2>(qh), top),
                        vandq_u8(qh, top),
                        vandq_u8(vshrq_n_u8::<2>(qh), top),
                    ];
                    let lows = [
                        bits_at::<0>(ql0, 0x0F),
                        bits_at::<0>(ql1, 0x0F),
                        bits_at::<4>(ql0, 0x0F),
                        bits_at::<4>(ql1, 0x0F),
                    ];
                    for g in 0..4 {
                        store(o.add(32 * g + 16 * h), vorrq_u8(lows[g], highs[g]));
                    }
                }
            }
        }
    }
}

/// The four bit pairs of 16 code bytes, lowest first: values `32 g + l`
/// for `g` in 0..4 of a Q2_K or Q3_K half.
#[inline]
#[target_feature(enable = "neon")]
fn bit_pairs(q: uint8x16_t) -> [uint8x16_t; 4] {
    [
        bits_at::<0>(q, 3),
        bits_at::<2>(q, 3),
        bits_at::<4>(q, 3),
        bits_at::<6>(q, 3),
    ]
}

/// Q2_K: value `32 g + l` is bit pair `g % 4` of code byte `32 (g / 4) + l`
/// (codes at 16..80).
impl NeonBlock for Q2K {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (84 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for half in 0..2 {
                for h in 0..2 {
                    let q = vld1q_u8(block.add(16 + 32 * half + 16 * h));
                    for (g, v) in bit_pairs(q).into_iter().enumerate() {
                        store(out.add(128 * half + 32 * g + 16 * h), v);
                    }
                }
            }
        }
    }
}

/// Q3_K: value `32 g + l` is bit pair `g % 4` of code byte `32 (g / 4) + l`
/// (codes at 32..96) with bit `g` of `hmask[l]` (at 0..32) as its third bit.
impl NeonBlock for Q3K {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (110 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for h in 0..2 {
                let hmask = vld1q_u8(block.add(16 * h));
                for half in 0..2 {
                    let q = vld1q_u8(block.add(32 + 32 * half + 16 * h));
                    for (p, v) in bit_pairs(q).into_iter().enumerate() {
                        let g = 4 * half + p;
                        let third = where_set(hmask, 1 << g, 4);
                        store(out.add(32 * g + 16 * h), vorrq_u8(v, third));
                    }
                }
            }
        }
    }
}
