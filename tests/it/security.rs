//! Who may do what: bearer tokens and scopes on every write route and, by
//! default in jwt mode, every read; tokens' age and lifetime capped, EdDSA
//! tokens minted by `ordersys token --private-key`, each access line naming
//! the token's subject; the services' own database roles and broker users,
//! seed-format messages switched off, and TLS to PostgreSQL and RabbitMQ.

use crate::common::auth::{all_scopes_but, jwt, token, JwtApp, SecretFile, ALL_SCOPES, SECRET};
use crate::common::broker::broker_user as user;
use crate::common::process::{binary, Process};
use crate::common::tls::{Protocol, TestCa, TlsFront};
use crate::common::{id, wait_for, Client, TestApp, TestBroker, TestDb};
use diesel::{Connection, PgConnection};
use jsonwebtoken::{encode, EncodingKey, Header};
use ordersys::amqp::PERMISSIONS;
use ordersys::messages::{
    DEAD_LETTER_QUEUE, ORDER_EVENTS_EXCHANGE, ORDER_EVENTS_QUEUE, PRODUCT_EXCHANGE, PRODUCT_QUEUE,
    PRODUCT_ROUTING_KEY,
};
use ordersys::settings::{AuthMode, Settings};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One write route: how to call it, and the scope it needs.
struct Route {
    service: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    scope: &'static str,
}

fn route(
    service: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    scope: &'static str,
) -> Route {
    Route {
        service,
        method,
        path,
        body,
        scope,
    }
}

async fn call(client: &Client, route: &Route) -> crate::common::Answer {
    let body = route.body.as_ref().map(|b| b.to_string().into_bytes());
    let content_type = body.as_ref().map(|_| "application/json");
    client
        .raw(route.method.clone(), &route.path, content_type, body)
        .await
}

/// Every write route with fresh targets, made with `app`'s token that may
/// do everything; and the product whose stock only `stock:correct` sets
/// (to 7), and the one a route deletes.
async fn write_routes(app: &TestApp) -> (Vec<Route>, i64, i64) {
    let mut routes = Vec::new();
    for base in ["/produits/", "/produits"] {
        let body = json!({"nom": "n", "prix": 1.0});
        routes.push(route(
            "products",
            Method::POST,
            base.into(),
            Some(body),
            "products:write",
        ));
    }
    // Spelled with percent-escapes: the router decodes them, so must the check.
    let body = json!({"nom": "n", "prix": 1.0});
    routes.push(route(
        "products",
        Method::POST,
        "/%70roduits/".into(),
        Some(body),
        "products:write",
    ));
    for path in ["/%63ommandes", "/api/v1/%63ommandes"] {
        routes.push(route(
            "orders",
            Method::POST,
            path.into(),
            Some(json!({})),
            "orders:write",
        ));
    }
    let p = app.create_product("p", 1.0, 10).await;
    let encoded_doomed = app.create_product("doomed too", 1.0, 10).await;
    let path = format!("/%70roduits/{encoded_doomed}");
    routes.push(route(
        "products",
        Method::DELETE,
        path,
        None,
        "products:write",
    ));
    let body = Some(json!({"prix": 2.0}));
    routes.push(route(
        "products",
        Method::PUT,
        format!("/produits/{p}"),
        body,
        "products:write",
    ));
    let body = Some(json!({"quantite_en_stock": 7}));
    routes.push(route(
        "products",
        Method::PUT,
        format!("/produits/{p}"),
        body,
        "stock:correct",
    ));
    let doomed = app.create_product("doomed", 1.0, 10).await;
    let path = format!("/produits/{doomed}");
    routes.push(route(
        "products",
        Method::DELETE,
        path,
        None,
        "products:write",
    ));
    for (orders_base, lines_base) in [
        ("/commandes", "/commandes-produits"),
        ("/api/v1/commandes", "/api/v1/commandes_produits"),
    ] {
        routes.extend(order_routes(app, p, orders_base, lines_base).await);
    }
    (routes, p, doomed)
}

/// The write routes of orders and lines under `orders_base` and
/// `lines_base`, on fresh orders and lines of product `p`.
async fn order_routes(app: &TestApp, p: i64, orders_base: &str, lines_base: &str) -> Vec<Route> {
    let write = |method, path: String, body| route("orders", method, path, body, "orders:write");
    let order = app.create_order().await;
    let empty = app.create_order().await;
    let open = app.create_order().await;
    let line = id(&app.create_line(open, p, 1).await);
    let other = id(&app.create_line(open, p, 1).await);
    let new_line = json!({"commande_id": open, "produit_id": p, "quantite": 1});
    vec![
        write(Method::POST, orders_base.into(), Some(json!({}))),
        write(
            Method::PUT,
            format!("{orders_base}/{order}"),
            Some(json!({"statut": "EN_COURS"})),
        ),
        write(Method::DELETE, format!("{orders_base}/{empty}"), None),
        write(Method::POST, lines_base.into(), Some(new_line)),
        write(
            Method::PUT,
            format!("{lines_base}/{line}"),
            Some(json!({"quantite": 2})),
        ),
        write(Method::DELETE, format!("{lines_base}/{other}"), None),
    ]
}

/// The client of `route`'s service among `products` and `orders`.
fn client_of<'a>(route: &Route, products: &'a Client, orders: &'a Client) -> &'a Client {
    match route.service {
        "products" => products,
        _ => orders,
    }
}

