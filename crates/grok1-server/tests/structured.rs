//! Structured output over real HTTP on the demo model (random weights, so the
//! grammar alone shapes the output): 100 schemas of varied shape each get a
//! complete JSON document that validates, `json_object` replies are JSON or
//! end at the token limit, tool calls come back in OpenAI's shape (whole and
//! streamed), and bad schemas are 400s naming their field while the server
//! stays up.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use grok1::config::DEMO_SEED;
use grok1::engine::{EngineConfig, EngineHandle};
use grok1::weights::random::random_store;
use grok1::{Grok1, ModelConfig, Precision};
use grok1_server::AppState;
use grok1_tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// The demo model behind a server on a loopback port; returns its base URL.
fn start() -> String {
    let config = ModelConfig::demo();
    let eos = config.eos_token;
    let model = Grok1::from_store(config.clone(), &random_store(&config, DEMO_SEED)).unwrap();
    let tokenizer = Arc::new(Tokenizer::grok1());
    let engine = EngineHandle::start(
        model,
        tokenizer.clone(),
        EngineConfig {
            max_batch: 16,
            max_queue: 128,
            context: 1024,
            kv_tokens: 16 * 512,
            prefill_chunk: 256,
            precision: Precision::F32,
            prefix_cache: true,
            kv_type: grok1::KvType::F32,
        },
    );
    let state = AppState::new(engine, tokenizer, "grok1-demo".into(), eos, None);
    let addr = common::serve_in_background(state, common::default_limits());
    format!("http://{addr}")
}

fn post(base: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let mut resp = agent
        .post(format!("{base}/v1/chat/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        resp.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The data payloads of a streamed chat completion, parsed.
fn stream(base: &str, body: &Value) -> Vec<Value> {
    let (status, value) = {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        let mut resp = agent
            .post(format!("{base}/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(status, 200, "{value}");
    let payloads: Vec<&str> = value
        .split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .collect();
    assert_eq!(payloads.last(), Some(&"[DONE]"), "{value}");
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// A random schema: scalars with bounds (strings of at most 16 characters,
/// integers and numbers in ranges, booleans, enums), arrays of at most 4
/// items and nested objects, each object with some required properties and
/// no others allowed.
fn schema(rng: &mut ChaCha8Rng, depth: usize) -> Value {
    let kinds = if depth >= 2 { 5 } else { 7 };
    match rng.random_range(0..kinds) {
        0 => json!({"type": "string", "maxLength": 16}),
        1 => {
            let lo = rng.random_range(-50..50);
            json!({"type": "integer", "minimum": lo, "maximum": lo + rng.random_range(0..1000)})
        }
        2 => {
            let lo = rng.random_range(-10..10);
            json!({"type": "number", "minimum": lo, "maximum": lo + rng.random_range(1..100)})
        }
        3 => json!({"type": "boolean"}),
        4 => {
            let options = ["red", "green", "blue", "north", "south", "x", "yes", "no"];
            let n = rng.random_range(1..5);
            let values: Vec<&str> = (0..n)
                .map(|_| options[rng.random_range(0..options.len())])
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            json!({"enum": values})
        }
        5 => json!({"type": "array", "items": schema(rng, depth + 1), "maxItems": 4}),
        _ => object(rng, depth + 1),
    }
}

fn object(rng: &mut ChaCha8Rng, depth: usize) -> Value {
    let n = rng.random_range(1..5);
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for i in 0..n {
        let name = format!("{}{i}", ["id", "name", "size", "tags", "item"][i % 5]);
        properties.insert(name.clone(), schema(rng, depth));
        if rng.random_bool(0.7) {
            required.push(name);
        }
    }
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Whether `json` has no whitespace outside its strings.
fn compact(json: &str) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (false, _, c) if c.is_whitespace() => return false,
            _ => {}
        }
    }
    true
}

fn format(schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
}

#[test]
fn a_hundred_schemas_get_complete_valid_json() {
    let base = start();
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let schemas: Vec<Value> = (0..100).map(|_| object(&mut rng, 0)).collect();
    let started = Instant::now();
    // Sixteen clients at a time: the engine batches them.
    let results: Vec<(Value, u16, Value)> = std::thread::scope(|s| {
        let chunks: Vec<_> = schemas
            .chunks(schemas.len().div_ceil(16))
            .map(|chunk| {
                let base = &base;
                s.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, schema)| {
                            // Greedy and sampled draws alike.
                            let body = json!({
                                "messages": [{"role": "user", "content": "Answer in JSON."}],
                                "max_tokens": 400,
                                "temperature": if i % 2 == 0 { 0.0 } else { 1.0 },
                                "seed": i,
                                "response_format": format(schema),
                            });
                            let (status, reply) = post(base, &body);
                            (schema.clone(), status, reply)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    assert_eq!(results.len(), 100);
    let mut tokens = 0;
    for (schema, status, reply) in &results {
        assert_eq!(status, &200, "{reply}");
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{schema}\n{reply}");
        let text = choice["message"]["content"].as_str().unwrap();
        let value: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{schema}\n{text}: {e}"));
        let validator = jsonschema::validator_for(schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{schema}\n{text}\n{errors:?}");
        assert!(compact(text), "{schema}\n{text}");
        tokens += reply["usage"]["completion_tokens"].as_u64().unwrap();
    }
    eprintln!(
        "100 schemas: {tokens} tokens in {:.1} s",
        elapsed.as_secs_f64()
    );
}

#[test]
fn json_object_replies_are_json_or_end_at_the_limit() {
    let base = start();
    let mut complete = 0;
    for (i, max_tokens) in [8, 40, 120, 400].into_iter().enumerate() {
        let (status, reply) = post(
            &base,
            &json!({
                "messages": [{"role": "user", "content": "Some JSON please."}],
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "seed": i,
                "response_format": {"type": "json_object"},
            }),
        );
        assert_eq!(status, 200, "{reply}");
        let choice = &reply["choices"][0];
        let text = choice["message"]["content"].as_str().unwrap();
        match choice["finish_reason"].as_str().unwrap() {
            "stop" => {
                let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert!(v.is_object(), "{text}");
                complete += 1;
            }
            "length" => {
                assert_eq!(reply["usage"]["completion_tokens"], max_tokens);
                assert!(text.starts_with('{'), "{text}");
            }
            other => panic!("finish_reason {other}: {reply}"),
        }
    }
    // Eight tokens cannot close much; the reply still starts an object.
    eprintln!("{complete} of 4 json_object replies complete");
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            }, "required": ["city", "unit"], "additionalProperties": false},
        }},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
            "zone": {"type": "string", "maxLength": 8},
        }, "required": ["zone"], "additionalProperties": false}}},
    ])
}

