//! Model configuration: the constants of a Grok-1-architecture model.
//!
//! The field names are those of the golden fixtures' `config.json` files, so a
//! config written here can be read by the fixture tooling and the other way round.
//! The `grok-1` preset holds the constants of the official release
//! (shared/docs/grok1-model.md, "Shape of the real model").

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::weights::ckpt0::TensorRecord;

/// Errors in a model configuration. Each names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid model config: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}field `{field}`: {reason}", file_prefix(file))]
    Invalid {
        file: Option<PathBuf>,
        field: &'static str,
        reason: String,
    },
    #[error("unknown preset `{0}` (known: tiny, grok-1)")]
    UnknownPreset(String),
}

/// A number as a message shows it: plainly, or in exponent form when very
/// large or small (`1e308`, not 309 digits).
fn number(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

/// `sqrt(6144)`: the official embedding multiplier (applied to input embeddings).
pub const GROK1_EMBEDDING_MULTIPLIER: f64 = 78.38367176906169;
/// `1/sqrt(3)`: the official output multiplier (applied to the logits).
pub const GROK1_OUTPUT_MULTIPLIER: f64 = 0.5773502691896257;
/// The attention logit soft cap: `s = 30 * tanh(s / 30)`.
pub const GROK1_ATTN_SOFTCAP: f64 = 30.0;

/// The constants of one Grok-1-architecture model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// Number of token ids; the embedding is `[vocab_size, emb_size]`.
    pub vocab_size: usize,
    /// Key positions holding this id are masked out of attention.
    pub pad_token: u32,
    pub eos_token: u32,
    /// Context length (largest KV cache) the model was built for.
    pub sequence_len: usize,
    /// Residual width `d`.
    pub emb_size: usize,
    /// Head dimension of queries, keys and values.
    pub key_size: usize,
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub num_layers: usize,
    pub widening_factor: f64,
    /// Expert hidden width: `int(widening_factor * d) * 2 // 3` rounded up to a multiple of 8.
    pub ffn_size: usize,
    pub num_experts: usize,
    pub num_selected_experts: usize,
    /// Multiplies `q . k` before the soft cap (`1/sqrt(key_size)` in the release).
    pub attn_output_multiplier: f64,
    pub embedding_multiplier_scale: f64,
    pub output_multiplier_scale: f64,
    pub attn_softcap: f64,
    pub rope_base: f64,
    pub rms_norm_eps: f64,
    /// Width of the model axis the checkpoint was sharded over; sets the number of
    /// scale groups of weights whose contracting axis was split (8 in the release).
    pub model_parallel_shards: usize,
    /// Seed the weights were drawn from (random-weight models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Standard deviation of the random embedding (random-weight models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emb_std: Option<f64>,
    /// Number of checkpoint files; derived, written for readers of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_tensors: Option<usize>,
    /// The checkpoint's tensor list; derived, written for readers of the file and
    /// cross-checked against the derived layout when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRecord>>,
}

/// `int(widening_factor * emb_size) * 2 // 3`, rounded up to a multiple of 8 (model.py `ffn_size`).
pub fn ffn_size(emb_size: usize, widening_factor: f64) -> usize {
    let size = ((widening_factor * emb_size as f64) as usize) * 2 / 3;
    size + (8 - size % 8) % 8
}

/// A widening factor that gives `ffn` back through [`ffn_size`], for formats
/// that store the expert width instead of the factor (GGUF, Hugging Face
/// configs); the half keeps `int()` off a rounding edge.
pub fn widening_factor_for(ffn: usize, emb_size: usize) -> f64 {
    (ffn as f64 * 1.5 + 0.5) / emb_size.max(1) as f64
}

/// The seed of the demo model's random weights (see [`ModelConfig::demo`]).
pub const DEMO_SEED: u64 = 1;

impl ModelConfig {
    /// The official Grok-1 release (shared/docs/grok1-model.md).
    pub fn grok1() -> Self {
        ModelConfig {
            name: "grok-1".into(),
            vocab_size: 128 * 1024,
            pad_token: 0,
            eos_token: 2,
            sequence_len: 8192,
            emb_size: 6144,
            key_size: 128,
            num_q_heads: 48,
            num_kv_heads: 8,
            num_layers: 64,
            widening_factor: 8.0,
            ffn_size: ffn_size(6144, 8.0),
            num_experts: 8,
            num_selected_experts: 2,
            attn_output_multiplier: 0.08838834764831845,
            embedding_multiplier_scale: GROK1_EMBEDDING_MULTIPLIER,
            output_multiplier_scale: GROK1_OUTPUT_MULTIPLIER,
            attn_softcap: GROK1_ATTN_SOFTCAP,
            rope_base: 10000.0,
            rms_norm_eps: 1e-5,
            model_parallel_shards: 8,
            seed: None,
            emb_std: None,
            num_tensors: None,
            tensors: None,
        }
    }

