//! GGUF's K-quant, legacy and i-quant rows against activations quantised per
//! block (`types::q8_blocks`), NEON, bit-identical to
//! `q8_blocks::dot_rows_q8_scalar`. Each block is multiplied in its tile
//! form (`q8_blocks::TileBlock`: codes in value order, an integer scale per
//! sub-block, coefficients of the activations' sums of 16), which every
//! block type already has and the tests hold equal to its `ints`: a type
//! only writes how NEON unpacks its codes ([`NeonBlock`], one file per type
//! family), and one product serves them all. The integers are exact in any
//! order; the f32 part is the scalar kernel's, block by block.
//!
//! One weight row at a time against up to four activation rows, which share
//! each block's unpacking (the batches of prompt processing). Baseline NEON
//! only (`vmull_s8` and pairwise adds into i32, not the optional `dotprod`
//! extension), so it runs on every aarch64 CPU; its speed on real hardware
//! is not measured.

use std::arch::aarch64::*;

use crate::backend::cpu::types::q8_blocks::{ActQ8Rows, TileBlock, BSUM_VALUES};

/// Most values a block holds (the K-quants' and i-quants' 256).
pub const MAX_VALUES: usize = 256;

/// Most activation rows sharing one unpacking of a weight block.
const GROUP: usize = 4;

/// Bit `j % 8` in byte `j`: with `vtstq_u8`, spreads the bits of a byte
/// over eight lanes.
pub(super) const BIT_LANES: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/// The NEON side of a block type.
pub trait NeonBlock: TileBlock {
    /// The block's `VALUES` codes of `TileBlock::tile_codes`, as signed
    /// bytes (unsigned codes are below 128, so the same bits), at `out`.
    ///
    /// # Safety
    /// NEON (inlined into a NEON function); `block` points at a whole block
    /// (`BYTES` bytes), `out` at `VALUES` writable bytes.
    unsafe fn codes_neon(block: *const u8, out: *mut i8);
}

/// NEON version of `q8_blocks::dot_rows_q8_scalar`, bit-identical to it.
///
/// # Safety
/// NEON (every aarch64 CPU has it); the bounds `kernels::dot_rows_q8` checks.
#[target_feature(enable = "neon")]
pub unsafe fn dot_rows_q8_neon<T: NeonBlock>(act: ActQ8Rows, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let blocks = k / T::VALUES;
    let row_bytes = blocks * T::BYTES;
    let sums = T::VALUES / BSUM_VALUES;
    let subs = T::VALUES / T::SUB;
    let nrows = out_t.len() / m;
    // The product below reads whole sub-blocks of 16 values, and keeps one
    // block's codes and scales in fixed arrays.
    assert!(T::VALUES <= MAX_VALUES && T::SUB.is_multiple_of(16));
    assert!(T::VALUES.is_multiple_of(T::SUB) && T::VALUES.is_multiple_of(BSUM_VALUES));
    assert!(rows.len() >= nrows * row_bytes && act.q.len() >= m * k);
    assert!(act.d.len() >= m * blocks && act.xsum.len() >= m * blocks);
    assert!(act.bsums.len() >= m * blocks * sums && act.block == T::VALUES);
    let mut codes = [0i8; MAX_VALUES];
    let mut sc = [0i32; MAX_VALUES / 16];
    let mut ca = [0i16; MAX_VALUES / BSUM_VALUES];
    let mut cb = [0i16; MAX_VALUES / BSUM_VALUES];
    for c in 0..nrows {
        let row = &rows[c * row_bytes..(c + 1) * row_bytes];
        for i0 in (0..m).step_by(GROUP) {
            let g = GROUP.min(m - i0);
            let mut acc = [0f32; GROUP];
            for (b, block) in row.chunks_exact(T::BYTES).enumerate() {
                // SAFETY: `block` is a whole block, `codes` holds MAX_VALUES
                // >= VALUES bytes.
                unsafe { T::codes_neon(block.as_ptr(), codes.as_mut_ptr()) };
                T::tile_scales(block, &mut sc[..subs], &mut ca[..sums], &mut cb[..sums]);
                let (sa, sb) = T::scales(block);
                for (t, acc) in acc.iter_mut().enumerate().take(g) {
                    let at = (i0 + t) * blocks + b;
                    let x = &act.q[at * T::VALUES..(at + 1) * T::VALUES];
                    let bsums = &act.bsums[at * sums..(at + 1) * sums];
                    let (a, bb) = block_ints::<T>(&codes, &sc[..subs], &ca, &cb, x, bsums);
                    let bb = if T::B_IS_XSUM { act.xsum[at] } else { bb };
                    let dx = act.d[at];
                    *acc = (a as f32).mul_add(sa * dx, *acc);
                    if T::HAS_B {
                        *acc = (bb as f32).mul_add(sb * dx, *acc);
                    }
                }
            }
            for (t, &v) in acc.iter().enumerate().take(g) {
                out_t[c * m + i0 + t] = v;
            }
        }
    }
}

