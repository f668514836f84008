//! Structured output: `response_format` (JSON object or JSON schema) and
//! function tools, by constrained decoding with llguidance. The grammar's
//! token mask is applied to the logits before every draw, so the output
//! follows the schema whatever the model's weights.
//!
//! A tool call is written `<tool_call>{"name":NAME,"arguments":{...}}`: with
//! `tool_choice` "required" or a named function the grammar forces it; with
//! "auto" the reply is either text that does not start with the marker or a
//! call. JSON is compact (no optional whitespace), numbers have at most
//! [`NUMBER_FRACTION_DIGITS`] fraction digits, and objects that list their
//! properties have no others unless the schema allows them.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use grok1::sampling::TokenConstraint;
use grok1_tokenizer::{PieceKind, Tokenizer};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};
use toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};

use crate::ApiError;

/// What starts a tool call in the model's output.
pub const TOOL_CALL_MARKER: &str = "<tool_call>";

/// The bytes each token stands for, as llguidance's token trie takes them:
/// `▁` is a space, a byte-fallback piece its byte, a control piece a special
/// token (0xFF then its name: no grammar text produces it), and the unknown
/// and unused pieces nothing (never allowed).
pub fn token_bytes(tok: &Tokenizer) -> Vec<Vec<u8>> {
    (0..tok.vocab_size() as u32)
        .map(|id| {
            let piece = tok.id_to_piece(id).unwrap_or_default();
            match tok.kind(id) {
                Some(PieceKind::Normal | PieceKind::UserDefined) => {
                    piece.replace('\u{2581}', " ").into_bytes()
                }
                Some(PieceKind::Byte) => tok.byte_value(id).map(|b| vec![b]).unwrap_or_default(),
                Some(PieceKind::Control) => {
                    let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    bytes.extend_from_slice(piece.as_bytes());
                    bytes
                }
                Some(PieceKind::Unknown | PieceKind::Unused) | None => Vec::new(),
            }
        })
        .collect()
}

/// The server's grammar compiler: the token trie of the whole vocabulary,
/// built once, on the first structured request.
pub struct Grammars {
    tokenizer: Arc<Tokenizer>,
    eos: u32,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl Grammars {
    pub fn new(tokenizer: Arc<Tokenizer>, eos: u32) -> Self {
        Grammars {
            tokenizer,
            eos,
            factory: OnceLock::new(),
        }
    }

    /// Builds the compiler if it is not yet built (0.8 s for the 131072-token
    /// vocabulary in a release build): call it off the async runtime.
    pub fn ready(&self) -> Result<(), ApiError> {
        self.factory().map(|_| ())
    }

    fn factory(&self) -> Result<&ParserFactory, ApiError> {
        self.factory
            .get_or_init(|| {
                let words = token_bytes(&self.tokenizer);
                let info = TokRxInfo::new(words.len() as u32, self.eos);
                let trie = TokTrie::from(&info, &words);
                let env: toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
                let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(|e| ApiError::internal(format!("building the grammar compiler failed: {e}")))
    }

    /// Compiles `grammar`; a schema llguidance refuses is a 400 naming `param`.
    fn parser(&self, grammar: &TopLevelGrammar, param: &str) -> Result<TokenParser, ApiError> {
        let factory = self.factory()?;
        // A compiler panic on some odd schema fails this request, not the server.
        let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            factory.create_parser(grammar.clone())
        }));
        match compiled {
            Ok(Ok(parser)) => Ok(parser),
            Ok(Err(e)) => {
                // The first lines say what is wrong; a backtrace may follow.
                let e = e.to_string();
                let why = e.split("\n<backtrace>").next().unwrap_or_default();
                Err(ApiError::invalid(
                    format!("Invalid schema for `{param}`: {}", why.trim_end()),
                    Some(param),
                ))
            }
            Err(_) => Err(ApiError::invalid(
                format!("Invalid schema for `{param}`: the grammar compiler failed on it"),
                Some(param),
            )),
        }
    }

