//! GSM8k, 8-shot chain of thought, greedy: the exemplars of Wei et al.'s
//! chain-of-thought paper (the ones lm-evaluation-harness's `gsm8k_cot` uses),
//! the final number extracted ("The answer is N", else the last number) and
//! compared exactly with the number after `####` in the reference.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

use crate::data::{line_error, read_jsonl, string_field};
use crate::{Item, Query, Result};

/// Generation budget per question.
pub const MAX_TOKENS: usize = 256;

/// Where an answer ends: the next question, or a blank line.
pub const STOP: [&str; 2] = ["Q:", "\n\n"];

/// The chain-of-thought exemplars (question, worked answer).
pub const EXEMPLARS: [(&str, &str); 8] = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
];

/// The prompt: `shots` exemplars, then the question.
pub fn prompt(question: &str, shots: usize) -> String {
    let mut p = String::new();
    for (q, a) in EXEMPLARS.iter().take(shots) {
        p.push_str(&format!("Q: {q}\nA: {a}\n\n"));
    }
    p.push_str(&format!("Q: {}\nA:", question.trim()));
    p
}

/// Reads `test.jsonl` (`question`, `answer` ending in `#### N`).
pub fn load(path: &Path, shots: usize) -> Result<Vec<Item>> {
    crate::data::check_shots(path, "GSM8k", EXEMPLARS.len(), shots)?;
    let mut items = Vec::new();
    for (line, row) in read_jsonl(path)? {
        let question = string_field(&row, "question", path, line)?;
        let answer = string_field(&row, "answer", path, line)?;
        let target = reference_answer(&answer)
            .ok_or_else(|| line_error(path, line, "`answer` does not end in `#### <number>`"))?;
        items.push(Item {
            id: format!("line-{line}"),
            query: Query::Generate {
                prompt: prompt(&question, shots),
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

/// The number after the last `####` of a reference answer, normalised.
pub fn reference_answer(answer: &str) -> Option<String> {
    let (_, tail) = answer.rsplit_once("####")?;
    normalize_number(tail.trim())
}

/// A number as written in text (`-$1,234.50`), thousands separated by commas.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(-?)\s*\$?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?").expect("valid regex")
});

static ANSWER_IS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)the (?:final )?answer is").expect("valid regex"));

/// `-1,234.50` -> `-1234.5`; `007` -> `7`; `3.0` -> `3`.
pub fn normalize_number(text: &str) -> Option<String> {
    let c = NUMBER.captures(text)?;
    let sign = &c[1];
    let int = c[2].replace(',', "");
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = c.get(3).map_or("", |m| m.as_str().trim_end_matches('0'));
    let frac = if frac == "." { "" } else { frac };
    let sign = if sign == "-" && (int != "0" || !frac.is_empty()) {
        "-"
    } else {
        ""
    };
    Some(format!("{sign}{int}{frac}"))
}

/// The model's final number: after the last "The answer is", else the last
/// number in the text.
pub fn extract(output: &str) -> Option<String> {
    if let Some(m) = ANSWER_IS.find_iter(output).last() {
        if let Some(n) = normalize_number(&output[m.end()..]) {
            return Some(n);
        }
    }
    let last = NUMBER.find_iter(output).last()?;
    normalize_number(last.as_str())
}

/// Whether `output` answers `target` (a normalised number).
pub fn is_correct(output: &str, target: &str) -> (Option<String>, bool) {
    let extracted = extract(output);
    let correct = extracted.as_deref() == Some(target);
    (extracted, correct)
}
