//! The official checkpoint format: reading the fixtures, writing checkpoints the
//! reference would load, and a clear error for every kind of bad file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{fixtures, Fixture};
use grok1::progress::NoProgress;
use grok1::weights::ckpt0::{self, checkpoint_layout, ParamKind};
use grok1::weights::pickle::{self, ArrayBytes, PickledTensor};
use grok1::weights::pickle_writer::{self, ArraySpec, PickleStyle};
use grok1::weights::random::{RandomPayload, Stream};
use grok1::weights::{DType, TensorKind, WeightError};
use grok1::ModelConfig;

fn read(dir: &Path, cfg: &ModelConfig) -> Result<grok1::weights::TensorStore, WeightError> {
    ckpt0::read_checkpoint(dir, cfg, None, &NoProgress)
}

/// A writable copy of a fixture's `ckpt-0`.
fn copy_ckpt(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt-0");
    fs::create_dir(&dir).unwrap();
    for entry in fs::read_dir(common::model_dir(name).join("ckpt-0")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn err_text(r: Result<grok1::weights::TensorStore, WeightError>) -> String {
    format!("{}", r.expect_err("the checkpoint should be rejected"))
}

#[test]
fn layout_follows_the_haiku_tree_order() {
    for name in ["tiny-moe", "tiny-vocab"] {
        let fx = Fixture::open(name);
        let records = fx.config.tensors.as_ref().unwrap();
        let layout = checkpoint_layout(&fx.config);
        assert_eq!(layout.len(), records.len());
        for (spec, record) in layout.iter().zip(records) {
            assert_eq!(spec.path, record.path);
            assert_eq!(spec.file_name(), record.file);
        }
    }
    let grok = checkpoint_layout(&ModelConfig::grok1());
    assert_eq!(
        grok.len(),
        770,
        "12 per layer x 64 + embedding + final norm"
    );
    let pos = |p: &str| grok.iter().position(|s| s.path == p).unwrap();
    // String order: decoder_layer_10 comes before decoder_layer_2.
    assert!(
        pos("transformer/decoder_layer_10/router/w")
            < pos("transformer/decoder_layer_2/moe/linear/w")
    );
    assert_eq!(
        pos("transformer/decoder_layer_9/router/w"),
        769,
        "layer 9 sorts last"
    );
    let expert = &grok[pos("transformer/decoder_layer_0/moe/linear_1/w")];
    assert_eq!(
        expert.kind,
        ParamKind::Quantized {
            shape: vec![8, 32768, 6144],
            groups: 8
        }
    );
    assert_eq!(expert.scales_shape().unwrap(), vec![8, 8, 6144]);
}

#[test]
fn reads_the_official_files_without_copying_payloads() {
    let fx = Fixture::open("tiny-vocab");
    let store = read(&fx.dir.join("ckpt-0"), &fx.config).unwrap();
    assert_eq!(store.len(), 26);
    let emb = store.get("language_model/in_out_embed/embeddings").unwrap();
    let TensorKind::Dense(t) = &emb.kind else {
        panic!("embedding is dense")
    };
    assert!(t.data.is_mapped(), "the 16 MB embedding is read in place");
    assert_eq!(t.data.len(), 131072 * 32 * 4);
    let q = store
        .get("transformer/decoder_layer_1/moe/linear_1/w")
        .unwrap();
    let TensorKind::Int8Grouped(q) = &q.kind else {
        panic!("quantized")
    };
    assert_eq!((q.groups, q.scale_dtype), (8, DType::BF16));
    assert!(q.weight.is_mapped() && q.scales.is_mapped());
}

#[test]
fn init_writes_the_official_pickle_structure() {
    // Same config as the fixtures, random weights: every file must have exactly
    // the opcodes, arguments, memo indices and frames of the official files; only
    // the payload bytes differ.
    for name in ["tiny-moe", "tiny-vocab"] {
        let fx = Fixture::open(name);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("model");
        ckpt0::write_random_checkpoint(&out, &fx.config, 5, &NoProgress).unwrap();
        for spec in checkpoint_layout(&fx.config) {
            let ours = fs::read(out.join("ckpt-0").join(spec.file_name())).unwrap();
            let official = fs::read(fx.dir.join("ckpt-0").join(spec.file_name())).unwrap();
            assert_eq!(ours.len(), official.len(), "{name} {}", spec.file_name());
            assert_eq!(
                pickle::disassemble(&ours).unwrap(),
                pickle::disassemble(&official).unwrap(),
                "{name} {}",
                spec.file_name()
            );
        }
    }
}

#[test]
fn init_round_trips_bit_identically() {
    let cfg = ModelConfig::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    ckpt0::write_random_checkpoint(&out, &cfg, 11, &NoProgress).unwrap();
    let loaded = ModelConfig::load(&out.join("config.json")).unwrap();
    assert_eq!(loaded.tensors.as_ref().unwrap().len(), 26);
    let store = ckpt0::read_checkpoint(
        &out.join("ckpt-0"),
        &loaded,
        Some(&out.join("config.json")),
        &NoProgress,
    )
    .unwrap();
    for spec in checkpoint_layout(&cfg) {
        let t = store.get(&spec.path).unwrap();
        let values = RandomPayload::new(&cfg, &spec, Stream::Values, 11).to_vec();
        match &t.kind {
            TensorKind::Dense(d) => assert_eq!(d.data.bytes(), &values[..], "{}", spec.path),
            TensorKind::Int8Grouped(q) => {
                assert_eq!(q.weight.bytes(), &values[..], "{}", spec.path);
                let scales = RandomPayload::new(&cfg, &spec, Stream::Scales, 11).to_vec();
                assert_eq!(q.scales.bytes(), &scales[..], "{}", spec.path);
            }
            TensorKind::Blocks(_) => panic!("{}: ckpt-0 holds no ggml blocks", spec.path),
        }
    }
    // And a model built from it runs.
    let model = grok1::Grok1::from_store(loaded, &store).unwrap();
    let mut cache = model.new_cache(4, 1);
    let seq = cache.add_sequence();
    let out = model
        .forward(
            &mut cache,
            &[grok1::SequenceInput {
                seq,
                tokens: &[5, 6, 7],
            }],
            &Default::default(),
            None,
        )
        .unwrap();
    assert!(out.logits.iter().all(|v| v.is_finite()));
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
    let err = ckpt0::write_random_checkpoint(tmp.path(), &ModelConfig::tiny(), 1, &NoProgress)
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(
        fs::read_to_string(tmp.path().join("precious.txt")).unwrap(),
        "keep me"
    );
}

fn pickles() -> PathBuf {
    fixtures().join("pickles")
}

#[test]
fn reads_every_protocol_and_module_spelling() {
    // tests/fixtures/pickles/make_pickles.py: numpy 2 (numpy._core), protocols 2-5,
    // the class pickled from module `model`.
    for protocol in 2..=5 {
        let bytes = fs::read(pickles().join(format!("array_p{protocol}.pkl"))).unwrap();
        let PickledTensor::Array(a) = pickle::read_tensor(&bytes).unwrap() else {
            panic!("array")
        };
        assert_eq!(
            (a.dtype, a.shape.clone()),
            (DType::F32, vec![3, 5]),
            "protocol {protocol}"
        );
        let data = match &a.data {
            ArrayBytes::Span { offset, len } => bytes[*offset..offset + len].to_vec(),
            ArrayBytes::Owned(v) => {
                assert_eq!(protocol, 2, "only protocol 2 spells bytes as latin-1 text");
                v.clone()
            }
        };
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let want: Vec<f32> = (0..15).map(|i| i as f32 / 4.0 - 1.0).collect();
        assert_eq!(values, want, "protocol {protocol}");

        let bytes = fs::read(pickles().join(format!("quantized_model_p{protocol}.pkl"))).unwrap();
        let PickledTensor::Quantized {
            module,
            weight,
            scales,
        } = pickle::read_tensor(&bytes).unwrap()
        else {
            panic!("quantized")
        };
        assert_eq!(module, "model");
        assert_eq!(
            (weight.dtype, weight.shape.clone()),
            (DType::I8, vec![2, 4, 6])
        );
        assert_eq!(
            (scales.dtype, scales.shape.clone()),
            (DType::BF16, vec![2, 2, 6])
        );
        let w = match weight.data {
            ArrayBytes::Span { offset, len } => bytes[offset..offset + len].to_vec(),
            ArrayBytes::Owned(v) => v,
        };
        let want: Vec<u8> = (0..48).map(|i| ((i % 255) - 127) as i8 as u8).collect();
        assert_eq!(w, want, "protocol {protocol}");
    }
}

#[test]
fn writer_reproduces_cpython_frames_byte_for_byte() {
    // Payloads just under, at and over the 64 KiB frame target.
    for (n, m) in [
        (60000usize, 5000usize),
        (65535, 5),
        (65536, 5),
        (70000, 35000),
    ] {
        let want = fs::read(pickles().join(format!("framing_{n}_{m}.pkl"))).unwrap();
        let weight: Vec<u8> = (0..n)
            .map(|i| ((i % 251) as i32 - 125) as i8 as u8)
            .collect();
        let scales: Vec<u8> = (0..m)
            .flat_map(|_| half::bf16::from_f32(1.0).to_bits().to_le_bytes())
            .collect();
        let mut got = Vec::new();
        pickle_writer::write_quantized(
            &mut got,
            PickleStyle {
                numpy_multiarray: "numpy._core.multiarray",
                class_module: "__main__",
                bf16_dtype_flags: 64,
            },
            (
                &ArraySpec {
                    dtype: DType::I8,
                    shape: vec![1, n],
                },
                &mut &weight[..],
            ),
            (
                &ArraySpec {
                    dtype: DType::BF16,
                    shape: vec![1, m],
                },
                &mut &scales[..],
            ),
        )
        .unwrap();
        if got != want {
            let (a, b) = (
                pickle::disassemble(&got).unwrap(),
                pickle::disassemble(&want).unwrap(),
            );
            let first = a.iter().zip(&b).position(|(x, y)| x != y);
            panic!("framing_{n}_{m}.pkl differs from CPython's bytes; first differing instruction: {:?}", first.map(|i| (&a[i], &b[i])));
        }
    }
}

#[test]
fn a_truncated_file_is_named() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    let file = dir.join("tensor00002_000");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00002_000") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(
        msg.contains("transformer/decoder_layer_0/moe/linear/w"),
        "{msg}"
    );
    // Cut inside the opcodes after the payload too.
    fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00002_000") && msg.contains("truncated"),
        "{msg}"
    );
    // An empty file.
    fs::write(&file, b"").unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00002_000") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_names_its_parameter() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    fs::remove_file(dir.join("tensor00005_000")).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(msg.contains("tensor00005_000"), "{msg}");
    assert!(
        msg.contains("transformer/decoder_layer_0/multi_head_attention/key/w"),
        "{msg}"
    );
}

