//! Importance matrices (llama.cpp's "imatrix"): for each weight matrix, the
//! sum over calibration tokens of each input column's squared activation,
//! and how many tokens were summed (per expert for the merged expert
//! tensors). Quantisers weigh each column's error by the mean, so that
//! columns that meet large activations keep more precision.
//!
//! Read in both of llama.cpp's formats: the GGUF one (`general.type =
//! imatrix`; tensors `<name>.in_sum2` `[cols, matrices]` and `<name>.counts`
//! `[1, matrices]`; `imatrix.datasets`, `imatrix.chunk_count`,
//! `imatrix.chunk_size`), which is also the one written, and the legacy
//! `.dat` (a count of entries, each a name, a call count and the mean times
//! the call count, then optionally the chunk count and the dataset name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{InputSquares, Trace};
use crate::progress::Progress;
use crate::quant::GgmlType;
use crate::weights::gguf::{GgufFile, MetaValue};
use crate::{ForwardOptions, Grok1, LogitsRows, ModelError, Precision, RowLogits, SequenceInput};

#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// A GGUF imatrix that the GGUF reader refuses (it names the file).
    #[error(transparent)]
    Gguf(#[from] crate::weights::WeightError),
}

/// One weight tensor's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// Columns of each matrix (its rows' length).
    pub cols: usize,
    /// `cols` sums of squared activations per matrix, matrix after matrix.
    pub sums: Vec<f32>,
    /// Tokens summed, per matrix.
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    pub fn matrices(&self) -> usize {
        self.counts.len()
    }

    /// The mean squared activation of each column of matrix `m` (all ones
    /// for a matrix that saw no token, as llama.cpp reads it).
    pub fn importance(&self, m: usize) -> Vec<f32> {
        let sums = &self.sums[m * self.cols..(m + 1) * self.cols];
        match self.counts[m] {
            c if c > 0.0 => sums.iter().map(|s| s / c).collect(),
            _ => vec![1.0; self.cols],
        }
    }
}

/// An importance matrix: entries by GGUF tensor name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// The calibration texts' names.
    pub datasets: Vec<String>,
    /// Chunks of `chunk_size` tokens evaluated.
    pub chunk_count: u32,
    pub chunk_size: u32,
}

/// Where a file's bytes run out or disagree, for the legacy reader.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn error(&self, reason: String) -> ImatrixError {
        ImatrixError::Format {
            path: self.path.to_path_buf(),
            reason: format!("byte {}: {reason}", self.at),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], ImatrixError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.error(format!(
                "the file ends inside {what} ({} bytes left, {n} needed)",
                self.bytes.len() - self.at
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn i32(&mut self, what: &str) -> Result<i32, ImatrixError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative count no larger than the bytes left could hold at
    /// `unit` bytes each.
    fn count(&mut self, what: &str, unit: usize) -> Result<usize, ImatrixError> {
        let at = self.at;
        let n = self.i32(what)?;
        let left = self.bytes.len() - self.at;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(unit) <= left => Ok(n),
            _ => Err(ImatrixError::Format {
                path: self.path.to_path_buf(),
                reason: format!(
                    "byte {at}: {what} is {n}, which the {left} bytes left cannot hold"
                ),
            }),
        }
    }
}

/// Runs each chunk of `chunks` through `model` as a fresh sequence and
/// collects the squared inputs of every layer's matrix products (the
/// attention projections and each expert's three; not the output
/// projection, as llama-imatrix leaves it out by default).
pub fn collect(
    model: &Grok1,
    chunks: &[&[u32]],
    precision: Precision,
    dataset: &str,
    progress: &dyn Progress,
) -> Result<Imatrix, ModelError> {
    let mut trace = Trace {
        input_squares: Some(InputSquares::default()),
        ..Trace::default()
    };
    progress.start("imatrix", chunks.len() as u64);
    for (i, chunk) in chunks.iter().enumerate() {
        let mut cache = model.new_cache(chunk.len(), 1);
        let seq = cache.add_sequence();
        trace.hidden.clear();
        trace.router.clear();
        model.forward(
            &mut cache,
            &[SequenceInput { seq, tokens: chunk }],
            &ForwardOptions {
                precision,
                logits: LogitsRows::PerInput(vec![RowLogits::None]),
            },
            Some(&mut trace),
        )?;
        progress.set(i as u64 + 1);
    }
    progress.finish();
    let squares = trace.input_squares.unwrap_or_default();
    Ok(Imatrix {
        entries: squares
            .entries
            .into_iter()
            .map(|(name, s)| {
                let entry = ImatrixEntry {
                    cols: s.cols,
                    sums: s.sums.iter().map(|&v| v as f32).collect(),
                    counts: s.rows.iter().map(|&r| r as f32).collect(),
                };
                (name, entry)
            })
            .collect(),
        datasets: vec![dataset.to_string()],
        chunk_count: chunks.len() as u32,
        chunk_size: chunks.iter().map(|c| c.len()).max().unwrap_or(0) as u32,
    })
}

