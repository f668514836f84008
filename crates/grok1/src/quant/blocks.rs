//! Block decoders, one per ggml type, following the layouts of llama.cpp's
//! `ggml-common.h` (field order inside each block) and the arithmetic order of
//! its reference `dequantize_row_*` functions (so results are bit-identical:
//! `d * scale` first, then times the quant, then minus the min).

use half::{bf16, f16};

use super::tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS, KVALUES_IQ4NL,
    KVALUES_MXFP4,
};
use super::{GgmlType, QK_K};

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The decoding loop of every type: a macro so that each copy of it
/// ([`dequantize`], [`dequantize_avx2`]) calls the block decoders directly and
/// inlines them under its own target features.
macro_rules! decode_blocks {
    ($t:expr, $bytes:expr, $out:expr) => {{
        let (t, bytes, out): (GgmlType, &[u8], &mut [f32]) = ($t, $bytes, $out);
        let (bs, bb) = (t.block_size(), t.block_bytes());
        macro_rules! each {
            ($decode:ident) => {
                for (block, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
                    $decode(block, y);
                }
            };
        }
        match t {
            GgmlType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            GgmlType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            GgmlType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            GgmlType::Q4_0 => each!(q4_0),
            GgmlType::Q4_1 => each!(q4_1),
            GgmlType::Q5_0 => each!(q5_0),
            GgmlType::Q5_1 => each!(q5_1),
            GgmlType::Q8_0 => each!(q8_0),
            GgmlType::Q2K => each!(q2_k),
            GgmlType::Q3K => each!(q3_k),
            GgmlType::Q4K => each!(q4_k),
            GgmlType::Q5K => each!(q5_k),
            GgmlType::Q6K => each!(q6_k),
            GgmlType::IQ2_XXS => each!(iq2_xxs),
            GgmlType::IQ2_XS => each!(iq2_xs),
            GgmlType::IQ2_S => each!(iq2_s),
            GgmlType::IQ3_XXS => each!(iq3_xxs),
            GgmlType::IQ3_S => each!(iq3_s),
            GgmlType::IQ1_S => each!(iq1_s),
            GgmlType::IQ1_M => each!(iq1_m),
            GgmlType::IQ4_NL => each!(iq4_nl),
            GgmlType::IQ4_XS => each!(iq4_xs),
            GgmlType::TQ1_0 => each!(tq1_0),
            GgmlType::TQ2_0 => each!(tq2_0),
            GgmlType::MXFP4 => each!(mxfp4),
            GgmlType::NVFP4 => each!(nvfp4),
        }
    }};
}

/// `bytes` holds whole blocks for exactly `out.len()` elements (checked by the caller).
pub(super) fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    decode_blocks!(t, bytes, out)
}

/// `{ f16 d; u8 qs[16] }`: low nibbles are elements 0..16, high nibbles 16..32.
#[inline(always)]
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `{ f16 d; f16 m; u8 qs[16] }`.
#[inline(always)]
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `{ f16 d; u8 qh[4]; u8 qs[16] }`: bit `j` of `qh` is the fifth bit of element `j`.
#[inline(always)]
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0F) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`.
#[inline(always)]
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0F) | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | h1) as f32 * d + m;
    }
}

/// `{ f16 d; i8 qs[32] }`.
#[inline(always)]
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

/// `{ u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }`: 16 groups of 16, each with a
/// 4-bit scale (low nibble) and 4-bit min (high nibble); 2-bit quants.
#[inline(always)]
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    let mut out = 0;
    for half in 0..2 {
        let q = &b[16 + 32 * half..16 + 32 * half + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for &ql in &q[16 * part..16 * part + 16] {
                    y[out] = dl * ((ql >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
    debug_assert_eq!(out, QK_K);
}

/// The 16 signed 6-bit scales of a Q3_K block, from their 12 packed bytes.
#[inline(always)]
fn q3_k_scales(packed: &[u8]) -> [i32; 16] {
    let mut s = [0i32; 16];
    for (j, v) in s.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0F
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 0x03;
        *v = (low | (high << 4)) as i32 - 32;
    }
    s
}

/// `{ u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }`: 2 low bits in `qs`, the
/// high bit in `hmask` (a clear bit subtracts 4).
#[inline(always)]
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let scales = q3_k_scales(&b[96..108]);
    let d_all = f16_at(b, 108);
    let mut is = 0;
    let mut out = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &b[32 + 32 * half..32 + 32 * half + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 16 * part..16 * part + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let sub = if hm[l] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - sub) as f32;
                    out += 1;
                }
            }
            m <<= 1;
        }
    }
    debug_assert_eq!(out, QK_K);
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`: 8 sub-blocks of 32 with
/// 6-bit scales and mins; 4-bit quants, low nibbles then high nibbles per 64.
#[inline(always)]
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[32 * chunk..32 * chunk + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let y = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - min1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`: Q4_K plus a
/// fifth bit per element in `qh`.
#[inline(always)]
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let ql = &qs[32 * chunk..32 * chunk + 32];
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let y = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - min1;
            y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - min2;
        }
    }
}

/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`: 6-bit quants (4 low bits
/// in `ql`, 2 high bits in `qh`) minus 32, 16 groups of 16 with 8-bit scales.
#[inline(always)]
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc[is] as i8 as f32 * q1 as f32;
            y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
            y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
            y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
        }
    }
}

