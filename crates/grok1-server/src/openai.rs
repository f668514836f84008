//! `/v1/completions` and `/v1/chat/completions` in OpenAI's wire format:
//! request checking, submission to the engine (one engine request per choice),
//! and the JSON or server-sent-event responses.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use grok1::engine::{
    CancelOnDrop, CancelToken, Event, FinishReason, Request as EngineRequest, TokenLogprob,
};
use grok1::sampling::{SamplingParams, TokenConstraint};
use grok1_tokenizer::Tokenizer;
use http_body_util::LengthLimitError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::chat::{self, Role};
use crate::connections::BodyTimedOut;
use crate::logprobs::{self, TokenTexts};
use crate::structured::{self, CallStream, Plan, StreamPiece};
use crate::{unix_time, ApiError, AppState};

const MAX_BODY: usize = 16 << 20;
const MAX_CHOICES: i64 = 16;
const MAX_LOGPROBS: i64 = 20;
const MAX_STOPS: usize = 16;

/// Reads a JSON body: an object whose keys are all in `accepted`.
pub(crate) async fn read_json(request: Request, accepted: &[&[&str]]) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(body_error)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    };
    for (key, field) in object {
        if accepted.iter().any(|list| list.contains(&key.as_str())) {
            continue;
        }
        match IGNORED_FIELDS.iter().find(|(name, _)| name == key) {
            Some((_, kind)) => ignore_field(key, field, *kind)?,
            None => {
                return Err(ApiError::invalid(
                    format!("Unrecognized request argument supplied: {key}"),
                    Some(key),
                ))
            }
        }
    }
    Ok(value)
}

/// The JSON type a field must have.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Str,
    Object,
}

impl Kind {
    fn holds(self, v: &Value) -> bool {
        match self {
            Kind::Bool => v.is_boolean(),
            Kind::Str => v.is_string(),
            Kind::Object => v.is_object(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Str => "a string",
            Kind::Object => "an object",
        }
    }
}

/// Fields that OpenAI's SDKs and LangChain send and that cannot change the
/// output of this server (bookkeeping, caching, routing, reasoning models'
/// effort, predicted outputs): accepted and ignored, as vLLM does, once their
/// type is right.
const IGNORED_FIELDS: &[(&str, Kind)] = &[
    ("user", Kind::Str),
    ("store", Kind::Bool),
    ("metadata", Kind::Object),
    ("service_tier", Kind::Str),
    ("safety_identifier", Kind::Str),
    ("prompt_cache_key", Kind::Str),
    ("reasoning_effort", Kind::Str),
    ("prediction", Kind::Object),
];

/// Checks the type of a field the server does not use and logs that it was ignored.
fn ignore_field(name: &str, value: &Value, kind: Kind) -> Result<(), ApiError> {
    if !value.is_null() && !kind.holds(value) {
        return Err(ApiError::invalid(
            format!("Invalid value for `{name}`: expected {}", kind.name()),
            Some(name),
        ));
    }
    tracing::debug!(
        field = name,
        "ignored a request field this server does not use"
    );
    Ok(())
}

/// Why a body could not be read: too large, too slow or cut off.
fn body_error(e: axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(timed_out) = err.downcast_ref::<BodyTimedOut>() {
            let mut e = ApiError::invalid(format!("{timed_out}; send it faster"), None);
            e.status = StatusCode::REQUEST_TIMEOUT;
            return e;
        }
        if err.is::<LengthLimitError>() {
            let mut e = ApiError::invalid(
                format!("The request body is larger than {MAX_BODY} bytes."),
                None,
            );
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            return e;
        }
        source = err.source();
    }
    ApiError::invalid(format!("could not read the request body: {e}"), None)
}

/// Reads the fields of `T` from a request object; errors name the field at fault.
pub(crate) fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::invalid(format!("Invalid request: {}", e.inner()), None)
        } else {
            ApiError::invalid(
                format!("Invalid value for `{path}`: {}", e.inner()),
                Some(&path),
            )
        }
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

const COMMON_FIELDS: &[&str] = &[
    "model",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "ignore_eos",
];
const COMPLETION_FIELDS: &[&str] = &[
    "prompt",
    "max_tokens",
    "logprobs",
    "echo",
    "best_of",
    "suffix",
];
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "modalities",
    "audio",
    "functions",
    "function_call",
];

/// Fields completions and chat share.
#[derive(Deserialize, Default)]
struct Common {
    model: Option<String>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    stop: Option<StopInput>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<Map<String, Value>>,
    ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    prompt: PromptInput,
    max_tokens: Option<i64>,
    logprobs: Option<i64>,
    echo: Option<bool>,
    best_of: Option<i64>,
    suffix: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// A message; the fields past `content` are what the SDKs send back of an
/// earlier reply (or a participant's name), accepted when they cannot change
/// the prompt.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: Option<MessageContent>,
    name: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<Value>>,
    tool_call_id: Option<String>,
    function_call: Option<Value>,
    audio: Option<Value>,
    annotations: Option<Vec<Value>>,
}

