//! Every HTTP error and its status code, in one place.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An API error; rendered as `{"error": "<code>", "message": "…"}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No live drone / no usage entry with that id.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// Kind of thing looked up.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The endpoint is disabled (no admin token configured).
    #[error("admin endpoint disabled: no admin token configured")]
    Disabled,
    /// Query string invalid.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A configured limit on concurrent requests of this kind is reached.
    #[error("too many {0} open")]
    TooMany(&'static str),
    /// A backing store (the usage database) could not answer.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Disabled => (StatusCode::NOT_FOUND, "disabled"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Json(Body {
            error: code,
            message: self.to_string(),
        });
        let mut resp = (status, body).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
