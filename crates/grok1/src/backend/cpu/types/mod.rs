//! One module per data type the kernels read: its layout, the activations
//! its products pair with, and the scalar reference of those products. They
//! import only `common`; the SIMD versions (`arch/`) import them, and
//! `kernels` (with `attention::pages`) chooses between the two.

pub mod bf16_pages;
pub mod f32_pages;
pub mod f32_rows;
pub mod int8_ckpt;
pub mod int8_rows;
pub mod iq1_m;
pub mod iq1_s;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub mod iq3_s;
pub mod iq3_xxs;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod iq_levels;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_0_pages;
pub mod q8_blocks;
