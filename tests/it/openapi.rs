//! Both services document every route of the contract in their OpenAPI
//! document, with the bounds the handlers enforce, and serve Swagger UI at /docs.

use crate::common::TestApp;
use serde_json::Value;

fn operations(spec: &Value) -> Vec<String> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops.sort();
    ops
}

const COMMON: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "GET /startedz",
    "GET /metrics",
];

const PRODUCTS: &[&str] = &[
    "POST /produits/",
    "GET /produits/",
    "GET /produits/{id}",
    "PUT /produits/{id}",
    "DELETE /produits/{id}",
    "GET /produits/{id}/mouvements",
];

fn orders_routes() -> Vec<String> {
    let mut routes = Vec::new();
    // The seed's /api/v1/ aliases are served but not listed.
    for base in ["/commandes"] {
        for op in [
            "POST {b}",
            "GET {b}",
            "GET {b}/{id}",
            "PUT {b}/{id}",
            "DELETE {b}/{id}",
            "GET {b}/statut/{statut}",
        ] {
            routes.push(op.replace("{b}", base));
        }
    }
    routes.push("POST /commandes/{id}/validation".into());
    for base in ["/commandes-produits"] {
        for op in [
            "POST {b}",
            "GET {b}",
            "GET {b}/{id}",
            "PUT {b}/{id}",
            "DELETE {b}/{id}",
            "GET {b}/{id}/historique",
        ] {
            routes.push(op.replace("{b}", base));
        }
    }
    routes
}

fn expect_exactly(spec: &Value, routes: &[String]) {
    let mut expected: Vec<String> = routes
        .iter()
        .cloned()
        .chain(COMMON.iter().map(|s| s.to_string()))
        .collect();
    expected.sort();
    assert_eq!(operations(spec), expected);
}

#[tokio::test]
async fn every_route_is_documented_with_its_schemas() {
    let app = TestApp::spawn().await;
    let products = app.products.get("/openapi.json").await.expect(200).body;
    let orders = app.orders.get("/openapi.json").await.expect(200).body;
    assert_eq!(products["openapi"], "3.0.0");
    expect_exactly(
        &products,
        &PRODUCTS.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    expect_exactly(&orders, &orders_routes());

    let create = &products["paths"]["/produits/"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ProductCreate"
    );
    assert_eq!(
        create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Product"
    );
    assert!(create["responses"]["201"]["headers"]["Location"].is_object());
    assert_eq!(
        create["responses"]["422"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    let product = &products["components"]["schemas"]["Product"]["properties"];
    for field in ["id", "nom", "description", "prix", "quantite_en_stock"] {
        assert!(product[field].is_object(), "Product.{field}");
    }
    assert_eq!(product["prix"]["type"], "number");

    let line = &orders["components"]["schemas"]["OrderLine"]["properties"];
    for field in [
        "id",
        "commande_id",
        "produit_id",
        "quantite",
        "prix_unitaire",
        "statut_stock",
    ] {
        assert!(line[field].is_object(), "OrderLine.{field}");
    }
    let order = &orders["components"]["schemas"]["Order"]["properties"];
    for field in ["id", "statut", "total", "timestamp", "lignes"] {
        assert!(order[field].is_object(), "Order.{field}");
    }
    let statuses = &orders["components"]["schemas"]["OrderInput"]["properties"]["statut"]["enum"];
    assert_eq!(
        statuses,
        &serde_json::json!(["EN_ATTENTE", "EN_COURS", "EXPEDIEE", "ANNULEE"])
    );
    // Every operation has a summary.
    for spec in [&products, &orders] {
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
            }
        }
    }
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let app = TestApp::spawn().await;
    for client in [&app.products, &app.orders] {
        let redirect = client.get("/docs").await;
        // reqwest follows the redirect to the UI itself.
        assert_eq!(redirect.status.as_u16(), 200);
        assert!(redirect.body.as_str().unwrap().contains("swagger-ui"));
        client.get("/docs/swagger-ui-bundle.js").await.expect(200);
        client.get("/docs/no-such-file.js").await.expect(404);
        client.get("/docs?url=x").await.expect(404);
    }
}

#[tokio::test]
async fn the_documents_state_every_bound_the_handlers_enforce() {
    let app = TestApp::spawn().await;
    let products = app.products.get("/openapi.json").await.expect(200).body;
    let schema = |spec: &Value, name: &str, property: &str| {
        spec["components"]["schemas"][name]["properties"][property].clone()
    };
    let nom = schema(&products, "ProductCreate", "nom");
    assert_eq!(
        (nom["minLength"].as_i64(), nom["maxLength"].as_i64()),
        (Some(1), Some(200))
    );
    assert!(nom["pattern"].as_str().unwrap().contains("\\u0000"));
    let description = schema(&products, "ProductUpdate", "description");
    assert_eq!(description["maxLength"], 2000);
    assert_eq!(description["nullable"], true);
    assert_eq!(
        schema(&products, "ProductCreate", "prix")["maximum"],
        1_000_000_000
    );
    assert_eq!(
        schema(&products, "ProductCreate", "quantite_en_stock")["maximum"],
        1_000_000_000
    );
    assert_eq!(
        schema(&products, "Product", "description")["nullable"],
        true
    );
    let skip = products["paths"]["/produits/"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "skip")
        .unwrap()
        .clone();
    assert_eq!(skip["schema"]["maximum"], 100_000);
    let orders = app.orders.get("/openapi.json").await.expect(200).body;
    let quantite = schema(&orders, "LineCreate", "quantite");
    assert_eq!(
        (quantite["minimum"].as_i64(), quantite["maximum"].as_i64()),
        (Some(1), Some(1_000_000))
    );
    assert_eq!(schema(&orders, "LineUpdate", "produit_id")["minimum"], 1);
}
