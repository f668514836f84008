//! GGUF's IQ2_XS blocks `{ f16 d; u16 qs[32]; u8 scales[8] }`: per 8 values
//! a u16 of a 9-bit grid index and a 7-bit sign index, a 4-bit scale `s` per
//! 16 values; weight `(d / 8) * (2 s + 1) * level`. Against q8_K activations.

use super::iq_levels::{even_signs, iq_block, signed8, u16_at};
use crate::quant::tables::IQ2XS_GRID;

pub struct IQ2XS;

fn levels(block: &[u8]) -> [i8; 256] {
    let mut out = [0i8; 256];
    for (g, o) in out.chunks_exact_mut(8).enumerate() {
        let q = u16_at(block, 2 + 2 * g);
        let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
        signed8(grid, even_signs((q >> 9) as u8), o);
    }
    out
}

/// `2 s + 1` per 16 values (nibbles of `scales`, low first).
#[inline(always)]
pub fn iq2_scales16(scales: &[u8]) -> [i32; 16] {
    std::array::from_fn(|j| 2 * i32::from(scales[j / 2] >> (4 * (j % 2)) & 0x0F) + 1)
}

fn scales(block: &[u8]) -> [i32; 16] {
    iq2_scales16(&block[66..74])
}

iq_block!(IQ2XS, values: 256, bytes: 74, sub: 16, sa_mul: 0.125, bias: 44);
