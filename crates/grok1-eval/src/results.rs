//! The per-item result file (`--out`, JSON Lines): one line per scored item,
//! written and flushed as each finishes, so that an interrupted run resumes
//! from it and loses at most the items in flight.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{EvalError, Result};

/// One scored item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub task: String,
    pub id: String,
    /// The text the model saw.
    pub prompt: String,
    /// What it produced: the completion, or for MMLU the chosen letter's
    /// continuation.
    pub output: String,
    /// The answer read from the output (None: none could be read).
    pub extracted: Option<String>,
    pub target: String,
    pub correct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// MMLU: the log-likelihood of each choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loglikelihoods: Option<Vec<f64>>,
    /// HumanEval: how the tests ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// The records already in `path` for `task`, by item id. A last line cut off
/// by an interrupted run is dropped (and rewritten when the file is opened
/// for appending); any other bad line is an error naming it.
pub fn load_existing(path: &Path, task: &str) -> Result<HashMap<String, Record>> {
    let mut out = HashMap::new();
    let text = match grok1::files::read_regular(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(EvalError::io(format!("reading {}", path.display()), e)),
    };
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[..=i],
        None => &text[..0],
    };
    let text = std::str::from_utf8(complete).map_err(|_| {
        EvalError::Results(format!(
            "{}: not UTF-8: is it a grok1 eval result file?",
            path.display()
        ))
    })?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_str(line).map_err(|e| {
            EvalError::Results(format!(
                "{} line {}: not a grok1 eval record ({e}); use another --out",
                path.display(),
                i + 1
            ))
        })?;
        if rec.task == task {
            out.insert(rec.id.clone(), rec);
        }
    }
    Ok(out)
}

/// Appends records, one flushed line each.
pub struct Writer {
    file: std::fs::File,
    path: PathBuf,
}

impl Writer {
    /// Opens `path` for appending, first dropping a trailing partial line.
    pub fn open(path: &Path) -> Result<Writer> {
        let io = |e| EvalError::io(format!("opening {}", path.display()), e);
        // The file is read back and appended to: a FIFO or device would block
        // or lose the results.
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => {
                return Err(EvalError::Results(format!(
                    "{}: {}, not a regular file: --out takes a results file (.jsonl)",
                    path.display(),
                    grok1::files::kind_of(&meta)
                )))
            }
            _ => {}
        }
        if let Ok(bytes) = grok1::files::read_regular(path) {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if keep != bytes.len() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io)?;
                f.set_len(keep as u64).map_err(io)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Writer {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| EvalError::Results(format!("encoding a record: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| EvalError::io(format!("writing {}", self.path.display()), e))
    }
}
