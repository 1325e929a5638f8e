//! What every request leaves behind: its id (always generated, returned in
//! `X-Request-Id` and kept in the request for the handlers, with the
//! client's own `X-Request-Id` or `traceparent` trace id beside it), one
//! access log line carrying both and, for a request authenticated by a
//! token, the token's subject (`sub`), and its duration in the request
//! histogram by method, route template and status class.

use crate::auth::Caller;
use crate::metrics::{status_class, HttpMetrics, RouteLabels};
use crate::request_id::{self, RequestId};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use paperclip::v2::schema::Apiv2Schema;
use std::time::Instant;

/// Log target of the access lines (`RUST_LOG=ordersys::access=warn`
/// silences them).
pub const ACCESS_TARGET: &str = "ordersys::access";

/// Gives the request its id; call first, before anything can answer.
pub fn begin(req: &ServiceRequest) -> RequestId {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let id = RequestId::for_request(header(request_id::HEADER), header(request_id::TRACEPARENT));
    req.extensions_mut().insert(id.clone());
    id
}

/// Stamps the response with the id, logs the request, records its duration.
pub fn finish<B>(
    res: &mut ServiceResponse<B>,
    id: &RequestId,
    started: Instant,
    metrics: &HttpMetrics,
) {
    let elapsed = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut()
            .insert(HeaderName::from_static(request_id::HEADER), value);
    }
    let req = res.request();
    let status = res.status().as_u16();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    // Not the probes and scrapes: Prometheus and health checks would
    // fill the log.
    if !matches!(
        req.path(),
        "/healthz" | "/readyz" | "/startedz" | "/metrics"
    ) {
        let method = req.method();
        let path = req.path();
        let millis = elapsed.as_secs_f64() * 1000.0;
        // Who did it: the subject of the token the auth check accepted (it
        // leaves the caller in the request), escaped so that a subject
        // cannot break the line. Requests without one carry no `sub`; the
        // client's own id, when it sent one, is `client_request_id`.
        let extensions = req.extensions();
        let sub = extensions.get::<Caller>().and_then(Caller::subject);
        match (sub, id.client()) {
            (Some(sub), Some(client)) => log::info!(
                target: ACCESS_TARGET,
                request_id = id.as_str(), client_request_id = client, sub:% = sub.escape_debug();
                "{method} {path} {status} {millis:.3}ms"
            ),
            (Some(sub), None) => log::info!(
                target: ACCESS_TARGET,
                request_id = id.as_str(), sub:% = sub.escape_debug();
                "{method} {path} {status} {millis:.3}ms"
            ),
            (None, Some(client)) => log::info!(
                target: ACCESS_TARGET,
                request_id = id.as_str(), client_request_id = client;
                "{method} {path} {status} {millis:.3}ms"
            ),
            (None, None) => log::info!(
                target: ACCESS_TARGET,
                request_id = id.as_str();
                "{method} {path} {status} {millis:.3}ms"
            ),
        }
    }
    metrics.record(
        RouteLabels {
            method: method_label(req.method()),
            route,
            status: status_class(status),
        },
        elapsed,
    );
}

/// The method as a label: the standard ones, else `other` (a client may
/// send any token as a method; each would be a series of its own).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
    KNOWN
        .into_iter()
        .find(|known| method.as_str() == *known)
        .unwrap_or("other")
}

/// The request's id, for handlers whose changes carry it on.
impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<RequestId, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req.extensions().get::<RequestId>().cloned();
        std::future::ready(Ok(id.unwrap_or_else(RequestId::generate)))
    }
}

impl Apiv2Schema for RequestId {}
impl paperclip::actix::OperationModifier for RequestId {}
