//! Rank-local shard sets (`grok1 convert --shards N`): one directory per rank,
//! `DIR/rank-R-of-N/`, holding that rank's part of every split tensor (already
//! cut, so it is mapped as it is: no copies, about 1/N of the model plus the
//! replicated norms and router) in GGUF or safetensors, and `shard.json`
//! saying which rank of how many it is, the split rule, and the whole model it
//! is part of (config and tensor table, with a fingerprint). `DIR/shard-set.json`
//! names the set. A rank refuses a directory of another rank, another job
//! size or another model, and a file whose size or tensor table differs from
//! what `shard.json` records.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::parallel::{Collective, Shard};

/// The set's own file, in `DIR`.
pub const SET_MANIFEST: &str = "shard-set.json";
/// Each rank's file, in `DIR/rank-R-of-N`.
pub const RANK_MANIFEST: &str = "shard.json";
/// Bumped when the layout of a shard set changes.
pub const FORMAT_VERSION: u32 = 1;
/// How the tensors are cut (the tensor-parallel split of `model::weights`).
pub const SPLIT_RULE: &str = "tensor-parallel/1: q/k/v outputs and o inputs by key/value head \
     group; expert gate/up outputs and down inputs by hidden column; embedding and output by \
     vocabulary row; norms and router whole";

/// `rank-R-of-N`: the directory of rank `rank` of `ranks`.
pub fn rank_dir_name(rank: usize, ranks: usize) -> String {
    format!("rank-{rank}-of-{ranks}")
}

/// `(rank, ranks)` of a `rank-R-of-N` name.
pub fn parse_rank_dir_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("rank-")?;
    let (rank, ranks) = rest.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(rank) || !digits(ranks) {
        return None;
    }
    let (rank, ranks) = (rank.parse().ok()?, ranks.parse().ok()?);
    (rank < ranks).then_some((rank, ranks))
}

/// The container a set's rank files use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardFormat {
    Gguf,
    Safetensors,
}

/// `DIR/shard-set.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetManifest {
    pub format_version: u32,
    pub ranks: usize,
    pub split: String,
    pub fingerprint: String,
}

/// One file of a rank's part and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    pub name: String,
    pub bytes: u64,
}

/// `DIR/rank-R-of-N/shard.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankManifest {
    pub format_version: u32,
    pub rank: usize,
    pub ranks: usize,
    pub split: String,
    /// [`fingerprint`] of `model`.
    pub fingerprint: String,
    pub format: ShardFormat,
    /// The whole model: config and tensor table, one `key: value` a line (as
    /// `parallel::model_description` writes it), the same in every rank.
    pub model: String,
    /// The whole model's config, as the rank's file reads back.
    pub config: ModelConfig,
    pub files: Vec<ShardFile>,
    /// This rank's tensor table (`parallel::tensor_lines`).
    pub tensors: Vec<String>,
}

/// A short name of a model description (CRC-32 of it and its length), for
/// messages; the descriptions themselves are compared line by line.
pub fn fingerprint(description: &str) -> String {
    format!(
        "{:08x}-{}",
        crc32fast::hash(description.as_bytes()),
        description.len()
    )
}

/// Why a rank cannot use a shard set.
#[derive(Debug, thiserror::Error)]
pub enum ShardSetError {
    /// Without mpirun, a set of several ranks.
    #[error("{}: this is a shard set of {ranks} ranks; run it under mpirun -np {ranks}", path.display())]
    NeedsMpirun { path: PathBuf, ranks: usize },
    /// What one rank found wrong with its part.
    #[error("rank {rank}: {}: {reason}", file.display())]
    Refused {
        rank: usize,
        file: PathBuf,
        reason: String,
    },
    /// One rank's refusal, reached by every rank of the job together (rank 0
    /// reports it).
    #[error("{message}")]
    Agreed { rank: usize, message: String },
}

