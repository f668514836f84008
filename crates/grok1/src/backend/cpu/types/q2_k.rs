//! GGUF's Q2_K blocks (256 weights: 16 bytes of 4-bit scale and min pairs
//! of sub-blocks of 16, 64 bytes of 2-bit codes, f16 `d` and `dmin`), weight
//! `d * sc_s * code - dmin * min_s`, against q8_K activations
//! (`q8_blocks::ActQ8`, 256 per block).

use super::q8_blocks::{dot_codes, QuantBlock, BSUM_VALUES};

pub struct Q2K;

/// Bytes of a Q2_K block.
pub const Q2_K_BYTES: usize = 84;

/// The 256 codes (0..4) of a Q2_K block in value order: value `32 g + l`
/// (`g < 8`, `l < 32`) is bit pair `g % 4` of code byte `32 (g / 4) + l`.
#[inline(always)]
pub fn q2_k_codes(block: &[u8]) -> [u8; 256] {
    std::array::from_fn(|v| {
        let (g, l) = (v / 32, v % 32);
        (block[16 + 32 * (g / 4) + l] >> (2 * (g % 4))) & 3
    })
}

impl QuantBlock for Q2K {
    const VALUES: usize = 256;
    const BYTES: usize = Q2_K_BYTES;
    const HAS_B: bool = true;
    const OFFSET: i32 = 0;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 80;
    const SB_AT: usize = 82;
    const NEGATE_SB: bool = true;

    /// `a = sum_s sc_s * sum(code * x)`, `b = sum_s min_s * sum(x)` over the
    /// 16 sub-blocks of 16 (scale in the low nibble, min in the high one).
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], _xsum: i32) -> (i32, i32) {
        let codes = q2_k_codes(block);
        let (mut a, mut b) = (0i32, 0i32);
        for s in 0..16 {
            let r = BSUM_VALUES * s..BSUM_VALUES * (s + 1);
            a += i32::from(block[s] & 0x0F) * dot_codes(&codes[r.clone()], &x[r]);
            b += i32::from(block[s] >> 4) * i32::from(bsums[s]);
        }
        (a, b)
    }
}

impl super::q8_blocks::TileBlock for Q2K {
    const SUB: usize = 16;
    const SCALED: bool = true;
    const HAS_CA: bool = false;
    const CODE_MAX: u8 = 3;
    const CODE_SCALE_MAX: i32 = 45;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&q2_k_codes(block));
    }

    fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        for j in 0..16 {
            sc[j] = i32::from(block[j] & 0x0F);
            cb[j] = i16::from(block[j] >> 4);
        }
        ca.fill(0);
    }
}