#[tokio::test]
async fn every_write_route_answers_401_without_a_token_or_with_a_bad_one_and_changes_nothing() {
    let JwtApp {
        app,
        products,
        orders,
        ..
    } = JwtApp::start().await;
    let (routes, p, doomed) = write_routes(&app).await;
    let other_secret = "another secret, thirty-two bytes or more";
    let bad_tokens = [
        ("wrong signature", token(other_secret, ALL_SCOPES, |_| {})),
        (
            "expired",
            token(SECRET, ALL_SCOPES, |c| {
                c["exp"] = json!(c["iat"].as_u64().unwrap() - 60)
            }),
        ),
        (
            "wrong audience",
            token(SECRET, ALL_SCOPES, |c| c["aud"] = json!("someone-else")),
        ),
        (
            "wrong issuer",
            token(SECRET, ALL_SCOPES, |c| c["iss"] = json!("someone-else")),
        ),
        (
            "no exp",
            token(SECRET, ALL_SCOPES, |c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
    ];
    for route in &routes {
        let client = client_of(route, &products, &orders);
        let what = format!("{} {}", route.method, route.path);
        let answer = call(client, route).await.expect(401);
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="ordersys""#),
            "{what}"
        );
        for (name, bad) in &bad_tokens {
            let answer = call(&client.with_token(bad), route).await.expect(401);
            let challenge = answer.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.contains(r#"error="invalid_token""#),
                "{what} {name}: {challenge}"
            );
            // Nothing says which part of the token was wrong.
            assert_eq!(
                answer.body["detail"], "the bearer token is invalid or expired",
                "{what} {name}"
            );
        }
    }
    // What the refused requests would have done did not happen.
    assert_eq!(app.stock(p), 10, "no refused request set the stock");
    app.products
        .get(&format!("/produits/{doomed}"))
        .await
        .expect(200);
}

#[tokio::test]
async fn every_write_route_answers_403_without_its_scope_and_succeeds_with_it() {
    let JwtApp {
        app,
        products,
        orders,
        ..
    } = JwtApp::start().await;
    let (routes, p, doomed) = write_routes(&app).await;
    for route in &routes {
        let client = client_of(route, &products, &orders);
        let what = format!("{} {}", route.method, route.path);
        // Every scope but the one the route needs.
        let lacking = token(SECRET, &all_scopes_but(route.scope), |_| {});
        let answer = call(&client.with_token(&lacking), route).await.expect(403);
        assert_eq!(
            answer.header("www-authenticate"),
            Some(
                format!(
                    r#"Bearer realm="ordersys", error="insufficient_scope", scope="{}""#,
                    route.scope
                )
                .as_str()
            ),
            "{what}"
        );
        let scopes = match route.scope {
            "stock:correct" => "products:write stock:correct",
            only => only,
        };
        let right = token(SECRET, scopes, |_| {});
        let answer = call(&client.with_token(&right), route).await;
        assert!(
            answer.status.is_success(),
            "{what} with {scopes}: {answer:#?}"
        );
    }
    // What the refused requests would have done did not happen.
    assert_eq!(
        app.stock(p),
        7,
        "only the request with stock:correct set the stock"
    );
    app.products
        .get(&format!("/produits/{doomed}"))
        .await
        .expect(404);
}

#[tokio::test]
async fn eddsa_tokens_verify_with_the_public_key_and_no_other_algorithm_is_trusted() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public = SecretFile::new(&key.public_key_pem());
    let app = TestApp::build(false, |s| {
        s.auth.mode = AuthMode::Jwt;
        s.auth.jwt_algorithm = ordersys::settings::JwtAlgorithm::EdDSA;
        s.auth.jwt_public_key_file = public.path().to_owned();
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": "eddsa", "iss": "ordersys", "aud": "ordersys",
        "iat": now, "exp": now + 60, "scope": "orders:write"
    });
    let signed = encode(
        &Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    app.orders
        .with_token(&signed)
        .post("/commandes", json!({}))
        .await
        .expect(201);
    // The public key used as an HMAC secret (algorithm confusion): refused.
    let confused = encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.public_key_pem().as_bytes()),
    )
    .unwrap();
    app.orders
        .with_token(&confused)
        .post("/commandes", json!({}))
        .await
        .expect(401);
}