    /// A constraint for one choice of a request that follows `plan`.
    pub fn constraint(&self, plan: &Plan) -> Result<Option<Guided>, ApiError> {
        let Some(grammar) = &plan.grammar else {
            return Ok(None);
        };
        let parser = match self.parser(grammar, &plan.param) {
            Ok(parser) => parser,
            Err(e) => return Err(self.name_the_tool(plan).unwrap_or(e)),
        };
        Ok(Some(Guided::start(parser)))
    }

    /// Where a tools grammar fails to compile, the first tool whose
    /// parameters fail alone (the error then names its field).
    fn name_the_tool(&self, plan: &Plan) -> Option<ApiError> {
        plan.tools.iter().enumerate().find_map(|(i, tool)| {
            let grammar = TopLevelGrammar::from_json_schema(compact(tool.parameters.clone()));
            self.parser(&grammar, &format!("tools[{i}].function.parameters"))
                .err()
        })
    }
}

/// Fraction digits a constrained number may have: an f64 holds about 16
/// significant digits, and without a cap a model can write digits forever
/// (the random demo model does). llguidance bounds them through `multipleOf`
/// (its remainder arithmetic is u32: 10^-8 is the finest that cannot overflow).
pub const NUMBER_FRACTION_DIGITS: u32 = 8;

/// Tightens `schema` for generation: every `number` without a `multipleOf`
/// of its own gets at most [`NUMBER_FRACTION_DIGITS`], and every object that
/// lists `properties` but says nothing of others gets no others (as OpenAI's
/// strict mode requires and XGrammar's strict mode assumes: otherwise a model
/// may invent keys forever). Only subschemas are visited: values (`const`,
/// `enum`, ...) are left alone.
fn tighten(schema: &mut Value) {
    let Value::Object(object) = schema else {
        return;
    };
    let open = [
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
    ];
    if object.contains_key("properties") && !open.iter().any(|k| object.contains_key(*k)) {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    let is_number = match object.get("type") {
        Some(Value::String(t)) => t == "number",
        Some(Value::Array(types)) => types.iter().any(|t| t == "number"),
        _ => false,
    };
    if is_number && !object.contains_key("multipleOf") {
        let step = 10f64.powi(-(NUMBER_FRACTION_DIGITS as i32));
        object.insert("multipleOf".into(), json!(step));
    }
    // Only the keywords whose values are schemas, maps of them or lists of them.
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "items"
            | "additionalProperties"
            | "contains"
            | "not"
            | "if"
            | "then"
            | "else"
            | "propertyNames"
            | "unevaluatedProperties"
            | "additionalItems" => tighten(value),
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(map) = value {
                    map.values_mut().for_each(tighten);
                }
            }
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                if let Value::Array(list) = value {
                    list.iter_mut().for_each(tighten);
                }
            }
            _ => {}
        }
    }
}

/// `schema` with llguidance's options for compact JSON: no whitespace
/// between tokens, `,` and `:` alone as separators; unsupported keywords are
/// errors, not ignored. See [`tighten`] for what else it is held to.
fn compact(mut schema: Value) -> Value {
    tighten(&mut schema);
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ",",
                "key_separator": ":",
                "lenient": false,
            }),
        );
    }
    schema
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of its arguments (an object).
    pub parameters: Value,
}

/// What a request asks the output to be.
#[derive(Default)]
pub struct Plan {
    /// The grammar every choice follows; none: free text.
    pub grammar: Option<TopLevelGrammar>,
    /// The request field a compile error names.
    pub param: String,
    /// Tools the reply may call (their calls are parsed out of the text).
    pub tools: Vec<Tool>,
}

impl Plan {
    /// Whether replies are parsed for tool calls.
    pub fn tools_active(&self) -> bool {
        !self.tools.is_empty()
    }
}

fn schema_object(value: &Value, param: &str) -> Result<Value, ApiError> {
    match value {
        Value::Object(_) => Ok(value.clone()),
        _ => Err(ApiError::invalid(
            format!("`{param}` must be a JSON schema object"),
            Some(param),
        )),
    }
}

