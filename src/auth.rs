//! Who may do what: the scopes of the APIs, and bearer JWTs that carry them
//! (RFC 6750, RFC 7519), verified with `jsonwebtoken`.
//!
//! The algorithm is fixed by configuration (`auth.jwt_algorithm`), never
//! taken from a token's header; `iss`, `aud` and `exp` are required and
//! checked, `nbf` when present, with `auth.leeway_secs` of clock skew.
//! Scopes travel in the `scope` claim, space-separated (RFC 8693 §4.2).

use crate::settings::{AuthMode, AuthSettings, JwtAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A right a token may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    ProductsRead,
    ProductsWrite,
    /// Setting a product's `quantite_en_stock` directly (an inventory
    /// correction), on top of `products:write`.
    StockCorrect,
    OrdersRead,
    OrdersWrite,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[
        Scope::ProductsRead,
        Scope::ProductsWrite,
        Scope::StockCorrect,
        Scope::OrdersRead,
        Scope::OrdersWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProductsRead => "products:read",
            Scope::ProductsWrite => "products:write",
            Scope::StockCorrect => "stock:correct",
            Scope::OrdersRead => "orders:read",
            Scope::OrdersWrite => "orders:write",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.iter().copied().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scopes one API's routes need: `read` for GET and HEAD (when reads
/// are protected), `write` for every other method but OPTIONS. Deny by
/// default: every path is guarded but the few every mode serves to anyone
/// (health, metrics, the docs), so a route added later, an alias or an
/// oddly spelled path cannot slip past.
#[derive(Debug, Clone, Copy)]
pub struct ApiScopes {
    pub read: Scope,
    pub write: Scope,
}

impl ApiScopes {
    /// The scope a request needs, if any; `open` tells whether its path is
    /// one of those served to anyone.
    pub fn required(&self, method: &str, open: bool, protect_reads: bool) -> Option<Scope> {
        if open {
            return None;
        }
        match method {
            "GET" | "HEAD" => protect_reads.then_some(self.read),
            "OPTIONS" => None,
            _ => Some(self.write),
        }
    }
}

/// Who sent a request, as far as authorization goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `auth.mode = "open"`: everyone may do everything.
    Anyone,
    /// The holder of a valid token.
    Token { subject: String, scopes: Vec<Scope> },
}

impl Caller {
    pub fn may(&self, scope: Scope) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token { scopes, .. } => scopes.contains(&scope),
        }
    }
}

/// Why a request was not authenticated. What exactly was wrong with a
/// token is only logged (at debug level), never told to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No bearer token (or another authentication scheme).
    #[error("a bearer token is required")]
    Missing,
    /// A token that does not verify: bad signature, expired, wrong issuer
    /// or audience, malformed.
    #[error("the bearer token is invalid or expired")]
    Invalid,
}

/// The claims ordersys reads once a token has verified (`iss`, `aud`,
/// `exp`, `nbf` are checked by `jsonwebtoken`).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    scope: String,
}

/// The claims of a token ordersys mints.
#[derive(Debug, Serialize)]
struct NewClaims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    scope: String,
}

/// Verifies bearer tokens (and mints them, with an HS256 secret).
pub struct Authenticator {
    mode: AuthMode,
    protect_reads: bool,
    verify: Option<(DecodingKey, Validation)>,
    mint: Option<(EncodingKey, String, String)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("protect_reads", &self.protect_reads)
            .finish_non_exhaustive()
    }
}

/// A key file that cannot be used, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct KeyError {
    key: &'static str,
    problem: String,
}

/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