impl ChatMessage {
    /// An assistant turn's earlier calls as the model writes them.
    fn rendered_calls(&self, param: &str) -> Result<String, ApiError> {
        let mut out = String::new();
        for (i, call) in self.tool_calls.iter().flatten().enumerate() {
            let field = format!("{param}.tool_calls[{i}].function");
            let f = call.get("function");
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
            let arguments = f.and_then(|f| f.get("arguments")).and_then(Value::as_str);
            let (Some(name), Some(arguments)) = (name, arguments) else {
                return Err(ApiError::invalid(
                    format!("`{field}` must have a string `name` and `arguments`"),
                    Some(&field),
                ));
            };
            out.push_str(&structured::render_call(name, arguments));
        }
        Ok(out)
    }

    /// Refuses what the template cannot render; logs what it leaves out.
    fn check(&self, param: &str) -> Result<(), ApiError> {
        if self.function_call.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(ApiError::unsupported(
                &format!("{param}.function_call"),
                "the deprecated function calls are not implemented; use `tools`",
            ));
        }
        if self.audio.as_ref().is_some_and(|a| !a.is_null()) {
            return Err(ApiError::unsupported(
                &format!("{param}.audio"),
                "audio is not implemented",
            ));
        }
        let ignored = [
            ("name", self.name.is_some()),
            ("tool_call_id", self.tool_call_id.is_some()),
            ("refusal", self.refusal.is_some()),
            ("annotations", self.annotations.is_some()),
        ];
        for (field, _) in ignored.iter().filter(|(_, present)| *present) {
            tracing::debug!(message = param, field, "ignored a message field");
        }
        Ok(())
    }
}

#[derive(Deserialize)]
pub struct ChatRequest {
    messages: Vec<ChatMessage>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    modalities: Option<Vec<String>>,
    audio: Option<Value>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
}

impl ChatRequest {
    /// Refuses the deprecated functions and audio, which this server cannot
    /// honour (tools and formats are [`structured::plan`]'s).
    fn check_unsupported(&self) -> Result<(), ApiError> {
        let no_choice = |c: &Option<Value>| {
            c.as_ref()
                .is_none_or(|c| c.is_null() || c == "none" || c == "auto")
        };
        if self.functions.as_ref().is_some_and(|f| !f.is_empty()) || !no_choice(&self.function_call)
        {
            return Err(ApiError::unsupported(
                "functions",
                "function calls are not implemented",
            ));
        }
        if self
            .modalities
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m != "text"))
            || self.audio.as_ref().is_some_and(|a| !a.is_null())
        {
            return Err(ApiError::unsupported(
                "modalities",
                "only text output is implemented",
            ));
        }
        if self.parallel_tool_calls.is_some() {
            tracing::debug!(
                field = "parallel_tool_calls",
                "ignored a request field this server does not use"
            );
        }
        Ok(())
    }
}

/// Checked sampling and stopping settings.
struct Settings {
    sampling: SamplingParams,
    seed_given: bool,
    n: usize,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    ignore_eos: bool,
}

fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", random_seed())
}

fn check_common(state: &AppState, c: &Common) -> Result<Settings, ApiError> {
    if let Some(model) = &c.model {
        if model != &state.model_name {
            return Err(ApiError::model_not_found(model));
        }
    }
    let range =
        |name: &str, v: Option<f64>, lo: f64, hi: f64, default: f64| -> Result<f64, ApiError> {
            let v = v.unwrap_or(default);
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ApiError::invalid(
                    format!("`{name}` must be between {lo} and {hi}, got {v}"),
                    Some(name),
                ))
            }
        };
    let temperature = range("temperature", c.temperature, 0.0, 2.0, 1.0)?;
    let top_p = range("top_p", c.top_p, 0.0, 1.0, 1.0)?;
    let min_p = range("min_p", c.min_p, 0.0, 1.0, 0.0)?;
    let repetition_penalty = range("repetition_penalty", c.repetition_penalty, 0.01, 100.0, 1.0)?;
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                format!("`top_k` must be -1, 0 or positive, got {k}"),
                Some("top_k"),
            ))
        }
    };
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::invalid(
            format!("`n` must be between 1 and {MAX_CHOICES}, got {n}"),
            Some("n"),
        ));
    }
    let presence_penalty = range("presence_penalty", c.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = range("frequency_penalty", c.frequency_penalty, -2.0, 2.0, 0.0)?;
    let mut logit_bias = Vec::new();
    for (key, bias) in c.logit_bias.iter().flatten() {
        let param = format!("logit_bias.{key}");
        let vocab = state.engine.vocab();
        let token = key
            .parse::<u32>()
            .ok()
            .filter(|&t| (t as usize) < vocab)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("`logit_bias` keys must be token ids below {vocab}, got `{key}`"),
                    Some(&param),
                )
            })?;
        let bias = range(&param, bias.as_f64(), -100.0, 100.0, f64::NAN)?;
        logit_bias.push((token, bias as f32));
    }
    let stop = match &c.stop {
        None => vec![],
        Some(StopInput::One(s)) => vec![s.clone()],
        Some(StopInput::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            format!("at most {MAX_STOPS} stop sequences are allowed"),
            Some("stop"),
        ));
    }
    let seed = match c.seed {
        Some(s) if s >= 0 => Some(s as u64),
        Some(s) => {
            return Err(ApiError::invalid(
                format!("`seed` must not be negative, got {s}"),
                Some("seed"),
            ))
        }
        None => None,
    };
    // top_p 0 keeps only the most likely token: greedy. So does a top_p or a
    // temperature too small for an f32 (it rounds to 0 there).
    let greedy = temperature as f32 == 0.0 || top_p as f32 == 0.0;
    Ok(Settings {
        sampling: SamplingParams {
            temperature: if greedy { 0.0 } else { temperature as f32 },
            top_k,
            top_p: if greedy { 1.0 } else { top_p as f32 },
            min_p: min_p as f32,
            repetition_penalty: repetition_penalty as f32,
            presence_penalty: presence_penalty as f32,
            frequency_penalty: frequency_penalty as f32,
            logit_bias,
            seed: seed.unwrap_or_else(random_seed),
        },
        seed_given: seed.is_some(),
        n: n as usize,
        stop,
        stream: c.stream.unwrap_or(false),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        ignore_eos: c.ignore_eos.unwrap_or(false),
    })
}