#[tokio::test]
async fn reads_need_a_read_token_by_default_in_jwt_mode() {
    let JwtApp {
        app,
        products,
        orders,
        ..
    } = JwtApp::start().await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 1).await);

    // What the attacker review listed (every order, line, product movement
    // and line history), and every other read.
    let (product_read, order_read) = ("products:read", "orders:read");
    let reads = [
        (&products, product_read, "/produits/".to_owned()),
        (&products, product_read, "/produits".to_owned()),
        (&products, product_read, format!("/produits/{p}")),
        (&products, product_read, format!("/produits/{p}/mouvements")),
        (&products, product_read, "/%70roduits/".to_owned()),
        (&orders, order_read, "/commandes".to_owned()),
        (&orders, order_read, format!("/commandes/{order}")),
        (
            &orders,
            order_read,
            "/commandes/statut/EN_ATTENTE".to_owned(),
        ),
        (&orders, order_read, "/commandes-produits".to_owned()),
        (&orders, order_read, format!("/commandes-produits/{line}")),
        (
            &orders,
            order_read,
            format!("/commandes-produits/{line}/historique"),
        ),
        (&orders, order_read, "/api/v1/commandes".to_owned()),
        (
            &orders,
            order_read,
            format!("/api/v1/commandes_produits/{line}/historique"),
        ),
    ];
    for (client, scope, path) in &reads {
        let answer = client.get(path).await.expect(401);
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="ordersys""#),
            "GET {path}"
        );
        assert!(
            answer.body.get("items").is_none() && answer.body.get("id").is_none(),
            "GET {path} without a token leaks: {answer:#?}"
        );
        let head = client.raw(Method::HEAD, path, None, None).await;
        assert_eq!(head.status, 401, "HEAD {path}");
        // Every scope but the one the read needs: writes do not imply reads.
        let lacking = token(SECRET, &all_scopes_but(scope), |_| {});
        let answer = client.with_token(&lacking).get(path).await.expect(403);
        assert_eq!(
            answer.header("www-authenticate"),
            Some(
                format!(r#"Bearer realm="ordersys", error="insufficient_scope", scope="{scope}""#)
                    .as_str()
            ),
            "GET {path}"
        );
        let reader = token(SECRET, scope, |_| {});
        let answer = client.with_token(&reader).get(path).await.expect(200);
        assert!(!answer.body.is_null(), "GET {path}");
    }
    let reader = token(SECRET, "orders:read", |_| {});
    let line_read = orders
        .with_token(&reader)
        .get(&format!("/commandes-produits/{line}"))
        .await
        .expect(200);
    assert_eq!(id(&line_read.body), line);
}

#[tokio::test]
async fn health_metrics_and_docs_stay_open_in_jwt_mode() {
    // The servers run as long as `_app` lives.
    let JwtApp {
        app: _app,
        products,
        orders,
        ..
    } = JwtApp::start().await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/swagger-ui-bundle.js",
    ] {
        products.get(path).await.expect(200);
        orders.get(path).await.expect(200);
    }
}

/// The documented way to open reads again (behind something else that
/// authenticates readers); writes still need their token.
#[tokio::test]
async fn protect_reads_false_opens_reads_but_writes_still_need_a_token() {
    let secret = SecretFile::new(SECRET);
    let app = TestApp::build(false, |s| {
        jwt(s, &secret);
        s.auth.protect_reads = false;
    })
    .await;
    app.products.get("/produits/").await.expect(200);
    app.orders.get("/commandes").await.expect(200);
    app.orders.post("/commandes", json!({})).await.expect(401);
}

#[tokio::test]
async fn the_openapi_documents_declare_the_bearer_scheme_and_each_operation_s_scope() {
    let secret = SecretFile::new(SECRET);
    let app = TestApp::build(false, |s| jwt(s, &secret)).await;
    for (client, read, write) in [
        (&app.products, "products:read", "products:write"),
        (&app.orders, "orders:read", "orders:write"),
    ] {
        let spec = client.get("/openapi.json").await.expect(200).body;
        assert_eq!(
            spec["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let mut guarded = 0;
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let scopes = &op["x-required-scopes"];
                if !path.starts_with("/produits") && !path.contains("commandes") {
                    assert!(scopes.is_null(), "{method} {path} needs no token");
                    assert!(op["responses"].get("401").is_none(), "{method} {path}");
                    continue;
                }
                guarded += 1;
                assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
                let needed = if method == "get" { read } else { write };
                assert_eq!(scopes[0], needed, "{method} {path}");
                assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object());
            }
        }
        assert!(guarded >= 6, "{guarded} guarded operations");
    }
    let spec = app.products.get("/openapi.json").await.body;
    assert_eq!(
        spec["paths"]["/produits/{id}"]["put"]["x-required-scopes"],
        json!(["products:write", "stock:correct"])
    );
    // Open mode: no scheme, no 401.
    let open = TestApp::spawn().await;
    let spec = open.products.get("/openapi.json").await.body;
    assert!(spec["components"]["securitySchemes"].is_null());
    assert!(spec["paths"]["/produits/"]["post"]["responses"]
        .get("401")
        .is_none());
}

#[test]
fn ordersys_token_mints_what_the_services_accept_and_refuses_bad_input() {
    let secret = SecretFile::new(SECRET);
    let run = |args: &[&str], secret_file: &str| {
        std::process::Command::new(binary())
            .args(args)
            .env("ORDERSYS__AUTH__JWT_SECRET_FILE", secret_file)
            .output()
            .unwrap()
    };
    let out = run(
        &[
            "token",
            "--scope",
            "orders:write,stock:correct",
            "--ttl",
            "60",
        ],
        secret.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let settings = ordersys::settings::AuthSettings {
        mode: AuthMode::Jwt,
        jwt_secret_file: secret.path().to_owned(),
        ..Settings::load_from(None, &[], &|_| None).unwrap().auth
    };
    let auth = ordersys::auth::Authenticator::new(&settings).unwrap();
    let caller = auth
        .authenticate(Some(format!("Bearer {}", printed.trim()).as_bytes()))
        .unwrap();
    assert!(caller.may(ordersys::auth::Scope::OrdersWrite));
    assert!(caller.may(ordersys::auth::Scope::StockCorrect));
    assert!(!caller.may(ordersys::auth::Scope::ProductsWrite));

    let out = run(&["token", "--scope", "admin"], secret.path());
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown scope is a usage error"
    );
    let short = SecretFile::new("too short");
    let out = run(&["token", "--scope", "orders:write"], short.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
    // 32 zero bytes, or a short pattern repeated, are no secret.
    for weak in ["\0".repeat(32), "0123456789abcdef".repeat(2)] {
        let weak = SecretFile::new(&weak);
        let out = run(&["token", "--scope", "orders:write"], weak.path());
        let printed = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{printed}");
        assert!(printed.contains("auth.jwt_secret_file"), "{printed}");
        assert!(out.stdout.is_empty());
    }
    // A ten-year token: refused, naming the cap.
    let out = run(
        &["token", "--scope", "orders:write", "--ttl", "315360000"],
        secret.path(),
    );
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("auth.max_token_age_secs (86400)"),
        "{printed}"
    );
    assert!(out.stdout.is_empty());
}

