//! Shard sets (`grok1 convert --shards N`): each rank's directory holds only
//! its part, mapped as it is, and runs bit-identically to the whole converted
//! file split at load; every way a rank can be given the wrong part is
//! refused, naming the rank, the file and the difference. Ranks run as
//! threads (`parallel::threads`), through the loading code MPI ranks run.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{model_dir, prefill};
use grok1::backend::Matrix;
use grok1::convert::shards::write_shard_set;
use grok1::convert::{convert_with, ConvertOptions, OutFormat, Scheme};
use grok1::parallel::threads::on_ranks;
use grok1::parallel::Collective;
use grok1::progress::NoProgress;
use grok1::quant::GgmlType;
use grok1::weights::shard_set::{self, foreign_entry, RankManifest};
use grok1::{Grok1, LoadError, Precision};

fn load(path: &Path, c: Arc<dyn Collective>) -> Result<Grok1, LoadError> {
    grok1::load_parallel(path, &NoProgress, c).map(|l| l.model)
}

fn options(format: OutFormat, dtype: GgmlType) -> ConvertOptions<'static> {
    ConvertOptions {
        format,
        scheme: Scheme::Uniform(dtype),
        imatrix: None,
    }
}

/// The fixture `model` converted whole to `out`.
fn convert_whole(model: &str, options: &ConvertOptions, out: &Path) {
    let loaded = grok1::load(model_dir(model)).unwrap();
    let cfg = loaded.model.config().clone();
    convert_with(
        &cfg,
        loaded.model.weights(),
        None,
        options,
        out,
        &NoProgress,
    )
    .unwrap();
}

/// The fixture `model` written as a set of `n` ranks in `out`.
fn write_set(model: &str, options: &ConvertOptions, n: usize, out: &Path) -> Result<(), String> {
    let opened = grok1::load::open_model(&model_dir(model), &NoProgress).unwrap();
    write_shard_set(
        &opened.config,
        &opened.store,
        None,
        options,
        n,
        out,
        &NoProgress,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

const TOKENS: [u32; 7] = [1, 17, 300, 5, 999, 42, 7];

fn logits_bits(model: &Grok1) -> Vec<u32> {
    prefill(model, &TOKENS, Precision::F32, None)
        .logits
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn errors(path: &Path, n: usize) -> Vec<String> {
    on_ranks(n, |c| match load(path, c) {
        Ok(_) => "loaded".to_string(),
        Err(e) => e.to_string(),
    })
}

fn is_mapped(m: &Matrix) -> bool {
    match m {
        Matrix::Rows(r) => r.data.is_mapped(),
        Matrix::Int8Grouped(q) => q.weight.is_mapped(),
    }
}

#[test]
fn shard_sets_run_bit_identical_to_the_whole_file_split_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (OutFormat::Gguf, GgmlType::F32, "gguf", 2),
        (OutFormat::Gguf, GgmlType::F32, "gguf", 4),
        (OutFormat::Gguf, GgmlType::Q8_0, "gguf", 2),
        (OutFormat::Gguf, GgmlType::Q8_0, "gguf", 8),
        (OutFormat::Gguf, GgmlType::Q5K, "gguf", 1),
        // These weigh each block by its whole row's mean square.
        (OutFormat::Gguf, GgmlType::Q4_0, "gguf", 2),
        (OutFormat::Gguf, GgmlType::Q5_1, "gguf", 4),
        (OutFormat::Safetensors, GgmlType::BF16, "st", 4),
    ];
    for (format, dtype, ext, n) in cases {
        let opts = options(format, dtype);
        let whole = tmp.path().join(format!("whole-{dtype}.{ext}"));
        if !whole.exists() {
            convert_whole("tiny-moe", &opts, &whole);
        }
        let set = tmp.path().join(format!("set-{dtype}-{n}"));
        write_set("tiny-moe", &opts, n, &set).unwrap();
        let runs = on_ranks(n, |c| {
            let from_whole = load(&whole, c.clone()).unwrap();
            let from_set = load(&set, c).unwrap();
            let l = &from_set.weights().layers[0];
            // The set's parts are mapped as they are, even those the whole
            // file's ranks copy (o and down are cut inside their rows).
            let mapped = [&l.wq, &l.wo, &l.experts.linear[0], &l.experts.linear_1[3]]
                .into_iter()
                .all(is_mapped);
            (logits_bits(&from_whole), logits_bits(&from_set), mapped)
        });
        for (rank, (whole_bits, set_bits, mapped)) in runs.into_iter().enumerate() {
            assert!(
                whole_bits == set_bits,
                "{dtype} N={n} rank {rank}: logits differ"
            );
            assert!(mapped, "{dtype} N={n} rank {rank}: a part was copied");
        }
        // Each rank stores about 1/N of the split tensors.
        let rank_bytes = std::fs::metadata(set.join(format!("rank-0-of-{n}")).join(match format {
            OutFormat::Gguf => "model.gguf",
            OutFormat::Safetensors => "model.safetensors",
        }))
        .unwrap()
        .len();
        let whole_bytes = std::fs::metadata(match format {
            OutFormat::Gguf => whole.clone(),
            OutFormat::Safetensors => whole.join("model.safetensors"),
        })
        .unwrap()
        .len();
        let share = rank_bytes as f64 / whole_bytes as f64;
        assert!(
            share < 1.0 / n as f64 + 0.1,
            "{dtype} N={n}: a rank stores {share:.2} of the model"
        );
    }
}

#[test]
fn a_set_of_several_ranks_without_mpirun_says_how_to_run_it() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    write_set(
        "tiny-moe",
        &options(OutFormat::Gguf, GgmlType::F32),
        2,
        &set,
    )
    .unwrap();
    let err = load(&set, grok1::parallel::single_process())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: this is a shard set of 2 ranks; run it under mpirun -np 2",
            set.display()
        )
    );
    // So is one rank's directory given alone.
    let err = load(&set.join("rank-1-of-2"), grok1::parallel::single_process())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.ends_with("this is a shard set of 2 ranks; run it under mpirun -np 2"),
        "{err}"
    );
}

