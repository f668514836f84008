//! The prefix index: which cached pages hold which tokens, so a new sequence
//! can take the pages of the longest prefix it shares with earlier ones.
//!
//! The index is a tree of pages. A page's node holds its tokens and its parent
//! (the page before it in the sequences that hold it; none for a first page).
//! Full pages are found by a hash of (parent page, tokens) and then compared on
//! both, so a match is exact: by induction the whole chain of parents holds the
//! same tokens at the same positions. A node is removed only when it has no
//! children, so a parent named by a node is always a live node of the tree.
//! A partial page (the tail a finished sequence leaves) is a leaf found only by
//! scanning its parent's children for the longest shared run of tokens.
//!
//! The index knows nothing of reference counts beyond what it is told: the
//! cache tells it when a page loses its last holder ([`PrefixIndex::idle`]) or
//! gains one ([`PrefixIndex::busy`]); idle leaves are evicted least recently
//! released first.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

struct Node {
    parent: Option<usize>,
    tokens: Box<[u32]>,
    /// Whether it holds a whole page (only full pages have children).
    full: bool,
    children: Vec<usize>,
    /// When its last holder let go: the eviction order.
    released_at: u64,
}

pub(super) struct PrefixIndex {
    /// By page number.
    nodes: Vec<Option<Node>>,
    /// Full pages by the hash of (parent, tokens); a bucket holds pages whose
    /// keys collide.
    full: HashMap<u64, Vec<usize>>,
    /// First pages (children of no page).
    roots: Vec<usize>,
    /// Idle leaves by (released_at, page): the next to evict first.
    evictable: BTreeSet<(u64, usize)>,
    clock: u64,
}

fn key(parent: Option<usize>, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same key on every run (nothing is saved).
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixIndex {
    pub fn new(num_pages: usize) -> Self {
        PrefixIndex {
            nodes: (0..num_pages).map(|_| None).collect(),
            full: HashMap::new(),
            roots: Vec::new(),
            evictable: BTreeSet::new(),
            clock: 0,
        }
    }

    pub fn contains(&self, page: usize) -> bool {
        self.nodes[page].is_some()
    }

    fn children(&self, parent: Option<usize>) -> &[usize] {
        match parent {
            None => &self.roots,
            Some(p) => self.nodes[p].as_ref().map_or(&[], |n| &n.children),
        }
    }

    fn children_mut(&mut self, parent: Option<usize>) -> &mut Vec<usize> {
        match parent {
            None => &mut self.roots,
            Some(p) => {
                &mut self.nodes[p]
                    .as_mut()
                    .expect("a parent is a live node")
                    .children
            }
        }
    }

    /// The full page that holds exactly `tokens` after `parent`.
    pub fn find_full(&self, parent: Option<usize>, tokens: &[u32]) -> Option<usize> {
        self.full
            .get(&key(parent, tokens))?
            .iter()
            .copied()
            .find(|&page| {
                let node = self.nodes[page].as_ref().expect("indexed pages have nodes");
                node.parent == parent && *node.tokens == *tokens
            })
    }

    /// The child of `parent` (full or partial) whose tokens share the longest
    /// run with the start of `tokens`, and that run's length (at least 1);
    /// between equal runs, the most recently released.
    pub fn best_partial(&self, parent: Option<usize>, tokens: &[u32]) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for &page in self.children(parent) {
            let node = self.nodes[page].as_ref().expect("children are live nodes");
            let run = node
                .tokens
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count();
            if run > 0
                && best.is_none_or(|(_, r, at)| run > r || (run == r && node.released_at > at))
            {
                best = Some((page, run, node.released_at));
            }
        }
        best.map(|(page, run, _)| (page, run))
    }

    /// Whether a child of `parent` already holds `tokens` at its start (a
    /// partial page of them adds nothing).
    pub fn covers(&self, parent: Option<usize>, tokens: &[u32]) -> bool {
        self.children(parent).iter().any(|&page| {
            let node = self.nodes[page].as_ref().expect("children are live nodes");
            node.tokens.starts_with(tokens)
        })
    }

    /// Indexes `page` as holding `tokens` after `parent` (a page a sequence
    /// holds, so not idle). A full page must not be indexed already
    /// ([`find_full`](Self::find_full) found none).
    pub fn insert(&mut self, page: usize, parent: Option<usize>, tokens: &[u32], full: bool) {
        debug_assert!(self.nodes[page].is_none());
        if let Some(p) = parent {
            // A parent with a child is no longer a leaf.
            let at = self.nodes[p].as_ref().expect("parent is live").released_at;
            self.evictable.remove(&(at, p));
        }
        self.children_mut(parent).push(page);
        if full {
            self.full.entry(key(parent, tokens)).or_default().push(page);
        }
        self.nodes[page] = Some(Node {
            parent,
            tokens: tokens.into(),
            full,
            children: Vec::new(),
            released_at: 0,
        });
    }

    /// An indexed page lost its last holder: it may be evicted once it is a leaf.
    pub fn idle(&mut self, page: usize) {
        self.clock += 1;
        let node = self.nodes[page].as_mut().expect("indexed");
        node.released_at = self.clock;
        if node.children.is_empty() {
            self.evictable.insert((self.clock, page));
        }
    }

    /// An idle indexed page was taken by a holder: it cannot be evicted.
    pub fn busy(&mut self, page: usize) {
        let at = self.nodes[page].as_ref().expect("indexed").released_at;
        self.evictable.remove(&(at, page));
    }

    /// Removes the idle leaf released longest ago from the index and returns
    /// its page; its parent becomes evictable if it is now an idle leaf
    /// (`idle_parent` says whether a page has no holders).
    pub fn evict(&mut self, idle_parent: impl Fn(usize) -> bool) -> Option<usize> {
        let (_, page) = self.evictable.pop_first()?;
        let node = self.nodes[page]
            .take()
            .expect("evictable pages are indexed");
        if node.full {
            let k = key(node.parent, &node.tokens);
            if let Some(bucket) = self.full.get_mut(&k) {
                bucket.retain(|&p| p != page);
                if bucket.is_empty() {
                    self.full.remove(&k);
                }
            }
        }
        let siblings = self.children_mut(node.parent);
        siblings.retain(|&p| p != page);
        if let Some(p) = node.parent {
            let parent = self.nodes[p].as_ref().expect("parent is live");
            if parent.children.is_empty() && idle_parent(p) {
                self.evictable.insert((parent.released_at, p));
            }
        }
        Some(page)
    }

    /// Idle leaves that may be evicted now.
    #[cfg(test)]
    pub fn evictable(&self) -> usize {
        self.evictable.len()
    }
}