fn check_ids(ids: &[i64], vocab: usize) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            if t < 0 || t as u64 >= vocab as u64 {
                Err(ApiError::invalid(
                    format!(
                        "token id {t} at position {i} is outside the vocabulary (ids 0..{vocab})"
                    ),
                    Some("prompt"),
                ))
            } else {
                Ok(t as u32)
            }
        })
        .collect()
}

/// The ids of a text prompt; one longer than the context is refused before
/// it costs a full encoding (a 16 MB prompt would take seconds).
fn encode_prompt(state: &AppState, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    let context = state.engine.config().context;
    state.tokenizer.encode_capped(text, context).ok_or_else(|| {
        let mut e = ApiError::invalid(
            format!(
                "this model's maximum context length is {context} tokens, but the `{param}` text ({} bytes) is longer; shorten it",
                text.len()
            ),
            Some(param),
        );
        e.code = Some("context_length_exceeded");
        e
    })
}

/// A prompt's text as its ids decode (what `echo` returns and what the
/// logprobs' offsets count), without bytes at its end that do not yet make a
/// character: the completion that finishes them returns the character.
fn prompt_text(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.stream_decoder().push(ids).unwrap_or_default()
}

/// One choice as it is being generated.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    finish: Option<FinishReason>,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
}

/// OpenAI's name of a finish reason. A client that is still listening hears
/// `Cancelled` only when the server shuts down: its completion was cut short
/// by the server, not ended by the model, which OpenAI calls "length" (the
/// stream then carries an error event saying why).
fn finish_reason(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
        FinishReason::Error(_) => "error",
    }
}

/// What a client whose request was cut short by shutdown is told.
const SHUTDOWN_MESSAGE: &str =
    "the server is shutting down: the completion was cut short; retry on another server or later";

struct Job {
    prompt: Vec<u32>,
    max_tokens: usize,
    stop: Vec<String>,
    logprobs: Option<usize>,
    prompt_logprobs: bool,
}

/// The events of a request's choices, tagged with the choice. Dropping it
/// (with the handler's future or the stream, when the client goes) cancels
/// every choice at the engine's next step.
struct Choices {
    rx: mpsc::UnboundedReceiver<(usize, Event)>,
    _cancel: CancelOnDrop,
}

impl Choices {
    async fn recv(&mut self) -> Option<(usize, Event)> {
        self.rx.recv().await
    }
}

/// Submits one engine request per choice, all or none; with a `plan`, each
/// follows its grammar.
fn submit(
    state: &AppState,
    jobs: &[Job],
    settings: &Settings,
    plan: Option<&Plan>,
) -> Result<Choices, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = CancelToken::new();
    let mut requests = Vec::with_capacity(jobs.len() * settings.n);
    for (j, job) in jobs.iter().enumerate() {
        for i in 0..settings.n {
            let index = j * settings.n + i;
            let mut sampling = settings.sampling.clone();
            sampling.seed = if settings.seed_given {
                sampling.seed.wrapping_add(index as u64)
            } else {
                random_seed()
            };
            let tx = tx.clone();
            let constraint = match plan {
                Some(plan) => state.grammars.constraint(plan)?,
                None => None,
            };
            requests.push(EngineRequest {
                prompt: job.prompt.clone(),
                max_tokens: job.max_tokens,
                sampling,
                stop_token_ids: if settings.ignore_eos {
                    vec![]
                } else {
                    vec![state.eos]
                },
                stop_strings: job.stop.clone(),
                logprobs: job.logprobs,
                prompt_logprobs: job.prompt_logprobs,
                constraint: constraint.map(|c| Box::new(c) as Box<dyn TokenConstraint>),
                sink: Box::new(move |e| tx.send((index, e)).is_ok()),
            });
        }
    }
    state
        .engine
        .submit_all(requests, &cancel)
        .map_err(ApiError::from_submit)?;
    Ok(Choices {
        rx,
        _cancel: cancel.drop_guard(),
    })
}

/// Applies one event to its choice; returns whether the choice is done.
fn apply(choice: &mut Choice, event: Event) -> bool {
    match event {
        Event::PromptLogprobs(lp) => choice.prompt_logprobs = Some(lp),
        Event::Token {
            token,
            text,
            logprob,
        } => {
            choice.tokens.push(token);
            choice.text.push_str(&text);
            if let Some(lp) = logprob {
                choice.logprobs.push(lp);
            }
        }
        Event::Text(text) => choice.text.push_str(&text),
        Event::Done {
            reason,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
        } => {
            choice.finish = Some(reason);
            choice.prompt_tokens = prompt_tokens;
            choice.completion_tokens = completion_tokens;
            choice.cached_tokens = cached_tokens;
            return true;
        }
    }
    false
}

