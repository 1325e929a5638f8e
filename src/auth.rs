//! Who may do what: the scopes of the APIs, and bearer JWTs that carry them
//! (RFC 6750, RFC 7519), verified with `jsonwebtoken`.
//!
//! The algorithm is fixed by configuration (`auth.jwt_algorithm`), never
//! taken from a token's header; `iss`, `aud`, `exp`, `sub` and `iat` are
//! required and checked, `nbf` when present, with `auth.leeway_secs` of
//! clock skew; a token older than `auth.max_token_age_secs`, or claiming a
//! longer life, is refused ([`check_times`]). Scopes travel in the `scope`
//! claim, space-separated (RFC 8693 §4.2).
//!
//! Tokens are minted by [`Minter`] (`ordersys token`), never by a service:
//! with the HS256 secret (which every service verifying with it holds, so
//! any of them could mint any scope), or with an Ed25519 private key that
//! no service holds, the services verifying with its public key (EdDSA).

use crate::settings::{AuthMode, AuthSettings, JwtAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
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

    /// The token's `sub`: who sent the request, for the access log.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Caller::Anyone => None,
            Caller::Token { subject, .. } => Some(subject),
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
    /// A token that does not verify: bad signature, expired, too old, wrong
    /// issuer or audience, no subject, malformed.
    #[error("the bearer token is invalid or expired")]
    Invalid,
}

/// The claims ordersys reads once a token's signature has verified (`iss`,
/// `aud`, `exp`, `nbf` are checked by `jsonwebtoken`, the times again by
/// [`check_times`]).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    scope: String,
    exp: u64,
    iat: Option<u64>,
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

/// Why a token's times are refused, if they are: `iat` (seconds since the
/// epoch) must be present, not in the future, and at most `max_age` old;
/// and the life the token claims (`exp - iat`) must not exceed `max_age`,
/// so that a token minted for ten years is refused even while young.
/// `leeway` is the clock skew allowed between issuer and service.
pub fn check_times(
    iat: Option<u64>,
    exp: u64,
    now: u64,
    max_age: u64,
    leeway: u64,
) -> Result<(), &'static str> {
    let iat = iat.ok_or("no iat claim")?;
    if iat > now.saturating_add(leeway) {
        return Err("iat is in the future");
    }
    if now.saturating_sub(iat) > max_age.saturating_add(leeway) {
        return Err("older than auth.max_token_age_secs");
    }
    if exp.saturating_sub(iat) > max_age {
        return Err("its life (exp - iat) is longer than auth.max_token_age_secs");
    }
    Ok(())
}

/// What verifies tokens: the key, the checks `jsonwebtoken` makes, and ours.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_age: u64,
    leeway: u64,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    mode: AuthMode,
    protect_reads: bool,
    verify: Option<Verifier>,
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
/// The fewest distinct byte values an HS256 secret may have (random bytes,
/// hex or base64 of 32 bytes have far more).
pub const MIN_SECRET_DISTINCT_BYTES: usize = 8;
/// A secret that is one pattern of at most this many bytes repeated is refused.
pub const MAX_SECRET_PERIOD: usize = 16;

/// Why `secret` is not fit to be an HS256 secret, if it is not: shorter
/// than [`MIN_SECRET_BYTES`], fewer than [`MIN_SECRET_DISTINCT_BYTES`]
/// distinct byte values (32 zero bytes), or one pattern of at most
/// [`MAX_SECRET_PERIOD`] bytes repeated ("abcabc…", a 16-character string
/// written twice). Only the obvious non-secrets are caught: a secret
/// should come from a random generator (`openssl rand -base64 48`).
pub fn secret_problem(secret: &[u8]) -> Option<String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Some(format!(
            "the secret has {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
            secret.len()
        ));
    }
    let mut seen = [false; 256];
    for &b in secret {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < MIN_SECRET_DISTINCT_BYTES {
        return Some(format!(
            "the secret has only {distinct} distinct byte values (at least \
             {MIN_SECRET_DISTINCT_BYTES} needed): it is not random; generate one \
             with `openssl rand -base64 48`"
        ));
    }
    let period = (1..=MAX_SECRET_PERIOD).find(|&p| {
        secret[p..]
            .iter()
            .zip(secret)
            .all(|(later, earlier)| later == earlier)
    });
    period.map(|p| {
        format!(
            "the secret is a pattern of {p} bytes repeated: it is not random; \
             generate one with `openssl rand -base64 48`"
        )
    })
}

