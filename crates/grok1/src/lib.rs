//! grok1: run xAI's Grok-1 from its official checkpoint.
//!
//! Data flows as in shared/docs/architecture.md: a format reader fills a
//! [`weights::TensorStore`]; [`model::Grok1`] runs the forward pass of
//! shared/docs/grok1-model.md against a [`backend::Backend`]; [`kv_cache`] holds
//! keys and values between steps; [`sampling`] and [`generate`] turn logits into
//! tokens. [`load`] reads any supported format in one call:
//!
//! ```
//! # fn main() -> Result<(), grok1::LoadError> {
//! let loaded = grok1::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-moe"))?;
//! let tokenizer = loaded.tokenizer(None)?;
//! # assert_eq!(loaded.model.config().name, "tiny-moe");
//! # let _ = tokenizer;
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod progress;
pub mod weights;

pub use config::{ConfigError, ModelConfig};
pub mod backend;
pub mod bench;
pub mod convert;
pub mod engine;
pub mod files;
pub mod generate;
pub mod imatrix;
pub mod kv_cache;
pub mod load;
pub mod model;
pub mod npy;
pub mod parallel;
pub mod quant;
pub mod runtime;
pub mod sampling;
pub mod session;

pub use backend::Precision;
pub use kv_cache::{KvCache, KvType, SeqId};
pub use load::{load, load_parallel, load_with, LoadError, LoadedModel, ModelFormat};
pub use model::{
    ForwardOptions, ForwardOutput, Grok1, LogitsRows, ModelError, RowLogits, SequenceInput,
};
