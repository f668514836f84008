//! Where the model and the tokenizer come from: a model directory, or the
//! built-in demo model and the built-in official tokenizer.

use std::path::{Path, PathBuf};

use anyhow::Context;
use grok1::weights::{ckpt0, gguf, random::random_store, safetensors};
use grok1::{Grok1, ModelConfig};
use grok1_tokenizer::Tokenizer;

use crate::progress::Bar;

/// The demo model: Grok-1's architecture at toy width with the real vocabulary,
/// so the built-in tokenizer applies. Its weights are random.
pub fn demo_config() -> ModelConfig {
    ModelConfig {
        name: "grok1-demo".into(),
        vocab_size: 131072,
        sequence_len: 1024,
        emb_std: Some(0.01),
        ..ModelConfig::tiny()
    }
}

const DEMO_SEED: u64 = 1;

pub struct LoadedModel {
    pub model: Grok1,
    /// `tokenizer.model` found next to the checkpoint, if any.
    pub tokenizer_file: Option<std::path::PathBuf>,
    /// The vocabulary stored in the model file itself (GGUF), if any.
    pub embedded_tokenizer: Option<Tokenizer>,
    /// The files and directories the model was read from (for `convert`,
    /// which must never write over them); empty for the demo model.
    pub sources: Vec<PathBuf>,
}

impl LoadedModel {
    /// The tokenizer: `--tokenizer`, else a `tokenizer.model` beside the model,
    /// else the vocabulary inside the model file, else the official Grok-1
    /// tokenizer built into the binary.
    /// Warns when its vocabulary and the model's differ.
    pub fn tokenizer(&self, flag: Option<&Path>) -> anyhow::Result<Tokenizer> {
        let tokenizer = match (
            flag.or(self.tokenizer_file.as_deref()),
            &self.embedded_tokenizer,
        ) {
            (None, Some(t)) => t.clone(),
            (path, _) => tokenizer(path, None)?,
        };
        warn_on_vocab_mismatch(&tokenizer, &self.model);
        Ok(tokenizer)
    }
}

/// The tokenizer and the model must agree on the ids; where they do not, say
/// what will fail before it does.
fn warn_on_vocab_mismatch(tokenizer: &Tokenizer, model: &Grok1) {
    let (pieces, ids) = (tokenizer.vocab_size(), model.config().vocab_size);
    let consequence = match pieces.cmp(&ids) {
        std::cmp::Ordering::Equal => return,
        std::cmp::Ordering::Greater => "text that encodes to an id the model lacks will be refused",
        std::cmp::Ordering::Less => "ids the tokenizer lacks will print no text",
    };
    eprintln!(
        "grok1: warning: the tokenizer has {pieces} pieces but the model has {ids} token ids: {consequence}"
    );
}

/// Loads the model the flags name and applies its options.
pub fn load_args(args: &crate::args::ModelArgs) -> anyhow::Result<LoadedModel> {
    let mut loaded = load(args.model.as_deref())?;
    if args.llama_cpp_gates {
        loaded
            .model
            .set_gate_mode(grok1::model::GateMode::Renormalized);
    }
    Ok(loaded)
}

/// Loads the checkpoint under `dir`, or the demo model when `dir` is `None`.
pub fn load(dir: Option<&Path>) -> anyhow::Result<LoadedModel> {
    let Some(dir) = dir else {
        eprintln!(
            "grok1: no --model given: running the built-in demo model (Grok-1 architecture, \
             2 small layers, random weights), so the text is meaningless. Pass --model DIR to run Grok-1."
        );
        let cfg = demo_config();
        let store = random_store(&cfg, DEMO_SEED);
        let model = Grok1::from_store(cfg, &store)?;
        return Ok(LoadedModel {
            model,
            tokenizer_file: None,
            embedded_tokenizer: None,
            sources: Vec::new(),
        });
    };
    if let Some(file) = gguf::find(dir)? {
        // Parsing maps the file and reads its header: no progress to show.
        let gguf = gguf::GgufModel::open(&file)?;
        let config = gguf.config()?;
        let embedded_tokenizer = gguf.tokenizer()?;
        let model = Grok1::from_store(config, &gguf.store)
            .with_context(|| format!("building the model from {}", file.display()))?;
        let folder = file.parent().map(Path::to_path_buf).unwrap_or_default();
        // A tokenizer.model beside the file wins; else the file's own vocabulary.
        let tokenizer_file = Some(folder.join("tokenizer.model")).filter(|p| p.exists());
        let sources = gguf.parts.iter().map(|p| p.path.clone()).collect();
        return Ok(LoadedModel {
            model,
            tokenizer_file,
            embedded_tokenizer,
            sources,
        });
    }
    if safetensors::is_safetensors_dir(dir) {
        let st = safetensors::SafetensorsModel::open(dir)?;
        let config = st.config()?;
        let model = Grok1::from_store(config, &st.store)
            .with_context(|| format!("building the model from {}", dir.display()))?;
        let tokenizer_file = Some(dir.join("tokenizer.model")).filter(|p| p.exists());
        return Ok(LoadedModel {
            model,
            tokenizer_file,
            embedded_tokenizer: None,
            sources: vec![dir.to_path_buf()],
        });
    }
    let paths = ckpt0::locate(dir)?;
    let config = match &paths.config {
        Some(p) => ModelConfig::load(p)?,
        None => {
            eprintln!(
                "grok1: {} has no config.json: using the grok-1 preset",
                dir.display()
            );
            ModelConfig::grok1()
        }
    };
    let store = ckpt0::read_checkpoint(
        &paths.tensors,
        &config,
        paths.config.as_deref(),
        &Bar::new(false),
    )?;
    let model = Grok1::from_store(config, &store)
        .with_context(|| format!("building the model from {}", dir.display()))?;
    let tokenizer_file = [dir.join("tokenizer.model"), dir.join("../tokenizer.model")]
        .into_iter()
        .find(|p| p.exists());
    // The config may sit outside `dir` (`ckpt-0/../config.json`).
    let sources = [Some(dir.to_path_buf()), Some(paths.tensors), paths.config]
        .into_iter()
        .flatten()
        .collect();
    Ok(LoadedModel {
        model,
        tokenizer_file,
        embedded_tokenizer: None,
        sources,
    })
}

/// The tokenizer: `--tokenizer`, else one found beside the model, else the
/// official Grok-1 tokenizer built into the binary. Found files of any type
/// count (a FIFO named tokenizer.model is refused, not skipped for the
/// built-in one); only a regular file is read.
pub fn tokenizer(flag: Option<&Path>, beside_model: Option<&Path>) -> anyhow::Result<Tokenizer> {
    match flag.or(beside_model) {
        // (The path again: a corrupt file's error does not name it.)
        Some(path) => grok1::files::read_regular(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(Tokenizer::from_bytes(&bytes)?))
            .with_context(|| format!("loading tokenizer {}", path.display())),
        None => Ok(Tokenizer::grok1()),
    }
}
