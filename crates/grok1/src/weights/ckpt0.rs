//! The official checkpoint format (`ckpt-0/`, one pickle per parameter).
//!
//! Files are `tensor{i:05}_000` in JAX's tree-flatten order of the Haiku params:
//! module paths sorted as strings, then parameter names (so `decoder_layer_10`
//! comes before `decoder_layer_2`). The checkpoint holds no index: the order is
//! derived from the config here, and every file is checked against it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::mmap::MappedFile;
use super::pickle::{self, ArrayBytes, PickleErrorKind, PickledArray, PickledTensor};
use super::pickle_writer::{self, ArraySpec, Payload, PickleStyle};
use super::random::{RandomPayload, Stream};
use super::{
    DType, DenseTensor, QuantizedTensor, StoredTensor, TensorData, TensorKind, TensorStore,
    WeightError,
};
use crate::config::ModelConfig;
use crate::progress::Progress;

/// How one parameter is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// A float32 numpy array.
    Dense { shape: Vec<usize> },
    /// A `QuantizedWeight8bit`: int8 `weight` of `shape` and bf16 `scales` with
    /// `groups` groups along the contracting (second to last) axis.
    Quantized { shape: Vec<usize>, groups: usize },
}

/// One parameter of the checkpoint, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub index: usize,
    /// Haiku path, `module/param`.
    pub path: String,
    pub kind: ParamKind,
    /// The sharding the release used (recorded in `config.json`).
    pub partition_spec: &'static str,
}

impl ParamSpec {
    pub fn file_name(&self) -> String {
        format!("tensor{:05}_000", self.index)
    }

    pub fn shape(&self) -> &[usize] {
        match &self.kind {
            ParamKind::Dense { shape } | ParamKind::Quantized { shape, .. } => shape,
        }
    }

    pub fn element_count(&self) -> usize {
        self.shape().iter().product()
    }

    /// Shape of the scales of a quantised parameter: `(*lead, G, N)`.
    pub fn scales_shape(&self) -> Option<Vec<usize>> {
        match &self.kind {
            ParamKind::Quantized { shape, groups } => {
                let mut s = shape.clone();
                let k = s.len() - 2;
                s[k] = *groups;
                Some(s)
            }
            ParamKind::Dense { .. } => None,
        }
    }
}

/// The checkpoint's parameters in file order, derived from the config.
pub fn checkpoint_layout(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let d = cfg.emb_size;
    let e = cfg.num_experts;
    let ff = cfg.ffn_size;
    let shards = cfg.model_parallel_shards;
    // (module, param, kind, partition spec)
    let mut params: Vec<(String, &str, ParamKind, &'static str)> = vec![
        (
            "language_model/in_out_embed".into(),
            "embeddings",
            ParamKind::Dense {
                shape: vec![cfg.vocab_size, d],
            },
            "PartitionSpec(None, ('data', 'model'))",
        ),
        (
            "language_model/rms_norm".into(),
            "scale",
            ParamKind::Dense { shape: vec![d] },
            "PartitionSpec(None,)",
        ),
    ];
    let q = |shape: Vec<usize>, groups| ParamKind::Quantized { shape, groups };
    for layer in 0..cfg.num_layers {
        let m = format!("transformer/decoder_layer_{layer}");
        // G = model_parallel_shards where the contracting axis was split over the
        // model axis (attention output, expert down projection), else 1.
        let layer_params = [
            (
                "moe/linear",
                q(vec![e, d, ff], 1),
                "PartitionSpec(None, 'data', 'model')",
            ),
            (
                "moe/linear_1",
                q(vec![e, ff, d], shards),
                "PartitionSpec(None, 'model', 'data')",
            ),
            (
                "moe/linear_v",
                q(vec![e, d, ff], 1),
                "PartitionSpec(None, 'data', 'model')",
            ),
            (
                "multi_head_attention/key",
                q(vec![d, cfg.kv_width()], 1),
                "PartitionSpec('data', 'model')",
            ),
            (
                "multi_head_attention/linear",
                q(vec![cfg.q_width(), d], shards),
                "PartitionSpec('model', 'data')",
            ),
            (
                "multi_head_attention/query",
                q(vec![d, cfg.q_width()], 1),
                "PartitionSpec('data', 'model')",
            ),
            (
                "multi_head_attention/value",
                q(vec![d, cfg.kv_width()], 1),
                "PartitionSpec('data', 'model')",
            ),
        ];
        for (module, kind, spec) in layer_params {
            params.push((format!("{m}/{module}"), "w", kind, spec));
        }
        for norm in ["rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"] {
            params.push((
                format!("{m}/{norm}"),
                "scale",
                ParamKind::Dense { shape: vec![d] },
                "PartitionSpec(None,)",
            ));
        }
        params.push((
            format!("{m}/router"),
            "w",
            ParamKind::Dense { shape: vec![d, e] },
            "PartitionSpec('data',)",
        ));
    }
    // jax.tree_util flattens dicts in sorted key order: module names, then params.
    params.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    params
        .into_iter()
        .enumerate()
        .map(|(index, (module, param, kind, partition_spec))| ParamSpec {
            index,
            path: format!("{module}/{param}"),
            kind,
            partition_spec,
        })
        .collect()
}

