//! GGUF's Q4_1 blocks `{ f16 d; f16 m; u8 qs[16] }` (32 weights `d * code +
//! m`, codes as Q4_0's) against activations in blocks of 32
//! (`q8_blocks::ActQ8`, llama.cpp's q8_1: the min takes the block's sum).

use super::q4_0::legacy_codes;
use super::q8_blocks::{dot_codes, QuantBlock};

pub struct Q4_1;

impl QuantBlock for Q4_1 {
    const VALUES: usize = 32;
    const BYTES: usize = 20;
    const HAS_B: bool = true;
    const OFFSET: i32 = 0;
    const B_IS_XSUM: bool = true;
    const SA_AT: usize = 0;
    const SB_AT: usize = 2;
    const NEGATE_SB: bool = false;

    fn ints(block: &[u8], x: &[i8], _bsums: &[i16], xsum: i32) -> (i32, i32) {
        let codes = legacy_codes(&block[4..20], None);
        (dot_codes(&codes, x), xsum)
    }
}

impl super::q8_blocks::TileBlock for Q4_1 {
    const SUB: usize = 32;
    const SCALED: bool = false;
    const HAS_CA: bool = false;
    const CODE_MAX: u8 = 15;
    const CODE_SCALE_MAX: i32 = 15;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&legacy_codes(&block[4..20], None));
    }

    fn tile_scales(_block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        super::q8_blocks::legacy_tile_scales::<Self>(sc, ca, cb);
    }
}
