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

use crate::config::ModelConfig;

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
}

pub struct KvCache {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    page_size: usize,
    num_pages: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    free: Vec<usize>,
    seqs: Vec<Option<SeqState>>,
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

    pub fn free_pages(&self) -> usize {
        self.free.len()
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

    /// Ends a sequence and returns its pages to the pool.
    pub fn remove_sequence(&mut self, id: SeqId) -> Result<(), CacheError> {
        let state = self
            .seqs
            .get_mut(id.0)
            .and_then(Option::take)
            .ok_or(CacheError::UnknownSequence(id))?;
        self.free.extend(state.pages);
        Ok(())
    }

    fn state(&self, id: SeqId) -> Result<&SeqState, CacheError> {
        self.seqs
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or(CacheError::UnknownSequence(id))
    }

    /// Cached positions of a sequence.
    pub fn len(&self, id: SeqId) -> Result<usize, CacheError> {
        Ok(self.state(id)?.len)
    }

    /// Makes room for `new_len` positions, taking pages from the pool.
    pub fn reserve(&mut self, id: SeqId, new_len: usize) -> Result<(), CacheError> {
        let have = self.state(id)?.pages.len();
        let need = new_len.div_ceil(self.page_size);
        if need > have {
            let needed = need - have;
            if needed > self.free.len() {
                return Err(CacheError::Full {
                    needed,
                    free: self.free.len(),
                    total: self.num_pages,
                });
            }
            let at = self.free.len() - needed;
            let pages: Vec<usize> = self.free.drain(at..).collect();
            self.seqs[id.0]
                .as_mut()
                .expect("checked by state()")
                .pages
                .extend(pages);
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

    /// Marks `tokens` as cached after the sequence's current end; `pad` keys are masked.
    pub fn commit(&mut self, id: SeqId, tokens: &[u32], pad: u32) {
        let state = self.seqs[id.0].as_mut().expect("live sequence");
        state.len += tokens.len();
        state.attendable.extend(tokens.iter().map(|&t| t != pad));
    }

    /// Shortens a sequence to at most `len` positions and returns the pages it
    /// no longer needs (also pages reserved but never filled) to the pool.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<(), CacheError> {
        let page_size = self.page_size;
        let state = self
            .seqs
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(CacheError::UnknownSequence(id))?;
        if len < state.len {
            state.len = len;
            state.attendable.truncate(len);
        }
        let keep = state.len.div_ceil(page_size);
        if state.pages.len() > keep {
            let freed: Vec<usize> = state.pages.drain(keep..).collect();
            self.free.extend(freed);
        }
        Ok(())
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
}
