//! The API's errors: one JSON shape, `{ "error": "<code>", "message": "<for people>" }`, with
//! the HTTP status that says what the caller can do about it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use helix_actors::client::ClientError;
use helix_store::StoreError;
use serde::Serialize;

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code for programs: `invalid`, `unauthorized`, `not_found`, `conflict`,
    /// `payload_too_large`, `unavailable`, `internal`.
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
}

/// The body of an error answer.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// 400: the request is malformed; `message` names the field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid", message: message.into() }
    }

    /// 401: a mutating request without the right bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: "unauthorized", message: message.into() }
    }

    /// 404: the named thing does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    /// 409: the request conflicts with the state of the thing.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self { status: StatusCode::CONFLICT, code: "conflict", message: message.into() }
    }

    /// 413: the body is over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!("the request body is over {limit} bytes (http.max_body_bytes)"),
        }
    }

    /// 503: the store cannot be reached now; retrying later may succeed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }

    /// 500: anything else.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: message.into() }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody { error: self.code, message: &self.message })
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::NotFound(_) => Self::not_found(err.to_string()),
            StoreError::Invalid(_) => Self::invalid(err.to_string()),
            StoreError::Conflict(_) | StoreError::Fenced(_) => Self::conflict(err.to_string()),
            StoreError::Unavailable(_) | StoreError::Transient(_) => Self::unavailable(err.to_string()),
            _ => Self::internal(err.to_string()),
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Store(store) => store.into(),
            ClientError::Invalid(e) => Self::invalid(e.to_string()),
            ClientError::Webhook(e) => Self::invalid(format!("url: {e}")),
        }
    }
}
