//! GGUF's Q5_0 blocks `{ f16 d; u8 qh[4]; u8 qs[16] }` (32 weights `d * (code
//! - 16)`, nibbles as Q4_0's, bit `j` of `qh` the fifth bit of value `j`)
//! against activations in blocks of 32 (`q8_blocks::ActQ8`, llama.cpp's q8_0).

use super::q4_0::{legacy_codes, qh_at};
use super::q8_blocks::{dot_codes, QuantBlock};

pub struct Q5_0;

impl QuantBlock for Q5_0 {
    const VALUES: usize = 32;
    const BYTES: usize = 22;
    const HAS_B: bool = false;
    const OFFSET: i32 = 16;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 0;
    const SB_AT: usize = 0;
    const NEGATE_SB: bool = false;

    fn ints(block: &[u8], x: &[i8], _bsums: &[i16], xsum: i32) -> (i32, i32) {
        let codes = legacy_codes(&block[6..22], Some(qh_at(block, 2)));
        (dot_codes(&codes, x) - Self::OFFSET * xsum, 0)
    }
}

impl super::q8_blocks::TileBlock for Q5_0 {
    const SUB: usize = 32;
    const SCALED: bool = false;
    const HAS_CA: bool = true;
    const CODE_MAX: u8 = 31;
    const CODE_SCALE_MAX: i32 = 16;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&legacy_codes(&block[6..22], Some(qh_at(block, 2))));
    }

    fn tile_scales(_block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        super::q8_blocks::legacy_tile_scales::<Self>(sc, ca, cb);
    }
}
