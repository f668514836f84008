//! An OpenAI-compatible HTTP server over the grok1 engine: `/v1/completions`,
//! `/v1/chat/completions` (with streaming as server-sent events),
//! `/v1/models`, `/health` and `/metrics`. The engine batches every active
//! request into each step; this crate only speaks HTTP and JSON.

#![forbid(unsafe_code)]

pub mod chat;
mod connections;
mod error;
mod logprobs;
mod openai;
pub mod structured;
mod tokenizer_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use grok1::engine::{EngineHandle, Load};
use grok1_tokenizer::Tokenizer;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use axum::http::HeaderValue;
pub use connections::{descriptor_budget, ConnectionLimits, DescriptorBudget};
pub use error::ApiError;

/// Defaults of [`ConnectionLimits`]' timeouts.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the server is reached and protected.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Bearer token required on every endpoint but `/health`.
    pub api_key: Option<String>,
    /// The model id clients name (`/v1/models`).
    pub model_name: String,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    pub limits: ConnectionLimits,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub model_name: String,
    pub eos: u32,
    pub api_key: Option<String>,
    pub created: u64,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Origins whose browser pages may call the API (`*`: any); none: no CORS headers.
    pub cors_origins: Vec<HeaderValue>,
    /// The grammar compiler of structured output (built on first use).
    pub grammars: Arc<structured::Grammars>,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        model_name: String,
        eos: u32,
        api_key: Option<String>,
    ) -> Self {
        AppState {
            engine,
            grammars: Arc::new(structured::Grammars::new(tokenizer.clone(), eos)),
            tokenizer,
            model_name,
            eos,
            api_key,
            created: unix_time(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            cors_origins: Vec::new(),
        }
    }
}

