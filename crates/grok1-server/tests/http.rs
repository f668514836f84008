//! The server over real HTTP on a loopback port: every error case in OpenAI's
//! shape, authentication, greedy results equal to `generate` alone and batched,
//! streaming format, n > 1, stop strings, scoring with echo, admission limits
//! and cancellation when a client disconnects.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grok1::engine::{EngineConfig, EngineHandle};
use grok1::generate::{generate, StopConditions};
use grok1::progress::NoProgress;
use grok1::sampling::SamplingParams;
use grok1::weights::ckpt0;
use grok1::{ForwardOptions, Grok1, ModelConfig, Precision};
use grok1_server::AppState;
use grok1_tokenizer::Tokenizer;
use serde_json::{json, Value};

fn load(name: &str) -> Grok1 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name);
    let config = ModelConfig::load(&dir.join("config.json")).unwrap();
    let paths = ckpt0::locate(&dir).unwrap();
    let store = ckpt0::read_checkpoint(
        &paths.tensors,
        &config,
        paths.config.as_deref(),
        &NoProgress,
    )
    .unwrap();
    Grok1::from_store(config, &store).unwrap()
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        max_batch: 16,
        max_queue: 16,
        context: 128,
        kv_tokens: 16 * 128,
        prefill_chunk: 64,
        precision: Precision::F32,
        prefix_cache: true,
        kv_type: grok1::KvType::F32,
    }
}

struct Server {
    base: String,
    engine: EngineHandle,
    key: Option<String>,
}

fn start(config: EngineConfig, key: Option<&str>) -> Server {
    let engine = EngineHandle::start(load("tiny-vocab"), Arc::new(Tokenizer::grok1()), config);
    let state = AppState::new(
        engine.clone(),
        Arc::new(Tokenizer::grok1()),
        "tiny-vocab".into(),
        2,
        key.map(str::to_string),
    );
    let addr = common::serve_in_background(state, common::default_limits());
    Server {
        base: format!("http://{addr}"),
        engine,
        key: key.map(str::to_string),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Server {
    fn post(&self, path: &str, body: &str) -> (u16, Value, Option<String>) {
        let mut req = agent()
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.send(body).unwrap();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.body_mut().read_to_string().unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (resp.status().as_u16(), value, retry)
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = agent().get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call().unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    }

    /// The data lines of a streamed response, parsed; the last must be [DONE].
    fn stream(&self, path: &str, body: Value) -> Vec<Value> {
        let (status, text, _) = {
            let mut resp = agent()
                .post(format!("{}{path}", self.base))
                .send(body.to_string())
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.body_mut().read_to_string().unwrap(), ())
        };
        assert_eq!(status, 200, "{text}");
        let mut events = Vec::new();
        let mut done = false;
        for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let data = block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {block:?}"));
            assert!(!done, "data after [DONE]");
            if data == "[DONE]" {
                done = true;
            } else {
                events.push(
                    serde_json::from_str(data).unwrap_or_else(|e| panic!("bad chunk {data}: {e}")),
                );
            }
        }
        assert!(done, "the stream must end with data: [DONE]");
        events
    }
}

