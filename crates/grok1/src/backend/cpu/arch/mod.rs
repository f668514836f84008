//! The SIMD versions of the kernels, one directory per instruction set
//! architecture.

#[cfg(target_arch = "aarch64")]
pub mod arm;
#[cfg(target_arch = "x86_64")]
pub mod x86;