    /// A 2-layer model with Grok-1's architecture at toy width; the shape of the
    /// `tiny-moe` golden fixture.
    pub fn tiny() -> Self {
        let key_size = 16;
        ModelConfig {
            name: "tiny".into(),
            vocab_size: 1024,
            sequence_len: 128,
            emb_size: 64,
            key_size,
            num_q_heads: 16,
            num_kv_heads: 8,
            num_layers: 2,
            widening_factor: 2.0,
            ffn_size: ffn_size(64, 2.0),
            attn_output_multiplier: 1.0 / (key_size as f64).sqrt(),
            emb_std: Some(0.006),
            ..Self::grok1()
        }
    }

    /// The CLI's built-in demo model (its weights are
    /// `random_store(&ModelConfig::demo(), DEMO_SEED)`): Grok-1's
    /// architecture at the tiny width with the real vocabulary and a context
    /// of 1024.
    pub fn demo() -> Self {
        ModelConfig {
            name: "grok1-demo".into(),
            vocab_size: 131072,
            sequence_len: 1024,
            emb_std: Some(0.01),
            ..Self::tiny()
        }
    }

    /// A preset by name: `tiny` or `grok-1`.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "grok-1" | "grok1" => Ok(Self::grok1()),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// Reads and validates a `config.json`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            crate::files::read_regular_to_string(path).map_err(|source| ConfigError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let config: ModelConfig =
            serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { field, reason, .. } => ConfigError::Invalid {
                file: Some(path.to_path_buf()),
                field,
                reason,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Writes the config, with the derived tensor list, as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let mut full = self.clone();
        let layout = crate::weights::ckpt0::checkpoint_layout(self);
        full.num_tensors = Some(layout.len());
        full.tensors = Some(layout.iter().map(TensorRecord::from_spec).collect());
        let text = serde_json::to_string_pretty(&full).expect("a config always serialises");
        std::fs::write(path, text + "\n").map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Number of query heads that share one key/value head.
    pub fn q_per_kv(&self) -> usize {
        self.num_q_heads / self.num_kv_heads
    }

    /// Width of the concatenated query heads.
    pub fn q_width(&self) -> usize {
        self.num_q_heads * self.key_size
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.key_size
    }

    /// Checks every field; the error names the first field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| {
            Err(ConfigError::Invalid {
                file: None,
                field,
                reason,
            })
        };
        let positive = [
            ("vocab_size", self.vocab_size),
            ("sequence_len", self.sequence_len),
            ("emb_size", self.emb_size),
            ("key_size", self.key_size),
            ("num_q_heads", self.num_q_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("num_layers", self.num_layers),
            ("ffn_size", self.ffn_size),
            ("num_experts", self.num_experts),
            ("num_selected_experts", self.num_selected_experts),
            ("model_parallel_shards", self.model_parallel_shards),
        ];
        for (field, value) in positive {
            if value == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        // Guards against configs whose tensors could not be addressed at all.
        const LIMIT: usize = 1 << 24;
        for (field, value) in positive {
            if value > LIMIT {
                return bad(field, format!("{value} is larger than {LIMIT}"));
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return bad("vocab_size", "must fit in 32 bits".into());
        }
        if self.pad_token as usize >= self.vocab_size {
            return bad(
                "pad_token",
                format!("{} is outside the vocabulary", self.pad_token),
            );
        }
        if self.eos_token as usize >= self.vocab_size {
            return bad(
                "eos_token",
                format!("{} is outside the vocabulary", self.eos_token),
            );
        }
        if !self.key_size.is_multiple_of(2) {
            return bad(
                "key_size",
                format!("{} must be even for rotate-half RoPE", self.key_size),
            );
        }
        if !self.num_q_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_q_heads",
                format!(
                    "{} is not a multiple of num_kv_heads {}",
                    self.num_q_heads, self.num_kv_heads
                ),
            );
        }
        if self.num_selected_experts > self.num_experts {
            return bad(
                "num_selected_experts",
                format!(
                    "{} is more than num_experts {}",
                    self.num_selected_experts, self.num_experts
                ),
            );
        }
        for (field, value, range) in self.float_fields() {
            // (NaN is in no range.)
            if !range.contains(&value) {
                return bad(
                    field,
                    format!(
                        "{} is outside {} to {}",
                        number(value),
                        number(*range.start()),
                        number(*range.end())
                    ),
                );
            }
        }
        let expected_ffn = ffn_size(self.emb_size, self.widening_factor);
        if self.ffn_size != expected_ffn {
            return bad(
                "ffn_size",
                format!(
                    "{} does not follow from widening_factor {} and emb_size {} (expected {expected_ffn})",
                    self.ffn_size, self.widening_factor, self.emb_size
                ),
            );
        }
        let shards = self.model_parallel_shards;
        if !self.q_width().is_multiple_of(shards) {
            return bad(
                "model_parallel_shards",
                format!(
                    "{shards} does not divide the attention width {}",
                    self.q_width()
                ),
            );
        }
        if !self.ffn_size.is_multiple_of(shards) {
            return bad(
                "model_parallel_shards",
                format!("{shards} does not divide ffn_size {}", self.ffn_size),
            );
        }
        Ok(())
    }

