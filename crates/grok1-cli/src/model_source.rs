//! Where the model and the tokenizer come from: a path read by the library's
//! [`grok1::load_with`], or the built-in demo model and the built-in official
//! tokenizer.

use std::path::Path;

use grok1::weights::random::random_store;
use grok1::{Grok1, LoadedModel, ModelConfig, ModelFormat};
use grok1_tokenizer::Tokenizer;

use crate::progress::Bar;

/// The demo model: Grok-1's architecture at toy width with the real vocabulary,
/// so the built-in tokenizer applies. Its weights are random.
pub fn demo_config() -> ModelConfig {
    ModelConfig::demo()
}

const DEMO_SEED: u64 = grok1::config::DEMO_SEED;

/// The tokenizer: `--tokenizer`, else a `tokenizer.model` beside the model,
/// else the vocabulary inside the model file, else the official Grok-1
/// tokenizer built into the binary. Warns when its vocabulary and the model's
/// differ.
pub fn model_tokenizer(loaded: &LoadedModel, flag: Option<&Path>) -> anyhow::Result<Tokenizer> {
    let tokenizer = loaded.tokenizer(flag)?;
    warn_on_vocab_mismatch(&tokenizer, &loaded.model);
    Ok(tokenizer)
}

/// The tokenizer and the model must agree on the ids; where they do not, say
/// what will fail before it does.
fn warn_on_vocab_mismatch(tokenizer: &Tokenizer, model: &Grok1) {
    if !crate::parallel::is_root() {
        return;
    }
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

/// Loads the model at `path`, or the demo model when `path` is `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<LoadedModel> {
    let Some(path) = path else {
        return load_demo();
    };
    let collective = crate::parallel::collective();
    let root = collective.rank() == 0;
    // One progress bar, rank 0's.
    let bar = Bar::new(false);
    let progress: &dyn grok1::progress::Progress = match root {
        true => &bar,
        false => &grok1::progress::NoProgress,
    };
    let loaded = grok1::load_parallel(path, progress, collective)?;
    if loaded.preset_config && root {
        eprintln!(
            "grok1: {} has no config.json: using the grok-1 preset",
            path.display()
        );
    }
    Ok(loaded)
}

fn load_demo() -> anyhow::Result<LoadedModel> {
    let collective = crate::parallel::collective();
    if collective.rank() == 0 {
        eprintln!(
        "grok1: no --model given: running the built-in demo model (Grok-1 architecture, \
         2 small layers, random weights), so the text is meaningless. Pass --model DIR to run Grok-1."
        );
    }
    let cfg = demo_config();
    let store = random_store(&cfg, DEMO_SEED);
    Ok(LoadedModel {
        model: Grok1::from_store_parallel(cfg, &store, collective)?,
        format: ModelFormat::Ckpt0,
        tokenizer_file: None,
        embedded_tokenizer: None,
        sources: Vec::new(),
        preset_config: false,
    })
}

/// The tokenizer: `--tokenizer`, else the official Grok-1 tokenizer built
/// into the binary.
pub fn tokenizer(flag: Option<&Path>) -> anyhow::Result<Tokenizer> {
    Ok(match flag {
        Some(path) => grok1::load::read_tokenizer(path)?,
        None => Tokenizer::grok1(),
    })
}
