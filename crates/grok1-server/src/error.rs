//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with the status code OpenAI uses for each kind.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use grok1::engine::SubmitError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (429 / 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    pub fn unsupported(param: &str, why: &str) -> Self {
        let mut e = Self::invalid(
            format!("`{param}` is not supported by this server: {why}"),
            Some(param),
        );
        e.code = Some("unsupported_parameter");
        e
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    pub fn not_found(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("Unknown endpoint {path}"),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The server is stopping; another may answer.
    pub fn shutting_down(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: Some(5),
        }
    }

    /// The error a refused submission maps to.
    pub fn from_submit(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::QueueFull { .. } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                kind: "rate_limit_error",
                param: None,
                code: Some("rate_limit_exceeded"),
                retry_after: Some(1),
            },
            SubmitError::KvCapacity { .. } | SubmitError::ShuttingDown => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
                kind: "server_error",
                param: None,
                code: None,
                retry_after: Some(5),
            },
            SubmitError::ContextLength { .. } => {
                let mut e = Self::invalid(message, Some("max_tokens"));
                e.code = Some("context_length_exceeded");
                e
            }
            SubmitError::TooManyRequests { .. } => Self::invalid(message, Some("n")),
            SubmitError::TokenOutOfRange { .. } | SubmitError::EmptyPrompt => {
                Self::invalid(message, Some("prompt"))
            }
            SubmitError::Sampling(_) => Self::invalid(message, None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Every answer that is not a completion goes through here.
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), cause = %self.message, "request failed");
        } else {
            tracing::warn!(status = self.status.as_u16(), reason = %self.message, param = self.param.as_deref(), "request refused");
        }
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