/// An Ed25519 key pair in PEM files: the private key as `openssl genpkey
/// -algorithm ed25519` writes it (PKCS#8), the public key as `openssl pkey
/// -pubout` does.
struct Ed25519 {
    private: SecretFile,
    public: SecretFile,
}

fn ed25519() -> Ed25519 {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Ed25519 {
        private: SecretFile::new(&pair.serialize_pem()),
        public: SecretFile::new(&pair.public_key_pem()),
    }
}

/// `ordersys token`, as the operator runs it: the private key and nothing of
/// the services' settings.
fn mint(key: &SecretFile, scope: &str, subject: &str) -> String {
    let out = std::process::Command::new(binary())
        .args(["token", "--private-key", key.path(), "--scope", scope])
        .args(["--subject", subject, "--ttl", "600"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A service running as a process, its log captured, and a client of it.
struct Served {
    client: Client,
    process: Process,
}

/// products and orders as processes in jwt mode with EdDSA: they hold the
/// public key only.
async fn serve_eddsa(db: &TestDb, broker: &TestBroker, public: &SecretFile) -> (Served, Served) {
    let settings = crate::common::settings(db, broker);
    let env = [
        ("ORDERSYS__AUTH__MODE", "jwt"),
        ("ORDERSYS__AUTH__JWT_ALGORITHM", "EdDSA"),
        ("ORDERSYS__AUTH__JWT_PUBLIC_KEY_FILE", public.path()),
        ("RUST_LOG", "info"),
    ];
    let serve = |mode| {
        let process = Process::serve_capturing(&settings, mode, &env);
        let client = Client::new_at(process.addr());
        Served { client, process }
    };
    let (products, orders) = (serve("products"), serve("orders"));
    products.process.wait_ready().await;
    orders.process.wait_ready().await;
    (products, orders)
}

/// The access line of `process` that contains `needle`, once it is written.
async fn access_line(process: &Process, what: &str, needle: &str) -> String {
    wait_for(what, Duration::from_secs(10), || async {
        process
            .stderr()
            .lines()
            .find(|l| l.contains("ordersys::access") && l.contains(needle))
            .map(str::to_owned)
    })
    .await
}

/// The access lines of the eddsa test's requests: each names the subject of
/// its verified token, a refusal none.
async fn each_access_line_names_its_subject(products: &Process, orders: &Process, p: i64) {
    // Every authenticated request's access line names the token's subject.
    let written = access_line(
        orders,
        "the write's access line",
        "request_id=written-by-alice",
    )
    .await;
    assert!(written.contains("POST /commandes 201"), "{written}");
    assert!(written.contains("sub=alice"), "{written}");
    let read = access_line(
        products,
        "the read's access line",
        &format!("GET /produits/{p} 200"),
    )
    .await;
    assert!(read.contains("sub=bob"), "{read}");
    let created = access_line(products, "the product's access line", "POST /produits/ 201").await;
    assert!(created.contains("sub=alice"), "{created}");
    // A refused token names no one: its subject was never verified.
    let refused = access_line(
        orders,
        "the refusal's access line",
        "request_id=forged-by-mallory",
    )
    .await;
    assert!(refused.contains("POST /commandes 401"), "{refused}");
    assert!(!refused.contains("sub="), "{refused}");
}

#[tokio::test]
async fn eddsa_tokens_from_ordersys_token_open_the_apis_and_each_access_line_names_the_subject() {
    let db = TestDb::migrated();
    let broker = TestBroker::create();
    let (issuer, stranger) = (ed25519(), ed25519());
    let writer = mint(
        &issuer.private,
        "products:write,orders:write,orders:read",
        "alice",
    );
    let reader = mint(&issuer.private, "products:read", "bob");
    let forged = mint(&stranger.private, ALL_SCOPES, "mallory");
    let (products, orders) = serve_eddsa(&db, &broker, &issuer.public).await;
    let (as_writer, as_reader) = (
        products.client.with_token(&writer),
        products.client.with_token(&reader),
    );

    let p = as_writer
        .post("/produits/", json!({"nom": "n", "prix": 1.0}))
        .await
        .expect(201);
    let p = id(&p.body);
    products.client.get("/produits/").await.expect(401);
    // products:write does not read.
    as_writer.get("/produits/").await.expect(403);
    let listed = as_reader.get(&format!("/produits/{p}")).await.expect(200);
    assert_eq!(id(&listed.body), p);
    let order = orders
        .client
        .with_token(&writer)
        .with_header("X-Request-Id", "written-by-alice")
        .post("/commandes", json!({}))
        .await
        .expect(201);
    let order = id(&order.body);
    let path = format!("/commandes/{order}");
    orders
        .client
        .with_token(&writer)
        .get(&path)
        .await
        .expect(200);
    // Signed by another key: refused, and nothing is written.
    orders
        .client
        .with_token(&forged)
        .with_header("X-Request-Id", "forged-by-mallory")
        .post("/commandes", json!({}))
        .await
        .expect(401);
    assert_eq!(db.count("SELECT count(*) AS n FROM commandes"), 1);

    each_access_line_names_its_subject(&products.process, &orders.process, p).await;
}

#[tokio::test]
async fn a_forged_seed_format_message_is_dead_lettered_where_that_format_is_off() {
    let app = TestApp::build(true, |s| s.worker.accept_seed_format = false).await;
    let p = app.create_product("p", 1.0, 10).await;
    let seed = json!({"action": "CREATED", "produit_id": p, "quantite": 4, "commande_id": 1});
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        seed.to_string().as_bytes(),
        None,
    );
    wait_for("the dead letter", Duration::from_secs(20), || async {
        (app.broker.ready(DEAD_LETTER_QUEUE) == 1).then_some(())
    })
    .await;
    let (body, properties) = app.broker.drain(DEAD_LETTER_QUEUE).remove(0);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), seed);
    let reason = format!("{:?}", properties.headers());
    assert!(reason.contains("accept_seed_format"), "{reason}");
    assert_eq!(app.stock(p), 10, "the forged message changed no stock");
    // ordersys's own messages still flow.
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 3).await);
    app.wait_for_line(line, "RESERVE").await;
    assert_eq!(app.stock(p), 7);
}