impl Imatrix {
    /// Reads a GGUF or legacy `.dat` imatrix (told apart by the GGUF magic).
    /// Every value must be finite and not negative (sums of squares).
    pub fn open(path: &Path) -> Result<Imatrix, ImatrixError> {
        let io = |source| ImatrixError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut magic = [0u8; 4];
        let n = std::io::Read::read(&mut std::fs::File::open(path).map_err(io)?, &mut magic)
            .map_err(io)?;
        let imatrix = if n == 4 && &magic == b"GGUF" {
            Self::open_gguf(path)?
        } else {
            Self::read_legacy(path, &std::fs::read(path).map_err(io)?)?
        };
        for (name, e) in &imatrix.entries {
            let bad = e
                .sums
                .iter()
                .chain(&e.counts)
                .find(|v| !(v.is_finite() && **v >= 0.0));
            if let Some(v) = bad {
                return Err(ImatrixError::Format {
                    path: path.to_path_buf(),
                    reason: format!(
                        "`{name}` holds {v}: importance must be finite and not negative"
                    ),
                });
            }
        }
        Ok(imatrix)
    }

    fn open_gguf(path: &Path) -> Result<Imatrix, ImatrixError> {
        let format = |reason: String| ImatrixError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let file = GgufFile::open(path)?;
        match file.get("general.type").and_then(MetaValue::as_str) {
            Some("imatrix") => {}
            other => {
                return Err(format(format!(
                    "a GGUF of general.type {other:?}, not an importance matrix (\"imatrix\")"
                )))
            }
        }
        let uint = |key: &str| -> Result<u32, ImatrixError> {
            file.get(key)
                .and_then(MetaValue::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| format(format!("metadata `{key}` is missing or not a u32")))
        };
        let datasets = match file.get("imatrix.datasets").and_then(MetaValue::as_array) {
            Some(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format("`imatrix.datasets` holds a non-string".into()))?,
            None => return Err(format("metadata `imatrix.datasets` is missing".into())),
        };
        let mut imatrix = Imatrix {
            entries: BTreeMap::new(),
            datasets,
            chunk_count: uint("imatrix.chunk_count")?,
            chunk_size: uint("imatrix.chunk_size")?,
        };
        let floats = |t: &crate::weights::gguf::TensorInfo| -> Result<Vec<f32>, ImatrixError> {
            if t.dtype != GgmlType::F32 {
                return Err(format(format!("`{}` is {}, not F32", t.name, t.dtype)));
            }
            Ok(file
                .data(t)
                .bytes()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        for sums in &file.tensors {
            let Some(name) = sums.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let counts_name = format!("{name}.counts");
            let counts = file
                .tensors
                .iter()
                .find(|t| t.name == counts_name)
                .ok_or_else(|| format(format!("`{}` has no `{counts_name}`", sums.name)))?;
            let cols = sums.ne[0] as usize;
            let matrices = sums.ne[1..].iter().product::<u64>() as usize;
            let (sums_v, counts_v) = (floats(sums)?, floats(counts)?);
            if counts_v.len() != matrices {
                return Err(format(format!(
                    "`{counts_name}` holds {} counts for the {matrices} matrices of `{}`",
                    counts_v.len(),
                    sums.name
                )));
            }
            imatrix.entries.insert(
                name.to_string(),
                ImatrixEntry {
                    cols,
                    sums: sums_v,
                    counts: counts_v,
                },
            );
        }
        if let Some(t) = file.tensors.iter().find(|t| {
            t.name
                .strip_suffix(".counts")
                .is_some_and(|n| !imatrix.entries.contains_key(n))
        }) {
            return Err(format(format!("`{}` has no `.in_sum2` beside it", t.name)));
        }
        if imatrix.entries.is_empty() {
            return Err(format(
                "no `.in_sum2` tensor: an importance matrix without entries".into(),
            ));
        }
        Ok(imatrix)
    }

    fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Imatrix, ImatrixError> {
        let mut r = Reader { bytes, at: 0, path };
        let n = r.count("the entry count", 12)?;
        if n == 0 {
            return Err(r.error("no entries: not an importance matrix".into()));
        }
        let mut imatrix = Imatrix::default();
        for i in 0..n {
            let len = r.count(&format!("the name length of entry {i}"), 1)?;
            let name = String::from_utf8(r.take(len, "a name")?.to_vec())
                .map_err(|_| r.error(format!("the name of entry {i} is not UTF-8")))?;
            let ncall = r.i32(&format!("the call count of `{name}`"))?;
            let nval = r.count(&format!("the value count of `{name}`"), 4)?;
            if nval == 0 {
                return Err(r.error(format!("`{name}` has no values")));
            }
            let values: Vec<f32> = r
                .take(4 * nval, &format!("the values of `{name}`"))?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            // The legacy file stores mean * ncall: sums over ncall "tokens",
            // taken as they are when ncall is not positive (as llama.cpp
            // does); one vector for all experts of an expert tensor.
            let entry = ImatrixEntry {
                cols: nval,
                sums: values,
                counts: vec![ncall.max(1) as f32],
            };
            if imatrix.entries.insert(name.clone(), entry).is_some() {
                return Err(r.error(format!("`{name}` appears twice")));
            }
        }
        if r.at < bytes.len() {
            imatrix.chunk_count = r.i32("the chunk count")?.max(0) as u32;
            let len = r.count("the dataset name length", 1)?;
            let name = String::from_utf8_lossy(r.take(len, "the dataset name")?).into_owned();
            imatrix.datasets.push(name);
        }
        if r.at != bytes.len() {
            return Err(r.error(format!("{} bytes after the last field", bytes.len() - r.at)));
        }
        Ok(imatrix)
    }

    /// The importance of each column of matrix `matrix` of tensor `tensor`,
    /// whose rows hold `cols` values; `None` when the imatrix has no entry
    /// for it. An entry of another shape is an error naming both.
    pub fn importance(
        &self,
        tensor: &str,
        matrix: usize,
        matrices: usize,
        cols: usize,
    ) -> Result<Option<Vec<f32>>, String> {
        let Some(e) = self.entries.get(tensor) else {
            return Ok(None);
        };
        // A legacy entry of an expert tensor is one vector over all experts.
        let (per_matrix, m) = if e.matrices() == matrices {
            (e.cols, matrix)
        } else if e.matrices() == 1 && e.cols == cols * matrices {
            (cols, 0)
        } else {
            return Err(format!(
                "the importance matrix's `{tensor}` holds {} matrices of {} columns; the model's has {matrices} of {cols}",
                e.matrices(),
                e.cols
            ));
        };
        if per_matrix != cols {
            return Err(format!(
                "the importance matrix's `{tensor}` has {} columns; the model's rows have {cols}",
                e.cols
            ));
        }
        if e.matrices() == matrices {
            return Ok(Some(e.importance(m)));
        }
        let all = e.importance(0);
        Ok(Some(all[matrix * cols..(matrix + 1) * cols].to_vec()))
    }

    /// Writes the GGUF format llama-quantize reads.
    pub fn write_gguf(&self, path: &Path) -> Result<(), ImatrixError> {
        use crate::convert::{gguf_kv, gguf_string, Kv, ALIGN};
        let kv = [
            ("general.type", Kv::Str("imatrix".into())),
            ("imatrix.datasets", Kv::Strs(self.datasets.clone())),
            ("imatrix.chunk_count", Kv::U32(self.chunk_count)),
            ("imatrix.chunk_size", Kv::U32(self.chunk_size)),
        ];
        // (name, ne, values) of every tensor, in name order.
        let mut tensors: Vec<(String, [u64; 2], &[f32])> = Vec::new();
        for (name, e) in &self.entries {
            let m = e.matrices() as u64;
            tensors.push((format!("{name}.in_sum2"), [e.cols as u64, m], &e.sums));
            tensors.push((format!("{name}.counts"), [1, m], &e.counts));
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in &kv {
            gguf_kv(&mut out, k, v);
        }
        let mut offset = 0u64;
        for (name, ne, values) in &tensors {
            gguf_string(&mut out, name);
            out.extend(2u32.to_le_bytes());
            out.extend(ne[0].to_le_bytes());
            out.extend(ne[1].to_le_bytes());
            out.extend(GgmlType::F32.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + 4 * values.len() as u64).div_ceil(ALIGN) * ALIGN;
        }
        out.resize(
            (out.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize,
            0,
        );
        for (_, _, values) in &tensors {
            out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            out.resize(
                (out.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize,
                0,
            );
        }
        crate::files::write_output(path, |w| w.write_all(&out)).map_err(|source| ImatrixError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.attn_q.weight".to_string(),
            ImatrixEntry {
                cols: 4,
                sums: vec![1.0, 2.0, 3.0, 4.0],
                counts: vec![2.0],
            },
        );
        entries.insert(
            "blk.0.ffn_down_exps.weight".to_string(),
            ImatrixEntry {
                cols: 2,
                sums: vec![1.0, 2.0, 5.0, 7.0, 9.0, 9.0],
                counts: vec![1.0, 0.0, 3.0],
            },
        );
        Imatrix {
            entries,
            datasets: vec!["calibration.txt".into()],
            chunk_count: 3,
            chunk_size: 512,
        }
    }

    #[test]
    fn gguf_round_trips_and_means_per_matrix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.imatrix.gguf");
        let m = sample();
        m.write_gguf(&path).unwrap();
        let back = Imatrix::open(&path).unwrap();
        assert_eq!(back, m);
        let imp = |t, i, n, c| back.importance(t, i, n, c).unwrap().unwrap();
        assert_eq!(imp("blk.0.attn_q.weight", 0, 1, 4), [0.5, 1.0, 1.5, 2.0]);
        // An expert that saw no token weighs all columns alike.
        assert_eq!(imp("blk.0.ffn_down_exps.weight", 1, 3, 2), [1.0, 1.0]);
        assert_eq!(imp("blk.0.ffn_down_exps.weight", 2, 3, 2), [3.0, 3.0]);
        assert_eq!(back.importance("output.weight", 0, 1, 4), Ok(None));
        let err = back.importance("blk.0.attn_q.weight", 0, 1, 8).unwrap_err();
        assert!(
            err.contains("has 4 columns; the model's rows have 8"),
            "{err}"
        );
    }

    fn legacy_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(1i32.to_le_bytes());
        let name = b"blk.0.ffn_up_exps.weight";
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name);
        b.extend(4i32.to_le_bytes()); // ncall
        b.extend(4i32.to_le_bytes()); // nval: 2 experts of 2 columns
        for v in [4.0f32, 8.0, 12.0, 16.0] {
            b.extend(v.to_le_bytes());
        }
        b.extend(7i32.to_le_bytes());
        b.extend(5i32.to_le_bytes());
        b.extend(b"a.txt");
        b
    }

    #[test]
    fn legacy_files_read_as_means() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imatrix.dat");
        std::fs::write(&path, legacy_bytes()).unwrap();
        let m = Imatrix::open(&path).unwrap();
        assert_eq!(m.chunk_count, 7);
        assert_eq!(m.datasets, ["a.txt"]);
        let imp = m
            .importance("blk.0.ffn_up_exps.weight", 1, 2, 2)
            .unwrap()
            .unwrap();
        assert_eq!(imp, [3.0, 4.0]);
    }

    #[test]
    fn malformed_files_are_errors_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = legacy_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "the file ends inside the entry count"),
            (0i32.to_le_bytes().to_vec(), "no entries"),
            (
                good[..30].to_vec(),
                "the name length of entry 0 is 24, which the 22 bytes left cannot hold",
            ),
            (
                good[..46].to_vec(),
                "the value count of `blk.0.ffn_up_exps.weight` is 4, which the 6 bytes left cannot hold",
            ),
            (good[..good.len() - 2].to_vec(), "the dataset name"),
            ([good.clone(), vec![0]].concat(), "1 bytes after the last field"),
            ((-5i32).to_le_bytes().to_vec(), "the entry count is -5"),
            (
                [1i32.to_le_bytes(), i32::MAX.to_le_bytes(), [0; 4], [0; 4]].concat(),
                "the name length of entry 0 is 2147483647, which the 8 bytes left cannot hold",
            ),
        ];
        for (bytes, want) in cases {
            let path = dir.path().join("bad.dat");
            std::fs::write(&path, &bytes).unwrap();
            let err = Imatrix::open(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(err.contains("bad.dat"), "{err}");
        }
        let mut nan = legacy_bytes();
        let at = nan.len() - 4 * 4 - 13;
        nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let path = dir.path().join("nan.dat");
        std::fs::write(&path, &nan).unwrap();
        let err = Imatrix::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("`blk.0.ffn_up_exps.weight` holds NaN: importance must be finite"),
            "{err}"
        );
        // A GGUF that is not an imatrix, and a truncated GGUF imatrix.
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/gguf/tiny-moe-q8_0.gguf"
        );
        let err = Imatrix::open(Path::new(model)).unwrap_err().to_string();
        assert!(err.contains("not an importance matrix"), "{err}");
        let path = dir.path().join("m.gguf");
        sample().write_gguf(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        let err = Imatrix::open(&path).unwrap_err().to_string();
        assert!(err.contains("m.gguf"), "{err}");
    }
}
