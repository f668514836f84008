//! GGUF's Q3_K blocks (256 weights: 32 bytes `hmask` of third bits, 64 bytes
//! of 2-bit codes, 12 bytes of 6-bit signed scales of sub-blocks of 16, f16
//! `d`), weight `d * sc_s * (code - 4)` with 3-bit codes (llama.cpp's "a
//! clear high bit subtracts 4"), against q8_K activations
//! (`q8_blocks::ActQ8`, 256 per block).

use super::q8_blocks::{dot_codes, QuantBlock, BSUM_VALUES};

pub struct Q3K;

/// Bytes of a Q3_K block.
pub const Q3_K_BYTES: usize = 110;

/// The 16 scales (-32..32) of a Q3_K block from their 12 packed bytes: low
/// nibbles in bytes 0..8 (scales 0..8 low, 8..16 high nibbles), top bit
/// pairs in bytes 8..12 (scale `j` in pair `j / 4` of byte `8 + j % 4`).
#[inline(always)]
pub fn q3_k_scales(p: &[u8]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let low = if j < 8 { p[j] & 0x0F } else { p[j - 8] >> 4 };
        let high = (p[8 + j % 4] >> (2 * (j / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// The 256 codes (0..8) of a Q3_K block in value order: value `32 g + l`
/// (`g < 8`, `l < 32`) takes bit pair `g % 4` of byte `32 (g / 4) + l` of
/// the codes and bit `g` of `hmask[l]` as its third bit.
#[inline(always)]
pub fn q3_k_codes(block: &[u8]) -> [u8; 256] {
    std::array::from_fn(|v| {
        let (g, l) = (v / 32, v % 32);
        let low = (block[32 + 32 * (g / 4) + l] >> (2 * (g % 4))) & 3;
        let high = (block[l] >> g) & 1;
        low | (high << 2)
    })
}

impl QuantBlock for Q3K {
    const VALUES: usize = 256;
    const BYTES: usize = Q3_K_BYTES;
    const HAS_B: bool = false;
    const OFFSET: i32 = 0;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 108;
    const SB_AT: usize = 108;
    const NEGATE_SB: bool = false;

    /// `a = sum_s sc_s * (sum(code * x) - 4 * sum(x))` over the 16
    /// sub-blocks of 16.
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], _xsum: i32) -> (i32, i32) {
        let codes = q3_k_codes(block);
        let sc = q3_k_scales(&block[96..108]);
        let mut a = 0i32;
        for (s, &scale) in sc.iter().enumerate() {
            let r = BSUM_VALUES * s..BSUM_VALUES * (s + 1);
            let sum = dot_codes(&codes[r.clone()], &x[r]) - 4 * i32::from(bsums[s]);
            a += i32::from(scale) * sum;
        }
        (a, 0)
    }
}

impl super::q8_blocks::TileBlock for Q3K {
    const SUB: usize = 16;
    const SCALED: bool = true;
    const HAS_CA: bool = true;
    const CODE_MAX: u8 = 7;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&q3_k_codes(block));
    }

    /// `ca = -4 * sc`: the codes' offset.
    fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        for (j, &s) in q3_k_scales(&block[96..108]).iter().enumerate() {
            sc[j] = i32::from(s);
            ca[j] = -4 * i16::from(s);
        }
        cb.fill(0);
    }
}
