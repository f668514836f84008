//! Activations quantised to int8 per block on AVX2 (`kernels::quantize_block`,
//! for the int8 products of both weight types).

use std::arch::x86_64::*;

/// AVX2 version of `quantize_row_i8` for a block of up to `ACT_BLOCK` values
/// (the same scale and the same integers: absmax is exact in any order, and
/// `x * inv` is rounded half away from zero exactly as the scalar code does;
/// NaN values give 0 there and here).
///
/// # Safety
/// AVX2; `src.len() == dst.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_block_avx2(src: &[f32], dst: &mut [i8]) -> f32 {
    let full = src.len() / 8 * 8;
    let sign = _mm256_set1_ps(-0.0);
    let mut mx = _mm256_setzero_ps();
    for j in (0..full).step_by(8) {
        // SAFETY: j + 8 <= full <= src.len().
        let v = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(src.as_ptr().add(j)) });
        // max(v, mx) returns mx when v is NaN: NaN skipped, as in the scalar fold.
        mx = _mm256_max_ps(v, mx);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
    let absmax = src[full..]
        .iter()
        .chain(&lanes)
        .fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
    if absmax == 0.0 || !absmax.is_finite() {
        dst.fill(0);
        return if absmax.is_finite() { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / absmax;
    let vinv = _mm256_set1_ps(inv);
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    for j in (0..full).step_by(8) {
        // SAFETY: j + 8 <= full, for src and dst alike.
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(j)), vinv);
            let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm256_sub_ps(v, t);
            let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), one);
            let down = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5)), one);
            let q = _mm256_cvtps_epi32(_mm256_sub_ps(_mm256_add_ps(t, up), down));
            let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            let q8 = _mm_packs_epi16(q16, q16);
            _mm_storel_epi64(dst.as_mut_ptr().add(j) as *mut __m128i, q8);
        }
    }
    for (o, &x) in dst[full..].iter_mut().zip(&src[full..]) {
        *o = crate::backend::round_half_away(x * inv) as i8;
    }
    absmax / 127.0
}

/// The largest magnitude of `src` (NaN skipped), eight lanes at a time.
///
/// # Safety
/// AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn absmax_avx2(src: &[f32]) -> f32 {
    let full = src.len() / 8 * 8;
    let sign = _mm256_set1_ps(-0.0);
    let mut mx = _mm256_setzero_ps();
    for j in (0..full).step_by(8) {
        // SAFETY: j + 8 <= full <= src.len().
        let v = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(src.as_ptr().add(j)) });
        // max(v, mx) returns mx when v is NaN: NaN skipped.
        mx = _mm256_max_ps(v, mx);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
    src[full..]
        .iter()
        .chain(&lanes)
        .fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m })
}

/// `dst = min(max_code, round_half_even(src * scale))`, NaN to 0.
///
/// # Safety
/// AVX2; `src.len() == dst.len()`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_round_avx2(src: &[f32], dst: &mut [i8], scale: f32) {
    let full = src.len() / 8 * 8;
    let (vs, top) = (_mm256_set1_ps(scale), _mm256_set1_ps(127.0));
    for j in (0..full).step_by(8) {
        // SAFETY: j + 8 <= full, for src and dst alike.
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(j)), vs);
            let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let q = _mm256_cvtps_epi32(_mm256_min_ps(r, top));
            let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            _mm_storel_epi64(
                dst.as_mut_ptr().add(j) as *mut __m128i,
                _mm_packs_epi16(q16, q16),
            );
        }
    }
    for (o, &x) in dst[full..].iter_mut().zip(&src[full..]) {
        *o = crate::backend::cpu::types::q8_blocks::round_code(x * scale);
    }
}

/// AVX2 version of `q8_blocks::quantize_q8_k` (the same codes and scale).
///
/// # Safety
/// AVX2; `src.len() == dst.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_q8_k_avx2(src: &[f32], dst: &mut [i8]) -> f32 {
    // SAFETY: AVX2 (the caller's).
    let amax = unsafe { absmax_avx2(src) };
    if amax == 0.0 || !amax.is_finite() {
        dst.fill(0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    // The first value of that magnitude, with its sign (the scalar search).
    let max = src
        .iter()
        .copied()
        .find(|x| x.abs() == amax)
        .unwrap_or(amax);
    let iscale = -127.0 / max;
    // SAFETY: AVX2; the lengths are the caller's.
    unsafe { scale_round_avx2(src, dst, iscale) };
    1.0 / iscale
}

/// AVX2 version of `q8_blocks::quantize_q8_0` (the same codes and scale).
///
/// # Safety
/// AVX2; `src.len() == dst.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_q8_0_avx2(src: &[f32], dst: &mut [i8]) -> f32 {
    // SAFETY: AVX2 (the caller's).
    let amax = unsafe { absmax_avx2(src) };
    if amax == 0.0 || !amax.is_finite() {
        dst.fill(0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    // |x * 127 / amax| <= 127: the cap changes nothing here.
    // SAFETY: AVX2; the lengths are the caller's.
    unsafe { scale_round_avx2(src, dst, 127.0 / amax) };
    half::f16::from_f32(amax / 127.0).to_f32()
}