/// The JSON schema `response_format` asks for; none for text.
fn response_schema(format: Option<&Value>) -> Result<Option<(Value, String)>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some((json!({"type": "object"}), "response_format".into()))),
        Some("json_schema") => {
            let spec = format.get("json_schema").ok_or_else(|| {
                ApiError::invalid(
                    "`response_format.json_schema` is required when `type` is \"json_schema\"",
                    Some("response_format.json_schema"),
                )
            })?;
            if !spec.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::invalid(
                    "`response_format.json_schema.name` must be a string",
                    Some("response_format.json_schema.name"),
                ));
            }
            if spec
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return Err(ApiError::invalid(
                    "`response_format.json_schema.strict` must be a boolean",
                    Some("response_format.json_schema.strict"),
                ));
            }
            let param = "response_format.json_schema.schema".to_string();
            // OpenAI: no schema is any JSON object.
            let schema = match spec.get("schema") {
                None | Some(Value::Null) => json!({"type": "object"}),
                Some(s) => schema_object(s, &param)?,
            };
            Ok(Some((schema, param)))
        }
        _ => Err(ApiError::invalid(
            "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
            Some("response_format.type"),
        )),
    }
}

fn parse_tools(tools: &[Value]) -> Result<Vec<Tool>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let param = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(
                    format!("`{param}.type` must be \"function\""),
                    Some(&format!("{param}.type")),
                ));
            }
            let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
                ApiError::invalid(
                    format!("`{param}.function` must be an object"),
                    Some(&format!("{param}.function")),
                )
            })?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 64
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!(
                            "`{param}.function.name` must be 1 to 64 letters, digits, `_` or `-`"
                        ),
                        Some(&format!("{param}.function.name")),
                    )
                })?;
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => {
                    json!({"type": "object", "properties": {}, "additionalProperties": false})
                }
                Some(p) => schema_object(p, &format!("{param}.function.parameters"))?,
            };
            Ok(Tool {
                name: name.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters,
            })
        })
        .collect()
}

/// The schema of one call of any of `tools`.
fn call_schema(tools: &[Tool]) -> Value {
    let one = |t: &Tool| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    match tools {
        [t] => one(t),
        _ => json!({"anyOf": tools.iter().map(one).collect::<Vec<_>>()}),
    }
}

/// The plan of a chat request from its `response_format`, `tools` and
/// `tool_choice`.
pub fn plan(
    response_format: Option<&Value>,
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
) -> Result<Plan, ApiError> {
    let format = response_schema(response_format)?;
    let tools = parse_tools(tools.unwrap_or_default())?;
    let choice_error = || {
        ApiError::invalid(
            "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            Some("tool_choice"),
        )
    };
    // OpenAI's default: "auto" with tools, "none" without.
    let choice = match tool_choice.filter(|c| !c.is_null()) {
        None if tools.is_empty() => "none".to_string(),
        None => "auto".to_string(),
        Some(Value::String(s)) if ["none", "auto", "required"].contains(&s.as_str()) => s.clone(),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(choice_error)?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    format!("`tool_choice` names the function `{name}`, which is not in `tools`"),
                    Some("tool_choice.function.name"),
                ));
            }
            format!("function:{name}")
        }
        Some(_) => return Err(choice_error()),
    };
    if choice != "none" && tools.is_empty() {
        return Err(ApiError::invalid(
            "`tool_choice` asks for a tool call but `tools` is empty",
            Some("tools"),
        ));
    }
    let marker = serde_json::to_string(TOOL_CALL_MARKER).expect("a string");
    let (grammar, param, tools) = match choice.as_str() {
        "none" => match format {
            None => (None, String::new(), Vec::new()),
            Some((schema, param)) => (
                Some(TopLevelGrammar::from_json_schema(compact(schema))),
                param,
                Vec::new(),
            ),
        },
        "auto" => {
            let call = compact(call_schema(&tools));
            // Text that does not start with the marker, or the format's JSON.
            let reply = match &format {
                None => format!(
                    "TEXT\nTEXT: /(?s:.+)/ & ~/{}(?s:.*)/",
                    regex_literal(TOOL_CALL_MARKER)
                ),
                Some((schema, _)) => format!("%json {}", compact(schema.clone())),
            };
            let lark =
                format!("start: reply | {marker} call\nreply: {reply}\ncall: %json {call}\n");
            let param = format.map(|(_, p)| p).unwrap_or_else(|| "tools".into());
            (Some(TopLevelGrammar::from_lark(lark)), param, tools)
        }
        named => {
            let chosen: Vec<Tool> = match named.strip_prefix("function:") {
                Some(name) => tools.iter().filter(|t| t.name == name).cloned().collect(),
                None => tools.clone(),
            };
            let call = compact(call_schema(&chosen));
            let lark = format!("start: {marker} call\ncall: %json {call}\n");
            (
                Some(TopLevelGrammar::from_lark(lark)),
                "tools".into(),
                tools,
            )
        }
    };
    Ok(Plan {
        grammar,
        param,
        tools,
    })
}

