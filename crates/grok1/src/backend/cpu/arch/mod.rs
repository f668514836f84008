//! The SIMD versions of the kernels, one directory per instruction set
//! architecture, and which of them this CPU runs. They import the shared
//! types (`common`) and the scalar pieces of the block types (`types`),
//! never the kernels that choose between them (`kernels`).

#[cfg(target_arch = "aarch64")]
pub mod arm;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use super::common::Isa;

impl Isa {
    /// The best instruction set this CPU has; `GROK1_KERNELS=scalar` forces the
    /// portable kernels, `GROK1_KERNELS=avx2` the AVX2 ones and
    /// `GROK1_KERNELS=avx512-vnni` the AVX-512 ones on a CPU that has more
    /// (for debugging and comparison).
    pub fn detect() -> Isa {
        let best = Self::best();
        match std::env::var("GROK1_KERNELS").as_deref() {
            Ok("scalar") => Isa::Scalar,
            // For comparisons on a CPU that has more.
            Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
            Ok("avx512-vnni") if best == Isa::Amx => Isa::Avx512Vnni,
            _ => best,
        }
    }

    /// The best instruction set this CPU has, ignoring the environment.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                #[cfg(target_os = "linux")]
                if x86::amx::available() {
                    return Isa::Amx;
                }
                return Isa::Avx512Vnni;
            }
            return Isa::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Scalar
    }

    /// Every instruction set this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        let all: &[Isa] = if cfg!(target_arch = "aarch64") {
            &[Isa::Scalar, Isa::Neon]
        } else {
            &[Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx]
        };
        let best = all.iter().position(|&i| i == Self::best()).unwrap_or(0);
        all[..=best].to_vec()
    }
}

/// Cephes' expf, shared by the SIMD kernels' exp (x86 and NEON): inputs
/// clamped to `EXP_RANGE`, `x - n ln 2` with ln 2 in two parts
/// (`EXP_LN2_PARTS`), then the polynomial `EXP_POLY` (highest power first).
pub(crate) const EXP_RANGE: (f32, f32) = (-87.3, 88.7);
pub(crate) const EXP_LN2_PARTS: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];
/// Cephes' tanhf below |x| = `TANH_SMALL`: `x + x^3 P(x^2)`, `TANH_POLY`
/// highest power first.
pub(crate) const TANH_SMALL: f32 = 0.625;
pub(crate) const TANH_POLY: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];