#[test]
fn a_stray_file_is_an_error() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    fs::write(dir.join("tensor00026_000"), b"x").unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00026_000") && msg.contains("unexpected file"),
        "{msg}"
    );
    // A checkpoint of more layers than the config says is the same error.
    let mut fewer = fx.config.clone();
    fewer.num_layers = 1;
    fewer.tensors = None;
    let (_tmp2, dir2) = copy_ckpt("tiny-moe");
    let msg = err_text(read(&dir2, &fewer));
    assert!(msg.contains("unexpected file"), "{msg}");
}

fn write_array_file(path: &Path, dtype: DType, shape: Vec<usize>) {
    let spec = ArraySpec { dtype, shape };
    let payload = vec![0u8; spec.byte_len() as usize];
    let mut out = Vec::new();
    pickle_writer::write_array(&mut out, PickleStyle::OFFICIAL, &spec, &mut &payload[..]).unwrap();
    fs::write(path, out).unwrap();
}

#[test]
fn a_wrong_shape_is_named() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    write_array_file(&dir.join("tensor00001_000"), DType::F32, vec![65]);
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00001_000") && msg.contains("language_model/rms_norm/scale"),
        "{msg}"
    );
    assert!(
        msg.contains("expected shape [64], found shape [65]"),
        "{msg}"
    );
}

