//! The server against hostile or careless clients, over real TCP: heads sent a
//! byte at a time, bodies that never finish and idle keep-alive connections
//! are closed after their timeouts; idle connections beyond the cap make room
//! for new ones while busy ones are kept; a prompt far over the context is
//! refused before it is encoded; a refused request runs none of its choices;
//! the Bearer scheme is case-insensitive.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grok1::engine::{EngineConfig, EngineHandle};
use grok1::progress::NoProgress;
use grok1::weights::ckpt0;
use grok1::{Grok1, ModelConfig, Precision};
use grok1_server::{AppState, ConnectionLimits};
use grok1_tokenizer::Tokenizer;
use serde_json::json;

fn load() -> Grok1 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/tiny-vocab");
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
        max_batch: 4,
        max_queue: 4,
        context: 128,
        kv_tokens: 8 * 128,
        prefill_chunk: 64,
        precision: Precision::F32,
        prefix_cache: true,
        kv_type: grok1::KvType::F32,
    }
}

/// One-second timeouts, 64 connections.
fn limits() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_connections: 64,
    }
}

struct Server {
    addr: SocketAddr,
    engine: EngineHandle,
}

fn start(config: EngineConfig, limits: ConnectionLimits, key: Option<&str>) -> Server {
    let engine = EngineHandle::start(load(), Arc::new(Tokenizer::grok1()), config);
    let state = AppState::new(
        engine.clone(),
        Arc::new(Tokenizer::grok1()),
        "tiny-vocab".into(),
        2,
        key.map(str::to_string),
    );
    let addr = common::serve_in_background(state, limits);
    Server { addr, engine }
}

impl Server {
    fn connect(&self) -> TcpStream {
        let c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c
    }

    /// One request on its own connection: (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut c = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(body.as_bytes()).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        parse_response(&reply)
    }

    /// Starts a stream that runs for a while and returns its connection after
    /// its first token.
    fn busy_stream(&self) -> TcpStream {
        let mut c = self.connect();
        let body =
            json!({"prompt": "hello", "max_tokens": 120, "ignore_eos": true, "stream": true})
                .to_string();
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("data: ") {
            c.read_exact(&mut byte).unwrap();
            seen.push(byte[0]);
        }
        c
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.request("GET", "/metrics", &[], "");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from {text}"))
    }
}

fn parse_response(reply: &str) -> (u16, String) {
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// Whether the server has closed `c`, waiting up to `within`.
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let s = start(engine_config(), limits(), Some("sekrit"));
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} sekrit");
        let (status, body) = s.request("GET", "/v1/models", &[("Authorization", &auth)], "");
        assert_eq!(status, 200, "{auth}: {body}");
    }
    for auth in ["Basic sekrit", "Bearersekrit", "bearer wrong", "sekrit"] {
        let (status, body) = s.request("GET", "/v1/models", &[("Authorization", auth)], "");
        assert_eq!(status, 401, "{auth}: {body}");
    }
}