/// dtype and shape of one array in a [`TensorRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayRecord {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// One entry of the tensor list in `config.json` (the fixtures' format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    pub index: usize,
    pub file: String,
    pub path: String,
    pub partition_spec: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<ArrayRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<ArrayRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<usize>,
}

impl TensorRecord {
    pub fn from_spec(spec: &ParamSpec) -> Self {
        let base = TensorRecord {
            index: spec.index,
            file: spec.file_name(),
            path: spec.path.clone(),
            partition_spec: spec.partition_spec.to_string(),
            kind: String::new(),
            dtype: None,
            shape: None,
            weight: None,
            scales: None,
            groups: None,
        };
        match &spec.kind {
            ParamKind::Dense { shape } => TensorRecord {
                kind: "ndarray".into(),
                dtype: Some("float32".into()),
                shape: Some(shape.clone()),
                ..base
            },
            ParamKind::Quantized { shape, groups } => TensorRecord {
                kind: "QuantizedWeight8bit".into(),
                weight: Some(ArrayRecord {
                    dtype: "int8".into(),
                    shape: shape.clone(),
                }),
                scales: Some(ArrayRecord {
                    dtype: "bfloat16".into(),
                    shape: spec.scales_shape().expect("quantized"),
                }),
                groups: Some(*groups),
                ..base
            },
        }
    }
}

/// Where a model directory keeps its checkpoint files and config.
#[derive(Debug, Clone)]
pub struct CheckpointPaths {
    /// The directory holding `tensor00000_000` ...
    pub tensors: PathBuf,
    /// `config.json`, when the directory has one.
    pub config: Option<PathBuf>,
}

/// Finds the checkpoint under `path`: `path/ckpt-0/`, or `path` itself when it
/// holds the tensor files. The config is `config.json` beside them or one level up.
pub fn locate(path: &Path) -> Result<CheckpointPaths, WeightError> {
    if !path.is_dir() {
        return Err(WeightError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        });
    }
    let tensors = if path.join("ckpt-0").is_dir() {
        path.join("ckpt-0")
    } else if path.join("tensor00000_000").exists() {
        path.to_path_buf()
    } else {
        return Err(WeightError::NotACheckpoint {
            path: path.to_path_buf(),
        });
    };
    // Any file type: a FIFO named config.json is refused when read, not
    // skipped for the grok-1 preset.
    let config = [tensors.join("config.json"), tensors.join("../config.json")]
        .into_iter()
        .find(|p| p.exists());
    Ok(CheckpointPaths { tensors, config })
}

fn mismatch(file: &Path, tensor: &str, expected: String, found: String) -> WeightError {
    WeightError::Mismatch {
        file: file.to_path_buf(),
        tensor: tensor.to_string(),
        expected,
        found,
    }
}

/// Checks a config's recorded tensor list against the layout derived from it.
fn check_records(
    cfg: &ModelConfig,
    layout: &[ParamSpec],
    config_path: &Path,
) -> Result<(), WeightError> {
    let Some(records) = &cfg.tensors else {
        return Ok(());
    };
    if records.len() != layout.len() {
        return Err(mismatch(
            config_path,
            "tensors",
            format!("{} entries", layout.len()),
            format!("{}", records.len()),
        ));
    }
    for (record, spec) in records.iter().zip(layout) {
        let expected = TensorRecord::from_spec(spec);
        let same = record.index == expected.index
            && record.file == expected.file
            && record.path == expected.path
            && record.kind == expected.kind
            && record.dtype == expected.dtype
            && record.shape == expected.shape
            && record.weight == expected.weight
            && record.scales == expected.scales
            && record.groups == expected.groups;
        if !same {
            return Err(mismatch(
                config_path,
                &spec.path,
                format!("{expected:?}"),
                format!("{record:?}"),
            ));
        }
    }
    Ok(())
}

fn tensor_data(file: &Arc<MappedFile>, bytes: ArrayBytes) -> TensorData {
    match bytes {
        ArrayBytes::Span { offset, len } => TensorData::mapped(file.clone(), offset, len),
        ArrayBytes::Owned(v) => TensorData::owned(v),
    }
}

