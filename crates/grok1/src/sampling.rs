//! Turning logits into a token: greedy, temperature, top-k, top-p (with the
//! reference's nucleus semantics), min-p and a repetition penalty, drawn from a
//! seeded generator so runs are reproducible.
//!
//! Order of operations: logit bias, repetition penalty, presence and frequency
//! penalties, the allowed-token mask (a grammar's), temperature, top-k, top-p,
//! min-p, then one categorical draw. Temperature 0 is greedy (the lowest id wins ties);
//! a temperature so small that it underflows the logits' scale (down to the
//! smallest subnormal) draws the greedy token too, or one tied with it.
//! A row holding a NaN or infinite logit is an error, never a token.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("repetition_penalty must be a finite number > 0, got {0}")]
    RepetitionPenalty(f32),
    #[error("presence_penalty must be in [-2, 2], got {0}")]
    PresencePenalty(f32),
    #[error("frequency_penalty must be in [-2, 2], got {0}")]
    FrequencyPenalty(f32),
    #[error("logit_bias for token {token} must be in [-100, 100], got {bias}")]
    LogitBias { token: u32, bias: f32 },
    #[error("the grammar allows no token here")]
    NothingAllowed,
    #[error("the model produced a non-finite logit ({value} for token {token}): its weights or its config's scales are broken")]
    NonFiniteLogit { token: usize, value: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus: keep the most likely tokens holding `top_p` of the mass; 1 = off.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the best; 0 = off.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already in the
    /// context; 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated
    /// (OpenAI's `presence_penalty`; prompt tokens do not count); 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated
    /// (OpenAI's `frequency_penalty`); 0 = off.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens before anything else (OpenAI's
    /// `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplingError::MinP(self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplingError::RepetitionPenalty(self.repetition_penalty));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(SamplingError::PresencePenalty(self.presence_penalty));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(SamplingError::FrequencyPenalty(self.frequency_penalty));
        }
        if let Some(&(token, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return Err(SamplingError::LogitBias { token, bias });
        }
        Ok(())
    }
}

/// A grammar that decides which tokens a sequence may draw next (structured
/// output). The engine asks for the mask before each draw and reports the
/// drawn token; an implementation may compute the next mask in the
/// background meanwhile (while the next forward pass runs).
pub trait TokenConstraint: Send {
    /// The tokens allowed next, as a bitset in [`mask_allows`]' layout.
    fn allowed(&mut self) -> Result<&[u32], String>;
    /// Records the drawn token; true when the grammar is complete (only the
    /// end of the sequence may follow).
    fn accept(&mut self, token: u32) -> Result<bool, String>;
}

/// Whether a token mask allows `token`: bit `token % 32` of word `token / 32`
/// (toktrie's layout); ids past the mask's words are not allowed.
pub fn mask_allows(mask: &[u32], token: u32) -> bool {
    mask.get(token as usize / 32)
        .is_some_and(|w| w >> (token % 32) & 1 == 1)
}

