//! Final touches to the OpenAPI v3 document paperclip generates.
//!
//! paperclip attaches every error an [`ApiError`](super::error::ApiError)
//! can carry to every operation, as `application/json`. Here each operation
//! keeps only the errors it can answer (413/415 need a body, 404 a path
//! parameter, …), served as `application/problem+json`. And every bound the
//! handlers enforce ([`crate::domain::limits`]) is written into the schemas
//! (`minLength`, `maxLength`, `pattern`, `minimum`, `maximum`), with
//! `nullable` where null is sent or accepted, so that a client generated
//! from the document sends what the handlers accept.

use crate::auth::{ApiScopes, Scope};
use crate::domain::limits::*;
use crate::domain::OrderStatus;
use serde_json::{json, Value};

/// What the document says about authentication.
#[derive(Clone)]
pub struct Security {
    /// The API's scopes when tokens are checked; `None` when open.
    pub scopes: Option<ApiScopes>,
    pub protect_reads: bool,
    pub open: super::auth::OpenPaths,
}

impl Security {
    fn required(&self, method: &str, path: &str) -> Option<Scope> {
        self.scopes.and_then(|s| {
            s.required(
                &method.to_ascii_uppercase(),
                self.open.contains(path),
                self.protect_reads,
            )
        })
    }
}

/// A path served for compatibility that the document leaves out: it
/// behaves exactly as its canonical path, which is listed (so Swagger UI
/// shows each operation once).
#[derive(Debug, Clone, Copy)]
pub enum Alias {
    /// This path only (`/produits` for `/produits/`).
    Exact(&'static str),
    /// Every path under this prefix (`/api/v1/`).
    Prefix(&'static str),
}

impl Alias {
    fn covers(self, path: &str) -> bool {
        match self {
            Alias::Exact(alias) => path == alias,
            Alias::Prefix(prefix) => path.starts_with(prefix),
        }
    }
}

pub fn refine(mut spec: Value, security: &Security, aliases: &[Alias]) -> Value {
    if let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) {
        paths.retain(|path, _| !aliases.iter().any(|alias| alias.covers(path)));
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                let required = security.required(method, path);
                refine_operation(path, method, op, required);
            }
        }
    }
    if security.scopes.is_some() {
        spec["components"]["securitySchemes"] = json!({"bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT whose `scope` claim (space-separated) holds the scope each \
                            operation names; `ordersys token` mints one for development."
        }});
    }
    constrain(&mut spec);
    // `errors` is omitted when empty.
    if let Some(required) = spec
        .pointer_mut("/components/schemas/Problem/required")
        .and_then(Value::as_array_mut)
    {
        required.retain(|field| field != "errors");
    }
    spec
}

/// The bounds of each constrained property, by schema.
fn constraints() -> Vec<(&'static str, &'static str, Value)> {
    let nom = json!({"minLength": 1, "maxLength": NOM_MAX_CHARS, "pattern": NOM_PATTERN});
    let description =
        json!({"maxLength": DESCRIPTION_MAX_CHARS, "pattern": FREE_TEXT_PATTERN, "nullable": true});
    // Two decimals at most: said in the description (a float multipleOf
    // 0.01 makes common validators refuse 19.99).
    let prix = json!({"minimum": 0, "maximum": PRIX_MAX});
    let stock = json!({"minimum": 0, "maximum": STOCK_MAX});
    let id = json!({"minimum": ID_MIN});
    let quantite = json!({"minimum": 1, "maximum": QUANTITE_MAX});
    let mut out = Vec::new();
    for schema in ["ProductCreate", "ProductUpdate"] {
        out.push((schema, "nom", nom.clone()));
        out.push((schema, "description", description.clone()));
        out.push((schema, "prix", prix.clone()));
        out.push((schema, "quantite_en_stock", stock.clone()));
    }
    for schema in ["LineCreate", "LineUpdate"] {
        out.push((schema, "commande_id", id.clone()));
        out.push((schema, "produit_id", id.clone()));
        out.push((schema, "quantite", quantite.clone()));
    }
    out
}

/// `nom`: not blank, no control character.
const NOM_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";

