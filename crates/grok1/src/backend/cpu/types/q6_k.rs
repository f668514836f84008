//! GGUF's Q6_K blocks (256 weights: 128 bytes of low nibbles `ql`, 64 bytes
//! of high bit pairs `qh`, 16 int8 scales of sub-blocks of 16, f16 `d`),
//! weight `d * sc_s * (code - 32)` with 6-bit codes, against q8_K activations
//! (`q8_blocks::ActQ8`, 256 per block).

use super::q8_blocks::{dot_codes, QuantBlock, BSUM_VALUES};

pub struct Q6K;

/// Bytes of a Q6_K block.
pub const Q6_K_BYTES: usize = 210;

/// The 256 codes (0..64) of a Q6_K block, in value order: per half of 128,
/// value `32 g + l` (`g < 4`, `l < 32`) takes nibble `g / 2` of `ql[32 (g %
/// 2) + l]` and bit pair `g` of `qh[l]` as its top two bits.
#[inline(always)]
pub fn q6_k_codes(block: &[u8]) -> [u8; 256] {
    let mut codes = [0u8; 256];
    for h in 0..2 {
        let ql = &block[64 * h..64 * h + 64];
        let qh = &block[128 + 32 * h..128 + 32 * h + 32];
        for g in 0..4 {
            for l in 0..32 {
                let low = (ql[32 * (g % 2) + l] >> (4 * (g / 2))) & 0x0F;
                let high = (qh[l] >> (2 * g)) & 3;
                codes[128 * h + 32 * g + l] = low | (high << 4);
            }
        }
    }
    codes
}

impl QuantBlock for Q6K {
    const VALUES: usize = 256;
    const BYTES: usize = Q6_K_BYTES;
    const HAS_B: bool = false;
    const OFFSET: i32 = 0;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 208;
    const SB_AT: usize = 208;
    const NEGATE_SB: bool = false;

    /// `a = sum_s sc_s * (sum(code * x) - 32 * sum(x))` over the 16
    /// sub-blocks of 16.
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], _xsum: i32) -> (i32, i32) {
        let codes = q6_k_codes(block);
        let mut a = 0i32;
        for s in 0..16 {
            let r = BSUM_VALUES * s..BSUM_VALUES * (s + 1);
            let sum = dot_codes(&codes[r.clone()], &x[r]) - 32 * i32::from(bsums[s]);
            a += i32::from(block[192 + s] as i8) * sum;
        }
        (a, 0)
    }
}

impl super::q8_blocks::TileBlock for Q6K {
    const SUB: usize = 16;
    const SCALED: bool = true;
    const HAS_CA: bool = true;
    const CODE_MAX: u8 = 63;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&q6_k_codes(block));
    }

    /// `ca = -32 * sc`: the codes' offset.
    #[inline]
    fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        for j in 0..16 {
            let s = block[192 + j] as i8;
            sc[j] = i32::from(s);
            ca[j] = -32 * i16::from(s);
        }
        cb.fill(0);
    }
}