fn check_array(
    path: &Path,
    tensor: &str,
    what: &str,
    array: &PickledArray,
    dtype: DType,
    shape: &[usize],
) -> Result<(), WeightError> {
    if array.dtype != dtype {
        return Err(mismatch(
            path,
            tensor,
            format!("{what}dtype {dtype}"),
            format!("{what}dtype {}", array.dtype),
        ));
    }
    if array.shape != shape {
        return Err(mismatch(
            path,
            tensor,
            format!("{what}shape {shape:?}"),
            format!("{what}shape {:?}", array.shape),
        ));
    }
    Ok(())
}

/// Reads one checkpoint file and checks it against its spec.
pub fn read_param(path: &Path, spec: &ParamSpec) -> Result<StoredTensor, WeightError> {
    let file = MappedFile::open(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = pickle::read_tensor(file.bytes()).map_err(|e| match e.kind {
        PickleErrorKind::Forbidden(global) => WeightError::ForbiddenGlobal {
            file: path.to_path_buf(),
            offset: e.offset,
            global,
        },
        PickleErrorKind::Malformed(reason) => WeightError::Pickle {
            file: path.to_path_buf(),
            offset: e.offset,
            reason: format!("{reason} (reading `{}`)", spec.path),
        },
    })?;
    let kind = match (&spec.kind, parsed) {
        (ParamKind::Dense { shape }, PickledTensor::Array(array)) => {
            check_array(path, &spec.path, "", &array, DType::F32, shape)?;
            TensorKind::Dense(DenseTensor {
                dtype: array.dtype,
                shape: array.shape,
                data: tensor_data(&file, array.data),
            })
        }
        (
            ParamKind::Quantized { shape, groups },
            PickledTensor::Quantized { weight, scales, .. },
        ) => {
            check_array(path, &spec.path, "weight ", &weight, DType::I8, shape)?;
            let scales_shape = spec.scales_shape().expect("quantized");
            if scales.dtype != DType::BF16 && scales.dtype != DType::F32 {
                return Err(mismatch(
                    path,
                    &spec.path,
                    "scales dtype bfloat16".into(),
                    format!("scales dtype {}", scales.dtype),
                ));
            }
            check_array(
                path,
                &spec.path,
                "scales ",
                &scales,
                scales.dtype,
                &scales_shape,
            )?;
            let k = shape[shape.len() - 2];
            if k % groups != 0 {
                return Err(WeightError::Invalid {
                    file: path.to_path_buf(),
                    tensor: spec.path.clone(),
                    reason: format!("{groups} scale groups do not divide the contracting axis {k}"),
                });
            }
            TensorKind::Int8Grouped(QuantizedTensor {
                shape: weight.shape,
                groups: *groups,
                weight: tensor_data(&file, weight.data),
                scales: tensor_data(&file, scales.data),
                scale_dtype: scales.dtype,
            })
        }
        (ParamKind::Dense { .. }, PickledTensor::Quantized { .. }) => {
            return Err(mismatch(
                path,
                &spec.path,
                "a numpy array".into(),
                "a QuantizedWeight8bit".into(),
            ))
        }
        (ParamKind::Quantized { .. }, PickledTensor::Array(a)) => {
            return Err(mismatch(
                path,
                &spec.path,
                "a QuantizedWeight8bit".into(),
                format!("a {} numpy array", a.dtype),
            ))
        }
    };
    Ok(StoredTensor {
        name: spec.path.clone(),
        file: path.to_path_buf(),
        kind,
    })
}

/// Checks that the directory holds exactly the expected files.
fn check_directory(dir: &Path, layout: &[ParamSpec]) -> Result<(), WeightError> {
    let expected: BTreeSet<String> = layout.iter().map(ParamSpec::file_name).collect();
    let entries = fs::read_dir(dir).map_err(|source| WeightError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut present = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| WeightError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden files (editor, OS and partial-write files) and our config are not
        // part of the checkpoint.
        if name.starts_with('.') || name == "config.json" {
            continue;
        }
        if !expected.contains(&name) {
            return Err(WeightError::StrayFile {
                file: entry.path(),
                expected: layout.len(),
            });
        }
        present.insert(name);
    }
    if let Some(spec) = layout.iter().find(|s| !present.contains(&s.file_name())) {
        return Err(WeightError::MissingFile {
            file: dir.join(spec.file_name()),
            tensor: spec.path.clone(),
        });
    }
    Ok(())
}

/// Opens every file of a checkpoint. Payloads are memory-mapped, not read: only
/// the few pickle opcodes around them are touched.
pub fn read_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    config_path: Option<&Path>,
    progress: &dyn Progress,
) -> Result<TensorStore, WeightError> {
    let layout = checkpoint_layout(cfg);
    if let Some(p) = config_path {
        check_records(cfg, &layout, p)?;
    }
    check_directory(dir, &layout)?;
    progress.start("opening checkpoint", layout.len() as u64);
    let mut store = TensorStore::default();
    for (i, spec) in layout.iter().enumerate() {
        store.insert(read_param(&dir.join(spec.file_name()), spec)?);
        progress.set(i as u64 + 1);
    }
    progress.finish();
    Ok(store)
}

