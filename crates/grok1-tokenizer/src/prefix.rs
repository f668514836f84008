//! Longest-match of user-defined symbols at the start of a string
//! (SentencePiece's `PrefixMatcher`, normalizer.cc).

use rustc_hash::FxHashMap;

use crate::normalizer::utf8_len;

/// A byte trie of the user-defined symbols.
#[derive(Clone, Debug)]
pub struct PrefixMatcher {
    /// Children of each node by byte; node 0 is the root.
    children: Vec<FxHashMap<u8, usize>>,
    /// Whether a symbol ends at each node.
    terminal: Vec<bool>,
    /// Bytes that start some symbol (a fast reject for everything else).
    first: [bool; 256],
}

impl Default for PrefixMatcher {
    fn default() -> Self {
        PrefixMatcher::new([])
    }
}

impl PrefixMatcher {
    pub fn new<'a>(symbols: impl IntoIterator<Item = &'a str>) -> Self {
        let mut m = PrefixMatcher {
            children: vec![FxHashMap::default()],
            terminal: vec![false],
            first: [false; 256],
        };
        for s in symbols {
            if s.is_empty() {
                continue;
            }
            m.first[s.as_bytes()[0] as usize] = true;
            let mut node = 0;
            for &b in s.as_bytes() {
                node = match m.children[node].get(&b) {
                    Some(&next) => next,
                    None => {
                        m.children.push(FxHashMap::default());
                        m.terminal.push(false);
                        let next = m.children.len() - 1;
                        m.children[node].insert(b, next);
                        next
                    }
                };
            }
            m.terminal[node] = true;
        }
        m
    }

    /// `(length, true)` for the longest symbol that `input` starts with, else
    /// `(length of one UTF-8 character, false)`. `input` must not be empty.
    pub fn prefix_match(&self, input: &[u8]) -> (usize, bool) {
        let mut longest = 0;
        if self.first[input[0] as usize] {
            let mut node = 0;
            for (i, b) in input.iter().enumerate() {
                match self.children[node].get(b) {
                    Some(&next) => node = next,
                    None => break,
                }
                if self.terminal[node] {
                    longest = i + 1;
                }
            }
        }
        if longest > 0 {
            (longest, true)
        } else {
            (utf8_len(input[0]).min(input.len()), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_symbol_wins() {
        let m = PrefixMatcher::new(["\n", "\n\n", "<|mask|>", "1"]);
        assert_eq!(m.prefix_match(b"\n\n\nx"), (2, true));
        assert_eq!(m.prefix_match(b"<|mask|>a"), (8, true));
        assert_eq!(m.prefix_match(b"<|mas"), (1, false));
        assert_eq!(m.prefix_match("é1".as_bytes()), (2, false));
        assert_eq!(m.prefix_match(b"12"), (1, true));
    }
}