#[test]
fn another_job_size_or_another_ranks_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    write_set(
        "tiny-moe",
        &options(OutFormat::Gguf, GgmlType::F32),
        2,
        &set,
    )
    .unwrap();
    // A set of 2 under 4 processes: every rank refuses alike.
    let errs = errors(&set, 4);
    let want = format!(
        "rank 0: {}: is a shard set of 2 ranks, but this job runs 4 processes: run it under mpirun -np 2, or convert the model again with --shards 4",
        set.display()
    );
    assert!(errs.iter().all(|e| e == &want), "{errs:?}");
    // Rank 0's directory given to both ranks: rank 1 refuses it, and every
    // rank stops with rank 1's reason.
    let errs = errors(&set.join("rank-0-of-2"), 2);
    let manifest = set.join("rank-0-of-2").join("shard.json");
    let want = format!(
        "rank 1: {}: holds rank 0's part of 2, not rank 1's: give each rank its own directory (rank-1-of-2)",
        manifest.display()
    );
    assert!(errs.iter().all(|e| e == &want), "{errs:?}");
    // A missing rank directory names it.
    std::fs::remove_dir_all(set.join("rank-1-of-2")).unwrap();
    let errs = errors(&set, 2);
    assert!(
        errs.iter()
            .all(|e| e.starts_with("rank 1: ")
                && e.contains("rank-1-of-2: this rank's part is missing")),
        "{errs:?}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn parts_of_different_models_are_refused_naming_rank_and_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(OutFormat::Gguf, GgmlType::F32);
    let (moe, vocab) = (tmp.path().join("moe"), tmp.path().join("vocab"));
    write_set("tiny-moe", &opts, 2, &moe).unwrap();
    write_set("tiny-vocab", &opts, 2, &vocab).unwrap();
    // Rank directories of two models side by side (no set manifest): the
    // ranks' whole-model descriptions differ.
    let mixed = tmp.path().join("mixed");
    copy_dir(&moe.join("rank-0-of-2"), &mixed.join("rank-0-of-2"));
    copy_dir(&vocab.join("rank-1-of-2"), &mixed.join("rank-1-of-2"));
    let errs = errors(&mixed, 2);
    assert!(
        errs.iter().all(|e| e.starts_with(
            "rank 1 holds a different model than rank 0: config field `attn_output_multiplier` is 0.3535533"
        )),
        "{errs:?}"
    );
    // With the set's manifest, the stray rank is named with its file.
    std::fs::copy(moe.join("shard-set.json"), mixed.join("shard-set.json")).unwrap();
    let errs = errors(&mixed, 2);
    let file = mixed.join("rank-1-of-2").join("shard.json");
    assert!(
        errs.iter().all(|e| e.starts_with(&format!(
            "rank 1: {}: belongs to another model",
            file.display()
        ))),
        "{errs:?}"
    );
}

