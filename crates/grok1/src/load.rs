//! One call from a path to a runnable model and its tokenizer, whatever the
//! format: the official `ckpt-0` directory, a GGUF file (or a directory holding
//! one), or a Hugging Face safetensors directory.
//!
//! ```
//! # fn main() -> Result<(), grok1::LoadError> {
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-moe");
//! let loaded = grok1::load(dir)?;
//! assert_eq!(loaded.format, grok1::ModelFormat::Ckpt0);
//! assert_eq!(loaded.model.config().vocab_size, 1024);
//! // No tokenizer.model beside this checkpoint: the official one built in.
//! assert!(loaded.tokenizer_file.is_none());
//! let tokenizer = loaded.tokenizer(None)?;
//! assert_eq!(tokenizer.vocab_size(), 131072);
//!
//! // The same call reads llama.cpp's GGUF, here a conversion of that checkpoint.
//! let gguf = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/gguf/tiny-moe-f32.gguf");
//! let converted = grok1::load(gguf)?;
//! assert_eq!(converted.format, grok1::ModelFormat::Gguf);
//! assert_eq!(converted.model.config().vocab_size, 1024);
//!
//! // Errors name the path.
//! let missing = grok1::load("/no/such/model").err().expect("no model there");
//! assert!(missing.to_string().starts_with("/no/such/model"), "{missing}");
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use grok1_tokenizer::{Tokenizer, TokenizerError};

use crate::parallel::{check_same_model, model_description, Collective, ParallelError};
use crate::progress::{NoProgress, Progress};
use crate::weights::shard_set::{self, RankDir, ShardFormat, ShardSetError};
use crate::weights::{ckpt0, gguf, safetensors, TensorStore, WeightError};
use crate::{ConfigError, Grok1, ModelConfig};

/// The checkpoint formats [`load`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// xAI's release: `ckpt-0/` with `tensor00000_000` ... (int8 weights, bf16 scales).
    Ckpt0,
    /// llama.cpp's GGUF (`grok` architecture), possibly split into parts.
    Gguf,
    /// Hugging Face safetensors (the keyfan/grok-1-hf layout).
    Safetensors,
}

/// Why a model or its tokenizer could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("building the model from {}: {source}", path.display())]
    Build { path: PathBuf, source: WeightError },
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    #[error(transparent)]
    Shards(#[from] ShardSetError),
    #[error("loading tokenizer {}: {source}", path.display())]
    TokenizerFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading tokenizer {}: {source}", path.display())]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
}

/// A model read by [`load`], and where its tokenizer is.
pub struct LoadedModel {
    pub model: Grok1,
    pub format: ModelFormat,
    /// `tokenizer.model` found beside the checkpoint, if any.
    pub tokenizer_file: Option<PathBuf>,
    /// The vocabulary stored in the model file itself (GGUF), if any.
    pub embedded_tokenizer: Option<Tokenizer>,
    /// The files and directories the model was read from (so that a converter
    /// never writes over them).
    pub sources: Vec<PathBuf>,
    /// A `ckpt-0` directory without `config.json`: the grok-1 preset was used.
    pub preset_config: bool,
}

impl LoadedModel {
    /// The tokenizer: `file` if given, else a `tokenizer.model` beside the
    /// model, else the vocabulary inside the model file, else the official
    /// Grok-1 tokenizer built into the library.
    pub fn tokenizer(&self, file: Option<&Path>) -> Result<Tokenizer, LoadError> {
        match (
            file.or(self.tokenizer_file.as_deref()),
            &self.embedded_tokenizer,
        ) {
            (Some(path), _) => read_tokenizer(path),
            (None, Some(embedded)) => Ok(embedded.clone()),
            (None, None) => Ok(Tokenizer::grok1()),
        }
    }
}

