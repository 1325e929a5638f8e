//! Request extractors whose every failure is a problem+json answer that
//! names the field: JSON bodies (415 wrong content type, 413 too large, 400
//! malformed or mistyped), query strings (400) and path segments (400).
//!
//! actix's own `Json`/`Query` say only "Json deserialize error"; these use
//! `serde_path_to_error` so the client learns which field is wrong, and they
//! describe themselves to paperclip like the originals do.

use super::error::ApiError;
use crate::domain::FieldError;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use paperclip::actix::OperationModifier;
use paperclip::v2::models::{
    DefaultOperationRaw, DefaultSchemaRaw, Either, Parameter, ParameterIn,
};
use paperclip::v2::schema::Apiv2Schema;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// The largest accepted body (`http.max_body_bytes`) and how long a client
/// may take to send it (`http.body_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
    pub timeout: std::time::Duration,
}

/// A JSON request body, parsed into `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for ApiJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type = check_content_type(req);
        let body = read_body(req, payload);
        Box::pin(async move {
            content_type?;
            parse_json(&body.await?).map(ApiJson)
        })
    }
}

/// Reads a request's whole body, within `http.max_body_bytes` (413) and
/// `http.body_timeout_ms` (408).
fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
) -> LocalBoxFuture<'static, Result<Vec<u8>, ApiError>> {
    let BodyLimit {
        max_bytes: limit,
        timeout,
    } = req.app_data::<BodyLimit>().copied().unwrap_or(BodyLimit {
        max_bytes: 65_536,
        timeout: std::time::Duration::from_secs(10),
    });
    let declared_length = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut payload = payload.take();
    Box::pin(async move {
        if declared_length.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        // Grown as the body arrives, never sized from what the client
        // declares.
        let read = async {
            let mut body = Vec::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::bad_field("body", format!("could not read the body: {e}"))
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ApiError::RequestTimeout(timeout))?
    })
}

/// The body of a route that takes none, read and ignored. Answering before
/// a body sent anyway has arrived makes the server close the connection
/// with unread bytes in it, and the kernel then resets it: a proxy in
/// front (Traefik) can lose the answer already on its way, so the client
/// sees a broken stream instead of its 202 or 204. Within the same limits
/// as a JSON body.
pub struct NoBody;

impl FromRequest for NoBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_body(req, payload);
        Box::pin(async move { body.await.map(|_| NoBody) })
    }
}

impl Apiv2Schema for NoBody {}
impl OperationModifier for NoBody {}

fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    match req.mime_type() {
        Ok(Some(mime))
            if mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json")) =>
        {
            Ok(())
        }
        Ok(Some(mime)) => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json, got {mime}"
        ))),
        Ok(None) => Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json, got none".into(),
        )),
        Err(_) => Err(ApiError::UnsupportedMediaType(
            "Content-Type header is not a valid media type".into(),
        )),
    }
}

/// Parses a JSON object, naming the offending field on failure. (serde
/// would also accept an array for a struct, field by position; no client
/// means that.)
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(ApiError::BadRequest {
                detail: "malformed JSON: the body is empty".into(),
                errors: Vec::new(),
            })
        }
        Some(_) => {
            return Err(ApiError::BadRequest {
                detail: "the body must be a JSON object".into(),
                errors: vec![FieldError::new("body", "must be a JSON object")],
            })
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = without_position(&inner.to_string());
        if inner.is_data() && path != "." {
            ApiError::bad_field(path, message)
        } else if inner.is_data() {
            ApiError::BadRequest {
                detail: format!("the body does not have the expected shape: {message}"),
                errors: vec![FieldError::new("body", message)],
            }
        } else {
            ApiError::BadRequest {
                detail: format!("malformed JSON: {inner}"),
                errors: Vec::new(),
            }
        }
    })?;
    deserializer.end().map_err(|e| ApiError::BadRequest {
        detail: format!("malformed JSON: {e}"),
        errors: Vec::new(),
    })?;
    Ok(value)
}

/// serde_json appends " at line 1 column 12"; a field name says more.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

impl<T: Apiv2Schema> Apiv2Schema for ApiJson<T> {
    fn name() -> Option<String> {
        T::name()
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

impl<T: Apiv2Schema> OperationModifier for ApiJson<T> {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        op.parameters.push(Either::Right(Parameter {
            in_: ParameterIn::Body,
            name: "body".into(),
            required: true,
            schema: Some({
                let mut def = T::schema_with_ref();
                def.retain_ref();
                def
            }),
            ..Default::default()
        }));
    }
}

/// A query string, parsed into `T`.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequest for ApiQuery<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let pairs = url::form_urlencoded::parse(req.query_string().as_bytes());
        let deserializer = serde_urlencoded_deserializer(pairs);
        std::future::ready(
            serde_path_to_error::deserialize(deserializer)
                .map(ApiQuery)
                .map_err(|e| {
                    let field = e.path().to_string();
                    ApiError::bad_field(field, e.into_inner().to_string())
                }),
        )
    }
}

