//! Authentication at the HTTP boundary: one middleware checks the bearer
//! token of every request to an API path against the scope its method
//! needs ([`ApiScopes`]) and leaves the [`Caller`] in the request, where a
//! handler with a finer rule (a stock correction) reads it.

use super::error::ApiError;
use crate::auth::{ApiScopes, Authenticator, Caller, Scope};
use actix_web::dev::{Payload, ServiceRequest};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use paperclip::v2::schema::Apiv2Schema;

/// Authenticates `req` and checks the scope its route needs; on success the
/// caller is stored in the request's extensions.
pub fn check(
    auth: &Authenticator,
    scopes: Option<&ApiScopes>,
    req: &ServiceRequest,
) -> Result<(), ApiError> {
    let required =
        scopes.and_then(|s| s.required(req.method().as_str(), req.path(), auth.protect_reads()));
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
        // Only a route outside every API prefix has no caller: a bug, and
        // failing closed is the safe answer.
        std::future::ready(req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "no authenticated caller on {} (the route is outside the API's prefixes)",
                req.path()
            ))
        }))
    }
}

impl Apiv2Schema for Caller {}
impl paperclip::actix::OperationModifier for Caller {}