async fn collect(
    mut rx: Choices,
    count: usize,
    log: &mut RequestLog,
) -> Result<Vec<Choice>, ApiError> {
    let mut choices: Vec<Choice> = (0..count).map(|_| Choice::default()).collect();
    let mut done = 0;
    while done < count {
        let Some((i, event)) = rx.recv().await else {
            return Err(ApiError::internal(
                "the engine stopped before the request finished",
            ));
        };
        if matches!(event, Event::Token { .. }) {
            log.token();
        }
        if apply(&mut choices[i], event) {
            done += 1;
        }
    }
    for c in &choices {
        match &c.finish {
            Some(FinishReason::Error(e)) => {
                return Err(ApiError::internal(format!("generation failed: {e}")))
            }
            Some(FinishReason::Cancelled) => return Err(ApiError::shutting_down(SHUTDOWN_MESSAGE)),
            _ => {}
        }
    }
    let reasons: Vec<&str> = choices
        .iter()
        .filter_map(|c| c.finish.as_ref().map(finish_reason))
        .collect();
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    log.finished(completion_tokens, &reasons);
    Ok(choices)
}

/// `cached_tokens`: prompt tokens taken from the prefix cache (OpenAI's
/// `prompt_tokens_details.cached_tokens`).
fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached_tokens },
    })
}

/// The usage of a request's finished `choices`, `n` to a prompt.
fn choices_usage(prompt_tokens: usize, choices: &[Choice], n: usize) -> Value {
    let cached: Vec<usize> = choices.iter().map(|c| c.cached_tokens).collect();
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    usage(
        prompt_tokens,
        completion_tokens,
        prompt_cached_tokens(&cached, n),
    )
}

/// The cached prompt tokens of a request whose choices come `n` to a prompt
/// (a prompt is counted once in `prompt_tokens`): each prompt's fewest.
fn prompt_cached_tokens(cached_by_choice: &[usize], n: usize) -> usize {
    cached_by_choice
        .chunks(n.max(1))
        .map(|c| c.iter().copied().min().unwrap_or(0))
        .sum()
}

/// A streamed completion choice's logprobs: a token's entry is sent once its
/// text has been sent whole (text held back for a stop string comes later), so
/// `text_offset` indexes the concatenation of the choice's chunks.
struct StreamedLogprobs {
    texts: TokenTexts,
    /// Code points of the choice's text sent so far.
    sent: usize,
    waiting: Vec<logprobs::Entry>,
}

impl StreamedLogprobs {
    /// Adds `text` to what was sent; returns the entries it completes.
    fn send(&mut self, text: &str) -> Vec<logprobs::Entry> {
        self.sent += text.chars().count();
        let ready = self
            .waiting
            .iter()
            .take_while(|e| e.offset + e.text.chars().count() <= self.sent)
            .count();
        self.waiting.drain(..ready).collect()
    }

    /// The choice is done: entries still waiting keep what of their text was sent.
    fn finish(&mut self) -> Vec<logprobs::Entry> {
        self.texts.finish(self.waiting.last_mut());
        let mut rest = std::mem::take(&mut self.waiting);
        logprobs::clip(&mut rest, self.sent);
        rest
    }
}

