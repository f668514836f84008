//! Hugging Face safetensors: a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, in the keyfan/grok-1-hf or hpcai-tech/grok-1
//! layout, with the model's constants from the Hugging Face `config.json`.
//!
//! The `safetensors` crate parses and validates each header (offsets
//! contiguous, sizes matching shapes and dtypes, the buffer exactly covered);
//! this module adds what it leaves to the caller: duplicate names (a JSON map
//! keeps the last), the shard index, and payloads as views into the memory map.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use super::mmap::MappedFile;
use super::{DType, DenseTensor, StoredTensor, TensorData, TensorKind, TensorStore, WeightError};
use crate::config::{
    ModelConfig, GROK1_ATTN_SOFTCAP, GROK1_EMBEDDING_MULTIPLIER, GROK1_OUTPUT_MULTIPLIER,
};

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

fn format_error(file: &Path, reason: impl Into<String>) -> WeightError {
    WeightError::Format {
        file: file.to_path_buf(),
        offset: 0,
        reason: reason.into(),
    }
}

/// The keys of the header's top-level JSON object, in order, duplicates kept.
fn header_keys(json: &str) -> Result<Vec<String>, serde_json::Error> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    serde_json::Deserializer::from_str(json).deserialize_map(Keys)
}

/// Reads one `.safetensors` file into `store`.
fn read_file(
    path: &Path,
    store: &mut TensorStore,
    seen: &mut HashSet<String>,
) -> Result<(), WeightError> {
    let map = MappedFile::open(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = map.bytes();
    // Duplicate names first: the crate's parser would keep one of them and
    // report the gap it leaves, which names the wrong problem.
    let header = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .and_then(|h| std::str::from_utf8(h).ok());
    if let Some(Ok(keys)) = header.map(header_keys) {
        let mut in_file = HashSet::new();
        for k in &keys {
            if !in_file.insert(k.as_str()) {
                return Err(format_error(
                    path,
                    format!("tensor `{k}` appears twice in the header"),
                ));
            }
        }
    }
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format_error(path, format!("not a valid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let map: Arc<MappedFile> = map;
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .expect("offset_keys lists known tensors");
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(WeightError::Invalid {
                    file: path.to_path_buf(),
                    tensor: name,
                    reason: format!("dtype {other:?} is not supported (F32, F16 and BF16 are)"),
                })
            }
        };
        if !seen.insert(name.clone()) {
            return Err(format_error(
                path,
                format!("tensor `{name}` is also in another shard"),
            ));
        }
        let (start, end) = info.data_offsets;
        store.insert(StoredTensor {
            name,
            file: path.to_path_buf(),
            kind: TensorKind::Dense(DenseTensor {
                dtype,
                shape: info.shape.clone(),
                data: TensorData::mapped(map.clone(), data_start + start, end - start),
            }),
        });
    }
    Ok(())
}

/// A safetensors model: its files and their tensors in one store.
pub struct SafetensorsModel {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub store: TensorStore,
}

/// True when `path` (a directory) holds a safetensors model (whatever the
/// file type of its entries: opening them refuses a FIFO or device).
pub fn is_safetensors_dir(path: &Path) -> bool {
    path.join(INDEX).exists() || path.join(SINGLE).exists()
}

