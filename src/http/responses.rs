//! Success responses that paperclip documents: 201 and 202 with a
//! `Location` header (paperclip's own `CreatedJson` sets none), and 200
//! text.

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Responder};
use paperclip::actix::OperationModifier;
use paperclip::v2::models::{DefaultOperationRaw, DefaultSchemaRaw, Either, Header, Response};
use paperclip::v2::schema::Apiv2Schema;
use serde::Serialize;

/// A resource in the body and its URL in `Location`, with status `CODE`.
pub struct Located<T, const CODE: u16> {
    pub location: String,
    pub body: T,
}

/// 201 Created: the new resource.
pub type Created<T> = Located<T, 201>;
/// 202 Accepted: the resource whose processing started (poll its URL).
pub type Accepted<T> = Located<T, 202>;

impl<T, const CODE: u16> Located<T, CODE> {
    fn status() -> StatusCode {
        StatusCode::from_u16(CODE).expect("a valid status code")
    }
}

impl<T: Serialize, const CODE: u16> Responder for Located<T, CODE> {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        HttpResponse::build(Self::status())
            .insert_header((actix_web::http::header::LOCATION, self.location))
            .json(self.body)
    }
}

impl<T: Apiv2Schema, const CODE: u16> Apiv2Schema for Located<T, CODE> {
    fn name() -> Option<String> {
        T::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

impl<T: Apiv2Schema, const CODE: u16> OperationModifier for Located<T, CODE> {
    fn update_response(op: &mut DefaultOperationRaw) {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert(
            "Location".to_owned(),
            Header {
                description: Some("URL of the resource".into()),
                data_type: Some(paperclip::v2::models::DataType::String),
                ..Default::default()
            },
        );
        let status = Self::status();
        op.responses.insert(
            status.as_str().into(),
            Either::Right(Response {
                description: status.canonical_reason().map(Into::into),
                schema: Some({
                    let mut def = T::schema_with_ref();
                    def.retain_ref();
                    def
                }),
                headers,
            }),
        );
    }
}

/// 200 with a `text/plain` body (the Prometheus exposition).
pub struct PlainText(pub String);

impl Responder for PlainText {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(self.0)
    }
}

impl Apiv2Schema for PlainText {}

impl OperationModifier for PlainText {
    fn update_response(op: &mut DefaultOperationRaw) {
        op.responses.insert(
            StatusCode::OK.as_str().into(),
            Either::Right(Response {
                description: Some("OK".into()),
                schema: Some(DefaultSchemaRaw {
                    data_type: Some(paperclip::v2::models::DataType::String),
                    ..Default::default()
                }),
                headers: Default::default(),
            }),
        );
    }
}