#[tokio::test]
async fn each_service_runs_the_life_of_a_line_and_a_product_as_its_own_role() {
    let app = TestApp::as_own_roles(true).await;
    let p = app.create_product("p", 2.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 3).await);
    app.wait_for_line(line, "RESERVE").await;
    assert_eq!(app.stock(p), 7);
    app.orders
        .put(&format!("/commandes/{order}"), json!({"statut": "ANNULEE"}))
        .await
        .expect(200);
    app.wait_for_line(line, "LIBERE").await;
    assert_eq!(app.stock(p), 10);
    app.products
        .put(
            &format!("/produits/{p}"),
            json!({"quantite_en_stock": 12, "prix": 3.0}),
        )
        .await
        .expect(200);
    app.orders
        .delete(&format!("/commandes/{order}"))
        .await
        .expect(204);
    // Its movements go with it (the foreign key acts as the owner).
    app.products
        .delete(&format!("/produits/{p}"))
        .await
        .expect(204);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM mouvements"), 0);
}

/// A validation confirmed, and one refused and compensated: the saga runs
/// on the orders role, the line events leave through the worker's.
#[tokio::test]
async fn validations_confirm_and_compensate_with_each_service_as_its_own_role() {
    let app = TestApp::as_own_roles(true).await;
    let q = app.create_product("q", 1.0, 5).await;
    let (ok, short) = (app.create_order().await, app.create_order().await);
    app.create_line(ok, q, 2).await;
    let big = id(&app.create_line(short, q, 9).await);
    app.wait_for_line(big, "REJETE").await;
    for o in [ok, short] {
        app.orders
            .post(&format!("/commandes/{o}/validation"), json!({}))
            .await
            .expect(202);
    }
    let orders = &app.orders;
    let state = |o: i64| async move {
        let order = orders
            .get(&format!("/commandes/{o}"))
            .await
            .expect(200)
            .body;
        (order["validation"] != "EN_COURS").then_some(order["validation"].clone())
    };
    let ended = wait_for(
        "both validations to end",
        Duration::from_secs(30),
        || async { Some((state(ok).await?, state(short).await?)) },
    )
    .await;
    assert_eq!(ended, (json!("CONFIRMEE"), json!("REFUSEE")));
    app.wait_for_line(big, "LIBERE").await;
    assert_eq!(app.stock(q), 3);
}

#[test]
fn no_service_role_may_change_the_schema_or_other_roles() {
    let db = TestDb::migrated();
    for who in ["ordersys_products", "ordersys_orders", "ordersys_worker"] {
        for sql in [
            "DROP TABLE outbox",
            "CREATE TABLE intruder (id int)",
            "CREATE DATABASE intruder",
            "TRUNCATE produits",
            "CREATE ROLE intruder",
            "DELETE FROM __diesel_schema_migrations",
        ] {
            let refused = db
                .run_as(who, sql)
                .expect_err(&format!("{who} may not: {sql}"));
            assert!(
                refused.contains("permission denied") || refused.contains("must be owner"),
                "{who}: {sql}: {refused}"
            );
        }
    }
}

#[test]
fn each_service_role_may_not_touch_the_other_services_tables() {
    let db = TestDb::migrated();
    for (who, sql) in [
        ("ordersys_products", "SELECT count(*) FROM outbox"),
        (
            "ordersys_products",
            "UPDATE commandes SET statut = 'ANNULEE'",
        ),
        (
            "ordersys_products",
            "INSERT INTO mouvements (produit_id, action, delta) VALUES (1, 'CREATED', 1)",
        ),
        ("ordersys_products", "DELETE FROM reservations"),
        (
            "ordersys_orders",
            "UPDATE produits SET quantite_en_stock = 0",
        ),
        ("ordersys_orders", "DELETE FROM produits"),
        ("ordersys_orders", "DELETE FROM mouvements"),
        ("ordersys_orders", "SELECT count(*) FROM messages_traites"),
        ("ordersys_worker", "UPDATE produits SET prix = 0"),
        ("ordersys_worker", "DELETE FROM produits"),
        (
            "ordersys_worker",
            "UPDATE commandes_produits SET quantite = 1",
        ),
        ("ordersys_worker", "DELETE FROM commandes"),
        (
            "ordersys_worker",
            "UPDATE commandes SET validation = 'CONFIRMEE'",
        ),
        (
            "ordersys_worker",
            "UPDATE validation_lignes SET resultat = 'RESERVE'",
        ),
        ("ordersys_worker", "DELETE FROM evenements_traites"),
        // The stock partitions' leases are the workers' alone: no API may
        // take a partition away from them.
        (
            "ordersys_orders",
            "UPDATE partitions_stock SET worker = NULL",
        ),
        ("ordersys_products", "DELETE FROM workers_stock"),
        (
            "ordersys_products",
            "SELECT count(*) FROM validation_lignes",
        ),
    ] {
        let refused = db
            .run_as(who, sql)
            .expect_err(&format!("{who} may not: {sql}"));
        assert!(
            refused.contains("permission denied"),
            "{who}: {sql}: {refused}"
        );
    }
}

