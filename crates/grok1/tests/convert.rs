//! `convert`: a model written out and read back. Lossless types give the same
//! logits; quantised types stay within stated KL bounds of the f32 model, on a
//! random model wide enough (d = 256) for every K-quant block to apply.

mod common;

use common::kld_and_top1;
use grok1::backend::cpu::CpuBackend;
use grok1::convert::{
    convert, convert_with, ConvertOptions, MatrixRole, Mix, ModelShape, OutFormat, Scheme,
};
use grok1::imatrix::Imatrix;
use grok1::model::weights::Part;
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
    // (type, max mean KL: about 5x what was measured; measured with the
    // searched encoders: Q6_K 2.1e-4, Q5_K 1.9e-4, Q4_K 7.7e-4 (the
    // closed-form Q4_K's bound was 8e-3), Q3_K 3.6e-3, Q2_K 9.3e-3, Q4_0
    // 9.6e-4, Q5_0 2.8e-4, Q5_1 3.3e-4, IQ4_NL 9.6e-4, IQ4_XS 1.0e-3)
    for (t, max_kl) in [
        (GgmlType::F32, 1e-12),
        (GgmlType::F16, 3e-8),
        (GgmlType::BF16, 2e-6),
        (GgmlType::Q8_0, 2e-5),
        (GgmlType::Q6K, 1e-3),
        (GgmlType::Q5K, 1e-3),
        (GgmlType::Q4K, 4e-3),
        (GgmlType::Q3K, 2e-2),
        (GgmlType::Q2K, 5e-2),
        (GgmlType::Q4_0, 5e-3),
        (GgmlType::Q5_0, 1.5e-3),
        (GgmlType::Q5_1, 1.5e-3),
        (GgmlType::IQ4_NL, 5e-3),
        (GgmlType::IQ4_XS, 5e-3),
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

/// The squared error of every quantised matrix of `file` against the same
/// tensor of `reference` (an F32 file), each column weighted by its
/// importance in `imatrix`: the error the matrix products see on
/// calibration-like inputs.
fn importance_weighted_error(reference: &GgufModel, file: &GgufModel, imatrix: &Imatrix) -> f64 {
    let mut total = 0.0;
    for (name, entry) in &imatrix.entries {
        let (dtype, shape, data) = file.store.get(name).unwrap().as_ggml().unwrap();
        let (_, _, want) = reference.store.get(name).unwrap().as_ggml().unwrap();
        let cols = *shape.last().unwrap();
        let rows = shape.iter().product::<usize>() / cols;
        let per_matrix = rows / entry.matrices();
        let row_len = dtype.row_bytes(cols).unwrap();
        let mut got = vec![0f32; cols];
        for r in 0..rows {
            let importance = entry.importance(r / per_matrix);
            dtype.dequantize_row(&data.bytes()[r * row_len..(r + 1) * row_len], &mut got);
            for (c, g) in got.iter().enumerate() {
                let at = (r * cols + c) * 4;
                let w = f32::from_le_bytes(want.bytes()[at..at + 4].try_into().unwrap());
                total += importance[c] as f64 * ((g - w) as f64).powi(2);
            }
        }
    }
    total
}

/// An importance matrix collected from the model's own forward pass
/// (written and read back in llama.cpp's GGUF imatrix format) lowers the
/// importance-weighted error of the 2- to 4-bit types, and their KL
/// divergence stays within the plain encoding's bounds.
#[test]
fn imatrix_lowers_the_weighted_error() {
    let cfg = wide_config();
    let source = model(&cfg, &random_store(&cfg, 3));
    let reference_logits = logits(&source);
    let tokens: Vec<u32> = (0..256u32).map(|i| (i * 7919 + 13) % 512).collect();
    let chunks: Vec<&[u32]> = tokens.chunks(32).collect();
    let collected =
        grok1::imatrix::collect(&source, &chunks, Precision::F32, "synthetic", &NoProgress)
            .unwrap();
    // q, k, v, output and the three expert tensors of every layer.
    assert_eq!(collected.entries.len(), 7 * cfg.num_layers);
    let down = &collected.entries["blk.0.ffn_down_exps.weight"];
    assert_eq!((down.cols, down.matrices()), (cfg.ffn_size, 8));
    // Every routed row is counted once per selected expert.
    assert_eq!(
        down.counts.iter().sum::<f32>(),
        (tokens.len() * cfg.num_selected_experts) as f32
    );
    assert_eq!(collected.entries["blk.1.attn_q.weight"].counts, [256.0]);
    let tmp = tempfile::tempdir().unwrap();
    let imatrix_path = tmp.path().join("wide.imatrix.gguf");
    collected.write_gguf(&imatrix_path).unwrap();
    let imatrix = Imatrix::open(&imatrix_path).unwrap();
    assert_eq!(imatrix, collected);

    let f32_path = tmp.path().join("wide-f32.gguf");
    let write = |t: GgmlType, imatrix: Option<&Imatrix>, path: &std::path::Path| {
        let options = ConvertOptions {
            format: OutFormat::Gguf,
            scheme: Scheme::Uniform(t),
            imatrix,
        };
        convert_with(&cfg, source.weights(), None, &options, path, &NoProgress).unwrap()
    };
    write(GgmlType::F32, None, &f32_path);
    let reference = GgufModel::open(&f32_path).unwrap();
    for t in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::IQ4_XS,
        GgmlType::Q4K,
    ] {
        let plain_path = tmp.path().join(format!("plain-{}.gguf", t.name()));
        let weighted_path = tmp.path().join(format!("weighted-{}.gguf", t.name()));
        write(t, None, &plain_path);
        let report = write(t, Some(&imatrix), &weighted_path);
        assert_eq!(report.weighted_matrices, 7 * cfg.num_layers);
        let (plain, weighted) = (
            GgufModel::open(&plain_path).unwrap(),
            GgufModel::open(&weighted_path).unwrap(),
        );
        let e_plain = importance_weighted_error(&reference, &plain, &imatrix);
        let e_weighted = importance_weighted_error(&reference, &weighted, &imatrix);
        let kl = |m: &GgufModel| {
            let rows = logits(&model(&m.config().unwrap(), &m.store));
            kld_and_top1(&reference_logits, &rows).0
        };
        let (kl_plain, kl_weighted) = (kl(&plain), kl(&weighted));
        eprintln!(
            "{t}: importance-weighted error {e_plain:.4e} -> {e_weighted:.4e} with the imatrix ({:.1}%); mean KL {kl_plain:.3e} -> {kl_weighted:.3e}",
            100.0 * e_weighted / e_plain
        );
        assert!(e_weighted < e_plain, "{t}: {e_weighted} >= {e_plain}");
    }
}

