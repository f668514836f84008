//! A saved conversation: the token ids a chat has read and written and the
//! keys and values its KV cache holds for them, so that a chat resumes without
//! recomputing its history.
//!
//! Layout (little-endian):
//!
//! ```text
//! b"GROK1SES"                  magic
//! u32                          format version (1)
//! u32                          header length H
//! H bytes                      the header, JSON ([`SessionHeader`])
//! u32 x tokens                 the conversation's ids
//! f32 x kv_tokens x per_token  each cached position's keys then values,
//!                              layer by layer ([`KvSnapshot`]'s layout)
//! u32                          CRC-32 of every byte before it
//! ```
//!
//! A file is checked whole before anything of it is used: its size against
//! what its header describes, its checksum, and its header against the model
//! and precision of the run that reads it (keys and values computed by another
//! model or at another precision would be read as if they were this one's).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::KvSnapshot;
use crate::{Grok1, KvType, Precision};

const MAGIC: &[u8; 8] = b"GROK1SES";
const VERSION: u32 = 1;
/// A header is a few hundred bytes; a larger length is a damaged file.
const MAX_HEADER: u32 = 1 << 20;

/// What the keys and values of a session were computed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionModel {
    /// The model config's name.
    pub name: String,
    /// CRC-32 of the model's shape, how each weight is stored and a sample
    /// of the weights' contents (every norm and router, some embedding
    /// rows), in hex ([`FINGERPRINT_VERSION`]).
    pub fingerprint: String,
    /// How `fingerprint` was made: 1 (files from before sessions under
    /// mpirun) hashed the weights' byte count, which a rank of a split model
    /// does not know, where 2 hashes each weight's storage type.
    #[serde(default = "first_fingerprint_version")]
    pub fingerprint_version: u32,
    /// Version 1's fingerprint of this model, where this process holds all
    /// of it (to resume files saved before version 2).
    #[serde(skip)]
    pub legacy_fingerprint: Option<String>,
    /// The precision the keys and values were computed at.
    pub precision: String,
    /// How the cache stores an entry.
    pub kv_type: String,
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

/// The fingerprint [`SessionModel::of`] makes.
pub const FINGERPRINT_VERSION: u32 = 2;

fn first_fingerprint_version() -> u32 {
    1
}

/// The embedding rows a fingerprint samples.
fn sampled_tokens(vocab: usize) -> Vec<usize> {
    [0, vocab / 2, vocab.saturating_sub(1)]
        .into_iter()
        .filter(|&t| t < vocab)
        .collect()
}

