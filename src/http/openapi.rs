//! Final touches to the OpenAPI v3 document paperclip generates.
//!
//! paperclip attaches every error an [`ApiError`](super::error::ApiError)
//! can carry to every operation, as `application/json`. Here each operation
//! keeps only the errors it can answer (413/415 need a body, 404 a path
//! parameter, …), served as `application/problem+json`.

use serde_json::Value;

pub fn refine(mut spec: Value) -> Value {
    if let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                refine_operation(path, method, op);
            }
        }
    }
    // `errors` is omitted when empty.
    if let Some(required) = spec
        .pointer_mut("/components/schemas/Problem/required")
        .and_then(Value::as_array_mut)
    {
        required.retain(|field| field != "errors");
    }
    spec
}

fn refine_operation(path: &str, method: &str, op: &mut Value) {
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
        // Deleting (referenced product, shipped order) or changing an order
        // or its lines (closed order); creating an order cannot conflict.
        "409" => {
            method == "delete"
                || (mutating && path.contains("commandes") && !path.ends_with("commandes"))
        }
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
        let spec = refine(spec);
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
