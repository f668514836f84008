//! OpenAI's `logprobs` objects, each token's text read in its sequence: what the
//! token adds to the returned text after the tokens before it (a document's
//! first word without the space SentencePiece drops, a later one with it; a
//! byte that does not yet finish a character adds nothing, the byte that
//! finishes it adds the character). So for every token `i` of a completion,
//! `text[text_offset[i]..][..tokens[i].len()] == tokens[i]`, counted in Unicode
//! code points as OpenAI and vLLM count them.

use grok1::engine::TokenLogprob;
use grok1_tokenizer::{DecodeState, Tokenizer};
use serde_json::{json, Map, Value};

/// One token of a completions `logprobs` object.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// What the token adds to the returned text.
    pub text: String,
    /// Where that text starts in the returned text, in code points.
    pub offset: usize,
    logprob: Option<f32>,
    /// The alternatives, each read at the same place in the text.
    top: Option<Vec<(String, f32)>>,
    /// The token's own bytes (chat's `bytes`): a byte piece's byte, else its text's.
    bytes: Vec<u8>,
}

/// Reads a sequence's tokens one after another.
#[derive(Clone, Debug)]
pub struct TokenTexts {
    state: DecodeState,
    offset: usize,
}

impl TokenTexts {
    /// Tokens that follow `context` (the prompt when the prompt is not echoed),
    /// their offsets counted from 0.
    pub fn after(tok: &Tokenizer, context: &[u32]) -> Self {
        TokenTexts {
            state: DecodeState::after(tok, context),
            offset: 0,
        }
    }

    pub fn next(&mut self, tok: &Tokenizer, id: u32, lp: Option<&TokenLogprob>) -> Entry {
        let top = lp.map(|l| {
            l.top
                .iter()
                .map(|&(t, p)| (self.alternative(tok, t), p))
                .collect()
        });
        // An id the tokenizer lacks (a model with a larger vocabulary) adds nothing.
        let text = self.state.push(tok, &[id]).unwrap_or_default();
        let bytes = match tok.byte_value(id) {
            Some(b) => vec![b],
            None => text.as_bytes().to_vec(),
        };
        let entry = Entry {
            offset: self.offset,
            logprob: lp.map(|l| l.logprob),
            top,
            bytes,
            text,
        };
        self.offset += entry.text.chars().count();
        entry
    }

    /// An alternative's key in `top_logprobs`: its text at this place, or its
    /// piece where it adds no text yet (a control id, a byte that starts a
    /// character), so that alternatives keep distinct keys.
    fn alternative(&self, tok: &Tokenizer, id: u32) -> String {
        match self.state.peek(tok, id) {
            Ok(text) if !text.is_empty() => text,
            _ => tok.id_to_piece(id).unwrap_or_default().to_string(),
        }
    }

    /// Ends the sequence: bytes still held back become U+FFFD, which belongs to
    /// the last token (as the engine's text ends with it).
    pub fn finish(&mut self, last: Option<&mut Entry>) {
        let tail = self.state.finish();
        if let Some(entry) = last {
            self.offset += tail.chars().count();
            entry.text.push_str(&tail);
        }
    }
}

/// Each token keeps only the part of its text that lies within the first `end`
/// code points of the returned text (a stop string cuts the text inside or
/// before the last tokens).
pub fn clip(entries: &mut [Entry], end: usize) {
    for e in entries {
        if e.offset + e.text.chars().count() > end {
            let keep = end.saturating_sub(e.offset);
            e.text = e.text.chars().take(keep).collect();
            e.offset = e.offset.min(end);
        }
    }
}

/// The entries of a whole choice: `tokens` after `context`, ending the
/// sequence, clipped to the `text_chars` code points returned.
pub fn entries(
    tok: &Tokenizer,
    context: &[u32],
    tokens: &[(u32, Option<&TokenLogprob>)],
    text_chars: usize,
) -> Vec<Entry> {
    let mut texts = TokenTexts::after(tok, context);
    let mut out: Vec<Entry> = tokens
        .iter()
        .map(|&(id, lp)| texts.next(tok, id, lp))
        .collect();
    texts.finish(out.last_mut());
    clip(&mut out, text_chars);
    out
}

