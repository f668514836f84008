//! GGUF's IQ2_XXS blocks `{ f16 d; u32 q[16] }`: per 32 values a pair of
//! u32, four 8-bit indices into a grid of 8 magnitudes, then four 7-bit sign
//! indices and a 4-bit scale `s`; weight `d * (0.5 + s) / 4 * grid * sign`,
//! i.e. `(d / 8) * (2 s + 1) * level`. Against q8_K activations.

use super::iq_levels::{even_signs, iq_block, signed8, u32_at};
use crate::quant::tables::IQ2XXS_GRID;

pub struct IQ2XXS;

fn levels(block: &[u8]) -> [i8; 256] {
    let mut out = [0i8; 256];
    for (ib, o) in out.chunks_exact_mut(32).enumerate() {
        let (grid, aux) = (u32_at(block, 2 + 8 * ib), u32_at(block, 6 + 8 * ib));
        for (l, o) in o.chunks_exact_mut(8).enumerate() {
            let g = IQ2XXS_GRID[(grid >> (8 * l) & 0xFF) as usize].to_le_bytes();
            signed8(g, even_signs((aux >> (7 * l)) as u8), o);
        }
    }
    out
}

fn scales(block: &[u8]) -> [i32; 8] {
    std::array::from_fn(|ib| 2 * (u32_at(block, 6 + 8 * ib) >> 28) as i32 + 1)
}

iq_block!(IQ2XXS, values: 256, bytes: 66, sub: 32, sa_mul: 0.125, bias: 44);
