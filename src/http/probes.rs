//! `/healthz` (the process is alive), `/readyz` (its dependencies answer),
//! `/startedz` (it has been ready once: the container health check) and
//! `/metrics`, served by every mode.

use super::error::ApiError;
use super::responses::PlainText;
use super::AppState;
use paperclip::actix::{api_v2_operation, web, Apiv2Schema};
use serde::Serialize;

/// Liveness and readiness.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct Status {
    /// `ok` (liveness), `ready` (readiness) or `started`.
    pub status: String,
    /// Each dependency checked, with `up` or why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<std::collections::BTreeMap<String, String>>,
}

/// The process is alive.
///
/// Always 200 while the process runs; says nothing about its dependencies.
#[api_v2_operation(tags(Health))]
async fn healthz() -> Result<web::Json<Status>, ApiError> {
    Ok(web::Json(Status {
        status: "ok".into(),
        checks: None,
    }))
}

/// The process can do its work.
///
/// 200 when PostgreSQL answers and migrations are applied, and for `worker`
/// when RabbitMQ answers too; otherwise 503 naming what is down. `orders`
/// reports RabbitMQ's state in `checks` but stays ready without it: its
/// writes wait in the outbox. 503 too while the process drains before
/// stopping (`http.shutdown_drain_secs`), saying so.
#[api_v2_operation(tags(Health))]
async fn readyz(state: web::Data<AppState>) -> Result<web::Json<Status>, ApiError> {
    readiness(&state).await.map(web::Json)
}

/// The process has started: it has been ready once.
///
/// 503 naming what is down until `/readyz` has answered 200 once (asked
/// here or there), then 200 for as long as the process runs, whatever its
/// dependencies do since. The container health check: a task is replaced
/// when it never gets ready or stops answering, not when its database or
/// broker goes away (a new task would wait for them just the same, and
/// come back later than this one); routing follows `/readyz`.
#[api_v2_operation(tags(Health))]
async fn startedz(state: web::Data<AppState>) -> Result<web::Json<Status>, ApiError> {
    if !state.started.is_triggered() {
        readiness(&state).await?;
    }
    Ok(web::Json(Status {
        status: "started".into(),
        checks: None,
    }))
}

/// What `/readyz` answers; the first 200 marks the process started.
async fn readiness(state: &AppState) -> Result<Status, ApiError> {
    super::drain::readiness(&state.stopping)?;
    let mut checks = std::collections::BTreeMap::new();
    let mut down = Vec::new();
    let database = if !state.db.is_ready() {
        "down: not migrated yet".to_owned()
    } else {
        match state.db.ping().await {
            Ok(()) => "up".to_owned(),
            Err(e) => {
                // The detail (libpq's words) is for the log only.
                log::debug!("readiness: PostgreSQL down: {e}");
                "down".to_owned()
            }
        }
    };
    if database != "up" {
        down.push(format!("database ({database})"));
    }
    checks.insert("database".to_owned(), database);
    if let Some(broker) = &state.deps.broker {
        let status = if broker.is_up() { "up" } else { "down" };
        if !broker.is_up() && !state.deps.ready_without_broker {
            down.push("broker".to_owned());
        }
        checks.insert("broker".to_owned(), status.to_owned());
    }
    if down.is_empty() {
        state.started.trigger();
        Ok(Status {
            status: "ready".into(),
            checks: Some(checks),
        })
    } else {
        Err(ApiError::Unavailable(format!(
            "not ready: {} down",
            down.join(", ")
        )))
    }
}

/// Counters and gauges in the Prometheus text format.
///
/// Processes with an outbox relay (orders, worker) also report the outbox
/// backlog: unsent messages, and the age of the oldest one.
#[api_v2_operation(tags(Health), produces = "text/plain")]
async fn metrics(state: web::Data<AppState>) -> Result<PlainText, ApiError> {
    let exchanges = state.relay_exchanges;
    if !exchanges.is_empty() {
        // Left as last seen, not an error, while the database is unreachable.
        let backlog = state
            .db
            .run(move |conn| crate::outbox::backlog(conn, exchanges).map_err(ApiError::from));
        if let Ok(backlog) = backlog.await {
            state.metrics.outbox.unsent.set(backlog.unsent);
            state
                .metrics
                .outbox
                .oldest_unsent_seconds
                .set(backlog.oldest_secs);
        }
    }
    Ok(PlainText(state.metrics.render()))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .service(web::resource("/startedz").route(web::get().to(startedz)))
        .service(web::resource("/metrics").route(web::get().to(metrics)));
}