fn greedy_text(model: &Grok1, prompt: &[u32], n: usize) -> (Vec<u32>, String) {
    let g = generate(
        model,
        prompt,
        &SamplingParams::default(),
        &StopConditions {
            eos: Some(2),
            stop_sequences: vec![],
            max_tokens: n,
        },
        ForwardOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let text = Tokenizer::grok1().decode_after(prompt, &g.tokens).unwrap();
    (g.tokens, text)
}

#[test]
fn every_bad_request_gets_an_openai_error() {
    let s = start(engine_config(), None);
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        (
            "/v1/completions",
            "{not json",
            400,
            "invalid_request_error",
            "could not parse the JSON body",
        ),
        (
            "/v1/completions",
            "[1, 2]",
            400,
            "invalid_request_error",
            "must be a JSON object",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": "ten"}"#,
            400,
            "invalid_request_error",
            "Invalid value for `max_tokens`",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "temperature": [1]}"#,
            400,
            "invalid_request_error",
            "Invalid value for `temperature`",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "frobnicate": 1}"#,
            400,
            "invalid_request_error",
            "Unrecognized request argument supplied: frobnicate",
        ),
        (
            "/v1/completions",
            r#"{"max_tokens": 5}"#,
            400,
            "invalid_request_error",
            "missing field `prompt`",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": -1}"#,
            400,
            "invalid_request_error",
            "`max_tokens` must be at least 0",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "max_tokens": 1000}"#,
            400,
            "invalid_request_error",
            "maximum context length is 128 tokens",
        ),
        (
            "/v1/completions",
            &format!(
                r#"{{"prompt": {:?}, "max_tokens": 1}}"#,
                "word ".repeat(200)
            ),
            400,
            "invalid_request_error",
            "maximum context length is 128 tokens",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [5, 131072], "max_tokens": 1}"#,
            400,
            "invalid_request_error",
            "token id 131072 at position 1 is outside the vocabulary",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [5, -3], "max_tokens": 1}"#,
            400,
            "invalid_request_error",
            "token id -3 at position 1",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "", "max_tokens": 1}"#,
            400,
            "invalid_request_error",
            "`prompt` is empty",
        ),
        (
            "/v1/completions",
            r#"{"model": "gpt-4", "prompt": "hi"}"#,
            404,
            "invalid_request_error",
            "The model `gpt-4` does not exist",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "presence_penalty": 2.5}"#,
            400,
            "invalid_request_error",
            "`presence_penalty` must be between -2 and 2",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "logit_bias": {"x": 1}}"#,
            400,
            "invalid_request_error",
            "`logit_bias` keys must be token ids",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "suffix": "x"}"#,
            400,
            "invalid_request_error",
            "`suffix` is not supported",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "best_of": 3}"#,
            400,
            "invalid_request_error",
            "`best_of` is not supported",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "n": 0}"#,
            400,
            "invalid_request_error",
            "`n` must be between 1 and 16",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "temperature": 3}"#,
            400,
            "invalid_request_error",
            "`temperature` must be between 0 and 2",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "logprobs": 99}"#,
            400,
            "invalid_request_error",
            "`logprobs` must be between 0 and 20",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": []}"#,
            400,
            "invalid_request_error",
            "`messages` must not be empty",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#,
            400,
            "invalid_request_error",
            "unsupported role `wizard`",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}"#,
            400,
            "invalid_request_error",
            "`tools[0].function` must be an object",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            400,
            "invalid_request_error",
            "content of type `image_url`",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}"#,
            400,
            "invalid_request_error",
            "`max_tokens` must be at least 1",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "hi", "store": "yes"}"#,
            400,
            "invalid_request_error",
            "Invalid value for `store`: expected a boolean",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "metadata": 3}"#,
            400,
            "invalid_request_error",
            "Invalid value for `metadata`: expected an object",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "parallel_tool_calls": "yes"}"#,
            400,
            "invalid_request_error",
            "Invalid value for `parallel_tool_calls`",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}"#,
            400,
            "invalid_request_error",
            "`tool_choice` asks for a tool call but `tools` is empty",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}], "modalities": ["text", "audio"]}"#,
            400,
            "invalid_request_error",
            "`modalities` is not supported",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}]}]}"#,
            400,
            "invalid_request_error",
            "`messages[1].tool_calls[0].function` must have a string `name` and `arguments`",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi", "refusal": 5}]}"#,
            400,
            "invalid_request_error",
            "Invalid value for `messages[0].refusal`",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi", "colour": "red"}]}"#,
            400,
            "invalid_request_error",
            "unknown field `colour`",
        ),
        (
            "/v1/nothing",
            "{}",
            404,
            "invalid_request_error",
            "Unknown endpoint /v1/nothing",
        ),
    ];
    for (path, body, status, kind, needle) in cases {
        let (got, value, _) = s.post(path, body);
        assert_eq!(got, *status, "{path} {body}: {value}");
        let error = &value["error"];
        assert_eq!(error["type"], *kind, "{value}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{path} {body}: {message:?} should contain {needle:?}"
        );
    }
    let (status, body) = s.get("/v1/completions", None);
    assert_eq!(status, 405, "{body}");
    // The server still answers after all of that.
    let (status, value, _) = s.post(
        "/v1/completions",
        r#"{"prompt": "hi", "max_tokens": 2, "temperature": 0}"#,
    );
    assert_eq!(status, 200, "{value}");
}

