//! `convert`: a model written out and read back. Lossless types give the same
//! logits; quantised types stay within stated KL bounds of the f32 model, on a
//! random model wide enough (d = 256) for every K-quant block to apply.

mod common;

use common::kld_and_top1;
use grok1::backend::cpu::CpuBackend;
use grok1::convert::{convert, OutFormat};
use grok1::model::Weights;
use grok1::progress::NoProgress;
use grok1::quant::GgmlType;
use grok1::weights::{
    gguf::GgufModel, random::random_store, safetensors::SafetensorsModel, TensorStore,
};
use grok1::{ForwardOptions, Grok1, LogitsRows, ModelConfig, Precision, SequenceInput};

fn wide_config() -> ModelConfig {
    ModelConfig {
        name: "wide".into(),
        vocab_size: 512,
        emb_size: 256,
        key_size: 32,
        num_q_heads: 8,
        num_kv_heads: 4,
        widening_factor: 3.0,
        ffn_size: grok1::config::ffn_size(256, 3.0),
        sequence_len: 64,
        emb_std: Some(0.02),
        ..ModelConfig::tiny()
    }
}

fn model(cfg: &ModelConfig, store: &TensorStore) -> Grok1 {
    let w = Weights::from_store(cfg, store).expect("weights");
    Grok1::new(cfg.clone(), w, Box::new(CpuBackend::new()))
}

/// Logits of every position of two fixed prompts.
fn logits(m: &Grok1) -> Vec<Vec<f32>> {
    let prompts: [&[u32]; 2] = [&[5, 17, 300, 42, 9, 411, 7, 77], &[1, 2, 3, 4, 5, 6]];
    let mut rows = Vec::new();
    for p in prompts {
        let mut cache = m.new_cache(p.len(), 1);
        let seq = cache.add_sequence();
        let out = m
            .forward(
                &mut cache,
                &[SequenceInput { seq, tokens: p }],
                &ForwardOptions {
                    precision: Precision::F32,
                    logits: LogitsRows::All,
                },
                None,
            )
            .unwrap();
        rows.extend((0..p.len()).map(|t| out.row(t).to_vec()));
    }
    rows
}

#[test]
fn conversions_read_back_within_bounds() {
    let cfg = wide_config();
    assert_eq!(cfg.ffn_size % 256, 0, "ffn must be whole K-quant blocks");
    let source = model(&cfg, &random_store(&cfg, 3));
    let reference = logits(&source);
    let tmp = tempfile::tempdir().unwrap();
    // (type, max mean KL: about 5x what was measured)
    for (t, max_kl) in [
        (GgmlType::F32, 1e-12),
        (GgmlType::F16, 3e-8),
        (GgmlType::BF16, 2e-6),
        (GgmlType::Q8_0, 2e-5),
        (GgmlType::Q6K, 1e-3),
        (GgmlType::Q4K, 8e-3),
    ] {
        let path = tmp.path().join(format!("wide-{}.gguf", t.name()));
        let report = convert(
            &cfg,
            source.weights(),
            None,
            OutFormat::Gguf,
            t,
            &path,
            &NoProgress,
        )
        .unwrap();
        let g = GgufModel::open(&path).unwrap();
        let read_cfg = g.config().unwrap();
        assert_eq!(read_cfg.ffn_size, cfg.ffn_size);
        assert_eq!(read_cfg.num_layers, cfg.num_layers);
        // Every expert matrix is in the requested type.
        let (dtype, shape, _) = g
            .store
            .get("blk.0.ffn_down_exps.weight")
            .unwrap()
            .as_ggml()
            .unwrap();
        assert_eq!((dtype, shape.to_vec()), (t, vec![8, 256, cfg.ffn_size]));
        let rows = logits(&model(&read_cfg, &g.store));
        let (kl, top1) = kld_and_top1(&reference, &rows);
        eprintln!(
            "{t}: {} bytes, {:.2} bits per weight, mean KL {kl:.3e}, top-1 {:.1}%",
            report.bytes_written,
            report.bytes_written as f64 * 8.0 / report.parameters as f64,
            top1 * 100.0
        );
        assert!(kl <= max_kl, "{t}: KL {kl:e} > {max_kl:e}");
        if t == GgmlType::F32 {
            // The same values; only the order of the sums differs from the int8 kernel.
            let worst = rows
                .iter()
                .flatten()
                .zip(reference.iter().flatten())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-5, "f32 GGUF logits differ by {worst}");
        }
    }
    // Safetensors f32 round trip, then from it to GGUF: still the same logits.
    let st = tmp.path().join("st");
    convert(
        &cfg,
        source.weights(),
        None,
        OutFormat::Safetensors,
        GgmlType::F32,
        &st,
        &NoProgress,
    )
    .unwrap();
    let s = SafetensorsModel::open(&st).unwrap();
    let st_cfg = s.config().unwrap();
    let st_model = model(&st_cfg, &s.store);
    let st_logits = logits(&st_model);
    let (kl, _) = kld_and_top1(&reference, &st_logits);
    assert!(kl < 1e-12, "f32 safetensors KL {kl:e}");
    let again = tmp.path().join("again.gguf");
    convert(
        &st_cfg,
        st_model.weights(),
        None,
        OutFormat::Gguf,
        GgmlType::F32,
        &again,
        &NoProgress,
    )
    .unwrap();
    let g = GgufModel::open(&again).unwrap();
    // Row-stored f32 in both: the same kernels, the same logits bit for bit.
    assert_eq!(logits(&model(&g.config().unwrap(), &g.store)), st_logits);
}

#[test]
fn safetensors_refuses_block_types() {
    let cfg = ModelConfig::tiny();
    let m = model(&cfg, &random_store(&cfg, 1));
    let tmp = tempfile::tempdir().unwrap();
    let err = convert(
        &cfg,
        m.weights(),
        None,
        OutFormat::Safetensors,
        GgmlType::Q4K,
        &tmp.path().join("x"),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("safetensors holds plain floats"), "{err}");
}