#[inline(always)]
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Eight grid values times `scale`, negated where `signs` has a bit set
/// (bit `j` for value `j`): the common step of the 2- and 3-bit i-quants,
/// in gguf-py's order (scale times grid value, then the sign).
#[inline(always)]
fn signed_grid(grid: [u8; 8], signs: u8, scale: f32, y: &mut [f32]) {
    for (j, (o, &g)) in y.iter_mut().zip(&grid).enumerate() {
        let v = scale * g as f32;
        *o = if signs >> j & 1 != 0 { -v } else { v };
    }
}

/// Two rows of a 4-wide grid, as one row of 8.
#[inline(always)]
fn grid4_pair(grid: &[u32], a: usize, b: usize) -> [u8; 8] {
    let (lo, hi) = (grid[a].to_le_bytes(), grid[b].to_le_bytes());
    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
}

/// `{ f16 d; u32 q[16] }`: 8 groups of 32, each a pair of u32: four grid
/// indices (bytes), then four 7-bit sign indices and a 4-bit scale.
#[inline(always)]
fn iq2_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let (grid, aux) = (u32_at(b, 2 + 8 * ib), u32_at(b, 6 + 8 * ib));
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let index = (grid >> (8 * l)) as u8 as usize;
            let signs = KSIGNS[(aux >> (7 * l) & 127) as usize];
            signed_grid(IQ2XXS_GRID[index].to_le_bytes(), signs, db, y);
        }
    }
}

/// `{ f16 d; u16 qs[32]; u8 scales[8] }`: each `qs` is a 9-bit grid index
/// and a 7-bit sign index for 8 values; a 4-bit scale per 16 values.
#[inline(always)]
fn iq2_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for (g, y) in y.chunks_exact_mut(8).enumerate() {
        let q = u16_at(b, 2 + 2 * g);
        let s = scales[g / 4] >> (4 * (g / 2 % 2)) & 0x0F;
        let db = d * (0.5 + s as f32) * 0.25;
        let signs = KSIGNS[(q >> 9) as usize];
        signed_grid(IQ2XS_GRID[(q & 511) as usize].to_le_bytes(), signs, db, y);
    }
}

/// `{ f16 d; u8 qs[32]; u8 signs[32]; u8 qh[8]; u8 scales[8] }`: a 10-bit
/// grid index (8 bits in `qs`, 2 in `qh`) and a sign byte per 8 values; a
/// 4-bit scale per 16 values.
#[inline(always)]
fn iq2_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for (g, y) in y.chunks_exact_mut(8).enumerate() {
        let high = (qh[g / 4] >> (2 * (g % 4)) & 3) as usize;
        let s = scales[g / 4] >> (4 * (g / 2 % 2)) & 0x0F;
        let db = d * (0.5 + s as f32) * 0.25;
        let grid = IQ2S_GRID[qs[g] as usize | high << 8].to_le_bytes();
        signed_grid(grid, signs[g], db, y);
    }
}

