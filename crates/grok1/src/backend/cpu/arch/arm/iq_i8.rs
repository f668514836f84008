//! The i-quants' signed levels on NEON (`types::iq4_nl` .. `iq1_m`), in
//! value order, for `q8_blocks_i8`: IQ4's 4-bit indices through a table
//! lookup (`vqtbl1q_s8`), the grid types' rows of eight magnitudes read from
//! their tables (NEON has no gather) and their signs applied eight lanes at
//! a time.

use std::arch::aarch64::*;

use super::q8_blocks_i8::{bits_at, NeonBlock, BIT_LANES};
use crate::backend::cpu::types::iq1_m::IQ1M;
use crate::backend::cpu::types::iq1_s::IQ1S;
use crate::backend::cpu::types::iq2_s::IQ2S;
use crate::backend::cpu::types::iq2_xs::IQ2XS;
use crate::backend::cpu::types::iq2_xxs::IQ2XXS;
use crate::backend::cpu::types::iq3_s::IQ3S;
use crate::backend::cpu::types::iq3_xxs::IQ3XXS;
use crate::backend::cpu::types::iq4_nl::IQ4NL;
use crate::backend::cpu::types::iq4_xs::IQ4XS;
use crate::backend::cpu::types::iq_levels::even_signs;
use crate::quant::tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KVALUES_IQ4NL,
};

/// The 32 levels of 16 bytes of IQ4 nibbles at `qs` (low nibbles first) at
/// `out`.
///
/// # Safety
/// NEON (inlined into a NEON function); 16 readable bytes at `qs`, 32
/// writable at `out`.
#[inline(always)]
unsafe fn iq4_levels(qs: *const u8, out: *mut i8) {
    // SAFETY: the caller's; the table is 16 bytes.
    unsafe {
        let table = vld1q_s8(KVALUES_IQ4NL.as_ptr());
        let q = vld1q_u8(qs);
        let lo = vqtbl1q_s8(table, bits_at::<0>(q, 0x0F));
        let hi = vqtbl1q_s8(table, bits_at::<4>(q, 0x0F));
        vst1q_s8(out, lo);
        vst1q_s8(out.add(16), hi);
    }
}

/// IQ4_NL: one run of 16 bytes of nibbles at 2.
impl NeonBlock for IQ4NL {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (18 bytes) and 32 bytes at `out` (the
        // caller's contract).
        unsafe { iq4_levels(block.add(2), out) }
    }
}

/// IQ4_XS: eight runs of 16 bytes of nibbles from 8, one per 32 values.
impl NeonBlock for IQ4XS {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (136 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for j in 0..8 {
                iq4_levels(block.add(8 + 16 * j), out.add(32 * j));
            }
        }
    }
}

/// Eight grid magnitudes (the bytes of `grid`, little-endian), bit `j` of
/// `signs` negating value `j`, at `out`.
///
/// # Safety
/// NEON (inlined into a NEON function); 8 writable bytes at `out`.
#[inline(always)]
unsafe fn signed8(grid: u64, signs: u8, out: *mut i8) {
    // SAFETY: the caller's; BIT_LANES holds 16 bytes.
    unsafe {
        let v = vcreate_s8(grid);
        let negate = vtst_u8(vdup_n_u8(signs), vld1_u8(BIT_LANES.as_ptr()));
        vst1_s8(out, vbsl_s8(negate, vneg_s8(v), v));
    }
}

/// Two rows of a 4-wide grid as one row of 8.
#[inline(always)]
fn grid4_pair(grid: &[u32], a: usize, b: usize) -> u64 {
    u64::from(grid[a]) | u64::from(grid[b]) << 32
}

/// A little-endian u16 / u32 at `p`.
///
/// # Safety
/// 2 / 4 readable bytes at `p`.
#[inline(always)]
unsafe fn u16_at(p: *const u8) -> u16 {
    // SAFETY: the caller's.
    unsafe { u16::from_le((p as *const u16).read_unaligned()) }
}
#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    // SAFETY: the caller's.
    unsafe { u32::from_le((p as *const u32).read_unaligned()) }
}

/// IQ3_XXS: per 32 values, eight 8-bit indices into the 4-wide grid (`qs`
/// at 2) and a u32 of four 7-bit sign indices (at 66).
impl NeonBlock for IQ3XXS {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (98 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for ib in 0..8 {
                let aux = u32_at(block.add(66 + 4 * ib));
                for l in 0..4 {
                    let at = block.add(2 + 8 * ib + 2 * l);
                    let grid = grid4_pair(&IQ3XXS_GRID, usize::from(*at), usize::from(*at.add(1)));
                    signed8(
                        grid,
                        even_signs((aux >> (7 * l)) as u8),
                        out.add(32 * ib + 8 * l),
                    );
                }
            }
        }
    }
}