impl Authenticator {
    /// Reads the key file `settings` name, in jwt mode (in open mode
    /// nothing is read).
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, KeyError> {
        let mut authenticator = Authenticator {
            mode: settings.mode,
            protect_reads: settings.protect_reads,
            verify: None,
        };
        if settings.mode != AuthMode::Jwt {
            return Ok(authenticator);
        }
        let (algorithm, key) = match settings.jwt_algorithm {
            JwtAlgorithm::HS256 => (
                Algorithm::HS256,
                DecodingKey::from_secret(&read_secret(settings)?),
            ),
            JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA => {
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
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        authenticator.verify = Some(Verifier {
            key,
            validation,
            max_age: settings.max_token_age_secs,
            leeway: settings.leeway_secs,
        });
        Ok(authenticator)
    }

    /// Everyone may do everything (tests of other concerns, `auth.mode = "open"`).
    pub fn open() -> Authenticator {
        Authenticator {
            mode: AuthMode::Open,
            protect_reads: false,
            verify: None,
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
        if self.mode != AuthMode::Jwt {
            return Ok(Caller::Anyone);
        }
        // Fail closed: jwt mode without a verifier lets nobody in.
        let Some(verifier) = self.verify.as_ref() else {
            return Err(AuthFailure::Invalid);
        };
        let token = authorization
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(bearer_token)
            .ok_or(AuthFailure::Missing)?;
        let refused = |why: &dyn std::fmt::Display| {
            log::debug!("bearer token refused: {why}");
            AuthFailure::Invalid
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| refused(&e))?
            .claims;
        check_times(
            claims.iat,
            claims.exp,
            now_secs(),
            verifier.max_age,
            verifier.leeway,
        )
        .map_err(|why| refused(&why))?;
        if claims.sub.is_empty() {
            return Err(refused(&"an empty sub claim"));
        }
        Ok(Caller::Token {
            subject: claims.sub,
            scopes: claims
                .scope
                .split_ascii_whitespace()
                .filter_map(Scope::parse)
                .collect(),
        })
    }
}

/// Seconds since the epoch (0 for a clock before 1970, which no token passes).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs tokens (`ordersys token`): with the HS256 secret of
/// `auth.jwt_secret_file`, or with an Ed25519 private key (EdDSA). No
/// service builds one.
pub struct Minter {
    key: EncodingKey,
    algorithm: Algorithm,
    issuer: String,
    audience: String,
    max_age: u64,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// With `private_key` (a PEM PKCS#8 Ed25519 key, as `openssl genpkey
    /// -algorithm ed25519` writes), tokens are signed with EdDSA whatever
    /// `auth.jwt_algorithm` says; without, with the HS256 secret of
    /// `auth.jwt_secret_file`. The issuer, audience and the cap on the
    /// lifetime are the settings'.
    pub fn new(settings: &AuthSettings, private_key: Option<&Path>) -> Result<Minter, KeyError> {
        let (algorithm, key) = match private_key {
            Some(path) => (Algorithm::EdDSA, read_private_key(path)?),
            None if settings.jwt_algorithm != JwtAlgorithm::HS256 => {
                return Err(KeyError {
                    key: "--private-key",
                    problem: format!(
                        "auth.jwt_algorithm is {:?}: tokens are signed with the private key, \
                         which no service holds (ordersys token --private-key FILE)",
                        settings.jwt_algorithm
                    ),
                })
            }
            None if settings.jwt_secret_file.is_empty() => {
                return Err(KeyError {
                    key: "auth.jwt_secret_file",
                    problem: "minting needs an Ed25519 private key (--private-key FILE) or the \
                              HS256 secret (ORDERSYS__AUTH__JWT_SECRET_FILE)"
                        .into(),
                })
            }
            None => (
                Algorithm::HS256,
                EncodingKey::from_secret(&read_secret(settings)?),
            ),
        };
        Ok(Minter {
            key,
            algorithm,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            max_age: settings.max_token_age_secs,
        })
    }

    /// A signed token for `subject` with `scopes`, valid for `ttl` (at most
    /// `auth.max_token_age_secs`: the services would refuse a longer one).
    pub fn mint(&self, subject: &str, scopes: &[Scope], ttl: Duration) -> Result<String, String> {
        let ttl = ttl.as_secs();
        if ttl > self.max_age {
            return Err(format!(
                "--ttl {ttl} is longer than auth.max_token_age_secs ({}): the services \
                 would refuse the token",
                self.max_age
            ));
        }
        if subject.is_empty() {
            return Err("--subject must not be empty: it names the caller in the logs".into());
        }
        let now = now_secs();
        let claims = NewClaims {
            sub: subject,
            iss: &self.issuer,
            aud: &self.audience,
            iat: now,
            exp: now + ttl,
            scope: scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
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
    match secret_problem(&secret) {
        Some(problem) => Err(KeyError {
            key,
            problem: format!("{path}: {problem}"),
        }),
        None => Ok(secret),
    }
}

/// An Ed25519 signing key from a PEM PKCS#8 file, tried once so that a
/// bad key is reported here rather than when signing.
fn read_private_key(path: &Path) -> Result<EncodingKey, KeyError> {
    let key = "--private-key";
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| KeyError {
        key,
        problem: format!("cannot read {shown}: {e}"),
    })?;
    let bad = |e: jsonwebtoken::errors::Error| KeyError {
        key,
        problem: format!(
            "{shown} is not an Ed25519 private key (PEM PKCS#8, as `openssl genpkey \
             -algorithm ed25519` writes): {e}"
        ),
    };
    let encoding = EncodingKey::from_ed_pem(&pem).map_err(bad)?;
    jsonwebtoken::crypto::sign(b"probe", &encoding, Algorithm::EdDSA).map_err(bad)?;
    Ok(encoding)
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
            protect_reads: true,
            max_token_age_secs: 86_400,
        }
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ordersys-auth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SECRET: &str = "q3Jt9v0Lw2xZ8mYc4bN1sK7hD5fG6aE0\n";

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    /// A token signed with `key` (HS256 secret or Ed25519 PEM), claims as given.
    fn signed(algorithm: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> Vec<u8> {
        bearer(&jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap())
    }

    #[test]
    fn a_minted_token_verifies_with_its_scopes_and_subject() {
        let s = settings(&dir("mint"), SECRET);
        let auth = Authenticator::new(&s).unwrap();
        let token = Minter::new(&s, None)
            .unwrap()
            .mint(
                "ci",
                &[Scope::ProductsWrite, Scope::StockCorrect],
                Duration::from_secs(60),
            )
            .unwrap();
        let caller = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert!(caller.may(Scope::ProductsWrite) && caller.may(Scope::StockCorrect));
        assert!(!caller.may(Scope::OrdersWrite));
        assert_eq!(caller.subject(), Some("ci"));
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
        let other = settings(&dir, "another secret, also 32 bytes long!");
        let forged = Minter::new(&other, None)
            .unwrap()
            .mint("x", &[Scope::OrdersWrite], Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(&bearer(&forged))),
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
    fn old_long_lived_future_and_unattributed_tokens_are_refused() {
        let s = settings(&dir("age"), SECRET);
        let auth = Authenticator::new(&s).unwrap();
        let key = EncodingKey::from_secret(SECRET.trim().as_bytes());
        let now = now_secs();
        let token = |claims: serde_json::Value| {
            let mut base = serde_json::json!({
                "sub": "ci", "iss": "ordersys", "aud": "ordersys",
                "iat": now, "exp": now + 600, "scope": "orders:write"
            });
            for (k, v) in claims.as_object().unwrap() {
                if v.is_null() {
                    base.as_object_mut().unwrap().remove(k);
                } else {
                    base[k] = v.clone();
                }
            }
            signed(Algorithm::HS256, &key, base)
        };
        let day = 86_400;
        assert!(auth
            .authenticate(Some(&token(serde_json::json!({}))))
            .is_ok());
        // A day's life, issued just now: the longest accepted.
        let longest = token(serde_json::json!({"exp": now + day}));
        assert!(auth.authenticate(Some(&longest)).is_ok());
        for (what, claims) in [
            // The attack: a token minted for ten years, accepted for ten years.
            (
                "a ten-year life",
                serde_json::json!({"exp": now + 10 * 365 * day}),
            ),
            (
                "a life a second too long",
                serde_json::json!({"exp": now + day + 1}),
            ),
            (
                "issued more than a day ago, unexpired",
                serde_json::json!({"iat": now - day - 60, "exp": now + 60}),
            ),
            ("no iat", serde_json::json!({"iat": null})),
            (
                "iat in the future, to outlive the cap",
                serde_json::json!({"iat": now + 5 * 365 * day, "exp": now + 5 * 365 * day + 60}),
            ),
            ("no sub", serde_json::json!({"sub": null})),
            ("an empty sub", serde_json::json!({"sub": ""})),
        ] {
            assert_eq!(
                auth.authenticate(Some(&token(claims))),
                Err(AuthFailure::Invalid),
                "{what}"
            );
        }
    }

    #[test]
    fn token_times_against_the_maximum_age() {
        let (now, day, leeway) = (1_000_000_000, 86_400, 30);
        let check = |iat, exp| check_times(iat, exp, now, day, leeway);
        assert_eq!(check(Some(now), now + day), Ok(()));
        // Age and life both at the cap (exp itself is jsonwebtoken's check).
        let oldest = now - day - leeway;
        assert_eq!(check(Some(oldest), oldest + day), Ok(()));
        assert_eq!(check(Some(now + leeway), now + leeway + 60), Ok(()));
        assert_eq!(check(None, now + 60), Err("no iat claim"));
        assert_eq!(
            check(Some(oldest - 1), oldest - 1 + day),
            Err("older than auth.max_token_age_secs")
        );
        assert!(check(Some(now + leeway + 1), now + leeway + 60).is_err());
        assert!(check(Some(now), now + day + 1).is_err());
        assert!(check(Some(now), u64::MAX).is_err());
        assert!(check(Some(u64::MAX), u64::MAX).is_err());
    }

    #[test]
    fn minting_is_capped_to_the_maximum_age() {
        let s = settings(&dir("ttl"), SECRET);
        let minter = Minter::new(&s, None).unwrap();
        assert!(minter
            .mint("ci", &[Scope::OrdersRead], Duration::from_secs(86_400))
            .is_ok());
        let err = minter
            .mint("ci", &[Scope::OrdersRead], Duration::from_secs(86_401))
            .unwrap_err();
        assert!(
            err.contains("--ttl 86401") && err.contains("auth.max_token_age_secs (86400)"),
            "{err}"
        );
        assert!(minter
            .mint("", &[Scope::OrdersRead], Duration::from_secs(60))
            .unwrap_err()
            .contains("--subject"));
    }

    #[test]
    fn guessable_secrets_are_refused() {
        let dir = dir("weak");
        let thirty_two_zeros = String::from_utf8(vec![0; 32]).unwrap();
        for (what, secret, problem) in [
            (
                "32 zero bytes",
                thirty_two_zeros.as_str(),
                "distinct byte values",
            ),
            ("one letter", &"a".repeat(40), "distinct byte values"),
            ("abc repeated", &"abc".repeat(12), "distinct byte values"),
            (
                "a period of 9",
                &"Passw0rd!".repeat(4),
                "pattern of 9 bytes",
            ),
            (
                "a period of 16, written twice",
                "0123456789abcdef0123456789abcdef",
                "pattern of 16 bytes",
            ),
            (
                "a period of 10, cut short",
                &"0123456789".repeat(4)[..35],
                "pattern of 10 bytes",
            ),
            ("short", "short\n", "at least 32"),
        ] {
            let err = Authenticator::new(&settings(&dir, secret)).unwrap_err();
            assert!(err.to_string().contains(problem), "{what}: {err}");
            assert!(
                err.to_string().starts_with("auth.jwt_secret_file: "),
                "{what}: {err}"
            );
            assert!(
                Minter::new(&settings(&dir, secret), None).is_err(),
                "{what}"
            );
        }
        // Random secrets, as the docs say to make them, pass.
        for secret in [SECRET, "8f1c2d9e0b7a6354f1e2d3c4b5a69788"] {
            assert_eq!(secret_problem(secret.trim().as_bytes()), None, "{secret}");
        }
    }

    #[test]
    fn missing_files_are_configuration_errors() {
        let mut s = settings(&dir("missing"), SECRET);
        s.jwt_secret_file = "/nonexistent/secret".into();
        let err = Authenticator::new(&s).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("auth.jwt_secret_file: cannot read"),
            "{err}"
        );
        let err = Minter::new(&s, Some(Path::new("/nonexistent/key.pem"))).unwrap_err();
        assert!(
            err.to_string().starts_with("--private-key: cannot read"),
            "{err}"
        );
    }

    /// An Ed25519 key pair in PEM files: (private, public).
    fn ed25519(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let (private, public) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.pub")),
        );
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        (private, public)
    }

    #[test]
    fn eddsa_tokens_minted_with_the_private_key_verify_with_the_public_key_only() {
        let dir = dir("eddsa");
        let (private, public) = ed25519(&dir, "issuer");
        let (stranger, _) = ed25519(&dir, "stranger");
        let services = AuthSettings {
            jwt_algorithm: JwtAlgorithm::EdDSA,
            jwt_public_key_file: public.to_string_lossy().into_owned(),
            jwt_secret_file: String::new(),
            ..settings(&dir, SECRET)
        };
        let auth = Authenticator::new(&services).unwrap();
        // The token command needs no service setting but the issuer,
        // audience and maximum age: its HS256 defaults do not matter.
        let operator = settings(&dir, SECRET);
        let token = Minter::new(&operator, Some(&private))
            .unwrap()
            .mint("alice", &[Scope::OrdersRead], Duration::from_secs(600))
            .unwrap();
        let caller = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert_eq!(caller.subject(), Some("alice"));
        assert!(caller.may(Scope::OrdersRead) && !caller.may(Scope::OrdersWrite));
        // Signed with another key, or with the HS256 secret: refused.
        let forged = Minter::new(&operator, Some(&stranger))
            .unwrap()
            .mint("alice", &[Scope::OrdersWrite], Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(&bearer(&forged))),
            Err(AuthFailure::Invalid)
        );
        let hs256 = Minter::new(&operator, None)
            .unwrap()
            .mint("alice", &[Scope::OrdersWrite], Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            auth.authenticate(Some(&bearer(&hs256))),
            Err(AuthFailure::Invalid)
        );
        // The public key used as an HMAC secret (algorithm confusion): refused.
        let now = now_secs();
        let confused = signed(
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
            serde_json::json!({"sub": "x", "iss": "ordersys", "aud": "ordersys",
                               "iat": now, "exp": now + 60, "scope": "orders:write"}),
        );
        assert_eq!(
            auth.authenticate(Some(&confused)),
            Err(AuthFailure::Invalid)
        );
        // The services' EdDSA setting, without the private key: no minting.
        let err = Minter::new(&services, None).unwrap_err().to_string();
        assert!(err.contains("--private-key"), "{err}");
        // The public key (or anything else) is no private key.
        let err = Minter::new(&operator, Some(&public))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not an Ed25519 private key"), "{err}");
    }

    #[test]
    fn jwt_mode_without_a_verifier_lets_nobody_in() {
        let auth = Authenticator {
            mode: AuthMode::Jwt,
            protect_reads: true,
            verify: None,
        };
        assert_eq!(auth.authenticate(None), Err(AuthFailure::Invalid));
        assert_eq!(
            auth.authenticate(Some(b"Bearer a.b.c")),
            Err(AuthFailure::Invalid)
        );
    }

    #[test]
    fn open_mode_lets_everyone_in_and_reads_no_key() {
        let auth = Authenticator::open();
        assert_eq!(auth.authenticate(None), Ok(Caller::Anyone));
        let s = AuthSettings {
            mode: AuthMode::Open,
            jwt_secret_file: "/nonexistent/secret".into(),
            ..settings(&dir("open"), SECRET)
        };
        let auth = Authenticator::new(&s).unwrap();
        assert_eq!(auth.authenticate(None), Ok(Caller::Anyone));
        assert_eq!(Caller::Anyone.subject(), None);
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
        assert_eq!(api.required("HEAD", false, true), Some(Scope::ProductsRead));
        assert_eq!(api.required("OPTIONS", false, true), None);
        assert_eq!(api.required("POST", true, true), None);
        assert_eq!(api.required("GET", true, true), None);
        assert_eq!(
            parse_scopes("orders:write, stock:correct").unwrap(),
            [Scope::OrdersWrite, Scope::StockCorrect]
        );
        assert!(parse_scopes("admin").unwrap_err().contains("unknown scope"));
    }
}