/// llama-quantize's mixes on the wide model: each tensor in the type its
/// rules give (2 layers, 8 experts: attn_k/attn_v Q8_0, the tied embedding
/// Q6_K, ffn_down by layer), read back within KL bounds (about 5x the
/// measured q2_k_s 3.8e-3, q3_k_m 8.5e-4, q4_k_m 3.8e-4, q5_k_m 2.6e-4).
#[test]
fn mixes_write_their_per_tensor_types() {
    use GgmlType::*;
    let cfg = wide_config();
    let source = model(&cfg, &random_store(&cfg, 3));
    let reference = logits(&source);
    let tmp = tempfile::tempdir().unwrap();
    // (mix, [q, k, v, output, gate, up, down] of layers 0 and 1, embedding, max KL)
    type Row = (Mix, [[GgmlType; 7]; 2], GgmlType, f64);
    let table: [Row; 4] = [
        (
            Mix::Q2KS,
            [
                [Q2K, Q8_0, Q8_0, Q2K, Q2K, Q2K, Q2K],
                [Q2K, Q8_0, Q8_0, Q2K, Q2K, Q2K, Q2K],
            ],
            Q6K,
            2e-2,
        ),
        (
            Mix::Q3KM,
            [
                [Q3K, Q8_0, Q8_0, Q5K, Q3K, Q3K, Q4K],
                [Q3K, Q8_0, Q8_0, Q5K, Q3K, Q3K, Q4K],
            ],
            Q6K,
            4e-3,
        ),
        (
            Mix::Q4KM,
            [
                [Q4K, Q8_0, Q8_0, Q5K, Q4K, Q4K, Q4K],
                [Q4K, Q8_0, Q8_0, Q5K, Q4K, Q4K, Q6K],
            ],
            Q6K,
            2e-3,
        ),
        (
            Mix::Q5KM,
            [
                [Q5K, Q8_0, Q8_0, Q5K, Q5K, Q5K, Q5K],
                [Q5K, Q8_0, Q8_0, Q5K, Q5K, Q5K, Q6K],
            ],
            Q6K,
            1.5e-3,
        ),
    ];
    let parts = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate_exps",
        "ffn_up_exps",
        "ffn_down_exps",
    ];
    for (mix, layers, embedding, max_kl) in table {
        let path = tmp.path().join(format!("wide-{}.gguf", mix.name()));
        let options = ConvertOptions {
            format: OutFormat::Gguf,
            scheme: Scheme::Mix(mix),
            imatrix: None,
        };
        let report =
            convert_with(&cfg, source.weights(), None, &options, &path, &NoProgress).unwrap();
        let g = GgufModel::open(&path).unwrap();
        let dtype = |name: &str| g.store.get(name).unwrap().as_ggml().unwrap().0;
        assert_eq!(dtype("token_embd.weight"), embedding, "{}", mix.name());
        for (l, types) in layers.iter().enumerate() {
            for (part, &want) in parts.iter().zip(types) {
                let name = format!("blk.{l}.{part}.weight");
                assert_eq!(dtype(&name), want, "{} {name}", mix.name());
            }
            assert_eq!(dtype(&format!("blk.{l}.ffn_gate_inp.weight")), F32);
        }
        let file_type = g.get("general.file_type").and_then(|v| v.as_u64());
        let want_ft = match mix {
            Mix::Q2KS => 21,
            Mix::Q3KM => 12,
            Mix::Q4KM => 15,
            Mix::Q5KM => 17,
        };
        assert_eq!(file_type, Some(want_ft), "{}", mix.name());
        let rows = logits(&model(&g.config().unwrap(), &g.store));
        let (kl, top1) = kld_and_top1(&reference, &rows);
        eprintln!(
            "{}: {:.2} bits per weight, mean KL {kl:.3e}, top-1 {:.1}%",
            mix.name(),
            report.bytes_written as f64 * 8.0 / report.parameters as f64,
            top1 * 100.0
        );
        assert!(kl <= max_kl, "{}: KL {kl:e} > {max_kl:e}", mix.name());
    }
}

