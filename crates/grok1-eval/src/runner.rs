//! Asking every item with many requests in flight (so the engine batches
//! them), scoring each answer as it arrives, and writing it out at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::backend::Backend;
use crate::results::{load_existing, Record, Writer};
use crate::sandbox::Sandbox;
use crate::{gsm8k, humaneval, math, mmlu, EvalError, Item, Response, Result, Task};

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// Items to run: the first N (per subject for MMLU), or N drawn with `seed`.
    pub limit: Option<usize>,
    pub seed: Option<u64>,
    /// Result file to append to and resume from.
    pub out: Option<PathBuf>,
}

/// Where a run stands, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub correct: usize,
}

/// The items a run covers: all, or `limit` of them (per MMLU subject) in
/// their file order or drawn with `seed`.
pub fn select(items: Vec<Item>, limit: Option<usize>, seed: Option<u64>) -> Vec<Item> {
    let Some(limit) = limit else {
        return items;
    };
    let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(item.subject.clone()).or_default().push(i);
    }
    let mut keep = Vec::new();
    for (_, mut idx) in groups {
        if let Some(seed) = seed {
            idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        }
        idx.truncate(limit);
        keep.extend(idx);
    }
    keep.sort_unstable();
    let mut items: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| items[i].take()).collect()
}

/// Scores one answer.
pub fn score(
    task: Task,
    item: &Item,
    response: Response,
    sandbox: Option<&Sandbox>,
) -> Result<Record> {
    let mut record = Record {
        task: task.name().into(),
        id: item.id.clone(),
        prompt: item.query.prompt().to_string(),
        output: String::new(),
        extracted: None,
        target: item.target.clone(),
        correct: false,
        subject: item.subject.clone(),
        loglikelihoods: None,
        execution: None,
    };
    match (task, response) {
        (Task::Mmlu, Response::Loglikelihoods(lls)) => {
            let (letter, correct) = mmlu::choose(&lls, &item.target);
            record.output = letter
                .as_deref()
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            record.extracted = letter;
            record.correct = correct;
            record.loglikelihoods = Some(lls);
        }
        (Task::Gsm8k, Response::Text(text)) => {
            (record.extracted, record.correct) = gsm8k::is_correct(&text, &item.target);
            record.output = text;
        }
        (Task::Math, Response::Text(text)) => {
            (record.extracted, record.correct) = math::is_correct(&text, &item.target);
            record.output = text;
        }
        (Task::HumanEval, Response::Text(text)) => {
            let code = item.code.as_ref().ok_or_else(|| {
                EvalError::Results(format!("HumanEval item {} has no tests", item.id))
            })?;
            let sandbox = sandbox.ok_or_else(|| {
                EvalError::Sandbox("HumanEval needs the sandbox to run its tests".into())
            })?;
            let outcome = humaneval::check(code, &text, sandbox)?;
            record.correct = outcome.passed();
            record.execution = Some(outcome.describe());
            record.extracted = Some(text.clone());
            record.output = text;
        }
        (task, response) => {
            return Err(EvalError::Results(format!(
                "{task} cannot score a response of this kind: {response:?}"
            )))
        }
    }
    Ok(record)
}

/// Runs `items` (already selected) and returns one record per item, in item
/// order: those found in `options.out` from an earlier run are not asked again.
pub fn run(
    task: Task,
    items: &[Item],
    backend: &dyn Backend,
    sandbox: Option<&Sandbox>,
    options: &RunOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<Record>> {
    let mut ids = std::collections::HashSet::new();
    if let Some(dup) = items.iter().find(|i| !ids.insert(i.id.as_str())) {
        return Err(EvalError::Results(format!(
            "two items share the id {}: results could not be told apart",
            dup.id
        )));
    }
    let mut done: BTreeMap<usize, Record> = BTreeMap::new();
    let mut writer = None;
    if let Some(out) = &options.out {
        let existing = load_existing(out, task.name())?;
        for (i, item) in items.iter().enumerate() {
            if let Some(rec) = existing.get(&item.id) {
                if rec.prompt != item.query.prompt() || rec.target != item.target {
                    return Err(EvalError::Results(format!(
                        "{}: item {} was run with another prompt (other --shots or data?); use another --out",
                        out.display(),
                        item.id
                    )));
                }
                done.insert(i, rec.clone());
            }
        }
        writer = Some(Writer::open(out)?);
    }
    let todo: Vec<usize> = (0..items.len()).filter(|i| !done.contains_key(i)).collect();
    let total = items.len();
    let mut correct = done.values().filter(|r| r.correct).count();
    progress(Progress {
        done: done.len(),
        total,
        correct,
    });
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let threads = options.concurrency.max(1).min(todo.len().max(1));
    let mut first_error = None;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(usize, Result<Record>)>();
        for _ in 0..threads {
            let tx = tx.clone();
            let (todo, next, stop) = (&todo, &next, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = todo.get(k) else { break };
                    let item = &items[i];
                    let result = backend
                        .answer(item)
                        .and_then(|r| score(task, item, r, sandbox))
                        .map_err(|e| match e {
                            EvalError::Backend(m) => {
                                EvalError::Backend(format!("item {}: {m}", item.id))
                            }
                            e => e,
                        });
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, result) in rx {
            match result {
                Ok(rec) => {
                    if let Some(w) = writer.as_mut() {
                        if let Err(e) = w.write(&rec) {
                            stop.store(true, Ordering::SeqCst);
                            first_error.get_or_insert(e);
                        }
                    }
                    correct += usize::from(rec.correct);
                    done.insert(i, rec);
                    progress(Progress {
                        done: done.len(),
                        total,
                        correct,
                    });
                }
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(done.into_values().collect())
}