/// Index of the largest value; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Picks the next token from `logits` given the tokens already in the
    /// context (all of them count as generated for the presence and frequency
    /// penalties); a NaN or infinite logit is an error.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Result<u32, SamplingError> {
        self.sample_masked(logits, context, 0, None)
    }

    /// [`Sampler::sample`] where `context[generated_from..]` are the generated
    /// tokens (those the presence and frequency penalties count) and, with a
    /// `mask`, only the tokens it allows can be drawn (see [`mask_allows`]).
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        context: &[u32],
        generated_from: usize,
        mask: Option<&[u32]>,
    ) -> Result<u32, SamplingError> {
        if let Some(token) = logits.iter().position(|l| !l.is_finite()) {
            return Err(SamplingError::NonFiniteLogit {
                token,
                value: logits[token],
            });
        }
        let p = &self.params;
        let mut logits = logits.to_vec();
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = (*l + bias).clamp(-f32::MAX, f32::MAX);
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in context {
                if let Some(l) = logits.get_mut(t as usize) {
                    if seen.insert(t) {
                        let penalised = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                        // A penalty near 0 (or huge) must not make a logit infinite.
                        *l = penalised.clamp(-f32::MAX, f32::MAX);
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::new();
            for &t in context.get(generated_from..).unwrap_or(&[]) {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    let penalty = p.presence_penalty + p.frequency_penalty * n as f32;
                    *l = (*l - penalty).clamp(-f32::MAX, f32::MAX);
                }
            }
        }
        // Disallowed tokens get -inf: probability 0 in every path below, and
        // last in every ordering.
        if let Some(mask) = mask {
            let mut allowed = 0;
            for (i, chunk) in logits.chunks_mut(32).enumerate() {
                let word = mask.get(i).copied().unwrap_or(0);
                if word == u32::MAX && chunk.len() == 32 {
                    allowed += 32;
                    continue;
                }
                for (bit, l) in chunk.iter_mut().enumerate() {
                    if word >> bit & 1 == 1 {
                        allowed += 1;
                    } else {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            if allowed == 0 {
                return Err(SamplingError::NothingAllowed);
            }
        }
        if p.temperature == 0.0 {
            return Ok(argmax(&logits) as u32);
        }
        // Shifted so the best is 0, then scaled: every value stays finite or
        // becomes -inf (probability 0), however small the temperature. Scaling
        // first overflowed to +inf below a temperature of ~1e-37, and the
        // first token with a positive logit (pad, [UNK]) was drawn.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for l in logits.iter_mut() {
            *l = (*l - max) / p.temperature;
        }
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p == 0.0 {
            // No filter: draw from the whole softmax without sorting the vocabulary.
            // Weights in f32 (a relative error of 1e-7 in a probability is far
            // below what a draw can resolve), summed in f64; tokens more than
            // e^-40 less likely than the best (at 0) cannot be drawn and are skipped.
            let best = argmax(&logits) as u32;
            let mut total = 0f64;
            for l in logits.iter_mut() {
                *l = if *l > -40.0 { l.exp() } else { 0.0 };
                total += *l as f64;
            }
            let mut u = self.rng.random::<f64>() * total;
            for (i, &w) in logits.iter().enumerate() {
                let w = w as f64;
                if u < w {
                    return Ok(i as u32);
                }
                u -= w;
            }
            return Ok(best);
        }
        // Candidates by descending logit, lower id first on ties.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        if let Some(mask) = mask {
            order.retain(|&t| mask_allows(mask, t));
        }
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if p.top_k > 0 && p.top_k < order.len() {
            order.select_nth_unstable_by(p.top_k - 1, by_logit);
            order.truncate(p.top_k);
        }
        order.sort_unstable_by(by_logit);
        let max = logits[order[0] as usize] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&t| (logits[t as usize] as f64 - max).exp())
            .collect();
        let mut keep = order.len();
        if p.top_p < 1.0 {
            // The reference (runners.py top_p_filter): sort ascending, take the first
            // index where the cumulative probability reaches 1 - top_p, and keep every
            // logit at or above the logit there.
            let total: f64 = weights.iter().sum();
            let mut cumulative = 0.0;
            let mut threshold = order.len() - 1;
            for i in (0..order.len()).rev() {
                cumulative += weights[i] / total;
                if cumulative >= 1.0 - p.top_p as f64 {
                    threshold = i;
                    break;
                }
            }
            let cut = logits[order[threshold] as usize];
            keep = order
                .iter()
                .take_while(|&&t| logits[t as usize] >= cut)
                .count();
        }
        if p.min_p > 0.0 {
            let floor = (p.min_p as f64).ln();
            keep = order[..keep]
                .iter()
                .take_while(|&&t| logits[t as usize] as f64 - max >= floor)
                .count()
                .max(1);
        }
        let total: f64 = weights[..keep].iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, &w) in weights[..keep].iter().enumerate() {
            if u < w {
                return Ok(order[i]);
            }
            u -= w;
        }
        Ok(order[keep - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_lowest_id_on_ties() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 0.5, 0.5, -1.0], &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_can_change_the_greedy_pick() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        })
        .unwrap();
        assert_eq!(s.sample(&[1.0, 0.8, -3.0], &[0, 0]).unwrap(), 1);
        assert_eq!(s.sample(&[-1.0, -0.8, -3.0], &[1]).unwrap(), 0);
    }

    #[test]
    fn seeded_runs_are_reproducible_and_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0)
            })
            .unwrap();
            (0..40)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn top_k_limits_the_candidates() {
        let logits = [0.0, 3.0, 2.9, 2.8, -1.0];
        let mut s = Sampler::new(SamplingParams {
            top_k: 2,
            ..params(5.0)
        })
        .unwrap();
        for _ in 0..200 {
            assert!(matches!(s.sample(&logits, &[]).unwrap(), 1 | 2));
        }
    }

    #[test]
    fn top_p_follows_the_reference_nucleus() {
        // probabilities 0.5, 0.3, 0.2 (ids 0, 1, 2)
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        // top_p 0.6: ascending cumsum 0.2, 0.5, 1.0 first reaches 0.4 at id 1,
        // so ids 0 and 1 are kept.
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.6,
            ..params(1.0)
        })
        .unwrap();
        let picks: std::collections::HashSet<u32> =
            (0..300).map(|_| s.sample(&logits, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1].into_iter().collect());
        // top_p 0.45: the ascending sum first reaches 0.55 at id 0, kept alone.
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.45,
            ..params(1.0)
        })
        .unwrap();
        assert!((0..100).all(|_| s.sample(&logits, &[]).unwrap() == 0));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [0.0, -0.1, -5.0];
        let mut s = Sampler::new(SamplingParams {
            min_p: 0.5,
            ..params(1.0)
        })
        .unwrap();
        assert!((0..200).all(|_| s.sample(&logits, &[]).unwrap() != 2));
    }

    #[test]
    fn distribution_follows_the_softmax() {
        let logits = [0.0f32, 1.0];
        let mut s = Sampler::new(SamplingParams {
            seed: 9,
            ..params(1.0)
        })
        .unwrap();
        let ones = (0..20000)
            .filter(|_| s.sample(&logits, &[]).unwrap() == 1)
            .count() as f64
            / 20000.0;
        let expected = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((ones - expected).abs() < 0.015, "{ones} vs {expected}");
    }

    /// Logits as a model gives them: a clear best token (id 7), and positive
    /// logits at the ids a broken draw fell back to (0 = pad, 1 = [UNK]).
    fn peaked_logits() -> Vec<f32> {
        let mut logits: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.61).sin() * 8.0).collect();
        logits[0] = 9.0;
        logits[1] = 9.5;
        logits[7] = 12.0;
        logits
    }

    #[test]
    fn temperatures_down_to_the_smallest_subnormal_draw_the_greedy_token() {
        let logits = peaked_logits();
        // (top_k, top_p, min_p): the unsorted draw and each filter.
        let filters = [
            (0, 1.0, 0.0),
            (40, 1.0, 0.0),
            (0, 0.9, 0.0),
            (0, 1.0, 0.05),
            (5, 0.5, 0.1),
        ];
        // f64, as the server parses JSON; 5e-324 is 0 in f32 (the greedy path).
        for temperature in [1e-1f64, 1e-10, 1e-30, 1e-37, 1e-38, 1e-40, 1e-45, 5e-324] {
            for (top_k, top_p, min_p) in filters {
                let mut s = Sampler::new(SamplingParams {
                    temperature: temperature as f32,
                    top_k,
                    top_p,
                    min_p,
                    seed: 5,
                    ..Default::default()
                })
                .unwrap();
                for _ in 0..50 {
                    assert_eq!(
                        s.sample(&logits, &[]).unwrap(),
                        7,
                        "temperature {temperature:e}, top_k {top_k}, top_p {top_p}, min_p {min_p}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_penalty_near_zero_keeps_the_logits_finite() {
        // Dividing 12.0 by 1e-40 overflowed to +inf, and inf - inf drew the
        // fifth candidate of top_k 5.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1e-40,
            top_k: 5,
            ..params(1.0)
        })
        .unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&peaked_logits(), &[7]).unwrap(), 7);
        }
    }

    #[test]
    fn a_non_finite_logit_is_an_error_not_a_token() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for temperature in [0.0, 1.0] {
                let mut logits = peaked_logits();
                logits[3] = bad;
                let err = Sampler::new(params(temperature))
                    .unwrap()
                    .sample(&logits, &[])
                    .unwrap_err();
                assert!(
                    matches!(err, SamplingError::NonFiniteLogit { token: 3, value } if value.to_bits() == bad.to_bits()),
                    "{err}"
                );
            }
        }
    }

    /// A mask allowing `ids` over `n` tokens.
    fn mask_of(ids: &[u32], n: usize) -> Vec<u32> {
        let mut mask = vec![0u32; n.div_ceil(32)];
        for &t in ids {
            mask[t as usize / 32] |= 1 << (t % 32);
        }
        mask
    }

    #[test]
    fn a_mask_limits_every_draw_to_its_tokens() {
        let logits = peaked_logits();
        let allowed = [3u32, 40, 41, 999];
        let mask = mask_of(&allowed, logits.len());
        let best = *allowed
            .iter()
            .max_by(|a, b| logits[**a as usize].total_cmp(&logits[**b as usize]))
            .unwrap();
        // Greedy: the best allowed token, not the best token (7).
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample_masked(&logits, &[], 0, Some(&mask)).unwrap(), best);
        // Every sampling path: the unfiltered draw and each filter.
        for (top_k, top_p, min_p) in [(0, 1.0, 0.0), (2, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.01)] {
            let mut s = Sampler::new(SamplingParams {
                temperature: 5.0,
                top_k,
                top_p,
                min_p,
                seed: 11,
                ..Default::default()
            })
            .unwrap();
            let drawn: std::collections::HashSet<u32> = (0..300)
                .map(|_| s.sample_masked(&logits, &[], 0, Some(&mask)).unwrap())
                .collect();
            assert!(drawn.iter().all(|t| allowed.contains(t)), "{drawn:?}");
            if top_k == 0 && top_p == 1.0 {
                // At temperature 5 the four are close enough that all come up.
                assert_eq!(drawn.len(), 4, "{drawn:?}");
            }
        }
        assert!(!mask_allows(&mask, 7) && mask_allows(&mask, 999));
        // Ids past the mask's words are not allowed.
        assert!(!mask_allows(&mask, 5000));
        let err = Sampler::new(params(1.0))
            .unwrap()
            .sample_masked(&logits, &[], 0, Some(&mask_of(&[], logits.len())))
            .unwrap_err();
        assert_eq!(err, SamplingError::NothingAllowed);
    }

    #[test]
    fn logit_bias_and_presence_and_frequency_penalties_follow_openai() {
        let logits = [1.0f32, 0.5, 0.0, -1.0];
        let greedy = |p: SamplingParams, context: &[u32], from: usize| {
            Sampler::new(p)
                .unwrap()
                .sample_masked(&logits, context, from, None)
                .unwrap()
        };
        let bias = |b: Vec<(u32, f32)>| SamplingParams {
            logit_bias: b,
            ..params(0.0)
        };
        assert_eq!(greedy(bias(vec![(3, 2.5)]), &[], 0), 3);
        assert_eq!(greedy(bias(vec![(0, -100.0)]), &[], 0), 1);
        // Presence: 0.6 once for token 0 (generated twice) -> 0.4 < 0.5.
        let presence = SamplingParams {
            presence_penalty: 0.6,
            ..params(0.0)
        };
        assert_eq!(greedy(presence.clone(), &[0, 0], 0), 1);
        // Prompt tokens (before `generated_from`) do not count.
        assert_eq!(greedy(presence, &[0, 0], 2), 0);
        // Frequency: 0.3 per time -> 1.0 - 0.3 = 0.7 stays best, twice 0.4 does not.
        let frequency = SamplingParams {
            frequency_penalty: 0.3,
            ..params(0.0)
        };
        assert_eq!(greedy(frequency.clone(), &[0], 0), 0);
        assert_eq!(greedy(frequency, &[0, 0], 0), 1);
        // Negative penalties favour repeats.
        let negative = SamplingParams {
            frequency_penalty: -1.5,
            ..params(0.0)
        };
        assert_eq!(greedy(negative, &[2], 0), 2);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert_eq!(
            Sampler::new(params(-1.0)).err(),
            Some(SamplingError::Temperature(-1.0))
        );
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..params(1.0)
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            min_p: 1.5,
            ..params(1.0)
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            repetition_penalty: 0.0,
            ..params(1.0)
        })
        .is_err());
        assert_eq!(
            Sampler::new(SamplingParams {
                presence_penalty: 2.5,
                ..params(1.0)
            })
            .err(),
            Some(SamplingError::PresencePenalty(2.5))
        );
        assert_eq!(
            Sampler::new(SamplingParams {
                frequency_penalty: f32::NAN,
                ..params(1.0)
            })
            .err()
            .map(|e| e.to_string()),
            Some("frequency_penalty must be in [-2, 2], got NaN".into())
        );
        assert_eq!(
            Sampler::new(SamplingParams {
                logit_bias: vec![(4, 150.0)],
                ..params(1.0)
            })
            .err(),
            Some(SamplingError::LogitBias {
                token: 4,
                bias: 150.0
            })
        );
    }
}
