//! GGUF's IQ3_S blocks `{ f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8
//! scales[4] }`: 9-bit indices (8 bits in `qs`, 1 in `qh`) into a grid of 4
//! magnitudes, a sign bit per value, and an odd scale `2 s + 1` per 32
//! values; weight `d * (2 s + 1) * level`. Against q8_K activations.

use super::iq3_xxs::grid4_pair;
use super::iq_levels::{iq_block, signed8};
use crate::quant::tables::IQ3S_GRID;

pub struct IQ3S;

fn levels(block: &[u8]) -> [i8; 256] {
    let (qs, qh, signs) = (&block[2..66], &block[66..74], &block[74..106]);
    let index = |i: usize| usize::from(qs[i]) | usize::from(qh[i / 8] >> (i % 8) & 1) << 8;
    let mut out = [0i8; 256];
    for (g, o) in out.chunks_exact_mut(8).enumerate() {
        let grid = grid4_pair(&IQ3S_GRID, index(2 * g), index(2 * g + 1));
        signed8(grid, signs[g], o);
    }
    out
}

fn scales(block: &[u8]) -> [i32; 8] {
    std::array::from_fn(|j| 2 * i32::from(block[106 + j / 2] >> (4 * (j % 2)) & 0x0F) + 1)
}

iq_block!(IQ3S, values: 256, bytes: 110, sub: 32, sa_mul: 1.0, bias: 16);
