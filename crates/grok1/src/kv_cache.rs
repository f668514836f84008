//! The key/value cache, kept in fixed-size pages so memory is taken as sequences
//! grow rather than reserved for the worst case, and so many sequences of
//! different lengths share one pool.
//!
//! Layout: `[layer][page][kv_head]` blocks, so the keys (and the values) of one
//! head within a page are contiguous and a step reads each as one run. Within
//! a block the values are `[slot][head_dim]` and the keys transposed,
//! `[head_dim][slot]`: attention multiplies a query by all of a page's keys at
//! once with the slots in a vector's lanes (and each value row by one weight).
//! Entries are f32 (rounded to bf16 in the bf16 mode, as the reference's bf16
//! cache holds them).
//!
//! Pages are shared. A sequence's full pages can be published in a prefix
//! index ([`prefix`]) keyed by the tokens they hold; a new sequence whose
//! tokens start the same way takes those pages ([`KvCache::attach_prefix`])
//! instead of computing them. A page counts its holders; one that no sequence
//! holds but the index keeps is idle, and is evicted (least recently released
//! first, leaves of the index before their parents) only when a sequence needs
//! a page and none is free. A sequence only ever writes past its end, and the
//! page that holds its end, if partly filled, is its own and unpublished:
//! where it would not be (a sequence cut back into a shared page, a prefix
//! that ends inside a cached page), the page is copied first (copy-on-write).

mod prefix;

use crate::config::ModelConfig;
use prefix::PrefixIndex;

/// Tokens per page.
pub const DEFAULT_PAGE_SIZE: usize = 16;

/// A handle to one sequence in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(usize);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CacheError {
    #[error("KV cache full: sequence needs {needed} more pages, {free} of {total} are free")]
    Full {
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("unknown sequence {0:?}")]
    UnknownSequence(SeqId),
}

#[derive(Debug, Default)]
struct SeqState {
    pages: Vec<usize>,
    len: usize,
    /// Per cached position: false where the token was the pad id (masked as a key).
    attendable: Vec<bool>,
    /// The cached tokens (what a published page is keyed by).
    tokens: Vec<u32>,
    /// Leading pages that are in the prefix index (all full).
    published: usize,
}

pub struct KvCache {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    page_size: usize,
    num_pages: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Pages neither held nor indexed.
    free: Vec<usize>,
    seqs: Vec<Option<SeqState>>,
    /// Sequences holding each page.
    holders: Vec<u32>,
    index: PrefixIndex,
    /// Indexed pages no sequence holds (evictable, leaves first).
    idle: usize,
    evictions: u64,
}

impl KvCache {
    /// A cache of `num_pages` pages of `page_size` tokens each. The memory is
    /// zero-initialised lazily by the OS, so untouched pages cost nothing.
    pub fn new(cfg: &ModelConfig, num_pages: usize, page_size: usize) -> Self {
        assert!(page_size > 0, "page size must be positive");
        let per_layer = num_pages * cfg.num_kv_heads * page_size * cfg.key_size;
        KvCache {
            layers: cfg.num_layers,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.key_size,
            page_size,
            num_pages,
            k: vec![0.0; per_layer * cfg.num_layers],
            v: vec![0.0; per_layer * cfg.num_layers],
            free: (0..num_pages).rev().collect(),
            seqs: Vec::new(),
            holders: vec![0; num_pages],
            index: PrefixIndex::new(num_pages),
            idle: 0,
            evictions: 0,
        }
    }

    /// A cache large enough for `tokens` positions in total over at most
    /// `sequences` sequences (each may leave its last page partly empty).
    pub fn with_capacity(cfg: &ModelConfig, tokens: usize, sequences: usize) -> Self {
        let pages = tokens.div_ceil(DEFAULT_PAGE_SIZE) + sequences;
        Self::new(cfg, pages.max(1), DEFAULT_PAGE_SIZE)
    }

