//! SentencePiece's normaliser (normalizer.cc, v0.2.0): the model's precompiled
//! character map if it has one, optional removal of extra whitespace, the dummy
//! prefix, and escaping of U+0020 to U+2581 (`▁`).

use crate::prefix::PrefixMatcher;
use crate::TokenizerError;

/// U+2581, SentencePiece's visible space.
pub const SPACE_SYMBOL: &str = "\u{2581}";

/// A precompiled character map: a Darts-clone double-array trie over input
/// bytes whose values index NUL-terminated replacement strings.
///
/// Blob layout (normalizer.cc `DecodePrecompiledCharsMap`): a little-endian
/// u32 trie size in bytes, the trie's u32 units, then the replacement strings.
#[derive(Clone, Debug)]
pub struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    pub fn parse(blob: &[u8]) -> Result<Self, TokenizerError> {
        let bad = |why: &str| TokenizerError::Corrupt(format!("precompiled_charsmap: {why}"));
        if blob.len() < 4 {
            return Err(bad("shorter than its header"));
        }
        let trie_size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if !trie_size.is_multiple_of(4) || trie_size > blob.len() - 4 || trie_size == 0 {
            return Err(bad("trie size does not fit the blob"));
        }
        let units = blob[4..4 + trie_size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(CharsMap {
            units,
            normalized: blob[4 + trie_size..].to_vec(),
        })
    }

    /// The longest prefix of `input` with a rule: (bytes consumed, replacement).
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        // Darts-clone unit fields.
        let has_leaf = |u: u32| (u >> 8) & 1 == 1;
        let value = |u: u32| u & 0x7fff_ffff;
        let label = |u: u32| u & 0x8000_00ff;
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let unit = |i: usize| self.units.get(i).copied();
        let mut best = None;
        let mut pos = offset(unit(0)?);
        for (i, &b) in input.iter().enumerate() {
            pos ^= b as usize;
            let u = unit(pos)?;
            if label(u) != b as u32 {
                break;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                let v = value(unit(pos)?) as usize;
                best = Some((i + 1, v));
            }
        }
        let (len, at) = best?;
        let rest = self.normalized.get(at..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

/// Normalisation settings from the model's `normalizer_spec` and `trainer_spec`.
#[derive(Clone, Debug)]
pub struct Normalizer {
    pub charsmap: Option<CharsMap>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub treat_whitespace_as_suffix: bool,
}

impl Normalizer {
    /// One normalisation step at the start of `input`: (replacement, bytes consumed).
    /// User-defined symbols are never normalised.
    fn normalize_prefix<'a>(&'a self, input: &'a [u8], user: &PrefixMatcher) -> (&'a [u8], usize) {
        let (len, found) = user.prefix_match(input);
        if found {
            return (&input[..len], len);
        }
        if let Some(map) = &self.charsmap {
            if let Some((len, replacement)) = map.longest_match(input) {
                return (replacement, len);
            }
        }
        // No rule: one UTF-8 character as it is (input is valid UTF-8).
        let len = utf8_len(input[0]).min(input.len());
        (&input[..len], len)
    }

    /// Normalises `input` for the BPE model (normalizer.cc `Normalize`).
    pub fn normalize(&self, input: &str, user: &PrefixMatcher) -> String {
        self.normalize_with(input, user, self.add_dummy_prefix)
    }

    /// [`normalize`](Self::normalize) with the dummy prefix (the space put
    /// before a text's first word) on or off: off for a text that continues
    /// another.
    pub fn normalize_with(&self, input: &str, user: &PrefixMatcher, dummy_prefix: bool) -> String {
        let mut input = input.as_bytes();
        let mut out: Vec<u8> = Vec::with_capacity(input.len() + input.len() / 2 + 3);
        if input.is_empty() {
            return String::new();
        }
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (piece, consumed) = self.normalize_prefix(input, user);
                if piece != b" " {
                    break;
                }
                input = &input[consumed..];
            }
            if input.is_empty() {
                return String::new();
            }
        }
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL.as_bytes()
        } else {
            b" "
        };
        if !self.treat_whitespace_as_suffix && dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut piece, consumed) = self.normalize_prefix(input, user);
            if is_prev_space {
                while let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            if !piece.is_empty() {
                for &b in piece {
                    if self.escape_whitespaces && b == b' ' {
                        out.extend_from_slice(space);
                    } else {
                        out.push(b);
                    }
                }
                is_prev_space = piece.ends_with(b" ");
            }
            input = &input[consumed..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && dummy_prefix {
            out.extend_from_slice(space);
        }
        // Rules may map to any bytes; keep what is valid UTF-8 (a charsmap from a
        // SentencePiece trainer only ever holds UTF-8).
        match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// Length of the UTF-8 sequence that starts with byte `b`.
pub(crate) fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}