impl SafetensorsModel {
    /// Opens the model in `dir`: the shards of `model.safetensors.index.json`,
    /// else `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let index = dir.join(INDEX);
        // (tensor, shard file) pairs of the index, when there is one.
        let mut weight_map: Vec<(String, String)> = Vec::new();
        let files: Vec<PathBuf> = if index.exists() {
            let text =
                crate::files::read_regular_to_string(&index).map_err(|source| WeightError::Io {
                    path: index.clone(),
                    source,
                })?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format_error(&index, format!("not valid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| format_error(&index, "no `weight_map` object"))?;
            let mut shards = BTreeSet::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    format_error(
                        &index,
                        format!("weight_map: `{tensor}` does not map to a file name"),
                    )
                })?;
                // Shards sit beside the index; a path elsewhere is not followed.
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(format_error(
                        &index,
                        format!("weight_map: shard `{file}` is not a plain file name"),
                    ));
                }
                shards.insert(file.to_string());
                weight_map.push((tensor.clone(), file.to_string()));
            }
            shards.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join(SINGLE)]
        };
        let mut store = TensorStore::default();
        let mut seen = HashSet::new();
        for f in &files {
            if !f.exists() {
                return Err(format_error(
                    f,
                    format!("this shard, named in {INDEX}, is missing"),
                ));
            }
            read_file(f, &mut store, &mut seen)?;
        }
        // Every tensor of the index must be in the shard it names.
        for (tensor, file) in &weight_map {
            let t = store.get(tensor).map_err(|_| {
                format_error(
                    &index,
                    format!("`{tensor}` is listed in {file} but not found there"),
                )
            })?;
            if t.file.file_name().and_then(|n| n.to_str()) != Some(file.as_str()) {
                return Err(format_error(
                    &index,
                    format!(
                        "`{tensor}` is listed in {file} but stored in {}",
                        t.file.display()
                    ),
                ));
            }
        }
        Ok(SafetensorsModel {
            dir: dir.to_path_buf(),
            files,
            store,
        })
    }

    /// The model's constants from the Hugging Face `config.json` beside the
    /// weights (keys of both public conversions), with the Grok-1 constants
    /// where a key is absent; sizes the config omits come from the tensors.
    pub fn config(&self) -> Result<ModelConfig, WeightError> {
        let path = self.dir.join("config.json");
        let json: serde_json::Value = match crate::files::read_regular_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format_error(&path, format!("not valid JSON: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                serde_json::Value::Object(Default::default())
            }
            Err(source) => return Err(WeightError::Io { path, source }),
        };
        let num = |keys: &[&str]| keys.iter().find_map(|k| json.get(*k));
        let uint = |keys: &[&str], default: Option<usize>| -> Result<usize, WeightError> {
            match num(keys) {
                Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    format_error(
                        &path,
                        format!("`{}` is {v}, not a non-negative integer", keys[0]),
                    )
                }),
                None => {
                    default.ok_or_else(|| format_error(&path, format!("`{}` is missing", keys[0])))
                }
            }
        };
        let float = |keys: &[&str], default: f64| -> Result<f64, WeightError> {
            match num(keys) {
                Some(v) => v.as_f64().ok_or_else(|| {
                    format_error(&path, format!("`{}` is {v}, not a number", keys[0]))
                }),
                None => Ok(default),
            }
        };
        let layout = crate::model::weights::RowLayout::detect(&self.store).ok_or_else(|| {
            format_error(
                &self.dir,
                "neither the keyfan/grok-1-hf nor the hpcai-tech/grok-1 tensor names",
            )
        })?;
        let embedding =
            self.store
                .get(&layout.name(crate::model::weights::Part::Embedding, 0, None))?;
        let (vocab, d) = match embedding.shape() {
            [v, d] => (*v, *d),
            other => {
                return Err(format_error(
                    &embedding.file,
                    format!("embedding shape {other:?} is not [vocab, d]"),
                ))
            }
        };
        let emb_size = uint(&["hidden_size"], Some(d))?;
        let heads = uint(&["num_attention_heads"], Some(48))?;
        let ffn = uint(&["intermediate_size", "moe_intermediate_size"], None)?;
        let layers = (0..)
            .take_while(|&i| {
                self.store
                    .get(&layout.name(crate::model::weights::Part::Query, i, None))
                    .is_ok()
            })
            .count();
        let cfg = ModelConfig {
            name: json
                .get("_name_or_path")
                .and_then(|v| v.as_str())
                .unwrap_or("grok-1-hf")
                .to_string(),
            vocab_size: uint(&["vocab_size"], Some(vocab))?,
            pad_token: uint(&["pad_token_id"], Some(0))? as u32,
            eos_token: uint(&["eos_token_id"], Some(2))? as u32,
            sequence_len: uint(&["max_position_embeddings"], Some(8192))?,
            emb_size,
            key_size: uint(&["head_dim"], Some(emb_size / heads.max(1)))?,
            num_q_heads: heads,
            num_kv_heads: uint(&["num_key_value_heads"], Some(heads))?,
            num_layers: uint(&["num_hidden_layers"], Some(layers))?,
            widening_factor: crate::config::widening_factor_for(ffn, emb_size),
            ffn_size: ffn,
            num_experts: uint(&["num_local_experts", "num_experts"], Some(8))?,
            num_selected_experts: uint(&["num_experts_per_tok"], Some(2))?,
            attn_output_multiplier: float(&["attn_output_multiplier"], 0.08838834764831845)?,
            embedding_multiplier_scale: float(
                &["embedding_multiplier_scale"],
                GROK1_EMBEDDING_MULTIPLIER,
            )?,
            output_multiplier_scale: float(&["output_multiplier_scale"], GROK1_OUTPUT_MULTIPLIER)?,
            attn_softcap: float(
                &["max_attn_value", "attn_logit_softcapping"],
                GROK1_ATTN_SOFTCAP,
            )?,
            rope_base: float(&["rope_theta"], 10000.0)?,
            rms_norm_eps: float(&["rms_norm_eps"], 1e-5)?,
            model_parallel_shards: 1,
            seed: None,
            emb_std: None,
            num_tensors: None,
            tensors: None,
        };
        cfg.validate()
            .map_err(|e| format_error(&path, format!("describes an invalid model: {e}")))?;
        Ok(cfg)
    }
}
