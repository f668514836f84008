//! GGUF's IQ2_S blocks `{ f16 d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8
//! scales[8] }`: per 8 values a 10-bit grid index (8 bits in `qs`, 2 in
//! `qh`) and a sign byte, a 4-bit scale `s` per 16 values; weight `(d / 8) *
//! (2 s + 1) * level`. Against q8_K activations.

use super::iq2_xs::iq2_scales16;
use super::iq_levels::{iq_block, signed8};
use crate::quant::tables::IQ2S_GRID;

pub struct IQ2S;

fn levels(block: &[u8]) -> [i8; 256] {
    let (qs, signs, qh) = (&block[2..34], &block[34..66], &block[66..74]);
    let mut out = [0i8; 256];
    for (g, o) in out.chunks_exact_mut(8).enumerate() {
        let high = usize::from(qh[g / 4] >> (2 * (g % 4)) & 3);
        let grid = IQ2S_GRID[usize::from(qs[g]) | high << 8].to_le_bytes();
        signed8(grid, signs[g], o);
    }
    out
}

fn scales(block: &[u8]) -> [i32; 16] {
    iq2_scales16(&block[74..82])
}

iq_block!(IQ2S, values: 256, bytes: 82, sub: 16, sa_mul: 0.125, bias: 44);