/// The shared outbox: each service may write only its own kind of row (the
/// worker cannot have the orders relay publish a stock change).
#[test]
fn each_service_role_may_write_only_its_own_kind_of_outbox_row() {
    let db = TestDb::migrated();
    for (who, exchange) in [
        ("ordersys_worker", "product_exchange"),
        ("ordersys_orders", "stock_alerts"),
        ("ordersys_orders", "order_events"),
    ] {
        let sql = format!(
            "INSERT INTO outbox (message_id, exchange, routing_key, payload) \
             VALUES ('{}', '{exchange}', 'product.update', '{{}}')",
            uuid::Uuid::new_v4()
        );
        let refused = db
            .run_as(who, &sql)
            .expect_err(&format!("{who} may not: {sql}"));
        assert!(
            refused.contains("row-level security"),
            "{who}: {sql}: {refused}"
        );
    }
}

#[tokio::test]
async fn a_service_that_may_not_migrate_waits_for_ordersys_migrate_which_sets_role_passwords() {
    let db = TestDb::empty();
    let broker = TestBroker::create();
    let mut settings = crate::common::settings(&db, &broker);
    settings.database.migrate_on_start = false;
    settings.database.url = db.url_as("ordersys_products");
    let products = Process::serve_capturing(
        &settings,
        "products",
        &[("ORDERSYS__DATABASE__MIGRATE_ON_START", "false")],
    );
    let client = Client::new_at(products.addr());
    let waiting = wait_for(
        "products to say it waits",
        Duration::from_secs(20),
        || async {
            match client.try_get("/readyz").await {
                Some((503, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        waiting["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not migrated yet"),
        "{waiting}"
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM pg_tables WHERE tablename = 'produits'"),
        0
    );
    wait_for(
        "products to log why it waits",
        Duration::from_secs(20),
        || async {
            products
                .stderr()
                .contains("waiting for `ordersys migrate`")
                .then_some(())
        },
    )
    .await;

    let password = SecretFile::new("s3cret with spaces, 'quotes' and \\ too\n");
    let out = std::process::Command::new(binary())
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("ORDERSYS__MIGRATE__PRODUCTS_PASSWORD_FILE", password.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    products.wait_ready().await;
    client
        .post("/produits/", json!({"nom": "n", "prix": 1.0}))
        .await
        .expect(201);
    // Only a SCRAM verifier reached the server, never the password.
    assert_eq!(
        db.count("SELECT count(*) AS n FROM pg_authid WHERE rolname = 'ordersys_products' AND rolpassword LIKE 'SCRAM-SHA-256$%'"),
        1
    );
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(!printed.contains("s3cret"), "{printed}");
}

fn refused(result: Result<(), amiquip::Error>, what: &str) {
    match result {
        Err(amiquip::Error::ServerClosedChannel { code: 403, .. }) => {}
        other => panic!("{what}: expected ACCESS_REFUSED (403), got {other:?}"),
    }
}

/// Connects as the user of `url`, runs `f` on a fresh channel.
fn as_user(
    url: &str,
    f: impl FnOnce(&amiquip::Channel) -> Result<(), amiquip::Error>,
) -> Result<(), amiquip::Error> {
    let settings = ordersys::settings::AmqpSettings {
        url: url.to_owned(),
        ..Settings::load_from(None, &[], &|_| None).unwrap().amqp
    };
    let mut connection = ordersys::amqp::connect(&settings, "ordersys-tests").expect("connect");
    let channel = connection.open_channel(None)?;
    let result = f(&channel);
    let _ = connection.close();
    result
}

/// Publishes to `exchange` and waits for the broker's confirm.
fn publish_confirmed(channel: &amiquip::Channel, exchange: &str) -> Result<(), amiquip::Error> {
    channel.enable_publisher_confirms()?;
    let confirms = channel.listen_for_publisher_confirms()?;
    channel.basic_publish(exchange, amiquip::Publish::new(b"{}", "nowhere"))?;
    match confirms.recv_timeout(Duration::from_secs(5)) {
        Ok(amiquip::Confirm::Ack(_)) => Ok(()),
        // A refused publish closes the channel instead of confirming: the
        // next call on it returns the broker's reason.
        _ => channel.qos(0, 1, false),
    }
}

#[tokio::test]
async fn the_pipeline_and_the_saga_run_on_the_services_own_broker_users() {
    let app = TestApp::on_broker_users().await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 6).await);
    app.wait_for_line(line, "RESERVE").await;
    assert_eq!(app.stock(p), 4);
    // The STOCK_BAS alert leaves through the worker's own relay (its user
    // may publish alerts, the orders relay's may not), and nothing stays
    // unsent in the shared outbox.
    let alert = wait_for("the stock alert", Duration::from_secs(20), || async {
        let ready = app.broker.ready(ordersys::messages::ALERTS_QUEUE);
        (ready == 1).then(|| app.broker.drain(ordersys::messages::ALERTS_QUEUE))
    })
    .await;
    let alert: Value = serde_json::from_slice(&alert[0].0).unwrap();
    assert_eq!(alert["event"], "STOCK_BAS");
    wait_for("the outbox to be sent", Duration::from_secs(20), || async {
        (app.db
            .count("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL")
            == 0)
            .then_some(())
    })
    .await;
    let second = id(&app.create_line(order, p, 1).await);
    app.wait_for_line(second, "RESERVE").await;
    // The saga: orders consumes order_events, the worker publishes them.
    app.orders
        .post(&format!("/commandes/{order}/validation"), json!({}))
        .await
        .expect(202);
    wait_for(
        "the validation to be confirmed",
        Duration::from_secs(30),
        || async {
            let body = app
                .orders
                .get(&format!("/commandes/{order}"))
                .await
                .expect(200)
                .body;
            (body["validation"] == "CONFIRMEE").then_some(())
        },
    )
    .await;
    // orders may dead-letter an unreadable line event.
    app.broker.publish(
        ORDER_EVENTS_EXCHANGE,
        ordersys::messages::ORDER_EVENTS_ROUTING_KEY,
        b"not json",
        Some(&uuid::Uuid::new_v4().to_string()),
    );
    wait_for(
        "the unreadable event's dead letter",
        Duration::from_secs(30),
        || async {
            let dlq = ordersys::messages::ORDER_EVENTS_DEAD_LETTER_QUEUE;
            (app.broker.ready(dlq) == 1).then_some(())
        },
    )
    .await;
}

#[test]
fn each_broker_user_may_only_do_its_part() {
    let broker = TestBroker::create();
    broker.declare_as_migrate(&broker.settings());
    let migrate = broker.user_url(user("ordersys_migrate"));
    let orders = broker.user_url(user("ordersys_orders"));
    let worker = broker.user_url(user("ordersys_worker"));
    as_user(&orders, |c| publish_confirmed(c, PRODUCT_EXCHANGE)).expect("orders publishes changes");
    type Attempt = Box<dyn Fn(&amiquip::Channel) -> Result<(), amiquip::Error>>;
    let consume: Attempt = Box::new(|c| {
        c.basic_consume(PRODUCT_QUEUE, Default::default())
            .map(|_| ())
    });
    let declare: Attempt = Box::new(|c| c.queue_declare("mine", Default::default()).map(|_| ()));
    let alert: Attempt = Box::new(|c| publish_confirmed(c, "stock_alerts"));
    let forge: Attempt = Box::new(|c| publish_confirmed(c, PRODUCT_EXCHANGE));
    let dead_letters: Attempt = Box::new(|c| c.basic_get(DEAD_LETTER_QUEUE, false).map(|_| ()));
    let forge_event: Attempt = Box::new(|c| publish_confirmed(c, ORDER_EVENTS_EXCHANGE));
    let take_events: Attempt = Box::new(|c| {
        c.basic_consume(ORDER_EVENTS_QUEUE, Default::default())
            .map(|_| ())
    });
    for (url, attempt, what) in [
        (&orders, &consume, "orders consumes"),
        (&orders, &declare, "orders declares"),
        (&orders, &alert, "orders publishes alerts"),
        (&worker, &forge, "the worker forges a change"),
        (&worker, &declare, "the worker declares"),
        (&worker, &dead_letters, "the worker reads dead letters"),
        (&orders, &forge_event, "orders forges a line event"),
        (&worker, &take_events, "the worker consumes line events"),
    ] {
        refused(as_user(url, attempt), what);
    }
    as_user(&worker, |c| c.basic_get(PRODUCT_QUEUE, false).map(|_| ()))
        .expect("the worker consumes");
    refused(
        as_user(&migrate, |c| {
            c.queue_declare("elsewhere", Default::default()).map(|_| ())
        }),
        "migrate declares a stranger",
    );
}

#[test]
fn the_swarm_secrets_grant_the_broker_users_exactly_these_permissions() {
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/swarm/create-secrets.sh"
        ))
        .arg("--definitions")
        .env("RABBITMQ_ORDERS_PASSWORD", "p@ss w:rd/é")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("p@ss"), "only hashes are written");
    let definitions: Value = serde_json::from_str(&printed).unwrap();
    let users = definitions["users"].as_array().unwrap();
    let permissions = definitions["permissions"].as_array().unwrap();
    assert_eq!(users.len(), PERMISSIONS.len(), "no other user: {users:?}");
    assert_eq!(permissions.len(), PERMISSIONS.len(), "{permissions:?}");
    for user in PERMISSIONS {
        let entry = users
            .iter()
            .find(|u| u["name"] == user.name)
            .unwrap_or_else(|| panic!("{}", user.name));
        assert_eq!(entry["tags"], "", "{} is no administrator", user.name);
        assert_eq!(entry["hashing_algorithm"], "rabbit_password_hashing_sha256");
        let granted = permissions.iter().find(|p| p["user"] == user.name).unwrap();
        assert_eq!(
            (
                &granted["vhost"],
                &granted["configure"],
                &granted["write"],
                &granted["read"]
            ),
            (
                &json!("/"),
                &json!(user.configure),
                &json!(user.write),
                &json!(user.read)
            ),
            "{}",
            user.name
        );
    }
}