/// A self-describing deserializer over query pairs: every value is text,
/// numbers are parsed on demand, so `?limit=abc` fails on `limit`.
fn serde_urlencoded_deserializer(
    pairs: url::form_urlencoded::Parse<'_>,
) -> serde::de::value::MapDeserializer<
    '_,
    impl Iterator<Item = (String, QueryValue)> + '_,
    serde::de::value::Error,
> {
    serde::de::value::MapDeserializer::new(
        pairs.map(|(k, v)| (k.into_owned(), QueryValue(v.into_owned()))),
    )
}

/// One query value: text that deserializes into numbers when asked to.
struct QueryValue(String);

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for QueryValue {
    type Deserializer = QueryValue;

    fn into_deserializer(self) -> QueryValue {
        self
    }
}

macro_rules! parse_number {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {$(
        fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self.0.trim().parse::<$ty>() {
                Ok(n) => visitor.$visit(n),
                Err(_) => Err(serde::de::Error::custom(format!(
                    "expected an integer in the range of {}, got {:?}", stringify!($ty), self.0
                ))),
            }
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for QueryValue {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_string(self.0)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    parse_number! {
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i128 u8 u16 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<T: Apiv2Schema> Apiv2Schema for ApiQuery<T> {}

impl<T: Apiv2Schema> OperationModifier for ApiQuery<T> {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        let def = T::raw_schema();
        for (name, schema) in def.properties {
            op.parameters.push(Either::Right(Parameter {
                in_: ParameterIn::Query,
                required: def.required.contains(&name),
                data_type: schema.data_type,
                format: schema.format.clone(),
                description: schema.description.clone(),
                minimum: schema.minimum,
                maximum: schema.maximum,
                name,
                ..Default::default()
            }));
        }
    }

    fn update_definitions(_: &mut BTreeMap<String, DefaultSchemaRaw>) {}
}

/// actix's path extractor error, as a 400 naming the path parameter.
pub fn path_error(err: actix_web::error::PathError, req: &HttpRequest) -> actix_web::Error {
    let field = req
        .match_info()
        .iter()
        .map(|(name, _)| name.to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let message = match &err {
        actix_web::error::PathError::Deserialize(inner) => inner.to_string(),
        other => other.to_string(),
    };
    ApiError::bad_field(field, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[allow(dead_code)]
        nom: String,
        #[allow(dead_code)]
        quantite: i32,
    }

    fn field_of(err: ApiError) -> (u16, Vec<String>) {
        let status = actix_web::ResponseError::status_code(&err).as_u16();
        let fields = err.problem().errors.into_iter().map(|e| e.field).collect();
        (status, fields)
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json::<Body>(br#"{"nom": "a", "quantite": "x"}"#).unwrap_err();
        assert_eq!(field_of(err), (400, vec!["quantite".to_owned()]));
        let err = parse_json::<Body>(br#"{"nom": "a", "#).unwrap_err();
        assert_eq!(field_of(err), (400, vec![]));
        let err = parse_json::<Body>(br#"[1]"#).unwrap_err();
        assert_eq!(field_of(err), (400, vec!["body".to_owned()]));
        let err = parse_json::<Body>(br#"{"nom": "a", "quantite": 1} trailing"#).unwrap_err();
        assert_eq!(field_of(err).0, 400);
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Page {
        skip: Option<i64>,
        limit: Option<i64>,
    }

    fn query(q: &str) -> Result<Page, ApiError> {
        let req = actix_web::test::TestRequest::with_uri(&format!("/x?{q}")).to_http_request();
        ApiQuery::<Page>::from_request(&req, &mut Payload::None)
            .into_inner()
            .map(|q| q.0)
    }

    #[test]
    fn query_values_parse_and_errors_name_the_parameter() {
        assert_eq!(
            query("skip=5&limit=10").unwrap(),
            Page {
                skip: Some(5),
                limit: Some(10)
            }
        );
        assert_eq!(
            query("").unwrap(),
            Page {
                skip: None,
                limit: None
            }
        );
        let err = query("skip=1&limit=abc").unwrap_err();
        assert_eq!(field_of(err), (400, vec!["limit".to_owned()]));
    }
}