/// `{ f16 d; u8 qs[64]; u32 aux[8] }`: 8-bit indices into a grid of 4
/// values; per 32 values a u32 of four 7-bit sign indices and a 4-bit scale.
#[inline(always)]
fn iq3_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let aux = u32_at(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let at = 8 * ib + 2 * l;
            let grid = grid4_pair(&IQ3XXS_GRID, qs[at] as usize, qs[at + 1] as usize);
            signed_grid(grid, KSIGNS[(aux >> (7 * l) & 127) as usize], db, y);
        }
    }
}

/// `{ f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4] }`: 9-bit
/// indices (8 bits in `qs`, 1 in `qh`) into a grid of 4 values, a sign bit
/// per value, and an odd scale `1 + 2 s` per 32 values.
#[inline(always)]
fn iq3_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    let index = |i: usize| qs[i] as usize | ((qh[i / 8] >> (i % 8) & 1) as usize) << 8;
    for (g, y) in y.chunks_exact_mut(8).enumerate() {
        let s = scales[g / 8] >> (4 * (g / 4 % 2)) & 0x0F;
        let db = d * (1 + 2 * s) as f32;
        let grid = grid4_pair(&IQ3S_GRID, index(2 * g), index(2 * g + 1));
        signed_grid(grid, signs[g], db, y);
    }
}

/// Eight values of the IQ1 grid shifted by `delta`, times `scale`.
#[inline(always)]
fn iq1_values(index: usize, delta: f32, scale: f32, y: &mut [f32]) {
    for (o, &g) in y.iter_mut().zip(&IQ1S_GRID[index].to_le_bytes()) {
        *o = scale * (g as i8 as f32 + delta);
    }
}

/// The shift of IQ1 grid values: 1/8 towards zero or away, by a flag bit.
const IQ1_DELTA: f32 = 0.125;

/// `{ f16 d; u8 qs[32]; u16 qh[8] }`: per 32 values a u16 of four 3-bit
/// index extensions, a 3-bit odd scale and the sign of the shift.
#[inline(always)]
fn iq1_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * (qh >> 12 & 7) + 1) as f32;
        let delta = if qh & 0x8000 == 0 {
            IQ1_DELTA
        } else {
            -IQ1_DELTA
        };
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let index = qs[4 * ib + l] as usize | ((qh >> (3 * l) & 7) as usize) << 8;
            iq1_values(index, delta, dl, y);
        }
    }
}

/// `{ u8 qs[32]; u8 qh[16]; u16 scales[4] }`: a nibble per 8 values (3 index
/// bits and the shift's sign), 3-bit odd scales per 16 values, and the f16
/// super-block scale spread over the top nibbles of `scales`.
#[inline(always)]
fn iq1_m(b: &[u8], y: &mut [f32]) {
    let (qs, qh) = (&b[0..32], &b[32..48]);
    let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
    let d_bits = (sc[0] >> 12) | (sc[1] >> 8 & 0x00F0) | (sc[2] >> 4 & 0x0F00) | (sc[3] & 0xF000);
    let d = f16::from_bits(d_bits).to_f32();
    for (i, y) in y.chunks_exact_mut(8).enumerate() {
        let (ib, half) = (i / 4, i % 4 / 2);
        let s = sc[ib / 2] >> (3 * (2 * (ib % 2) + half)) & 7;
        let dl = d * (2 * s + 1) as f32;
        let nibble = qh[i / 2] >> (4 * (i % 2)) & 0x0F;
        let delta = if nibble & 0x08 == 0 {
            IQ1_DELTA
        } else {
            -IQ1_DELTA
        };
        iq1_values(qs[i] as usize | ((nibble & 7) as usize) << 8, delta, dl, y);
    }
}

