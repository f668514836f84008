//! The SentencePiece BPE tokenizer of Grok-1 in pure Rust, producing exactly the
//! ids, pieces and text SentencePiece (the C++ library, v0.2) produces.
//!
//! Pipeline, as in SentencePiece: normalise ([`normalizer`]: character map,
//! whitespace rules, dummy prefix, `▁` escaping) -> BPE ([`bpe`]: user-defined
//! symbols frozen, best-scoring merges first) -> ids, with byte fallback for
//! pieces outside the vocabulary. Decoding ([`decode`]) reverses it, and
//! [`StreamDecoder`] does so incrementally for streaming generation.

#![forbid(unsafe_code)]

mod bpe;
mod decode;
pub mod normalizer;
mod prefix;
pub mod proto;

use std::path::Path;

use prost::Message;
use rustc_hash::FxHashMap;

pub use decode::{DecodeState, StreamDecoder};
use normalizer::{CharsMap, Normalizer, SPACE_SYMBOL};
use prefix::PrefixMatcher;
use proto::{model_type, piece_type};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("not a SentencePiece model (corrupt or truncated file): {0}")]
    Corrupt(String),
    #[error("unsupported SentencePiece model: {0}")]
    Unsupported(String),
    #[error("token id {id} is outside the vocabulary (ids 0..{vocab})")]
    IdOutOfRange { id: u32, vocab: usize },
}

/// Kinds of pieces (`ModelProto.SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// Special token ids of a bare vocabulary ([`Tokenizer::from_vocab`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SpecialIds {
    pub unk: Option<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// A SentencePiece BPE model.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pieces: Vec<Box<str>>,
    scores: Vec<f32>,
    kinds: Vec<PieceKind>,
    unused: Vec<bool>,
    /// NORMAL, USER_DEFINED and UNUSED pieces by text (`pieces_` in SentencePiece).
    mergeable: FxHashMap<Box<str>, u32>,
    /// CONTROL, UNKNOWN and BYTE pieces by text (`reserved_id_map_`).
    reserved: FxHashMap<Box<str>, u32>,
    unk_id: u32,
    /// The id of each byte's `<0xXX>` piece, when the model falls back to bytes.
    byte_ids: Option<Box<[u32; 256]>>,
    /// The byte each BYTE piece stands for.
    byte_of: FxHashMap<u32, u8>,
    user_defined: PrefixMatcher,
    /// No mergeable piece has a `▁` after another character, so no merge spans
    /// the start of a word: text can be merged in parts cut there.
    splits_at_words: bool,
    normalizer: Normalizer,
    unk_surface: String,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
}

/// The first byte offset at or after `from` where a word starts in normalised
/// text: a `▁` after a character that is not one.
fn word_start(text: &str, from: usize) -> Option<usize> {
    let mut from = from.min(text.len());
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..]
        .match_indices(SPACE_SYMBOL)
        .map(|(i, _)| from + i)
        .find(|&i| i > 0 && !text[..i].ends_with(SPACE_SYMBOL))
}

fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// The official Grok-1 `tokenizer.model` (Apache-2.0, see assets/NOTICE).
pub const GROK1_MODEL: &[u8] = include_bytes!("../assets/tokenizer.model");