#[test]
fn a_wrong_dtype_is_named() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    write_array_file(&dir.join("tensor00013_000"), DType::F64, vec![64, 8]);
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00013_000") && msg.contains("router/w"),
        "{msg}"
    );
    assert!(
        msg.contains("expected dtype float32, found dtype float64"),
        "{msg}"
    );
    // A plain array where a quantised weight belongs.
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    write_array_file(&dir.join("tensor00007_000"), DType::F32, vec![64, 256]);
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("multi_head_attention/query/w") && msg.contains("QuantizedWeight8bit"),
        "{msg}"
    );
}

#[test]
fn wrong_scale_groups_are_named() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    // attention output with G = 1 instead of 8
    let w = vec![0u8; 256 * 64];
    let s = [0u8; 64 * 2];
    let mut out = Vec::new();
    pickle_writer::write_quantized(
        &mut out,
        PickleStyle::OFFICIAL,
        (
            &ArraySpec {
                dtype: DType::I8,
                shape: vec![256, 64],
            },
            &mut &w[..],
        ),
        (
            &ArraySpec {
                dtype: DType::BF16,
                shape: vec![1, 64],
            },
            &mut &s[..],
        ),
    )
    .unwrap();
    fs::write(dir.join("tensor00006_000"), out).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("multi_head_attention/linear/w") && msg.contains("scales shape [8, 64]"),
        "{msg}"
    );
}

