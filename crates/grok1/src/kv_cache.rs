//! The key/value cache, kept in fixed-size pages so memory is taken as sequences
//! grow rather than reserved for the worst case, and so many sequences of
//! different lengths share one pool.
//!
//! Layout: `[layer][page][kv_head]` blocks, so the keys (and the values) of one
//! head within a page are contiguous and a step reads each as one run. Within
//! a block the values are `[slot][head_dim]` and the keys transposed,
//! `[head_dim][slot]`: attention multiplies a query by all of a page's keys at
//! once with the slots in a vector's lanes (and each value row by one weight).
//! Entries are of the cache's [`KvType`]: f32 (rounded to bf16 in the bf16
//! mode, as the reference's bf16 cache holds them), bf16, or q8_0 blocks
//! along each row of `head_dim` (layouts in `backend::cpu::types::*_pages`);
//! attention reads them where they are ([`KeysPage`], [`ValuesPage`]).
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

use crate::backend::cpu::types::{bf16_pages, q8_0_pages};
use crate::config::ModelConfig;
use prefix::PrefixIndex;

/// The element type of the cache's pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F32,
    /// bfloat16, rounded to nearest even: 2 bytes a value.
    Bf16,
    /// Blocks of 32 values along a row with an f16 scale: 34 bytes per 32.
    Q8_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::Bf16, KvType::Q8_0];

    /// The name the command line and session files use.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// The type a run at `precision` caches in unless told otherwise: f32
    /// for the f32 mode (exact); bf16 for the bf16 mode (its keys and values
    /// are bf16 already, so the same bits in half the memory) and for the
    /// fast and int8 modes, where the mean KL divergence of the next-token
    /// distributions from an f32 cache's stays below 1e-4 (measured over
    /// 1,000 generated tokens by `examples/kv_divergence`: demo model 9.4e-7
    /// fast, 1.5e-6 int8; 2-layer full-width Grok-1 1.7e-5 fast, 9.78e-5 and
    /// 9.99e-5 int8 on two seeds, just under the bound: bench/RESULTS.md).
    pub fn default_for(precision: crate::backend::Precision) -> KvType {
        match precision {
            crate::backend::Precision::F32 => KvType::F32,
            _ => KvType::Bf16,
        }
    }

    /// Bytes one row of `hd` keys (or values) takes.
    pub fn row_bytes(self, hd: usize) -> usize {
        match self {
            KvType::F32 => 4 * hd,
            KvType::Bf16 => 2 * hd,
            KvType::Q8_0 => hd + 2 * q8_0_pages::blocks(hd),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown KV type {s:?} (expected f32, bf16 or q8_0)"))
    }
}

/// One head's keys in one page, transposed (key `j`'s element `t` at
/// `t * page_size + j`; q8_0 scales `[blocks, page_size]`).
#[derive(Clone, Copy, Debug)]
pub enum KeysPage<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    Q8_0 { q: &'a [i8], scales: &'a [u16] },
}

/// One head's values in one page, `[page_size, head_dim]` (q8_0 scales
/// `[page_size, blocks]`).
#[derive(Clone, Copy, Debug)]
pub enum ValuesPage<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    Q8_0 { q: &'a [i8], scales: &'a [u16] },
}

impl KeysPage<'_> {
    /// Element `t` of key `j` (`ps` slots a page).
    pub fn get(&self, ps: usize, t: usize, j: usize) -> f32 {
        match *self {
            KeysPage::F32(k) => k[t * ps + j],
            KeysPage::Bf16(k) => bf16_pages::decode(k[t * ps + j]),
            KeysPage::Q8_0 { q, scales } => {
                q8_0_pages::decode(scales[t / q8_0_pages::BLOCK * ps + j], q[t * ps + j])
            }
        }
    }

    /// Whether the page holds `hd` elements of `ps` keys.
    pub fn fits(&self, hd: usize, ps: usize) -> bool {
        match *self {
            KeysPage::F32(k) => k.len() >= hd * ps,
            KeysPage::Bf16(k) => k.len() >= hd * ps,
            KeysPage::Q8_0 { q, scales } => {
                q.len() >= hd * ps && scales.len() >= q8_0_pages::blocks(hd) * ps
            }
        }
    }
}