/// The payloads of one parameter: the array's (or the int8 weight's) bytes,
/// and for a quantised parameter its bf16 scales, written after the weight.
pub type ParamPayloads<'a> = (Box<dyn Payload + 'a>, Option<Box<dyn Payload + 'a>>);

/// Writes a random-weight checkpoint of `cfg` (`grok1 init`).
pub fn write_random_checkpoint(
    out: &Path,
    cfg: &ModelConfig,
    seed: u64,
    progress: &dyn Progress,
) -> Result<(), WeightError> {
    let total: u64 = checkpoint_layout(cfg)
        .iter()
        .map(|spec| {
            let mut n = RandomPayload::new(cfg, spec, Stream::Values, seed).byte_len();
            if matches!(spec.kind, ParamKind::Quantized { .. }) {
                n += RandomPayload::new(cfg, spec, Stream::Scales, seed).byte_len();
            }
            n
        })
        .sum();
    write_checkpoint(out, cfg, total, progress, &mut |spec| {
        let values: Box<dyn Payload> =
            Box::new(RandomPayload::new(cfg, spec, Stream::Values, seed));
        let scales: Option<Box<dyn Payload>> = matches!(spec.kind, ParamKind::Quantized { .. })
            .then(|| {
                Box::new(RandomPayload::new(cfg, spec, Stream::Scales, seed)) as Box<dyn Payload>
            });
        Ok((values, scales))
    })
}

/// Writes a checkpoint of `cfg` in the official layout (`ckpt-0/tensorNNNNN_000`
/// pickles and `config.json`) into the empty or absent directory `out`, one
/// parameter file at a time from `payloads`; `total` bytes for the progress bar.
/// Each file is written under a temporary name and renamed when complete.
pub fn write_checkpoint<'a>(
    out: &Path,
    cfg: &ModelConfig,
    total: u64,
    progress: &dyn Progress,
    payloads: &mut dyn FnMut(&ParamSpec) -> std::io::Result<ParamPayloads<'a>>,
) -> Result<(), WeightError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WeightError::Io {
            path: path.clone(),
            source,
        }
    };
    if out.exists() {
        let mut entries = fs::read_dir(out).map_err(io(out))?;
        if entries.next().is_some() {
            return Err(WeightError::Io {
                path: out.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "output directory is not empty; refusing to overwrite it",
                ),
            });
        }
    }
    let dir = out.join("ckpt-0");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let layout = checkpoint_layout(cfg);
    progress.start("writing checkpoint", total);
    let mut written = 0u64;
    for spec in &layout {
        let final_path = dir.join(spec.file_name());
        let tmp_path = dir.join(format!(".{}.partial", spec.file_name()));
        let file = fs::File::create(&tmp_path).map_err(io(&tmp_path))?;
        let mut w = ProgressWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            done: written,
            progress,
        };
        let (mut values, scales) = payloads(spec).map_err(io(&final_path))?;
        let result = match (&spec.kind, scales) {
            (ParamKind::Dense { shape }, _) => {
                let array = ArraySpec {
                    dtype: DType::F32,
                    shape: shape.clone(),
                };
                pickle_writer::write_array(&mut w, PickleStyle::OFFICIAL, &array, values.as_mut())
            }
            (ParamKind::Quantized { shape, .. }, Some(mut scale_bytes)) => {
                let weight = ArraySpec {
                    dtype: DType::I8,
                    shape: shape.clone(),
                };
                let scales = ArraySpec {
                    dtype: DType::BF16,
                    shape: spec.scales_shape().expect("quantized"),
                };
                pickle_writer::write_quantized(
                    &mut w,
                    PickleStyle::OFFICIAL,
                    (&weight, values.as_mut()),
                    (&scales, scale_bytes.as_mut()),
                )
            }
            (ParamKind::Quantized { .. }, None) => Err(std::io::Error::other(format!(
                "{}: no scales for a quantised parameter",
                spec.path
            ))),
        };
        result.and_then(|()| w.flush()).map_err(io(&tmp_path))?;
        written = w.done;
        drop(w);
        fs::rename(&tmp_path, &final_path).map_err(io(&final_path))?;
    }
    progress.finish();
    cfg.save(&out.join("config.json"))
        .map_err(|e| WeightError::Io {
            path: out.join("config.json"),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(())
}

/// Counts the bytes written through it and reports them as progress.
struct ProgressWriter<'p, W: Write> {
    inner: W,
    done: u64,
    progress: &'p dyn Progress,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Report at most once per MiB crossed; the bar needs no finer grain.
        if (self.done + n as u64) >> 20 != self.done >> 20 {
            self.progress.set(self.done + n as u64);
        }
        self.done += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
