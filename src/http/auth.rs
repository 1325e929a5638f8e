//! Authentication at the HTTP boundary: one middleware checks the bearer
//! token of every request against the scope its method needs
//! ([`ApiScopes`]) — every path but the [`OpenPaths`] — and leaves the
//! [`Caller`] in the request, where a handler with a finer rule (a stock
//! correction) reads it. Paths are judged as the router sees them
//! (percent-decoded), never as the client spelled them.

use super::error::ApiError;
use crate::auth::{ApiScopes, Authenticator, Caller, Scope};
use actix_web::dev::{Payload, ServiceRequest};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use paperclip::v2::schema::Apiv2Schema;

/// The paths every mode serves to anyone: health, metrics, the docs.
#[derive(Debug, Clone)]
pub struct OpenPaths {
    pub docs: String,
    pub openapi: String,
}

impl OpenPaths {
    pub fn contains(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz" | "/startedz" | "/metrics")
            || path == self.openapi
            || path
                .strip_prefix(self.docs.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Authenticates `req` and checks the scope its route needs; on success the
/// caller is stored in the request's extensions.
pub fn check(
    auth: &Authenticator,
    scopes: Option<&ApiScopes>,
    open: &OpenPaths,
    req: &ServiceRequest,
) -> Result<(), ApiError> {
    // The router's path: percent-decoded as it matches routes (`/%70roduits`
    // is `/produits` to it).
    let path = req.match_info().as_str();
    let required = scopes.and_then(|s| {
        s.required(
            req.method().as_str(),
            open.contains(path),
            auth.protect_reads(),
        )
    });
    let Some(required) = required else {
        return Ok(());
    };
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = auth.authenticate(header).map_err(ApiError::Unauthorized)?;
    require(&caller, required)?;
    req.extensions_mut().insert(caller);
    Ok(())
}

/// 403 unless `caller` holds `scope`.
pub fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.may(scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(scope))
    }
}

/// The authenticated caller of a handler on an API path.
impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Only a handler on an open path (or a read) has no caller: a bug,
        // and failing closed is the safe answer.
        std::future::ready(req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "no authenticated caller on {} (a handler that needs one on an unguarded route)",
                req.path()
            ))
        }))
    }
}

impl Apiv2Schema for Caller {}
impl paperclip::actix::OperationModifier for Caller {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_metrics_and_the_docs_are_open() {
        let open = OpenPaths {
            docs: "/orders/docs".into(),
            openapi: "/orders/openapi.json".into(),
        };
        for path in [
            "/healthz",
            "/readyz",
            "/startedz",
            "/metrics",
            "/orders/openapi.json",
            "/orders/docs",
            "/orders/docs/swagger-ui.css",
        ] {
            assert!(open.contains(path), "{path}");
        }
        for path in [
            "/commandes",
            "/orders/docsx",
            "/docs",
            "/healthz/",
            "/",
            "/api/v1/commandes",
        ] {
            assert!(!open.contains(path), "{path}");
        }
    }
}