fn refused(rank: usize, file: &Path, reason: impl Into<String>) -> ShardSetError {
    ShardSetError::Refused {
        rank,
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(rank: usize, file: &Path) -> Result<T, ShardSetError> {
    let text = crate::files::read_regular_to_string(file)
        .map_err(|e| refused(rank, file, format!("cannot be read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| refused(rank, file, format!("not a valid shard manifest: {e}")))
}

/// The `rank-R-of-N` directories in `dir`, as `(rank, ranks, path)`.
fn rank_dirs(dir: &Path) -> Vec<(usize, usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let (rank, ranks) = parse_rank_dir_name(&e.file_name().to_string_lossy())?;
            Some((rank, ranks, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// A rank's directory of a shard set, its manifest checked against the job.
#[derive(Clone, Debug)]
pub struct RankDir {
    pub dir: PathBuf,
    pub manifest: RankManifest,
    /// The set's directory (where a `tokenizer.model` may be), if `path` was one.
    pub set: Option<PathBuf>,
}

impl RankDir {
    /// The path of one of this rank's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The shard set part at `path` for `shard`: `path` is a set (`shard-set.json`
/// or `rank-R-of-N` directories in it) or one rank's directory (`shard.json`
/// in it). `None` when `path` is neither (a whole model). Refuses another
/// rank's directory, a set of another size, a set mixing models, and files
/// whose sizes differ from the manifest's (truncated or replaced).
pub fn locate(path: &Path, shard: Shard) -> Result<Option<RankDir>, ShardSetError> {
    let rank = shard.rank;
    if !path.is_dir() {
        return Ok(None);
    }
    let (dir, set) = if path.join(RANK_MANIFEST).exists() {
        (path.to_path_buf(), None)
    } else {
        let set_file = path.join(SET_MANIFEST);
        let set: Option<SetManifest> = match set_file.exists() {
            true => Some(read_json(rank, &set_file)?),
            false => None,
        };
        let dirs = rank_dirs(path);
        let ranks = match (&set, dirs.first()) {
            (Some(s), _) => s.ranks,
            (None, Some(&(_, n, _))) => n,
            (None, None) => return Ok(None),
        };
        if let Some(s) = &set {
            if s.format_version != FORMAT_VERSION {
                return Err(refused(
                    rank,
                    &set_file,
                    format!(
                        "shard set format {} (this grok1 reads {FORMAT_VERSION})",
                        s.format_version
                    ),
                ));
            }
        }
        if ranks != shard.count {
            if shard.count == 1 && ranks > 1 {
                return Err(ShardSetError::NeedsMpirun {
                    path: path.to_path_buf(),
                    ranks,
                });
            }
            return Err(refused(
                rank,
                path,
                format!(
                    "is a shard set of {ranks} ranks, but this job runs {} processes: \
                     run it under mpirun -np {ranks}, or convert the model again with --shards {}",
                    shard.count, shard.count
                ),
            ));
        }
        let own = path.join(rank_dir_name(rank, ranks));
        if !own.join(RANK_MANIFEST).exists() {
            let what = if own.exists() {
                format!(
                    "has no {RANK_MANIFEST} (an interrupted conversion?): convert the model again"
                )
            } else {
                "is missing: each machine needs its own rank's directory".to_string()
            };
            return Err(refused(rank, &own, format!("this rank's part {what}")));
        }
        let set = set.map(|s| (path.to_path_buf(), s));
        (own, set)
    };
    let file = dir.join(RANK_MANIFEST);
    let manifest: RankManifest = read_json(rank, &file)?;
    let refuse = |reason: String| Err(refused(rank, &file, reason));
    if manifest.format_version != FORMAT_VERSION {
        return refuse(format!(
            "shard format {} (this grok1 reads {FORMAT_VERSION})",
            manifest.format_version
        ));
    }
    if manifest.ranks != shard.count {
        if shard.count == 1 && manifest.ranks > 1 {
            return Err(ShardSetError::NeedsMpirun {
                path: path.to_path_buf(),
                ranks: manifest.ranks,
            });
        }
        return refuse(format!(
            "holds a part of a set of {} ranks, but this job runs {} processes",
            manifest.ranks, shard.count
        ));
    }
    if manifest.rank != rank {
        return refuse(format!(
            "holds rank {}'s part of {}, not rank {rank}'s: give each rank its own directory ({})",
            manifest.rank,
            manifest.ranks,
            rank_dir_name(rank, manifest.ranks)
        ));
    }
    if manifest.split != SPLIT_RULE {
        return refuse(format!(
            "was cut by another split rule ({:?}; this grok1 uses {SPLIT_RULE:?})",
            manifest.split
        ));
    }
    let computed = fingerprint(&manifest.model);
    if manifest.fingerprint != computed {
        return refuse(format!(
            "its model description has fingerprint {computed}, but it records {}: the manifest is corrupt",
            manifest.fingerprint
        ));
    }
    if let Some((set_dir, set)) = &set {
        if set.fingerprint != manifest.fingerprint {
            return refuse(format!(
                "belongs to another model (fingerprint {}) than the set {} (fingerprint {})",
                manifest.fingerprint,
                set_dir.join(SET_MANIFEST).display(),
                set.fingerprint
            ));
        }
    }
    for f in &manifest.files {
        let plain = Path::new(&f.name)
            .file_name()
            .is_some_and(|n| n == f.name.as_str());
        if !plain {
            return refuse(format!("file name {:?} is not a plain file name", f.name));
        }
        let path = dir.join(&f.name);
        let meta = std::fs::metadata(&path)
            .map_err(|e| refused(rank, &path, format!("cannot be read: {e}")))?;
        if !meta.is_file() {
            return Err(refused(rank, &path, "is not a regular file"));
        }
        if meta.len() != f.bytes {
            return Err(refused(
                rank,
                &path,
                format!(
                    "is {} bytes, but {} records {} (truncated or replaced): copy or convert it again",
                    meta.len(),
                    file.display(),
                    f.bytes
                ),
            ));
        }
    }
    Ok(Some(RankDir {
        dir,
        manifest,
        set: set.map(|(d, _)| d),
    }))
}

/// Checks a rank's loaded tensor table (`parallel::tensor_lines`) against
/// its manifest's, naming the first tensor that differs.
pub fn check_tensors(
    rank_dir: &RankDir,
    rank: usize,
    found: &[String],
) -> Result<(), ShardSetError> {
    let file = rank_dir.file(RANK_MANIFEST);
    let key = |l: &str| {
        l.split_once("`: ")
            .map_or(l.to_string(), |(k, _)| k.to_string())
    };
    let want: std::collections::BTreeMap<String, &String> = rank_dir
        .manifest
        .tensors
        .iter()
        .map(|l| (key(l), l))
        .collect();
    let have: std::collections::BTreeMap<String, &String> =
        found.iter().map(|l| (key(l), l)).collect();
    for (k, line) in &want {
        match have.get(k) {
            None => {
                return Err(refused(
                    rank,
                    &file,
                    format!("records {k}`, which the rank's files lack"),
                ))
            }
            Some(h) if h != line => {
                return Err(refused(
                    rank,
                    &file,
                    format!("records {line}, but the rank's files hold {h}"),
                ))
            }
            _ => {}
        }
    }
    if let Some(k) = have.keys().find(|k| !want.contains_key(*k)) {
        return Err(refused(
            rank,
            &file,
            format!("does not record {k}`, which the rank's files hold"),
        ));
    }
    Ok(())
}

/// Every rank's outcome of opening its part, agreed: the error of the lowest
/// rank that failed reaches every rank (so that all stop together, rank 0
/// reporting it), and ranks given a shard set and ranks given a whole model
/// file are refused together.
pub fn agree<T, E: std::fmt::Display>(
    c: &dyn Collective,
    local: Result<Option<T>, E>,
) -> Result<Result<Option<T>, E>, ShardSetError> {
    if c.size() == 1 {
        return Ok(local);
    }
    let status = match &local {
        Ok(Some(_)) => "S".to_string(),
        Ok(None) => "W".to_string(),
        Err(e) => format!("E{e}"),
    };
    let all = c.all_gather_bytes(status.as_bytes());
    for (rank, s) in all.iter().enumerate() {
        if let Some(message) = s.strip_prefix(b"E") {
            return Err(ShardSetError::Agreed {
                rank,
                message: String::from_utf8_lossy(message).into_owned(),
            });
        }
    }
    if let Some(rank) = all.iter().position(|s| s != &all[0]) {
        let kind = |s: &[u8]| match s {
            b"S" => "a shard set",
            _ => "a whole model file",
        };
        return Err(ShardSetError::Agreed {
            rank,
            message: format!(
                "rank {rank} was given {}, but rank 0 {}: give every rank the same kind of model",
                kind(&all[rank]),
                kind(&all[0])
            ),
        });
    }
    Ok(local)
}

/// With `--force`: whether `dir` holds only a previous shard set (the set
/// manifest and `rank-R-of-N` directories holding only the files a set
/// writes); the first entry that is not, if any.
pub fn foreign_entry(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    const RANK_FILES: [&str; 4] = [
        RANK_MANIFEST,
        "model.gguf",
        "model.safetensors",
        "config.json",
    ];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let (path, kind) = (entry.path(), entry.file_type()?);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == SET_MANIFEST && kind.is_file() {
            continue;
        }
        if !(kind.is_dir() && parse_rank_dir_name(&name).is_some()) {
            return Ok(Some(path));
        }
        for inner in std::fs::read_dir(&path)? {
            let inner = inner?;
            let inner_name = inner.file_name();
            let ours = RANK_FILES.contains(&inner_name.to_string_lossy().as_ref());
            if !(ours && inner.file_type()?.is_file()) {
                return Ok(Some(inner.path()));
            }
        }
    }
    Ok(None)
}

/// A set's manifest and each of its rank directories present in `dir` with
/// its manifest (for `grok1 inspect`).
pub fn describe(dir: &Path) -> Result<(SetManifest, Vec<(PathBuf, RankManifest)>), ShardSetError> {
    let set: SetManifest = read_json(0, &dir.join(SET_MANIFEST))?;
    let mut ranks = Vec::new();
    for (rank, _, path) in rank_dirs(dir) {
        let manifest = read_json(rank, &path.join(RANK_MANIFEST))?;
        ranks.push((path, manifest));
    }
    Ok((set, ranks))
}

/// True when `dir` is a shard set: its set manifest is there.
pub fn is_shard_set(dir: &Path) -> bool {
    dir.join(SET_MANIFEST).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_directory_names_round_trip_and_reject_others() {
        assert_eq!(rank_dir_name(3, 8), "rank-3-of-8");
        assert_eq!(parse_rank_dir_name("rank-3-of-8"), Some((3, 8)));
        assert_eq!(parse_rank_dir_name("rank-8-of-8"), None);
        assert_eq!(parse_rank_dir_name("rank--of-8"), None);
        assert_eq!(parse_rank_dir_name("rank-1-of-2x"), None);
        assert_eq!(parse_rank_dir_name("model.gguf"), None);
    }

    #[test]
    fn fingerprints_differ_with_the_description() {
        assert_ne!(fingerprint("a: 1"), fingerprint("a: 2"));
        assert_eq!(fingerprint("a: 1"), fingerprint("a: 1"));
    }
}
