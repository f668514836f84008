//! GGUF's IQ4_NL blocks `{ f16 d; u8 qs[16] }`: 32 weights `d * level`,
//! 4-bit indices into 16 non-linear levels (low nibbles values 0..16, high
//! nibbles 16..32), against activations in blocks of 32 (llama.cpp's q8_0,
//! as its `vec_dot_iq4_nl_q8_0`).

use super::iq_levels::iq_block;
use crate::quant::tables::KVALUES_IQ4NL;

pub struct IQ4NL;

/// The 32 levels of 16 bytes of nibbles (IQ4_NL's block, or one sub-block
/// of IQ4_XS).
#[inline(always)]
pub fn iq4_levels(qs: &[u8]) -> [i8; 32] {
    std::array::from_fn(|v| {
        let nibble = if v < 16 {
            qs[v] & 0x0F
        } else {
            qs[v - 16] >> 4
        };
        KVALUES_IQ4NL[nibble as usize]
    })
}

fn levels(block: &[u8]) -> [i8; 32] {
    iq4_levels(&block[2..18])
}

fn scales(_block: &[u8]) -> [i32; 1] {
    [1]
}

iq_block!(IQ4NL, values: 32, bytes: 18, sub: 32, sa_mul: 1.0, bias: 128, code_scale_max: 127);