impl Authenticator {
    /// Reads the key files `settings` name. In open mode nothing is read
    /// unless a secret file is given (so that `ordersys token` works).
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, KeyError> {
        let mut authenticator = Authenticator {
            mode: settings.mode,
            protect_reads: settings.protect_reads,
            verify: None,
            mint: None,
        };
        let wanted = settings.mode == AuthMode::Jwt;
        let (algorithm, decoding) = match settings.jwt_algorithm {
            JwtAlgorithm::HS256 if wanted || !settings.jwt_secret_file.is_empty() => {
                let secret = read_secret(settings)?;
                authenticator.mint = Some((
                    EncodingKey::from_secret(&secret),
                    settings.issuer.clone(),
                    settings.audience.clone(),
                ));
                (Algorithm::HS256, DecodingKey::from_secret(&secret))
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA if wanted => {
                let key = "auth.jwt_public_key_file";
                let pem = std::fs::read(&settings.jwt_public_key_file).map_err(|e| KeyError {
                    key,
                    problem: format!("cannot read {}: {e}", settings.jwt_public_key_file),
                })?;
                let parsed = match settings.jwt_algorithm {
                    JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                };
                let decoding = parsed.map_err(|e| KeyError {
                    key,
                    problem: format!("not a PEM public key for {:?}: {e}", settings.jwt_algorithm),
                })?;
                let algorithm = match settings.jwt_algorithm {
                    JwtAlgorithm::RS256 => Algorithm::RS256,
                    _ => Algorithm::EdDSA,
                };
                (algorithm, decoding)
            }
            _ => return Ok(authenticator),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        authenticator.verify = Some((decoding, validation));
        Ok(authenticator)
    }

    /// Everyone may do everything (tests of other concerns, `auth.mode = "open"`).
    pub fn open() -> Authenticator {
        Authenticator {
            mode: AuthMode::Open,
            protect_reads: false,
            verify: None,
            mint: None,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn protect_reads(&self) -> bool {
        self.protect_reads
    }

    /// Who sent a request with this `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthFailure> {
        let Some((decoding, validation)) =
            self.verify.as_ref().filter(|_| self.mode == AuthMode::Jwt)
        else {
            return Ok(Caller::Anyone);
        };
        let token = authorization
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(bearer_token)
            .ok_or(AuthFailure::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, decoding, validation).map_err(|e| {
            log::debug!("bearer token refused: {e}");
            AuthFailure::Invalid
        })?;
        Ok(Caller::Token {
            subject: data.claims.sub,
            scopes: data
                .claims
                .scope
                .split_ascii_whitespace()
                .filter_map(Scope::parse)
                .collect(),
        })
    }

    /// A signed token for `subject` with `scopes`, valid for `ttl`.
    pub fn mint(&self, subject: &str, scopes: &[Scope], ttl: Duration) -> Result<String, String> {
        let (key, issuer, audience) = self.mint.as_ref().ok_or_else(|| {
            "minting needs an HS256 secret: set auth.jwt_secret_file (ORDERSYS__AUTH__JWT_SECRET_FILE)"
                .to_owned()
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = NewClaims {
            sub: subject,
            iss: issuer,
            aud: audience,
            iat: now,
            exp: now + ttl.as_secs(),
            scope: scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| e.to_string())
    }
}

fn read_secret(settings: &AuthSettings) -> Result<Vec<u8>, KeyError> {
    let key = "auth.jwt_secret_file";
    let path = &settings.jwt_secret_file;
    let mut secret = std::fs::read(path).map_err(|e| KeyError {
        key,
        problem: format!("cannot read {path}: {e}"),
    })?;
    while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError {
            key,
            problem: format!(
                "the secret in {path} has {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                secret.len()
            ),
        });
    }
    Ok(secret)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Parses `--scope a,b` (commas or spaces).
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    text.split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {s:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, secret: &str) -> AuthSettings {
        let file = dir.join("secret");
        std::fs::write(&file, secret).unwrap();
        AuthSettings {
            mode: AuthMode::Jwt,
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret_file: file.to_string_lossy().into_owned(),
            jwt_public_key_file: String::new(),
            issuer: "ordersys".into(),
            audience: "ordersys".into(),
            leeway_secs: 0,
            protect_reads: false,
        }
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ordersys-auth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef\n";

    #[test]
    fn a_minted_token_verifies_with_its_scopes() {
        let auth = Authenticator::new(&settings(&dir("mint"), SECRET)).unwrap();
        let token = auth
            .mint(
                "ci",
                &[Scope::ProductsWrite, Scope::StockCorrect],
                Duration::from_secs(60),
            )
            .unwrap();
        let caller = auth
            .authenticate(Some(format!("Bearer {token}").as_bytes()))
            .unwrap();
        assert!(caller.may(Scope::ProductsWrite) && caller.may(Scope::StockCorrect));
        assert!(!caller.may(Scope::OrdersWrite));
        assert_eq!(
            auth.authenticate(Some(format!("bearer  {token} ").as_bytes()))
                .unwrap(),
            caller
        );
    }

    #[test]
    fn missing_foreign_and_broken_tokens_are_refused() {
        let dir = dir("refuse");
        let auth = Authenticator::new(&settings(&dir, SECRET)).unwrap();
        assert_eq!(auth.authenticate(None), Err(AuthFailure::Missing));
        assert_eq!(
            auth.authenticate(Some(b"Basic dXNlcjpwdw==")),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer ")),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer not.a.token")),
            Err(AuthFailure::Invalid)
        );
        let other =
            Authenticator::new(&settings(&dir, "another secret, also 32 bytes long!")).unwrap();
        let forged = other
            .mint("x", &[Scope::OrdersWrite], Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(format!("Bearer {forged}").as_bytes())),
            Err(AuthFailure::Invalid)
        );
        // The algorithm is the configuration's: an unsigned token is refused.
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = base64url(
            br#"{"iss":"ordersys","aud":"ordersys","exp":99999999999,"iat":0,"scope":"orders:write"}"#,
        );
        let unsigned = format!("Bearer {header}.{claims}.");
        assert_eq!(
            auth.authenticate(Some(unsigned.as_bytes())),
            Err(AuthFailure::Invalid)
        );
    }

    fn base64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn short_secrets_and_missing_files_are_configuration_errors() {
        let err = Authenticator::new(&settings(&dir("short"), "short\n")).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        let mut s = settings(&dir("missing"), SECRET);
        s.jwt_secret_file = "/nonexistent/secret".into();
        let err = Authenticator::new(&s).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("auth.jwt_secret_file: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn open_mode_lets_everyone_in() {
        let auth = Authenticator::open();
        assert_eq!(auth.authenticate(None), Ok(Caller::Anyone));
        assert!(auth.mint("x", &[], Duration::from_secs(1)).is_err());
    }

    #[test]
    fn scopes_by_method_and_path() {
        let api = ApiScopes {
            read: Scope::ProductsRead,
            write: Scope::ProductsWrite,
        };
        assert_eq!(
            api.required("POST", false, false),
            Some(Scope::ProductsWrite)
        );
        assert_eq!(
            api.required("DELETE", false, false),
            Some(Scope::ProductsWrite)
        );
        assert_eq!(
            api.required("PATCH", false, false),
            Some(Scope::ProductsWrite)
        );
        assert_eq!(api.required("GET", false, false), None);
        assert_eq!(api.required("GET", false, true), Some(Scope::ProductsRead));
        assert_eq!(api.required("OPTIONS", false, true), None);
        assert_eq!(api.required("POST", true, true), None);
        assert_eq!(
            parse_scopes("orders:write, stock:correct").unwrap(),
            [Scope::OrdersWrite, Scope::StockCorrect]
        );
        assert!(parse_scopes("admin").unwrap_err().contains("unknown scope"));
    }
}