/// `s` escaped for a regex between slashes in lark.
fn regex_literal(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$/".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A call parsed from a reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as compact JSON text (what OpenAI returns).
    pub arguments: String,
}

/// The tool call a reply makes, if it is one (the marker, then a complete
/// call object naming one of `tools`).
pub fn parse_call(reply: &str, tools: &[Tool]) -> Option<ToolCall> {
    let body = reply.trim_start().strip_prefix(TOOL_CALL_MARKER)?;
    let call: Value = serde_json::from_str(body.trim()).ok()?;
    let name = call.get("name")?.as_str()?;
    let arguments = call.get("arguments")?;
    tools.iter().any(|t| t.name == name).then(|| ToolCall {
        name: name.to_string(),
        arguments: arguments.to_string(),
    })
}

/// A call as the model writes it (what an earlier assistant turn's
/// `tool_calls` become in the prompt).
pub fn render_call(name: &str, arguments: &str) -> String {
    let arguments: Value =
        serde_json::from_str(arguments).unwrap_or(Value::String(arguments.into()));
    format!(
        "{TOOL_CALL_MARKER}{}",
        json!({"name": name, "arguments": arguments})
    )
}

/// What tells the model about the tools, before the conversation.
pub fn tools_preamble(tools: &[Tool]) -> String {
    let mut out = String::from("Functions you can call (their arguments' JSON schemas):\n");
    for t in tools {
        out.push_str(&format!("- {}", t.name));
        if let Some(d) = &t.description {
            out.push_str(&format!(": {}", d.trim()));
        }
        out.push_str(&format!("\n  arguments: {}\n", t.parameters));
    }
    out.push_str(&format!(
        "To call a function, reply with {TOOL_CALL_MARKER} then {{\"name\":NAME,\"arguments\":ARGUMENTS}}."
    ));
    out
}

/// Streams a reply that may be a tool call: text is held until it is known
/// not to start with the marker; a call's name goes out once complete, then
/// its arguments as they come (the call object's closing brace held back).
pub struct CallStream {
    tools: Vec<String>,
    buffer: String,
    state: CallState,
}

enum CallState {
    Undecided,
    Text,
    /// In a call, past `{"name":NAME,"arguments":`; bytes of `buffer` sent.
    Arguments {
        sent: usize,
    },
}

/// What a piece of a streamed reply is.
#[derive(Debug, PartialEq)]
pub enum StreamPiece {
    Content(String),
    CallStart { name: String },
    Arguments(String),
}

impl CallStream {
    pub fn new(tools: &[Tool]) -> Self {
        CallStream {
            tools: tools.iter().map(|t| t.name.clone()).collect(),
            buffer: String::new(),
            state: CallState::Undecided,
        }
    }

    /// Whether the reply turned out to be a call.
    pub fn is_call(&self) -> bool {
        matches!(self.state, CallState::Arguments { .. })
    }

