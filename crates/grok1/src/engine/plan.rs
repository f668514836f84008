//! A step as rank 0's engine decides it, sent to the other ranks of a split
//! model, which run the same forward pass on their own heads' share of the
//! KV cache.
//!
//! A step carries the page copies rank 0's cache made since the last step
//! (copy-on-write of a partly matching prefix page) and, for each sequence in
//! the step, its whole page table, cached length, masked positions, new tokens
//! and which logits it needs. Whole page tables rather than changes to them:
//! a follower then keeps no sequence state between steps, so it cannot drift
//! from rank 0 nor make a cache decision of its own (allocation, prefix reuse,
//! eviction and removal all show only as the tables rank 0 sends). The cost is
//! small: 8 bytes a page of each stepping sequence (8 sequences of 8,192
//! tokens in 16-token pages: 32 KiB), against the all-reduces of the same step
//! (2 per layer of rows x emb_size f32: 3 MiB a row for Grok-1).

use crate::kv_cache::FollowedSequence;
use crate::model::RowLogits;

/// What rank 0 tells the others before each step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Step(StepPlan),
    /// Rank 0 saves the keys and values of a prefix: every rank sends its
    /// heads' share of them (`transfer::gather`).
    Export(Transfer),
    /// Rank 0 puts saved keys and values into the cache: every rank takes
    /// its heads' share of what rank 0 sends next (`transfer::scatter`).
    Import(Transfer),
    /// Rank 0's engine has stopped: the followers end.
    Stop,
}

/// The pages a saved prefix is read from or written into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Page copies `(from, to)` rank 0 made since the last step, in order.
    pub copies: Vec<(usize, usize)>,
    /// The prefix's pages and its positions.
    pub pages: Vec<usize>,
    pub len: usize,
}

