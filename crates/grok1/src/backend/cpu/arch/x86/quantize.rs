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
