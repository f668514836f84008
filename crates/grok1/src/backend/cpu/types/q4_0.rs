//! GGUF's Q4_0 blocks `{ f16 d; u8 qs[16] }` (32 weights `d * (code - 8)`,
//! 4-bit codes: low nibbles are values 0..16, high nibbles 16..32) against
//! activations in blocks of 32 (`q8_blocks::ActQ8`, llama.cpp's q8_0), and
//! the codes of the legacy blocks (also Q4_1, Q5_0, Q5_1).

use super::q8_blocks::{dot_codes, QuantBlock};

/// The 32 codes of a legacy block: nibbles of `qs` (16 bytes), plus the
/// fifth bits of `qh` (a little-endian u32) when there are.
#[inline(always)]
pub fn legacy_codes(qs: &[u8], qh: Option<u32>) -> [u8; 32] {
    std::array::from_fn(|v| {
        let nibble = if v < 16 {
            qs[v] & 0x0F
        } else {
            qs[v - 16] >> 4
        };
        let high = qh.map_or(0, |h| ((h >> v) & 1) as u8);
        nibble | (high << 4)
    })
}

/// The fifth bits of a Q5_0/Q5_1 block, stored at `at`.
pub fn qh_at(block: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
}

pub struct Q4_0;

impl QuantBlock for Q4_0 {
    const VALUES: usize = 32;
    const BYTES: usize = 18;
    const HAS_B: bool = false;
    const OFFSET: i32 = 8;
    const B_IS_XSUM: bool = false;
    const SA_AT: usize = 0;
    const SB_AT: usize = 0;
    const NEGATE_SB: bool = false;

    fn ints(block: &[u8], x: &[i8], _bsums: &[i16], xsum: i32) -> (i32, i32) {
        let codes = legacy_codes(&block[2..18], None);
        (dot_codes(&codes, x) - Self::OFFSET * xsum, 0)
    }
}

impl super::q8_blocks::TileBlock for Q4_0 {
    const SUB: usize = 32;
    const SCALED: bool = false;
    const HAS_CA: bool = true;
    const CODE_MAX: u8 = 15;
    const CODE_SCALE_MAX: i32 = 8;

    fn tile_codes(block: &[u8], out: &mut [u8]) {
        out.copy_from_slice(&legacy_codes(&block[2..18], None));
    }

    fn tile_scales(_block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
        super::q8_blocks::legacy_tile_scales::<Self>(sc, ca, cb);
    }
}