/// IQ3_S: 9-bit indices into the 4-wide grid (8 bits in `qs` at 2, one in
/// `qh` at 66) and a sign byte per 8 values (at 74).
impl NeonBlock for IQ3S {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (110 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            let index = |i: usize| {
                usize::from(*block.add(2 + i))
                    | usize::from(*block.add(66 + i / 8) >> (i % 8) & 1) << 8
            };
            for g in 0..32 {
                let grid = grid4_pair(&IQ3S_GRID, index(2 * g), index(2 * g + 1));
                signed8(grid, *block.add(74 + g), out.add(8 * g));
            }
        }
    }
}

/// IQ2_XXS: per 32 values a u32 of four 8-bit grid indices and a u32 of
/// four 7-bit sign indices (from 2).
impl NeonBlock for IQ2XXS {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (66 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for ib in 0..8 {
                let grid = u32_at(block.add(2 + 8 * ib));
                let aux = u32_at(block.add(6 + 8 * ib));
                for l in 0..4 {
                    let row = IQ2XXS_GRID[(grid >> (8 * l) & 0xFF) as usize];
                    signed8(
                        row,
                        even_signs((aux >> (7 * l)) as u8),
                        out.add(32 * ib + 8 * l),
                    );
                }
            }
        }
    }
}

/// IQ2_XS: per 8 values a u16 of a 9-bit grid index and a 7-bit sign index
/// (from 2).
impl NeonBlock for IQ2XS {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (74 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for g in 0..32 {
                let q = u16_at(block.add(2 + 2 * g));
                let row = IQ2XS_GRID[usize::from(q & 511)];
                signed8(row, even_signs((q >> 9) as u8), out.add(8 * g));
            }
        }
    }
}

/// IQ2_S: per 8 values a 10-bit grid index (8 bits in `qs` at 2, two in
/// `qh` at 66) and a sign byte (at 34).
impl NeonBlock for IQ2S {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (82 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for g in 0..32 {
                let high = usize::from(*block.add(66 + g / 4) >> (2 * (g % 4)) & 3);
                let row = IQ2S_GRID[usize::from(*block.add(2 + g)) | high << 8];
                signed8(row, *block.add(34 + g), out.add(8 * g));
            }
        }
    }
}

/// Eight IQ1 grid values (bytes -1, 0, 1 of `grid`) as levels `8 grid +
/// shift`, at `out`.
///
/// # Safety
/// NEON (inlined into a NEON function); 8 writable bytes at `out`.
#[inline(always)]
unsafe fn iq1_levels(grid: u64, shift: i8, out: *mut i8) {
    // SAFETY: the caller's.
    unsafe {
        let v = vadd_s8(vshl_n_s8::<3>(vcreate_s8(grid)), vdup_n_s8(shift));
        vst1_s8(out, v);
    }
}

/// IQ1_S: per 32 values a u16 (at 34) of four 3-bit index extensions and
/// the shift's sign; the low index bits in `qs` (at 2).
impl NeonBlock for IQ1S {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (50 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for ib in 0..8 {
                let qh = u16_at(block.add(34 + 2 * ib));
                let shift: i8 = if qh & 0x8000 == 0 { 1 } else { -1 };
                for l in 0..4 {
                    let index = usize::from(*block.add(2 + 4 * ib + l))
                        | usize::from(qh >> (3 * l) & 7) << 8;
                    iq1_levels(IQ1S_GRID[index], shift, out.add(32 * ib + 8 * l));
                }
            }
        }
    }
}

/// IQ1_M: per 8 values an 8-bit index (at 0) and a nibble (at 32) of 3 more
/// index bits and the shift's sign.
impl NeonBlock for IQ1M {
    #[inline(always)]
    unsafe fn codes_neon(block: *const u8, out: *mut i8) {
        // SAFETY: a whole block (56 bytes) and 256 bytes at `out` (the
        // caller's contract).
        unsafe {
            for i in 0..32 {
                let nibble = *block.add(32 + i / 2) >> (4 * (i % 2)) & 0x0F;
                let shift: i8 = if nibble & 8 == 0 { 1 } else { -1 };
                let index = usize::from(*block.add(i)) | usize::from(nibble & 7) << 8;
                iq1_levels(IQ1S_GRID[index], shift, out.add(8 * i));
            }
        }
    }
}
