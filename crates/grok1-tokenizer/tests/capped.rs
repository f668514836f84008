//! `encode_capped`: the ids of `encode` when they fit the cap, `None` when they
//! do not, for texts long enough to be merged in several parts; and a text far
//! longer than the cap is refused without being encoded whole.

use std::sync::OnceLock;
use std::time::Instant;

use grok1_tokenizer::{PieceKind, SpecialIds, Tokenizer};
use proptest::prelude::*;

/// Many kilobytes of words, whitespace runs, digits, newlines, symbols the
/// vocabulary lacks (byte fallback) and literal `▁`.
fn long_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            "[a-zA-Z]{1,12}",
            " {1,20}",
            "[0-9]{1,6}",
            "\n{1,3}",
            "(日本語|😀|\u{0301}|é|▁|▁▁|<\\|separator\\|>|\t\t)",
            any::<char>().prop_map(String::from),
        ],
        500..4000,
    )
    .prop_map(|parts| parts.concat())
}

fn check(tok: &Tokenizer, text: &str) -> Result<(), TestCaseError> {
    let ids = tok.encode(text);
    prop_assert_eq!(tok.encode_capped(text, usize::MAX), Some(ids.clone()));
    prop_assert_eq!(tok.encode_capped(text, ids.len()), Some(ids.clone()));
    if !ids.is_empty() {
        prop_assert_eq!(tok.encode_capped(text, ids.len() - 1), None);
        prop_assert_eq!(tok.encode_capped(text, ids.len() / 3), None);
    }
    Ok(())
}

fn official() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(Tokenizer::grok1)
}

/// The first 1,000 pieces of the official vocabulary, without byte fallback:
/// unknown text becomes one `[UNK]` per run, also across the parts' cuts.
fn small_vocabulary() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(build_small_vocabulary)
}

fn build_small_vocabulary() -> Tokenizer {
    let official = official();
    let n = 1000;
    let pieces: Vec<String> = (0..n)
        .map(|i| official.id_to_piece(i).unwrap().to_string())
        .collect();
    let scores: Vec<f32> = (0..n).map(|i| official.score(i).unwrap()).collect();
    let kinds: Vec<PieceKind> = (0..n)
        .map(|i| match official.kind(i).unwrap() {
            PieceKind::Byte => PieceKind::Unused,
            k => k,
        })
        .collect();
    let special = SpecialIds {
        unk: Some(0),
        bos: official.bos_id(),
        eos: official.eos_id(),
        pad: official.pad_id(),
    };
    Tokenizer::from_vocab(&pieces, &scores, &kinds, special).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn capped_encoding_equals_encoding_within_the_cap(text in long_text()) {
        check(official(), &text)?;
    }

    #[test]
    fn capped_encoding_merges_unknown_text_across_parts(text in long_text()) {
        check(small_vocabulary(), &text)?;
    }
}

#[test]
fn a_text_far_over_the_cap_is_refused_before_it_is_encoded_whole() {
    let tok = Tokenizer::grok1();
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40_000);
    let started = Instant::now();
    let whole = tok.encode(&text).len();
    let full = started.elapsed();
    let started = Instant::now();
    assert_eq!(tok.encode_capped(&text, 1025), None);
    let capped = started.elapsed();
    assert!(whole > 1025);
    // Normalising the text is all that scales with it: far below a full encoding.
    assert!(
        capped * 4 < full,
        "capped {capped:?} against a full encoding's {full:?}"
    );
}
