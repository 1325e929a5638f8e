//! What the two HTTP services (and the worker's health port) share: server
//! setup, the problem+json error type, extractors, health, and the OpenAPI
//! document with Swagger UI.
//!
//! Handlers are thin: extract, convert the input into domain values, call a
//! plain query function through [`crate::db::Database::run`], map the result.

pub mod auth;
pub mod docs;
mod drain;
pub mod error;
pub mod extract;
mod observe;
mod openapi;
pub mod orders;
mod probes;
pub mod products;
pub mod responses;

use crate::auth::{ApiScopes, Authenticator};
use crate::db::Database;
use crate::dependencies::Dependencies;
use crate::metrics::Metrics;
use crate::outbox::Waker;
use crate::settings::{HttpSettings, Settings};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{HttpServer, ResponseError};
use error::ApiError;
use paperclip::actix::OpenApiExt;
use paperclip::v2::models::{DefaultApiRaw, Info};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a handler may need, shared by all workers of one server.
#[derive(Clone)]
pub struct AppState {
    pub mode: &'static str,
    pub db: Database,
    pub deps: Dependencies,
    pub metrics: Arc<Metrics>,
    /// Wakes the outbox relay after a commit that wrote messages (orders only).
    pub waker: Option<Waker>,
    /// The exchanges of the outbox rows this process's relay publishes
    /// (empty: no relay), for the backlog gauges.
    pub relay_exchanges: &'static [&'static str],
    /// Set when the stop is requested: the process drains until it stops
    /// (see [`drain`]).
    pub stopping: crate::shutdown::Shutdown,
    /// Set by the first ready answer: `/startedz` answers 200 from then on.
    pub started: crate::shutdown::Trigger,
}

/// Registers an API's routes (and any data only they use).
pub type Routes = Arc<dyn Fn(&mut paperclip::actix::web::ServiceConfig) + Send + Sync>;

/// One HTTP API: its routes, the scopes they need, and how its OpenAPI
/// document introduces it.
pub struct Api {
    pub title: &'static str,
    pub description: &'static str,
    pub routes: Routes,
    /// `None` for the worker's port (health and metrics only).
    pub scopes: Option<ApiScopes>,
    /// What anyone may do when `auth.mode` is open ("create, change and
    /// delete …"), for the warning at start.
    pub writes: &'static str,
    /// Paths served but left out of the document (duplicates of listed ones).
    pub aliases: &'static [openapi::Alias],
}

/// The worker's HTTP port: health and metrics only.
pub fn worker_api() -> Api {
    Api {
        title: "ordersys worker",
        description: "Health and metrics of a stock worker process.",
        routes: Arc::new(|_| {}),
        scopes: None,
        writes: "",
        aliases: &[],
    }
}

/// Builds the server on an already bound listener (port 0 in tests) and
/// returns it unstarted-to-await. Signals are not handled here: the caller
/// owns shutdown.
pub fn server(
    listener: TcpListener,
    settings: &Settings,
    state: AppState,
    api: Api,
    auth: Arc<Authenticator>,
) -> std::io::Result<Server> {
    let parts = AppParts::new(&settings.http, state, api, auth);
    let workers = workers(&settings.http);
    let server = HttpServer::new(move || app(&parts))
        .disable_signals()
        .shutdown_timeout(settings.shutdown.grace_secs)
        .client_request_timeout(Duration::from_millis(settings.http.request_timeout_ms))
        .workers(workers)
        .max_connections(settings.http.max_connections.div_ceil(workers));
    Ok(server.listen(listener)?.run())
}

