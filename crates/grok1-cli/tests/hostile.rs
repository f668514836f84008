//! Hostile files and flags (issue 22): `convert --force` never removes the
//! model, outputs never replace special files or symlinks, and a crafted
//! model file (a FIFO, a deep pickle, a short GGUF, absurd scales) is a clear
//! error naming it, never a hang, a crash or garbage tokens.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn grok1() -> Command {
    Command::new(env!("CARGO_BIN_EXE_grok1"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd`, killing it if it has not finished after `secs` (a hang on
/// the old code must fail the test, not stall CI).
fn run_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {secs} s (blocked?): {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run(cmd: &mut Command) -> Output {
    run_within(cmd, 120)
}

/// Asserts that `cmd` fails with exit status 2 and `needle` in its error.
fn expect_error(cmd: &mut Command, needle: &str) {
    let o = run_within(cmd, 20);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{cmd:?}: {err}");
    assert!(
        err.contains(needle),
        "{cmd:?}: expected {needle:?} in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every regular file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    path.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_fifo())
}

fn convert(model: &Path, out: &Path, format: &[&str]) -> Command {
    let mut cmd = grok1();
    cmd.arg("convert")
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(format);
    cmd
}

const GGUF: [&str; 4] = ["--format", "gguf", "--type", "q8_0"];
const CKPT: [&str; 4] = ["--format", "ckpt", "--type", "int8"];
const SAFETENSORS: [&str; 4] = ["--format", "safetensors", "--type", "f16"];

/// Issue 22 item 1: `--out` the parent of `--model` with `--force` deleted
/// the checkpoint. No `--out` that is, lies inside or contains anything the
/// model is read from is accepted; `--force` replaces a file or a previous
/// output only.
#[test]
fn convert_force_never_removes_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    // The release's layout: the tokenizer beside the checkpoint directory.
    let ckpt = root.join("grok-1");
    copy_dir(&model("tiny-moe"), &ckpt);
    std::fs::copy(
        fixtures().join("tokenizer/tokenizer.model"),
        root.join("tokenizer.model"),
    )
    .unwrap();
    std::os::unix::fs::symlink("grok-1", root.join("link")).unwrap();
    let gguf = root.join("m.gguf");
    let o = run(&mut convert(&ckpt, &gguf, &GGUF));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = snapshot(&root);
    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        // The case: the parent directory of --model.
        (ckpt.clone(), root.clone(), "contains"),
        (ckpt.clone(), ckpt.join(".."), "contains"),
        (ckpt.clone(), ckpt.clone(), "is"),
        (ckpt.clone(), root.join("link"), "is"),
        (ckpt.clone(), ckpt.join("ckpt-0"), "lies inside"),
        (
            ckpt.clone(),
            ckpt.join("ckpt-0/tensor00003_000"),
            "lies inside",
        ),
        // Found beside the model as ../tokenizer.model.
        (ckpt.clone(), root.join("tokenizer.model"), "is"),
        // The tensor directory as --model: its config is ../config.json.
        (ckpt.join("ckpt-0"), ckpt.join("config.json"), "is"),
        // A GGUF source is a file: its directory holds it.
        (gguf.clone(), root.clone(), "contains"),
        (gguf.clone(), gguf.clone(), "is"),
    ];
    for (source, out, relation) in cases {
        for format in [GGUF, CKPT, SAFETENSORS] {
            let needle = format!("--out {} {relation} ", out.display());
            expect_error(convert(&source, &out, &format).arg("--force"), &needle);
            assert_eq!(
                snapshot(&root),
                before,
                "{} -> {}",
                source.display(),
                out.display()
            );
        }
    }
    // Without --force, not even a new file inside the model's directory.
    expect_error(
        &mut convert(&ckpt, &ckpt.join("x.gguf"), &GGUF),
        "lies inside",
    );
    assert!(!ckpt.join("x.gguf").exists());

    // A previous output is replaced, in any format; anything else is kept.
    let out = tmp.path().join("out");
    for format in [SAFETENSORS, CKPT, GGUF, SAFETENSORS] {
        let o = run(convert(&ckpt, &out, &format).arg("--force"));
        assert!(o.status.success(), "{format:?}: {}", stderr(&o));
    }
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    expect_error(
        convert(&ckpt, &out, &CKPT).arg("--force"),
        &format!(
            "--force replaces only a previous output, and {} holds {}",
            out.display(),
            out.join("notes.txt").display()
        ),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(snapshot(&root), before);
}

/// Issue 22 item 2: `logits --out` renamed a temporary file over the path,
/// replacing a FIFO (or, as root, /dev/full) with a regular file. A FIFO is
/// written through; a symlink is followed and kept.
#[test]
fn outputs_write_through_a_fifo_and_keep_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let logits = |out: &Path| {
        let mut cmd = grok1();
        cmd.arg("logits")
            .arg("--model")
            .arg(model("tiny-moe"))
            .args(["--tokens", "5,6"])
            .arg("--out")
            .arg(out);
        cmd
    };
    let read_npy = |bytes: &[u8]| grok1::npy::read_f32(&mut std::io::Cursor::new(bytes)).unwrap();

    let fifo = tmp.path().join("pipe.npy");
    mkfifo(&fifo);
    let mut reader: Child = Command::new("cat")
        .arg(&fifo)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let o = run(&mut logits(&fifo));
    let still_fifo = is_fifo(&fifo);
    if !still_fifo {
        reader.kill().unwrap();
    }
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(still_fifo, "the FIFO was replaced");
    let mut bytes = Vec::new();
    reader
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    reader.wait().unwrap();
    assert_eq!(read_npy(&bytes).shape, [2, 1024]);

    let target = tmp.path().join("real.npy");
    let link = tmp.path().join("link.npy");
    std::fs::write(&target, "old").unwrap();
    std::os::unix::fs::symlink("real.npy", &link).unwrap();
    let o = run(&mut logits(&link));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(link.symlink_metadata().unwrap().is_symlink());
    assert_eq!(read_npy(&std::fs::read(&target).unwrap()).shape, [2, 1024]);

    let dangling = tmp.path().join("dangling.npy");
    std::os::unix::fs::symlink("missing.npy", &dangling).unwrap();
    expect_error(
        &mut logits(&dangling),
        "dangling.npy: a symbolic link to a missing file",
    );
    expect_error(&mut logits(tmp.path()), "a directory, not a regular file");

    // The same for convert: a GGUF through a symlink replaces the target.
    let gguf = tmp.path().join("model.gguf");
    let gguf_link = tmp.path().join("link.gguf");
    std::fs::write(&gguf, "old").unwrap();
    std::os::unix::fs::symlink("model.gguf", &gguf_link).unwrap();
    let o = run(convert(&model("tiny-moe"), &gguf_link, &GGUF).arg("--force"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(gguf_link.symlink_metadata().unwrap().is_symlink());
    assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");
}

/// Issue 22 item 12: a tensor file of `None` in 200,000 nested tuples (200
/// KB) overflowed the stack and aborted every command that loads the model.
#[test]
fn a_deeply_nested_pickle_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&model("tiny-moe"), &dir);
    let mut bytes = b"\x80\x02N".to_vec();
    bytes.extend(std::iter::repeat_n(0x85u8, 200_000)); // TUPLE1
    bytes.push(b'.');
    let file = dir.join("ckpt-0/tensor00000_000");
    std::fs::write(&file, bytes).unwrap();
    expect_error(
        grok1()
            .args(["generate", "--tokens", "5", "--model"])
            .arg(&dir),
        &format!(
            "{}: byte 103: values nested more than 100 levels deep",
            file.display()
        ),
    );
}

/// Issue 22 item 13: a FIFO in place of a model file blocked loading forever.
#[test]
fn a_fifo_in_place_of_any_model_file_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo_error = |path: &Path| format!("{}: a FIFO, not a regular file", path.display());
    let generate = |model: &Path| {
        let mut cmd = grok1();
        cmd.args(["generate", "--tokens", "5", "--model"])
            .arg(model);
        cmd
    };
    // A checkpoint file, the config, the tokenizer beside the model (read
    // for a text prompt).
    for (name, input) in [
        ("ckpt-0/tensor00003_000", "--tokens"),
        ("config.json", "--tokens"),
        ("tokenizer.model", "--prompt"),
    ] {
        let dir = tmp.path().join(name.replace('/', "_"));
        copy_dir(&model("tiny-moe"), &dir);
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        mkfifo(&path);
        let mut cmd = grok1();
        cmd.args(["generate", input, "5", "--model"]).arg(&dir);
        // (The config is named as found: `ckpt-0/../config.json`.)
        expect_error(&mut cmd, &format!("{name}: a FIFO, not a regular file"));
    }
    // --tokenizer.
    let fifo = tmp.path().join("tok.model");
    mkfifo(&fifo);
    expect_error(
        grok1()
            .args(["generate", "--prompt", "hi", "--tokenizer"])
            .arg(&fifo),
        &fifo_error(&fifo),
    );
    // A GGUF named as the model, and one found in a directory.
    let gguf_dir = tmp.path().join("gguf");
    std::fs::create_dir(&gguf_dir).unwrap();
    let gguf = gguf_dir.join("x.gguf");
    mkfifo(&gguf);
    expect_error(&mut generate(&gguf), &fifo_error(&gguf));
    expect_error(&mut generate(&gguf_dir), &fifo_error(&gguf));
    // A safetensors shard and the Hugging Face config.
    for name in ["model-00001-of-00002.safetensors", "config.json"] {
        let dir = tmp.path().join(format!("st-{name}"));
        copy_dir(&fixtures().join("safetensors/keyfan"), &dir);
        let path = dir.join(name);
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        expect_error(&mut generate(&dir), &fifo_error(&path));
    }
}

/// Issue 22 item 14: a short or pre-GGUF `.gguf` said "model directory not
/// found".
#[test]
fn short_and_pre_gguf_files_say_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[u8], &str); 5] = [
        (b"", "an empty file, not a GGUF model"),
        (b"G", "1 byte, too short for a GGUF header (24 bytes)"),
        (b"GGU", "3 bytes, too short for a GGUF header (24 bytes)"),
        (
            b"GGMLxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "starts with `GGML`: a pre-GGUF ggml file, not supported",
        ),
        (
            b"lmggxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "starts with `lmgg`: a pre-GGUF ggml file, not supported",
        ),
    ];
    for (i, (bytes, why)) in cases.into_iter().enumerate() {
        let path = tmp.path().join(format!("{i}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        expect_error(
            grok1()
                .args(["generate", "--tokens", "5", "--model"])
                .arg(&path),
            &format!("{}: byte 0: {why}", path.display()),
        );
    }
}

/// Issue 22 item 15: `--max-tokens` of u64::MAX overflowed prompt + max
/// tokens ("KV cache full" mid-run); it means "until the context is full".
#[test]
fn max_tokens_of_u64_max_stops_at_the_context() {
    let o = run(grok1()
        .arg("generate")
        .arg("--model")
        .arg(model("tiny-moe"))
        .args(["--tokens", "5,6,7", "--print-ids", "--ignore-eos"])
        .args(["--max-tokens", &u64::MAX.to_string()]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped: context full"),
        "{}",
        stderr(&o)
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let ids = out.lines().last().unwrap().split(',').count();
    // tiny-moe's context is 128 positions.
    assert_eq!(ids, 128 - 3);
}

/// Issue 22 item 10: temperatures below ~1e-37 overflowed the scaled logits
/// and drew pad or [UNK]; down to 5e-324 they give the greedy tokens.
#[test]
fn tiny_temperatures_generate_the_greedy_tokens() {
    let ids = |temperature: &str| {
        let o = run(grok1()
            .arg("generate")
            .arg("--model")
            .arg(model("tiny-moe"))
            .args(["--tokens", "5,6,7", "--max-tokens", "8", "--print-ids"])
            .args(["--temperature", temperature]));
        assert!(o.status.success(), "{temperature}: {}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        out.lines().last().unwrap().to_string()
    };
    let greedy = ids("0");
    for temperature in ["1e-10", "1e-30", "1e-38", "1e-40", "1e-45", "5e-324"] {
        assert_eq!(ids(temperature), greedy, "temperature {temperature}");
    }
}

/// Issue 22 item 16: an embedding scale of 1e308 (inf in f32) loaded and
/// made every logit NaN, from which greedy decoding emitted id 0; the config
/// is refused, and non-finite logits from the weights are an error.
#[test]
fn absurd_scales_and_nan_logits_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&model("tiny-moe"), &dir);
    let config_path = dir.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["embedding_multiplier_scale"] = 1e308.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let generate = || {
        let mut cmd = grok1();
        cmd.args([
            "generate",
            "--tokens",
            "5,6",
            "--max-tokens",
            "3",
            "--model",
        ])
        .arg(&dir);
        cmd
    };
    expect_error(
        &mut generate(),
        "config.json: field `embedding_multiplier_scale`: 1e308 is outside 1e-6 to 10000",
    );
    // A valid config, but NaN in the final norm's scale.
    std::fs::write(&config_path, original).unwrap();
    let norm = dir.join("ckpt-0/tensor00001_000");
    let mut bytes = std::fs::read(&norm).unwrap();
    let grok1::weights::pickle::PickledTensor::Array(array) =
        grok1::weights::pickle::read_tensor(&bytes).unwrap()
    else {
        panic!("the final norm is a plain array");
    };
    let grok1::weights::pickle::ArrayBytes::Span { offset, len } = array.data else {
        panic!("a protocol-4 payload is a span of the file");
    };
    for value in bytes[offset..offset + len].chunks_exact_mut(4) {
        value.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&norm, bytes).unwrap();
    expect_error(
        &mut generate(),
        "the model produced a non-finite logit (NaN for token 0)",
    );
}

/// The same class as item 13 in `grok1 eval`: a FIFO given as `--data`,
/// `--samples` or `--out` blocked the run (the results file is read back
/// before it is appended to); each is refused at once, naming the file.
#[test]
fn eval_refuses_a_fifo_for_its_data_samples_and_results() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixtures().join("eval/humaneval/HumanEval.jsonl");
    let samples = tmp.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        "{\"task_id\": \"Fixture/0\", \"completion\": \"    return a + b\\n\"}\n",
    )
    .unwrap();
    let fifo = tmp.path().join("fifo.jsonl");
    mkfifo(&fifo);
    let eval = |data: &Path, samples: &Path, out: Option<&Path>| {
        let mut cmd = grok1();
        cmd.args(["eval", "--task", "humaneval", "--limit", "1", "--data"])
            .arg(data)
            .arg("--samples")
            .arg(samples);
        if let Some(out) = out {
            cmd.arg("--out").arg(out);
        }
        cmd
    };
    let needle = format!("{}: a FIFO, not a regular file", fifo.display());
    expect_error(&mut eval(&fifo, &samples, None), &needle);
    expect_error(&mut eval(&data, &fifo, None), &needle);
    expect_error(&mut eval(&data, &samples, Some(&fifo)), &needle);
    assert!(is_fifo(&fifo));
}

/// `serve --max-batch` or `--kv-tokens` near `u64::MAX` overflowed the KV
/// cache's size (a panic) or asked for more memory than the machine has (an
/// abort); both are refused with the size needed.
#[test]
fn kv_cache_sizes_past_memory_are_refused() {
    for flags in [
        ["--max-batch", "18446744073709551615"],
        ["--kv-tokens", "18446744073709551615"],
        ["--kv-tokens", "4000000000000"],
    ] {
        let mut cmd = grok1();
        cmd.args(["serve", "--port", "0"]).args(flags);
        expect_error(&mut cmd, "lower --kv-tokens");
    }
    // In bytes: past memory, too small for one request, or both ways at once.
    let mut cmd = grok1();
    cmd.args([
        "serve",
        "--port",
        "0",
        "--kv-memory",
        "18446744073709551615",
    ]);
    expect_error(&mut cmd, "lower --kv-tokens or --kv-memory");
    let mut cmd = grok1();
    cmd.args([
        "serve",
        "--port",
        "0",
        "--kv-type",
        "q8_0",
        "--kv-memory",
        "0",
    ]);
    expect_error(
        &mut cmd,
        "--kv-memory 0 MiB holds 0 tokens at --kv-type q8_0 (576 bytes each)",
    );
    let mut cmd = grok1();
    cmd.args(["serve", "--kv-memory", "8", "--kv-tokens", "4096"]);
    expect_error(&mut cmd, "cannot be used with");
    let mut cmd = grok1();
    cmd.args(["generate", "--tokens", "5", "--kv-type", "q4_0"]);
    expect_error(&mut cmd, "possible values: f32, bf16, q8_0");
}
