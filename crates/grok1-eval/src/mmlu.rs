//! MMLU, 5-shot, the answer chosen by the log-likelihood of each choice letter
//! (" A" .. " D" after "Answer:"), as lm-evaluation-harness's `mmlu` tasks do;
//! the dev split of each subject gives its few-shot examples.
//!
//! Data: Hendrycks's release, one headerless CSV per subject and split
//! (`test/<subject>_test.csv`, `dev/<subject>_dev.csv`; columns question, A, B,
//! C, D, answer letter), found anywhere under `--data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::{data_error, files_under, line_error, read_bytes};
use crate::{Item, Query, Result};

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question: String,
    pub choices: [String; 4],
    /// 0..4
    pub answer: usize,
    /// Where the question starts in its file.
    pub line: usize,
}

/// The subject groups MMLU reports (Hendrycks et al.'s categories).
pub const GROUPS: [(&str, &[&str]); 4] = [
    (
        "STEM",
        &[
            "abstract_algebra",
            "anatomy",
            "astronomy",
            "college_biology",
            "college_chemistry",
            "college_computer_science",
            "college_mathematics",
            "college_physics",
            "computer_security",
            "conceptual_physics",
            "electrical_engineering",
            "elementary_mathematics",
            "high_school_biology",
            "high_school_chemistry",
            "high_school_computer_science",
            "high_school_mathematics",
            "high_school_physics",
            "high_school_statistics",
            "machine_learning",
        ],
    ),
    (
        "humanities",
        &[
            "formal_logic",
            "high_school_european_history",
            "high_school_us_history",
            "high_school_world_history",
            "international_law",
            "jurisprudence",
            "logical_fallacies",
            "moral_disputes",
            "moral_scenarios",
            "philosophy",
            "prehistory",
            "professional_law",
            "world_religions",
        ],
    ),
    (
        "social sciences",
        &[
            "econometrics",
            "high_school_geography",
            "high_school_government_and_politics",
            "high_school_macroeconomics",
            "high_school_microeconomics",
            "high_school_psychology",
            "human_sexuality",
            "professional_psychology",
            "public_relations",
            "security_studies",
            "sociology",
            "us_foreign_policy",
        ],
    ),
    (
        "other",
        &[
            "business_ethics",
            "clinical_knowledge",
            "college_medicine",
            "global_facts",
            "human_aging",
            "management",
            "marketing",
            "medical_genetics",
            "miscellaneous",
            "nutrition",
            "professional_accounting",
            "professional_medicine",
            "virology",
        ],
    ),
];

/// The group a subject is reported under; subjects outside MMLU's 57 are
/// "other".
pub fn group_of(subject: &str) -> &'static str {
    GROUPS
        .iter()
        .find(|(_, subjects)| subjects.contains(&subject))
        .map_or("other", |(g, _)| g)
}

/// Reads one subject's CSV file.
pub fn read_csv(path: &Path) -> Result<Vec<Question>> {
    let bytes = read_bytes(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&bytes[..]);
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        // Where the next record starts (a quoted field may span lines).
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(line_error(path, line, format!("not valid CSV: {e}"))),
        }
        if record.len() != 6 {
            return Err(line_error(
                path,
                line,
                format!(
                    "expected 6 columns (question, A, B, C, D, answer), found {}",
                    record.len()
                ),
            ));
        }
        let letter = record[5].trim();
        let answer = LETTERS.iter().position(|l| *l == letter).ok_or_else(|| {
            line_error(
                path,
                line,
                format!("answer `{letter}` is not one of A, B, C, D"),
            )
        })?;
        out.push(Question {
            question: record[0].to_string(),
            choices: std::array::from_fn(|i| record[i + 1].to_string()),
            answer,
            line,
        });
    }
    Ok(out)
}

/// "high_school_us_history" -> "high school us history".
fn subject_words(subject: &str) -> String {
    subject.replace('_', " ")
}

fn format_question(q: &Question) -> String {
    let mut s = q.question.trim().to_string();
    for (letter, choice) in LETTERS.iter().zip(&q.choices) {
        s.push_str(&format!("\n{letter}. {choice}"));
    }
    s.push_str("\nAnswer:");
    s
}

/// The context: the subject header, the few-shot examples with their answers,
/// then the question up to "Answer:".
pub fn prompt(subject: &str, examples: &[Question], question: &Question) -> String {
    let mut p = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject_words(subject)
    );
    for ex in examples {
        p.push_str(&format_question(ex));
        p.push_str(&format!(" {}\n\n", LETTERS[ex.answer]));
    }
    p.push_str(&format_question(question));
    p
}

/// The test files under `dir` by subject, with their dev files.
fn subjects(dir: &Path) -> Result<BTreeMap<String, (PathBuf, Option<PathBuf>)>> {
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        files_under(dir, &|n| n.ends_with("_test.csv"))?
    };
    let search = if dir.is_file() {
        dir.parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf()
    } else {
        dir.to_path_buf()
    };
    let devs = files_under(&search, &|n| n.ends_with("_dev.csv"))?;
    let mut out = BTreeMap::new();
    for test in files {
        let name = test
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(subject) = name.strip_suffix("_test.csv") else {
            return Err(data_error(
                &test,
                "an MMLU test file is named <subject>_test.csv",
            ));
        };
        let dev_name = format!("{subject}_dev.csv");
        let dev = devs
            .iter()
            .find(|d| d.file_name().and_then(|n| n.to_str()) == Some(dev_name.as_str()))
            .cloned();
        out.insert(subject.to_string(), (test, dev));
    }
    if out.is_empty() {
        return Err(data_error(
            dir,
            "holds no MMLU test files (<subject>_test.csv, as in Hendrycks's data/test/)",
        ));
    }
    Ok(out)
}

/// Reads every subject's test questions under `dir` (or one `_test.csv` file).
pub fn load(dir: &Path, shots: usize) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (subject, (test, dev)) in subjects(dir)? {
        let examples = match (&dev, shots) {
            (_, 0) => Vec::new(),
            (Some(dev), _) => {
                let rows = read_csv(dev)?;
                if rows.len() < shots {
                    return Err(data_error(
                        dev,
                        format!("holds {} examples; --shots {shots} needs more", rows.len()),
                    ));
                }
                rows[..shots].to_vec()
            }
            (None, _) => {
                return Err(data_error(
                    &test,
                    format!(
                        "{shots}-shot needs the dev split: no {subject}_dev.csv found under {}",
                        dir.display()
                    ),
                ))
            }
        };
        for (row, q) in read_csv(&test)?.into_iter().enumerate() {
            items.push(Item {
                // The row's index, as lm-evaluation-harness numbers documents.
                id: format!("{subject}/{row}"),
                query: Query::Choice {
                    context: prompt(&subject, &examples, &q),
                    continuations: LETTERS.iter().map(|l| format!(" {l}")).collect(),
                },
                target: LETTERS[q.answer].to_string(),
                subject: Some(subject.clone()),
                code: None,
            });
        }
    }
    Ok(items)
}

/// The letter with the highest log-likelihood (the first on ties), and whether
/// it is the target.
pub fn choose(loglikelihoods: &[f64], target: &str) -> (Option<String>, bool) {
    let best = loglikelihoods
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .fold(None::<(usize, f64)>, |best, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        });
    let letter = best
        .and_then(|(i, _)| LETTERS.get(i))
        .map(|l| l.to_string());
    let correct = letter.as_deref() == Some(target);
    (letter, correct)
}
