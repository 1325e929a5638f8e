//! HTTP handlers of the products service: extract, validate, query, answer.

use super::auth::require;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, NoBody};
use super::openapi::Alias;
use super::responses::Created;
use super::{Api, AppState};
use crate::auth::{ApiScopes, Caller, Scope};
use crate::db::Database;
use crate::domain::{Page, Pagination};
use crate::products::model::{
    Movement, NewProduct, Product, ProductChanges, ProductCreate, ProductUpdate,
};
use crate::products::queries::{self, Deletion};
use crate::products::ProductReads;
use paperclip::actix::{api_v2_operation, web, NoContent};

/// The products API; `GET /produits/{id}` reads of `db` are coalesced.
pub fn api(db: &Database) -> Api {
    let reads = web::Data::new(crate::products::reads(db.clone()));
    Api {
        title: "ordersys products",
        description: "The product catalog and its stock. Stock is reserved and released by the \
                      ordersys worker as orders change; see GET /produits/{id}/mouvements. \
                      `/produits` (without the final slash) is served too, identical to \
                      `/produits/`; it is not listed here.",
        routes: std::sync::Arc::new(move |cfg| {
            cfg.app_data(reads.clone());
            routes(cfg)
        }),
        scopes: Some(ApiScopes {
            read: Scope::ProductsRead,
            write: Scope::ProductsWrite,
        }),
        writes: "create, change and delete products and set their stock",
        aliases: &[Alias::Exact("/produits")],
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    for collection in ["/produits/", "/produits"] {
        cfg.service(
            web::resource(collection)
                .route(web::post().to(create_product))
                .route(web::get().to(list_products)),
        );
    }
    cfg.service(
        web::resource("/produits/{id}")
            .route(web::get().to(get_product))
            .route(web::put().to(update_product))
            .route(web::delete().to(delete_product)),
    )
    .service(web::resource("/produits/{id}/mouvements").route(web::get().to(list_movements)));
}

fn page(query: Pagination) -> Result<Page, ApiError> {
    Page::try_from(query).map_err(ApiError::invalid)
}

/// Create a product.
///
/// `quantite_en_stock` is the initial stock (default 0). Answers 201 with the
/// product and its URL in `Location`.
#[api_v2_operation(tags(Products))]
async fn create_product(
    state: web::Data<AppState>,
    body: ApiJson<ProductCreate>,
) -> Result<Created<Product>, ApiError> {
    let new = NewProduct::try_from(body.0).map_err(ApiError::invalid)?;
    let product = state
        .db
        .run(move |conn| queries::insert(conn, &new).map_err(ApiError::from))
        .await?;
    Ok(Created {
        location: format!("/produits/{}", product.id),
        body: product,
    })
}

/// List products, ordered by id.
#[api_v2_operation(tags(Products))]
async fn list_products(
    state: web::Data<AppState>,
    query: ApiQuery<Pagination>,
) -> Result<web::Json<Vec<Product>>, ApiError> {
    let page = page(query.0)?;
    let products = state
        .db
        .run(move |conn| queries::list(conn, page).map_err(ApiError::from))
        .await?;
    Ok(web::Json(products))
}

/// Get one product.
#[api_v2_operation(tags(Products))]
async fn get_product(
    reads: web::Data<ProductReads>,
    id: web::Path<i64>,
) -> Result<web::Json<Product>, ApiError> {
    let id = id.into_inner();
    reads
        .get::<ApiError>(id)
        .await?
        .map(web::Json)
        .ok_or_else(|| ApiError::not_found("product", id))
}

/// Update a product (partial).
///
/// Absent fields keep their value; `description` may be set to null.
/// Setting `quantite_en_stock` is an inventory correction: with
/// authentication on, it needs the scope `stock:correct` as well.
#[api_v2_operation(tags(Products))]
async fn update_product(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<i64>,
    body: ApiJson<ProductUpdate>,
) -> Result<web::Json<Product>, ApiError> {
    let id = id.into_inner();
    let changes = ProductChanges::try_from(body.0).map_err(ApiError::invalid)?;
    if changes.sets_stock() {
        require(&caller, Scope::StockCorrect)?;
    }
    state
        .db
        .run(move |conn| queries::update(conn, id, &changes).map_err(ApiError::from))
        .await?
        .map(web::Json)
        .ok_or_else(|| ApiError::not_found("product", id))
}

/// Delete a product.
///
/// 409 while order lines reference it.
#[api_v2_operation(tags(Products))]
async fn delete_product(
    _body: NoBody,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<NoContent, ApiError> {
    let id = id.into_inner();
    match state
        .db
        .run(move |conn| queries::delete(conn, id).map_err(ApiError::from))
        .await?
    {
        Deletion::Deleted => Ok(NoContent),
        Deletion::NotFound => Err(ApiError::not_found("product", id)),
        Deletion::Referenced(lines) => Err(ApiError::Conflict(format!(
            "product {id} is referenced by {lines} order line(s); delete or change them first"
        ))),
    }
}

/// List the stock movements of a product, newest first.
///
/// Each movement is one change the stock worker applied: a reservation
/// (negative `delta`) or a release (positive).
#[api_v2_operation(tags(Products))]
async fn list_movements(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    query: ApiQuery<Pagination>,
) -> Result<web::Json<Vec<Movement>>, ApiError> {
    let id = id.into_inner();
    let page = page(query.0)?;
    state
        .db
        .run(move |conn| queries::movements(conn, id, page).map_err(ApiError::from))
        .await?
        .map(web::Json)
        .ok_or_else(|| ApiError::not_found("product", id))
}