impl ValuesPage<'_> {
    /// Element `c` of value row `j` (rows of `hd`).
    pub fn get(&self, hd: usize, j: usize, c: usize) -> f32 {
        match *self {
            ValuesPage::F32(v) => v[j * hd + c],
            ValuesPage::Bf16(v) => bf16_pages::decode(v[j * hd + c]),
            ValuesPage::Q8_0 { q, scales } => q8_0_pages::decode(
                scales[j * q8_0_pages::blocks(hd) + c / q8_0_pages::BLOCK],
                q[j * hd + c],
            ),
        }
    }

    /// Whether the page holds `n` rows of `hd`.
    pub fn fits(&self, hd: usize, n: usize) -> bool {
        match *self {
            ValuesPage::F32(v) => v.len() >= n * hd,
            ValuesPage::Bf16(v) => v.len() >= n * hd,
            ValuesPage::Q8_0 { q, scales } => {
                q.len() >= n * hd && scales.len() >= n * q8_0_pages::blocks(hd)
            }
        }
    }
}

/// The pages' memory, `[layer][page][kv_head]` blocks of `page_size *
/// head_dim` elements (and, for q8_0, `page_size * blocks` scales).
enum Store {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    Bf16 {
        k: Vec<u16>,
        v: Vec<u16>,
    },
    Q8_0 {
        k: Vec<i8>,
        v: Vec<i8>,
        k_scales: Vec<u16>,
        v_scales: Vec<u16>,
    },
}

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

/// A step rank 0 planned that this rank's cache cannot follow (a bug or a
/// corrupted message: the job cannot go on).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FollowError {
    #[error("page {page} is outside the cache's {pages} pages")]
    Page { page: usize, pages: usize },
    #[error("sequence {sequence} of the step holds {len} positions in {pages} pages")]
    Length {
        sequence: usize,
        len: usize,
        pages: usize,
    },
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
    kv_type: KvType,
    store: Store,
    /// Pages neither held nor indexed.
    free: Vec<usize>,
    seqs: Vec<Option<SeqState>>,
    /// Sequences holding each page.
    holders: Vec<u32>,
    index: PrefixIndex,
    /// Indexed pages no sequence holds (evictable, leaves first).
    idle: usize,
    evictions: u64,
    /// Page copies made since the last [`take_copies`](Self::take_copies),
    /// in order, while recording (rank 0 of a split model sends them to the
    /// other ranks, whose caches hold other heads of the same pages).
    copies: Option<Vec<(usize, usize)>>,
}

/// One sequence of a step as rank 0's cache holds it, for a follower rank's
/// cache ([`KvCache::follow`]): its page table and how many positions are
/// cached, with the cached positions whose keys are masked (pad tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowedSequence {
    pub pages: Vec<usize>,
    pub len: usize,
    pub masked: Vec<usize>,
}

impl KvCache {
    /// An f32 cache of `num_pages` pages of `page_size` tokens each.
    pub fn new(cfg: &ModelConfig, num_pages: usize, page_size: usize) -> Self {
        Self::with_type(cfg, num_pages, page_size, KvType::F32)
    }

    /// A cache of `num_pages` pages of `page_size` tokens each, of `kv_type`
    /// elements. The memory is zero-initialised lazily by the OS, so
    /// untouched pages cost nothing.
    pub fn with_type(
        cfg: &ModelConfig,
        num_pages: usize,
        page_size: usize,
        kv_type: KvType,
    ) -> Self {
        assert!(page_size > 0, "page size must be positive");
        let blocks = cfg.num_layers * num_pages * cfg.num_kv_heads;
        let elements = blocks * page_size * cfg.key_size;
        let scales = blocks * page_size * q8_0_pages::blocks(cfg.key_size);
        let store = match kv_type {
            KvType::F32 => Store::F32 {
                k: vec![0.0; elements],
                v: vec![0.0; elements],
            },
            KvType::Bf16 => Store::Bf16 {
                k: vec![0; elements],
                v: vec![0; elements],
            },
            KvType::Q8_0 => Store::Q8_0 {
                k: vec![0; elements],
                v: vec![0; elements],
                k_scales: vec![0; scales],
                v_scales: vec![0; scales],
            },
        };
        KvCache {
            layers: cfg.num_layers,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.key_size,
            page_size,
            num_pages,
            kv_type,
            store,
            free: (0..num_pages).rev().collect(),
            seqs: Vec::new(),
            holders: vec![0; num_pages],
            index: PrefixIndex::new(num_pages),
            idle: 0,
            evictions: 0,
            copies: None,
        }
    }