pub async fn completions(State(state): State<AppState>, request: Request) -> Response {
    match completions_inner(state, request, Instant::now()).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    state: AppState,
    request: Request,
    started: Instant,
) -> Result<Response, ApiError> {
    let value = read_json(request, &[COMMON_FIELDS, COMPLETION_FIELDS]).await?;
    let req: CompletionRequest = parse(&value)?;
    let settings = check_common(&state, &parse(&value)?)?;
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported(
            "suffix",
            "insertion is not implemented",
        ));
    }
    if req.best_of.is_some_and(|b| b != settings.n as i64) {
        return Err(ApiError::unsupported(
            "best_of",
            "only best_of equal to n is implemented",
        ));
    }
    let max_tokens = match req.max_tokens {
        None => 16,
        Some(m) if m >= 0 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                format!("`max_tokens` must be at least 0, got {m}"),
                Some("max_tokens"),
            ))
        }
    };
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}"),
                Some("logprobs"),
            ))
        }
    };
    let echo = req.echo.unwrap_or(false);
    let vocab = state.engine.vocab();
    let tok = &state.tokenizer;
    // Only `echo` returns the prompt's text: others skip decoding it.
    let with_text = |ids: Vec<u32>| {
        let text = if echo {
            prompt_text(tok, &ids)
        } else {
            String::new()
        };
        (ids, text)
    };
    let prompts: Vec<(Vec<u32>, String)> = match req.prompt {
        PromptInput::Text(t) => vec![with_text(encode_prompt(&state, &t, "prompt")?)],
        PromptInput::Texts(v) => v
            .iter()
            .map(|t| Ok(with_text(encode_prompt(&state, t, "prompt")?)))
            .collect::<Result<_, ApiError>>()?,
        PromptInput::Tokens(ids) => vec![with_text(check_ids(&ids, vocab)?)],
        PromptInput::TokenLists(lists) => lists
            .iter()
            .map(|ids| Ok(with_text(check_ids(ids, vocab)?)))
            .collect::<Result<_, ApiError>>()?,
    };
    if prompts.is_empty() || prompts.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::invalid("`prompt` is empty", Some("prompt")));
    }
    let jobs: Vec<Job> = prompts
        .iter()
        .map(|(ids, _)| Job {
            prompt: ids.clone(),
            max_tokens,
            stop: settings.stop.clone(),
            logprobs,
            prompt_logprobs: echo && logprobs.is_some(),
        })
        .collect();
    let count = jobs.len() * settings.n;
    let rx = submit(&state, &jobs, &settings, None)?;
    let id = request_id("cmpl");
    let created = unix_time();
    let model = state.model_name.clone();
    let prompt_tokens: usize = prompts.iter().map(|(ids, _)| ids.len()).sum();
    let mut log = RequestLog::new(&id, "/v1/completions", started, prompt_tokens);
    if settings.stream {
        let n = settings.n;
        let include_usage = settings.include_usage;
        let tokenizer = state.tokenizer.clone();
        let chunk = move |choices: Value, usage: Option<Value>| {
            let mut v = json!({ "id": id, "object": "text_completion", "created": created, "model": model, "choices": choices });
            if let Some(u) = usage {
                v["usage"] = u;
            }
            v
        };
        let text_chunk = |index: usize, text: &str, lp: Option<Value>| json!([{ "text": text, "index": index, "logprobs": lp, "finish_reason": Value::Null }]);
        // Echoed prompts are read from the document's start, and their
        // completions continue the same offsets.
        let mut streamed: Vec<Option<StreamedLogprobs>> = (0..count)
            .map(|index| {
                logprobs.map(|_| StreamedLogprobs {
                    texts: TokenTexts::after(
                        &tokenizer,
                        if echo { &[] } else { &prompts[index / n].0 },
                    ),
                    sent: 0,
                    waiting: Vec::new(),
                })
            })
            .collect();
        return Ok(stream_response(
            rx,
            count,
            settings.n,
            log,
            move |ev: StreamItem| match ev {
                StreamItem::Start(index) if echo && logprobs.is_none() => {
                    vec![chunk(text_chunk(index, &prompts[index / n].1, None), None)]
                }
                StreamItem::Start(_) => vec![],
                StreamItem::Event(index, Event::PromptLogprobs(lp)) => {
                    let (Some(s), true) = (streamed[index].as_mut(), echo) else {
                        return vec![];
                    };
                    let (ids, text) = &prompts[index / n];
                    let entries: Vec<logprobs::Entry> = ids
                        .iter()
                        .zip(&lp)
                        .map(|(&t, l)| s.texts.next(&tokenizer, t, l.as_ref()))
                        .collect();
                    s.send(text);
                    let lp = logprobs::completion_object(&entries);
                    vec![chunk(text_chunk(index, text, Some(lp)), None)]
                }
                StreamItem::Event(
                    index,
                    Event::Token {
                        token,
                        text,
                        logprob,
                    },
                ) => {
                    let lp = streamed[index].as_mut().map(|s| {
                        let entry = s.texts.next(&tokenizer, token, logprob.as_ref());
                        s.waiting.push(entry);
                        s.send(&text)
                    });
                    match lp {
                        Some(ready) if !ready.is_empty() || !text.is_empty() => vec![chunk(
                            text_chunk(index, &text, Some(logprobs::completion_object(&ready))),
                            None,
                        )],
                        None if !text.is_empty() => {
                            vec![chunk(text_chunk(index, &text, None), None)]
                        }
                        _ => vec![],
                    }
                }
                StreamItem::Event(index, Event::Text(text)) => {
                    let lp = streamed[index]
                        .as_mut()
                        .map(|s| logprobs::completion_object(&s.send(&text)));
                    vec![chunk(text_chunk(index, &text, lp), None)]
                }
                StreamItem::Event(index, Event::Done { reason, .. }) => {
                    let mut out = Vec::new();
                    if let Some(s) = streamed[index].as_mut() {
                        let rest = s.finish();
                        if !rest.is_empty() {
                            let lp = logprobs::completion_object(&rest);
                            out.push(chunk(text_chunk(index, "", Some(lp)), None));
                        }
                    }
                    out.push(chunk(
                    json!([{ "text": "", "index": index, "logprobs": Value::Null, "finish_reason": finish_reason(&reason) }]),
                    None,
                ));
                    out
                }
                StreamItem::End {
                    completion_tokens,
                    cached_tokens,
                } => {
                    if include_usage {
                        vec![chunk(
                            json!([]),
                            Some(usage(prompt_tokens, completion_tokens, cached_tokens)),
                        )]
                    } else {
                        vec![]
                    }
                }
            },
        ));
    }
    let choices = collect(rx, count, &mut log).await?;
    let request_usage = choices_usage(prompt_tokens, &choices, settings.n);
    let body: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let (prompt_ids, prompt_text) = &prompts[index / settings.n];
            let text = if echo {
                format!("{prompt_text}{}", c.text)
            } else {
                c.text.clone()
            };
            let lp = logprobs.map(|_| {
                let mut tokens: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                if echo {
                    match &c.prompt_logprobs {
                        Some(lp) => {
                            tokens.extend(prompt_ids.iter().zip(lp).map(|(&t, l)| (t, l.as_ref())))
                        }
                        None => tokens.extend(prompt_ids.iter().map(|&t| (t, None))),
                    }
                }
                tokens.extend(c.tokens.iter().zip(&c.logprobs).map(|(&t, l)| (t, Some(l))));
                let context: &[u32] = if echo { &[] } else { prompt_ids };
                let entries =
                    logprobs::entries(&state.tokenizer, context, &tokens, text.chars().count());
                logprobs::completion_object(&entries)
            });
            json!({
                "text": text,
                "index": index,
                "logprobs": lp,
                "finish_reason": c.finish.as_ref().map(finish_reason),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": body,
        "usage": request_usage,
    }))
    .into_response())
}