#[test]
fn a_refused_request_runs_none_of_its_choices() {
    let s = start(
        EngineConfig {
            max_batch: 1,
            max_queue: 3,
            ..engine_config()
        },
        limits(),
        None,
    );
    let _busy = s.busy_stream();
    // Four choices with room for three: all refused, none queued.
    let body = r#"{"prompt": "hi", "max_tokens": 2, "n": 4}"#;
    let (status, reply) = s.request("POST", "/v1/completions", &[], body);
    assert_eq!(status, 429, "{reply}");
    assert_eq!(s.metric("grok1_requests_total"), 1.0);
    // More choices than the server ever holds at once: a 400 naming `n`.
    let body = r#"{"prompt": ["a", "b", "c"], "max_tokens": 2, "n": 2}"#;
    let (status, reply) = s.request("POST", "/v1/completions", &[], body);
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains(r#""param":"n""#), "{reply}");
    assert!(reply.contains("6 completions"), "{reply}");
    assert_eq!(s.metric("grok1_requests_total"), 1.0);
}

#[test]
fn a_prompt_far_over_the_context_is_refused_before_it_is_encoded() {
    let s = start(
        engine_config(),
        ConnectionLimits {
            body_timeout: Duration::from_secs(60),
            ..limits()
        },
        None,
    );
    let text = "All work and no play makes Jack a dull boy. ".repeat(16_000_000 / 44);
    let body = json!({"prompt": text, "max_tokens": 1}).to_string();
    let started = Instant::now();
    let (status, reply) = s.request("POST", "/v1/completions", &[], &body);
    let refused_in = started.elapsed();
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("context_length_exceeded"), "{reply}");
    assert!(
        reply.contains(&format!("({} bytes)", text.len())) && reply.contains("128 tokens"),
        "the error names the prompt's length and the context: {reply}"
    );
    let chat = json!({"messages": [{"role": "user", "content": text}]}).to_string();
    let (status, reply) = s.request("POST", "/v1/chat/completions", &[], &chat);
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains(r#""param":"messages""#), "{reply}");
    // The whole refusal costs less than a full encoding of an eighth of the text.
    let eighth = &text[..text.len() / 8];
    let started = Instant::now();
    let tokens = Tokenizer::grok1().encode(eighth).len();
    let encoding = started.elapsed();
    assert!(tokens > 128);
    assert!(
        refused_in < encoding,
        "refused in {refused_in:?}; encoding an eighth of the prompt takes {encoding:?}"
    );
}

#[test]
fn slow_heads_unfinished_bodies_and_idle_connections_are_closed() {
    let s = start(engine_config(), limits(), None);
    // A head sent a byte at a time: closed after the one-second header timeout.
    let mut slow = s.connect();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    while !closed && started.elapsed() < Duration::from_secs(5) {
        let _ = slow.write_all(b"a");
        closed = closed_within(&mut slow, Duration::from_millis(100));
    }
    let took = started.elapsed();
    assert!(
        closed,
        "a head still arriving after {took:?} was not closed"
    );
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
    // A body that stops short: 408 after the body timeout.
    let mut c = s.connect();
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":",
    )
    .unwrap();
    let mut reply = String::new();
    let started = Instant::now();
    let _ = c.read_to_string(&mut reply);
    let (status, body) = parse_response(&reply);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("did not arrive within 1 s"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // An idle keep-alive connection: closed after the header timeout too.
    let mut idle = s.connect();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(!closed_within(&mut idle, Duration::from_millis(300)));
    assert!(closed_within(&mut idle, Duration::from_secs(3)));
}

#[test]
fn idle_connections_beyond_the_cap_make_room_and_busy_ones_are_kept() {
    let s = start(
        engine_config(),
        ConnectionLimits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 16,
        },
        None,
    );
    let mut busy = s.busy_stream();
    // Three times the cap of idle and half-sent connections, oldest first.
    let mut idle: Vec<TcpStream> = (0..48)
        .map(|i| {
            let mut c = s.connect();
            if i % 2 == 1 {
                c.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
            }
            // Accepted in this order.
            std::thread::sleep(Duration::from_millis(5));
            c
        })
        .collect();
    let started = Instant::now();
    let (status, _) = s.request("GET", "/health", &[], "");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The oldest idle connections made room; the newest are open.
    for (i, c) in idle.iter_mut().enumerate().take(32) {
        assert!(closed_within(c, Duration::from_secs(2)), "connection {i}");
    }
    for (i, c) in idle.iter_mut().enumerate().skip(34) {
        assert!(
            !closed_within(c, Duration::from_millis(50)),
            "connection {i}"
        );
    }
    // The stream in progress was never shed.
    let mut rest = String::new();
    busy.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
}

#[test]
fn with_every_connection_busy_a_new_one_gets_503() {
    let s = start(
        engine_config(),
        ConnectionLimits {
            max_connections: 2,
            ..limits()
        },
        None,
    );
    let _a = s.busy_stream();
    let _b = s.busy_stream();
    let mut c = s.connect();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    let (status, body) = parse_response(&reply);
    assert_eq!(status, 503, "{body}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 1"),
        "{reply}"
    );
    assert!(body.contains("2 connections open"), "{body}");
    assert!(s.engine.in_flight() <= 2);
}
