//! `grok1 serve` as a process, under clients that leave or linger: clients that
//! post long prompts and hang up at once cost no prefill and delay nobody,
//! more idle connections than the descriptor limit allows leave /health
//! answering, and a model whose vocabulary is smaller than the tokenizer's is
//! warned about.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// A running `grok1 serve`, killed when dropped.
struct Served {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `grok1 serve --port 0 ARGS`, under `ulimit -n` when given, and
/// waits until it listens.
fn serve(descriptor_limit: Option<u32>, args: &[&str]) -> Served {
    let bin = env!("CARGO_BIN_EXE_grok1");
    let mut cmd = match descriptor_limit {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["serve", "--port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = BufReader::new(child.stderr.take().unwrap());
    let log = stderr.clone();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let port = line
                .split_once("listening on http://127.0.0.1:")
                .and_then(|(_, rest)| rest.split(' ').next()?.parse::<u16>().ok());
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(port) = port {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("the server did not start: {}", stderr.lock().unwrap()));
    Served {
        child,
        port,
        stderr,
    }
}

impl Served {
    fn connect(&self) -> TcpStream {
        let c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c
    }

    fn raw(&self, method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// (status, body) of one request on its own connection.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut c = self.connect();
        c.write_all(self.raw(method, path, body).as_bytes())
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {reply:?}"));
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.request("GET", "/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from {text}"))
    }

    /// Engine time so far: the forward steps' total duration.
    fn engine_seconds(&self) -> f64 {
        self.metric("grok1_step_seconds_sum")
    }

    fn wait_idle(&self) {
        let started = Instant::now();
        while self.metric("grok1_running_sequences") + self.metric("grok1_queue_depth") > 0.0 {
            assert!(started.elapsed() < Duration::from_secs(120), "never idle");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
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

/// A 1,000-token prompt of the demo model's vocabulary, different for each `i`.
fn long_prompt(i: usize) -> Vec<usize> {
    (0..1000)
        .map(|j| 3 + (i * 1000 + j) * 7919 % 131_000)
        .collect()
}

#[test]
fn clients_that_leave_at_once_cost_no_prefill_and_delay_nobody() {
    let s = serve(None, &[]);
    let small = json!({"prompt": "Hello", "max_tokens": 1}).to_string();
    let timed = |body: &str| {
        let started = Instant::now();
        let (status, reply) = s.request("POST", "/v1/completions", body);
        assert_eq!(status, 200, "{reply}");
        started.elapsed()
    };
    timed(&small);
    let idle = (0..3).map(|_| timed(&small)).min().unwrap();
    // What one of the departing requests costs a client that stays.
    let before = s.engine_seconds();
    timed(&json!({"prompt": long_prompt(1000), "max_tokens": 1}).to_string());
    let one_prefill = s.engine_seconds() - before;

    // 80 clients post a different 1,000-token prompt (half of them streaming)
    // and hang up at once.
    let before = s.engine_seconds();
    for i in 0..80 {
        let body = json!({"prompt": long_prompt(i), "max_tokens": 16, "stream": i % 2 == 0});
        let mut c = s.connect();
        c.write_all(
            s.raw("POST", "/v1/completions", &body.to_string())
                .as_bytes(),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (status, reply) = s.request("POST", "/v1/completions", &small);
    let latency = started.elapsed();
    assert_eq!(status, 200, "the next request was refused: {reply}");
    let bound = (idle * 20).max(Duration::from_millis(1500));
    assert!(
        latency <= bound,
        "the next request took {latency:?} (idle: {idle:?}, bound {bound:?})"
    );
    s.wait_idle();
    let spent = s.engine_seconds() - before;
    assert!(
        spent < 0.05 * 80.0 * one_prefill,
        "the departed clients cost {spent:.3} s of engine time; staying, they would cost about {:.3} s",
        80.0 * one_prefill
    );
    assert_eq!(s.metric("grok1_running_sequences"), 0.0);
    assert_eq!(s.metric("grok1_kv_cache_used_pages"), 0.0);
}

#[test]
fn idle_connections_beyond_the_descriptor_limit_leave_health_answering() {
    let tiny = model("tiny-moe");
    let s = serve(
        Some(300),
        &["--model", tiny.to_str().unwrap(), "--header-timeout", "2"],
    );
    let cap: usize = {
        let log = s.stderr.lock().unwrap();
        log.split_once("at most ")
            .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no connection cap in {log}"))
    };
    assert!((200..300).contains(&cap), "cap {cap} under a limit of 300");
    // 320 connections, idle or halfway through a head, held open.
    let mut held: Vec<TcpStream> = (0..320)
        .map(|i| {
            let mut c = s.connect();
            if i % 2 == 1 {
                c.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
            }
            c
        })
        .collect();
    let started = Instant::now();
    let (status, body) = s.request("GET", "/health", "");
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/health took {:?}",
        started.elapsed()
    );
    // The oldest made room; the newest are still open.
    assert!(closed_within(&mut held[0], Duration::from_secs(1)));
    assert!(!closed_within(&mut held[319], Duration::from_millis(100)));
    // A head that never ends is closed after --header-timeout.
    let mut slow = s.connect();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(10)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    drop(held);
}

#[test]
fn a_model_with_fewer_ids_than_the_tokenizer_is_warned_about() {
    let tiny = model("tiny-moe");
    let s = serve(None, &["--model", tiny.to_str().unwrap()]);
    let log = s.stderr.lock().unwrap().clone();
    assert!(
        log.contains("grok1: warning: the tokenizer has 131072 pieces but the model has 1024 token ids: text that encodes to an id the model lacks will be refused"),
        "{log}"
    );
    // It says so before it listens.
    assert!(log.find("warning").unwrap() < log.find("listening").unwrap());
    let (status, body) = s.request("POST", "/v1/completions", r#"{"prompt": "Hello"}"#);
    assert_eq!(status, 400, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["error"]["param"], "prompt", "{body}");
}

/// The stderr lines that contain `needle`, waiting up to 10 s for one.
fn logged(s: &Served, needle: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines: Vec<String> = s
            .stderr
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() || started.elapsed() > Duration::from_secs(10) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The head of a raw HTTP exchange: status and lower-cased header lines.
fn exchange(s: &Served, request: &str) -> (u16, Vec<String>) {
    let mut c = s.connect();
    c.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    let head = reply.split("\r\n\r\n").next().unwrap_or_default();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let headers = head.lines().skip(1).map(str::to_ascii_lowercase).collect();
    (status, headers)
}

/// At the default level a request gets one line (id, tokens, time to first
/// token, total time, finish reason, status) and a refused one a warning;
/// CORS preflights are answered for the allowed origin only, before the key
/// is checked; /metrics has queue time, end-to-end latency and KV pages.
#[test]
fn requests_are_logged_preflights_answered_and_latency_metered() {
    let tiny = model("tiny-vocab");
    let s = serve(
        None,
        &[
            "--model",
            tiny.to_str().unwrap(),
            "--kv-tokens",
            "512",
            "--cors-origin",
            "http://app.example",
            "--api-key",
            "k",
        ],
    );
    let post = |body: &str| {
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let body = json!({"prompt": "Hello there", "max_tokens": 3, "temperature": 0}).to_string();
    let mut c = s.connect();
    c.write_all(post(&body).as_bytes()).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap();
    let id = reply["id"].as_str().unwrap();
    let lines = logged(&s, &format!("id={id}"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    let prompt_tokens = format!("prompt_tokens={}", reply["usage"]["prompt_tokens"]);
    for field in [
        " INFO ",
        "request done",
        "endpoint=\"/v1/completions\"",
        "status=200",
        &prompt_tokens,
        "completion_tokens=3",
        "ttft_ms=",
        "total_ms=",
        "finish_reason=length",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }

    let (status, _) = exchange(&s, &post(r#"{"prompt": "hi", "frobnicate": 1}"#));
    assert_eq!(status, 400);
    let refused = logged(&s, "request refused");
    assert!(
        refused
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("status=400") && l.contains("frobnicate")),
        "{refused:?}"
    );

    let preflight = |origin: &str| {
        exchange(
            &s,
            &format!(
                "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n\r\n"
            ),
        )
    };
    let (status, headers) = preflight("http://app.example");
    assert_eq!(status, 200, "{headers:?}");
    assert!(
        headers.contains(&"access-control-allow-origin: http://app.example".to_string()),
        "{headers:?}"
    );
    let methods = headers
        .iter()
        .find_map(|h| h.strip_prefix("access-control-allow-methods: "))
        .unwrap_or_else(|| panic!("no allowed methods in {headers:?}"));
    assert!(methods.contains("post"), "{methods}");
    let allowed = headers
        .iter()
        .find_map(|h| h.strip_prefix("access-control-allow-headers: "))
        .unwrap_or_else(|| panic!("no allowed headers in {headers:?}"));
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    let (_, headers) = preflight("http://evil.example");
    assert!(
        !headers
            .iter()
            .any(|h| h.starts_with("access-control-allow-origin")),
        "{headers:?}"
    );
    // An actual cross-origin request's answer, refused or not, is readable.
    let (status, headers) = exchange(
        &s,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: http://app.example\r\n\r\n",
    );
    assert_eq!(status, 401);
    assert!(headers.contains(&"access-control-allow-origin: http://app.example".to_string()));

    let mut c = s.connect();
    c.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer k\r\n\r\n",
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    for line in [
        "grok1_kv_cache_total_pages 32",
        "grok1_kv_cache_used_pages 0",
        "grok1_request_queue_seconds_count 1",
        "grok1_e2e_request_latency_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from {text}"
        );
    }
}

/// SIGTERM with no grace period while a stream's choices are still running or
/// queued: every choice ends with an OpenAI finish reason ("length": the
/// server cut it), an error event says why, `[DONE]` follows, the server exits 0.
#[test]
fn shutdown_ends_streams_with_length_and_an_error_event() {
    let tiny = model("tiny-vocab");
    let mut s = serve(
        None,
        &[
            "--model",
            tiny.to_str().unwrap(),
            "--max-batch",
            "1",
            "--shutdown-grace",
            "0",
        ],
    );
    let body =
        json!({"prompt": "Hello", "max_tokens": 100, "n": 16, "stream": true, "ignore_eos": true});
    let mut c = s.connect();
    c.write_all(
        s.raw("POST", "/v1/completions", &body.to_string())
            .as_bytes(),
    )
    .unwrap();
    let mut reader = BufReader::new(c);
    let mut line = String::new();
    while !line.starts_with("data: {") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no first chunk");
    }
    let status = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let data: Vec<&str> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{rest}");
    let error: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{error}"
    );
    let mut finished = vec![None; 16];
    for d in &data[..data.len() - 2] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            if let Some(reason) = choice["finish_reason"].as_str() {
                finished[choice["index"].as_u64().unwrap() as usize] = Some(reason.to_string());
            }
        }
    }
    assert!(
        finished.iter().all(|r| r.as_deref() == Some("length")),
        "{finished:?}"
    );
    assert!(!rest.contains("cancelled"), "{rest}");
    let code = s.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
}
