//! Decoding ids to text as SentencePiece v0.2 does
//! (sentencepiece_processor.cc `Decode`), one id at a time so the same code
//! serves one-shot and streaming decoding:
//!
//! - control pieces decode to nothing; the unknown piece to the model's
//!   `unk_surface`;
//! - when the model adds a dummy prefix or removes extra whitespace, a leading
//!   `▁` is dropped from the first piece that is not a control piece; with
//!   extra-whitespace removal, from every piece while the text is still empty
//!   (behaviour measured against SentencePiece 0.2.0 and 0.2.3); then every `▁`
//!   becomes a space;
//! - runs of byte pieces are decoded as UTF-8, one U+FFFD for every byte that
//!   does not start a valid character (an incomplete sequence is one U+FFFD
//!   per byte).

use crate::normalizer::SPACE_SYMBOL;
use crate::{PieceKind, Tokenizer, TokenizerError};

/// How a byte sequence starts.
#[derive(Debug, PartialEq)]
enum Utf8Start {
    /// A valid character of this many bytes.
    Char(usize),
    /// The first byte cannot start a valid character, whatever follows.
    Invalid,
    /// A valid prefix of a character; more bytes are needed to decide.
    Incomplete,
}

/// SentencePiece's `DecodeUTF8` validity, decided as early as possible.
fn utf8_start(b: &[u8]) -> Utf8Start {
    let lead = b[0];
    let (len, second) = match lead {
        0x00..=0x7f => return Utf8Start::Char(1),
        0xc2..=0xdf => (2, 0x80..=0xbf),
        0xe0 => (3, 0xa0..=0xbf),
        0xed => (3, 0x80..=0x9f),
        0xe1..=0xef => (3, 0x80..=0xbf),
        0xf0 => (4, 0x90..=0xbf),
        0xf1..=0xf3 => (4, 0x80..=0xbf),
        0xf4 => (4, 0x80..=0x8f),
        _ => return Utf8Start::Invalid,
    };
    for (i, &c) in b.iter().enumerate().take(len).skip(1) {
        let ok = if i == 1 {
            second.contains(&c)
        } else {
            (0x80..=0xbf).contains(&c)
        };
        if !ok {
            return Utf8Start::Invalid;
        }
    }
    if b.len() >= len {
        Utf8Start::Char(len)
    } else {
        Utf8Start::Incomplete
    }
}

/// Decodes ids incrementally. The concatenation of everything [`push`] and
/// [`finish`] return equals [`Tokenizer::decode`] of all the ids; bytes that may
/// still complete a character are held back.
///
/// [`push`]: StreamDecoder::push
/// [`finish`]: StreamDecoder::finish
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    state: DecodeState,
}

impl<'t> StreamDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer) -> Self {
        StreamDecoder {
            tokenizer,
            state: DecodeState::new(tokenizer),
        }
    }

    pub(crate) fn after(tokenizer: &'t Tokenizer, context: &[u32]) -> Self {
        StreamDecoder {
            tokenizer,
            state: DecodeState::after(tokenizer, context),
        }
    }

    /// Adds ids; returns the text they complete.
    pub fn push(&mut self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.state.push(self.tokenizer, ids)
    }

    /// Ends the stream: bytes still held back decode as U+FFFD each.
    pub fn finish(&mut self) -> String {
        self.state.finish()
    }
}

/// The state of an incremental decode, without a borrow of the tokenizer (for
/// owners that keep many streams beside one tokenizer, such as a server).
#[derive(Clone, Debug)]
pub struct DecodeState {
    /// Whether the next piece may lose its leading `▁`.
    at_start: bool,
    /// Whether any text has been produced (or is pending as bytes).
    any_text: bool,
    bytes: Vec<u8>,
}

