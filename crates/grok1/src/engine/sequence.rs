//! One request's life inside the engine: its tokens, how many are in the KV
//! cache, its sampler, its text held back for stop strings, and its events.

use std::time::Instant;

use grok1_tokenizer::{DecodeState, Tokenizer};

use super::{CancelToken, Event, FinishReason, Metrics, Request, SubmitError, TokenLogprob};
use crate::kv_cache::SeqId;
use crate::model::RowLogits;
use crate::sampling::{Sampler, TokenConstraint};

pub(super) struct Sequence {
    pub kv: Option<SeqId>,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    pub cached: usize,
    prompt_len: usize,
    max_tokens: usize,
    generated: usize,
    sampler: Sampler,
    constraint: Option<Box<dyn TokenConstraint>>,
    stop_token_ids: Vec<u32>,
    stop_strings: Vec<String>,
    logprobs: Option<usize>,
    /// Collected while the prompt is processed; sent once it is complete.
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    decode: Option<DecodeState>,
    /// Decoded text not yet released (it may still become a stop string).
    held: String,
    /// A stop string ended the text: nothing after it is released.
    stopped_on_text: bool,
    sink: Box<dyn FnMut(Event) -> bool + Send>,
    /// The sink refused an event.
    cancelled: bool,
    cancel: CancelToken,
    submitted: Instant,
    /// It has entered the batch once (a preempted sequence re-enters).
    was_admitted: bool,
    /// Prompt tokens taken from the prefix cache when it first entered the batch.
    cached_tokens: Option<usize>,
    last_token: Option<Instant>,
}