/// Reads a SentencePiece `tokenizer.model`. Only a regular file is read (a
/// FIFO is refused rather than waited on).
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let bytes = crate::files::read_regular(path).map_err(|source| LoadError::TokenizerFile {
        path: path.to_path_buf(),
        source,
    })?;
    // (The path again: a corrupt file's error does not name it.)
    Tokenizer::from_bytes(&bytes).map_err(|source| LoadError::Tokenizer {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the model at `path` in whichever supported format it is, without
/// reporting progress. See [`load_with`].
pub fn load(path: impl AsRef<Path>) -> Result<LoadedModel, LoadError> {
    load_with(path.as_ref(), &NoProgress)
}

/// Loads the model at `path`: a GGUF file or a directory holding one, a
/// safetensors directory (`model.safetensors` or its index), or a directory
/// holding `ckpt-0/` or the tensor files themselves (with `config.json` beside
/// them or one level up; the grok-1 preset without one). Weights are
/// memory-mapped, not read. `progress` hears about the checkpoint's files.
/// A shard set of one rank (`convert --shards 1`) loads too; one of several
/// ranks needs [`load_parallel`] with as many processes.
///
/// ```
/// # fn main() -> Result<(), grok1::LoadError> {
/// use std::ops::ControlFlow;
/// use grok1::generate::{generate, StopConditions};
/// use grok1::sampling::SamplingParams;
///
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/tiny-moe");
/// let loaded = grok1::load_with(dir.as_ref(), &grok1::progress::NoProgress)?;
/// let stop = StopConditions { eos: None, stop_sequences: Vec::new(), max_tokens: 4 };
/// let out = generate(
///     &loaded.model,
///     &[5, 6, 7],
///     &SamplingParams::default(),
///     &stop,
///     Default::default(),
///     &mut |_new_tokens| ControlFlow::Continue(()),
/// )
/// .expect("the prompt fits the model");
/// assert_eq!(out.tokens.len(), 4);
/// # Ok(())
/// # }
/// ```
pub fn load_with(path: &Path, progress: &dyn Progress) -> Result<LoadedModel, LoadError> {
    load_parallel(path, progress, crate::parallel::single_process())
}

/// [`load_with`] for one rank of a model split over `collective`'s processes
/// (tensor parallel): the file is opened whole (mapped, not read) and this
/// rank keeps its part of each split tensor; from a shard set
/// (`weights::shard_set`), the rank maps its own directory, whose tensors
/// are its part already. Every rank must call it; a rank
/// whose model differs from rank 0's (config or tensor table) is refused on
/// every rank with [`ParallelError::DifferentModels`].
pub fn load_parallel(
    path: &Path,
    progress: &dyn Progress,
    collective: Arc<dyn Collective>,
) -> Result<LoadedModel, LoadError> {
    // A shard set (`grok1 convert --shards N`): each rank maps its own part.
    let opened = shard_set::agree(&*collective, open_shard(path, collective.shard()))??;
    if let Some(part) = opened {
        return build_shard(part, collective);
    }
    if let Some(file) = gguf::find(path)? {
        return load_gguf(&file, collective);
    }
    if safetensors::is_safetensors_dir(path) {
        return load_safetensors(path, collective);
    }
    load_ckpt0(path, progress, collective)
}

/// One rank's part of a shard set, opened and checked against its manifest.
struct OpenedShard {
    rank_dir: RankDir,
    config: ModelConfig,
    store: TensorStore,
    embedded_tokenizer: Option<Tokenizer>,
}

/// The part of the shard set at `path` that `shard` runs, if `path` is one.
fn open_shard(
    path: &Path,
    shard: crate::parallel::Shard,
) -> Result<Option<OpenedShard>, LoadError> {
    let Some(rank_dir) = shard_set::locate(path, shard)? else {
        return Ok(None);
    };
    let (mut config, store, embedded_tokenizer) = match rank_dir.manifest.format {
        ShardFormat::Gguf => {
            let g = gguf::GgufModel::open(&rank_dir.file("model.gguf"))?;
            let (config, tokenizer) = (g.config()?, g.tokenizer()?);
            (config, g.store, tokenizer)
        }
        ShardFormat::Safetensors => {
            let st = safetensors::SafetensorsModel::open(&rank_dir.dir)?;
            (st.config()?, st.store, None)
        }
    };
    // A GGUF's vocabulary size is its embedding's rows: this rank's part.
    config.vocab_size = rank_dir.manifest.config.vocab_size;
    let (ours, recorded) = (
        crate::parallel::config_lines(&config),
        crate::parallel::config_lines(&rank_dir.manifest.config),
    );
    if let Some((have, want)) = ours.iter().zip(&recorded).find(|(a, b)| a != b) {
        return Err(ShardSetError::Refused {
            rank: shard.rank,
            file: rank_dir.file(shard_set::RANK_MANIFEST),
            reason: format!("records {want}, but the rank's files give {have}"),
        }
        .into());
    }
    shard_set::check_tensors(
        &rank_dir,
        shard.rank,
        &crate::parallel::tensor_lines(&store),
    )?;
    Ok(Some(OpenedShard {
        rank_dir,
        config,
        store,
        embedded_tokenizer,
    }))
}

fn build_shard(
    part: OpenedShard,
    collective: Arc<dyn Collective>,
) -> Result<LoadedModel, LoadError> {
    let OpenedShard {
        rank_dir,
        config,
        store,
        embedded_tokenizer,
    } = part;
    // The whole model's description: ranks of one set agree, of two differ.
    check_same_model(&*collective, &rank_dir.manifest.model)?;
    let model = Grok1::from_presliced_store(config, &store, collective).map_err(|source| {
        LoadError::Build {
            path: rank_dir.dir.clone(),
            source,
        }
    })?;
    let folders: Vec<PathBuf> = [Some(rank_dir.dir.clone()), rank_dir.set.clone()]
        .into_iter()
        .flatten()
        .collect();
    let tokenizer_file = folders
        .iter()
        .map(|d| d.join("tokenizer.model"))
        .find(|p| p.exists());
    let format = match rank_dir.manifest.format {
        ShardFormat::Gguf => ModelFormat::Gguf,
        ShardFormat::Safetensors => ModelFormat::Safetensors,
    };
    Ok(LoadedModel {
        model,
        format,
        tokenizer_file,
        embedded_tokenizer,
        sources: folders,
        preset_config: false,
    })
}

fn build(
    config: ModelConfig,
    store: &TensorStore,
    path: &Path,
    collective: Arc<dyn Collective>,
) -> Result<Grok1, LoadError> {
    check_same_model(&*collective, &model_description(&config, store))?;
    Grok1::from_store_parallel(config, store, collective).map_err(|source| LoadError::Build {
        path: path.to_path_buf(),
        source,
    })
}

/// A model's files opened (mapped, not read) and not yet built: its config,
/// its tensors and where its tokenizer is.
pub struct OpenedModel {
    pub config: ModelConfig,
    pub store: TensorStore,
    pub format: ModelFormat,
    pub tokenizer_file: Option<PathBuf>,
    pub embedded_tokenizer: Option<Tokenizer>,
    /// The files and directories the model is read from.
    pub sources: Vec<PathBuf>,
    /// A `ckpt-0` directory without `config.json`: the grok-1 preset is used.
    pub preset_config: bool,
}

/// Opens the whole model at `path` (any format but a shard set) without
/// building it: for a converter that cuts it itself.
pub fn open_model(path: &Path, progress: &dyn Progress) -> Result<OpenedModel, LoadError> {
    if let Some(file) = gguf::find(path)? {
        return open_gguf(&file);
    }
    if safetensors::is_safetensors_dir(path) {
        return open_safetensors(path);
    }
    open_ckpt0(path, progress)
}

fn load_opened(
    opened: OpenedModel,
    path: &Path,
    collective: Arc<dyn Collective>,
) -> Result<LoadedModel, LoadError> {
    let model = build(opened.config, &opened.store, path, collective)?;
    Ok(LoadedModel {
        model,
        format: opened.format,
        tokenizer_file: opened.tokenizer_file,
        embedded_tokenizer: opened.embedded_tokenizer,
        sources: opened.sources,
        preset_config: opened.preset_config,
    })
}

fn load_gguf(file: &Path, collective: Arc<dyn Collective>) -> Result<LoadedModel, LoadError> {
    load_opened(open_gguf(file)?, file, collective)
}

fn load_safetensors(dir: &Path, collective: Arc<dyn Collective>) -> Result<LoadedModel, LoadError> {
    load_opened(open_safetensors(dir)?, dir, collective)
}

fn load_ckpt0(
    dir: &Path,
    progress: &dyn Progress,
    collective: Arc<dyn Collective>,
) -> Result<LoadedModel, LoadError> {
    load_opened(open_ckpt0(dir, progress)?, dir, collective)
}

fn open_gguf(file: &Path) -> Result<OpenedModel, LoadError> {
    let gguf = gguf::GgufModel::open(file)?;
    let folder = file.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(OpenedModel {
        config: gguf.config()?,
        format: ModelFormat::Gguf,
        // A tokenizer.model beside the file wins over the file's own vocabulary.
        tokenizer_file: Some(folder.join("tokenizer.model")).filter(|p| p.exists()),
        embedded_tokenizer: gguf.tokenizer()?,
        sources: gguf.parts.iter().map(|p| p.path.clone()).collect(),
        preset_config: false,
        store: gguf.store,
    })
}

fn open_safetensors(dir: &Path) -> Result<OpenedModel, LoadError> {
    let st = safetensors::SafetensorsModel::open(dir)?;
    Ok(OpenedModel {
        config: st.config()?,
        format: ModelFormat::Safetensors,
        tokenizer_file: Some(dir.join("tokenizer.model")).filter(|p| p.exists()),
        embedded_tokenizer: None,
        sources: vec![dir.to_path_buf()],
        preset_config: false,
        store: st.store,
    })
}

fn open_ckpt0(dir: &Path, progress: &dyn Progress) -> Result<OpenedModel, LoadError> {
    let paths = ckpt0::locate(dir)?;
    let config = match &paths.config {
        Some(p) => ModelConfig::load(p)?,
        None => ModelConfig::grok1(),
    };
    let store = ckpt0::read_checkpoint(&paths.tensors, &config, paths.config.as_deref(), progress)?;
    let tokenizer_file = [dir.join("tokenizer.model"), dir.join("../tokenizer.model")]
        .into_iter()
        .find(|p| p.exists());
    let preset_config = paths.config.is_none();
    // The config may sit outside `dir` (`ckpt-0/../config.json`).
    let sources = [Some(dir.to_path_buf()), Some(paths.tensors), paths.config]
        .into_iter()
        .flatten()
        .collect();
    Ok(OpenedModel {
        config,
        store,
        format: ModelFormat::Ckpt0,
        tokenizer_file,
        embedded_tokenizer: None,
        sources,
        preset_config,
    })
}