    /// Bytes one cached token takes (keys and values of every layer).
    pub fn bytes_per_token(cfg: &ModelConfig) -> usize {
        2 * cfg.num_layers * cfg.kv_width() * std::mem::size_of::<f32>()
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Pages a sequence can take: free ones and idle cached ones (evicted on
    /// demand).
    pub fn free_pages(&self) -> usize {
        self.free.len() + self.idle
    }

    /// Pages held by sequences.
    pub fn pages_in_use(&self) -> usize {
        self.num_pages - self.free_pages()
    }

    /// Pages no sequence holds that the prefix index keeps for reuse.
    pub fn cached_pages(&self) -> usize {
        self.idle
    }

    /// Cached pages evicted to make room since the cache was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn total_pages(&self) -> usize {
        self.num_pages
    }

    /// Starts an empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        if let Some(i) = self.seqs.iter().position(Option::is_none) {
            self.seqs[i] = Some(SeqState::default());
            return SeqId(i);
        }
        self.seqs.push(Some(SeqState::default()));
        SeqId(self.seqs.len() - 1)
    }

    /// Ends a sequence and lets go of its pages: those in the prefix index stay
    /// cached, the rest return to the pool.
    pub fn remove_sequence(&mut self, id: SeqId) -> Result<(), CacheError> {
        let state = self
            .seqs
            .get_mut(id.0)
            .and_then(Option::take)
            .ok_or(CacheError::UnknownSequence(id))?;
        // Last page first: a chain's tail is released (and so evicted) before its head.
        for &page in state.pages.iter().rev() {
            self.release(page);
        }
        Ok(())
    }

    /// Ends a sequence as [`remove_sequence`](Self::remove_sequence) does,
    /// first publishing its pages, the partly filled last one too, so that a
    /// sequence that starts with its tokens (the next turn of a conversation)
    /// reuses them.
    pub fn remove_sequence_keeping_prefix(&mut self, id: SeqId) -> Result<(), CacheError> {
        self.publish(id)?;
        let ps = self.page_size;
        let state = self.state(id)?;
        let full = state.len / ps;
        if state.len % ps != 0 && state.pages.len() > full && state.published == full {
            let parent = full.checked_sub(1).map(|i| state.pages[i]);
            let (page, tokens) = (state.pages[full], &state.tokens[full * ps..state.len]);
            if !self.index.covers(parent, tokens) {
                let tokens = tokens.to_vec();
                self.index.insert(page, parent, &tokens, false);
            }
        }
        self.remove_sequence(id)
    }

    fn state(&self, id: SeqId) -> Result<&SeqState, CacheError> {
        self.seqs
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(CacheError::UnknownSequence(id))
    }

    fn state_mut(&mut self, id: SeqId) -> Result<&mut SeqState, CacheError> {
        self.seqs
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(CacheError::UnknownSequence(id))
    }

    /// Cached positions of a sequence.
    pub fn len(&self, id: SeqId) -> Result<usize, CacheError> {
        Ok(self.state(id)?.len)
    }

    /// A page for a holder: a free one, else the idle cached page released
    /// longest ago, evicted.
    fn take_page(&mut self) -> Option<usize> {
        let page = match self.free.pop() {
            Some(page) => page,
            None => {
                let holders = &self.holders;
                let page = self.index.evict(|p| holders[p] == 0)?;
                self.idle -= 1;
                self.evictions += 1;
                page
            }
        };
        self.holders[page] = 1;
        Some(page)
    }

    /// One more holder of a page.
    fn hold(&mut self, page: usize) {
        if self.holders[page] == 0 {
            // Only indexed pages are found while nobody holds them.
            self.idle -= 1;
            self.index.busy(page);
        }
        self.holders[page] += 1;
    }

    /// One holder fewer: a page nobody holds is idle if indexed, else free.
    fn release(&mut self, page: usize) {
        self.holders[page] -= 1;
        if self.holders[page] == 0 {
            if self.index.contains(page) {
                self.idle += 1;
                self.index.idle(page);
            } else {
                self.free.push(page);
            }
        }
    }

    /// Copies every layer's keys and values of page `from` into page `to`.
    fn copy_page(&mut self, from: usize, to: usize) {
        let len = self.kv_heads * self.page_size * self.head_dim;
        for layer in 0..self.layers {
            let (src, dst) = (self.block(layer, from, 0), self.block(layer, to, 0));
            self.k.copy_within(src..src + len, dst);
            self.v.copy_within(src..src + len, dst);
        }
    }

    /// Makes room for `new_len` positions, taking pages from the pool.
    pub fn reserve(&mut self, id: SeqId, new_len: usize) -> Result<(), CacheError> {
        let state = self.state(id)?;
        let have = state.pages.len();
        // The page holding the end is the sequence's own (see `truncate`).
        debug_assert!(
            state.len % self.page_size == 0
                || (self.holders[state.pages[state.len / self.page_size]] == 1
                    && !self.index.contains(state.pages[state.len / self.page_size]))
        );
        let need = new_len.div_ceil(self.page_size);
        if need > have {
            let needed = need - have;
            if needed > self.free_pages() {
                return Err(CacheError::Full {
                    needed,
                    free: self.free_pages(),
                    total: self.num_pages,
                });
            }
            let pages: Vec<usize> = (0..needed)
                .map(|_| self.take_page().expect("counted as free"))
                .collect();
            self.state_mut(id)?.pages.extend(pages);
        }
        Ok(())
    }

    fn block(&self, layer: usize, page: usize, head: usize) -> usize {
        ((layer * self.num_pages + page) * self.kv_heads + head) * self.page_size * self.head_dim
    }

    /// Stores the keys and values (`[kv_heads * head_dim]` each) of position `pos`.
    /// The position must have been reserved.
    pub fn write(&mut self, layer: usize, id: SeqId, pos: usize, k: &[f32], v: &[f32]) {
        let state = self.seqs[id.0].as_ref().expect("live sequence");
        let page = state.pages[pos / self.page_size];
        debug_assert!(
            self.holders[page] == 1 && !self.index.contains(page),
            "a write into a shared page"
        );
        let slot = pos % self.page_size;
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let block = self.block(layer, page, h);
            let keys = &mut self.k[block..block + self.page_size * hd];
            for (t, &x) in k[h * hd..(h + 1) * hd].iter().enumerate() {
                keys[t * self.page_size + slot] = x;
            }
            let at = block + slot * hd;
            self.v[at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    /// Reads the keys and values (`[kv_heads * head_dim]` each) of position
    /// `pos` of a sequence: what [`write`](Self::write) stored.
    pub fn read(&self, layer: usize, id: SeqId, pos: usize, k: &mut [f32], v: &mut [f32]) {
        let state = self.seqs[id.0].as_ref().expect("live sequence");
        let page = state.pages[pos / self.page_size];
        let slot = pos % self.page_size;
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let block = self.block(layer, page, h);
            let keys = &self.k[block..block + self.page_size * hd];
            for (t, x) in k[h * hd..(h + 1) * hd].iter_mut().enumerate() {
                *x = keys[t * self.page_size + slot];
            }
            let at = block + slot * hd;
            v[h * hd..(h + 1) * hd].copy_from_slice(&self.v[at..at + hd]);
        }
    }

    /// Marks `tokens` as cached after the sequence's current end; `pad` keys are masked.
    pub fn commit(&mut self, id: SeqId, tokens: &[u32], pad: u32) {
        let state = self.seqs[id.0].as_mut().expect("live sequence");
        state.len += tokens.len();
        state.attendable.extend(tokens.iter().map(|&t| t != pad));
        state.tokens.extend_from_slice(tokens);
    }

    /// Shortens a sequence to at most `len` positions and returns the pages it
    /// no longer needs (also pages reserved but never filled) to the pool.
    /// Where `len` ends inside a page other sequences share or the prefix
    /// index holds, the sequence gets a copy of it to write on; with no page
    /// for the copy it is cut back to the start of that page and `Full` is
    /// returned.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<(), CacheError> {
        let ps = self.page_size;
        let state = self.state_mut(id)?;
        if len < state.len {
            state.len = len;
            state.attendable.truncate(len);
            state.tokens.truncate(len);
            state.published = state.published.min(len / ps);
        }
        let keep = state.len.div_ceil(ps);
        let extra: Vec<usize> = if state.pages.len() > keep {
            state.pages.drain(keep..).collect()
        } else {
            Vec::new()
        };
        let end = (state.len % ps != 0).then(|| (state.len / ps, state.pages[state.len / ps]));
        for page in extra.into_iter().rev() {
            self.release(page);
        }
        let Some((at, page)) = end else {
            return Ok(());
        };
        if self.holders[page] == 1 && !self.index.contains(page) {
            return Ok(());
        }
        let Some(copy) = self.take_page() else {
            let state = self.state_mut(id)?;
            state.len = at * ps;
            state.attendable.truncate(at * ps);
            state.tokens.truncate(at * ps);
            state.pages.truncate(at);
            self.release(page);
            return Err(CacheError::Full {
                needed: 1,
                free: 0,
                total: self.num_pages,
            });
        };
        self.copy_page(page, copy);
        self.state_mut(id)?.pages[at] = copy;
        self.release(page);
        Ok(())
    }

    /// Publishes the sequence's full pages not yet in the prefix index. A page
    /// whose tokens (after the same parent) another page already holds is
    /// dropped for that one, so the index keeps one copy and the sequence's
    /// pages stay a chain of it.
    pub fn publish(&mut self, id: SeqId) -> Result<(), CacheError> {
        let ps = self.page_size;
        let state = self.state(id)?;
        let (from, to) = (state.published, state.len / ps);
        for i in from..to {
            let state = self.state(id)?;
            let parent = i.checked_sub(1).map(|p| state.pages[p]);
            let (page, tokens) = (state.pages[i], &state.tokens[i * ps..(i + 1) * ps]);
            match self.index.find_full(parent, tokens) {
                Some(same) if same == page => {}
                Some(same) => {
                    self.hold(same);
                    self.state_mut(id)?.pages[i] = same;
                    self.release(page);
                }
                None => {
                    let tokens = tokens.to_vec();
                    self.index.insert(page, parent, &tokens, true);
                }
            }
        }
        self.state_mut(id)?.published = to.max(from);
        Ok(())
    }

    /// Starts an empty sequence with the longest prefix of `tokens` the cache
    /// holds and returns its length: the published pages of whole pages of
    /// `tokens` and, where the next cached page shares a run of tokens with
    /// the rest, a copy of that page (the sequence writes after the run).
    /// Leaves a sequence that is not empty as it is (returns 0).
    pub fn attach_prefix(
        &mut self,
        id: SeqId,
        tokens: &[u32],
        pad: u32,
    ) -> Result<usize, CacheError> {
        let ps = self.page_size;
        let state = self.state(id)?;
        if state.len != 0 || !state.pages.is_empty() {
            return Ok(0);
        }
        let mut pages = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(ps) {
            let Some(page) = self.index.find_full(parent, chunk) else {
                break;
            };
            self.hold(page);
            pages.push(page);
            parent = Some(page);
        }
        let mut len = pages.len() * ps;
        let published = pages.len();
        let rest = &tokens[len..tokens.len().min(len + ps)];
        if let Some((source, run)) = self.index.best_partial(parent, rest) {
            // Held while a page is taken, so it cannot be the page evicted.
            self.hold(source);
            if let Some(copy) = self.take_page() {
                self.copy_page(source, copy);
                pages.push(copy);
                len += run;
            }
            self.release(source);
        }
        let state = self.state_mut(id)?;
        state.pages = pages;
        state.len = len;
        state.tokens = tokens[..len].to_vec();
        state.attendable = state.tokens.iter().map(|&t| t != pad).collect();
        state.published = published;
        Ok(len)
    }

    /// The cached pages of a sequence, in position order.
    pub fn pages(&self, id: SeqId) -> &[usize] {
        &self.seqs[id.0].as_ref().expect("live sequence").pages
    }

    /// Per cached position, whether it may be attended to (its token was not the
    /// pad id).
    pub fn key_mask(&self, id: SeqId) -> &[bool] {
        &self.seqs[id.0].as_ref().expect("live sequence").attendable
    }

    /// Keys of one head in one page, transposed: `[head_dim, page_size]` (key
    /// `j`'s element `t` at `t * page_size + j`).
    pub fn keys(&self, layer: usize, page: usize, head: usize) -> &[f32] {
        let at = self.block(layer, page, head);
        &self.k[at..at + self.page_size * self.head_dim]
    }

    /// Values of one head in one page: `[page_size, head_dim]`.
    pub fn values(&self, layer: usize, page: usize, head: usize) -> &[f32] {
        let at = self.block(layer, page, head);
        &self.v[at..at + self.page_size * self.head_dim]
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Key/value heads cached (a tensor-parallel rank's share of them).
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_taken_and_returned() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 4, 16);
        let a = c.add_sequence();
        let b = c.add_sequence();
        c.reserve(a, 33).unwrap();
        assert_eq!(c.free_pages(), 1);
        assert_eq!(
            c.reserve(b, 17),
            Err(CacheError::Full {
                needed: 2,
                free: 1,
                total: 4
            })
        );
        c.remove_sequence(a).unwrap();
        assert_eq!(c.free_pages(), 4);
        c.reserve(b, 17).unwrap();
        assert!(c.remove_sequence(a).is_err());
    }

    #[test]
    fn writes_land_in_their_page_slot() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 4, 4);
        let s = c.add_sequence();
        c.reserve(s, 6).unwrap();
        let k: Vec<f32> = (0..cfg.kv_width()).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        c.write(1, s, 5, &k, &v);
        let page = c.pages(s)[1];
        let hd = cfg.key_size;
        let keys = c.keys(1, page, 2);
        for t in 0..hd {
            assert_eq!(keys[t * 4 + 1], k[2 * hd + t]);
        }
        assert_eq!(&c.values(1, page, 2)[hd..2 * hd], &v[2 * hd..3 * hd]);
    }

    /// A sequence of `tokens` whose keys and values are a function of
    /// (token, position, layer, element), so copies can be checked.
    fn fill(c: &mut KvCache, cfg: &ModelConfig, tokens: &[u32]) -> SeqId {
        let s = c.add_sequence();
        extend(c, cfg, s, tokens);
        s
    }

    fn extend(c: &mut KvCache, cfg: &ModelConfig, s: SeqId, tokens: &[u32]) {
        let start = c.len(s).unwrap();
        c.reserve(s, start + tokens.len()).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            for layer in 0..cfg.num_layers {
                let (k, v) = entry(cfg, t, start + i, layer);
                c.write(layer, s, start + i, &k, &v);
            }
        }
        c.commit(s, tokens, u32::MAX);
    }

    fn entry(cfg: &ModelConfig, t: u32, pos: usize, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let k: Vec<f32> = (0..cfg.kv_width())
            .map(|e| (t as usize * 1000 + pos * 10 + layer) as f32 + e as f32 / 1024.0)
            .collect();
        let v = k.iter().map(|x| -x).collect();
        (k, v)
    }

    /// Every cached position of `s` holds the entries `fill` writes for `tokens`.
    fn holds(c: &KvCache, cfg: &ModelConfig, s: SeqId, tokens: &[u32]) -> bool {
        let (ps, hd) = (c.page_size(), cfg.key_size);
        assert_eq!(c.len(s).unwrap(), tokens.len());
        tokens.iter().enumerate().all(|(pos, &t)| {
            (0..cfg.num_layers).all(|layer| {
                let (k, v) = entry(cfg, t, pos, layer);
                let page = c.pages(s)[pos / ps];
                (0..cfg.num_kv_heads).all(|h| {
                    let keys = c.keys(layer, page, h);
                    let values = &c.values(layer, page, h)[(pos % ps) * hd..][..hd];
                    (0..hd).all(|e| keys[e * ps + pos % ps] == k[h * hd + e])
                        && values == &v[h * hd..(h + 1) * hd]
                })
            })
        })
    }

    fn seq(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| 7 + i * 13 + salt).collect()
    }

    #[test]
    fn published_pages_are_shared_and_partial_pages_copied() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 8, 4);
        let a_tokens = seq(10, 0);
        let a = fill(&mut c, &cfg, &a_tokens);
        c.publish(a).unwrap();
        // Two full pages shared, then a run of 1 of the third (a partial page
        // is not published while its sequence runs).
        let mut b_tokens = a_tokens[..9].to_vec();
        b_tokens.push(999);
        let b = c.add_sequence();
        assert_eq!(c.attach_prefix(b, &b_tokens[..9], 0).unwrap(), 8);
        assert_eq!(c.pages(b), &c.pages(a)[..2]);
        assert_eq!(c.pages_in_use(), 3);
        extend(&mut c, &cfg, b, &b_tokens[8..]);
        assert!(holds(&c, &cfg, b, &b_tokens));
        assert!(holds(&c, &cfg, a, &a_tokens));
        // A's tail published when it ends: C takes a copy of it, with the run it shares.
        c.remove_sequence_keeping_prefix(a).unwrap();
        assert_eq!(c.cached_pages(), 1);
        let cc = c.add_sequence();
        assert_eq!(c.attach_prefix(cc, &a_tokens[..9], 0).unwrap(), 9);
        assert_eq!(&c.pages(cc)[..2], &c.pages(b)[..2]);
        extend(&mut c, &cfg, cc, &[5]);
        let mut c_tokens = a_tokens[..9].to_vec();
        c_tokens.push(5);
        assert!(holds(&c, &cfg, cc, &c_tokens));
        // The copied tail is unchanged for the next taker.
        let d = c.add_sequence();
        assert_eq!(c.attach_prefix(d, &a_tokens, 0).unwrap(), 10);
        assert!(holds(&c, &cfg, d, &a_tokens));
        for s in [b, cc, d] {
            c.remove_sequence(s).unwrap();
        }
        assert_eq!(c.pages_in_use(), 0);
        assert_eq!(c.free_pages(), 8);
        // Pages 0-1 and A's tail stay cached; nothing else.
        assert_eq!(c.cached_pages(), 3);
    }

    #[test]
    fn a_prefix_matches_only_its_exact_tokens_and_positions() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 8, 4);
        let a_tokens = seq(8, 0);
        let a = fill(&mut c, &cfg, &a_tokens);
        c.publish(a).unwrap();
        // Same second page after a different first page: no match at all.
        let mut other = seq(4, 1);
        other.extend_from_slice(&a_tokens[4..]);
        let b = c.add_sequence();
        assert_eq!(c.attach_prefix(b, &other, 0).unwrap(), 0);
        assert!(c.pages(b).is_empty());
        // First page differs in its last token: a run of 3, copied.
        let mut near = a_tokens.clone();
        near[3] = 1;
        let e = c.add_sequence();
        assert_eq!(c.attach_prefix(e, &near, 0).unwrap(), 3);
        assert_ne!(c.pages(e)[0], c.pages(a)[0]);
    }

    #[test]
    fn eviction_takes_idle_leaves_least_recently_released_first() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 6, 4);
        // Two chains of two full pages, released in order x then y.
        let (xt, yt) = (seq(8, 0), seq(8, 100));
        let x = fill(&mut c, &cfg, &xt);
        let y = fill(&mut c, &cfg, &yt);
        c.publish(x).unwrap();
        c.publish(y).unwrap();
        let (xp, yp) = (c.pages(x).to_vec(), c.pages(y).to_vec());
        c.remove_sequence(x).unwrap();
        c.remove_sequence(y).unwrap();
        assert_eq!((c.cached_pages(), c.free_pages()), (4, 6));
        assert_eq!(c.index.evictable(), 2, "only leaves are evictable");
        // Needing 4 pages: the 2 free, then x's leaf, then x's head (now a leaf).
        let z = c.add_sequence();
        c.reserve(z, 16).unwrap();
        assert_eq!(c.evictions(), 2);
        let mut taken = c.pages(z).to_vec();
        taken.sort();
        let mut want: Vec<usize> = xp.clone();
        want.extend((0..6).filter(|p| !xp.contains(p) && !yp.contains(p)));
        want.sort();
        assert_eq!(taken, want);
        // y is still whole; held pages are never evicted.
        let w = c.add_sequence();
        assert_eq!(c.attach_prefix(w, &yt, 0).unwrap(), 8);
        assert!(holds(&c, &cfg, w, &yt));
        assert_eq!(c.free_pages(), 0);
        let v = c.add_sequence();
        assert_eq!(
            c.reserve(v, 1),
            Err(CacheError::Full {
                needed: 1,
                free: 0,
                total: 6
            })
        );
        assert_eq!(c.evictions(), 2);
    }

    #[test]
    fn a_sequence_cut_back_into_a_shared_page_writes_on_a_copy() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 4, 4);
        let at = seq(8, 0);
        let a = fill(&mut c, &cfg, &at);
        c.publish(a).unwrap();
        let b = c.add_sequence();
        assert_eq!(c.attach_prefix(b, &at, 0).unwrap(), 8);
        c.truncate(b, 6).unwrap();
        assert_ne!(c.pages(b)[1], c.pages(a)[1]);
        let mut bt = at[..6].to_vec();
        bt.extend([3, 4]);
        extend(&mut c, &cfg, b, &[3, 4]);
        assert!(holds(&c, &cfg, b, &bt));
        assert!(holds(&c, &cfg, a, &at));
        // Its own published page too: the index keeps what it published.
        c.truncate(a, 5).unwrap();
        extend(&mut c, &cfg, a, &[9]);
        let d = c.add_sequence();
        assert_eq!(c.attach_prefix(d, &at, 0).unwrap(), 8);
        assert!(holds(&c, &cfg, d, &at));
    }

    #[test]
    fn publishing_a_page_the_index_holds_drops_the_duplicate() {
        let cfg = ModelConfig::tiny();
        let mut c = KvCache::new(&cfg, 6, 4);
        let t = seq(9, 0);
        let a = fill(&mut c, &cfg, &t);
        let b = fill(&mut c, &cfg, &t);
        c.publish(a).unwrap();
        assert_eq!(c.pages_in_use(), 6);
        c.publish(b).unwrap();
        assert_eq!(&c.pages(b)[..2], &c.pages(a)[..2]);
        assert_eq!(c.pages_in_use(), 4);
        assert!(holds(&c, &cfg, b, &t));
        c.remove_sequence(a).unwrap();
        c.remove_sequence(b).unwrap();
        assert_eq!((c.pages_in_use(), c.cached_pages()), (0, 2));
    }
}
