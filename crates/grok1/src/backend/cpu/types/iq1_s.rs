//! GGUF's IQ1_S blocks `{ f16 d; u8 qs[32]; u16 qh[8] }`: per 32 values a
//! u16 of four 3-bit extensions of the 8-bit indices in `qs` (into a grid of
//! 8 values in {-1, 0, 1}), a 3-bit scale `s` and the sign of a shift of
//! 1/8; weight `d * (2 s + 1) * (grid +- 1/8)`, i.e. `(d / 8) * (2 s + 1) *
//! level` with `level = 8 grid +- 1`. Against q8_K activations.

use super::iq_levels::{iq_block, u16_at};
use crate::quant::tables::IQ1S_GRID;

pub struct IQ1S;

fn levels(block: &[u8]) -> [i8; 256] {
    let mut out = [0i8; 256];
    for (ib, o) in out.chunks_exact_mut(32).enumerate() {
        let qh = u16_at(block, 34 + 2 * ib);
        let shift: i8 = if qh & 0x8000 == 0 { 1 } else { -1 };
        for (l, o) in o.chunks_exact_mut(8).enumerate() {
            let index = usize::from(block[2 + 4 * ib + l]) | usize::from(qh >> (3 * l) & 7) << 8;
            for (o, &g) in o.iter_mut().zip(&IQ1S_GRID[index].to_le_bytes()) {
                *o = 8 * (g as i8) + shift;
            }
        }
    }
    out
}

fn scales(block: &[u8]) -> [i32; 8] {
    std::array::from_fn(|ib| 2 * i32::from(u16_at(block, 34 + 2 * ib) >> 12 & 7) + 1)
}

iq_block!(IQ1S, values: 256, bytes: 50, sub: 32, sa_mul: 0.125, bias: 16);
