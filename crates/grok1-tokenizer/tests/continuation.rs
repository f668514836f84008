//! Continuations decoded in context: for every split of real text (the
//! fixtures' multilingual, code and whitespace cases, through the official
//! model and the models trained with other normaliser settings), the text of
//! the prompt ids plus the text the continuation adds, whole or streamed in
//! chunks, is the decoding of all ids together. Decoding a continuation as if
//! it started a document drops the leading space of its first word, which
//! turned a HumanEval body's indentation into an IndentationError.

use std::path::PathBuf;

use grok1_tokenizer::Tokenizer;
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizer")
        .join(name)
}

fn texts(cases: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(cases))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// What the decoder releases for `prompt` before any continuation: the text of
/// the prompt without bytes that do not yet make a character.
fn released(tok: &Tokenizer, prompt: &[u32]) -> String {
    tok.stream_decoder().push(prompt).unwrap()
}

/// Checks every split of `ids`; returns how many splits ended inside a
/// character (bytes held back into the continuation).
fn check_all_splits(tok: &Tokenizer, ids: &[u32], chunk_seed: usize) -> usize {
    let whole = tok.decode(ids).unwrap();
    let mut mid_char = 0;
    for k in 0..=ids.len() {
        let (prompt, rest) = ids.split_at(k);
        let prompt_text = released(tok, prompt);
        let completion = tok.decode_after(prompt, rest).unwrap();
        assert_eq!(
            format!("{prompt_text}{completion}"),
            whole,
            "split at {k} of {ids:?}"
        );
        let mut stream = tok.stream_decoder_after(prompt);
        let mut streamed = String::new();
        let size = 1 + (k + chunk_seed) % 3;
        for chunk in rest.chunks(size) {
            streamed.push_str(&stream.push(chunk).unwrap());
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, completion, "streamed split at {k} of {ids:?}");
        if tok.decode(prompt).unwrap() == prompt_text {
            assert_eq!(
                format!("{}{completion}", tok.decode(prompt).unwrap()),
                whole,
                "decode(prompt) + completion, split at {k} of {ids:?}"
            );
        } else {
            mid_char += 1;
        }
    }
    mid_char
}

fn check_model(model: &str, cases: &[&str]) {
    let tok = Tokenizer::from_file(&fixture(model)).unwrap();
    let mut splits = 0;
    for (i, text) in cases.iter().flat_map(|c| texts(c)).enumerate() {
        let ids = tok.encode(&text);
        check_all_splits(&tok, &ids, i);
        splits += ids.len() + 1;
    }
    assert!(splits > 1000, "{model}: only {splits} splits checked");
}

#[test]
fn official_model_every_split_of_the_fixture_texts() {
    check_model(
        "tokenizer.model",
        &["cases.jsonl", "extra/official_random.jsonl"],
    );
}

/// A text encoded as it continues another (a conversation's next turn) adds
/// exactly its own text: `decode(encode(a) ++ encode_continuation(b))` is the
/// text `a + b` encodes to, at every character boundary of the fixture texts,
/// with no stray space where `encode(b)` would put its dummy prefix.
#[test]
fn a_continuation_encodes_without_the_dummy_prefix() {
    let tok = Tokenizer::grok1();
    let mut checked = 0;
    for text in texts("cases.jsonl") {
        let whole = tok.decode(&tok.encode(&text)).unwrap();
        for (at, _) in text.char_indices().skip(1) {
            let (a, b) = text.split_at(at);
            let mut ids = tok.encode(a);
            ids.extend(tok.encode_continuation(b));
            assert_eq!(tok.decode(&ids).unwrap(), whole, "{a:?} + {b:?}");
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked}");
    // The pieces of a turn separator: no lone "▁" before the newlines.
    let ids = tok.encode_continuation("\n\nUser: hi");
    assert_eq!(ids, tok.encode("\n\nUser: hi")[1..]);
    assert_eq!(
        tok.decode_after(&tok.encode("Hello."), &ids).unwrap(),
        "\n\nUser: hi"
    );
}

#[test]
fn other_normalisers_every_split() {
    for (model, cases) in [
        ("extra/extra_ws.model", "extra/extra_ws.jsonl"),
        ("extra/nfkc.model", "extra/nfkc.jsonl"),
        ("extra/no_dummy_prefix.model", "extra/no_dummy_prefix.jsonl"),
        (
            "extra/no_byte_fallback.model",
            "extra/no_byte_fallback.jsonl",
        ),
        ("extra/suffix.model", "extra/suffix.jsonl"),
    ] {
        check_model(model, &[cases]);
    }
}

/// The reproduction: a body after a docstring starts with four
/// spaces of indentation (`▁▁▁▁`, `return`, `▁True`).
#[test]
fn a_body_after_a_docstring_keeps_its_indentation() {
    let tok = Tokenizer::from_file(&fixture("tokenizer.model")).unwrap();
    let prompt = tok.encode("def f():\n    \"\"\"Return True.\"\"\"\n");
    let body = [336, 1885, 6871];
    assert_eq!(tok.decode_after(&prompt, &body).unwrap(), "    return True");
    assert_eq!(
        tok.decode(&[prompt.as_slice(), &body].concat()).unwrap(),
        "def f():\n    \"\"\"Return True.\"\"\"\n    return True"
    );
    // A continuation after nothing (or only control ids) still starts a
    // document, as SentencePiece decodes it.
    assert_eq!(tok.decode_after(&[], &body).unwrap(), "   return True");
    assert_eq!(tok.decode_after(&[1], &body).unwrap(), "   return True");
}

/// A multi-byte character split between prompt and continuation is released by
/// the continuation, whole.
#[test]
fn a_character_split_across_the_boundary_is_released_whole() {
    let tok = Tokenizer::from_file(&fixture("tokenizer.model")).unwrap();
    let ids = tok.encode("a 😀 b");
    let mut found = false;
    for k in 1..ids.len() {
        let (prompt, rest) = ids.split_at(k);
        if released(&tok, prompt) != tok.decode(prompt).unwrap() {
            found = true;
            assert!(tok.decode_after(prompt, rest).unwrap().contains('😀'));
        }
    }
    assert!(found, "the emoji is not byte pieces: {ids:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random id sequences: byte pieces, control ids, `▁` alone, any piece.
    #[test]
    fn random_ids_every_split(ids in proptest::collection::vec(prop_oneof![0u32..131072, 69u32..325, Just(130089u32), Just(336u32)], 0..24), seed in 0usize..3) {
        let tok = Tokenizer::from_file(&fixture("tokenizer.model")).unwrap();
        check_all_splits(&tok, &ids, seed);
    }
}