/// `log_softmax(row)[token]` and the `top` most likely tokens with theirs.
pub fn logprob_of(row: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let lp = |t: u32| (row[t as usize] as f64 - lse) as f32;
    let mut best = Vec::new();
    if top > 0 {
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        let k = top.min(ids.len());
        let by_logit =
            |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        if k < ids.len() {
            ids.select_nth_unstable_by(k - 1, by_logit);
            ids.truncate(k);
        }
        ids.sort_by(by_logit);
        best = ids.into_iter().map(|t| (t, lp(t))).collect();
    }
    TokenLogprob {
        token,
        logprob: lp(token),
        top: best,
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string.
fn pending_stop_prefix(text: &str, stops: &[String]) -> usize {
    let mut held = 0;
    for stop in stops {
        for (len, _) in stop.char_indices().skip(1) {
            if len > held && text.ends_with(&stop[..len]) {
                held = len;
            }
        }
    }
    held
}

impl Sequence {
    pub fn new(r: Request, cancel: CancelToken) -> Result<Self, SubmitError> {
        let prompt_len = r.prompt.len();
        Ok(Sequence {
            kv: None,
            tokens: r.prompt,
            cached: 0,
            prompt_len,
            max_tokens: r.max_tokens,
            generated: 0,
            sampler: Sampler::new(r.sampling)?,
            constraint: r.constraint,
            stop_token_ids: r.stop_token_ids,
            stop_strings: r
                .stop_strings
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            logprobs: r.logprobs,
            prompt_logprobs: r.prompt_logprobs.then(|| vec![None; prompt_len]),
            decode: None,
            held: String::new(),
            stopped_on_text: false,
            sink: r.sink,
            cancelled: false,
            cancel,
            submitted: Instant::now(),
            was_admitted: false,
            cached_tokens: None,
            last_token: None,
        })
    }

    /// Tokens not yet in the cache.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.cached
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled || self.cancel.is_cancelled()
    }

    fn send(&mut self, event: Event) {
        if !self.cancelled && !(self.sink)(event) {
            self.cancelled = true;
        }
    }

    /// Whether it still needs the logits of prompt positions (for their
    /// log-probabilities), so it cannot take them from the prefix cache.
    pub fn needs_prompt_rows(&self) -> bool {
        self.prompt_logprobs.is_some()
    }

    /// Records `tokens` taken from the prefix cache on entering the batch; the
    /// first entry's prompt tokens are what the response reports.
    pub fn reused(&mut self, tokens: usize, metrics: &Metrics) {
        metrics.prefix_lookup(tokens);
        if self.cached_tokens.is_none() {
            self.cached_tokens = Some(tokens.min(self.prompt_len));
        }
    }

    /// The logits a step that feeds `take` more tokens needs.
    pub fn row_logits(&self, take: usize) -> RowLogits {
        if self.prompt_logprobs.is_some() && self.cached < self.prompt_len {
            RowLogits::All
        } else if self.cached + take == self.tokens.len() && self.generated < self.max_tokens {
            RowLogits::Last
        } else {
            RowLogits::None
        }
    }

    /// Takes a step's result: `take` tokens went into the cache and `rows` are
    /// the logits computed for them, by position. Returns why the sequence
    /// ends, if it does.
    pub fn advance(
        &mut self,
        take: usize,
        rows: &[(usize, &[f32])],
        tokenizer: &Tokenizer,
        context: usize,
        metrics: &Metrics,
    ) -> Option<FinishReason> {
        if let Some(lp) = self.prompt_logprobs.as_mut() {
            let top = self.logprobs.unwrap_or(0);
            for &(pos, row) in rows {
                if pos + 1 < self.prompt_len {
                    lp[pos + 1] = Some(logprob_of(row, self.tokens[pos + 1], top));
                }
            }
        }
        self.cached += take;
        if self.cached >= self.prompt_len {
            if let Some(lp) = self.prompt_logprobs.take() {
                self.send(Event::PromptLogprobs(lp));
            }
        }
        if self.cached < self.tokens.len() {
            return None;
        }
        if self.generated >= self.max_tokens {
            return Some(FinishReason::Length);
        }
        let &(_, row) = rows.last()?;
        let mask = match self.constraint.as_mut().map(|c| c.allowed()).transpose() {
            Ok(mask) => mask,
            Err(e) => return Some(FinishReason::Error(format!("the grammar failed: {e}"))),
        };
        let next = match self
            .sampler
            .sample_masked(row, &self.tokens, self.prompt_len, mask)
        {
            Ok(next) => next,
            // A NaN or infinite logit: the request fails instead of drawing garbage.
            Err(e) => return Some(FinishReason::Error(e.to_string())),
        };
        let logprob = self.logprobs.map(|n| logprob_of(row, next, n));
        let now = Instant::now();
        match self.last_token {
            None => metrics.first_token(now - self.submitted),
            Some(t) => metrics.next_token(now - t),
        }
        self.last_token = Some(now);
        if self.stop_token_ids.contains(&next) {
            self.generated += 1;
            return Some(FinishReason::Stop);
        }
        // A grammar allows the end token only where it is complete (then it is
        // a stop token, above); any other token moves it on.
        let complete = match self.constraint.as_mut().map(|c| c.accept(next)) {
            None => false,
            Some(Ok(complete)) => complete,
            Some(Err(e)) => return Some(FinishReason::Error(format!("the grammar failed: {e}"))),
        };
        self.tokens.push(next);
        self.generated += 1;
        // The completion is decoded as the continuation of its prompt, so its
        // first word keeps the space SentencePiece drops only at a document's
        // start.
        let prompt = &self.tokens[..self.prompt_len];
        let state = self
            .decode
            .get_or_insert_with(|| DecodeState::after(tokenizer, prompt));
        // An id the tokenizer does not have (a model with a larger vocabulary)
        // releases no text.
        let delta = state.push(tokenizer, &[next]).unwrap_or_default();
        self.held.push_str(&delta);
        let found = self
            .stop_strings
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let text = self.held[..at].to_string();
            self.held.clear();
            self.stopped_on_text = true;
            self.send(Event::Token {
                token: next,
                text,
                logprob,
            });
            return Some(FinishReason::Stop);
        }
        let keep = pending_stop_prefix(&self.held, &self.stop_strings);
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        self.send(Event::Token {
            token: next,
            text,
            logprob,
        });
        if complete {
            return Some(FinishReason::Stop);
        }
        if self.generated >= self.max_tokens || self.tokens.len() >= context {
            return Some(FinishReason::Length);
        }
        None
    }

    /// Records its time in the queue when it first enters the batch.
    pub fn admitted(&mut self, metrics: &Metrics) {
        if !self.was_admitted {
            self.was_admitted = true;
            metrics.admitted(self.submitted.elapsed());
        }
    }

    /// Sends the last text and `Done`.
    pub fn close(&mut self, reason: FinishReason, metrics: &Metrics) {
        if !self.stopped_on_text && matches!(reason, FinishReason::Stop | FinishReason::Length) {
            if let Some(state) = self.decode.as_mut() {
                let tail = state.finish();
                self.held.push_str(&tail);
            }
            if !self.held.is_empty() {
                let text = std::mem::take(&mut self.held);
                self.send(Event::Text(text));
            }
        }
        metrics.request_done(&reason, self.generated, self.submitted.elapsed());
        let done = Event::Done {
            reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens.unwrap_or(0),
        };
        // The sink may be gone; Done is sent regardless of `cancelled`.
        let _ = (self.sink)(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    #[test]
    fn stop_prefixes_are_held_on_char_boundaries() {
        let stops = vec!["\n\nUser:".to_string(), "é!".to_string()];
        assert_eq!(pending_stop_prefix("hello\n", &stops), 1);
        assert_eq!(pending_stop_prefix("hello\n\nUs", &stops), 4);
        assert_eq!(pending_stop_prefix("caf é", &stops), "é".len());
        assert_eq!(pending_stop_prefix("plain", &stops), 0);
    }

    /// Runs `body` through a sequence as if a model had drawn it after
    /// `prompt` (each row's largest logit is the next id); returns the text the
    /// sequence sends.
    fn forced_text(tok: &Tokenizer, prompt: &[u32], body: &[u32], stops: &[&str]) -> String {
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink_text = text.clone();
        let mut seq = Sequence::new(
            Request {
                prompt: prompt.to_vec(),
                max_tokens: body.len(),
                sampling: SamplingParams::default(),
                stop_token_ids: vec![],
                stop_strings: stops.iter().map(|s| s.to_string()).collect(),
                logprobs: None,
                prompt_logprobs: false,
                constraint: None,
                sink: Box::new(move |e| {
                    if let Event::Token { text, .. } | Event::Text(text) = e {
                        sink_text.lock().unwrap().push_str(&text);
                    }
                    true
                }),
            },
            crate::engine::CancelToken::new(),
        )
        .unwrap();
        let metrics = Metrics::default();
        let mut row = vec![0.0f32; tok.vocab_size()];
        let mut take = prompt.len();
        let mut reason = None;
        for &id in body {
            row[id as usize] = 1.0;
            reason = seq.advance(take, &[(take - 1, &row)], tok, usize::MAX, &metrics);
            row[id as usize] = 0.0;
            take = 1;
            if reason.is_some() {
                break;
            }
        }
        seq.close(reason.unwrap_or(FinishReason::Length), &metrics);
        let out = text.lock().unwrap().clone();
        out
    }

    /// The text-fidelity issue's must-show: HumanEval's 164 canonical
    /// solutions, tokenised as they follow their prompts and fed back as a
    /// model's output, come out of the generation path exactly (decoded as a
    /// new document, each body lost one space of indentation: an
    /// IndentationError), with the eval's stop strings in force.
    #[test]
    fn humaneval_canonical_bodies_come_back_exactly() {
        use std::io::BufRead;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/eval/humaneval-openai/HumanEval.jsonl.gz");
        let file = std::fs::File::open(&path).unwrap();
        let lines = std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines();
        let tok = Tokenizer::grok1();
        let mut checked = 0;
        for line in lines {
            let task: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let (prompt, body) = (
                task["prompt"].as_str().unwrap(),
                task["canonical_solution"].as_str().unwrap(),
            );
            let program = format!("{prompt}{body}");
            let all = tok.encode(&program);
            // Where the program's pieces cross the prompt's end (HumanEval/81's
            // body starts with a newline that joins the prompt's), the prompt
            // is the ids the two tokenisations share.
            let prompt_ids = tok.encode(prompt);
            let shared = all
                .iter()
                .zip(&prompt_ids)
                .take_while(|(a, b)| a == b)
                .count();
            let (prompt_ids, body_ids) = all.split_at(shared);
            let prompt_text = tok.decode(prompt_ids).unwrap();
            let stops = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];
            let text = forced_text(&tok, prompt_ids, body_ids, &stops);
            assert_eq!(
                format!("{prompt_text}{text}"),
                program,
                "{}",
                task["task_id"]
            );
            checked += 1;
        }
        assert_eq!(checked, 164);
    }

    /// Allows only `script[i]` at step i, complete after the last; fails
    /// when asked past `fail_at`.
    struct Script {
        script: Vec<u32>,
        step: usize,
        mask: Vec<u32>,
        fail_at: Option<usize>,
    }

    impl TokenConstraint for Script {
        fn allowed(&mut self) -> Result<&[u32], String> {
            if self.fail_at == Some(self.step) {
                return Err("scripted failure".into());
            }
            self.mask.iter_mut().for_each(|w| *w = 0);
            let t = self.script[self.step];
            self.mask[t as usize / 32] |= 1 << (t % 32);
            Ok(&self.mask)
        }

        fn accept(&mut self, token: u32) -> Result<bool, String> {
            assert_eq!(token, self.script[self.step]);
            self.step += 1;
            Ok(self.step == self.script.len())
        }
    }

    /// Runs a constrained sequence over rows whose best token is always 7;
    /// returns its tokens and why it ended.
    fn constrained(script: &[u32], fail_at: Option<usize>) -> (Vec<u32>, FinishReason) {
        let vocab = 300;
        let tokens = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_tokens = tokens.clone();
        let mut seq = Sequence::new(
            Request {
                prompt: vec![5, 6],
                max_tokens: 50,
                sampling: SamplingParams::default(),
                stop_token_ids: vec![2],
                stop_strings: vec![],
                logprobs: None,
                prompt_logprobs: false,
                constraint: Some(Box::new(Script {
                    script: script.to_vec(),
                    step: 0,
                    mask: vec![0; vocab / 32 + 1],
                    fail_at,
                })),
                sink: Box::new(move |e| {
                    if let Event::Token { token, .. } = e {
                        sink_tokens.lock().unwrap().push(token);
                    }
                    true
                }),
            },
            crate::engine::CancelToken::new(),
        )
        .unwrap();
        let tok = Tokenizer::grok1();
        let metrics = Metrics::default();
        let mut row: Vec<f32> = (0..vocab).map(|i| -(i as f32)).collect();
        row[7] = 50.0;
        let mut take = 2;
        let reason = loop {
            if let Some(r) = seq.advance(take, &[(take - 1, &row)], &tok, usize::MAX, &metrics) {
                break r;
            }
            take = 1;
        };
        let out = tokens.lock().unwrap().clone();
        (out, reason)
    }

    #[test]
    fn a_constraint_picks_every_token_and_ends_the_sequence() {
        // The model's favourite (7) is never allowed; the script is followed
        // and the sequence stops when the grammar is complete, without a
        // step for the end token.
        let (tokens, reason) = constrained(&[40, 41, 299], None);
        assert_eq!(tokens, vec![40, 41, 299]);
        assert_eq!(reason, FinishReason::Stop);
        // Where the grammar allows the end token, drawing it stops the sequence.
        let (tokens, reason) = constrained(&[40, 2, 41], None);
        assert_eq!(tokens, vec![40]);
        assert_eq!(reason, FinishReason::Stop);
        // A failing grammar fails the request.
        let (tokens, reason) = constrained(&[40, 41, 42], Some(1));
        assert_eq!(tokens, vec![40]);
        assert!(
            matches!(&reason, FinishReason::Error(e) if e.contains("scripted failure")),
            "{reason:?}"
        );
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let lp = logprob_of(&row, 1, 2);
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lp.logprob as f64 - (2.0f64.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
    }
}