/// Writes the bounds into the schemas; marks the optional properties of
/// the answers (sent as null) nullable; bounds `skip` and `limit`.
fn constrain(spec: &mut Value) {
    for (schema, property, bounds) in constraints() {
        let pointer = format!("/components/schemas/{schema}/properties/{property}");
        if let (Some(target), Some(bounds)) = (spec.pointer_mut(&pointer), bounds.as_object()) {
            if let Some(target) = target.as_object_mut() {
                target.extend(bounds.clone());
            }
        }
    }
    for schema in ["Product", "Movement", "Order", "LineChange"] {
        let Some(schema) = spec.pointer_mut(&format!("/components/schemas/{schema}")) else {
            continue;
        };
        let required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
        if let Some(properties) = schema["properties"].as_object_mut() {
            for (name, property) in properties.iter_mut() {
                if !required.contains(&Value::from(name.as_str())) {
                    property["nullable"] = json!(true);
                    // OpenAPI 3.0.3: a nullable enum lists null among its values.
                    if let Some(values) = property.get_mut("enum").and_then(Value::as_array_mut) {
                        values.push(Value::Null);
                    }
                }
            }
        }
    }
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for parameter in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("parameters").and_then(Value::as_array_mut))
        .flatten()
    {
        let bounds = match parameter["name"].as_str() {
            Some("skip") => json!({"minimum": 0, "maximum": SKIP_MAX}),
            Some("limit") => json!({"minimum": 1, "maximum": LIMIT_MAX}),
            Some("statut") => {
                let words: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                json!({ "enum": words })
            }
            _ => continue,
        };
        if let (Some(schema), Some(bounds)) =
            (parameter["schema"].as_object_mut(), bounds.as_object())
        {
            schema.extend(bounds.clone());
        }
    }
}

fn refine_operation(path: &str, method: &str, op: &mut Value, required: Option<Scope>) {
    if let Some(scope) = required {
        let mut scopes = vec![scope.as_str()];
        if method == "put" && path == "/produits/{id}" {
            scopes.push(Scope::StockCorrect.as_str());
        }
        op["security"] = json!([{"bearer": []}]);
        op["x-required-scopes"] = json!(scopes);
        let note = match scopes.as_slice() {
            [only] => format!("Needs a bearer token with the scope `{only}`."),
            _ => "Needs a bearer token with the scope `products:write`, and `stock:correct` \
                  as well when it sets `quantite_en_stock`."
                .to_owned(),
        };
        let description = match op["description"].as_str() {
            Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
            _ => note,
        };
        op["description"] = json!(description);
    }
    let has_body = op.get("requestBody").is_some();
    let params = |kind: &str| {
        op.get("parameters")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == kind))
    };
    let (has_path, has_query) = (params("path"), params("query"));
    let touches_db = !matches!(path, "/healthz" | "/metrics");
    let mutating = matches!(method, "post" | "put" | "delete");
    let keep = |code: &str| match code {
        "400" => has_body || has_path || has_query,
        "404" => has_path,
        // Deleting (referenced product, shipped order), creating an order
        // (never as shipped) or changing one or its lines (the transition
        // table).
        "409" => method == "delete" || (mutating && path.contains("commandes")),
        "401" | "403" => required.is_some(),
        "413" | "415" => has_body,
        "422" => has_body || has_query,
        "503" => touches_db,
        _ => true,
    };
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    responses.retain(|code, _| keep(code));
    for (code, response) in responses.iter_mut() {
        if !code.starts_with('4') && !code.starts_with('5') {
            continue;
        }
        if let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) {
            if let Some((_, media)) = content.iter().next().map(|(k, v)| (k.clone(), v.clone())) {
                content.clear();
                content.insert("application/problem+json".into(), media);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_errors_an_operation_can_give() {
        let problem = json!({"description": "x", "content": {"application/json": {"schema": {}}}});
        let responses = json!({
            "200": {"description": "OK"}, "400": problem, "404": problem, "409": problem,
            "413": problem, "415": problem, "422": problem, "503": problem
        });
        let spec = json!({"paths": {
            "/healthz": {"get": {"responses": responses}},
            "/produits/{id}": {"put": {
                "parameters": [{"in": "path", "name": "id"}],
                "requestBody": {}, "responses": responses
            }}
        }});
        let open = Security {
            scopes: None,
            protect_reads: false,
            open: crate::http::auth::OpenPaths {
                docs: "/docs".into(),
                openapi: "/openapi.json".into(),
            },
        };
        let spec = refine(spec, &open, &[]);
        let health: Vec<_> = spec["paths"]["/healthz"]["get"]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(health, ["200"]);
        let put = &spec["paths"]["/produits/{id}"]["put"]["responses"];
        // A product update cannot conflict: everything but 409.
        assert_eq!(put.as_object().unwrap().len(), 7);
        assert!(put.get("409").is_none());
        assert!(put["404"]["content"]["application/problem+json"].is_object());
    }
}
