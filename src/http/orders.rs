//! HTTP handlers of the orders service: extract, validate, query, answer.
//! Each canonical path has the seed's `/api/v1/...` alias with identical
//! behaviour.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, NoBody};
use super::openapi::Alias;
use super::responses::{Accepted, Created};
use super::{Api, AppState};
use crate::auth::{ApiScopes, Scope};
use crate::db::Database;
use crate::domain::{FieldError, LineId, OrderId, OrderStatus, Page, Pagination};
use crate::orders::group::{LineCreation, LineWrites};
use crate::orders::model::{
    LineChange, LineChanges, LineCreate, LineUpdate, NewLine, Order, OrderInput, OrderLine,
};
use crate::orders::queries;
use crate::orders::OrderReads;
use crate::request_id::RequestId;
use crate::saga;
use paperclip::actix::{api_v2_operation, web, NoContent};

/// How long a validation may take before it is refused (`validation.timeout_ms`).
#[derive(Debug, Clone, Copy)]
struct ValidationTimeout(std::time::Duration);

/// The orders API; `GET /commandes/{id}` reads of `db` are coalesced, and
/// validations time out after `validation_timeout`.
pub fn api(db: &Database, validation_timeout: std::time::Duration) -> Api {
    let reads = web::Data::new(crate::orders::reads(db.clone()));
    let line_writes = web::Data::new(crate::orders::group::line_writes(db.clone()));
    Api {
        title: "ordersys orders",
        description: "Orders and their lines. Every line change is carried to the stock worker \
                      through a transactional outbox and RabbitMQ; a line's `statut_stock` says \
                      whether its stock is reserved yet. The seed system's paths \
                      (`/api/v1/commandes…`, `/api/v1/commandes_produits…`) are served too, with \
                      identical behaviour; they are not listed here.",
        routes: std::sync::Arc::new(move |cfg| {
            cfg.app_data(actix_web::web::Data::new(ValidationTimeout(
                validation_timeout,
            )));
            cfg.app_data(reads.clone());
            cfg.app_data(line_writes.clone());
            routes(cfg)
        }),
        scopes: Some(ApiScopes {
            read: Scope::OrdersRead,
            write: Scope::OrdersWrite,
        }),
        writes: "create, change, cancel and delete orders and their lines",
        aliases: &[Alias::Prefix("/api/v1/")],
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    for base in ["/commandes", "/api/v1/commandes"] {
        cfg.service(
            web::resource(base)
                .route(web::post().to(create_order))
                .route(web::get().to(list_orders)),
        )
        .service(
            web::resource(&format!("{base}/statut/{{statut}}"))
                .route(web::get().to(list_orders_by_status)),
        )
        .service(
            web::resource(&format!("{base}/{{id}}"))
                .route(web::get().to(get_order))
                .route(web::put().to(update_order))
                .route(web::delete().to(delete_order)),
        )
        .service(
            web::resource(&format!("{base}/{{id}}/validation"))
                .route(web::post().to(validate_order)),
        );
    }
    for base in ["/commandes-produits", "/api/v1/commandes_produits"] {
        cfg.service(
            web::resource(base)
                .route(web::post().to(create_line))
                .route(web::get().to(list_lines)),
        )
        .service(
            web::resource(&format!("{base}/{{id}}"))
                .route(web::get().to(get_line))
                .route(web::put().to(update_line))
                .route(web::delete().to(delete_line)),
        )
        .service(
            web::resource(&format!("{base}/{{id}}/historique")).route(web::get().to(line_history)),
        );
    }
}

fn page(query: Pagination) -> Result<Page, ApiError> {
    Page::try_from(query).map_err(ApiError::invalid)
}

fn wake_relay(state: &AppState, wrote: bool) {
    if let (true, Some(waker)) = (wrote, &state.waker) {
        waker.wake();
    }
}

/// Create an order.
///
/// `statut` defaults to `EN_ATTENTE`; `status` is accepted as an alias.
/// `EN_ATTENTE`, `EN_COURS` and `ANNULEE` are accepted; `EXPEDIEE` answers
/// 409 (a new order has no line to ship).
#[api_v2_operation(tags(Orders))]
async fn create_order(
    state: web::Data<AppState>,
    body: ApiJson<OrderInput>,
) -> Result<Created<Order>, ApiError> {
    let statut = body
        .0
        .status()
        .map_err(ApiError::invalid)?
        .unwrap_or(OrderStatus::EnAttente);
    let order = state
        .db
        .run(move |conn| queries::create_order(conn, statut).map_err(ApiError::from))
        .await?;
    Ok(Created {
        location: format!("/commandes/{}", order.id),
        body: order,
    })
}

/// List orders with their lines, ordered by id.
#[api_v2_operation(tags(Orders))]
async fn list_orders(
    state: web::Data<AppState>,
    query: ApiQuery<Pagination>,
) -> Result<web::Json<Vec<Order>>, ApiError> {
    let page = page(query.0)?;
    let orders = state
        .db
        .run(move |conn| queries::list_orders(conn, None, page).map_err(ApiError::from))
        .await?;
    Ok(web::Json(orders))
}

/// List the orders with one status, ordered by id.
#[api_v2_operation(tags(Orders))]
async fn list_orders_by_status(
    state: web::Data<AppState>,
    statut: web::Path<String>,
    query: ApiQuery<Pagination>,
) -> Result<web::Json<Vec<Order>>, ApiError> {
    let statut = OrderStatus::parse(&statut).map_err(|message| ApiError::BadRequest {
        detail: format!("statut: {message}"),
        errors: vec![FieldError::new("statut", message)],
    })?;
    let page = page(query.0)?;
    let orders = state
        .db
        .run(move |conn| queries::list_orders(conn, Some(statut), page).map_err(ApiError::from))
        .await?;
    Ok(web::Json(orders))
}

/// Get one order with its lines and total.
#[api_v2_operation(tags(Orders))]
async fn get_order(
    reads: web::Data<OrderReads>,
    id: web::Path<i64>,
) -> Result<web::Json<Order>, ApiError> {
    let id = id.into_inner();
    reads
        .get::<ApiError>(id)
        .await?
        .map(web::Json)
        .ok_or_else(|| ApiError::not_found("order", id))
}

/// Change an order's status.
///
/// As the contract's transition table allows, else 409 with the reason:
/// `ANNULEE` releases the stock of every line and is final; `EXPEDIEE`
/// needs at least one line and every line `RESERVE`, and is final; a
/// validated order never goes back to `EN_ATTENTE`; nothing changes while
/// its validation runs. Asking for the current status changes nothing.
#[api_v2_operation(tags(Orders))]
async fn update_order(
    state: web::Data<AppState>,
    request: RequestId,
    id: web::Path<i64>,
    body: ApiJson<OrderInput>,
) -> Result<web::Json<Order>, ApiError> {
    let id = id.into_inner();
    let statut = body.0.status().map_err(ApiError::invalid)?;
    let (order, wrote) = state
        .db
        .run(move |conn| {
            queries::update_order(conn, &request, OrderId(id), statut).map_err(ApiError::from)
        })
        .await?;
    wake_relay(&state, wrote);
    Ok(web::Json(order))
}

/// Validate an order: confirmed only if every line holds its stock.
///
/// Starts the validation of an `EN_ATTENTE` order with at least one line
/// and answers 202 with the order (`validation`: `EN_COURS`) and its URL
/// in `Location`; poll it. The worker re-checks each line's reservation.
/// Every line reserved: `validation` becomes `CONFIRMEE` and `statut`
/// `EN_COURS`. A line the stock cannot cover, or no answer within
/// `validation.timeout_ms`: `REFUSEE` with a `motif`, every line is
/// released and the order is `ANNULEE`. Meanwhile the order and its lines
/// cannot change (409); a validated order's lines never can. An order that
/// does not exist: 404; not `EN_ATTENTE`, already validated or without
/// lines: 409.
#[api_v2_operation(tags(Orders))]
async fn validate_order(
    _body: NoBody,
    state: web::Data<AppState>,
    timeout: web::Data<ValidationTimeout>,
    request: RequestId,
    id: web::Path<i64>,
) -> Result<Accepted<Order>, ApiError> {
    let id = id.into_inner();
    let timeout = timeout.0;
    let order = state
        .db
        .run(move |conn| {
            saga::store::start(conn, &request, OrderId(id), timeout).map_err(ApiError::from)
        })
        .await?;
    wake_relay(&state, true);
    Ok(Accepted {
        location: format!("/commandes/{}", order.id),
        body: order,
    })
}

/// Delete an order and its lines.
///
/// Each line's stock is released. A shipped (`EXPEDIEE`) order is kept: 409.
#[api_v2_operation(tags(Orders))]
async fn delete_order(
    _body: NoBody,
    state: web::Data<AppState>,
    request: RequestId,
    id: web::Path<i64>,
) -> Result<NoContent, ApiError> {
    let id = id.into_inner();
    let wrote = state
        .db
        .run(move |conn| queries::delete_order(conn, &request, OrderId(id)).map_err(ApiError::from))
        .await?;
    wake_relay(&state, wrote);
    Ok(NoContent)
}

/// Add a line to an order.
///
/// The order and the product must exist (422); the order must be open,
/// never validated, and hold fewer than 100 lines (409). `prix_unitaire` is
/// the product's price now; `statut_stock` is `EN_ATTENTE` until the worker
/// reserves the stock.
#[api_v2_operation(tags("Order lines"))]
async fn create_line(
    state: web::Data<AppState>,
    writes: web::Data<LineWrites>,
    request: RequestId,
    body: ApiJson<LineCreate>,
) -> Result<Created<OrderLine>, ApiError> {
    let line = NewLine::try_from(body.0).map_err(ApiError::invalid)?;
    let alone = |conn: &mut diesel::PgConnection, c: LineCreation| {
        queries::create_line(conn, &c.request, c.line)
            .map(Ok)
            .map_err(ApiError::from)
    };
    let line = writes
        .run(LineCreation { request, line }, alone)
        .await?
        .map_err(ApiError::from)?;
    wake_relay(&state, true);
    Ok(Created {
        location: format!("/commandes-produits/{}", line.id),
        body: line,
    })
}

/// List order lines, ordered by id.
#[api_v2_operation(tags("Order lines"))]
async fn list_lines(
    state: web::Data<AppState>,
    query: ApiQuery<Pagination>,
) -> Result<web::Json<Vec<OrderLine>>, ApiError> {
    let page = page(query.0)?;
    let lines = state
        .db
        .run(move |conn| queries::list_lines(conn, page).map_err(ApiError::from))
        .await?;
    Ok(web::Json(lines))
}

/// Get one order line.
#[api_v2_operation(tags("Order lines"))]
async fn get_line(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<web::Json<OrderLine>, ApiError> {
    let id = id.into_inner();
    state
        .db
        .run(move |conn| queries::find_line(conn, id).map_err(ApiError::from))
        .await?
        .map(web::Json)
        .ok_or_else(|| ApiError::not_found("order line", id))
}

/// Change an order line (partial).
///
/// Absent fields keep their value. A new `produit_id` takes the new
/// product's price. The stock is adjusted by the worker (`statut_stock`
/// goes back to `EN_ATTENTE` until then); a `REJETE` line is re-tried.
#[api_v2_operation(tags("Order lines"))]
async fn update_line(
    state: web::Data<AppState>,
    request: RequestId,
    id: web::Path<i64>,
    body: ApiJson<LineUpdate>,
) -> Result<web::Json<OrderLine>, ApiError> {
    let id = id.into_inner();
    let changes = LineChanges::try_from(body.0).map_err(ApiError::invalid)?;
    let (line, wrote) = state
        .db
        .run(move |conn| {
            queries::update_line(conn, &request, LineId(id), changes).map_err(ApiError::from)
        })
        .await?;
    wake_relay(&state, wrote);
    Ok(web::Json(line))
}

/// Delete an order line; its stock is released.
#[api_v2_operation(tags("Order lines"))]
async fn delete_line(
    _body: NoBody,
    state: web::Data<AppState>,
    request: RequestId,
    id: web::Path<i64>,
) -> Result<NoContent, ApiError> {
    let id = id.into_inner();
    state
        .db
        .run(move |conn| queries::delete_line(conn, &request, LineId(id)).map_err(ApiError::from))
        .await?;
    wake_relay(&state, true);
    Ok(NoContent)
}

/// The history of an order line: the message flow of each of its changes.
///
/// Oldest first, paged (`skip`, `limit`: at most 1000, default 100): each
/// change's version, the id the server gave the request that made it (its
/// response's `X-Request-Id`) and the id its client sent, when it was
/// accepted, published to RabbitMQ and applied by a worker, and its
/// outcome. A deleted line's history stays readable for
/// `outbox.history_retention_secs`; a line that never existed answers 404.
#[api_v2_operation(tags("Order lines"))]
async fn line_history(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    query: ApiQuery<Pagination>,
) -> Result<web::Json<Vec<LineChange>>, ApiError> {
    let id = id.into_inner();
    let page = page(query.0)?;
    state
        .db
        .run(move |conn| queries::line_history(conn, id, page).map_err(ApiError::from))
        .await?
        .map(web::Json)
        .ok_or_else(|| ApiError::not_found("order line", id))
}