    /// Every float field with the range it must lie in: wide enough for any
    /// model of this architecture (Grok-1's values sit well inside), narrow
    /// enough that each is a normal f32 the forward pass cannot overflow or
    /// divide by zero with (an embedding scale of 1e308 is inf in f32, and
    /// every logit NaN).
    fn float_fields(&self) -> Vec<(&'static str, f64, RangeInclusive<f64>)> {
        let mut fields = vec![
            ("widening_factor", self.widening_factor, 1e-6..=1e6),
            (
                "attn_output_multiplier",
                self.attn_output_multiplier,
                1e-6..=1e3,
            ),
            (
                "embedding_multiplier_scale",
                self.embedding_multiplier_scale,
                1e-6..=1e4,
            ),
            (
                "output_multiplier_scale",
                self.output_multiplier_scale,
                1e-6..=1e4,
            ),
            ("attn_softcap", self.attn_softcap, 1e-3..=1e4),
            ("rope_base", self.rope_base, 1.0..=1e12),
            ("rms_norm_eps", self.rms_norm_eps, 1e-12..=1.0),
        ];
        if let Some(std) = self.emb_std {
            fields.push(("emb_std", std, 1e-9..=1e3));
        }
        fields
    }

    /// Total parameter count (int8 weights count once each, scales not counted).
    pub fn parameter_count(&self) -> u64 {
        crate::weights::ckpt0::checkpoint_layout(self)
            .iter()
            .map(|spec| spec.element_count() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grok1_preset_has_the_release_shape() {
        let c = ModelConfig::grok1();
        c.validate().unwrap();
        assert_eq!(c.ffn_size, 32768);
        assert_eq!(c.q_per_kv(), 6);
        // 314B parameters in all (grok1-model.md).
        let params = c.parameter_count();
        assert!(
            (313_000_000_000..317_000_000_000).contains(&params),
            "{params}"
        );
    }

    #[test]
    fn ffn_size_rounds_up_to_eight() {
        assert_eq!(ffn_size(64, 2.0), 88);
        assert_eq!(ffn_size(32, 2.0), 48);
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = ModelConfig::tiny();
        c.num_kv_heads = 3;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("num_q_heads"), "{err}");
        let mut c = ModelConfig::tiny();
        c.ffn_size = 90;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("ffn_size") && err.contains("expected 88"),
            "{err}"
        );
        let mut c = ModelConfig::tiny();
        c.eos_token = 5000;
        assert!(c.validate().unwrap_err().to_string().contains("eos_token"));
        let mut c = ModelConfig::tiny();
        c.rms_norm_eps = f64::NAN;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rms_norm_eps"));
    }

    #[test]
    fn float_fields_must_be_sensible() {
        // Each of these once loaded, and the first gave NaN logits (1e308 is
        // inf in f32) from which greedy decoding emitted id 0 forever.
        type Set = fn(&mut ModelConfig, f64);
        let cases: [(Set, f64, &str); 7] = [
            (
                |c, v| c.embedding_multiplier_scale = v,
                1e308,
                "field `embedding_multiplier_scale`: 1e308 is outside 1e-6 to 10000",
            ),
            (
                |c, v| c.embedding_multiplier_scale = v,
                0.0,
                "field `embedding_multiplier_scale`: 0 is outside 1e-6 to 10000",
            ),
            (
                |c, v| c.output_multiplier_scale = v,
                -0.5,
                "field `output_multiplier_scale`: -0.5 is outside 1e-6 to 10000",
            ),
            (
                |c, v| c.attn_output_multiplier = v,
                f64::INFINITY,
                "field `attn_output_multiplier`: inf is outside 1e-6 to 1000",
            ),
            (
                |c, v| c.attn_softcap = v,
                1e30,
                "field `attn_softcap`: 1e30 is outside 0.001 to 10000",
            ),
            (
                |c, v| c.rope_base = v,
                f64::NAN,
                "field `rope_base`: NaN is outside 1 to 1e12",
            ),
            (
                |c, v| c.rms_norm_eps = v,
                1e-50,
                "field `rms_norm_eps`: 1e-50 is outside 1e-12 to 1",
            ),
        ];
        for (set, value, message) in cases {
            let mut c = ModelConfig::tiny();
            set(&mut c, value);
            assert_eq!(c.validate().unwrap_err().to_string(), message);
        }
        ModelConfig::grok1().validate().unwrap();
    }
}
