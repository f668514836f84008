//! HumanEval, 0-shot, greedy: the model completes each function from its
//! signature and docstring, stopping at the sequences of the Codex paper (a new
//! top-level `class`, `def`, comment, `if` or `print`); pass@1 is the share of
//! completions whose program (prompt + completion + the task's tests +
//! `check(entry_point)`) runs to its end and exits 0 in the [`crate::sandbox`]
//! (a completion that exits early, `sys.exit(0)`, does not pass).

use std::path::Path;

use crate::data::{read_jsonl, string_field};
use crate::sandbox::{Outcome, Sandbox};
use crate::{CodeTask, Item, Query, Result};

pub const MAX_TOKENS: usize = 512;

pub const STOP: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// Reads `HumanEval.jsonl` or `HumanEval.jsonl.gz` (task_id, prompt, test,
/// entry_point).
pub fn load(path: &Path, shots: usize) -> Result<Vec<Item>> {
    if shots != 0 {
        return Err(crate::data::data_error(
            path,
            format!("HumanEval is 0-shot (xAI's protocol); --shots {shots} is not supported"),
        ));
    }
    let mut items = Vec::new();
    for (line, row) in read_jsonl(path)? {
        let task = CodeTask {
            prompt: string_field(&row, "prompt", path, line)?,
            test: string_field(&row, "test", path, line)?,
            entry_point: string_field(&row, "entry_point", path, line)?,
        };
        items.push(Item {
            id: string_field(&row, "task_id", path, line)?,
            query: Query::Generate {
                prompt: task.prompt.clone(),
                max_tokens: MAX_TOKENS,
                stop: STOP.iter().map(|s| s.to_string()).collect(),
            },
            target: task.entry_point.clone(),
            subject: None,
            code: Some(task),
        });
    }
    Ok(items)
}

/// Runs a completion's program; the outcome and whether it passed.
pub fn check(task: &CodeTask, completion: &str, sandbox: &Sandbox) -> Result<Outcome> {
    sandbox.run_python(&task.program(completion))
}