impl DecodeState {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let spec = &tokenizer.normalizer;
        DecodeState {
            at_start: spec.add_dummy_prefix || spec.remove_extra_whitespaces,
            any_text: false,
            bytes: Vec::new(),
        }
    }

    /// The state after `context` has been decoded, its text discarded: the ids
    /// pushed next decode to exactly what they add to the text of `context`
    /// (SentencePiece drops the leading `▁` of a document, not of a
    /// continuation). Bytes at the end of `context` that do not yet make a
    /// character stay pending, so the continuation that completes them
    /// releases the character. Ids the tokenizer lacks release no text here
    /// either.
    pub fn after(tokenizer: &Tokenizer, context: &[u32]) -> Self {
        let mut state = DecodeState::new(tokenizer);
        for &id in context {
            // Only the state matters; the discarded text is short-lived.
            let _ = state.push(tokenizer, &[id]);
        }
        state
    }

    /// The text `id` would add if pushed next, without pushing it (for the
    /// alternatives of a sampled token). Bytes that do not complete a
    /// character add nothing yet.
    pub fn peek(&self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.clone().push(tokenizer, &[id])
    }

    /// Emits the decided prefix of the pending bytes; with `all`, every byte
    /// (the end of a byte run).
    fn drain_bytes(&mut self, all: bool, out: &mut String) {
        let mut at = 0;
        while at < self.bytes.len() {
            match utf8_start(&self.bytes[at..]) {
                Utf8Start::Char(n) => {
                    out.push_str(std::str::from_utf8(&self.bytes[at..at + n]).expect("validated"));
                    at += n;
                }
                Utf8Start::Invalid => {
                    out.push('\u{FFFD}');
                    at += 1;
                }
                Utf8Start::Incomplete if all => {
                    out.push('\u{FFFD}');
                    at += 1;
                }
                Utf8Start::Incomplete => break,
            }
        }
        self.bytes.drain(..at);
    }

    /// Adds ids; returns the text they complete. `tokenizer` must be the one the
    /// state was made for.
    pub fn push(&mut self, t: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut out = String::new();
        for &id in ids {
            let kind = t.kind(id).ok_or(TokenizerError::IdOutOfRange {
                id,
                vocab: t.vocab_size(),
            })?;
            if kind == PieceKind::Byte {
                self.bytes.push(t.byte_of[&id]);
                self.any_text = true;
                self.at_start = false;
                self.drain_bytes(false, &mut out);
                continue;
            }
            self.drain_bytes(true, &mut out);
            let surface = match kind {
                PieceKind::Control => continue,
                PieceKind::Unknown => t.unk_surface.clone(),
                _ => {
                    let mut piece = &t.pieces[id as usize][..];
                    if self.at_start {
                        piece = piece.strip_prefix(SPACE_SYMBOL).unwrap_or(piece);
                    }
                    piece.replace(SPACE_SYMBOL, " ")
                }
            };
            self.any_text |= !surface.is_empty();
            out.push_str(&surface);
            self.at_start = t.normalizer.remove_extra_whitespaces && !self.any_text;
        }
        Ok(out)
    }

    /// Ends the stream: bytes still held back decode as U+FFFD each.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.drain_bytes(true, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_starts_follow_sentencepiece() {
        assert_eq!(utf8_start(b"a"), Utf8Start::Char(1));
        assert_eq!(utf8_start("日".as_bytes()), Utf8Start::Char(3));
        assert_eq!(utf8_start(&[0xe6, 0x97]), Utf8Start::Incomplete);
        assert_eq!(utf8_start(&[0xe6, 0x41]), Utf8Start::Invalid);
        assert_eq!(utf8_start(&[0xc0, 0x80]), Utf8Start::Invalid, "overlong");
        assert_eq!(
            utf8_start(&[0xed, 0xa0, 0x80]),
            Utf8Start::Invalid,
            "surrogate"
        );
        assert_eq!(
            utf8_start(&[0xf4, 0x90]),
            Utf8Start::Invalid,
            "above U+10FFFF"
        );
        assert_eq!(utf8_start(&[0xef, 0xbf, 0xbd]), Utf8Start::Char(3));
        assert_eq!(utf8_start(&[0xff]), Utf8Start::Invalid);
        assert_eq!(utf8_start(&[0x80]), Utf8Start::Invalid);
    }
}
