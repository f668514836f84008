//! GGUF's Q5_K blocks (256 weights: f16 `d` and `dmin`, 12 bytes of 6-bit
//! scales and mins as Q4_K's, 32 bytes `qh` of fifth bits, 128 bytes of low
//! nibbles as Q4_K's), weight `d * sc_j * code - dmin * min_j` with 5-bit
//! codes, against q8_K activations (`q8_blocks::ActQ8`, 256 per block).

use super::q4_k::{k4_min_sums, k4_scales_mins, k4_tile_scales};
use super::q8_blocks::{dot_codes, QuantBlock};

pub struct Q5K;

/// Bytes of a Q5_K block.
pub const Q5_K_BYTES: usize = 176;

impl QuantBlock for Q5K {
    const VALUES: usize = 256;
    const BYTES: usize = Q5_K_BYTES;
    const HAS_B: bool = true;
    const OFFSET: i32 = 0;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 0;
    const SB_AT: usize = 2;
    const NEGATE_SB: bool = true;

    /// As Q4_K's, the code of value `64 c + l` taking bit `2 c` of `qh[l]`
    /// (and of `64 c + 32 + l` bit `2 c + 1`) as its fifth bit.
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], _xsum: i32) -> (i32, i32) {
        let (sc, mn) = k4_scales_mins(&block[4..16]);
        let qh = &block[16..48];
        let mut a = 0i32;
        for chunk in 0..4 {
            let q = &block[48 + 32 * chunk..48 + 32 * chunk + 32];
            let lo: [u8; 32] =
                std::array::from_fn(|l| (q[l] & 0x0F) | (((qh[l] >> (2 * chunk)) & 1) << 4));
            let hi: [u8; 32] =
                std::array::from_fn(|l| (q[l] >> 4) | (((qh[l] >> (2 * chunk + 1)) & 1) << 4));
            let xs = &x[64 * chunk..64 * chunk + 64];
            a += i32::from(sc[2 * chunk]) * dot_codes(&lo, &xs[..32]);
            a += i32::from(sc[2 * chunk + 1]) * dot_codes(&hi, &xs[32..]);
        }
        (a, k4_min_sums(&mn, bsums))
    }
}

impl super::q8_blocks::TileBlock for Q5K {
    const SUB: usize = 32;
    const SCALED: bool = true;
    const HAS_CA: bool = false;
    const CB_PER_32: bool = true;
    const CODE_MAX: u8 = 31;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        let qh = &block[16..48];
        for (chunk, o) in out.chunks_exact_mut(64).enumerate() {
            let q = &block[48 + 32 * chunk..48 + 32 * chunk + 32];
            for l in 0..32 {
                o[l] = (q[l] & 0x0F) | (((qh[l] >> (2 * chunk)) & 1) << 4);
                o[32 + l] = (q[l] >> 4) | (((qh[l] >> (2 * chunk + 1)) & 1) << 4);
            }
        }
    }

    fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        k4_tile_scales(block, sc, ca, cb)
    }
}