    /// Takes more of the reply (its leading whitespace already dropped).
    pub fn push(&mut self, text: &str) -> Vec<StreamPiece> {
        let mut out = Vec::new();
        match self.state {
            CallState::Text => {
                if !text.is_empty() {
                    out.push(StreamPiece::Content(text.to_string()));
                }
                return out;
            }
            CallState::Undecided => {
                self.buffer.push_str(text);
                let marker = TOOL_CALL_MARKER;
                if !marker.starts_with(self.buffer.as_str()) && !self.buffer.starts_with(marker) {
                    self.state = CallState::Text;
                    out.push(StreamPiece::Content(std::mem::take(&mut self.buffer)));
                    return out;
                }
                let Some(call) = self.buffer.strip_prefix(marker) else {
                    return out;
                };
                let header = self.tools.iter().find_map(|name| {
                    let head = format!("{{\"name\":{},\"arguments\":", json!(name));
                    call.starts_with(&head).then(|| (name.clone(), head.len()))
                });
                let Some((name, head)) = header else {
                    return out;
                };
                let start = marker.len() + head;
                self.state = CallState::Arguments { sent: start };
                out.push(StreamPiece::CallStart { name });
            }
            CallState::Arguments { .. } => self.buffer.push_str(text),
        }
        if let CallState::Arguments { sent } = &mut self.state {
            // Everything but the last character, which may be the call's `}`.
            let end = self
                .buffer
                .char_indices()
                .last()
                .map(|(i, _)| i)
                .unwrap_or(0);
            if end > *sent {
                out.push(StreamPiece::Arguments(self.buffer[*sent..end].to_string()));
                *sent = end;
            }
        }
        out
    }

    /// The reply ended: what is still held. `complete`: the grammar finished
    /// (a call's closing brace is then dropped).
    pub fn finish(&mut self, complete: bool) -> Vec<StreamPiece> {
        match self.state {
            CallState::Text => Vec::new(),
            CallState::Undecided if self.buffer.is_empty() => Vec::new(),
            CallState::Undecided => vec![StreamPiece::Content(std::mem::take(&mut self.buffer))],
            CallState::Arguments { sent } => {
                let mut rest = &self.buffer[sent..];
                if complete {
                    rest = rest.strip_suffix('}').unwrap_or(rest);
                }
                let rest = rest.to_string();
                self.state = CallState::Arguments {
                    sent: self.buffer.len(),
                };
                if rest.is_empty() {
                    Vec::new()
                } else {
                    vec![StreamPiece::Arguments(rest)]
                }
            }
        }
    }
}

/// A mask from the grammar's thread, and how long it took to compute.
type MaskReply = (Result<Vec<u32>, String>, Duration);

/// One choice's grammar. Taking a token is quick and runs on the engine's
/// thread; the next mask (the costly part) is computed on a thread of the
/// grammar's own as soon as the token is taken: while the engine runs the
/// next forward pass, not after it.
pub struct Guided {
    matcher: Arc<Mutex<Matcher>>,
    /// Asks the grammar's thread for the next mask.
    compute: mpsc::Sender<()>,
    masks_rx: mpsc::Receiver<MaskReply>,
    mask: Option<Vec<u32>>,
    /// A mask is being computed (not yet received).
    pending: bool,
    /// Masks computed and their time on the grammar's thread.
    masks: u32,
    computing: Duration,
    /// Time the engine spent waiting for masks (their cost on the decoding
    /// path: what the overlap with the forward pass did not hide).
    waiting: Duration,
}

impl Drop for Guided {
    fn drop(&mut self) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        tracing::debug!(
            masks = self.masks,
            mask_us_mean = us(self.computing) / self.masks.max(1) as f64,
            wait_us_mean = us(self.waiting) / self.masks.max(1) as f64,
            "grammar done"
        );
    }
}

