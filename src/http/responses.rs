//! Success responses that paperclip documents: 201 with a `Location`
//! header (paperclip's own `CreatedJson` sets none), and 200 JSON.

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Responder};
use paperclip::actix::OperationModifier;
use paperclip::v2::models::{DefaultOperationRaw, DefaultSchemaRaw, Either, Header, Response};
use paperclip::v2::schema::Apiv2Schema;
use serde::Serialize;

/// 201 Created, the new resource in the body and its URL in `Location`.
pub struct Created<T> {
    pub location: String,
    pub body: T,
}

impl<T: Serialize> Responder for Created<T> {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        HttpResponse::Created()
            .insert_header((actix_web::http::header::LOCATION, self.location))
            .json(self.body)
    }
}

impl<T: Apiv2Schema> Apiv2Schema for Created<T> {
    fn name() -> Option<String> {
        T::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

impl<T: Apiv2Schema> OperationModifier for Created<T> {
    fn update_response(op: &mut DefaultOperationRaw) {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert(
            "Location".to_owned(),
            Header {
                description: Some("URL of the created resource".into()),
                data_type: Some(paperclip::v2::models::DataType::String),
                ..Default::default()
            },
        );
        op.responses.insert(
            StatusCode::CREATED.as_str().into(),
            Either::Right(Response {
                description: Some("Created".into()),
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
