//! The one error type of the HTTP boundary, mapped once to
//! `application/problem+json` (RFC 9457) with the statuses of docs/contract.md §3.
//!
//! Policy: 4xx answers name what the client must change (`errors` lists
//! each field for 400/422); 503 means "retry later" (database down, pool
//! exhausted); 500 is only for bugs, and its cause is logged here, once,
//! with the full chain, while the client sees a generic message.

use crate::auth::{AuthFailure, Scope};
use crate::db::Failure;
use crate::domain::FieldError;
use crate::orders::model::OrderError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use paperclip::actix::Apiv2Schema;
use paperclip::v2::models::{DefaultOperationRaw, DefaultSchemaRaw, Either, Response};
use paperclip::v2::schema::Apiv2Errors;
use serde::Serialize;
use std::collections::BTreeMap;

/// The body of every error answer.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// For validation problems (400, 422): every offending field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 401: no valid bearer token.
    #[error("{0}")]
    Unauthorized(AuthFailure),
    /// 403: a valid token without the scope the request needs.
    #[error("this request needs the scope {0}")]
    Forbidden(Scope),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body was not received within {0:?}")]
    RequestTimeout(std::time::Duration),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Retry later; the text may be shown to the client.
    #[error("{0}")]
    Unavailable(String),
    /// The database connection broke under the request: retry later.
    #[error("the database is unavailable; retry later")]
    ConnectionLost,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(field, message);
        ApiError::BadRequest {
            detail: format!("invalid value for {}: {}", error.field, error.message),
            errors: vec![error],
        }
    }

    /// 422 for a request whose fields are well-formed but break rules.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::Unprocessable { detail, errors }
    }

    pub fn not_found(what: &str, id: i64) -> Self {
        ApiError::NotFound(format!("{what} {id} does not exist"))
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(error.into())
    }

    /// The `WWW-Authenticate` challenge of a 401 or 403 (RFC 6750 §3): no
    /// error code when no token was sent, and nothing about which part of
    /// a refused token was wrong.
    fn challenge(&self) -> Option<String> {
        const REALM: &str = r#"Bearer realm="ordersys""#;
        match self {
            ApiError::Unauthorized(AuthFailure::Missing) => Some(REALM.to_owned()),
            ApiError::Unauthorized(AuthFailure::Invalid) => Some(format!(
                r#"{REALM}, error="invalid_token", error_description="the access token is invalid or expired""#
            )),
            ApiError::Forbidden(scope) => Some(format!(
                r#"{REALM}, error="insufficient_scope", scope="{scope}""#
            )),
            _ => None,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => ("bad-request", "Malformed request"),
            ApiError::Unauthorized(_) => ("unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            ApiError::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::Unprocessable { .. } => ("validation", "Validation failed"),
            ApiError::Unavailable(_) | ApiError::ConnectionLost => {
                ("unavailable", "Service unavailable")
            }
            ApiError::Internal(_) => ("internal", "Internal error"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (slug, title) = self.slug_and_title();
        let errors = match self {
            ApiError::BadRequest { errors, .. } | ApiError::Unprocessable { errors, .. } => {
                errors.clone()
            }
            _ => Vec::new(),
        };
        Problem {
            type_: format!("urn:ordersys:problem:{slug}"),
            title: title.to_owned(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            errors,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::ConnectionLost => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(cause) => log::error!("internal error: {cause:#}"),
            ApiError::Unavailable(detail) => log::debug!("503: {detail}"),
            other => log::debug!("{}: {other}", other.status_code()),
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unavailable(_) | ApiError::ConnectionLost = self {
            response.insert_header(("Retry-After", "1"));
        }
        if let Some(challenge) = self.challenge() {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        response
            .content_type("application/problem+json")
            .json(self.problem())
    }
}

/// Database errors: what libpq says stays in the log; the client learns
/// only whether to retry.
impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        match crate::db::classify(&error) {
            Failure::Connection => {
                log::debug!("database connection lost: {error}");
                ApiError::ConnectionLost
            }
            Failure::Transient => {
                log::warn!("a query gave way, the client is told to retry: {error}");
                ApiError::Unavailable("the database is busy; retry later".into())
            }
            Failure::Refused => {
                ApiError::Internal(anyhow::Error::new(error).context("database query failed"))
            }
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::NotFound(what, id) => ApiError::not_found(what, id),
            OrderError::Conflict(detail) => ApiError::Conflict(detail),
            OrderError::Invalid(errors) => ApiError::invalid(errors),
            OrderError::Database(e) => ApiError::from(e),
        }
    }
}

impl From<crate::db::DbUnavailable> for ApiError {
    fn from(error: crate::db::DbUnavailable) -> Self {
        log::debug!("503: {error}");
        ApiError::Unavailable(error.reason.to_owned())
    }
}

impl crate::db::DbFailure for ApiError {
    fn is_connection_error(&self) -> bool {
        matches!(self, ApiError::ConnectionLost)
    }
}

/// The error answers every operation may give, for the OpenAPI document.
const DOCUMENTED: &[(u16, &str)] = &[
    (400, "Malformed JSON, or a field of the wrong type"),
    (401, "No bearer token, or one that is invalid or expired"),
    (403, "The bearer token lacks the scope this operation needs"),
    (404, "Unknown id"),
    (409, "Conflicts with the current state"),
    (413, "Request body too large"),
    (415, "Content-Type is not application/json"),
    (422, "Well-formed request that breaks a rule"),
    (503, "Database unavailable; retry later"),
];

impl Apiv2Errors for ApiError {
    const ERROR_MAP: &'static [(u16, &'static str)] = DOCUMENTED;

    fn update_error_definitions(op: &mut DefaultOperationRaw) {
        for (code, description) in DOCUMENTED {
            op.responses.insert(
                code.to_string(),
                Either::Right(Response {
                    description: Some((*description).to_owned()),
                    schema: Some({
                        let mut schema =
                            <Problem as paperclip::v2::schema::Apiv2Schema>::schema_with_ref();
                        schema.retain_ref();
                        schema
                    }),
                    ..Default::default()
                }),
            );
        }
    }

    fn update_definitions(map: &mut BTreeMap<String, DefaultSchemaRaw>) {
        use paperclip::v2::schema::Apiv2Schema as _;
        for mut schema in [Problem::raw_schema(), FieldError::raw_schema()] {
            if let Some(name) = schema.name.take() {
                schema.remove_refs();
                map.insert(name, schema);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body(error: ApiError) -> (u16, serde_json::Value, String) {
        let response = error.error_response();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = response.into_body().try_into_bytes().unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap(),
            content_type,
        )
    }

    #[test]
    fn every_variant_maps_to_its_status_and_problem_body() {
        let cases = [
            (
                ApiError::bad_field("prix", "expected a number"),
                400,
                "bad-request",
            ),
            (ApiError::not_found("produit", 7), 404, "not-found"),
            (
                ApiError::Unauthorized(AuthFailure::Missing),
                401,
                "unauthorized",
            ),
            (ApiError::Forbidden(Scope::StockCorrect), 403, "forbidden"),
            (
                ApiError::MethodNotAllowed("no".into()),
                405,
                "method-not-allowed",
            ),
            (ApiError::Conflict("busy".into()), 409, "conflict"),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "payload-too-large",
            ),
            (
                ApiError::UnsupportedMediaType("xml".into()),
                415,
                "unsupported-media-type",
            ),
            (
                ApiError::invalid(vec![FieldError::new("nom", "empty")]),
                422,
                "validation",
            ),
            (ApiError::Unavailable("down".into()), 503, "unavailable"),
            (
                ApiError::internal(anyhow::anyhow!("secret detail")),
                500,
                "internal",
            ),
        ];
        for (error, status, slug) in cases {
            let (got, json, content_type) = body(error);
            assert_eq!(got, status);
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(json["status"], status);
            assert_eq!(json["type"], format!("urn:ordersys:problem:{slug}"));
            assert!(json["title"].is_string() && json["detail"].is_string());
        }
    }

    #[test]
    fn validation_errors_list_fields_and_internal_errors_hide_causes() {
        let (_, json, _) = body(ApiError::invalid(vec![
            FieldError::new("nom", "must not be empty"),
            FieldError::new("prix", "must not be negative"),
        ]));
        assert_eq!(json["errors"][1]["field"], "prix");
        assert_eq!(
            json["detail"],
            "nom: must not be empty; prix: must not be negative"
        );
        let (_, json, _) = body(ApiError::internal(anyhow::anyhow!("password=hunter2")));
        assert!(!json.to_string().contains("hunter2"));
        assert!(json.get("errors").is_none());
    }
}