#[test]
fn tool_calls_come_back_whole_and_streamed() {
    let base = start();
    for (choice, names) in [
        (json!("required"), vec!["get_weather", "get_time"]),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            vec!["get_time"],
        ),
    ] {
        let body = json!({
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "max_tokens": 200,
            "temperature": 0,
            "tools": weather_tools(),
            "tool_choice": choice,
        });
        let (status, reply) = post(&base, &body);
        assert_eq!(status, 200, "{reply}");
        let choice = &reply["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{reply}");
        assert!(choice["message"]["content"].is_null(), "{reply}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().unwrap().starts_with("call-"), "{call}");
        let name = call["function"]["name"].as_str().unwrap();
        assert!(names.contains(&name), "{call}");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        let tools = weather_tools();
        let tool = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["function"]["name"] == name)
            .unwrap();
        let validator = jsonschema::validator_for(&tool["function"]["parameters"]).unwrap();
        assert!(validator.is_valid(&arguments), "{arguments}");

        // Streamed: one call, its id and name first, then the arguments in pieces.
        let mut body = body.clone();
        body["stream"] = json!(true);
        let chunks = stream(&base, &body);
        let mut streamed_args = String::new();
        let mut headers = Vec::new();
        let mut finish = None;
        for c in &chunks {
            let choice = &c["choices"][0];
            if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
                assert_eq!(calls.len(), 1);
                assert_eq!(calls[0]["index"], 0);
                if calls[0].get("id").is_some() {
                    headers.push(calls[0].clone());
                }
                streamed_args.push_str(calls[0]["function"]["arguments"].as_str().unwrap());
            }
            assert!(
                choice["delta"]["content"]
                    .as_str()
                    .is_none_or(str::is_empty),
                "{c}"
            );
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        assert_eq!(headers.len(), 1, "{chunks:?}");
        assert_eq!(headers[0]["function"]["name"], name);
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        // Greedy: the stream's arguments are the whole reply's.
        assert_eq!(
            streamed_args,
            call["function"]["arguments"].as_str().unwrap()
        );
    }
    // An earlier call and its result in the history are accepted.
    let (status, reply) = post(
        &base,
        &json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call-1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}]},
                {"role": "tool", "tool_call_id": "call-1", "content": "21 degrees"},
            ],
            "max_tokens": 8,
            "temperature": 0,
            "tools": weather_tools(),
            "tool_choice": "none",
        }),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply["choices"][0]["message"]["content"].is_string());
}

#[test]
fn bad_schemas_are_400s_naming_the_field_and_the_server_stays_up() {
    let base = start();
    let message = json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        (
            json!({"response_format": format(&json!({"type": "object", "properties": {"a": {"type": "strng"}}}))}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}}], "tool_choice": "required"}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
            "tools[0].function.name",
        ),
        (json!({"tool_choice": "required"}), "tools"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias.abc"),
        (json!({"logit_bias": {"5": 101}}), "logit_bias.5"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
    ];
    for (extra, param) in cases {
        let mut body = json!({"messages": message, "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, reply) = post(&base, &body);
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{body}: {reply}");
    }
    let (status, reply) = post(
        &base,
        &json!({"messages": message, "max_tokens": 4, "logit_bias": {"5": -100}, "presence_penalty": 1.5, "frequency_penalty": -0.5}),
    );
    assert_eq!(status, 200, "{reply}");
}

#[test]
fn logit_bias_of_100_forces_a_token() {
    let base = start();
    let tok = Tokenizer::grok1();
    let forced = tok.piece_to_id("\u{2581}banana");
    let (status, reply) = post(
        &base,
        &json!({
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5,
            "temperature": 1.0,
            "seed": 3,
            "logit_bias": {forced.to_string(): 100},
        }),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["usage"]["completion_tokens"], 5);
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "banana banana banana banana banana"
    );
}