impl Transfer {
    /// The prefix as a sequence a follower's cache holds.
    pub fn sequence(&self) -> FollowedSequence {
        FollowedSequence {
            pages: self.pages.clone(),
            len: self.len,
            masked: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Page copies `(from, to)` rank 0 made since the last step, in order.
    pub copies: Vec<(usize, usize)>,
    pub inputs: Vec<PlannedInput>,
}

/// One sequence of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedInput {
    /// Its pages (those the step writes into included) and cached length.
    pub cache: FollowedSequence,
    pub tokens: Vec<u32>,
    pub logits: RowLogits,
}

/// A message that is not a plan: a bug or corrupted traffic.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("rank 0's step plan is malformed: {0}")]
pub struct PlanError(&'static str);

const STOP: u64 = 0;
const STEP: u64 = 1;
const EXPORT: u64 = 2;
const IMPORT: u64 = 3;

fn encode_copies(w: &mut Vec<u64>, copies: &[(usize, usize)]) {
    w.push(copies.len() as u64);
    for &(from, to) in copies {
        w.extend([from as u64, to as u64]);
    }
}

fn logits_code(l: RowLogits) -> u64 {
    match l {
        RowLogits::None => 0,
        RowLogits::Last => 1,
        RowLogits::All => 2,
    }
}

impl Plan {
    /// Little-endian 64-bit words.
    pub fn encode(&self) -> Vec<u8> {
        let mut w: Vec<u64> = Vec::new();
        match self {
            Plan::Stop => w.push(STOP),
            Plan::Export(t) | Plan::Import(t) => {
                w.push(if matches!(self, Plan::Export(_)) {
                    EXPORT
                } else {
                    IMPORT
                });
                encode_copies(&mut w, &t.copies);
                w.push(t.len as u64);
                w.push(t.pages.len() as u64);
                w.extend(t.pages.iter().map(|&p| p as u64));
            }
            Plan::Step(step) => {
                w.push(STEP);
                encode_copies(&mut w, &step.copies);
                w.push(step.inputs.len() as u64);
                for input in &step.inputs {
                    let c = &input.cache;
                    w.push(c.len as u64);
                    w.push(c.pages.len() as u64);
                    w.extend(c.pages.iter().map(|&p| p as u64));
                    w.push(c.masked.len() as u64);
                    w.extend(c.masked.iter().map(|&p| p as u64));
                    w.push(input.tokens.len() as u64);
                    w.extend(input.tokens.iter().map(|&t| u64::from(t)));
                    w.push(logits_code(input.logits));
                }
            }
        }
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn decode(bytes: &[u8]) -> Result<Plan, PlanError> {
        if !bytes.len().is_multiple_of(8) {
            return Err(PlanError("not whole 64-bit words"));
        }
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let mut r = Reader { words: &words };
        let plan = match r.next()? {
            STOP => Plan::Stop,
            kind @ (EXPORT | IMPORT) => {
                let copies = r.copies()?;
                let len = r.usize()?;
                let pages = r.list()?;
                let t = Transfer { copies, pages, len };
                if kind == EXPORT {
                    Plan::Export(t)
                } else {
                    Plan::Import(t)
                }
            }
            STEP => {
                let mut step = StepPlan {
                    copies: r.copies()?,
                    ..StepPlan::default()
                };
                let inputs = r.count(1)?;
                for _ in 0..inputs {
                    let len = r.usize()?;
                    let pages = r.list()?;
                    let masked = r.list()?;
                    let n = r.count(1)?;
                    let tokens = (0..n)
                        .map(|_| {
                            u32::try_from(r.next()?).map_err(|_| PlanError("token id past 2^32"))
                        })
                        .collect::<Result<_, _>>()?;
                    let logits = match r.next()? {
                        0 => RowLogits::None,
                        1 => RowLogits::Last,
                        2 => RowLogits::All,
                        _ => return Err(PlanError("unknown logits choice")),
                    };
                    step.inputs.push(PlannedInput {
                        cache: FollowedSequence { pages, len, masked },
                        tokens,
                        logits,
                    });
                }
                Plan::Step(step)
            }
            _ => return Err(PlanError("unknown kind")),
        };
        if !r.words.is_empty() {
            return Err(PlanError("words after the end"));
        }
        Ok(plan)
    }
}

struct Reader<'a> {
    words: &'a [u64],
}

impl Reader<'_> {
    fn next(&mut self) -> Result<u64, PlanError> {
        let (&first, rest) = self.words.split_first().ok_or(PlanError("cut short"))?;
        self.words = rest;
        Ok(first)
    }

    fn usize(&mut self) -> Result<usize, PlanError> {
        usize::try_from(self.next()?).map_err(|_| PlanError("a value past this machine's usize"))
    }

    /// A count of items of `words` words each, checked against what is left.
    fn count(&mut self, words: usize) -> Result<usize, PlanError> {
        let n = self.usize()?;
        if n.checked_mul(words).is_none_or(|w| w > self.words.len()) {
            return Err(PlanError("a count past the end"));
        }
        Ok(n)
    }

    fn list(&mut self) -> Result<Vec<usize>, PlanError> {
        let n = self.count(1)?;
        (0..n).map(|_| self.usize()).collect()
    }

    fn copies(&mut self) -> Result<Vec<(usize, usize)>, PlanError> {
        let n = self.count(2)?;
        (0..n).map(|_| Ok((self.usize()?, self.usize()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plan {
        Plan::Step(StepPlan {
            copies: vec![(3, 7), (7, 1)],
            inputs: vec![
                PlannedInput {
                    cache: FollowedSequence {
                        pages: vec![4, 2, 9],
                        len: 33,
                        masked: vec![0, 5],
                    },
                    tokens: vec![11, 12],
                    logits: RowLogits::Last,
                },
                PlannedInput {
                    cache: FollowedSequence {
                        pages: vec![],
                        len: 0,
                        masked: vec![],
                    },
                    tokens: vec![u32::MAX],
                    logits: RowLogits::All,
                },
            ],
        })
    }

    fn transfer() -> Transfer {
        Transfer {
            copies: vec![(5, 6)],
            pages: vec![8, 0, 3],
            len: 40,
        }
    }

    #[test]
    fn plans_survive_encoding() {
        for plan in [
            sample(),
            Plan::Stop,
            Plan::Step(StepPlan::default()),
            Plan::Export(transfer()),
            Plan::Import(transfer()),
            Plan::Import(Transfer::default()),
        ] {
            assert_eq!(Plan::decode(&plan.encode()), Ok(plan));
        }
    }

    #[test]
    fn every_cut_or_extended_message_is_refused() {
        for plan in [Plan::Export(transfer()), Plan::Import(transfer())] {
            let bytes = plan.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Plan::decode(&bytes[..cut]).is_err(),
                    "{plan:?} cut at {cut}"
                );
            }
        }
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Plan::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.extend([0; 8]);
        assert_eq!(Plan::decode(&longer), Err(PlanError("words after the end")));
        // A count that claims more than the message holds.
        let mut huge = bytes;
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Plan::decode(&huge), Err(PlanError("a count past the end")));
    }
}