/// FNV-1a, 64-bit (tests/convert/llama_quantize_digests.py's digest).
fn fnv1a64(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    format!("{h:016x}")
}

/// Our encoders write llama-quantize's bytes. bench/quant_kl.sh's model
/// (`grok1 init --seed 7` of bench/grok-shape-d256.json, 8 experts) was
/// quantised by llama-quantize (--pure for single types, the mixes as
/// they are; no imatrix); tests/fixtures/gguf/llama_quantize_digests.json
/// holds the type it chose and a digest of every tensor of layer 0. Here
/// each of those tensors gets the same type from our scheme and the same
/// bytes from our encoder, and every tensor of the q2_k_s and q3_k_m files
/// the type llama-quantize gave it. (Q4_0 is left out: without an imatrix
/// llama-quantize uses a closed form that our search improves on; Q3_K
/// matched on 47 of 50 tensors, a few bytes apart on the others where
/// llama.cpp's C build fuses multiply-adds.)
#[test]
fn encoders_write_llama_quantizes_bytes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let digests: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/gguf/llama_quantize_digests.json"))
            .unwrap(),
    )
    .unwrap();
    let mut cfg = ModelConfig::load(&root.join("bench/grok-shape-d256.json")).unwrap();
    cfg.seed = Some(7);
    // Not in /tmp: the f32 model is 190 MB.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ckpt = tmp.path().join("ckpt");
    grok1::weights::ckpt0::write_random_checkpoint(&ckpt, &cfg, 7, &NoProgress).unwrap();
    let loaded = grok1::load(&ckpt).unwrap();
    let f32_path = tmp.path().join("f32.gguf");
    convert(
        &cfg,
        loaded.model.weights(),
        None,
        OutFormat::Gguf,
        GgmlType::F32,
        &f32_path,
        &NoProgress,
    )
    .unwrap();
    drop(loaded);
    let f32_model = GgufModel::open(&f32_path).unwrap();
    let shape = ModelShape {
        layers: cfg.num_layers,
        experts: cfg.num_experts,
        gqa: cfg.num_q_heads / cfg.num_kv_heads,
        has_output: false,
    };
    let part_of = |name: &str| match name.split('.').nth(2).unwrap_or(name) {
        "attn_q" => Some(Part::Query),
        "attn_k" => Some(Part::Key),
        "attn_v" => Some(Part::Value),
        "attn_output" => Some(Part::AttnOut),
        "ffn_gate_exps" => Some(Part::Gate),
        "ffn_up_exps" => Some(Part::Up),
        "ffn_down_exps" => Some(Part::Down),
        "token_embd.weight" => Some(Part::Embedding),
        _ => None, // norms and the router stay f32
    };
    // The q2_k_s and q3_k_m files' types, every tensor of every layer.
    for (mix, tensors) in digests["types"].as_object().unwrap() {
        let scheme = Scheme::from_name(mix).unwrap();
        for (name, want) in tensors.as_object().unwrap() {
            let (_, dims, _) = f32_model.store.get(name).unwrap().as_ggml().unwrap();
            let layer = name
                .strip_prefix("blk.")
                .and_then(|n| n.split('.').next())
                .map_or(0, |l| l.parse().unwrap());
            let dtype = part_of(name).map_or(GgmlType::F32, |part| {
                let cols = *dims.last().unwrap();
                scheme.matrix_type(MatrixRole { part, layer, cols }, shape)
            });
            assert_eq!(
                dtype.name().to_uppercase(),
                want.as_str().unwrap(),
                "{mix} {name}"
            );
        }
    }
    let mut checked = 0;
    for (scheme_name, tensors) in digests.as_object().unwrap() {
        if scheme_name == "types" {
            continue;
        }
        let scheme = Scheme::from_name(scheme_name).unwrap();
        for (name, entry) in tensors.as_object().unwrap() {
            let (want_type, want_digest) = (entry[0].as_str().unwrap(), entry[1].as_str().unwrap());
            let (_, dims, data) = f32_model.store.get(name).unwrap().as_ggml().unwrap();
            let part = part_of(name);
            let cols = *dims.last().unwrap();
            let dtype = match part {
                Some(part) => scheme.matrix_type(
                    MatrixRole {
                        part,
                        layer: 0,
                        cols,
                    },
                    shape,
                ),
                None => GgmlType::F32,
            };
            assert_eq!(
                dtype.name().to_uppercase(),
                want_type,
                "{scheme_name} {name}"
            );
            let values: Vec<f32> = data
                .bytes()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let mut bytes = Vec::new();
            let mut row = Vec::new();
            for r in values.chunks_exact(cols) {
                grok1::quant::quantize_row(dtype, r, &mut row);
                bytes.extend_from_slice(&row);
            }
            assert_eq!(
                fnv1a64(&bytes),
                want_digest,
                "{scheme_name} {name} ({dtype})"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * 12, "tensors checked");
}