fn manifest(path: &Path) -> RankManifest {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn truncated_or_corrupt_parts_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(OutFormat::Gguf, GgmlType::Q8_0);
    let fresh = |name: &str| -> PathBuf {
        let set = tmp.path().join(name);
        write_set("tiny-moe", &opts, 2, &set).unwrap();
        set
    };
    // Truncated: the size recorded differs.
    let set = fresh("truncated");
    let file = set.join("rank-1-of-2").join("model.gguf");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let errs = errors(&set, 2);
    let want = format!(
        "rank 1: {}: is {} bytes, but {} records {len} (truncated or replaced): copy or convert it again",
        file.display(),
        len - 100,
        set.join("rank-1-of-2").join("shard.json").display()
    );
    assert!(errs.iter().all(|e| e == &want), "{errs:?}");
    // A manifest that is not one.
    let set = fresh("garbled");
    let file = set.join("rank-0-of-2").join("shard.json");
    std::fs::write(&file, "{\"format_version\": 1, \"rank\": ").unwrap();
    let errs = errors(&set, 2);
    assert!(
        errs.iter().all(|e| e.starts_with(&format!(
            "rank 0: {}: not a valid shard manifest",
            file.display()
        ))),
        "{errs:?}"
    );
    // A manifest whose model description was altered: its fingerprint no
    // longer matches.
    let set = fresh("altered");
    let file = set.join("rank-1-of-2").join("shard.json");
    let mut m = manifest(&file);
    m.model = m.model.replace("`num_layers`: 2", "`num_layers`: 3");
    std::fs::write(&file, serde_json::to_string(&m).unwrap()).unwrap();
    let errs = errors(&set, 2);
    assert!(
        errs.iter().all(|e| e.starts_with(&format!(
            "rank 1: {}: its model description has fingerprint",
            file.display()
        )) && e.ends_with("the manifest is corrupt")),
        "{errs:?}"
    );
    // A file whose tensor table is not the recorded one (same size: another
    // rank's file of the same set, swapped in).
    let set = fresh("swapped");
    let other = set.join("rank-0-of-2").join("model.gguf");
    let file = set.join("rank-1-of-2").join("model.gguf");
    let mut m = manifest(&set.join("rank-1-of-2").join("shard.json"));
    m.tensors[0] = m.tensors[0].replace("[", "[9, ");
    std::fs::write(
        set.join("rank-1-of-2").join("shard.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    std::fs::copy(&other, &file).unwrap();
    let errs = errors(&set, 2);
    assert!(
        errs.iter().all(|e| e.starts_with("rank 1: ")
            && e.contains("records tensor `")
            && e.contains("but the rank's files hold")),
        "{errs:?}"
    );
    // A GGUF whose header is damaged: its reader names the file.
    let set = fresh("damaged");
    let file = set.join("rank-0-of-2").join("model.gguf");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] = b'X';
    std::fs::write(&file, bytes).unwrap();
    let errs = errors(&set, 2);
    assert!(
        errs.iter().all(|e| e.contains(&file.display().to_string())),
        "{errs:?}"
    );
}

#[test]
fn a_model_that_cannot_be_cut_in_the_output_type_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    // Q4_K blocks are 256 values; attention output rows hold 256, so half of
    // them is not a whole block.
    let out = tmp.path().join("q4k");
    let err = write_set(
        "tiny-moe",
        &options(OutFormat::Gguf, GgmlType::Q4K),
        2,
        &out,
    )
    .unwrap_err();
    assert!(
        err.contains("tensor `blk.0.attn_output.weight` cannot be split over 2 ranks in q4_k")
            && err.contains("not whole blocks"),
        "{err}"
    );
    assert!(!out.exists(), "a refused set leaves nothing behind");
    // 16 query heads in 8 key/value groups do not divide by 3.
    let err = write_set(
        "tiny-moe",
        &options(OutFormat::Gguf, GgmlType::F32),
        3,
        &out,
    )
    .unwrap_err();
    assert!(err.contains("cannot be split over 3 ranks"), "{err}");
}