#[test]
fn a_foreign_pickle_global_is_refused() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    // What pickle.dumps(os.system) looks like at protocol 4 (never executed).
    let evil =
        b"\x80\x04\x95\x14\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.";
    fs::write(dir.join("tensor00003_000"), evil).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00003_000") && msg.contains("posix.system"),
        "{msg}"
    );
    // The same through REDUCE of an allowed-looking module.
    let evil2 = b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.";
    fs::write(dir.join("tensor00003_000"), evil2).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(msg.contains("builtins.eval"), "{msg}");
}

#[test]
fn lying_payload_lengths_are_caught() {
    let fx = Fixture::open("tiny-moe");
    let (_tmp, dir) = copy_ckpt("tiny-moe");
    let file = dir.join("tensor00001_000");
    let mut bytes = fs::read(&file).unwrap();
    // The scale vector's BINBYTES: claim 2^32-1 bytes.
    let at = pickle::disassemble(&bytes)
        .unwrap()
        .iter()
        .rfind(|i| i.name() == "BINBYTES" || i.name() == "SHORT_BINBYTES")
        .map(|i| i.offset)
        .unwrap();
    assert_eq!(bytes[at], b'B', "the [64] f32 payload is a BINBYTES");
    bytes[at + 1..at + 5].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&file, &bytes).unwrap();
    let msg = err_text(read(&dir, &fx.config));
    assert!(
        msg.contains("tensor00001_000") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn the_config_list_must_match_the_layout() {
    let fx = Fixture::open("tiny-moe");
    let mut cfg = fx.config.clone();
    let records = cfg.tensors.as_mut().unwrap();
    records.swap(3, 4);
    let err = ckpt0::read_checkpoint(
        &fx.dir.join("ckpt-0"),
        &cfg,
        Some(&fx.dir.join("config.json")),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("config.json") && err.contains("transformer/decoder_layer_0/moe/linear_1/w"),
        "{err}"
    );
}

#[test]
fn not_a_checkpoint_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ckpt0::locate(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no checkpoint found"), "{err}");
    let err = ckpt0::locate(&tmp.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
}
