//! GGUF's IQ3_XXS blocks `{ f16 d; u8 qs[64]; u32 aux[8] }`: 8-bit indices
//! into a grid of 4 magnitudes; per 32 values a u32 of four 7-bit sign
//! indices and a 4-bit scale `s`; weight `d * (0.5 + s) / 2 * grid * sign`,
//! i.e. `(d / 4) * (2 s + 1) * level`. Against q8_K activations.

use super::iq_levels::{even_signs, iq_block, signed8, u32_at};
use crate::quant::tables::IQ3XXS_GRID;

pub struct IQ3XXS;

/// Two rows of a 4-wide grid, as one row of 8.
#[inline(always)]
pub fn grid4_pair(grid: &[u32], a: usize, b: usize) -> [u8; 8] {
    let (lo, hi) = (grid[a].to_le_bytes(), grid[b].to_le_bytes());
    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
}

fn levels(block: &[u8]) -> [i8; 256] {
    let qs = &block[2..66];
    let mut out = [0i8; 256];
    for (ib, o) in out.chunks_exact_mut(32).enumerate() {
        let aux = u32_at(block, 66 + 4 * ib);
        for (l, o) in o.chunks_exact_mut(8).enumerate() {
            let at = 8 * ib + 2 * l;
            let grid = grid4_pair(&IQ3XXS_GRID, usize::from(qs[at]), usize::from(qs[at + 1]));
            signed8(grid, even_signs((aux >> (7 * l)) as u8), o);
        }
    }
    out
}

fn scales(block: &[u8]) -> [i32; 8] {
    std::array::from_fn(|ib| 2 * (u32_at(block, 66 + 4 * ib) >> 28) as i32 + 1)
}

iq_block!(IQ3XXS, values: 256, bytes: 98, sub: 32, sa_mul: 0.25, bias: 63, shift: 1);