#[test]
fn only_a_previous_shard_set_counts_as_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    write_set(
        "tiny-moe",
        &options(OutFormat::Safetensors, GgmlType::F32),
        2,
        &set,
    )
    .unwrap();
    assert!(shard_set::is_shard_set(&set));
    assert_eq!(foreign_entry(&set).unwrap(), None);
    let stray = set.join("rank-1-of-2").join("notes.txt");
    std::fs::write(&stray, "mine").unwrap();
    assert_eq!(foreign_entry(&set).unwrap(), Some(stray.clone()));
    std::fs::remove_file(&stray).unwrap();
    let other = set.join("data");
    std::fs::create_dir(&other).unwrap();
    assert_eq!(foreign_entry(&set).unwrap(), Some(other));
}

#[test]
fn an_importance_matrix_weighs_each_rank_with_its_own_columns() {
    use grok1::imatrix::{Imatrix, ImatrixEntry};
    let tmp = tempfile::tempdir().unwrap();
    // Importance for the attention output (256 input columns, split over
    // the ranks): uneven, so that a rank given another rank's columns would
    // quantise differently.
    let mut entries = std::collections::BTreeMap::new();
    for layer in 0..2 {
        let sums: Vec<f32> = (0..256)
            .map(|c| 1.0 + ((c * 37 + layer * 11) % 97) as f32)
            .collect();
        entries.insert(
            format!("blk.{layer}.attn_output.weight"),
            ImatrixEntry {
                cols: 256,
                sums,
                counts: vec![4.0],
            },
        );
    }
    let imatrix = Imatrix {
        entries,
        datasets: vec!["test".into()],
        chunk_count: 1,
        chunk_size: 4,
    };
    let weighted = ConvertOptions {
        format: OutFormat::Gguf,
        scheme: Scheme::Uniform(GgmlType::Q4_0),
        imatrix: Some(&imatrix),
    };
    let plain = options(OutFormat::Gguf, GgmlType::Q4_0);
    let (whole, unweighted, set) = (
        tmp.path().join("whole.gguf"),
        tmp.path().join("plain.gguf"),
        tmp.path().join("set"),
    );
    convert_whole("tiny-moe", &weighted, &whole);
    convert_whole("tiny-moe", &plain, &unweighted);
    write_set("tiny-moe", &weighted, 2, &set).unwrap();
    let runs = on_ranks(2, |c| {
        (
            logits_bits(&load(&whole, c.clone()).unwrap()),
            logits_bits(&load(&unweighted, c.clone()).unwrap()),
            logits_bits(&load(&set, c).unwrap()),
        )
    });
    let (whole_bits, plain_bits, set_bits) = &runs[0];
    assert!(whole_bits != plain_bits, "the importance changed nothing");
    assert!(
        whole_bits == set_bits,
        "the set differs from the weighted whole file"
    );
}
