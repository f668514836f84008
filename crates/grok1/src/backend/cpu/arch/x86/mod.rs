//! x86-64 kernels: AVX2 + FMA (+ F16C) everywhere, AVX-512 VNNI and AMX-INT8
//! where the CPU has them. Each is an `unsafe fn` whose caller in `kernels`
//! (or `attention::pages`) checks every bound first and only calls it when
//! the CPU has its features (`Isa::best`). The files are named by product:
//! the weight type (`types/`) and the activations it is multiplied with
//! (`f32` or `i8`), or what the kernels compute.
//!
//! Dependencies among them run one way: `int8_ckpt_i8_avx2`, `int8_ckpt_strips`
//! <- `int8_ckpt_i8_strips` <- `int8_ckpt_i8_vnni` <- `amx`; `int8_ckpt_f32`
//! takes the strips and `add_scaled`; `q8_0_i8` <- `amx`; `math` <- `attention`;
//! `hsum` (here) <- `f32_rows`, `q8_0_f32`, `attention`.

#[cfg(target_os = "linux")]
pub mod amx;
pub mod attention;
pub mod f32_rows;
pub mod int8_ckpt_f32;
pub mod int8_ckpt_i8_avx2;
pub mod int8_ckpt_i8_strips;
pub mod int8_ckpt_i8_vnni;
pub mod int8_ckpt_strips;
pub mod int8_rows;
pub mod iq_i8;
pub mod legacy_i8;
pub mod math;
pub mod q2_k_i8;
pub mod q3_k_i8;
pub mod q4_k_i8;
pub mod q5_k_i8;
pub mod q6_k_i8;
pub mod q8_0_f32;
pub mod q8_0_i8;
pub mod q8_blocks_i8;
pub mod q8_blocks_vnni;
pub mod quantize;
pub mod read;

use std::arch::x86_64::*;

/// The sum of the eight lanes of `v`.
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
