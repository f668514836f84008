//! Differential cases made with SentencePiece 0.2.0 itself
//! (tests/fixtures/tokenizer/extra/make_cases.py): random strings and id
//! sequences through the official model, and small models trained with other
//! normaliser settings (character map, whitespace rules, no byte fallback).

use std::path::PathBuf;

use grok1_tokenizer::Tokenizer;
use serde::Deserialize;

fn extra(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer/extra")
        .join(name)
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    pieces: Vec<String>,
    decoded: String,
}

fn check_model(model: &str, cases: &str) -> usize {
    let tok = if model == "official" {
        Tokenizer::from_file(&extra("../tokenizer.model")).unwrap()
    } else {
        Tokenizer::from_file(&extra(model)).unwrap()
    };
    let text = std::fs::read_to_string(extra(cases)).unwrap();
    let mut n = 0;
    for (line, json) in text.lines().enumerate() {
        let case: Case = serde_json::from_str(json).unwrap();
        let (ids, pieces) = tok.encode_with_pieces(&case.text);
        assert_eq!(
            ids,
            case.ids,
            "{cases}:{}: ids of {:?}",
            line + 1,
            case.text
        );
        assert_eq!(
            pieces,
            case.pieces,
            "{cases}:{}: pieces of {:?}",
            line + 1,
            case.text
        );
        assert_eq!(
            tok.decode(&case.ids).unwrap(),
            case.decoded,
            "{cases}:{}: decode of {:?}",
            line + 1,
            case.ids
        );
        n += 1;
    }
    n
}

#[test]
fn official_model_on_random_strings() {
    assert_eq!(check_model("official", "official_random.jsonl"), 3000);
}

#[test]
fn official_model_decodes_random_ids() {
    #[derive(Deserialize)]
    struct Decode {
        ids: Vec<u32>,
        decoded: String,
    }
    let tok = Tokenizer::from_file(&extra("../tokenizer.model")).unwrap();
    let text = std::fs::read_to_string(extra("official_decode.jsonl")).unwrap();
    for (line, json) in text.lines().enumerate() {
        let case: Decode = serde_json::from_str(json).unwrap();
        assert_eq!(
            tok.decode(&case.ids).unwrap(),
            case.decoded,
            "line {}: {:?}",
            line + 1,
            case.ids
        );
        // Streaming in single ids gives the same text.
        let mut stream = tok.stream_decoder();
        let mut text = String::new();
        for &id in &case.ids {
            text.push_str(&stream.push(&[id]).unwrap());
        }
        text.push_str(&stream.finish());
        assert_eq!(text, case.decoded, "line {}: streamed", line + 1);
    }
}

#[test]
fn nfkc_character_map() {
    assert_eq!(check_model("nfkc.model", "nfkc.jsonl"), 600);
}

#[test]
fn no_dummy_prefix() {
    assert_eq!(
        check_model("no_dummy_prefix.model", "no_dummy_prefix.jsonl"),
        600
    );
}

#[test]
fn extra_whitespace_removal_and_user_symbols() {
    assert_eq!(check_model("extra_ws.model", "extra_ws.jsonl"), 600);
}

#[test]
fn whitespace_as_suffix() {
    assert_eq!(check_model("suffix.model", "suffix.jsonl"), 600);
}

#[test]
fn without_byte_fallback() {
    assert_eq!(
        check_model("no_byte_fallback.model", "no_byte_fallback.jsonl"),
        600
    );
}