/// `{ f16 d; u8 qs[16] }`: 4-bit indices into non-linear levels, low
/// nibbles for values 0..16, high for 16..32.
#[inline(always)]
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// `{ f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] }`: IQ4_NL's levels
/// with a 6-bit scale (minus 32) per 32 values.
#[inline(always)]
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16_at(b, 2);
    for (ib, y) in y.chunks_exact_mut(32).enumerate() {
        let low = b[4 + ib / 2] >> (4 * (ib % 2)) & 0x0F;
        let high = (scales_h >> (2 * ib) & 3) as u8;
        let dl = d * ((low | high << 4) as i32 - 32) as f32;
        let qs = &b[8 + 16 * ib..24 + 16 * ib];
        for (j, &q) in qs.iter().enumerate() {
            y[j] = dl * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
            y[j + 16] = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

/// The trit in the top of a base-3 fixed-point byte, as -1, 0 or 1.
#[inline(always)]
fn trit(q: u8) -> f32 {
    ((q as u16 * 3) >> 8) as f32 - 1.0
}

/// `{ u8 qs[48]; u8 qh[4]; f16 d }`: 5 trits per byte in `qs` and 4 in
/// `qh`, each byte a fraction whose base-3 digits come out by multiplying by
/// powers of 3 (wrapping at 256).
#[inline(always)]
fn tq1_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 52);
    let mut out = 0;
    for (bytes, digits) in [(&b[0..32], 5), (&b[32..48], 5), (&b[48..52], 4)] {
        let mut pow = 1u8;
        for _ in 0..digits {
            for &q in bytes {
                y[out] = d * trit(q.wrapping_mul(pow));
                out += 1;
            }
            pow = pow.wrapping_mul(3);
        }
    }
    debug_assert_eq!(out, QK_K);
}

/// `{ u8 qs[64]; f16 d }`: 2-bit values minus 1, four per byte (values
/// `32 s + m` of each 128 in bits `2 s` of byte `m`).
#[inline(always)]
fn tq2_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 64);
    for (half, y) in y.chunks_exact_mut(128).enumerate() {
        let qs = &b[32 * half..32 * half + 32];
        for (s, y) in y.chunks_exact_mut(32).enumerate() {
            for (o, &q) in y.iter_mut().zip(qs) {
                *o = d * ((q >> (2 * s) & 3) as i8 - 1) as f32;
            }
        }
    }
}

/// An E8M0 scale byte as an f32, halved (the FP4 levels are stored doubled),
/// as ggml's `ggml_e8m0_to_fp32_half`.
#[inline(always)]
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// `{ u8 e; u8 qs[16] }`: E2M1 values, low nibbles for values 0..16, high
/// for 16..32, times a power of two.
#[inline(always)]
fn mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_half(b[0]);
    for (j, &q) in b[1..17].iter().enumerate() {
        y[j] = d * KVALUES_MXFP4[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * KVALUES_MXFP4[(q >> 4) as usize] as f32;
    }
}

/// An unsigned E4M3 scale byte (bias 7; 0 and 0x7F read as zero), halved.
/// Every value is exact in f32, so the order of operations cannot matter.
#[inline(always)]
fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let (exp, man) = ((x >> 3 & 0x0F) as i32, (x & 7) as f32);
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    if exp == 0 {
        man * pow2(-10)
    } else {
        (8.0 + man) * pow2(exp - 11)
    }
}

/// `{ u8 scales[4]; u8 qs[32] }`: 4 groups of 16 E2M1 values, each with an
/// E4M3 scale; 8 bytes per group, low nibbles first.
#[inline(always)]
fn nvfp4(b: &[u8], y: &mut [f32]) {
    for (s, y) in y.chunks_exact_mut(16).enumerate() {
        let d = ue4m3_half(b[s]);
        for (j, &q) in b[4 + 8 * s..12 + 8 * s].iter().enumerate() {
            y[j] = d * KVALUES_MXFP4[(q & 0x0F) as usize] as f32;
            y[j + 8] = d * KVALUES_MXFP4[(q >> 4) as usize] as f32;
        }
    }
}

/// The same decoders compiled for AVX2: LLVM vectorises their loops (the
/// arithmetic is unchanged: Rust never fuses a multiply and a subtract, so the
/// results are bit-identical to the portable build).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dequantize_avx2(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    decode_blocks!(t, bytes, out)
}
