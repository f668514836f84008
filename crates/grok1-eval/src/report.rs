//! The final table: accuracy and its standard error per task (and per MMLU
//! subject group), averaged over items as lm-evaluation-harness does.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::mmlu;
use crate::results::Record;

/// Accuracy over a set of items.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Score {
    pub name: String,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Standard error of the mean: sqrt(p(1-p)/(n-1)).
    pub stderr: f64,
}

impl Score {
    pub fn of<'a>(name: &str, records: impl IntoIterator<Item = &'a Record>) -> Score {
        let (mut n, mut correct) = (0usize, 0usize);
        for r in records {
            n += 1;
            correct += usize::from(r.correct);
        }
        let accuracy = if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        };
        let stderr = if n > 1 {
            (accuracy * (1.0 - accuracy) / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Score {
            name: name.to_string(),
            n,
            correct,
            accuracy,
            stderr,
        }
    }
}

/// The task's score and, for MMLU, one per subject group.
pub fn scores(task: &str, records: &[Record]) -> Vec<Score> {
    let mut out = vec![Score::of(task, records)];
    if task == crate::Task::Mmlu.name() {
        let mut groups: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in records {
            let g = mmlu::group_of(r.subject.as_deref().unwrap_or(""));
            groups.entry(g).or_default().push(r);
        }
        for (g, rs) in groups {
            out.push(Score::of(&format!("  {g}"), rs));
        }
    }
    out
}

/// A plain-text table of scores.
pub fn table(scores: &[Score]) -> String {
    let width = scores
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut t = format!(
        "{:<width$}  {:>6}  {:>8}  {:>7}\n",
        "task", "n", "accuracy", "stderr"
    );
    for s in scores {
        t.push_str(&format!(
            "{:<width$}  {:>6}  {:>7.2}%  {:>6.2}%\n",
            s.name,
            s.n,
            100.0 * s.accuracy,
            100.0 * s.stderr
        ));
    }
    t
}
