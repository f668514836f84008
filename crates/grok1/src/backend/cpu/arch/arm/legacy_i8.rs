//! The legacy blocks' codes on NEON (`types::q4_0`, `q4_1`, `q5_0`, `q5_1`:
//! 32 values, 4-bit codes and an optional fifth bit, so one unpacking for
//! the four), for `q8_blocks_i8`.

use std::arch::aarch64::*;

use super::q8_blocks_i8::{bits_at, store, NeonBlock, BIT_LANES};
use crate::backend::cpu::types::q4_0::Q4_0;
use crate::backend::cpu::types::q4_1::Q4_1;
use crate::backend::cpu::types::q5_0::Q5_0;
use crate::backend::cpu::types::q5_1::Q5_1;

/// The 32 codes of a legacy block at `out`: the nibbles of the 16 bytes at
/// `qs` (low nibbles first), with the fifth bits of the little-endian u32
/// at `qh` (bit `v` for value `v`).
///
/// # Safety
/// NEON (inlined into a NEON function); 16 readable bytes at `qs`, 4 at
/// `qh`, 32 writable at `out`.
#[inline(always)]
unsafe fn legacy_codes(qs: *const u8, qh: Option<*const u8>, out: *mut i8) {
    // SAFETY: the caller's.
    unsafe {
        let q = vld1q_u8(qs);
        let (mut lo, mut hi) = (bits_at::<0>(q, 0x0F), bits_at::<4>(q, 0x0F));
        if let Some(qh) = qh {
            // Byte j of a half gets byte j / 8 of its two bytes of `qh`,
            // then its own bit of it.
            let lanes = vld1q_u8(BIT_LANES.as_ptr());
            let fifth = |b0: u8, b1: u8| {
                let spread = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
                vandq_u8(vtstq_u8(spread, lanes), vdupq_n_u8(0x10))
            };
            lo = vorrq_u8(lo, fifth(*qh, *qh.add(1)));
            hi = vorrq_u8(hi, fifth(*qh.add(2), *qh.add(3)));
        }
        store(out, lo);
        store(out.add(16), hi);
    }
}

macro_rules! legacy_block {
    ($t:ty, $qs:expr, $qh:expr) => {
        impl NeonBlock for $t {
            #[inline(always)]
            unsafe fn codes_neon(block: *const u8, out: *mut i8) {
                let qh: Option<usize> = $qh;
                // SAFETY: the block holds its codes at $qs and fifth bits
                // at $qh (the caller's contract: a whole block), `out` 32
                // bytes.
                unsafe { legacy_codes(block.add($qs), qh.map(|at| block.add(at)), out) }
            }
        }
    };
}

legacy_block!(Q4_0, 2, None);
legacy_block!(Q4_1, 4, None);
legacy_block!(Q5_0, 6, Some(2));
legacy_block!(Q5_1, 8, Some(4));