/// The sampled embedding rows as f32, wherever they are: a rank of a split
/// model holds part of the vocabulary, so every rank sends the rows it has.
fn sampled_rows(model: &Grok1) -> Vec<Vec<f32>> {
    let (w, c) = (model.weights(), model.collective());
    let tokens = sampled_tokens(model.config().vocab_size);
    let mut row = vec![0f32; w.embedding.cols];
    let mut mine = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if w.vocab_rows.contains(&t) {
            w.embedding.row_into(t - w.vocab_rows.start, &mut row);
            mine.push(i as u8);
            mine.extend(row.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    let mut rows = vec![Vec::new(); tokens.len()];
    for part in c.all_gather_bytes(&mine) {
        for entry in part.chunks_exact(1 + 4 * row.len()) {
            let slot = &mut rows[usize::from(entry[0])];
            if slot.is_empty() {
                *slot = entry[1..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
        }
    }
    rows
}

/// How a matrix is stored, for the fingerprint.
fn storage(m: &crate::backend::Matrix) -> String {
    match m {
        crate::backend::Matrix::Int8Grouped(q) => format!("int8/{}", q.scale_dtype),
        crate::backend::Matrix::Rows(r) => r.dtype.name().to_string(),
    }
}

/// CRC-32 of the shape, `stored` (what the fingerprint's version says of
/// the storage), the norms and routers, and the sampled embedding rows.
fn fingerprint(model: &Grok1, stored: &[u8], rows: &[Vec<f32>]) -> String {
    let (cfg, w) = (model.config(), model.weights());
    let mut crc = crc32fast::Hasher::new();
    let floats = |crc: &mut crc32fast::Hasher, v: &[f32]| {
        for x in v {
            crc.update(&x.to_le_bytes());
        }
    };
    for n in [
        cfg.vocab_size,
        cfg.emb_size,
        cfg.num_layers,
        cfg.num_q_heads,
        cfg.num_kv_heads,
        cfg.key_size,
        cfg.num_experts,
        cfg.num_selected_experts,
        cfg.ffn_size,
        cfg.sequence_len,
    ] {
        crc.update(&(n as u64).to_le_bytes());
    }
    crc.update(stored);
    floats(&mut crc, &w.final_norm);
    for layer in &w.layers {
        for v in [
            &layer.attn_norm,
            &layer.attn_out_norm,
            &layer.moe_norm,
            &layer.moe_out_norm,
            &layer.router,
        ] {
            floats(&mut crc, v);
        }
    }
    for row in rows {
        floats(&mut crc, row);
    }
    format!("{:08x}", crc.finalize())
}

impl SessionModel {
    /// The identity of `model` running at `precision` with a KV cache of
    /// `kv_type` (keys and values rounded to another type would not resume
    /// as the same conversation). The same for the model whole and split
    /// over any number of ranks; on a split model every rank must call it
    /// (the sampled rows are gathered from the ranks that hold them).
    pub fn of(model: &Grok1, precision: Precision, kv_type: KvType) -> Self {
        let cfg = model.config();
        let w = model.weights();
        let rows = sampled_rows(model);
        let mut stored = Vec::new();
        let mut add = |label: String| {
            stored.extend(label.as_bytes());
            stored.push(0);
        };
        add(w.embedding.dtype.name().to_string());
        add(match w.output_is_tied() {
            true => "tied".into(),
            false => w.output.dtype.name().to_string(),
        });
        for layer in &w.layers {
            for m in [&layer.wq, &layer.wk, &layer.wv, &layer.wo] {
                add(storage(m));
            }
            let e = &layer.experts;
            for m in e.linear.iter().chain(&e.linear_v).chain(&e.linear_1) {
                add(storage(m));
            }
        }
        let legacy = w
            .shard
            .is_whole()
            .then(|| fingerprint(model, &w.byte_len().to_le_bytes(), &rows));
        SessionModel {
            name: cfg.name.clone(),
            fingerprint: fingerprint(model, &stored, &rows),
            fingerprint_version: FINGERPRINT_VERSION,
            legacy_fingerprint: legacy,
            // The variant's name: "f32", "bf16", "fast", "int8".
            precision: format!("{precision:?}").to_lowercase(),
            kv_type: kv_type.name().into(),
            layers: cfg.num_layers,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.key_size,
            vocab: cfg.vocab_size,
        }
    }

    /// Floats one cached position takes: keys and values of every layer.
    pub fn floats_per_token(&self) -> Option<usize> {
        self.layers
            .checked_mul(self.kv_heads)?
            .checked_mul(self.head_dim)?
            .checked_mul(2)
    }

    /// This model's fingerprint as a file of `version` made it (`None`:
    /// version 1 on a rank of a split model, or a version this build does
    /// not know).
    fn fingerprint_of_version(&self, version: u32) -> Option<&str> {
        match version {
            FINGERPRINT_VERSION => Some(&self.fingerprint),
            1 => self.legacy_fingerprint.as_deref(),
            _ => None,
        }
    }
}

/// A session file's header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionHeader {
    pub model: SessionModel,
    /// Ids in the file.
    pub tokens: usize,
    /// Leading ids whose keys and values the file holds.
    pub kv_tokens: usize,
    /// What the program that wrote it keeps beside the ids (a chat: text not
    /// yet encoded, the next seed).
    pub extra: serde_json::Value,
}

/// A conversation read back: its ids, the keys and values of their first
/// `kv.tokens.len()`, and the writer's extra state.
#[derive(Debug)]
pub struct Session {
    pub tokens: Vec<u32>,
    pub kv: KvSnapshot,
    pub extra: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session {}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("session {}: not a grok1 session file (it does not start with GROK1SES)", file.display())]
    NotASession { file: PathBuf },
    #[error("session {}: format version {found}, this build reads version {VERSION}", file.display())]
    Version { file: PathBuf, found: u32 },
    #[error("session {}: damaged or truncated: {what}", file.display())]
    Corrupt { file: PathBuf, what: String },
    #[error("session {}: saved by a grok1 from before sessions under mpirun, whose model fingerprint a split model cannot check; resume it once without mpirun (which saves it anew), then under mpirun", file.display())]
    SplitLegacy { file: PathBuf },
    #[error("session {} was saved by another model or setting: its {field} is {saved}, this run's is {current}", file.display())]
    Mismatch {
        file: PathBuf,
        field: &'static str,
        saved: String,
        current: String,
    },
}

/// Writes a session to `path` atomically: to a file beside it, then renamed
/// over it, so a crash leaves the old session or the new one, never half.
pub fn save(
    path: &Path,
    model: &SessionModel,
    tokens: &[u32],
    kv: &KvSnapshot,
    extra: serde_json::Value,
) -> Result<(), SessionError> {
    let io = |source| SessionError::Io {
        file: path.to_path_buf(),
        source,
    };
    let header = SessionHeader {
        model: model.clone(),
        tokens: tokens.len(),
        kv_tokens: kv.tokens.len(),
        extra,
    };
    debug_assert!(tokens.starts_with(&kv.tokens));
    debug_assert_eq!(
        Some(kv.kv.len()),
        model
            .floats_per_token()
            .and_then(|n| n.checked_mul(kv.tokens.len()))
    );
    let json = serde_json::to_vec(&header).expect("a header serialises");
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = File::create(&tmp).map_err(io)?;
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let header_len = u32::try_from(json.len()).map_err(|_| {
        io(std::io::Error::other(
            "the header is too large (its extra state)",
        ))
    })?;
    let write = |out: &mut CrcWriter<BufWriter<File>>| -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&header_len.to_le_bytes())?;
        out.write_all(&json)?;
        for t in tokens {
            out.write_all(&t.to_le_bytes())?;
        }
        for x in &kv.kv {
            out.write_all(&x.to_le_bytes())?;
        }
        let crc = out.crc.clone().finalize();
        out.inner.write_all(&crc.to_le_bytes())?;
        out.inner.flush()?;
        out.inner.get_ref().sync_all()
    };
    if let Err(e) = write(&mut out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the session at `path`, checking it whole and against `model`.
pub fn load(path: &Path, model: &SessionModel) -> Result<Session, SessionError> {
    let file_err = || path.to_path_buf();
    let io = |source| SessionError::Io {
        file: file_err(),
        source,
    };
    let corrupt = |what: String| SessionError::Corrupt {
        file: file_err(),
        what,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut input = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let short = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(format!("the file ends early ({size} bytes)")),
        _ => io(e),
    };
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(short)?;
    if &magic != MAGIC {
        return Err(SessionError::NotASession { file: file_err() });
    }
    let version = read_u32(&mut input).map_err(short)?;
    if version != VERSION {
        return Err(SessionError::Version {
            file: file_err(),
            found: version,
        });
    }
    let header_len = read_u32(&mut input).map_err(short)?;
    if header_len > MAX_HEADER {
        return Err(corrupt(format!(
            "a header of {header_len} bytes (at most {MAX_HEADER})"
        )));
    }
    let mut json = vec![0u8; header_len as usize];
    input.read_exact(&mut json).map_err(short)?;
    let header: SessionHeader = serde_json::from_slice(&json)
        .map_err(|e| corrupt(format!("its header is not a session header: {e}")))?;
    check_model(path, &header.model, model)?;
    if header.kv_tokens > header.tokens {
        return Err(corrupt(format!(
            "keys and values for {} positions of {} ids",
            header.kv_tokens, header.tokens
        )));
    }
    let per_token = model
        .floats_per_token()
        .ok_or_else(|| corrupt("a model too large to describe".into()))?;
    let expected = (|| {
        let kv_floats = header.kv_tokens.checked_mul(per_token)?;
        let body = header
            .tokens
            .checked_mul(4)?
            .checked_add(kv_floats.checked_mul(4)?)?;
        (16 + header_len as u64 + 4).checked_add(body as u64)
    })();
    if expected != Some(size) {
        return Err(corrupt(format!(
            "the file is {size} bytes but its header describes {}",
            expected.map_or("more than 2^64".to_string(), |e| e.to_string())
        )));
    }
    let tokens = read_u32s(&mut input, header.tokens).map_err(short)?;
    let kv = read_f32s(&mut input, header.kv_tokens * per_token).map_err(short)?;
    let crc = input.crc.clone().finalize();
    let stored = read_u32(&mut input.inner).map_err(short)?;
    if crc != stored {
        return Err(corrupt(format!(
            "its checksum is {stored:08x} but its contents sum to {crc:08x}"
        )));
    }
    if let Some(p) = tokens.iter().position(|&t| t as usize >= model.vocab) {
        return Err(corrupt(format!(
            "id {} at position {p} is outside the vocabulary (ids 0..{})",
            tokens[p], model.vocab
        )));
    }
    let kv = KvSnapshot {
        tokens: tokens[..header.kv_tokens].to_vec(),
        kv,
    };
    Ok(Session {
        tokens,
        kv,
        extra: header.extra,
    })
}

fn check_model(
    path: &Path,
    saved: &SessionModel,
    current: &SessionModel,
) -> Result<(), SessionError> {
    let version = saved.fingerprint_version;
    let Some(fingerprint) = current.fingerprint_of_version(version) else {
        return Err(match version {
            1 => SessionError::SplitLegacy {
                file: path.to_path_buf(),
            },
            _ => SessionError::Mismatch {
                file: path.to_path_buf(),
                field: "fingerprint version",
                saved: version.to_string(),
                current: FINGERPRINT_VERSION.to_string(),
            },
        });
    };
    let fields: [(&'static str, String, String); 8] = [
        ("model name", saved.name.clone(), current.name.clone()),
        (
            "model fingerprint",
            saved.fingerprint.clone(),
            fingerprint.to_string(),
        ),
        (
            "precision",
            saved.precision.clone(),
            current.precision.clone(),
        ),
        ("KV type", saved.kv_type.clone(), current.kv_type.clone()),
        (
            "layer count",
            saved.layers.to_string(),
            current.layers.to_string(),
        ),
        (
            "KV head count",
            saved.kv_heads.to_string(),
            current.kv_heads.to_string(),
        ),
        (
            "head size",
            saved.head_dim.to_string(),
            current.head_dim.to_string(),
        ),
        (
            "vocabulary",
            saved.vocab.to_string(),
            current.vocab.to_string(),
        ),
    ];
    for (field, saved, current) in fields {
        if saved != current {
            return Err(SessionError::Mismatch {
                file: path.to_path_buf(),
                field,
                saved,
                current,
            });
        }
    }
    Ok(())
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// `n` little-endian words, read in blocks (a length checked against the
/// file's size before, so the allocation is what the file holds).
fn read_words(r: &mut impl Read, n: usize, mut each: impl FnMut([u8; 4])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut left = n * 4;
    while left > 0 {
        let take = left.min(buf.len());
        r.read_exact(&mut buf[..take])?;
        for w in buf[..take].chunks_exact(4) {
            each([w[0], w[1], w[2], w[3]]);
        }
        left -= take;
    }
    Ok(())
}

fn read_u32s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(n);
    read_words(r, n, |w| out.push(u32::from_le_bytes(w)))?;
    Ok(out)
}

fn read_f32s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n);
    read_words(r, n, |w| out.push(f32::from_le_bytes(w)))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::random::random_store;
    use crate::ModelConfig;

    fn model(seed: u64) -> Grok1 {
        let cfg = ModelConfig::tiny();
        Grok1::from_store(cfg.clone(), &random_store(&cfg, seed)).unwrap()
    }

    /// A session of 21 ids, 19 with keys and values, in a scratch directory.
    fn saved(dir: &Path, who: &SessionModel) -> (PathBuf, Vec<u32>, KvSnapshot) {
        let tokens: Vec<u32> = (0..21).map(|i| 5 + i * 7).collect();
        let per = who.floats_per_token().unwrap();
        let kv = KvSnapshot {
            tokens: tokens[..19].to_vec(),
            kv: (0..19 * per).map(|i| i as f32 * 0.25 - 3.0).collect(),
        };
        let path = dir.join("chat.session");
        save(
            &path,
            who,
            &tokens,
            &kv,
            serde_json::json!({"pending": " a"}),
        )
        .unwrap();
        (path, tokens, kv)
    }

    #[test]
    fn a_session_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let who = SessionModel::of(&model(1), Precision::F32, KvType::F32);
        let (path, tokens, kv) = saved(dir.path(), &who);
        let back = load(&path, &who).unwrap();
        assert_eq!(back.tokens, tokens);
        assert_eq!(back.kv, kv);
        assert_eq!(back.extra["pending"], " a");
        assert!(!dir.path().join("chat.session.tmp").exists());
    }

    #[test]
    fn another_model_or_precision_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let who = SessionModel::of(&model(1), Precision::F32, KvType::F32);
        let (path, _, _) = saved(dir.path(), &who);
        let other_weights = SessionModel::of(&model(2), Precision::F32, KvType::F32);
        assert_eq!(other_weights.name, who.name);
        let err = load(&path, &other_weights).unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::Mismatch {
                    field: "model fingerprint",
                    ..
                }
            ),
            "{err}"
        );
        let bf16 = SessionModel::of(&model(1), Precision::Bf16, KvType::F32);
        let err = load(&path, &bf16).unwrap_err().to_string();
        assert!(
            err.contains("its precision is f32, this run's is bf16"),
            "{err}"
        );
        let q8 = SessionModel::of(&model(1), Precision::F32, KvType::Q8_0);
        let err = load(&path, &q8).unwrap_err().to_string();
        assert!(err.contains("KV type") && err.contains("q8_0"), "{err}");
    }

    /// Files written before fingerprint version 2 (no version in their
    /// header, the byte-count fingerprint) resume on the whole model; a rank
    /// of a split model, which cannot make that fingerprint, says what to do.
    #[test]
    fn files_with_the_first_fingerprint_still_resume() {
        let dir = tempfile::tempdir().unwrap();
        let who = SessionModel::of(&model(1), Precision::F32, KvType::F32);
        let legacy = who.legacy_fingerprint.clone().expect("a whole model");
        assert_ne!(legacy, who.fingerprint);
        let mut header = serde_json::to_value(&who).unwrap();
        header["fingerprint"] = legacy.into();
        header
            .as_object_mut()
            .unwrap()
            .remove("fingerprint_version");
        let old: SessionModel = serde_json::from_value(header).unwrap();
        assert_eq!(old.fingerprint_version, 1);
        let (path, tokens, _) = saved(dir.path(), &old);
        assert_eq!(load(&path, &who).unwrap().tokens, tokens);
        let other = SessionModel::of(&model(2), Precision::F32, KvType::F32);
        assert!(matches!(
            load(&path, &other),
            Err(SessionError::Mismatch {
                field: "model fingerprint",
                ..
            })
        ));
        let split_rank = SessionModel {
            legacy_fingerprint: None,
            ..who.clone()
        };
        let err = load(&path, &split_rank).unwrap_err();
        assert!(matches!(err, SessionError::SplitLegacy { .. }), "{err}");
        assert!(err.to_string().contains("resume it once without mpirun"));
        let mut future = who.clone();
        future.fingerprint_version = 3;
        let (path, _, _) = saved(dir.path(), &future);
        let err = load(&path, &who).unwrap_err().to_string();
        assert!(
            err.contains("its fingerprint version is 3, this run's is 2"),
            "{err}"
        );
    }

    #[test]
    fn truncated_or_damaged_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let who = SessionModel::of(&model(1), Precision::F32, KvType::F32);
        let (path, _, _) = saved(dir.path(), &who);
        let bytes = std::fs::read(&path).unwrap();
        let damaged = dir.path().join("damaged.session");
        let try_bytes = |b: &[u8]| {
            std::fs::write(&damaged, b).unwrap();
            load(&damaged, &who).unwrap_err()
        };
        // Cut anywhere: never read as a session.
        for cut in [0, 5, 12, 15, 40, bytes.len() / 2, bytes.len() - 1] {
            let err = try_bytes(&bytes[..cut]);
            assert!(
                matches!(
                    err,
                    SessionError::Corrupt { .. } | SessionError::NotASession { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
        // One bit flipped in the keys and values: the checksum says so.
        let mut flipped = bytes.clone();
        let at = bytes.len() - 100;
        flipped[at] ^= 1;
        let err = try_bytes(&flipped).to_string();
        assert!(err.contains("checksum"), "{err}");
        // A header that claims more than the file holds.
        let field = b"\"kv_tokens\":19";
        let at = bytes.windows(field.len()).position(|w| w == field).unwrap();
        let mut claim = bytes.clone();
        claim[at + field.len() - 2..at + field.len()].copy_from_slice(b"20");
        let err = try_bytes(&claim).to_string();
        assert!(err.contains("its header describes"), "{err}");
        // A header length past any header.
        let mut long = bytes.clone();
        long[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = try_bytes(&long).to_string();
        assert!(err.contains("a header of 4294967295 bytes"), "{err}");
        let mut other = bytes.clone();
        other[..8].copy_from_slice(b"GGUF\0\0\0\0");
        assert!(matches!(
            try_bytes(&other),
            SessionError::NotASession { .. }
        ));
        let mut version = bytes;
        version[8] = 9;
        assert!(matches!(
            try_bytes(&version),
            SessionError::Version { found: 9, .. }
        ));
    }
}
