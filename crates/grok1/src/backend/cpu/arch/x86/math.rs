//! Cephes' exp and tanh on eight lanes (their constants in `arch/mod.rs`,
//! shared with NEON), and the gated GELU built on tanh.

use std::arch::x86_64::*;

use crate::backend::cpu::arch::{EXP_LN2_PARTS, EXP_POLY, EXP_RANGE, TANH_POLY, TANH_SMALL};

/// e^x for eight lanes (Cephes' expf: range reduction by ln 2 and a degree-6
/// polynomial, about 1 ulp); lanes below -87.3 give 0.
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp256(x: __m256) -> __m256 {
    let (lo, hi) = EXP_RANGE;
    let underflow = _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_LT_OQ);
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
    let fx = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_LN2_PARTS[0]), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_LN2_PARTS[1]), x);
    let mut y = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(*c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(x, x),
        _mm256_add_ps(x, _mm256_set1_ps(1.0)),
    );
    let n = _mm256_cvtps_epi32(fx);
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(n, _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2))
}

/// tanh for eight lanes (Cephes' tanhf: an odd polynomial below 0.625, else
/// 1 - 2/(e^2|x| + 1) with the sign of x; about 1e-7 relative).
#[target_feature(enable = "avx2,fma")]
pub(super) fn tanh256(x: __m256) -> __m256 {
    let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    // Large |x|: 1 - 2 / (exp(2a) + 1), from exp(-2a) to avoid overflow.
    let t = exp256(_mm256_mul_ps(a, _mm256_set1_ps(-2.0)));
    let big = _mm256_div_ps(
        _mm256_sub_ps(_mm256_set1_ps(1.0), t),
        _mm256_add_ps(_mm256_set1_ps(1.0), t),
    );
    let big = _mm256_or_ps(big, sign);
    // Small |x|: x + x^3 P(x^2).
    let z = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(TANH_POLY[0]);
    for c in &TANH_POLY[1..] {
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
    }
    let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    let use_small = _mm256_cmp_ps(a, _mm256_set1_ps(TANH_SMALL), _CMP_LT_OQ);
    _mm256_blendv_ps(big, small, use_small)
}

/// AVX2 version of the scalar loop in `kernels::gelu_mul`, the same formula
/// with `tanh256` for libm's tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `v.len() >= h.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_mul_avx2(h: &mut [f32], v: &[f32]) {
    let n = h.len();
    let full = n / 8 * 8;
    let (c, k, half, one) = (
        _mm256_set1_ps(0.797_884_6),
        _mm256_set1_ps(0.044715),
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(1.0),
    );
    let mut i = 0;
    while i < full {
        unsafe {
            let x = _mm256_loadu_ps(h.as_ptr().add(i));
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let inner = _mm256_mul_ps(c, _mm256_add_ps(x, _mm256_mul_ps(k, x3)));
            let cdf = _mm256_mul_ps(half, _mm256_add_ps(one, tanh256(inner)));
            let y = _mm256_mul_ps(_mm256_mul_ps(x, cdf), _mm256_loadu_ps(v.as_ptr().add(i)));
            _mm256_storeu_ps(h.as_mut_ptr().add(i), y);
        }
        i += 8;
    }
    for (a, &b) in h[full..].iter_mut().zip(&v[full..]) {
        *a = crate::model::norm::gelu_tanh(*a) * b;
    }
}
