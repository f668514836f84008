//! GGUF's IQ1_M blocks `{ u8 qs[32]; u8 qh[16]; u16 scales[4] }`: per 8
//! values an 8-bit index in `qs` and a nibble in `qh` (3 more index bits,
//! into IQ1_S's grid of -1, 0, 1, and the sign of a shift of 1/8), a 3-bit
//! scale `s` per 16 values, and the f16 super-block scale `d` spread over
//! the top nibbles of the four `scales`; weight `d * (2 s + 1) * (grid +-
//! 1/8)`, i.e. `(d / 8) * (2 s + 1) * level` with `level = 8 grid +- 1`.
//! Against q8_K activations.

use super::iq_levels::{iq_block, u16_at};
use crate::quant::tables::IQ1S_GRID;

pub struct IQ1M;

/// The bits of the f16 `d`: the top nibbles of the four u16 scales, the
/// first one lowest.
#[inline(always)]
pub fn iq1_m_d_bits(block: &[u8]) -> u16 {
    let sc = |j: usize| u16_at(block, 48 + 2 * j);
    (sc(0) >> 12) | (sc(1) >> 8 & 0x00F0) | (sc(2) >> 4 & 0x0F00) | (sc(3) & 0xF000)
}

fn levels(block: &[u8]) -> [i8; 256] {
    let mut out = [0i8; 256];
    for (i, o) in out.chunks_exact_mut(8).enumerate() {
        let nibble = block[32 + i / 2] >> (4 * (i % 2)) & 0x0F;
        let shift: i8 = if nibble & 8 == 0 { 1 } else { -1 };
        let index = usize::from(block[i]) | usize::from(nibble & 7) << 8;
        for (o, &g) in o.iter_mut().zip(&IQ1S_GRID[index].to_le_bytes()) {
            *o = 8 * (g as i8) + shift;
        }
    }
    out
}

/// `2 s + 1` per 16 values: 3 bits each, four to a u16 (lowest first).
#[inline(always)]
pub fn iq1_m_scales(block: &[u8]) -> [i32; 16] {
    std::array::from_fn(|j| 2 * i32::from(u16_at(block, 48 + 2 * (j / 4)) >> (3 * (j % 4)) & 7) + 1)
}

fn scales(block: &[u8]) -> [i32; 16] {
    iq1_m_scales(block)
}

iq_block!(IQ1M, values: 256, bytes: 56, sub: 16, sa_mul: 0.125, bias: 16, sa_bits: iq1_m_d_bits);