/// A block's exact integers `(a, b)` in its tile form (`q8_blocks::
/// tile_ints`): its unpacked `codes`, sub-block scales `sc`, and
/// coefficients `ca`, `cb` of the sums of 16, against one activation row's
/// `x` (`VALUES`) and `bsums`. The sums wrap in i32 as the scalar ones do.
#[inline]
#[target_feature(enable = "neon")]
fn block_ints<T: NeonBlock>(
    codes: &[i8; MAX_VALUES],
    sc: &[i32],
    ca: &[i16],
    cb: &[i16],
    x: &[i8],
    bsums: &[i16],
) -> (i32, i32) {
    assert!(x.len() == T::VALUES && sc.len() == T::VALUES / T::SUB);
    let mut a = vdupq_n_s32(0);
    for (j, &s) in sc.iter().enumerate() {
        let mut sub = vdupq_n_s32(0);
        for v in (j * T::SUB..(j + 1) * T::SUB).step_by(16) {
            // SAFETY: values v..v + 16 lie in the block (v + 16 <= VALUES,
            // the lengths asserted above).
            let (w, xv) = unsafe { (vld1q_s8(codes.as_ptr().add(v)), vld1q_s8(x.as_ptr().add(v))) };
            // Each product fits i16 (|w|, |x| <= 128); pairs add in i32.
            sub = vpadalq_s16(sub, vmull_s8(vget_low_s8(w), vget_low_s8(xv)));
            sub = vpadalq_s16(sub, vmull_high_s8(w, xv));
        }
        a = if T::SCALED {
            vmlaq_n_s32(a, sub, s)
        } else {
            vaddq_s32(a, sub)
        };
    }
    let mut a = vaddvq_s32(a);
    let mut b = 0i32;
    let sums = T::VALUES / BSUM_VALUES;
    for ((&s, &ca), &cb) in bsums.iter().zip(&ca[..sums]).zip(&cb[..sums]) {
        if T::HAS_CA {
            a = a.wrapping_add(i32::from(ca) * i32::from(s));
        }
        if T::HAS_B && !T::B_IS_XSUM {
            b = b.wrapping_add(i32::from(cb) * i32::from(s));
        }
    }
    (a, b)
}

/// `out[j] = (v[j] >> S) & mask` as the unsigned bytes of a code (`S` a
/// shift of 0, 2, 4 or 6: the bit pairs and nibbles of the packed types).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn bits_at<const S: i32>(v: uint8x16_t, mask: u8) -> uint8x16_t {
    let shifted = match S {
        0 => v,
        2 => vshrq_n_u8::<2>(v),
        4 => vshrq_n_u8::<4>(v),
        _ => vshrq_n_u8::<6>(v),
    };
    vandq_u8(shifted, vdupq_n_u8(mask))
}

/// `value` in each lane whose byte of `v` has a bit of `bit` set, else 0.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn where_set(v: uint8x16_t, bit: u8, value: u8) -> uint8x16_t {
    vandq_u8(vtstq_u8(v, vdupq_n_u8(bit)), vdupq_n_u8(value))
}

/// Stores 16 code bytes at `out`.
///
/// # Safety
/// 16 writable bytes at `out`.
#[inline(always)]
pub(super) unsafe fn store(out: *mut i8, v: uint8x16_t) {
    // SAFETY: the caller's.
    unsafe { vst1q_s8(out, vreinterpretq_s8_u8(v)) }
}
