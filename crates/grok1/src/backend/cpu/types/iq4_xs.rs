//! GGUF's IQ4_XS blocks `{ f16 d; u16 scales_h; u8 scales_l[4]; u8
//! qs[128] }`: 256 weights `d * (ls_j - 32) * level`, IQ4_NL's levels with
//! a 6-bit scale `ls_j` per sub-block of 32 (low 4 bits in `scales_l`, top 2
//! in `scales_h`), against q8_K activations (as llama.cpp's
//! `vec_dot_iq4_xs_q8_K`).

use super::iq4_nl::iq4_levels;
use super::iq_levels::{iq_block, u16_at};

pub struct IQ4XS;

/// The 8 signed sub-block scales `ls_j - 32`.
#[inline(always)]
pub fn iq4_xs_scales(block: &[u8]) -> [i32; 8] {
    let high = u16_at(block, 2);
    std::array::from_fn(|j| {
        let low = i32::from(block[4 + j / 2] >> (4 * (j % 2)) & 0x0F);
        (low | i32::from(high >> (2 * j) & 3) << 4) - 32
    })
}

fn levels(block: &[u8]) -> [i8; 256] {
    let mut out = [0i8; 256];
    for (j, o) in out.chunks_exact_mut(32).enumerate() {
        o.copy_from_slice(&iq4_levels(&block[8 + 16 * j..24 + 16 * j]));
    }
    out
}

fn scales(block: &[u8]) -> [i32; 8] {
    iq4_xs_scales(block)
}

iq_block!(IQ4XS, values: 256, bytes: 136, sub: 32, sa_mul: 1.0, bias: 128);
