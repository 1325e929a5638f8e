//! Guards around paperclip's Swagger UI handler, which panics when asked for
//! a file it does not have (`/docs/nope`, or `/docs?x` with no file): such
//! requests are answered 404 here before they reach it.

use super::error::ApiError;
use actix_web::guard::GuardContext;
use actix_web::{web, HttpRequest};

/// The files of the Swagger UI distribution that paperclip embeds.
const FILES: &[&str] = &[
    "index.html",
    "oauth2-redirect.html",
    "favicon-16x16.png",
    "favicon-32x32.png",
    "swagger-ui.css",
    "swagger-ui.css.map",
    "swagger-ui.js",
    "swagger-ui.js.map",
    "swagger-ui-bundle.js",
    "swagger-ui-bundle.js.map",
    "swagger-ui-es-bundle.js",
    "swagger-ui-es-bundle.js.map",
    "swagger-ui-es-bundle-core.js",
    "swagger-ui-es-bundle-core.js.map",
    "swagger-ui-standalone-preset.js",
    "swagger-ui-standalone-preset.js.map",
];

/// Would paperclip's handler panic on this request?
fn unservable(ctx: &GuardContext<'_>, docs_path: &str) -> bool {
    let path = ctx.head().uri.path();
    let query = ctx.head().uri.query().unwrap_or("");
    let Some(rest) = path.strip_prefix(docs_path) else {
        return false;
    };
    let file = rest.trim_start_matches('/');
    if file.is_empty() {
        // paperclip redirects a bare docs path without a query string.
        !query.is_empty()
    } else {
        !FILES.contains(&file)
    }
}

/// A resource to register before paperclip's Swagger UI.
pub fn guard(docs_path: &str) -> actix_web::Resource {
    let prefix = docs_path.to_owned();
    web::resource([docs_path.to_owned(), format!("{docs_path}/{{filename:.*}}")])
        .guard(actix_web::guard::fn_guard(move |ctx| {
            unservable(ctx, &prefix)
        }))
        .to(|req: HttpRequest| async move {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound(format!(
                "no documentation file at {}",
                req.uri()
            )))
        })
}