/// A request's line in the log, written when its last choice ends.
struct RequestLog {
    id: String,
    endpoint: &'static str,
    started: Instant,
    prompt_tokens: usize,
    first_token: Option<Duration>,
}

impl RequestLog {
    fn new(id: &str, endpoint: &'static str, started: Instant, prompt_tokens: usize) -> Self {
        RequestLog {
            id: id.to_string(),
            endpoint,
            started,
            prompt_tokens,
            first_token: None,
        }
    }

    /// A token arrived: the first sets the time to first token.
    fn token(&mut self) {
        if self.first_token.is_none() {
            self.first_token = Some(self.started.elapsed());
        }
    }

    fn ms(d: Duration) -> f64 {
        (d.as_secs_f64() * 1e4).round() / 10.0
    }

    fn finished(&self, completion_tokens: usize, reasons: &[&str]) {
        tracing::info!(
            id = %self.id,
            endpoint = self.endpoint,
            status = 200,
            prompt_tokens = self.prompt_tokens,
            completion_tokens,
            ttft_ms = self.first_token.map(Self::ms),
            total_ms = Self::ms(self.started.elapsed()),
            finish_reason = %reasons.join(","),
            "request done"
        );
    }

    /// A stream failed after its 200 status was sent.
    fn failed(&self, cause: &str) {
        tracing::error!(
            id = %self.id,
            endpoint = self.endpoint,
            total_ms = Self::ms(self.started.elapsed()),
            cause,
            "stream failed"
        );
    }

    fn departed(&self) {
        tracing::info!(
            id = %self.id,
            endpoint = self.endpoint,
            total_ms = Self::ms(self.started.elapsed()),
            "client disconnected before the stream ended"
        );
    }
}

/// What a stream renderer is asked to turn into chunks.
enum StreamItem {
    /// Before any event of a choice.
    Start(usize),
    Event(usize, Event),
    /// Every choice is done.
    End {
        completion_tokens: usize,
        /// Prompt tokens taken from the prefix cache (see [`prompt_cached_tokens`]).
        cached_tokens: usize,
    },
}