#[test]
fn a_bearer_key_guards_everything_but_health() {
    let mut s = start(engine_config(), Some("sekrit"));
    assert_eq!(s.get("/health", None).0, 200);
    let (status, body) = s.get("/v1/models", None);
    assert_eq!(status, 401);
    assert!(body.contains("You didn't provide an API key"), "{body}");
    let (status, body) = s.get("/v1/models", Some("wrong"));
    assert_eq!(status, 401);
    assert!(body.contains("invalid_api_key"), "{body}");
    assert_eq!(s.get("/metrics", None).0, 401);
    let (status, body) = s.get("/v1/models", Some("sekrit"));
    assert_eq!(status, 200);
    assert!(body.contains("\"id\":\"tiny-vocab\""), "{body}");
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        models["data"][0]["max_model_len"],
        engine_config().context,
        "{body}"
    );
    let (status, value, _) = s.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#);
    assert_eq!(status, 200, "{value}");
    s.key = None;
    let (status, _, _) = s.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#);
    assert_eq!(status, 401);
}

/// What the openai SDK and LangChain send beside the fields that matter is
/// accepted and changes nothing; `GET /v1/models/{id}` answers for the served
/// model and 404s in OpenAI's shape for others.
#[test]
fn fields_clients_send_and_we_do_not_use_change_nothing() {
    let s = start(engine_config(), None);
    let plain = json!({"prompt": "Hello there", "max_tokens": 6, "temperature": 0});
    let mut lenient = plain.clone();
    for (k, v) in [
        ("user", json!("u-1")),
        ("store", json!(false)),
        ("metadata", json!({"run": "x"})),
        ("service_tier", json!("auto")),
        ("safety_identifier", json!("s")),
        ("prompt_cache_key", json!("k")),
        ("reasoning_effort", json!("low")),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("seed", Value::Null),
    ] {
        lenient[k] = v;
    }
    let (status, want, _) = s.post("/v1/completions", &plain.to_string());
    assert_eq!(status, 200, "{want}");
    let (status, got, _) = s.post("/v1/completions", &lenient.to_string());
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["choices"][0]["text"], want["choices"][0]["text"]);

    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello", "refusal": null, "tool_calls": null, "function_call": null, "audio": null, "annotations": []},
        {"role": "user", "content": "Again"}
    ]);
    let plain_messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"}
    ]);
    let chat = |messages: &Value, extra: &[(&str, Value)]| {
        let mut body = json!({"messages": messages, "max_tokens": 6, "temperature": 0});
        for (k, v) in extra {
            body[*k] = v.clone();
        }
        let (status, v, _) = s.post("/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{body}: {v}");
        v["choices"][0]["message"]["content"].clone()
    };
    let want = chat(&plain_messages, &[]);
    let got = chat(
        &messages,
        &[
            ("parallel_tool_calls", json!(true)),
            ("tool_choice", json!("none")),
            ("tools", json!([])),
            ("modalities", json!(["text"])),
            ("audio", Value::Null),
            ("store", json!(true)),
            ("user", json!("u-2")),
        ],
    );
    assert_eq!(got, want);

    let (status, body) = s.get("/v1/models/tiny-vocab", None);
    assert_eq!(status, 200, "{body}");
    let model: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(model["id"], "tiny-vocab");
    assert_eq!(model["object"], "model");
    for unknown in ["/v1/models/gpt-4", "/v1/models/xai-org/grok-1"] {
        let (status, body) = s.get(unknown, None);
        assert_eq!(status, 404, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "model_not_found", "{body}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
    }
}

#[test]
fn greedy_results_equal_generate_alone_and_batched_with_fifteen_others() {
    let s = start(engine_config(), None);
    let model = load("tiny-vocab");
    let tok = Tokenizer::grok1();
    let prompts: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "{} {}",
                "The answer to life the universe and everything is of course",
                "and then ".repeat(i)
            )
        })
        .collect();
    let want: Vec<String> = prompts
        .iter()
        .map(|p| greedy_text(&model, &tok.encode(p), 12).1)
        .collect();
    let body = |p: &str| {
        json!({"model": "tiny-vocab", "prompt": p, "max_tokens": 12, "temperature": 0}).to_string()
    };
    let (status, alone, _) = s.post("/v1/completions", &body(&prompts[3]));
    assert_eq!(status, 200);
    assert_eq!(alone["choices"][0]["text"], want[3]);
    let base = s.base.clone();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (base, body) = (base.clone(), body(p));
            std::thread::spawn(move || {
                let mut r = agent()
                    .post(format!("{base}/v1/completions"))
                    .send(body)
                    .unwrap();
                serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap()).unwrap()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.join().unwrap();
        assert_eq!(v["choices"][0]["text"], want[i], "request {i}: {v}");
        assert_eq!(v["usage"]["completion_tokens"], 12);
    }
}