pub(crate) fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Equal-time comparison, so the key cannot be guessed byte by byte from timings.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization` header of the Bearer scheme, whose name is
/// case-insensitive (RFC 7235).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        if request.uri().path() != "/health" {
            let header = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match header.and_then(bearer_token) {
                None => {
                    return ApiError::unauthorized(
                        "You didn't provide an API key. Send it in the Authorization header as `Bearer KEY`.",
                    )
                    .into_response()
                }
                Some(given) if !same_secret(given.as_bytes(), key.as_bytes()) => {
                    return ApiError::unauthorized("Incorrect API key provided.").into_response()
                }
                Some(_) => {}
            }
        }
    }
    next.run(request).await
}

/// Bounds the time a request body may take to arrive (see `read_json`).
async fn time_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request = request
        .map(|body| axum::body::Body::new(connections::TimedBody::new(body, state.body_timeout)));
    next.run(request).await
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The served model in OpenAI's `model` shape.
fn model_object(state: &AppState) -> serde_json::Value {
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "grok1-rs",
        // vLLM's field: clients (grok1 eval, lm-eval) fit prompts to it.
        "max_model_len": state.engine.config().context,
    })
}

async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

/// `GET /v1/models/{id}`; the id may hold slashes (`xai-org/grok-1`), which
/// the SDKs send unescaped.
async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if id == state.model_name {
        Ok(Json(model_object(&state)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics().render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(request.uri().path())
}

async fn method_not_allowed(request: Request) -> ApiError {
    let mut e = ApiError::invalid(
        format!(
            "Method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
        None,
    );
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}

/// Answers browsers' preflight requests and marks responses readable by the
/// given origins. It wraps authentication: a preflight carries no key.
fn cors(origins: &[HeaderValue]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}

/// The application: routes, authentication and OpenAI-shaped fallbacks.
pub fn router(state: AppState) -> Router {
    let cors = (!state.cors_origins.is_empty()).then(|| cors(&state.cors_origins));
    Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/tokenize", post(tokenizer_api::tokenize))
        .route("/detokenize", post(tokenizer_api::detokenize))
        .route("/tokenizer_info", get(tokenizer_api::tokenizer_info))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(middleware::from_fn_with_state(state.clone(), time_body))
        .layer(tower::util::option_layer(cors))
        .with_state(state)
}

/// How often a busy server logs its throughput.
const THROUGHPUT_INTERVAL: Duration = Duration::from_secs(10);

/// Tokens per second sampled between two readings, when any were.
fn throughput(before: &Load, now: &Load, elapsed: Duration) -> Option<f64> {
    let tokens = now.sampled_tokens.saturating_sub(before.sampled_tokens);
    (tokens > 0 && !elapsed.is_zero()).then(|| tokens as f64 / elapsed.as_secs_f64())
}

/// Logs the engine's throughput and load every interval in which it produced tokens.
async fn report_throughput(engine: EngineHandle, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    let mut before = (engine.metrics().load(), std::time::Instant::now());
    loop {
        ticks.tick().await;
        let now = (engine.metrics().load(), std::time::Instant::now());
        if let Some(rate) = throughput(&before.0, &now.0, now.1 - before.1) {
            let load = &now.0;
            tracing::info!(
                tokens_per_s = (rate * 10.0).round() / 10.0,
                running = load.running,
                waiting = load.waiting,
                kv_pages_used = load.kv_pages_used,
                kv_pages_total = load.kv_pages_total,
                "throughput"
            );
        }
        before = now;
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Serves until SIGINT/SIGTERM, then stops accepting, lets in-flight requests
/// run for up to `shutdown_grace`, cancels the rest and returns.
/// `on_ready` receives the bound address.
pub async fn serve(
    state: AppState,
    config: &ServerConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    serve_listener(listener, state, config, on_ready).await
}

/// [`serve`] on a listener bound already, from `config` (its host and port
/// left unread): `grok1 serve` under mpirun binds it before the ranks part,
/// so that a port in use is refused by every rank alike.
pub async fn serve_bound(
    listener: std::net::TcpListener,
    state: AppState,
    config: &ServerConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    serve_listener(listener, state, config, on_ready).await
}

async fn serve_listener(
    listener: tokio::net::TcpListener,
    state: AppState,
    config: &ServerConfig,
    on_ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    on_ready(listener.local_addr()?);
    let engine = state.engine.clone();
    let grace = config.shutdown_grace;
    let limits = config.limits.clone();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::warn!(
            grace_s = grace.as_secs(),
            "shutting down: finishing in-flight requests within the grace period, then cutting them short"
        );
        // The engine finishes or cancels every stream within the grace period,
        // which lets their connections close.
        tokio::task::spawn_blocking(move || {
            engine.shutdown(grace);
            let _ = stopped_tx.send(());
        });
    };
    let mut serving =
        tokio::spawn(async move { serve_on(listener, state, &limits, shutdown).await });
    tokio::select! {
        result = &mut serving => {
            return result.map_err(std::io::Error::other);
        }
        _ = stopped_rx => {}
    }
    // A connection that outlives the engine (a client that stopped reading) must
    // not hold the process: give up a few seconds after the engine has stopped.
    match tokio::time::timeout(Duration::from_secs(5), serving).await {
        Ok(result) => result.map_err(std::io::Error::other),
        Err(_) => Ok(()),
    }
}

/// Serves connections from `listener` within `limits` until `shutdown`
/// resolves, then lets open connections finish their requests and returns.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    mut state: AppState,
    limits: &ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    state.body_timeout = limits.body_timeout;
    let reporter = tokio::spawn(report_throughput(state.engine.clone(), THROUGHPUT_INTERVAL));
    connections::serve(listener, router(state), limits, shutdown).await;
    reporter.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sampled_tokens: u64) -> Load {
        Load {
            waiting: 0,
            running: 1,
            kv_pages_used: 3,
            kv_pages_total: 8,
            sampled_tokens,
        }
    }

    #[test]
    fn throughput_is_reported_only_when_tokens_were_produced() {
        let ten = Duration::from_secs(10);
        assert_eq!(throughput(&load(100), &load(350), ten), Some(25.0));
        assert_eq!(throughput(&load(100), &load(100), ten), None);
        assert_eq!(throughput(&load(100), &load(150), Duration::ZERO), None);
    }
}
