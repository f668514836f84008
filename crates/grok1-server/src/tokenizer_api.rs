//! vLLM's tokenizer endpoints (`/tokenize`, `/detokenize`, `/tokenizer_info`):
//! clients that count or build prompts in tokens (lm-evaluation-harness's
//! `local-completions` with its "remote" tokenizer, grok1 eval) use the
//! server's own tokenizer instead of guessing one.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::openai::{parse, read_json};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
struct TokenizeRequest {
    prompt: String,
    #[serde(default)]
    add_special_tokens: bool,
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i64>,
}

fn piece(state: &AppState, id: Option<u32>) -> Option<String> {
    id.and_then(|i| state.tokenizer.id_to_piece(i))
        .map(str::to_string)
}

pub async fn tokenizer_info(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "tokenizer_class": "SentencePiece",
        "eos_token": piece(&state, Some(state.eos)),
        "bos_token": piece(&state, state.tokenizer.bos_id()),
        "pad_token": piece(&state, state.tokenizer.pad_id()),
        "model_max_length": state.engine.config().context,
        "vocab_size": state.engine.vocab(),
    }))
}

pub async fn tokenize(State(state): State<AppState>, request: Request) -> Response {
    let result = async {
        let value = read_json(request, &[&["prompt", "add_special_tokens", "model"]]).await?;
        let req: TokenizeRequest = parse(&value)?;
        let mut tokens = Vec::new();
        // Grok-1 itself is run without BOS; asked for special tokens, BOS leads.
        if req.add_special_tokens {
            tokens.extend(state.tokenizer.bos_id());
        }
        tokens.extend(state.tokenizer.encode(&req.prompt));
        Ok::<_, ApiError>(Json(json!({
            "tokens": tokens,
            "count": tokens.len(),
            "max_model_len": state.engine.config().context,
        })))
    }
    .await;
    match result {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn detokenize(State(state): State<AppState>, request: Request) -> Response {
    let result = async {
        let value = read_json(request, &[&["tokens", "model"]]).await?;
        let req: DetokenizeRequest = parse(&value)?;
        let vocab = state.tokenizer.vocab_size();
        let mut ids = Vec::with_capacity(req.tokens.len());
        for (i, &t) in req.tokens.iter().enumerate() {
            if t < 0 || t as usize >= vocab {
                return Err(ApiError::invalid(
                    format!(
                        "token id {t} at position {i} is outside the vocabulary (ids 0..{vocab})"
                    ),
                    Some("tokens"),
                ));
            }
            ids.push(t as u32);
        }
        let text = state
            .tokenizer
            .decode(&ids)
            .map_err(|e| ApiError::invalid(format!("cannot decode: {e}"), Some("tokens")))?;
        Ok(Json(json!({ "prompt": text })))
    }
    .await;
    match result {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    }
}