#[test]
fn streams_are_openai_server_sent_events() {
    let s = start(engine_config(), None);
    let body = json!({"prompt": "The answer to life the universe and everything is of course", "max_tokens": 16, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let chunks = s.stream("/v1/completions", body);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        text,
        "FACEFACEikasikasikasikasikasikas Big Big Big tiger rode maf Eenlonger"
    );
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    }
    let last_choice = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"].as_array().unwrap().is_empty())
        .unwrap();
    assert_eq!(last_choice["choices"][0]["finish_reason"], "length");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 16);
    assert_eq!(usage["prompt_tokens"], 11);
    // Chat: a role delta first, content deltas, a finish chunk.
    let chat = s.stream("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 0, "stream": true}));
    assert_eq!(chat[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chat.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    assert!(chat.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chat
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (status, whole, _) = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 0}).to_string());
    assert_eq!(status, 200);
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        streamed.trim()
    );
    assert_eq!(whole["object"], "chat.completion");
}

/// `usage.prompt_tokens_details.cached_tokens` says how many prompt tokens
/// the prefix cache gave, in whole responses and in the streamed usage chunk;
/// a repeated prompt computes only its last token, and its text is unchanged.
#[test]
fn usage_reports_cached_prompt_tokens() {
    let s = start(engine_config(), None);
    let prompt = "The answer to life the universe and everything is of course ".repeat(4);
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
    let (status, first, _) = s.post("/v1/completions", &body.to_string());
    assert_eq!(status, 200, "{first}");
    let prompt_tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 32, "{first}");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, again, _) = s.post("/v1/completions", &body.to_string());
    assert_eq!(again["choices"], first["choices"]);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = s.stream("/v1/completions", streamed);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1
    );
    // A chat's second turn reuses the first turn's prompt.
    let turn = |messages: Value| {
        let body = json!({"messages": messages, "max_tokens": 4, "temperature": 0});
        let (status, v, _) = s.post("/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        v
    };
    let system = json!({"role": "system", "content": "You are a helpful assistant. ".repeat(6)});
    let one = turn(json!([system, {"role": "user", "content": "Hi"}]));
    let reply = one["choices"][0]["message"]["content"].clone();
    let two = turn(
        json!([system, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]),
    );
    let cached = two["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 32, "{two}");
    let metrics = s.get("/metrics", None).1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "grok1_prefix_cache_hits_total 3"),
        "{metrics}"
    );
}

