//! Bearer tokens for the tests of jwt mode: a shared secret in a file, tokens
//! signed with it (their claims adjustable), and products and orders started
//! in jwt mode with a token that may do everything.

use crate::{Client, TestApp};
use jsonwebtoken::{encode, EncodingKey, Header};
use ordersys::settings::{AuthMode, Settings};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The HS256 secret of [`JwtApp`].
pub const SECRET: &str = "a test secret of at least thirty-two bytes";

/// Every scope the services know.
pub const ALL_SCOPES: &str = "products:read products:write stock:correct orders:read orders:write";

/// A secret (or key) file that lives as long as the test.
pub struct SecretFile(PathBuf);

impl SecretFile {
    pub fn new(content: &str) -> SecretFile {
        let path = std::env::temp_dir().join(format!("ordersys-secret-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, content).unwrap();
        SecretFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// jwt mode with HS256 and `secret`, every other auth setting its default.
pub fn jwt(settings: &mut Settings, secret: &SecretFile) {
    settings.auth.mode = AuthMode::Jwt;
    settings.auth.jwt_secret_file = secret.path().to_owned();
    settings.auth.leeway_secs = 0;
}

/// A token signed with `secret`, its claims adjusted by `claims`.
pub fn token(secret: &str, scope: &str, claims: impl FnOnce(&mut Value)) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut body = json!({
        "sub": "tests", "iss": "ordersys", "aud": "ordersys",
        "iat": now, "exp": now + 600, "scope": scope
    });
    claims(&mut body);
    encode(
        &Header::default(),
        &body,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Every scope but `scope`: what a token lacking just that one holds.
pub fn all_scopes_but(scope: &str) -> String {
    let others: Vec<&str> = ALL_SCOPES.split(' ').filter(|s| *s != scope).collect();
    others.join(" ")
}

/// products and orders in jwt mode with [`SECRET`]: `app`'s clients carry a
/// token with [`ALL_SCOPES`] (to make what a test needs), `products` and
/// `orders` carry none.
pub struct JwtApp {
    pub app: TestApp,
    pub products: Client,
    pub orders: Client,
    pub secret: SecretFile,
}

impl JwtApp {
    pub async fn start() -> JwtApp {
        let secret = SecretFile::new(SECRET);
        let mut app = TestApp::build(false, |s| jwt(s, &secret)).await;
        let admin = token(SECRET, ALL_SCOPES, |_| {});
        let (products, orders) = (app.products.clone(), app.orders.clone());
        app.products = products.with_token(&admin);
        app.orders = orders.with_token(&admin);
        JwtApp {
            app,
            products,
            orders,
            secret,
        }
    }
}
