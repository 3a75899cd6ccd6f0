//! Errors as RFC 9457 `application/problem+json`: one stable `type` URI per kind of problem, a
//! title, the status, a detail and, for validation, one entry per offending field. Also maps
//! axum's own rejections (bad JSON, wrong types, missing fields, body too large, bad paths and
//! queries) so that bad input is always a 4xx problem, never a 500.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::stores::StoreError;

/// Base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://boxoffice.dev/problems/";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, as named in the request (`number_slot`, `email`, ...).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    MalformedBody(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidPageToken(String),
    /// A query parameter the operation does not take (or one given twice over, like two page
    /// tokens). `errors` names it.
    #[error("{detail}")]
    BadParameter {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// A signed delivery (the payment provider's webhook) whose signature header is missing,
    /// malformed, stale or wrong. The detail says which, never what was expected.
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: Duration,
    },
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A validation failure of a single field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Validation {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    }

    /// A validation failure of several fields (`errors` must not be empty).
    pub fn fields(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::Validation { detail, errors }
    }

    /// A query parameter that is not accepted (400).
    pub fn parameter(name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::BadParameter {
            detail: format!("{name}: {message}"),
            errors: vec![FieldError::new(name, message)],
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        ApiError::Unavailable {
            detail: detail.into(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// `(status, type slug, title)`: one row a variant.
    #[rustfmt::skip]
    fn describe(&self) -> (StatusCode, &'static str, &'static str) {
        use {ApiError as E, StatusCode as S};
        match self {
            E::Validation { .. } => (S::UNPROCESSABLE_ENTITY, "validation", "The request is not valid"),
            E::MalformedBody(_) => (S::BAD_REQUEST, "malformed-body", "The request body is not valid JSON"),
            E::BadRequest(_) => (S::BAD_REQUEST, "bad-request", "Bad request"),
            E::InvalidPageToken(_) => (S::BAD_REQUEST, "invalid-page-token", "The pagination token is not valid"),
            E::BadParameter { .. } => (S::BAD_REQUEST, "bad-parameter", "A query parameter is not accepted here"),
            E::InvalidSignature(_) => (S::BAD_REQUEST, "invalid-signature", "The signature is not valid"),
            E::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", "Authentication required"),
            E::Forbidden(_) => (S::FORBIDDEN, "forbidden", "Not allowed"),
            E::NotFound(_) => (S::NOT_FOUND, "not-found", "Not found"),
            E::MethodNotAllowed(_) => (S::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            E::Conflict(_) => (S::CONFLICT, "conflict", "Conflict"),
            E::Unprocessable(_) => (S::UNPROCESSABLE_ENTITY, "unprocessable", "The request cannot be carried out"),
            E::PayloadTooLarge(_) => (S::PAYLOAD_TOO_LARGE, "payload-too-large", "The request body is too large"),
            E::UnsupportedMediaType(_) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "The request body must be JSON"),
            E::TooManyRequests { .. } => (S::TOO_MANY_REQUESTS, "too-many-requests", "Too many attempts"),
            E::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "unavailable", "Service temporarily unavailable"),
            E::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.describe().0
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.describe();
        Problem {
            kind: format!("{PROBLEM_BASE}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match self {
                ApiError::Validation { errors, .. } | ApiError::BadParameter { errors, .. } => {
                    errors.clone()
                }
                _ => Vec::new(),
            },
        }
    }
}

/// A problem response with the right content type.
pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut response = problem_response(status, &self.problem());
        match &self {
            ApiError::TooManyRequests { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => {
                let secs = retry_after.as_secs().max(1);
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"boxoffice\", error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "store call failed");
        ApiError::unavailable("the data store is unavailable; retry shortly")
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => {
                let field = field_of_serde_message(&text);
                ApiError::Validation {
                    detail: text.clone(),
                    errors: vec![FieldError::new(&field, text)],
                }
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::MalformedBody(text),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a `Content-Type: application/json` body".to_owned(),
            ),
            JsonRejection::BytesRejection(_) => {
                if rejection_status_is_too_large(&text) {
                    ApiError::PayloadTooLarge(format!(
                        "the body exceeds the limit of {} bytes",
                        crate::BODY_LIMIT_BYTES
                    ))
                } else {
                    ApiError::BadRequest(text)
                }
            }
            _ => ApiError::BadRequest(text),
        }
    }
}

fn rejection_status_is_too_large(text: &str) -> bool {
    text.contains("length limit") || text.contains("too large")
}

/// serde_path_to_error's messages start with the path (`number_slot: invalid type ...`), or
/// say `missing field `x``.
fn field_of_serde_message(text: &str) -> String {
    let body = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text);
    if let Some(rest) = body.split("missing field `").nth(1)
        && let Some(name) = rest.split('`').next()
    {
        return name.to_owned();
    }
    if let Some(rest) = body.split("unknown field `").nth(1)
        && let Some(name) = rest.split('`').next()
    {
        return name.to_owned();
    }
    match body.split_once(": ") {
        Some((path, _)) if !path.contains(' ') && !path.is_empty() && path != "." => {
            path.to_owned()
        }
        _ => "body".to_owned(),
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let field = text
            .split("Failed to deserialize query string: ")
            .nth(1)
            .map(field_of_serde_message)
            .unwrap_or_else(|| "query".to_owned());
        ApiError::Validation {
            detail: text.clone(),
            errors: vec![FieldError::new(&field, text)],
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_out_of_serde_messages() {
        assert_eq!(
            field_of_serde_message(
                "Failed to deserialize the JSON body into the target type: missing field `event_id` at line 1 column 2"
            ),
            "event_id"
        );
        assert_eq!(
            field_of_serde_message(
                "Failed to deserialize the JSON body into the target type: number_slot: invalid type: string \"x\", expected i32 at line 1 column 20"
            ),
            "number_slot"
        );
        assert_eq!(field_of_serde_message("something else entirely"), "body");
    }

    #[test]
    fn problems_carry_a_stable_type_and_status() {
        let problem = ApiError::field("email", "is not an email address").problem();
        assert_eq!(problem.kind, "https://boxoffice.dev/problems/validation");
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors.len(), 1);
        assert_eq!(ApiError::NotFound("x".into()).problem().status, 404);
    }
}