impl Tokenizer {
    /// The official Grok-1 tokenizer, embedded in the binary.
    pub fn grok1() -> Self {
        Self::from_bytes(GROK1_MODEL).expect("the embedded tokenizer.model is valid")
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// A tokenizer from a bare vocabulary (a GGUF file's `tokenizer.ggml.*`:
    /// pieces, scores, kinds and the special ids), with the official Grok-1
    /// model's normalisation and trainer settings, which GGUF does not store
    /// and llama.cpp's SentencePiece tokenizer assumes. Byte fallback is on when
    /// all 256 `<0xXX>` pieces are present.
    pub fn from_vocab(
        pieces: &[String],
        scores: &[f32],
        kinds: &[PieceKind],
        special: SpecialIds,
    ) -> Result<Self, TokenizerError> {
        if pieces.len() != scores.len() || pieces.len() != kinds.len() {
            return Err(TokenizerError::Corrupt(format!(
                "{} pieces, {} scores and {} kinds",
                pieces.len(),
                scores.len(),
                kinds.len()
            )));
        }
        let mut proto = proto::ModelProto::decode(GROK1_MODEL)
            .map_err(|e| TokenizerError::Corrupt(e.to_string()))?;
        proto.pieces = pieces
            .iter()
            .zip(scores)
            .zip(kinds)
            .map(|((p, &score), kind)| proto::SentencePiece {
                piece: Some(p.clone()),
                score: Some(score),
                r#type: Some(match kind {
                    PieceKind::Normal => piece_type::NORMAL,
                    PieceKind::Unknown => piece_type::UNKNOWN,
                    PieceKind::Control => piece_type::CONTROL,
                    PieceKind::UserDefined => piece_type::USER_DEFINED,
                    PieceKind::Unused => piece_type::UNUSED,
                    PieceKind::Byte => piece_type::BYTE,
                }),
            })
            .collect();
        let bytes_present = (0..=255u8).all(|b| {
            let name = byte_piece(b);
            pieces
                .iter()
                .zip(kinds)
                .any(|(p, k)| *k == PieceKind::Byte && *p == name)
        });
        let trainer = proto.trainer_spec.get_or_insert_with(Default::default);
        trainer.byte_fallback = Some(bytes_present);
        let id = |v: Option<u32>| v.map_or(-1, |v| v as i32);
        trainer.unk_id = Some(id(special.unk));
        trainer.bos_id = Some(id(special.bos));
        trainer.eos_id = Some(id(special.eos));
        trainer.pad_id = Some(id(special.pad));
        Self::from_bytes(&proto.encode_to_vec())
    }

    /// Parses a serialized `ModelProto`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let proto =
            proto::ModelProto::decode(bytes).map_err(|e| TokenizerError::Corrupt(e.to_string()))?;
        if proto.pieces.is_empty() {
            return Err(TokenizerError::Corrupt("the model has no pieces".into()));
        }
        // SentencePiece always writes both specs after the pieces; a file without
        // them was cut short at a field boundary.
        let (Some(trainer), Some(spec)) =
            (proto.trainer_spec.clone(), proto.normalizer_spec.clone())
        else {
            return Err(TokenizerError::Corrupt(
                "trainer_spec or normalizer_spec is missing (truncated file?)".into(),
            ));
        };
        if trainer.model_type() != model_type::BPE {
            let name = match trainer.model_type() {
                model_type::UNIGRAM => "unigram".to_string(),
                model_type::WORD => "word".to_string(),
                model_type::CHAR => "char".to_string(),
                other => format!("type {other}"),
            };
            return Err(TokenizerError::Unsupported(format!(
                "{name} models are not supported (only BPE, the type of Grok-1's tokenizer.model)"
            )));
        }
        if proto.pieces.len() > u32::MAX as usize / 2 {
            return Err(TokenizerError::Corrupt("too many pieces".into()));
        }
        let n = proto.pieces.len();
        let mut t = Tokenizer {
            pieces: Vec::with_capacity(n),
            scores: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            unused: Vec::with_capacity(n),
            mergeable: FxHashMap::default(),
            reserved: FxHashMap::default(),
            unk_id: 0,
            byte_ids: None,
            byte_of: FxHashMap::default(),
            user_defined: PrefixMatcher::default(),
            splits_at_words: false,
            normalizer: Normalizer {
                charsmap: None,
                add_dummy_prefix: true,
                remove_extra_whitespaces: true,
                escape_whitespaces: true,
                treat_whitespace_as_suffix: false,
            },
            unk_surface: trainer
                .unk_surface
                .clone()
                .unwrap_or_else(|| " \u{2047} ".into()),
            bos_id: None,
            eos_id: None,
            pad_id: None,
        };
        let mut user_symbols = Vec::new();
        let mut unk = None;
        for (i, p) in proto.pieces.iter().enumerate() {
            let id = i as u32;
            let text = p.piece().to_string();
            if text.is_empty() {
                return Err(TokenizerError::Corrupt(format!("piece {id} is empty")));
            }
            let kind = match p.r#type() {
                piece_type::NORMAL => PieceKind::Normal,
                piece_type::UNKNOWN => PieceKind::Unknown,
                piece_type::CONTROL => PieceKind::Control,
                piece_type::USER_DEFINED => PieceKind::UserDefined,
                piece_type::UNUSED => PieceKind::Unused,
                piece_type::BYTE => PieceKind::Byte,
                other => {
                    return Err(TokenizerError::Corrupt(format!(
                        "piece {id} has unknown type {other}"
                    )))
                }
            };
            let table = match kind {
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused => &mut t.mergeable,
                _ => &mut t.reserved,
            };
            if table.insert(text.clone().into(), id).is_some() {
                return Err(TokenizerError::Corrupt(format!(
                    "piece {text:?} is defined twice"
                )));
            }
            match kind {
                PieceKind::UserDefined => user_symbols.push(text.clone()),
                PieceKind::Unknown if unk.replace(id).is_some() => {
                    return Err(TokenizerError::Corrupt(
                        "more than one unknown piece".into(),
                    ));
                }
                _ => {}
            }
            let score = p.score();
            if !score.is_finite() {
                return Err(TokenizerError::Corrupt(format!(
                    "piece {id} has score {score}"
                )));
            }
            t.scores.push(score);
            t.unused.push(kind == PieceKind::Unused);
            t.kinds.push(kind);
            t.pieces.push(text.into());
        }
        t.unk_id = unk
            .ok_or_else(|| TokenizerError::Corrupt("the model defines no unknown piece".into()))?;
        for (id, kind) in t.kinds.iter().enumerate() {
            if *kind == PieceKind::Byte {
                let b = (0..=255u8)
                    .find(|&b| *t.pieces[id] == *byte_piece(b))
                    .ok_or_else(|| {
                        TokenizerError::Corrupt(format!(
                            "byte piece {:?} is not of the form <0xXX>",
                            t.pieces[id]
                        ))
                    })?;
                t.byte_of.insert(id as u32, b);
            }
        }
        if trainer.byte_fallback() {
            let mut ids = Box::new([0u32; 256]);
            for b in 0..=255u8 {
                ids[b as usize] = *t.reserved.get(byte_piece(b).as_str()).ok_or_else(|| {
                    TokenizerError::Corrupt(format!(
                        "byte_fallback is set but piece {} is missing",
                        byte_piece(b)
                    ))
                })?;
            }
            t.byte_ids = Some(ids);
        }
        let id_of = |v: i32| (v >= 0 && (v as usize) < n).then_some(v as u32);
        t.bos_id = id_of(trainer.bos_id());
        t.eos_id = id_of(trainer.eos_id());
        t.pad_id = id_of(trainer.pad_id());
        t.user_defined = PrefixMatcher::new(user_symbols.iter().map(String::as_str));
        // A user-defined symbol is matched whole before merging, so one that
        // spans a word start forbids the cut as a merge would.
        t.splits_at_words = !t
            .mergeable
            .keys()
            .map(|p| &**p)
            .chain(user_symbols.iter().map(String::as_str))
            .any(|p| word_start(p, 1).is_some());
        t.normalizer = Normalizer {
            charsmap: match spec.precompiled_charsmap.as_deref() {
                Some(blob) if !blob.is_empty() => Some(CharsMap::parse(blob)?),
                _ => None,
            },
            add_dummy_prefix: spec.add_dummy_prefix(),
            remove_extra_whitespaces: spec.remove_extra_whitespaces(),
            escape_whitespaces: spec.escape_whitespaces(),
            treat_whitespace_as_suffix: trainer.treat_whitespace_as_suffix(),
        };
        Ok(t)
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| &**p)
    }

    /// The piece's score (its merge priority in a BPE model).
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The byte a byte-fallback piece (`<0xE6>`) stands for.
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        self.byte_of.get(&id).copied()
    }

    /// The id of a piece, or the unknown id (SentencePiece's `PieceToId`).
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.mergeable.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// The text as the BPE model sees it.
    pub fn normalize(&self, text: &str) -> String {
        self.normalizer.normalize(text, &self.user_defined)
    }

    /// Token ids of `text`, as `SentencePieceProcessor.encode(text)` (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut |id, _| ids.push(id));
        ids
    }

    /// Token ids of `text` where it continues a text already encoded (the
    /// next turn of a conversation): as [`encode`](Self::encode) without the
    /// dummy prefix, the space SentencePiece puts before a document's first
    /// word, which would appear as a stray space between the two texts.
    pub fn encode_continuation(&self, text: &str) -> Vec<u32> {
        let normalized = self
            .normalizer
            .normalize_with(text, &self.user_defined, false);
        let mut ids = Vec::new();
        let mut pending_unk = String::new();
        self.encode_part(&normalized, &mut pending_unk, &mut |id, _| ids.push(id));
        if !pending_unk.is_empty() {
            ids.push(self.unk_id);
        }
        ids
    }

    /// Ids and pieces, as `encode(text)` and `encode(text, out_type=str)`.
    pub fn encode_with_pieces(&self, text: &str) -> (Vec<u32>, Vec<String>) {
        let mut ids = Vec::new();
        let mut pieces: Vec<String> = Vec::new();
        self.encode_into(text, &mut |id, piece| {
            ids.push(id);
            pieces.push(piece.to_string());
        });
        (ids, pieces)
    }

    /// Token ids of `text` as [`encode`](Self::encode) gives them, or `None`
    /// once they are known to number more than `max`: a text far longer than a
    /// model's context costs its normalisation and about `max` tokens of
    /// merging, not a full encoding. The text is merged in parts of about
    /// 4 KiB cut at the start of a word, where no merge can reach across (see
    /// `splits_at_words`; a vocabulary with such merges is encoded whole).
    pub fn encode_capped(&self, text: &str, max: usize) -> Option<Vec<u32>> {
        const PART: usize = 4096;
        let normalized = self.normalize(text);
        let mut ids = Vec::new();
        let mut pending_unk = String::new();
        let mut rest = normalized.as_str();
        while !rest.is_empty() {
            let cut = match self.splits_at_words {
                true => word_start(rest, PART).unwrap_or(rest.len()),
                false => rest.len(),
            };
            let (part, after) = rest.split_at(cut);
            self.encode_part(part, &mut pending_unk, &mut |id, _| ids.push(id));
            if ids.len() > max {
                return None;
            }
            rest = after;
        }
        if !pending_unk.is_empty() {
            ids.push(self.unk_id);
        }
        (ids.len() <= max).then_some(ids)
    }

    /// Emits `(id, piece)` for each token; consecutive unknown pieces merge into one
    /// (its piece is their text), and with byte fallback an unknown piece becomes
    /// one `<0xXX>` token per byte (sentencepiece_processor.cc
    /// `PopulateSentencePieceText`).
    fn encode_into(&self, text: &str, emit: &mut dyn FnMut(u32, &str)) {
        let normalized = self.normalize(text);
        let mut pending_unk = String::new();
        self.encode_part(&normalized, &mut pending_unk, emit);
        if !pending_unk.is_empty() {
            emit(self.unk_id, &pending_unk);
        }
    }

    /// `encode_into` for a part of normalised text; unknown text at its end
    /// stays in `pending_unk`, to merge with unknown text that follows.
    fn encode_part(
        &self,
        normalized: &str,
        pending_unk: &mut String,
        emit: &mut dyn FnMut(u32, &str),
    ) {
        let vocab = bpe::BpeVocab {
            mergeable: &self.mergeable,
            scores: &self.scores,
            unused: &self.unused,
            user_defined: &self.user_defined,
        };
        for piece in bpe::encode(normalized, &vocab) {
            let id = self.piece_to_id(piece);
            if id != self.unk_id {
                if !pending_unk.is_empty() {
                    emit(self.unk_id, pending_unk);
                    pending_unk.clear();
                }
                emit(id, piece);
                continue;
            }
            match &self.byte_ids {
                Some(byte_ids) => {
                    for &b in piece.as_bytes() {
                        let bid = byte_ids[b as usize];
                        emit(bid, &self.pieces[bid as usize]);
                    }
                }
                None => pending_unk.push_str(piece),
            }
        }
    }

    /// Text of `ids`, as `SentencePieceProcessor.decode(ids)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut d = self.stream_decoder();
        let mut out = d.push(ids)?;
        out.push_str(&d.finish());
        Ok(out)
    }

    /// An incremental decoder: feed ids as they are generated and receive text
    /// that only ever holds complete characters.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// An incremental decoder for the ids that follow `context` (a prompt):
    /// what it returns is what those ids add to the text of `context`, so
    /// `decode(context) + continuation == decode(context ++ ids)` wherever
    /// `context` ends on a whole character. Decoding a continuation on its own
    /// would drop the leading space of its first word.
    pub fn stream_decoder_after(&self, context: &[u32]) -> StreamDecoder<'_> {
        StreamDecoder::after(self, context)
    }

    /// The text `ids` add after `context` (see [`Tokenizer::stream_decoder_after`]).
    pub fn decode_after(&self, context: &[u32], ids: &[u32]) -> Result<String, TokenizerError> {
        let mut d = self.stream_decoder_after(context);
        let mut out = d.push(ids)?;
        out.push_str(&d.finish());
        Ok(out)
    }
}
