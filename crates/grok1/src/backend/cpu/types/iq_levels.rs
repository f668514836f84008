//! What the i-quant block types (`iq4_nl` .. `iq1_s`) share: each block is
//! signed integer levels in value order times an integer scale per
//! sub-block times one f16 scale (with an exact power-of-two factor,
//! `QuantBlock::SA_MUL`), so its integer `a` is `sum_j sc_j * sum(level *
//! x)` over the sub-blocks and its tile form (`TileBlock`) is those levels
//! as signed codes. [`iq_block!`] writes both traits from a type's
//! `levels` and `scales`.

/// `sum_j sc[j] * sum(levels * x)` over sub-blocks of `sub` values.
#[inline(always)]
pub fn scaled_level_dot(levels: &[i8], sc: &[i32], sub: usize, x: &[i8]) -> i32 {
    levels
        .chunks_exact(sub)
        .zip(x.chunks_exact(sub))
        .zip(sc)
        .map(|((l, x), &s)| {
            s * l
                .iter()
                .zip(x)
                .map(|(&l, &x)| i32::from(l) * i32::from(x))
                .sum::<i32>()
        })
        .sum()
}

/// The sign byte of a 7-bit sign index of IQ2_XXS, IQ2_XS and IQ3_XXS: the
/// eighth bit makes the count of set bits even (gguf-py's `ksigns`, which
/// `quant::tables::KSIGNS` holds; a test holds the two equal).
#[inline(always)]
pub const fn even_signs(index: u8) -> u8 {
    let i = index & 127;
    i | (((i.count_ones() & 1) as u8) << 7)
}

/// Eight grid magnitudes with the signs of `signs` (bit `j` negates value
/// `j`).
#[inline(always)]
pub fn signed8(grid: [u8; 8], signs: u8, out: &mut [i8]) {
    for (j, (o, &g)) in out.iter_mut().zip(&grid).enumerate() {
        let v = g as i8;
        *o = if signs >> j & 1 != 0 { -v } else { v };
    }
}

/// Bytes of a little-endian u16 / u32 at `at`.
#[inline(always)]
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `QuantBlock` and `TileBlock` of an i-quant type from its
/// `fn levels(block) -> [i8; VALUES]` and `fn scales(block) -> [i32;
/// VALUES / SUB]`: `a = scaled_level_dot(levels, scales)`, no `b`; the f16
/// `d` at byte 0 unless `sa_bits` says where it is; `shift` the
/// `TileBlock::LEVEL_SHIFT` (0 unless given), `code_scale_max` the
/// `TileBlock::CODE_SCALE_MAX` (8191 unless given).
macro_rules! iq_block {
    ($t:ty, values: $values:expr, bytes: $bytes:expr, sub: $sub:expr, sa_mul: $mul:expr,
     bias: $bias:expr $(, shift: $shift:expr)? $(, code_scale_max: $max:expr)?) => {
        $crate::backend::cpu::types::iq_levels::iq_block!(
            $t, values: $values, bytes: $bytes, sub: $sub, sa_mul: $mul, bias: $bias
            $(, shift: $shift)?, sa_bits: |block: &[u8]| u16::from_le_bytes([block[0], block[1]])
            $(, code_scale_max: $max)?
        );
    };
    ($t:ty, values: $values:expr, bytes: $bytes:expr, sub: $sub:expr, sa_mul: $mul:expr,
     bias: $bias:expr $(, shift: $shift:expr)?, sa_bits: $sa_bits:expr
     $(, code_scale_max: $max:expr)?) => {
        impl $crate::backend::cpu::types::q8_blocks::QuantBlock for $t {
            const VALUES: usize = $values;
            const BYTES: usize = $bytes;
            const HAS_B: bool = false;
            const OFFSET: i32 = 0;
            const B_IS_XSUM: bool = false;
            const SA_AT: usize = 0;
            const SB_AT: usize = 0;
            const NEGATE_SB: bool = false;
            const SA_MUL: f32 = $mul;

            #[inline(always)]
            fn sa_bits(block: &[u8]) -> u16 {
                let f: fn(&[u8]) -> u16 = $sa_bits;
                f(block)
            }

            fn ints(block: &[u8], x: &[i8], _bsums: &[i16], _xsum: i32) -> (i32, i32) {
                let a = $crate::backend::cpu::types::iq_levels::scaled_level_dot(
                    &levels(block),
                    &scales(block),
                    $sub,
                    x,
                );
                (a, 0)
            }
        }

        impl $crate::backend::cpu::types::q8_blocks::TileBlock for $t {
            const SUB: usize = $sub;
            const SCALED: bool = true;
            const HAS_CA: bool = false;
            const SIGNED_CODES: bool = true;
            const LEVEL_BIAS: u8 = $bias;
            const LEVEL_SHIFT: u32 = 0 $(+ $shift)?;
            const CODE_SCALE_MAX: i32 = {
                let max = 0 $(+ $max)?;
                if max == 0 {
                    8191
                } else {
                    max
                }
            };
            const CODE_MAX: u8 = if $bias == 0 {
                127
            } else {
                (2 * ($bias as u16) - 1) as u8
            };

            fn tile_codes(block: &[u8], out: &mut [u8]) {
                for (o, &l) in out.iter_mut().zip(levels(block).iter()) {
                    *o = l as u8;
                }
            }

            fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
                sc.copy_from_slice(&scales(block));
                ca.fill(0);
                cb.fill(0);
            }
        }
    };
}
pub(crate) use iq_block;

#[cfg(test)]
mod tests {
    use super::even_signs;
    use crate::quant::tables::KSIGNS;

    #[test]
    fn even_signs_are_gguf_py_ksigns() {
        for (i, &want) in KSIGNS.iter().enumerate() {
            assert_eq!(even_signs(i as u8), want, "sign index {i}");
        }
    }
}
