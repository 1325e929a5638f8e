//! The drain before a stop (`http.shutdown_drain_secs`): once the stop is
//! requested (SIGTERM), the process keeps serving for a while so that a
//! load balancer in front (Traefik) moves away from it without one failed
//! request: `/readyz` answers 503 saying it is draining, so the balancer's
//! health check takes it out of rotation; every other route answers as
//! usual; and every answer carries `Connection: close`, so a keep-alive
//! client (the balancer's connection pool) opens its next connection
//! elsewhere instead of reusing one that is about to close. Then the
//! graceful stop runs (`crate::app`).

use super::error::ApiError;
use actix_web::dev::ServiceResponse;
use actix_web::http::ConnectionType;

/// What `/readyz` answers while draining.
pub fn readiness(stopping: &crate::shutdown::Shutdown) -> Result<(), ApiError> {
    if stopping.is_triggered() {
        return Err(ApiError::Unavailable(
            "draining: this process is stopping; other routes still answer".into(),
        ));
    }
    Ok(())
}

/// While draining, the answer closes its connection (`Connection: close`).
pub fn close_if_draining<B>(res: &mut ServiceResponse<B>, stopping: &crate::shutdown::Shutdown) {
    if stopping.is_triggered() {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
}
