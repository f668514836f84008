//! Every case of tests/fixtures/tokenizer/cases.jsonl, made with SentencePiece
//! itself from the official tokenizer.model: ids, pieces and decoded text must be
//! identical.

use std::path::PathBuf;

use grok1_tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    pieces: Vec<String>,
    decoded: String,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer")
        .join(name)
}

pub fn official() -> Tokenizer {
    Tokenizer::from_file(&fixture("tokenizer.model")).expect("official tokenizer.model")
}

#[test]
fn matches_sentencepiece_on_every_fixture_case() {
    let tok = official();
    let text = std::fs::read_to_string(fixture("cases.jsonl")).unwrap();
    let mut count = 0;
    for (n, line) in text.lines().enumerate() {
        let case: Case = serde_json::from_str(line).unwrap();
        let (ids, pieces) = tok.encode_with_pieces(&case.text);
        assert_eq!(ids, case.ids, "line {}: ids of {:?}", n + 1, case.text);
        assert_eq!(
            pieces,
            case.pieces,
            "line {}: pieces of {:?}",
            n + 1,
            case.text
        );
        assert_eq!(tok.encode(&case.text), case.ids);
        assert_eq!(
            tok.decode(&case.ids).unwrap(),
            case.decoded,
            "line {}: decode",
            n + 1
        );
        count += 1;
    }
    assert_eq!(count, 165);
}

#[test]
fn model_facts() {
    let tok = official();
    assert_eq!(tok.vocab_size(), 131072);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.unk_id()),
        (Some(1), Some(2), Some(0), 3)
    );
    assert_eq!(tok.id_to_piece(130089), Some("\u{2581}"));
    assert_eq!(tok.piece_to_id("<0x41>"), 69 + 0x41);
}

#[test]
fn the_embedded_model_is_the_official_file() {
    let file = std::fs::read(fixture("tokenizer.model")).unwrap();
    assert!(grok1_tokenizer::GROK1_MODEL == &file[..]);
    assert_eq!(Tokenizer::grok1().encode("Hello world"), vec![11770, 1135]);
}