impl Guided {
    fn start(parser: TokenParser) -> Self {
        let matcher = Arc::new(Mutex::new(Matcher::new(Ok(parser))));
        let (compute, compute_rx) = mpsc::channel::<()>();
        let (masks_tx, masks_rx) = mpsc::channel();
        let shared = matcher.clone();
        std::thread::Builder::new()
            .name("grok1-grammar".into())
            .spawn(move || {
                // Ends when the sequence (the sender) is dropped.
                while compute_rx.recv().is_ok() {
                    let started = Instant::now();
                    let mask = match shared.lock() {
                        Ok(mut m) => m
                            .compute_mask()
                            .map(|v| v.as_slice().to_vec())
                            .map_err(|e| e.to_string()),
                        Err(_) => Err("the grammar's lock is poisoned".to_string()),
                    };
                    if masks_tx.send((mask, started.elapsed())).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning a grammar thread");
        // The first mask is computed while the request waits and its prompt runs.
        let _ = compute.send(());
        Guided {
            matcher,
            compute,
            masks_rx,
            mask: None,
            pending: true,
            masks: 0,
            computing: Duration::ZERO,
            waiting: Duration::ZERO,
        }
    }

    /// Waits for the mask being computed.
    fn receive(&mut self) -> Result<Vec<u32>, String> {
        self.pending = false;
        let started = Instant::now();
        let reply = self.masks_rx.recv();
        self.waiting += started.elapsed();
        let (mask, took) = reply.map_err(|_| "the grammar's thread stopped".to_string())?;
        self.masks += 1;
        self.computing += took;
        mask
    }
}

impl TokenConstraint for Guided {
    fn allowed(&mut self) -> Result<&[u32], String> {
        if self.pending {
            let mask = self.receive()?;
            self.mask = Some(mask);
        }
        self.mask
            .as_deref()
            .ok_or_else(|| "the grammar is complete: no token may follow".to_string())
    }

    fn accept(&mut self, token: u32) -> Result<bool, String> {
        if self.pending {
            // The thread holds the matcher until its mask is done; that mask
            // is stale once the token is taken.
            let _ = self.receive();
        }
        self.mask = None;
        let complete = {
            let mut m = self
                .matcher
                .lock()
                .map_err(|_| "the grammar's lock is poisoned".to_string())?;
            m.consume_token(token).map_err(|e| e.to_string())?;
            m.is_stopped()
        };
        if !complete {
            self.compute
                .send(())
                .map_err(|_| "the grammar's thread stopped".to_string())?;
            self.pending = true;
        }
        Ok(complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grammars() -> Grammars {
        let tok = Arc::new(Tokenizer::grok1());
        let eos = tok.eos_id().unwrap();
        Grammars::new(tok, eos)
    }

    /// Draws the lowest allowed token each step (with `pick`) until the
    /// grammar is complete; returns the text.
    fn walk(g: &Grammars, plan: &Plan, pick: impl Fn(&[u32]) -> u32) -> String {
        let tok = &g.tokenizer;
        let mut c = g.constraint(plan).unwrap().unwrap();
        let mut ids = Vec::new();
        for _ in 0..400 {
            let mask = c.allowed().unwrap().to_vec();
            let t = pick(&mask);
            if t == g.eos {
                break;
            }
            ids.push(t);
            if c.accept(t).unwrap() {
                break;
            }
        }
        tok.decode(&ids).unwrap()
    }

    fn allowed_ids(mask: &[u32]) -> Vec<u32> {
        (0..mask.len() as u32 * 32)
            .filter(|&t| grok1::sampling::mask_allows(mask, t))
            .collect()
    }

    #[test]
    fn token_bytes_cover_pieces_bytes_and_specials() {
        let tok = Tokenizer::grok1();
        let bytes = token_bytes(&tok);
        assert_eq!(bytes.len(), tok.vocab_size());
        let eos = tok.eos_id().unwrap() as usize;
        assert_eq!(bytes[eos][0], TokTrie::SPECIAL_TOKEN_MARKER);
        let a = tok.piece_to_id("<0x41>");
        assert_eq!(bytes[a as usize], b"A");
        let the = tok.piece_to_id("\u{2581}the");
        assert_eq!(bytes[the as usize], b" the");
    }

    #[test]
    fn a_schema_walk_gives_valid_compact_json() {
        let g = grammars();
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5},
                "tags": {"type": "array", "items": {"enum": ["a", "bc"]}, "maxItems": 2},
                "n": {"type": "integer", "minimum": 3, "maximum": 7},
            },
            "required": ["name", "tags", "n"],
            "additionalProperties": false,
        });
        let plan = plan(
            Some(&json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})),
            None,
            None,
        )
        .unwrap();
        // The highest allowed id and the lowest: two different walks.
        for pick in [
            (|m: &[u32]| *allowed_ids(m).last().unwrap()) as fn(&[u32]) -> u32,
            |m: &[u32]| allowed_ids(m)[0],
        ] {
            let text = walk(&g, &plan, pick);
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(
                !text.contains(' ') || v["name"].as_str().unwrap().contains(' '),
                "{text}"
            );
            assert!(v["name"].as_str().unwrap().chars().count() <= 5, "{text}");
            assert!(v["tags"].as_array().unwrap().len() <= 2, "{text}");
            let n = v["n"].as_i64().unwrap();
            assert!((3..=7).contains(&n), "{text}");
        }
    }

    #[test]
    fn numbers_stop_after_eight_fraction_digits() {
        let g = grammars();
        let schema = json!({"type": "object", "properties": {"x": {"type": "number", "minimum": 6, "maximum": 21}}, "required": ["x"], "additionalProperties": false});
        let plan = plan(
            Some(&json!({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})),
            None,
            None,
        )
        .unwrap();
        // Always the digit 8 while one is allowed: what the demo model did
        // before the cap (400 tokens of 7.888...).
        let eight = g.tokenizer.piece_to_id("8");
        let text = walk(&g, &plan, |m| {
            if grok1::sampling::mask_allows(m, eight) {
                eight
            } else {
                allowed_ids(m)[0]
            }
        });
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let x = v["x"].as_f64().unwrap();
        assert!((6.0..=21.0).contains(&x), "{text}");
        let fraction = text.split('.').nth(1).unwrap_or("");
        let digits = fraction.chars().take_while(char::is_ascii_digit).count();
        assert_eq!(digits, NUMBER_FRACTION_DIGITS as usize, "{text}");
    }

    #[test]
    fn listed_properties_are_the_only_ones_unless_others_are_allowed() {
        let mut schema = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "number"}}},
            "c": {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}},
            "d": {"const": {"properties": {}}},
            "properties": {"anyOf": [{"type": "object", "properties": {}}, {"type": "number"}]},
        }});
        tighten(&mut schema);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["a"]["additionalProperties"], false);
        assert_eq!(
            schema["properties"]["a"]["properties"]["b"]["multipleOf"],
            1e-8
        );
        assert_eq!(
            schema["properties"]["c"]["additionalProperties"],
            json!({"type": "integer"})
        );
        assert_eq!(
            schema["properties"]["d"],
            json!({"const": {"properties": {}}})
        );
        // A property named "properties" is a schema, not a map of them.
        let named = &schema["properties"]["properties"];
        assert_eq!(named.as_object().unwrap().len(), 1, "{named}");
        assert_eq!(named["anyOf"][0]["additionalProperties"], false);
        assert_eq!(named["anyOf"][1]["multipleOf"], 1e-8);
    }

    #[test]
    fn required_and_named_tool_choices_force_a_call() {
        let g = grammars();
        let tools = vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"], "additionalProperties": false}}}),
            json!({"type": "function", "function": {"name": "noop"}}),
        ];
        for (choice, names) in [
            (json!("required"), vec!["get_weather", "noop"]),
            (
                json!({"type": "function", "function": {"name": "get_weather"}}),
                vec!["get_weather"],
            ),
        ] {
            let plan = plan(None, Some(&tools), Some(&choice)).unwrap();
            let text = walk(&g, &plan, |m| allowed_ids(m)[0]);
            let call = parse_call(&text, &plan.tools).unwrap_or_else(|| panic!("{text}"));
            assert!(names.contains(&call.name.as_str()), "{text}");
            let args: Value = serde_json::from_str(&call.arguments).unwrap();
            assert!(args.is_object());
            // The stream gives the same call.
            let mut s = CallStream::new(&plan.tools);
            let ids = g.tokenizer.encode_continuation(&text);
            let mut pieces = Vec::new();
            for id in ids {
                pieces.extend(s.push(&g.tokenizer.decode_after(&[], &[id]).unwrap()));
            }
            pieces.extend(s.finish(true));
            let mut args_text = String::new();
            for p in &pieces {
                match p {
                    StreamPiece::CallStart { name } => assert_eq!(name, &call.name),
                    StreamPiece::Arguments(a) => args_text.push_str(a),
                    StreamPiece::Content(c) => panic!("content {c:?} in a call"),
                }
            }
            assert_eq!(args_text, call.arguments);
        }
    }

    #[test]
    fn a_streamed_text_reply_is_held_only_while_it_may_be_a_call() {
        let tools = parse_tools(&[json!({"type": "function", "function": {"name": "f"}})]).unwrap();
        let content = |p: Vec<StreamPiece>| -> Vec<String> {
            p.into_iter()
                .map(|p| match p {
                    StreamPiece::Content(c) => c,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let mut s = CallStream::new(&tools);
        assert_eq!(content(s.push("Hi")), ["Hi"]);
        assert_eq!(content(s.push(" <tool_call>")), [" <tool_call>"]);
        // A prefix of the marker is held until the text leaves it.
        let mut s = CallStream::new(&tools);
        assert!(s.push("<tool").is_empty());
        assert_eq!(content(s.push("box")), ["<toolbox"]);
        assert!(!s.is_call());
        // Held text comes out at the end.
        let mut s = CallStream::new(&tools);
        assert!(s.push("<tool_c").is_empty());
        assert_eq!(content(s.finish(false)), ["<tool_c"]);
        // A call cut at the token limit keeps its last characters.
        let mut s = CallStream::new(&tools);
        assert_eq!(
            s.push("<tool_call>{\"name\":\"f\",\"arguments\":{\"a"),
            [
                StreamPiece::CallStart { name: "f".into() },
                StreamPiece::Arguments("{\"".into())
            ]
        );
        assert_eq!(s.finish(false), [StreamPiece::Arguments("a".into())]);
        assert!(s.is_call());
    }

    #[test]
    fn auto_allows_text_but_not_a_malformed_call() {
        let g = grammars();
        let tools = vec![json!({"type": "function", "function": {"name": "f"}})];
        let plan = plan(None, Some(&tools), Some(&json!("auto"))).unwrap();
        let mut c = g.constraint(&plan).unwrap().unwrap();
        let tok = &g.tokenizer;
        let hello = tok.piece_to_id("Hello");
        assert!(grok1::sampling::mask_allows(c.allowed().unwrap(), hello));
        // After the marker, only the call's JSON may follow.
        let mut c2 = g.constraint(&plan).unwrap().unwrap();
        for id in tok.encode_continuation(TOOL_CALL_MARKER) {
            c2.allowed().unwrap();
            assert!(!c2.accept(id).unwrap());
        }
        let mask = c2.allowed().unwrap();
        assert!(!grok1::sampling::mask_allows(mask, hello));
        assert!(grok1::sampling::mask_allows(mask, tok.piece_to_id("{")));
        assert!(c.accept(hello).is_ok());
        // With a JSON format, the reply is that JSON or a call.
        let plan = super::plan(
            Some(&json!({"type": "json_object"})),
            Some(&tools),
            Some(&json!("auto")),
        )
        .unwrap();
        let mut c = g.constraint(&plan).unwrap().unwrap();
        let mask = c.allowed().unwrap();
        assert!(grok1::sampling::mask_allows(mask, tok.piece_to_id("{")));
        assert!(grok1::sampling::mask_allows(mask, tok.piece_to_id("<")));
        assert!(!grok1::sampling::mask_allows(mask, hello));
    }

    #[test]
    fn bad_schemas_and_choices_are_400s_naming_the_field() {
        let g = grammars();
        let bad = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}});
        let p = plan(Some(&bad), None, None).unwrap();
        let e = g.constraint(&p).err().unwrap();
        assert_eq!(
            e.param.as_deref(),
            Some("response_format.json_schema.schema")
        );
        let tools = vec![
            json!({"type": "function", "function": {"name": "ok"}}),
            json!({"type": "function", "function": {"name": "bad", "parameters": {"type": "object", "properties": {"x": {"type": 5}}}}}),
        ];
        let p = plan(None, Some(&tools), Some(&json!("required"))).unwrap();
        let e = g.constraint(&p).err().unwrap();
        assert_eq!(e.param.as_deref(), Some("tools[1].function.parameters"));
        let e = plan(
            None,
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "nope"}})),
        )
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("tool_choice.function.name"));
        let e = plan(Some(&json!({"type": "yaml"})), None, None)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("response_format.type"));
    }
}