#[test]
fn n_choices_stop_strings_and_scoring() {
    let s = start(engine_config(), None);
    let (status, v, _) = s.post(
        "/v1/completions",
        &json!({"prompt": "Hello there", "max_tokens": 8, "temperature": 1.0, "seed": 4, "n": 3})
            .to_string(),
    );
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_eq!(
        choices
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(v["usage"]["completion_tokens"], 24);
    let (_, again, _) = s.post(
        "/v1/completions",
        &json!({"prompt": "Hello there", "max_tokens": 8, "temperature": 1.0, "seed": 4, "n": 3})
            .to_string(),
    );
    assert_eq!(
        again["choices"], v["choices"],
        "a seed makes n > 1 reproducible"
    );
    // Stop strings end the text before the match.
    let (_, v, _) = s.post("/v1/completions", &json!({"prompt": "The answer to life the universe and everything is of course", "max_tokens": 16, "temperature": 0, "stop": ["ikasika", "zzz"]}).to_string());
    assert_eq!(v["choices"][0]["text"], "FACEFACE");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Scoring: max_tokens 0 with echo and logprobs returns the prompt's log-probabilities.
    let (status, v, _) = s.post(
        "/v1/completions",
        &json!({"prompt": [422, 3033, 356, 1180], "max_tokens": 0, "echo": true, "logprobs": 2})
            .to_string(),
    );
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert!(lp["token_logprobs"][0].is_null());
    assert!(lp["token_logprobs"][1].as_f64().unwrap() < 0.0);
    assert_eq!(lp["top_logprobs"][2].as_object().unwrap().len(), 2);
    assert_eq!(v["choices"][0]["text"], "The answer to life");
    assert_eq!(v["usage"]["completion_tokens"], 0);
}

#[test]
fn a_full_queue_is_refused_with_retry_after() {
    let s = start(
        EngineConfig {
            max_batch: 1,
            max_queue: 0,
            ..engine_config()
        },
        None,
    );
    // Occupy the only slot with a long stream, read its first event, then ask again.
    let mut stream = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    let body = json!({"prompt": "hello", "max_tokens": 120, "stream": true}).to_string();
    write!(stream, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let (status, v, retry) = s.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 2}"#);
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(retry.as_deref(), Some("1"));
    // Hang up: the slot is freed at the next step.
    drop(reader);
    drop(stream);
    let start = Instant::now();
    while s.engine.in_flight() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the disconnected stream still holds its slot"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _, _) = s.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 2}"#);
    assert_eq!(status, 200);
    let (_, metrics) = s.get("/metrics", None);
    for name in [
        "grok1_requests_total",
        "grok1_queue_depth",
        "grok1_batch_size_bucket",
        "grok1_time_to_first_token_seconds_bucket",
        "grok1_time_per_output_token_seconds_count",
        "grok1_generation_tokens_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("grok1_requests_finished_total{reason=\"cancelled\"} 1"),
        "{metrics}"
    );
}

#[test]
fn tokenizer_endpoints_speak_vllms_format() {
    let s = start(engine_config(), None);
    let (status, value, _) = s.post(
        "/tokenize",
        r#"{"prompt": "Hello world", "add_special_tokens": false}"#,
    );
    assert_eq!(status, 200, "{value}");
    let expected = Tokenizer::grok1().encode("Hello world");
    let tokens: Vec<u32> = serde_json::from_value(value["tokens"].clone()).unwrap();
    assert_eq!(tokens, expected);
    assert_eq!(value["count"], expected.len());
    assert_eq!(value["max_model_len"], engine_config().context);
    let (status, value, _) = s.post(
        "/tokenize",
        r#"{"prompt": "Hi", "add_special_tokens": true}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        value["tokens"][0], 1,
        "BOS leads when special tokens are asked for"
    );
    let body = json!({ "tokens": expected }).to_string();
    let (status, value, _) = s.post("/detokenize", &body);
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["prompt"], "Hello world");
    let (status, info) = s.get("/tokenizer_info", None);
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["eos_token"], "[EOS]", "{info}");
    assert_eq!(info["bos_token"], "[BOS]", "{info}");
    // Bad input is a 400 naming the field.
    let (status, value, _) = s.post("/detokenize", r#"{"tokens": [5, 99999999]}"#);
    assert_eq!(status, 400);
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("position 1"),
        "{value}"
    );
    let (status, value, _) = s.post("/tokenize", r#"{"text": "x"}"#);
    assert_eq!(status, 400, "{value}");
    let (status, _, _) = s.post("/tokenize", "not json");
    assert_eq!(status, 400);
}

/// Each token's text is found at its offset (in code points) in `text`, and
/// the tokens, in order, make up `text` exactly.
fn assert_tokens_tile(text: &str, tokens: &[Value], offsets: &[Value]) {
    assert_eq!(tokens.len(), offsets.len());
    let chars: Vec<char> = text.chars().collect();
    let mut joined = String::new();
    for (t, o) in tokens.iter().zip(offsets) {
        let (t, o) = (t.as_str().unwrap(), o.as_u64().unwrap() as usize);
        let found: String = chars[o.min(chars.len())..]
            .iter()
            .take(t.chars().count())
            .collect();
        assert_eq!(found, t, "token {t:?} at {o} in {text:?}");
        assert_eq!(o, joined.chars().count(), "token {t:?} in {text:?}");
        joined.push_str(t);
    }
    assert_eq!(joined, text);
}

