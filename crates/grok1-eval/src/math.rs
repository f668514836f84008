//! MATH, 4-shot, greedy: four worked problems in the style of Minerva's
//! prompt, the last `\boxed{...}` of the output compared with the last one of
//! the reference solution by [`crate::math_equiv::equivalent`].
//!
//! Data: Hendrycks's release, one JSON file per problem (`problem`, `level`,
//! `type`, `solution`) anywhere under `--data` (e.g. `MATH/test/algebra/1.json`).

use std::path::Path;

use serde_json::Value;

use crate::data::{data_error, files_under, read_text, string_field};
use crate::{Item, Query, Result};

pub const MAX_TOKENS: usize = 512;

pub const STOP: [&str; 2] = ["\nProblem:", "\n\n\n"];

/// (problem, solution ending in a boxed answer)
pub const EXEMPLARS: [(&str, &str); 4] = [
    (
        r"Find the domain of the expression $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.",
        r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$.",
    ),
    (
        r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
        r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) = (2)(12) = \boxed{24}.$",
    ),
    (
        r"Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",
        r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\cdot 12\cdot20=480$ pounds of weight. If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\cdot15\cdot n=30n$ pounds of weight. Equating this to 480 pounds, we can solve for $n$: $30n=480$, so $n=480/30=\boxed{16}$.",
    ),
    (
        r"If the system of equations $6x-4y=a$, $6y-9x=b$ has a solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\frac{a}{b},$ assuming $b$ is nonzero.",
        r"If we multiply the first equation by $-\frac{3}{2}$, we obtain $6y-9x=-\frac{3}{2}a$. Since we also know that $6y-9x=b$, we have $-\frac{3}{2}a=b$, so $\frac{a}{b}=\boxed{-\frac{2}{3}}$.",
    ),
];

pub fn prompt(problem: &str, shots: usize) -> String {
    let mut p = String::new();
    for (q, a) in EXEMPLARS.iter().take(shots) {
        p.push_str(&format!("Problem:\n{q}\n\nSolution:\n{a}\n\n"));
    }
    p.push_str(&format!("Problem:\n{}\n\nSolution:\n", problem.trim()));
    p
}

/// Reads every problem file under `dir` (or one file).
pub fn load(dir: &Path, shots: usize) -> Result<Vec<Item>> {
    crate::data::check_shots(dir, "MATH", EXEMPLARS.len(), shots)?;
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        files_under(dir, &|n| n.ends_with(".json"))?
    };
    if files.is_empty() {
        return Err(data_error(dir, "holds no MATH problem files (*.json)"));
    }
    let mut items = Vec::new();
    for file in files {
        let text = read_text(&file)?;
        let row = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(data_error(&file, "expected a JSON object")),
            Err(e) => {
                return Err(crate::data::line_error(
                    &file,
                    e.line(),
                    format!("invalid JSON: {e}"),
                ))
            }
        };
        let problem = string_field(&row, "problem", &file, 1)?;
        let solution = string_field(&row, "solution", &file, 1)?;
        let target = last_boxed(&solution)
            .ok_or_else(|| data_error(&file, "the solution has no \\boxed{...} answer"))?;
        let id = file
            .strip_prefix(dir)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&file)
            .display()
            .to_string();
        items.push(Item {
            id,
            query: Query::Generate {
                prompt: prompt(&problem, shots),
                max_tokens: MAX_TOKENS,
                stop: STOP.iter().map(|s| s.to_string()).collect(),
            },
            target,
            subject: None,
            code: None,
        });
    }
    Ok(items)
}

/// The contents of the last `\boxed{...}` (or `\fbox{...}`, or `\boxed x`)
/// with nested braces balanced.
pub fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|m| text.rfind(m).map(|i| (i, m.len())))
        .max_by_key(|&(i, _)| i)?;
    let rest = &text[start.0 + start.1..];
    if let Some(after) = rest.strip_prefix(' ') {
        // `\boxed 5`: up to the end of the math.
        let end = after.find(['$', '\n']).unwrap_or(after.len());
        let s = after[..end].trim();
        return (!s.is_empty()).then(|| s.to_string());
    }
    let body = rest.strip_prefix('{')?;
    crate::math_equiv::balanced(body).map(|len| body[..len].to_string())
}

/// The model's answer: its last boxed expression, else what follows "The final
/// answer is".
pub fn extract(output: &str) -> Option<String> {
    if let Some(b) = last_boxed(output) {
        return Some(b);
    }
    let (_, tail) = output.rsplit_once("final answer is")?;
    let tail = tail.trim_start();
    let s = match tail.strip_prefix('$') {
        Some(inner) => inner.split('$').next().unwrap_or(""),
        None => tail.split(['\n']).next().unwrap_or(""),
    };
    let s = s.trim().trim_end_matches('.').trim();
    (!s.is_empty()).then(|| s.to_string())
}

pub fn is_correct(output: &str, target: &str) -> (Option<String>, bool) {
    let extracted = extract(output);
    let correct = extracted
        .as_deref()
        .is_some_and(|e| crate::math_equiv::equivalent(e, target));
    (extracted, correct)
}
