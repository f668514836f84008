//! Properties over many random inputs: encoding and decoding never panic, text
//! survives a round trip wherever SentencePiece's own round trip keeps it,
//! streaming equals one-shot decoding, and corrupt model files are errors.

use std::path::PathBuf;
use std::sync::OnceLock;

use grok1_tokenizer::{Tokenizer, TokenizerError};
use proptest::prelude::*;

fn model_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizer/tokenizer.model");
        std::fs::read(path).unwrap()
    })
}

fn official() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_bytes(model_bytes()).unwrap())
}

/// Text drawn from scripts, whitespace, user-defined symbols and raw bytes made
/// into lossy UTF-8.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[ a-zA-Z0-9\t\n\r▁<|>]{0,40}",
        "(<\\|separator\\|>|<\\|mask\\|>|<\\|control[0-9]+\\|>|\n+|\t+| +|[0-9]+|日本語|😀|\u{0301}|é|e\u{0301}){0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// The official model's normaliser is the identity and it falls back to bytes,
    /// so SentencePiece round-trips every text except that a literal U+2581 `▁`
    /// comes back as a space (it is the escaped space).
    #[test]
    fn decode_of_encode_is_the_text(s in text()) {
        let tok = official();
        let ids = tok.encode(&s);
        prop_assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size() && id > 3), "no control or unknown ids");
        prop_assert_eq!(tok.decode(&ids).unwrap(), s.replace('\u{2581}', " "));
    }

    #[test]
    fn streaming_decode_equals_one_shot(ids in proptest::collection::vec(prop_oneof![0u32..131072, 69u32..325, Just(130089u32)], 0..40), split in 1usize..5) {
        let tok = official();
        let whole = tok.decode(&ids).unwrap();
        let mut stream = tok.stream_decoder();
        let mut text = String::new();
        for chunk in ids.chunks(split) {
            text.push_str(&stream.push(chunk).unwrap());
        }
        text.push_str(&stream.finish());
        prop_assert_eq!(text, whole);
    }

    #[test]
    fn out_of_range_ids_are_errors(ids in proptest::collection::vec(0u32..140000, 1..20)) {
        let tok = official();
        let result = tok.decode(&ids);
        match ids.iter().find(|&&id| id >= 131072) {
            Some(&id) => {
                let is_that_id = matches!(result, Err(TokenizerError::IdOutOfRange { id: e, vocab: 131072 }) if e == id);
                prop_assert!(is_that_id, "expected an out-of-range error for {}", id);
            }
            None => prop_assert!(result.is_ok()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn truncated_model_files_are_errors(cut in 0usize..2_229_219) {
        let bytes = model_bytes();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(Tokenizer::from_bytes(&bytes[..cut]).is_err());
    }

    #[test]
    fn damaged_model_files_never_panic(at in 0usize..2_229_219, value in any::<u8>()) {
        let mut bytes = model_bytes().to_vec();
        let at = at % bytes.len();
        bytes[at] = value;
        // Either an error or a model that encodes and decodes without panicking.
        if let Ok(tok) = Tokenizer::from_bytes(&bytes) {
            let ids = tok.encode("Hello, world! 日本語 123");
            let _ = tok.decode(&ids);
        }
    }
}

#[test]
fn garbage_is_not_a_model() {
    for bytes in [
        &b""[..],
        b"\x00\x01\x02",
        b"not a protobuf at all",
        &[0xff; 64],
    ] {
        let err = Tokenizer::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, TokenizerError::Corrupt(_)), "{err}");
        assert!(
            err.to_string().contains("not a SentencePiece model"),
            "{err}"
        );
    }
    let err =
        Tokenizer::from_file(std::path::Path::new("/nonexistent/tokenizer.model")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.model"),
        "{err}"
    );
}
