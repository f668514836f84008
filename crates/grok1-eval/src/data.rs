//! Reading the benchmarks' public files. Nothing is downloaded: the user points
//! `--data` at files they have, and every problem names the file and line.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{EvalError, Item, Result, Task};

/// Reads the items of `task` from `path` with `shots` few-shot examples.
pub fn load(task: Task, path: &Path, shots: usize) -> Result<Vec<Item>> {
    if !path.exists() {
        return Err(data_error(path, "no such file or directory"));
    }
    match task {
        Task::Gsm8k => crate::gsm8k::load(path, shots),
        Task::Mmlu => crate::mmlu::load(path, shots),
        Task::HumanEval => crate::humaneval::load(path, shots),
        Task::Math => crate::math::load(path, shots),
    }
}

pub(crate) fn data_error(path: &Path, message: impl Into<String>) -> EvalError {
    EvalError::Data {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub(crate) fn line_error(path: &Path, line: usize, message: impl Into<String>) -> EvalError {
    EvalError::DataLine {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

/// The bytes of a file, gunzipped when its name ends in `.gz`.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    // A FIFO or device in place of a data file would block or never end.
    let raw = grok1::files::read_regular(path)
        .map_err(|e| EvalError::io(format!("reading {}", path.display()), e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| data_error(path, format!("not a valid gzip file: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// A file's text; invalid UTF-8 is an error naming the line.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        line_error(path, line, "invalid UTF-8")
    })
}

/// The JSON objects of a JSON Lines file with their line numbers; blank lines
/// are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => rows.push((i + 1, map)),
            Ok(_) => return Err(line_error(path, i + 1, "expected a JSON object")),
            Err(e) => return Err(line_error(path, i + 1, format!("invalid JSON: {e}"))),
        }
    }
    if rows.is_empty() {
        return Err(data_error(path, "holds no records"));
    }
    Ok(rows)
}

/// A required string field of a JSON record.
pub fn string_field(
    map: &Map<String, Value>,
    key: &str,
    path: &Path,
    line: usize,
) -> Result<String> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(line_error(
            path,
            line,
            format!("field `{key}` is not a string"),
        )),
        None => Err(line_error(path, line, format!("field `{key}` is missing"))),
    }
}

/// Files under `dir` (recursively) whose names satisfy `keep`, sorted, so
/// runs and their result files list items in one order.
pub fn files_under(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| EvalError::io(format!("listing {}", d.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| EvalError::io(format!("listing {}", d.display()), e))?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(keep) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An error naming `path` when `--shots` asks for more exemplars than `kind` has.
pub(crate) fn check_shots(path: &Path, kind: &str, available: usize, shots: usize) -> Result<()> {
    if shots > available {
        return Err(data_error(
            path,
            format!("{kind} has {available} worked examples; --shots {shots} asks for more"),
        ));
    }
    Ok(())
}