/// `http.workers`, 0 meaning one per available core.
fn workers(http: &HttpSettings) -> usize {
    match http.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// What each server worker's [`app`] is made of.
#[derive(Clone)]
struct AppParts {
    data: actix_web::web::Data<AppState>,
    spec: DefaultApiRaw,
    routes: Routes,
    /// Paths served but left out of the document.
    aliases: &'static [openapi::Alias],
    scopes: Option<ApiScopes>,
    auth: Arc<Authenticator>,
    open: auth::OpenPaths,
    /// What the document says about authentication.
    security: openapi::Security,
    limit: extract::BodyLimit,
    http: HttpSettings,
}

impl AppParts {
    fn new(http: &HttpSettings, state: AppState, api: Api, auth: Arc<Authenticator>) -> Self {
        let open = auth::OpenPaths {
            docs: http.docs_path.clone(),
            openapi: http.openapi_path.clone(),
        };
        let security = openapi::Security {
            scopes: api
                .scopes
                .filter(|_| auth.mode() == crate::settings::AuthMode::Jwt),
            protect_reads: auth.protect_reads(),
            open: open.clone(),
        };
        AppParts {
            data: actix_web::web::Data::new(state),
            spec: spec(&api),
            routes: api.routes.clone(),
            aliases: api.aliases,
            scopes: api.scopes,
            auth,
            open,
            security,
            limit: extract::BodyLimit {
                max_bytes: http.max_body_bytes,
                timeout: Duration::from_millis(http.body_timeout_ms),
            },
            http: http.clone(),
        }
    }
}

/// One server worker's application: the API's routes, the probes, the
/// OpenAPI document and Swagger UI, behind the middleware (innermost first:
/// authorization, problem+json for every error, then the request id, the
/// access line and the metrics around everything).
fn app(
    parts: &AppParts,
) -> actix_web::App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let (metrics, stopping) = (parts.data.metrics.clone(), parts.data.stopping.clone());
    let (auth, open, scopes) = (parts.auth.clone(), parts.open.clone(), parts.scopes);
    let (http, routes) = (&parts.http, &parts.routes);
    actix_web::App::new()
        .app_data(parts.data.clone())
        .app_data(parts.limit)
        .app_data(actix_web::web::PathConfig::default().error_handler(extract::path_error))
        .service(docs::guard(&http.docs_path))
        .wrap_api_with_spec(parts.spec.clone())
        .configure(|cfg| routes(cfg))
        .configure(probes::routes)
        // Our refined document, registered first so it shadows
        // paperclip's own (which is still needed: it tells Swagger UI
        // where the document is).
        .with_raw_json_spec_v3(|app, spec| {
            let body = openapi::refine(spec, &parts.security, parts.aliases).to_string();
            app.service(document(&http.openapi_path, body))
        })
        .with_json_spec_v3_at(&http.openapi_path)
        .with_swagger_ui_at(&http.docs_path)
        .build()
        .default_service(actix_web::web::to(no_route))
        .wrap_fn(move |req, srv| {
            let outcome = match auth::check(&auth, scopes.as_ref(), &open, &req) {
                Ok(()) => Ok(actix_web::dev::Service::call(srv, req)),
                Err(refused) => Err(req.into_response(refused.error_response())),
            };
            async move {
                match outcome {
                    Ok(fut) => Ok(fut.await?.map_into_left_body()),
                    Err(refused) => Ok(refused.map_into_right_body()),
                }
            }
        })
        .wrap(ErrorHandlers::new().default_handler(as_problem))
        // Outermost: every answer, even a refusal, has its request id (and,
        // while draining, closes its connection).
        .wrap_fn(move |req, srv| {
            let (metrics, stopping) = (metrics.clone(), stopping.clone());
            let started = Instant::now();
            let id = observe::begin(&req);
            let fut = actix_web::dev::Service::call(srv, req);
            async move {
                let mut res = fut.await?;
                observe::finish(&mut res, &id, started, &metrics.http);
                drain::close_if_draining(&mut res, &stopping);
                Ok(res)
            }
        })
}

/// Serves the refined OpenAPI document (`body`) at `path`.
fn document(path: &str, body: String) -> paperclip::actix::web::Resource {
    paperclip::actix::web::resource(path).route(paperclip::actix::web::get().to(move || {
        let body = body.clone();
        async move {
            paperclip::actix::HttpResponseWrapper(
                actix_web::HttpResponse::Ok()
                    .content_type("application/json")
                    .body(body),
            )
        }
    }))
}

/// The head of the API's OpenAPI document.
fn spec(api: &Api) -> DefaultApiRaw {
    DefaultApiRaw {
        info: Info {
            title: api.title.into(),
            description: Some(api.description.into()),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn no_route(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Turns error responses that did not come from [`ApiError`] (actix's own
/// 404/405, for instance) into problem+json too.
fn as_problem<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (req, _) = res.into_parts();
    let error = match status.as_u16() {
        404 => ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())),
        405 => {
            ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.path()))
        }
        413 => ApiError::PayloadTooLarge {
            limit: req
                .app_data::<extract::BodyLimit>()
                .map(|l| l.max_bytes)
                .unwrap_or_default(),
        },
        415 => ApiError::UnsupportedMediaType("unsupported content type".into()),
        400..=499 => ApiError::BadRequest {
            detail: status
                .canonical_reason()
                .unwrap_or("bad request")
                .to_owned(),
            errors: Vec::new(),
        },
        503 => ApiError::Unavailable(
            status
                .canonical_reason()
                .unwrap_or("unavailable")
                .to_owned(),
        ),
        _ => ApiError::internal(anyhow::anyhow!(
            "{status} from {} {}",
            req.method(),
            req.path()
        )),
    };
    let response = error.error_response();
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_body(|_, body| EitherBody::right(body)),
    ))
}