/// `/v1/completions`' logprobs object.
pub fn completion_object(entries: &[Entry]) -> Value {
    let tokens: Vec<&str> = entries.iter().map(|e| e.text.as_str()).collect();
    let logprobs: Vec<Value> = entries
        .iter()
        .map(|e| e.logprob.map_or(Value::Null, |l| json!(l)))
        .collect();
    let top: Vec<Value> = entries
        .iter()
        .map(|e| {
            e.top.as_ref().map_or(Value::Null, |top| {
                let map: Map<String, Value> =
                    top.iter().map(|(t, p)| (t.clone(), json!(p))).collect();
                Value::Object(map)
            })
        })
        .collect();
    let offsets: Vec<usize> = entries.iter().map(|e| e.offset).collect();
    json!({ "tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets })
}

/// `/v1/chat/completions`' logprobs object.
pub fn chat_object(entries: &[Entry]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let top: Vec<Value> = e
                .top
                .iter()
                .flatten()
                .map(|(t, p)| json!({ "token": t, "logprob": p, "bytes": t.as_bytes() }))
                .collect();
            json!({ "token": e.text, "logprob": e.logprob, "bytes": e.bytes, "top_logprobs": top })
        })
        .collect();
    json!({ "content": content })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(token: u32) -> TokenLogprob {
        TokenLogprob {
            token,
            logprob: -0.5,
            top: vec![(token, -0.5)],
        }
    }

    fn official() -> Tokenizer {
        Tokenizer::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tokenizer/tokenizer.model"),
        )
        .unwrap()
    }

    /// Every token's text is found at its offset in the returned text.
    fn assert_offsets(text: &str, entries: &[Entry]) {
        let chars: Vec<char> = text.chars().collect();
        for e in entries {
            let found: String = chars[e.offset..]
                .iter()
                .take(e.text.chars().count())
                .collect();
            assert_eq!(found, e.text, "{entries:?} in {text:?}");
        }
    }

    #[test]
    fn echoed_prompt_offsets_follow_the_text() {
        let tok = official();
        let ids = tok.encode("hello world");
        let lps: Vec<TokenLogprob> = ids.iter().map(|&t| lp(t)).collect();
        let tokens: Vec<(u32, Option<&TokenLogprob>)> =
            ids.iter().zip(&lps).map(|(&t, l)| (t, Some(l))).collect();
        let e = entries(&tok, &[], &tokens, 11);
        let texts: Vec<&str> = e.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["hello", " world"]);
        assert_eq!(e.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 5]);
        assert_offsets("hello world", &e);
    }

    #[test]
    fn continuation_keeps_its_space_and_multibyte_offsets_count_code_points() {
        let tok = official();
        let all = tok.encode("日本 😀 done");
        let (prompt, rest) = all.split_at(1);
        let tokens: Vec<(u32, Option<&TokenLogprob>)> = rest.iter().map(|&t| (t, None)).collect();
        let text = tok.decode_after(prompt, rest).unwrap();
        let e = entries(&tok, prompt, &tokens, text.chars().count());
        assert_eq!(e.iter().map(|e| e.text.as_str()).collect::<String>(), text);
        assert!(text.ends_with(" done"));
        assert_offsets(&text, &e);
    }

    #[test]
    fn a_stop_string_clips_the_last_tokens() {
        let tok = official();
        let ids = tok.encode("one two three");
        let tokens: Vec<(u32, Option<&TokenLogprob>)> = ids.iter().map(|&t| (t, None)).collect();
        // The returned text stopped inside " two".
        let e = entries(&tok, &[], &tokens, 5);
        assert_offsets("one t", &e);
        assert_eq!(e.last().unwrap().text, "");
        assert_eq!(e.last().unwrap().offset, 5);
    }
}
