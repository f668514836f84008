//! `grok1 tokenize` and `grok1 detokenize`: JSON lines in, JSON lines out. A bad
//! line gets an error line naming its number; the rest are still processed and
//! the exit status says whether any line failed.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::json;

use crate::args::TokenizerArgs;
use crate::model_source;

// Other fields are ignored, so lines that carry more (ids to compare, ids of a
// request) can be fed as they are.
#[derive(Deserialize)]
struct TextLine {
    text: String,
}

#[derive(Deserialize)]
struct IdsLine {
    ids: Vec<u32>,
}

/// Runs `handle` on each input line; writes its JSON answer or an error line.
fn each_line(
    mut handle: impl FnMut(&str) -> Result<serde_json::Value, String>,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    let mut buf = Vec::new();
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut number = 0usize;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let answer = match std::str::from_utf8(line) {
            Ok(text) => handle(text),
            Err(e) => Err(format!("not valid UTF-8 (byte {})", e.valid_up_to())),
        };
        match answer {
            Ok(value) => serde_json::to_writer(&mut out, &value)?,
            Err(message) => {
                failed += 1;
                serde_json::to_writer(&mut out, &json!({ "error": message, "line": number }))?;
            }
        }
        out.write_all(b"\n")?;
        // Answer each line as it comes, for callers that talk over a pipe.
        if input.buffer().is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("grok1: {failed} of {number} lines failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tokenize(args: TokenizerArgs) -> anyhow::Result<ExitCode> {
    let tokenizer = model_source::tokenizer(args.tokenizer.as_deref())?;
    each_line(|line| {
        let input: TextLine = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
        let (ids, pieces) = tokenizer.encode_with_pieces(&input.text);
        Ok(json!({ "ids": ids, "pieces": pieces }))
    })
}

pub fn detokenize(args: TokenizerArgs) -> anyhow::Result<ExitCode> {
    let tokenizer = model_source::tokenizer(args.tokenizer.as_deref())?;
    each_line(|line| {
        let input: IdsLine = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
        let text = tokenizer.decode(&input.ids).map_err(|e| e.to_string())?;
        Ok(json!({ "text": text }))
    })
}
