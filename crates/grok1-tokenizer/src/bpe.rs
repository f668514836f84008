//! SentencePiece's BPE encoder (bpe_model.cc `Model::SampleEncode` without
//! dropout): start from characters (user-defined symbols kept whole and frozen),
//! repeatedly merge the adjacent pair whose concatenation is the best-scoring
//! piece (ties to the leftmost pair), then map the final symbols to ids.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::prefix::PrefixMatcher;

/// A symbol: a byte range of the normalised text and its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: u32,
    end: u32,
    prev: i32,
    next: i32,
    /// A user-defined symbol: never merged.
    freeze: bool,
}

impl Symbol {
    fn len(&self) -> u32 {
        self.end - self.start
    }
}

/// A candidate merge of `left` and `right` into a piece of `size` bytes.
#[derive(Clone, Copy, Debug)]
struct Pair {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pair {
    /// Higher score first; on equal scores the leftmost pair first
    /// (bpe_model.cc `SymbolPairComparator`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// What the encoder needs to know about the vocabulary.
pub struct BpeVocab<'a> {
    /// NORMAL, USER_DEFINED and UNUSED pieces (SentencePiece's `pieces_`).
    pub mergeable: &'a FxHashMap<Box<str>, u32>,
    pub scores: &'a [f32],
    /// Whether each id is an UNUSED piece (resegmented into its parts).
    pub unused: &'a [bool],
    pub user_defined: &'a PrefixMatcher,
}

/// Splits `normalized` into the pieces SentencePiece's BPE model produces, as
/// slices of `normalized` (ids are looked up by the caller).
pub fn encode<'t>(normalized: &'t str, vocab: &BpeVocab) -> Vec<&'t str> {
    let text = normalized.as_bytes();
    if text.is_empty() {
        return Vec::new();
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let mut pos = 0;
    while pos < text.len() {
        let (len, freeze) = vocab.user_defined.prefix_match(&text[pos..]);
        let index = symbols.len() as i32;
        symbols.push(Symbol {
            start: pos as u32,
            end: (pos + len) as u32,
            prev: index - 1,
            next: if pos + len < text.len() {
                index + 1
            } else {
                -1
            },
            freeze,
        });
        pos += len;
    }

    let mut merger = Merger {
        text: normalized,
        vocab,
        agenda: BinaryHeap::with_capacity(symbols.len()),
        rev_merge: FxHashMap::default(),
        symbols,
    };
    for i in 1..merger.symbols.len() as i32 {
        merger.add_pair(i - 1, i);
    }
    while let Some(top) = merger.agenda.pop() {
        let symbols = &mut merger.symbols;
        let (l, r) = (top.left as usize, top.right as usize);
        // Skip pairs made stale by an earlier merge.
        if symbols[l].len() == 0
            || symbols[r].len() == 0
            || symbols[l].len() + symbols[r].len() != top.size
        {
            continue;
        }
        symbols[l].end = symbols[r].end;
        symbols[r].start = symbols[r].end;
        symbols[l].next = symbols[r].next;
        if symbols[r].next >= 0 {
            let next = symbols[r].next as usize;
            symbols[next].prev = l as i32;
        }
        let (prev, next) = (symbols[l].prev, symbols[l].next);
        merger.add_pair(prev, l as i32);
        merger.add_pair(l as i32, next);
    }
    let Merger {
        symbols, rev_merge, ..
    } = merger;

    let mut out = Vec::new();
    let mut index = 0i32;
    while index >= 0 {
        let s = symbols[index as usize];
        resegment(
            &normalized[s.start as usize..s.end as usize],
            vocab,
            &rev_merge,
            &mut out,
        );
        index = s.next;
    }
    out
}

/// The state of one encoding: the symbols and the queue of candidate merges.
struct Merger<'t, 'v> {
    text: &'t str,
    vocab: &'v BpeVocab<'v>,
    symbols: Vec<Symbol>,
    agenda: BinaryHeap<Pair>,
    /// Pieces made by merging into an UNUSED piece, to split them again at the end.
    rev_merge: FxHashMap<&'t str, (&'t str, &'t str)>,
}

impl<'t> Merger<'t, '_> {
    /// Queues the merge of symbols `left` and `right` if their concatenation is a piece.
    fn add_pair(&mut self, left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (self.symbols[left as usize], self.symbols[right as usize]);
        if l.freeze || r.freeze {
            return;
        }
        let piece = &self.text[l.start as usize..r.end as usize];
        if let Some(&id) = self.vocab.mergeable.get(piece) {
            self.agenda.push(Pair {
                score: self.vocab.scores[id as usize],
                left: left as u32,
                right: right as u32,
                size: r.end - l.start,
            });
            if self.vocab.unused[id as usize] {
                let left_piece = &self.text[l.start as usize..l.end as usize];
                let right_piece = &self.text[r.start as usize..r.end as usize];
                self.rev_merge.insert(piece, (left_piece, right_piece));
            }
        }
    }
}

/// Splits a piece that resolves to an UNUSED id back into the pieces it was
/// merged from (bpe_model.cc `resegment`).
fn resegment<'t>(
    piece: &'t str,
    vocab: &BpeVocab,
    rev_merge: &FxHashMap<&'t str, (&'t str, &'t str)>,
    out: &mut Vec<&'t str>,
) {
    let unused = vocab
        .mergeable
        .get(piece)
        .is_some_and(|&id| vocab.unused[id as usize]);
    match rev_merge.get(piece) {
        Some(&(a, b)) if unused => {
            resegment(a, vocab, rev_merge, out);
            resegment(b, vocab, rev_merge, out);
        }
        _ => out.push(piece),
    }
}