/// The hardening issue's item 11 and the text-fidelity issue's leading-space
/// defect: `echo` returns the prompt and then the completion as the
/// continuation of the prompt (not as a new document that drops its first
/// space), and `tokens[i]` / `text_offset[i]` follow the returned text, whole
/// and streamed, with and without a stop string.
#[test]
fn echo_and_logprobs_follow_the_returned_text() {
    let s = start(engine_config(), None);
    let model = load("tiny-vocab");
    let tok = Tokenizer::grok1();

    let (status, v, _) = s.post(
        "/v1/completions",
        &json!({"prompt": "hello world", "echo": true, "logprobs": 2, "max_tokens": 0}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(v["choices"][0]["text"], "hello world");
    assert_eq!(lp["tokens"], json!(["hello", " world"]));
    assert_eq!(lp["text_offset"], json!([0, 5]));

    // On this model the first two continue with a word piece (`▁Apocalypse`,
    // `▁Ilsa`): decoded as a new document they lost their space.
    for prompt in ["Once upon a time", "import os\n", "日本 😀 and"] {
        let ids = tok.encode(prompt);
        let (generated, _) = greedy_text(&model, &ids, 10);
        let completion = tok.decode_after(&ids, &generated).unwrap();
        if !prompt.starts_with('日') {
            assert!(completion.starts_with(' '), "{prompt:?}: {completion:?}");
        }
        // A stop string inside the completion (its third to fifth characters).
        let cut: String = completion.chars().skip(2).take(3).collect();
        for (stop, echo, stream) in [
            (None, true, false),
            (None, false, false),
            (None, true, true),
            (None, false, true),
            (Some(cut.clone()), true, false),
            (Some(cut.clone()), false, true),
            (Some(cut.clone()), true, true),
        ] {
            let mut body = json!({"prompt": prompt, "echo": echo, "logprobs": 3, "max_tokens": 10, "temperature": 0, "stream": stream});
            if let Some(stop) = &stop {
                body["stop"] = json!([stop]);
            }
            let mut want = completion.clone();
            if let Some(stop) = &stop {
                want.truncate(want.find(stop.as_str()).unwrap());
            }
            if echo {
                want = format!("{prompt}{want}");
            }
            let case = format!("{prompt:?} stop {stop:?} echo {echo} stream {stream}");
            let (text, tokens, offsets) = if stream {
                let chunks = s.stream("/v1/completions", body);
                let mut text = String::new();
                let (mut tokens, mut offsets) = (vec![], vec![]);
                for c in chunks.iter().filter_map(|c| c["choices"].get(0)) {
                    text.push_str(c["text"].as_str().unwrap());
                    if let Some(lp) = c["logprobs"].as_object() {
                        tokens.extend(lp["tokens"].as_array().unwrap().iter().cloned());
                        offsets.extend(lp["text_offset"].as_array().unwrap().iter().cloned());
                        // A chunk's tokens are within the text sent so far.
                        assert_tokens_tile(
                            &text.chars().take(joined_len(&tokens)).collect::<String>(),
                            &tokens,
                            &offsets,
                        );
                    }
                }
                (text, tokens, offsets)
            } else {
                let (status, v, _) = s.post("/v1/completions", &body.to_string());
                assert_eq!(status, 200, "{case}: {v}");
                let c = &v["choices"][0];
                let lp = &c["logprobs"];
                assert_eq!(
                    lp["top_logprobs"].as_array().unwrap().len(),
                    lp["tokens"].as_array().unwrap().len()
                );
                (
                    c["text"].as_str().unwrap().to_string(),
                    lp["tokens"].as_array().unwrap().clone(),
                    lp["text_offset"].as_array().unwrap().clone(),
                )
            };
            assert_eq!(text, want, "{case}");
            let count = generated.len() + if echo { ids.len() } else { 0 };
            if stop.is_none() {
                assert_eq!(tokens.len(), count, "{case}");
            }
            assert_tokens_tile(&text, &tokens, &offsets);
        }
    }
}

fn joined_len(tokens: &[Value]) -> usize {
    tokens
        .iter()
        .map(|t| t.as_str().unwrap().chars().count())
        .sum()
}

/// A `top_p` in (0, 1e-45] is accepted by the range check but rounds to 0 as
/// an f32, which the sampler refused ("top_p must be in (0, 1]"): like top_p 0
/// it keeps only the most likely token.
#[test]
fn a_top_p_below_f32_range_is_greedy() {
    let s = start(engine_config(), None);
    let body = |extra: Value| {
        let mut b = json!({"prompt": "Once upon a time", "max_tokens": 6, "seed": 3});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    let (status, greedy, _) = s.post("/v1/completions", &body(json!({"temperature": 0})));
    assert_eq!(status, 200, "{greedy}");
    for top_p in [1e-46, 1e-300, 5e-324] {
        let (status, v, _) = s.post("/v1/completions", &body(json!({"top_p": top_p})));
        assert_eq!(status, 200, "top_p {top_p}: {v}");
        assert_eq!(
            v["choices"][0]["text"], greedy["choices"][0]["text"],
            "top_p {top_p}"
        );
    }
}