/// A CA file's path, as a URL query value.
fn url_encoded(path: &std::path::Path) -> String {
    url::form_urlencoded::byte_serialize(path.to_str().unwrap().as_bytes()).collect()
}

/// Settings that reach RabbitMQ and PostgreSQL through the TLS fronts only,
/// verifying their certificates against `ca`.
fn tls_settings(
    ca: &TestCa,
    db: &TestDb,
    broker: &TestBroker,
    mq: &TlsFront,
    pg: &TlsFront,
) -> Settings {
    let mut settings = crate::common::settings(db, broker);
    let encoded_ca = url_encoded(&ca.ca_file);
    settings.amqp.url = format!(
        "amqps://guest:guest@localhost:{}/{}?cacertfile={encoded_ca}",
        mq.addr.port(),
        broker.vhost
    );
    settings.database.url = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={encoded_ca}",
        pg.addr.port(),
        db.name
    );
    settings
}

/// Runs products, orders and a worker as processes (TLS stays out of the
/// test process's own libraries) and has a line reserved: 4 of 10 in stock.
async fn reserve_a_line(settings: &Settings) {
    let products = Process::serve(settings, "products", &[]);
    let orders = Process::serve(settings, "orders", &[]);
    let worker = Process::serve(settings, "worker", &[("ORDERSYS__WORKER__REPLICAS", "1")]);
    for process in [&products, &orders, &worker] {
        process.wait_ready().await;
    }
    let products = Client::new_at(products.addr());
    let orders = Client::new_at(orders.addr());
    let product = json!({"nom": "p", "prix": 1.0, "quantite_en_stock": 10});
    let p = id(&products.post("/produits/", product).await.expect(201).body);
    let order = id(&orders.post("/commandes", json!({})).await.expect(201).body);
    let line = json!({"commande_id": order, "produit_id": p, "quantite": 4});
    let line = id(&orders
        .post("/commandes-produits", line)
        .await
        .expect(201)
        .body);
    wait_for(
        "the line to be reserved over TLS",
        Duration::from_secs(30),
        || async {
            let (_, body) = orders
                .try_get(&format!("/commandes-produits/{line}"))
                .await?;
            (body["statut_stock"] == "RESERVE").then_some(())
        },
    )
    .await;
    let stock = products
        .get(&format!("/produits/{p}"))
        .await
        .expect(200)
        .body;
    assert_eq!(stock["quantite_en_stock"], 6);
}