    /// A cache large enough for `tokens` positions in total over at most
    /// `sequences` sequences (each may leave its last page partly empty).
    pub fn with_capacity(
        cfg: &ModelConfig,
        tokens: usize,
        sequences: usize,
        kv_type: KvType,
    ) -> Self {
        let pages = tokens.div_ceil(DEFAULT_PAGE_SIZE) + sequences;
        Self::with_type(cfg, pages.max(1), DEFAULT_PAGE_SIZE, kv_type)
    }

    /// Bytes one cached token takes (keys and values of every layer) in
    /// `kv_type`.
    pub fn bytes_per_token(cfg: &ModelConfig, kv_type: KvType) -> usize {
        2 * cfg.num_layers * cfg.num_kv_heads * kv_type.row_bytes(cfg.key_size)
    }

    /// Tokens a cache of `bytes` holds in `kv_type` in whole pages of
    /// [`DEFAULT_PAGE_SIZE`] (what `--kv-memory` sizes).
    pub fn tokens_in(cfg: &ModelConfig, bytes: usize, kv_type: KvType) -> usize {
        let page = Self::bytes_per_token(cfg, kv_type).max(1) * DEFAULT_PAGE_SIZE;
        bytes / page * DEFAULT_PAGE_SIZE
    }

    /// The element type of the pages.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
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
        if let Some(copies) = &mut self.copies {
            copies.push((from, to));
        }
        self.copy_page_data(from, to);
    }

    fn copy_page_data(&mut self, from: usize, to: usize) {
        let len = self.kv_heads * self.page_size * self.head_dim;
        let scale_len = self.kv_heads * self.page_size * q8_0_pages::blocks(self.head_dim);
        for layer in 0..self.layers {
            let (src, dst) = (self.block(layer, from, 0), self.block(layer, to, 0));
            let (s_src, s_dst) = (self.scales_at(layer, from, 0), self.scales_at(layer, to, 0));
            match &mut self.store {
                Store::F32 { k, v } => {
                    k.copy_within(src..src + len, dst);
                    v.copy_within(src..src + len, dst);
                }
                Store::Bf16 { k, v } => {
                    k.copy_within(src..src + len, dst);
                    v.copy_within(src..src + len, dst);
                }
                Store::Q8_0 {
                    k,
                    v,
                    k_scales,
                    v_scales,
                } => {
                    k.copy_within(src..src + len, dst);
                    v.copy_within(src..src + len, dst);
                    k_scales.copy_within(s_src..s_src + scale_len, s_dst);
                    v_scales.copy_within(s_src..s_src + scale_len, s_dst);
                }
            }
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

    /// Where a block's q8_0 scales start.
    fn scales_at(&self, layer: usize, page: usize, head: usize) -> usize {
        ((layer * self.num_pages + page) * self.kv_heads + head)
            * self.page_size
            * q8_0_pages::blocks(self.head_dim)
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
        let (ps, slot, hd) = (self.page_size, pos % self.page_size, self.head_dim);
        let nb = q8_0_pages::blocks(hd);
        for h in 0..self.kv_heads {
            let block = self.block(layer, page, h);
            let scales = self.scales_at(layer, page, h);
            let (kh, vh) = (&k[h * hd..(h + 1) * hd], &v[h * hd..(h + 1) * hd]);
            let (keys, at) = (block..block + ps * hd, block + slot * hd);
            match &mut self.store {
                Store::F32 { k, v } => {
                    for (t, &x) in kh.iter().enumerate() {
                        k[keys.start + t * ps + slot] = x;
                    }
                    v[at..at + hd].copy_from_slice(vh);
                }
                Store::Bf16 { k, v } => {
                    for (t, &x) in kh.iter().enumerate() {
                        k[keys.start + t * ps + slot] = bf16_pages::encode(x);
                    }
                    for (o, &x) in v[at..at + hd].iter_mut().zip(vh) {
                        *o = bf16_pages::encode(x);
                    }
                }
                Store::Q8_0 {
                    k,
                    v,
                    k_scales,
                    v_scales,
                } => {
                    for (b, chunk) in kh.chunks(q8_0_pages::BLOCK).enumerate() {
                        let (bits, d) = q8_0_pages::block_scale(chunk);
                        k_scales[scales + b * ps + slot] = bits;
                        for (i, &x) in chunk.iter().enumerate() {
                            let t = b * q8_0_pages::BLOCK + i;
                            k[keys.start + t * ps + slot] = q8_0_pages::quantize(x, d);
                        }
                    }
                    for (b, chunk) in vh.chunks(q8_0_pages::BLOCK).enumerate() {
                        let (bits, d) = q8_0_pages::block_scale(chunk);
                        v_scales[scales + slot * nb + b] = bits;
                        let out = &mut v[at + b * q8_0_pages::BLOCK..][..chunk.len()];
                        for (o, &x) in out.iter_mut().zip(chunk) {
                            *o = q8_0_pages::quantize(x, d);
                        }
                    }
                }
            }
        }
    }

    /// Reads the keys and values (`[kv_heads * head_dim]` each) of position
    /// `pos` of a sequence: what [`write`](Self::write) stored, decoded.
    pub fn read(&self, layer: usize, id: SeqId, pos: usize, k: &mut [f32], v: &mut [f32]) {
        let state = self.seqs[id.0].as_ref().expect("live sequence");
        let page = state.pages[pos / self.page_size];
        let (ps, slot, hd) = (self.page_size, pos % self.page_size, self.head_dim);
        for h in 0..self.kv_heads {
            let (keys, values) = (self.keys(layer, page, h), self.values(layer, page, h));
            for (t, x) in k[h * hd..(h + 1) * hd].iter_mut().enumerate() {
                *x = keys.get(ps, t, slot);
            }
            for (c, x) in v[h * hd..(h + 1) * hd].iter_mut().enumerate() {
                *x = values.get(hd, slot, c);
            }
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
    pub fn keys(&self, layer: usize, page: usize, head: usize) -> KeysPage<'_> {
        let at = self.block(layer, page, head);
        let range = at..at + self.page_size * self.head_dim;
        match &self.store {
            Store::F32 { k, .. } => KeysPage::F32(&k[range]),
            Store::Bf16 { k, .. } => KeysPage::Bf16(&k[range]),
            Store::Q8_0 { k, k_scales, .. } => {
                let s = self.scales_at(layer, page, head);
                let n = self.page_size * q8_0_pages::blocks(self.head_dim);
                KeysPage::Q8_0 {
                    q: &k[range],
                    scales: &k_scales[s..s + n],
                }
            }
        }
    }

    /// Values of one head in one page: `[page_size, head_dim]`.
    pub fn values(&self, layer: usize, page: usize, head: usize) -> ValuesPage<'_> {
        let at = self.block(layer, page, head);
        let range = at..at + self.page_size * self.head_dim;
        match &self.store {
            Store::F32 { v, .. } => ValuesPage::F32(&v[range]),
            Store::Bf16 { v, .. } => ValuesPage::Bf16(&v[range]),
            Store::Q8_0 { v, v_scales, .. } => {
                let s = self.scales_at(layer, page, head);
                let n = self.page_size * q8_0_pages::blocks(self.head_dim);
                ValuesPage::Q8_0 {
                    q: &v[range],
                    scales: &v_scales[s..s + n],
                }
            }
        }
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Starts recording page copies (see [`take_copies`](Self::take_copies)).
    pub fn record_copies(&mut self) {
        self.copies.get_or_insert_with(Vec::new);
    }

    /// The page copies `(from, to)` made since the last call, in order.
    pub fn take_copies(&mut self) -> Vec<(usize, usize)> {
        self.copies.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// A follower rank's cache for one step: makes the page copies rank 0
    /// made since its last step, in order, then holds exactly `sequences`
    /// (their ids returned, in order) with rank 0's page tables. It decides
    /// nothing: it keeps no prefix index and no free page, so a step that
    /// needs a page rank 0 did not give fails instead of taking one.
    pub fn follow(
        &mut self,
        copies: &[(usize, usize)],
        sequences: &[FollowedSequence],
    ) -> Result<Vec<SeqId>, FollowError> {
        let pages = self.num_pages;
        let bad_page = |page: usize| (page >= pages).then_some(FollowError::Page { page, pages });
        for &(from, to) in copies {
            if let Some(e) = bad_page(from).or_else(|| bad_page(to)) {
                return Err(e);
            }
            self.copy_page_data(from, to);
        }
        self.free.clear();
        self.index = PrefixIndex::new(pages);
        self.idle = 0;
        self.holders.fill(0);
        self.seqs.clear();
        for (i, s) in sequences.iter().enumerate() {
            if let Some(e) = s.pages.iter().find_map(|&p| bad_page(p)) {
                return Err(e);
            }
            if s.len > s.pages.len() * self.page_size {
                return Err(FollowError::Length {
                    sequence: i,
                    len: s.len,
                    pages: s.pages.len(),
                });
            }
            let mut attendable = vec![true; s.len];
            for &m in &s.masked {
                *attendable.get_mut(m).ok_or(FollowError::Length {
                    sequence: i,
                    len: m + 1,
                    pages: s.pages.len(),
                })? = false;
            }
            // Counted so that a write into a page two sequences share is
            // caught as it is on rank 0.
            for &p in &s.pages {
                self.holders[p] += 1;
            }
            self.seqs.push(Some(SeqState {
                pages: s.pages.clone(),
                len: s.len,
                attendable,
                // Never published: a follower keeps no prefix index.
                tokens: vec![0; s.len],
                published: 0,
            }));
        }
        Ok((0..sequences.len()).map(SeqId).collect())
    }

    /// What [`follow`](Self::follow) needs of a sequence of this cache.
    pub fn followed(&self, id: SeqId) -> Result<FollowedSequence, CacheError> {
        let state = self.state(id)?;
        Ok(FollowedSequence {
            pages: state.pages.clone(),
            len: state.len,
            masked: (0..state.len).filter(|&p| !state.attendable[p]).collect(),
        })
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
        let (keys, values) = (c.keys(1, page, 2), c.values(1, page, 2));
        for t in 0..hd {
            assert_eq!(keys.get(4, t, 1), k[2 * hd + t]);
            assert_eq!(values.get(hd, 1, t), v[2 * hd + t]);
        }
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
                    let (keys, values) = (c.keys(layer, page, h), c.values(layer, page, h));
                    (0..hd).all(|e| {
                        keys.get(ps, e, pos % ps) == k[h * hd + e]
                            && values.get(hd, pos % ps, e) == v[h * hd + e]
                    })
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

    /// One step of a follower: rank 0's copies and page table for `seq`,
    /// then both caches write the same entries for `tokens[from..]`.
    fn step_both(
        leader: &mut KvCache,
        follower: &mut KvCache,
        cfg: &ModelConfig,
        seq: SeqId,
        tokens: &[u32],
    ) -> SeqId {
        let from = leader.len(seq).unwrap();
        leader.reserve(seq, tokens.len()).unwrap();
        let copies = leader.take_copies();
        let table = leader.followed(seq).unwrap();
        let ids = follower.follow(&copies, &[table]).unwrap();
        for c in [(&mut *leader, seq), (&mut *follower, ids[0])] {
            let (cache, s) = c;
            for (pos, &t) in tokens.iter().enumerate().skip(from) {
                for layer in 0..cfg.num_layers {
                    let (k, v) = entry(cfg, t, pos, layer);
                    cache.write(layer, s, pos, &k, &v);
                }
            }
            cache.commit(s, &tokens[from..], u32::MAX);
        }
        ids[0]
    }

    #[test]
    fn a_follower_replays_copies_and_page_tables_and_decides_nothing() {
        let cfg = ModelConfig::tiny();
        let mut leader = KvCache::new(&cfg, 6, 8);
        leader.record_copies();
        let mut follower = KvCache::new(&cfg, 6, 8);
        let a_tokens = seq(20, 1);
        let a = leader.add_sequence();
        step_both(&mut leader, &mut follower, &cfg, a, &a_tokens);
        leader.remove_sequence_keeping_prefix(a).unwrap();
        // B shares 11 tokens with A: one shared page and a copy of 3 tokens.
        let mut b_tokens = a_tokens[..11].to_vec();
        b_tokens.extend(seq(9, 2));
        let b = leader.add_sequence();
        assert_eq!(leader.attach_prefix(b, &b_tokens, u32::MAX), Ok(11));
        let fb = step_both(&mut leader, &mut follower, &cfg, b, &b_tokens);
        assert!(holds(&leader, &cfg, b, &b_tokens));
        assert!(holds(&follower, &cfg, fb, &b_tokens));
        assert_eq!(follower.pages(fb), leader.pages(b));
        // No page of its own to take, and none outside the cache accepted.
        assert_eq!(
            follower.reserve(fb, 40),
            Err(CacheError::Full {
                needed: 2,
                free: 0,
                total: 6
            })
        );
        let outside = FollowedSequence {
            pages: vec![6],
            len: 0,
            masked: vec![],
        };
        assert_eq!(
            follower.follow(&[], &[outside]),
            Err(FollowError::Page { page: 6, pages: 6 })
        );
        assert_eq!(
            follower.follow(&[(0, 9)], &[]),
            Err(FollowError::Page { page: 9, pages: 6 })
        );
    }
}
