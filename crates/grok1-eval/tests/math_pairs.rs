//! MATH answer equivalence on the committed answer pairs
//! (tests/eval/make_math_pairs.py): every verdict as a careful grader gives it,
//! both ways round. tests/eval/math_verify_compare.py compares the same pairs
//! with the math-verify package.

use std::path::Path;

use grok1_eval::math_equiv::equivalent;
use serde_json::Value;

#[test]
fn every_pair_gets_the_expected_verdict_both_ways() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval/math_pairs.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let mut wrong = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let (gold, pred) = (v["gold"].as_str().unwrap(), v["pred"].as_str().unwrap());
        let expected = v["expected"].as_bool().unwrap();
        for (a, b) in [(gold, pred), (pred, gold)] {
            n += 1;
            if equivalent(a, b) != expected {
                wrong.push(format!("{a:?} vs {b:?}: expected {expected}"));
            }
        }
    }
    assert!(n >= 400, "{n} comparisons");
    assert!(
        wrong.is_empty(),
        "{} of {n} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
