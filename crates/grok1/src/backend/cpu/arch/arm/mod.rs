//! aarch64 kernels: `neon` (the int8 checkpoint, int8 rows, Q8_0,
//! elementwise maps), `attention` (one page of attention on every KV
//! type), `f32_rows` (the tied embedding's product, decoded rows) and the
//! fused products of the other GGUF block types (`q8_blocks_i8`, with each
//! type family's unpacking in `legacy_i8`, `k_quants_i8`, `iq_i8`).

pub mod attention;
pub mod f32_rows;
pub mod iq_i8;
pub mod k_quants_i8;
pub mod legacy_i8;
pub mod neon;
pub mod q8_blocks_i8;