/// Turns engine events into server-sent events, ending with `data: [DONE]`.
/// The body holds the request's cancellation: when the client goes away it is
/// dropped, and the requests end at the engine's next step (the task would
/// only notice at its next event, which a queued or prefilling request does
/// not have).
fn stream_response(
    choices: Choices,
    count: usize,
    choices_per_prompt: usize,
    mut log: RequestLog,
    mut render: impl FnMut(StreamItem) -> Vec<Value> + Send + 'static,
) -> Response {
    let Choices {
        rx: mut events,
        _cancel: cancel,
    } = choices;
    let (tx, out) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |tx: &mpsc::Sender<Result<SseEvent, Infallible>>, v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(SseEvent::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        for index in 0..count {
            for v in render(StreamItem::Start(index)) {
                if !send(&tx, v).await {
                    return;
                }
            }
        }
        let mut done = 0;
        let mut completion_tokens = 0;
        let mut cached = vec![0; count];
        let mut failed = None;
        let mut reasons = vec![""; count];
        while done < count {
            let Some((index, event)) = events.recv().await else {
                failed = Some("the engine stopped before the request finished".to_string());
                break;
            };
            if matches!(event, Event::Token { .. }) {
                log.token();
            }
            if let Event::Done {
                completion_tokens: c,
                cached_tokens,
                reason,
                ..
            } = &event
            {
                done += 1;
                completion_tokens += c;
                cached[index] = *cached_tokens;
                reasons[index] = finish_reason(reason);
                match reason {
                    FinishReason::Error(e) => failed = Some(e.clone()),
                    FinishReason::Cancelled => failed = Some(SHUTDOWN_MESSAGE.to_string()),
                    _ => {}
                }
            }
            for v in render(StreamItem::Event(index, event)) {
                if !send(&tx, v).await {
                    log.departed();
                    return;
                }
            }
        }
        if let Some(message) = &failed {
            log.failed(message);
            let error = json!({ "error": { "message": message, "type": "server_error", "param": Value::Null, "code": Value::Null } });
            let _ = send(&tx, error).await;
        } else {
            log.finished(completion_tokens, &reasons);
            let cached_tokens = prompt_cached_tokens(&cached, choices_per_prompt);
            for v in render(StreamItem::End {
                completion_tokens,
                cached_tokens,
            }) {
                if !send(&tx, v).await {
                    return;
                }
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    let body = CancelOnEnd {
        stream: ReceiverStream::new(out),
        _cancel: cancel,
    };
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A response stream that cancels its request when dropped.
struct CancelOnEnd<S> {
    stream: S,
    _cancel: CancelOnDrop,
}

impl<S: Stream + Unpin> Stream for CancelOnEnd<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.get_mut().stream).poll_next(cx)
    }
}

pub async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    match chat_inner(state, request, Instant::now()).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    state: AppState,
    request: Request,
    started: Instant,
) -> Result<Response, ApiError> {
    let value = read_json(request, &[COMMON_FIELDS, CHAT_FIELDS]).await?;
    let req: ChatRequest = parse(&value)?;
    let settings = check_common(&state, &parse(&value)?)?;
    req.check_unsupported()?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            Some("messages"),
        ));
    }
    let mut turns = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        m.check(&param)?;
        let role = Role::parse(&m.role).ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "{param}: unsupported role `{}` (system, developer, user, assistant or tool)",
                    m.role
                ),
                Some(&param),
            )
        })?;
        let text = match &m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::unsupported(
                                &format!("{param}.content"),
                                &format!("content of type `{kind}` is not implemented"),
                            ))
                        }
                    }
                }
                text
            }
        };
        let calls = m.rendered_calls(&param)?;
        let text = match (text.trim().is_empty(), calls.is_empty()) {
            (_, true) => text,
            (true, false) => calls,
            (false, false) => format!("{} {calls}", text.trim()),
        };
        turns.push((role, text));
    }
    let plan = structured::plan(
        req.response_format.as_ref(),
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
    )?;
    if plan.tools_active() {
        turns.insert(0, (Role::System, structured::tools_preamble(&plan.tools)));
    }
    if plan.grammar.is_some() {
        // The first structured request builds the grammar compiler: not on a
        // runtime thread that serves other connections meanwhile.
        let grammars = state.grammars.clone();
        tokio::task::spawn_blocking(move || grammars.ready())
            .await
            .map_err(|e| {
                ApiError::internal(format!("building the grammar compiler failed: {e}"))
            })??;
    }
    let prompt_text = chat::render(&turns);
    let prompt = encode_prompt(&state, &prompt_text, "messages")?;
    let room = state.engine.config().context.saturating_sub(prompt.len());
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => room.max(1),
        Some(m) if m >= 1 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                format!("`max_tokens` must be at least 1, got {m}"),
                Some("max_tokens"),
            ))
        }
    };
    let top = match req.top_logprobs {
        None => 0,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                format!("`top_logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}"),
                Some("top_logprobs"),
            ))
        }
    };
    let logprobs = req.logprobs.unwrap_or(false).then_some(top);
    let mut stop = settings.stop.clone();
    stop.extend(chat::TURN_SEPARATORS.iter().map(|s| s.to_string()));
    let jobs = [Job {
        prompt,
        max_tokens,
        stop,
        logprobs,
        prompt_logprobs: false,
    }];
    let count = settings.n;
    let prompt_tokens = jobs[0].prompt.len();
    let rx = submit(&state, &jobs, &settings, Some(&plan))?;
    let id = request_id("chatcmpl");
    let created = unix_time();
    let model = state.model_name.clone();
    let mut log = RequestLog::new(&id, "/v1/chat/completions", started, prompt_tokens);
    if settings.stream {
        let include_usage = settings.include_usage;
        let tokenizer = state.tokenizer.clone();
        // The reply starts after "Assistant:": its leading spaces are dropped.
        let mut started = vec![false; count];
        let mut texts = vec![TokenTexts::after(&tokenizer, &jobs[0].prompt); count];
        let chunk = move |choices: Value, usage: Option<Value>| {
            let mut v = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices });
            if let Some(u) = usage {
                v["usage"] = u;
            }
            v
        };
        // Replies that may be tool calls go through a call parser each.
        let mut calls: Vec<Option<CallStream>> = (0..count)
            .map(|_| plan.tools_active().then(|| CallStream::new(&plan.tools)))
            .collect();
        let call_ids: Vec<String> = (0..count).map(|_| request_id("call")).collect();
        let piece_choices = move |index: usize, piece: StreamPiece| {
            let delta = match piece {
                StreamPiece::Content(text) => json!({ "content": text }),
                StreamPiece::CallStart { name } => json!({ "tool_calls": [{
                    "index": 0,
                    "id": call_ids[index],
                    "type": "function",
                    "function": { "name": name, "arguments": "" },
                }] }),
                StreamPiece::Arguments(a) => {
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": a } }] })
                }
            };
            json!([{ "index": index, "delta": delta, "logprobs": Value::Null, "finish_reason": Value::Null }])
        };
        return Ok(stream_response(rx, count, count, log, move |ev| match ev {
            StreamItem::Start(index) => vec![chunk(
                json!([{ "index": index, "delta": { "role": "assistant", "content": "" }, "logprobs": Value::Null, "finish_reason": Value::Null }]),
                None,
            )],
            StreamItem::Event(index, Event::Token { text, logprob, .. }) => {
                let mut text = text.as_str();
                if !started[index] {
                    text = text.trim_start();
                    started[index] = !text.is_empty();
                }
                if let Some(calls) = calls[index].as_mut() {
                    return calls
                        .push(text)
                        .into_iter()
                        .map(|p| chunk(piece_choices(index, p), None))
                        .collect();
                }
                if text.is_empty() && logprob.is_none() {
                    return vec![];
                }
                let lp = logprob.map(|l| {
                    logprobs::chat_object(&[texts[index].next(&tokenizer, l.token, Some(&l))])
                });
                vec![chunk(
                    json!([{ "index": index, "delta": { "content": text }, "logprobs": lp, "finish_reason": Value::Null }]),
                    None,
                )]
            }
            StreamItem::Event(index, Event::Text(text)) => {
                let mut text = text.as_str();
                if !started[index] {
                    text = text.trim_start();
                }
                if let Some(calls) = calls[index].as_mut() {
                    return calls
                        .push(text)
                        .into_iter()
                        .map(|p| chunk(piece_choices(index, p), None))
                        .collect();
                }
                if text.is_empty() {
                    return vec![];
                }
                vec![chunk(
                    json!([{ "index": index, "delta": { "content": text }, "logprobs": Value::Null, "finish_reason": Value::Null }]),
                    None,
                )]
            }
            StreamItem::Event(index, Event::Done { reason, .. }) => {
                let mut finish = finish_reason(&reason);
                let mut out = Vec::new();
                if let Some(calls) = calls[index].as_mut() {
                    let complete = reason == FinishReason::Stop;
                    out.extend(
                        calls
                            .finish(complete)
                            .into_iter()
                            .map(|p| chunk(piece_choices(index, p), None)),
                    );
                    if complete && calls.is_call() {
                        finish = "tool_calls";
                    }
                }
                out.push(chunk(
                    json!([{ "index": index, "delta": {}, "logprobs": Value::Null, "finish_reason": finish }]),
                    None,
                ));
                out
            }
            StreamItem::Event(_, Event::PromptLogprobs(_)) => vec![],
            StreamItem::End {
                completion_tokens,
                cached_tokens,
            } => {
                if include_usage {
                    vec![chunk(
                        json!([]),
                        Some(usage(prompt_tokens, completion_tokens, cached_tokens)),
                    )]
                } else {
                    vec![]
                }
            }
        }));
    }
    let choices = collect(rx, count, &mut log).await?;
    let request_usage = choices_usage(prompt_tokens, &choices, count);
    let body: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let text = c.text.trim();
            let call = plan
                .tools_active()
                .then(|| structured::parse_call(text, &plan.tools))
                .flatten();
            let (message, finish) = match call {
                Some(call) => (
                    json!({ "role": "assistant", "content": Value::Null, "tool_calls": [{
                        "id": request_id("call"),
                        "type": "function",
                        "function": { "name": call.name, "arguments": call.arguments },
                    }] }),
                    Some("tool_calls"),
                ),
                None => (
                    json!({ "role": "assistant", "content": text }),
                    c.finish.as_ref().map(finish_reason),
                ),
            };
            json!({
                "index": index,
                "message": message,
                "logprobs": logprobs.map(|_| {
                    let tokens: Vec<(u32, Option<&TokenLogprob>)> =
                        c.logprobs.iter().map(|l| (l.token, Some(l))).collect();
                    let entries = logprobs::entries(&state.tokenizer, &jobs[0].prompt, &tokens, usize::MAX);
                    logprobs::chat_object(&entries)
                }),
                "finish_reason": finish,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": body,
        "usage": request_usage,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a streamed response, as its `data:` payloads.
    async fn stream_payloads(response: Response) -> Vec<String> {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .split("\n\n")
            .filter_map(|b| b.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// A stream cut short by shutdown ends with an OpenAI finish reason
    /// ("length": the server, not the model, ended it), then an error event
    /// saying why, then `[DONE]`.
    #[tokio::test]
    async fn shutdown_ends_a_stream_with_length_and_an_error_event() {
        let (tx, rx) = mpsc::unbounded_channel();
        let choices = Choices {
            rx,
            _cancel: CancelToken::new().drop_guard(),
        };
        let token = Event::Token {
            token: 5,
            text: "Hi".into(),
            logprob: None,
        };
        tx.send((0, token)).unwrap();
        let done = Event::Done {
            reason: FinishReason::Cancelled,
            prompt_tokens: 3,
            completion_tokens: 1,
            cached_tokens: 0,
        };
        tx.send((0, done)).unwrap();
        let log = RequestLog::new("cmpl-test", "/v1/completions", Instant::now(), 3);
        let response = stream_response(choices, 1, 1, log, |item| match item {
            StreamItem::Event(_, Event::Token { text, .. }) => vec![json!({ "text": text })],
            StreamItem::Event(_, Event::Done { reason, .. }) => {
                vec![json!({ "finish_reason": finish_reason(&reason) })]
            }
            _ => vec![],
        });
        let payloads = stream_payloads(response).await;
        assert_eq!(payloads.len(), 4, "{payloads:?}");
        assert_eq!(payloads[0], r#"{"text":"Hi"}"#);
        assert_eq!(payloads[1], r#"{"finish_reason":"length"}"#);
        let error: Value = serde_json::from_str(&payloads[2]).unwrap();
        assert_eq!(error["error"]["type"], "server_error");
        assert_eq!(error["error"]["message"], SHUTDOWN_MESSAGE);
        assert_eq!(payloads[3], "[DONE]");
    }

    /// A request that is not streamed and is cut short by shutdown is a 503
    /// the client may retry, not a truncated completion.
    #[tokio::test]
    async fn shutdown_fails_a_collected_request_with_503() {
        let (tx, rx) = mpsc::unbounded_channel();
        let choices = Choices {
            rx,
            _cancel: CancelToken::new().drop_guard(),
        };
        let done = Event::Done {
            reason: FinishReason::Cancelled,
            prompt_tokens: 3,
            completion_tokens: 0,
            cached_tokens: 0,
        };
        tx.send((0, done)).unwrap();
        let mut log = RequestLog::new("cmpl-test", "/v1/completions", Instant::now(), 3);
        let error = collect(choices, 1, &mut log).await.err().unwrap();
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.retry_after, Some(5));
    }
}
