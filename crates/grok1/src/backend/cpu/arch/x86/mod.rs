//! x86-64 kernels.

#[cfg(target_os = "linux")]
pub mod amx;
pub mod attention;
pub mod int8_ckpt_f32;
pub mod int8_ckpt_i8_avx2;
pub mod int8_ckpt_i8_vnni;
pub mod int8_ckpt_strips;
pub mod q8_0_f32;
