//! Fixture loading shared by the integration tests.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use grok1::backend::cpu::{CpuBackend, Isa};
use grok1::model::Trace;
use grok1::model::Weights;
use grok1::npy;
use grok1::progress::NoProgress;
use grok1::weights::{ckpt0, gguf, safetensors};
use grok1::{
    ForwardOptions, ForwardOutput, Grok1, LogitsRows, ModelConfig, Precision, SequenceInput,
};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub struct Fixture {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tolerances: serde_json::Value,
    pub stats: serde_json::Value,
}

impl Fixture {
    pub fn open(name: &str) -> Fixture {
        let dir = model_dir(name);
        let config = ModelConfig::load(&dir.join("config.json")).expect("fixture config");
        let read_json = |f: &str| -> serde_json::Value {
            serde_json::from_reader(File::open(dir.join(f)).unwrap()).unwrap()
        };
        Fixture {
            tolerances: read_json("tolerances.json"),
            stats: read_json("stats.json"),
            config,
            dir,
        }
    }

    pub fn load_model(&self) -> Grok1 {
        self.load_model_with(Isa::detect())
    }

    /// The model on the CPU backend with the given kernels.
    pub fn load_model_with(&self, isa: Isa) -> Grok1 {
        let paths = ckpt0::locate(&self.dir).expect("locate");
        let store = ckpt0::read_checkpoint(
            &paths.tensors,
            &self.config,
            paths.config.as_deref(),
            &NoProgress,
        )
        .expect("read checkpoint");
        let weights = Weights::from_store(&self.config, &store).expect("weights");
        Grok1::new(
            self.config.clone(),
            weights,
            Box::new(CpuBackend::with_isa(isa)),
        )
    }

    pub fn f32(&self, file: &str) -> npy::Array<f32> {
        npy::read_f32(&mut File::open(self.dir.join(file)).unwrap()).unwrap()
    }

    pub fn i32(&self, file: &str) -> npy::Array<i32> {
        npy::read_i32(&mut File::open(self.dir.join(file)).unwrap()).unwrap()
    }

    pub fn tokens(&self, file: &str) -> Vec<u32> {
        self.i32(file).data.iter().map(|&t| t as u32).collect()
    }

    /// The vocabulary ids of the columns kept in the `*_logits_*` files.
    pub fn logit_cols(&self) -> Vec<usize> {
        self.i32("logit_cols.npy")
            .data
            .iter()
            .map(|&c| c as usize)
            .collect()
    }

    pub fn tol(&self, key: &str) -> f32 {
        self.tolerances[key]
            .as_f64()
            .unwrap_or_else(|| panic!("tolerance {key}")) as f32
    }
}

/// Largest |a - b| and where it is; panics if the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0.0, 0), |best, cur| {
            if cur.0 > best.0 || cur.0.is_nan() {
                cur
            } else {
                best
            }
        })
}

/// Fails loudly with the worst element when `got` and `want` differ by more than `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    let (err, at) = max_abs_diff(got, want);
    assert!(
        err <= tol,
        "{what}: max abs error {err:e} > {tol:e} at element {at} (got {}, want {})",
        got[at],
        want[at]
    );
    err
}

/// A model from `tests/fixtures/gguf/<file>` on the CPU backend with the given kernels.
pub fn load_gguf(file: &str, isa: Isa) -> Grok1 {
    let model = gguf::GgufModel::open(&fixtures().join("gguf").join(file)).expect("open gguf");
    let config = model.config().expect("gguf config");
    let weights = Weights::from_store(&config, &model.store).expect("gguf weights");
    Grok1::new(config, weights, Box::new(CpuBackend::with_isa(isa)))
}

/// A model from `tests/fixtures/safetensors/<dir>` on the CPU backend.
pub fn load_safetensors(dir: &str, isa: Isa) -> Grok1 {
    let model = safetensors::SafetensorsModel::open(&fixtures().join("safetensors").join(dir))
        .expect("open safetensors");
    let config = model.config().expect("safetensors config");
    let weights = Weights::from_store(&config, &model.store).expect("safetensors weights");
    Grok1::new(config, weights, Box::new(CpuBackend::with_isa(isa)))
}

/// Log-softmax of a row, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row.iter().map(|&v| v as f64 - max - sum.ln()).collect()
}

/// Every row's logits of `tokens` as one prompt, in `precision`.
pub fn prefill(
    model: &Grok1,
    tokens: &[u32],
    precision: Precision,
    trace: Option<&mut Trace>,
) -> ForwardOutput {
    let mut cache = model.new_cache(tokens.len(), 1);
    let seq = cache.add_sequence();
    model
        .forward(
            &mut cache,
            &[SequenceInput { seq, tokens }],
            &ForwardOptions {
                precision,
                logits: LogitsRows::All,
            },
            trace,
        )
        .expect("forward")
}

/// All prefill logits of the fixture's three prompts.
pub fn prefill_rows(model: &Grok1, fx: &Fixture) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for s in 0..3 {
        let tokens = fx.tokens(&format!("prefill_seq{s}_tokens.npy"));
        let out = prefill(model, &tokens, Precision::F32, None);
        rows.extend((0..tokens.len()).map(|t| out.row(t).to_vec()));
    }
    rows
}

/// Mean KL(f32 || quantised) and top-1 agreement over the prefill rows.
pub fn kld_and_top1(reference: &[Vec<f32>], quantised: &[Vec<f32>]) -> (f64, f64) {
    let mut kl = 0f64;
    let mut same = 0;
    for (p, q) in reference.iter().zip(quantised) {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        kl += lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        same += usize::from(grok1::sampling::argmax(p) == grok1::sampling::argmax(q));
    }
    (
        kl / reference.len() as f64,
        same as f64 / reference.len() as f64,
    )
}

/// Builds a model from `store` and runs one forward step, ignoring errors: the
/// corruption tests only ask that nothing panics on the way.
pub fn try_one_step(
    config: Result<ModelConfig, grok1::weights::WeightError>,
    store: &grok1::weights::TensorStore,
) {
    let Ok(cfg) = config else { return };
    let Ok(weights) = Weights::from_store(&cfg, store) else {
        return;
    };
    let model = Grok1::new(cfg, weights, Box::new(CpuBackend::new()));
    let mut cache = model.new_cache(4, 1);
    let seq = cache.add_sequence();
    let _ = model.forward(
        &mut cache,
        &[SequenceInput {
            seq,
            tokens: &[1, 2, 3],
        }],
        &ForwardOptions {
            precision: Precision::F32,
            logits: LogitsRows::Last,
        },
        None,
    );
}

/// A value of an engine's /metrics text (panics naming it when absent).
pub fn metric(engine: &grok1::engine::EngineHandle, name: &str) -> f64 {
    let text = engine.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {text}"))
}

/// Polls `done` every 2 ms until it holds, failing after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited for {what}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