/// The sslmode settings pass through: in the clear the PostgreSQL front
/// refuses, and a certificate from an unknown CA fails verification, the
/// database's and the broker's alike.
fn clear_and_unverifiable_connections_are_refused(
    ca: &TestCa,
    db: &TestDb,
    broker: &TestBroker,
    mq: &TlsFront,
    pg: &TlsFront,
) {
    let clear = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=disable",
        pg.addr.port(),
        db.name
    );
    assert!(
        PgConnection::establish(&clear).is_err(),
        "a client in the clear is refused"
    );
    let stranger = url_encoded(&ca.stranger_ca_file);
    let unverified = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={stranger}",
        pg.addr.port(),
        db.name
    );
    let out = std::process::Command::new(binary())
        .arg("migrate")
        .env("DATABASE_URL", &unverified)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unverifiable server certificate is refused"
    );
    let mq_stranger = format!(
        "amqps://guest:guest@localhost:{}/{}?cacertfile={stranger}",
        mq.addr.port(),
        broker.vhost
    );
    let out = std::process::Command::new(binary())
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("AMQP_URL", &mq_stranger)
        .env("ORDERSYS__MIGRATE__DECLARE_TOPOLOGY", "true")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the broker's certificate is checked: {printed}"
    );
    assert!(printed.contains("cannot connect to RabbitMQ"), "{printed}");
    assert!(printed.contains("certificate"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_postgres_tls_carry_the_whole_pipeline() {
    let ca = TestCa::new();
    let db = TestDb::migrated();
    let broker = TestBroker::create();
    let mq_front = TlsFront::start(&ca, Protocol::Direct, "127.0.0.1:5672".parse().unwrap()).await;
    let pg_front =
        TlsFront::start(&ca, Protocol::Postgres, "127.0.0.1:5432".parse().unwrap()).await;
    let settings = tls_settings(&ca, &db, &broker, &mq_front, &pg_front);
    reserve_a_line(&settings).await;
    assert!(
        mq_front.handshakes() >= 2,
        "relay and consumer connected over TLS"
    );
    assert!(
        pg_front.handshakes() >= 3,
        "every process connected over TLS"
    );
    clear_and_unverifiable_connections_are_refused(&ca, &db, &broker, &mq_front, &pg_front);
}

#[test]
fn no_debug_output_prints_a_password() {
    let settings = Settings::load_from(None, &[], &|name| match name {
        "DATABASE_URL" => Some("postgres://svc:hunter2@db/x?password=hunter3".into()),
        "AMQP_URL" => Some("amqp://svc:hunter4@mq/%2f".into()),
        _ => None,
    })
    .unwrap();
    let printed = format!("{settings:?}");
    for secret in ["hunter2", "hunter3", "hunter4"] {
        assert!(!printed.contains(secret), "{printed}");
    }
    assert!(
        printed.contains("svc"),
        "the rest is still there: {printed}"
    );
}
