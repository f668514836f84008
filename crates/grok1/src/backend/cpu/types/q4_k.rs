//! GGUF's Q4_K blocks (256 weights: f16 `d` and `dmin`, 12 bytes of 6-bit
//! scales and mins for 8 sub-blocks of 32, 128 bytes of 4-bit codes: per 64
//! values, the low nibbles of 32 bytes then their high nibbles), weight
//! `d * sc_j * code - dmin * min_j`, against q8_K activations
//! (`q8_blocks::ActQ8`, 256 per block).

use super::q8_blocks::{dot_codes, QuantBlock};

pub struct Q4K;

/// Bytes of a Q4_K block.
pub const Q4_K_BYTES: usize = 144;

/// The 8 scales and 8 mins of a Q4_K or Q5_K block from their 12 packed
/// bytes: sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8
/// (mins); 4..8 in the nibbles of bytes 8..12 with their top 2 bits in the
/// top bits of bytes 0..8.
#[inline(always)]
pub fn k4_scales_mins(p: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = p[j] & 63;
        mn[j] = p[j + 4] & 63;
        sc[j + 4] = (p[j + 8] & 0x0F) | ((p[j] >> 6) << 4);
        mn[j + 4] = (p[j + 8] >> 4) | ((p[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// `sum_j min_j * sum(x of sub-block j)` from the activations' sums per 16
/// (two per sub-block of 32): the `b` integer of Q4_K and Q5_K.
#[inline(always)]
pub fn k4_min_sums(mn: &[u8; 8], bsums: &[i16]) -> i32 {
    mn.iter()
        .enumerate()
        .map(|(j, &m)| i32::from(m) * (i32::from(bsums[2 * j]) + i32::from(bsums[2 * j + 1])))
        .sum()
}

/// The tile kernel's scales of a Q4_K or Q5_K block: one per sub-block of
/// 32, its min for each of the two sums of 16 it covers, no `ca`.
pub fn k4_tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
    let (s, mn) = k4_scales_mins(&block[4..16]);
    for j in 0..8 {
        sc[j] = i32::from(s[j]);
        cb[2 * j] = i16::from(mn[j]);
        cb[2 * j + 1] = i16::from(mn[j]);
    }
    ca.fill(0);
}

impl QuantBlock for Q4K {
    const VALUES: usize = 256;
    const BYTES: usize = Q4_K_BYTES;
    const HAS_B: bool = true;
    const OFFSET: i32 = 0;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 0;
    const SB_AT: usize = 2;
    const NEGATE_SB: bool = true;

    /// `a = sum_j sc_j * sum(code * x)` over the 8 sub-blocks of 32, `b =
    /// sum_j min_j * sum(x)`.
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], _xsum: i32) -> (i32, i32) {
        let (sc, mn) = k4_scales_mins(&block[4..16]);
        let mut a = 0i32;
        for chunk in 0..4 {
            let q = &block[16 + 32 * chunk..16 + 32 * chunk + 32];
            let lo: [u8; 32] = std::array::from_fn(|l| q[l] & 0x0F);
            let hi: [u8; 32] = std::array::from_fn(|l| q[l] >> 4);
            let xs = &x[64 * chunk..64 * chunk + 64];
            a += i32::from(sc[2 * chunk]) * dot_codes(&lo, &xs[..32]);
            a += i32::from(sc[2 * chunk + 1]) * dot_codes(&hi, &xs[32..]);
        }
        (a, k4_min_sums(&mn, bsums))
    }
}

impl super::q8_blocks::TileBlock for Q4K {
    const SUB: usize = 32;
    const SCALED: bool = true;
    const HAS_CA: bool = false;
    const CB_PER_32: bool = true;
    const CODE_MAX: u8 = 15;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        for (chunk, o) in out.chunks_exact_mut(64).enumerate() {
            let q = &block[16 + 32 * chunk..16 + 32 * chunk + 32];
            for l in 0..32 {
                o[l] = q[l] & 0x0F;
                o[32 + l] = q[l] >> 4;
            }
        }
    }

    fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        k4_tile_scales(block, sc, ca, cb)
    }
}
