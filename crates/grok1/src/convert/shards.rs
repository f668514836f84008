//! `grok1 convert --shards N`: one directory per rank (`weights::shard_set`),
//! each holding only that rank's part of every split tensor, encoded as the
//! whole model's conversion encodes it, so that the set runs exactly as the
//! whole converted file does under `mpirun -np N`.

use std::path::{Path, PathBuf};

use grok1_tokenizer::Tokenizer;

use super::{
    convert_part_with, planned_tensors, ConvertError, ConvertOptions, ConvertReport, OutFormat,
};
use crate::config::ModelConfig;
use crate::model::Weights;
use crate::parallel::{config_lines, tensor_line, tensor_lines, Shard};
use crate::progress::Progress;
use crate::weights::shard_set::{
    fingerprint, rank_dir_name, RankManifest, SetManifest, ShardFile, ShardFormat, FORMAT_VERSION,
    RANK_MANIFEST, SET_MANIFEST, SPLIT_RULE,
};
use crate::weights::{gguf, safetensors, TensorStore, WeightError};

/// Why a shard set could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ShardWriteError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// The source cannot be split over the ranks asked (names the tensor),
    /// or a written part does not read back.
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--shards must be at least 1")]
    NoRanks,
}

/// What a shard set's conversion wrote: one report per rank.
#[derive(Debug, Clone)]
pub struct ShardSetReport {
    pub ranks: Vec<ConvertReport>,
}

impl ShardSetReport {
    pub fn bytes_written(&self) -> u64 {
        self.ranks.iter().map(|r| r.bytes_written).sum()
    }
}

/// Labels each rank's phase of the progress bar.
struct RankProgress<'a> {
    inner: &'a dyn Progress,
    rank: usize,
    ranks: usize,
}

impl Progress for RankProgress<'_> {
    fn start(&self, label: &str, total: u64) {
        self.inner.start(
            &format!("{label} rank {}/{}", self.rank + 1, self.ranks),
            total,
        );
    }
    fn set(&self, done: u64) {
        self.inner.set(done);
    }
    fn finish(&self) {
        self.inner.finish();
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ShardWriteError + '_ {
    move |source| ShardWriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A written rank's config and tensor table, read back from its files.
fn read_back(format: ShardFormat, dir: &Path) -> Result<(ModelConfig, Vec<String>), WeightError> {
    Ok(match format {
        ShardFormat::Gguf => {
            let g = gguf::GgufModel::open(&dir.join("model.gguf"))?;
            (g.config()?, tensor_lines(&g.store))
        }
        ShardFormat::Safetensors => {
            let st = safetensors::SafetensorsModel::open(dir)?;
            (st.config()?, tensor_lines(&st.store))
        }
    })
}

/// Writes the model in `store` as a set of `ranks` rank directories under
/// `out` (which must not exist, or be empty): `out/rank-R-of-N/` with the
/// rank's file(s) and `shard.json`, then `out/shard-set.json`. Each rank's
/// tensors are read from the whole source a block of rows at a time, so
/// memory stays bounded whatever the model's size. A tensor that cannot be
/// split over `ranks` (its heads, hidden columns or vocabulary rows, or the
/// output type's blocks) is refused, naming it, before anything is written.
pub fn write_shard_set(
    cfg: &ModelConfig,
    store: &TensorStore,
    tokenizer: Option<&Tokenizer>,
    options: &ConvertOptions,
    ranks: usize,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ShardSetReport, ShardWriteError> {
    if ranks == 0 {
        return Err(ShardWriteError::NoRanks);
    }
    let format = match options.format {
        OutFormat::Gguf => ShardFormat::Gguf,
        OutFormat::Safetensors => ShardFormat::Safetensors,
    };
    let whole = Weights::from_store(cfg, store)?;
    super::check_part_split(cfg, &whole, ranks, options)?;
    // An error while writing removes what was made.
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(io(out))?;
    let written = write_ranks(
        cfg, tokenizer, options, ranks, out, progress, &whole, format,
    );
    if written.is_err() && created {
        let _ = std::fs::remove_dir_all(out);
    }
    written
}

#[allow(clippy::too_many_arguments)]
fn write_ranks(
    cfg: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
    options: &ConvertOptions,
    ranks: usize,
    out: &Path,
    progress: &dyn Progress,
    whole: &Weights,
    format: ShardFormat,
) -> Result<ShardSetReport, ShardWriteError> {
    let file_names: &[&str] = match format {
        ShardFormat::Gguf => &["model.gguf"],
        ShardFormat::Safetensors => &["model.safetensors", "config.json"],
    };
    let whole_table: Vec<String> = planned_tensors(cfg, whole, options)
        .into_iter()
        .map(|(name, dtype, shape)| tensor_line(&name, &dtype.to_string(), &shape))
        .collect();
    let mut reports = Vec::with_capacity(ranks);
    let mut parts = Vec::with_capacity(ranks);
    let mut config = None;
    for rank in 0..ranks {
        let dir = out.join(rank_dir_name(rank, ranks));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let target = match format {
            ShardFormat::Gguf => dir.join("model.gguf"),
            ShardFormat::Safetensors => dir.clone(),
        };
        let labelled = RankProgress {
            inner: progress,
            rank,
            ranks,
        };
        let report = convert_part_with(
            cfg,
            whole,
            Shard { rank, count: ranks },
            tokenizer,
            options,
            &target,
            &labelled,
        )?;
        let (mut read_config, table) = read_back(format, &dir)?;
        // A GGUF's vocabulary size reads back as its embedding's rows: the rank's.
        read_config.vocab_size = cfg.vocab_size;
        config.get_or_insert(read_config);
        let mut files = Vec::new();
        for name in file_names {
            let path = dir.join(name);
            let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
            files.push(ShardFile {
                name: name.to_string(),
                bytes,
            });
        }
        parts.push((dir, files, table));
        reports.push(report);
    }
    let config = config.expect("at least one rank");
    let mut description = config_lines(&config);
    let mut sorted = whole_table;
    sorted.sort();
    description.extend(sorted);
    let model = description.join("\n");
    let print = fingerprint(&model);
    for (rank, (dir, files, tensors)) in parts.into_iter().enumerate() {
        let manifest = RankManifest {
            format_version: FORMAT_VERSION,
            rank,
            ranks,
            split: SPLIT_RULE.to_string(),
            fingerprint: print.clone(),
            format,
            model: model.clone(),
            config: config.clone(),
            files,
            tensors,
        };
        write_json(&dir.join(RANK_MANIFEST), &manifest)?;
    }
    let set = SetManifest {
        format_version: FORMAT_VERSION,
        ranks,
        split: SPLIT_RULE.to_string(),
        fingerprint: print,
    };
    write_json(&out.join(SET_MANIFEST), &set)?;
    Ok(ShardSetReport { ranks: reports })
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ShardWriteError> {
    let text = serde_json::to_string_pretty(value).expect("manifests serialise");
    std::fs::write(path, text + "\n").map_err(io(path))
}
