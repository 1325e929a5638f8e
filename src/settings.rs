//! Typed settings, loaded once at start from the layers of docs/contract.md §2.
//!
//! `config/default.toml` is compiled in, so the binary always has every key
//! and its documented default; `--config FILE`, `ORDERSYS__SECTION__KEY`,
//! `DATABASE_URL`/`AMQP_URL` and their `*_FILE` variants override it, later
//! layers winning. Unknown keys and wrong types are errors: a typo in a
//! deployment must stop the process with a line naming the key, not be
//! silently ignored.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub worker: WorkerSettings,
    pub stock: StockSettings,
    pub validation: ValidationSettings,
    pub outbox: OutboxSettings,
    pub log: LogSettings,
    pub retry: RetrySettings,
    pub shutdown: ShutdownSettings,
    pub auth: AuthSettings,
    pub migrate: MigrateSettings,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    pub pool_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub tcp_user_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    pub migrate_on_start: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: String,
    pub prefetch: u16,
    pub heartbeat_secs: u16,
    pub delivery_limit: u16,
    pub declare_topology: bool,
    /// Stock partitions (`product_queue.{k}`); 0: `product_queue` alone.
    pub stock_partitions: u16,
}

impl AmqpSettings {
    /// The brokers `url` names: one URL, or a cluster's nodes, each a whole
    /// URL, comma-separated. A comma that does not start another URL
    /// (`scheme://`) belongs to the one before (a password may hold one).
    pub fn urls(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for part in self.url.split(',') {
            let starts_url = part
                .trim_start()
                .split_once("://")
                .is_some_and(|(scheme, _)| {
                    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
                });
            match out.last_mut() {
                Some(last) if !starts_url => {
                    last.push(',');
                    last.push_str(part);
                }
                _ => out.push(part.to_owned()),
            }
        }
        out.iter().map(|url| url.trim().to_owned()).collect()
    }
}

// Debug without the passwords the URLs carry.
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redacted(&self.url))
            .field("pool_size", &self.pool_size)
            .field("pool_timeout_ms", &self.pool_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("tcp_user_timeout_ms", &self.tcp_user_timeout_ms)
            .field(
                "idle_in_transaction_timeout_ms",
                &self.idle_in_transaction_timeout_ms,
            )
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field(
                "url",
                &self
                    .urls()
                    .iter()
                    .map(|url| redacted(url))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .field("prefetch", &self.prefetch)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("delivery_limit", &self.delivery_limit)
            .field("declare_topology", &self.declare_topology)
            .field("stock_partitions", &self.stock_partitions)
            .finish()
    }
}

/// `url` with its password (and any `password` query parameter) replaced
/// by `***`, for Debug output and log lines.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparsable URL>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub workers: usize,
    pub max_connections: usize,
    pub request_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub docs_path: String,
    pub openapi_path: String,
    /// Serve an open API (`auth.mode = "open"`) on a non-loopback address.
    pub allow_open_on_network: bool,
    /// After SIGTERM, how long to keep serving with `/readyz` at 503 and
    /// every answer closing its connection, before the graceful stop.
    pub shutdown_drain_secs: u64,
}

/// The longest `http.shutdown_drain_secs`: a minute.
pub const SHUTDOWN_DRAIN_MAX_SECS: u64 = 60;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub replicas: usize,
    pub batch_size: usize,
    pub max_message_bytes: usize,
    pub dedupe_retention_secs: u64,
    pub accept_seed_format: bool,
    /// How long a worker's hold on a stock partition lasts unrenewed.
    pub partition_lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockSettings {
    pub low_threshold: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSettings {
    pub timeout_ms: u64,
    pub sweep_interval_ms: u64,
    pub batch_size: usize,
}

/// The longest `validation.timeout_ms`: a day.
pub const VALIDATION_TIMEOUT_MAX_MS: u64 = 86_400_000;

impl ValidationSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    pub batch_size: usize,
    pub poll_interval_ms: u64,
    pub retention_secs: u64,
    pub history_retention_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// env_logger's human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub jwt_algorithm: JwtAlgorithm,
    pub jwt_secret_file: String,
    pub jwt_public_key_file: String,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    pub protect_reads: bool,
    /// The oldest token accepted (`now - iat`), and the longest lifetime
    /// (`exp - iat`) a token may claim; `ordersys token --ttl` is capped to it.
    pub max_token_age_secs: u64,
}

/// The largest `auth.max_token_age_secs`: 30 days.
pub const MAX_TOKEN_AGE_LIMIT_SECS: u64 = 2_592_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: anyone who reaches the port may read and write.
    Open,
    /// Writes and reads (unless `protect_reads` is false) need a bearer JWT.
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with the shared secret of `jwt_secret_file`.
    HS256,
    /// RSA signature, verified with the PEM public key of `jwt_public_key_file`.
    RS256,
    /// Ed25519 signature, verified with the PEM public key of `jwt_public_key_file`.
    EdDSA,
}

/// What `ordersys migrate` does besides applying migrations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateSettings {
    pub products_password_file: String,
    pub orders_password_file: String,
    pub worker_password_file: String,
    pub declare_topology: bool,
}

impl MigrateSettings {
    /// Each service's login role with the file its password is read from,
    /// for the roles that have one.
    pub fn role_passwords(&self) -> Vec<(&'static str, &str)> {
        [
            ("ordersys_products", &self.products_password_file),
            ("ordersys_orders", &self.orders_password_file),
            ("ordersys_worker", &self.worker_password_file),
        ]
        .into_iter()
        .filter(|(_, file)| !file.is_empty())
        .map(|(role, file)| (role, file.as_str()))
        .collect()
    }
}

/// A configuration problem, phrased as one line that names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

impl SettingsError {
    fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        SettingsError(format!("{key}: {problem}"))
    }
}

/// Where the process environment comes from; a function so tests can load
/// settings without touching the real environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Settings {
    /// Loads every layer from the real process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Settings, SettingsError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(config_file, &vars, &|name| std::env::var(name).ok())
    }

    /// Loads every layer; `vars` are the environment variables, `lookup`
    /// reads one of them.
    pub fn load_from(
        config_file: Option<&Path>,
        vars: &[(String, String)],
        lookup: EnvLookup<'_>,
    ) -> Result<Settings, SettingsError> {
        use config::{Config, Environment, File, FileFormat};

        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(SettingsError::key(
                    "--config",
                    format!("no such file: {}", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let environment: config::Map<String, String> = vars
            .iter()
            .filter(|(k, _)| k.starts_with("ORDERSYS__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("ORDERSYS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(environment)),
        );
        for (key, var) in [("database.url", "DATABASE_URL"), ("amqp.url", "AMQP_URL")] {
            if let Some(value) = lookup(var).filter(|v| !v.is_empty()) {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| SettingsError::key(var, e))?;
            }
            let file_var = format!("{var}_FILE");
            if let Some(path) = lookup(&file_var).filter(|v| !v.is_empty()) {
                let value = std::fs::read_to_string(&path).map_err(|e| {
                    SettingsError::key(&file_var, format!("cannot read {path}: {e}"))
                })?;
                builder = builder
                    .set_override(key, value.trim().to_owned())
                    .map_err(|e| SettingsError::key(&file_var, e))?;
            }
        }
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| SettingsError(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rules the types alone cannot express. Each section checks its own
    /// keys; the first problem found is the one reported, so the order here
    /// is the order of the checks before they were split (the URLs, the
    /// limits section by section, then auth and the paths).
    fn validate(&self) -> Result<(), SettingsError> {
        url_scheme(
            "database.url",
            &self.database.url,
            &["postgres", "postgresql"],
        )?;
        for url in self.amqp.urls() {
            url_scheme("amqp.url", &url, &["amqp", "amqps"])?;
        }
        self.database.validate_limits()?;
        at_least("amqp.prefetch", self.amqp.prefetch.into(), 1)?;
        at_most(
            "amqp.stock_partitions",
            self.amqp.stock_partitions.into(),
            MAX_STOCK_PARTITIONS,
        )?;
        self.http.validate_limits()?;
        self.worker.validate()?;
        at_least("outbox.batch_size", self.outbox.batch_size as u64, 1)?;
        self.validation.validate()?;
        at_least("outbox.poll_interval_ms", self.outbox.poll_interval_ms, 1)?;
        self.retry.validate()?;
        self.stock.validate()?;
        self.auth.validate()?;
        self.http.validate_paths()
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.shutdown.grace_secs)
    }

    /// Why an API that changes things (products, orders) must not listen on
    /// `bind`: open mode on a non-loopback address, unless
    /// `http.allow_open_on_network` says it is wanted; `None` when it may.
    pub fn open_bind_refusal(&self, bind: std::net::SocketAddr) -> Option<String> {
        let open = self.auth.mode == AuthMode::Open;
        if !open || bind.ip().is_loopback() || self.http.allow_open_on_network {
            return None;
        }
        Some(format!(
            "refusing to listen on {bind} with auth.mode = \"open\": anyone who reaches the \
             port could change stock and orders. Set auth.mode = \"jwt\" \
             (ORDERSYS__AUTH__MODE=jwt), listen on loopback (--bind 127.0.0.1:{}), or set \
             http.allow_open_on_network = true (ORDERSYS__HTTP__ALLOW_OPEN_ON_NETWORK=true) \
             if an open API on the network is wanted",
            bind.port()
        ))
    }
}

/// `url` parses, with one of `schemes`.
fn url_scheme(key: &str, url: &str, schemes: &[&str]) -> Result<(), SettingsError> {
    let parsed = url::Url::parse(url).map_err(|e| SettingsError::key(key, e))?;
    if schemes.contains(&parsed.scheme()) {
        Ok(())
    } else {
        Err(SettingsError::key(
            key,
            format!(
                "scheme must be one of {schemes:?}, got {:?}",
                parsed.scheme()
            ),
        ))
    }
}

/// The most stock partitions: each is a queue on every worker's channels.
pub const MAX_STOCK_PARTITIONS: u64 = 256;

fn at_most(key: &str, value: u64, max: u64) -> Result<(), SettingsError> {
    if value > max {
        Err(SettingsError::key(
            key,
            format!("must be at most {max}, got {value}"),
        ))
    } else {
        Ok(())
    }
}

fn at_least(key: &str, value: u64, min: u64) -> Result<(), SettingsError> {
    if value < min {
        Err(SettingsError::key(
            key,
            format!("must be at least {min}, got {value}"),
        ))
    } else {
        Ok(())
    }
}

impl DatabaseSettings {
    fn validate_limits(&self) -> Result<(), SettingsError> {
        at_least("database.pool_size", self.pool_size.into(), 1)?;
        at_least("database.pool_timeout_ms", self.pool_timeout_ms, 1)?;
        at_least("database.connect_timeout_ms", self.connect_timeout_ms, 1)?;
        at_least(
            "database.statement_timeout_ms",
            self.statement_timeout_ms,
            1,
        )?;
        // Keepalive probes every third of it, in whole seconds.
        at_least(
            "database.tcp_user_timeout_ms",
            self.tcp_user_timeout_ms,
            3000,
        )?;
        // The outbox relay holds its transaction while the broker confirms
        // (up to 30 s): a shorter limit would end it for nothing.
        at_least(
            "database.idle_in_transaction_timeout_ms",
            self.idle_in_transaction_timeout_ms,
            35_000,
        )
    }
}

impl HttpSettings {
    fn validate_limits(&self) -> Result<(), SettingsError> {
        at_least("http.max_body_bytes", self.max_body_bytes as u64, 1)?;
        at_least("http.max_connections", self.max_connections as u64, 1)?;
        at_least("http.request_timeout_ms", self.request_timeout_ms, 1)?;
        at_least("http.body_timeout_ms", self.body_timeout_ms, 1)?;
        if self.shutdown_drain_secs > SHUTDOWN_DRAIN_MAX_SECS {
            return Err(SettingsError::key(
                "http.shutdown_drain_secs",
                format!(
                    "must be at most {SHUTDOWN_DRAIN_MAX_SECS} (a minute), got {}",
                    self.shutdown_drain_secs
                ),
            ));
        }
        Ok(())
    }

    /// How long the drain before the graceful stop lasts (0: none).
    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_secs)
    }

    /// The docs and document paths: absolute, not the root, no trailing '/'.
    fn validate_paths(&self) -> Result<(), SettingsError> {
        for (key, path) in [
            ("http.docs_path", &self.docs_path),
            ("http.openapi_path", &self.openapi_path),
        ] {
            if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
                return Err(SettingsError::key(
                    key,
                    format!("must start with '/' and not end with '/', got {path:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl WorkerSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        at_least("worker.replicas", self.replicas as u64, 1)?;
        at_least("worker.batch_size", self.batch_size as u64, 1)?;
        at_least("worker.max_message_bytes", self.max_message_bytes as u64, 1)?;
        // Renewed every fifth of it: whole ticks of at least 200 ms.
        at_least("worker.partition_lease_ms", self.partition_lease_ms, 1000)
    }
}

impl ValidationSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        at_least("validation.timeout_ms", self.timeout_ms, 1)?;
        if self.timeout_ms > VALIDATION_TIMEOUT_MAX_MS {
            return Err(SettingsError::key(
                "validation.timeout_ms",
                format!(
                    "must be at most {VALIDATION_TIMEOUT_MAX_MS} (a day), got {}",
                    self.timeout_ms
                ),
            ));
        }
        at_least("validation.sweep_interval_ms", self.sweep_interval_ms, 1)?;
        at_least("validation.batch_size", self.batch_size as u64, 1)
    }
}

impl RetrySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        at_least("retry.initial_backoff_ms", self.initial_backoff_ms, 1)?;
        at_least(
            "retry.max_backoff_ms",
            self.max_backoff_ms,
            self.initial_backoff_ms,
        )
    }
}

impl StockSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if self.low_threshold < 0 {
            return Err(SettingsError::key(
                "stock.low_threshold",
                "must not be negative",
            ));
        }
        Ok(())
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        at_least("auth.max_token_age_secs", self.max_token_age_secs, 1)?;
        if self.max_token_age_secs > MAX_TOKEN_AGE_LIMIT_SECS {
            return Err(SettingsError::key(
                "auth.max_token_age_secs",
                format!(
                    "must be at most {MAX_TOKEN_AGE_LIMIT_SECS} (30 days), got {}",
                    self.max_token_age_secs
                ),
            ));
        }
        if self.mode == AuthMode::Jwt {
            self.validate_jwt()?;
        }
        Ok(())
    }

    /// In jwt mode: the key's file is named, and so are issuer and audience.
    fn validate_jwt(&self) -> Result<(), SettingsError> {
        let (key, file) = match self.jwt_algorithm {
            JwtAlgorithm::HS256 => ("auth.jwt_secret_file", &self.jwt_secret_file),
            _ => ("auth.jwt_public_key_file", &self.jwt_public_key_file),
        };
        if file.is_empty() {
            return Err(SettingsError::key(
                key,
                format!(
                    "must name a file when auth.mode is jwt with {:?}",
                    self.jwt_algorithm
                ),
            ));
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(SettingsError::key(
                "auth.issuer",
                "auth.issuer and auth.audience must not be empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Settings::load_from(None, &vars, &lookup)
    }

    #[test]
    fn defaults_load_and_match_the_spec() {
        let s = load(&[]).unwrap();
        assert_eq!(s.http.max_body_bytes, 65536);
        assert_eq!(s.stock.low_threshold, 5);
        assert!(s.database.url.contains("127.0.0.1"));
        assert!(s.amqp.url.contains("127.0.0.1"));
        assert!(s.auth.protect_reads, "reads need a token in jwt mode");
        assert_eq!(s.auth.max_token_age_secs, 86_400);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = load(&[
            ("ORDERSYS__AMQP__PREFETCH", "50"),
            ("ORDERSYS__HTTP__MAX_BODY_BYTES", "10"),
        ])
        .unwrap();
        assert_eq!(s.amqp.prefetch, 50);
        assert_eq!(s.http.max_body_bytes, 10);
    }

    #[test]
    fn conventional_urls_win_over_the_prefixed_ones() {
        let s = load(&[
            ("ORDERSYS__DATABASE__URL", "postgres://a@h/one"),
            ("DATABASE_URL", "postgres://b@h/two"),
            ("AMQP_URL", "amqp://u:p@h:5672/v"),
        ])
        .unwrap();
        assert_eq!(s.database.url, "postgres://b@h/two");
        assert_eq!(s.amqp.url, "amqp://u:p@h:5672/v");
    }

    #[test]
    fn a_broker_cluster_is_a_comma_separated_list_of_whole_urls() {
        let s = load(&[(
            "AMQP_URL",
            "amqp://u:p1@r1:5672/%2f, amqp://u:a,b@r2/%2f,amqps://u:p3@r3/v",
        )])
        .unwrap();
        assert_eq!(
            s.amqp.urls(),
            [
                "amqp://u:p1@r1:5672/%2f",
                "amqp://u:a,b@r2/%2f",
                "amqps://u:p3@r3/v"
            ]
        );
        let debug = format!("{:?}", s.amqp);
        assert!(
            ["p1", "a,b", "p3"].iter().all(|p| !debug.contains(p)),
            "{debug}"
        );
        assert!(debug.contains("r3"), "{debug}");
        let err = load(&[("AMQP_URL", "amqp://h1,http://h2")]).unwrap_err();
        assert!(err.to_string().contains("amqp.url"), "{err}");
    }

    #[test]
    fn file_variants_read_secrets() {
        let dir = std::env::temp_dir().join(format!("ordersys-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("db");
        std::fs::write(&secret, "postgres://secret@db/x\n").unwrap();
        let s = load(&[("DATABASE_URL_FILE", secret.to_str().unwrap())]).unwrap();
        assert_eq!(s.database.url, "postgres://secret@db/x");
        let err = load(&[("AMQP_URL_FILE", "/nonexistent/secret")]).unwrap_err();
        assert!(
            err.to_string().starts_with("AMQP_URL_FILE: cannot read"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_open_api_listens_on_the_network_only_when_told_to() {
        let open = load(&[]).unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:8081".parse().unwrap();
        let refusal = open.open_bind_refusal(any).expect("refused");
        assert!(refusal.contains("allow_open_on_network"), "{refusal}");
        assert!(refusal.contains("change stock and orders"), "{refusal}");
        for local in ["127.0.0.1:8081", "[::1]:8081"] {
            assert_eq!(open.open_bind_refusal(local.parse().unwrap()), None);
        }
        let allowed = load(&[("ORDERSYS__HTTP__ALLOW_OPEN_ON_NETWORK", "true")]).unwrap();
        assert_eq!(allowed.open_bind_refusal(any), None);
        let mut jwt = open.clone();
        jwt.auth.mode = AuthMode::Jwt;
        assert_eq!(jwt.open_bind_refusal(any), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(&[("ORDERSYS__AMQP__PREFETCH", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.prefetch"), "{err}");
        let err = load(&[("ORDERSYS__WORKER__REPLICAS", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker.replicas"), "{err}");
        for (key, value, named) in [
            (
                "ORDERSYS__AMQP__STOCK_PARTITIONS",
                "257",
                "amqp.stock_partitions",
            ),
            (
                "ORDERSYS__AMQP__STOCK_PARTITIONS",
                "-1",
                "amqp.stock_partitions",
            ),
            (
                "ORDERSYS__WORKER__PARTITION_LEASE_MS",
                "999",
                "worker.partition_lease_ms",
            ),
        ] {
            let err = load(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
        assert_eq!(
            load(&[("ORDERSYS__AMQP__STOCK_PARTITIONS", "256")])
                .unwrap()
                .amqp
                .stock_partitions,
            256
        );
        let err = load(&[("DATABASE_URL", "mysql://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("database.url"), "{err}");
        let err = load(&[("ORDERSYS__AMQP__PREFECH", "5")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefech"), "{err}");
        for age in ["0", "2592001"] {
            let err = load(&[("ORDERSYS__AUTH__MAX_TOKEN_AGE_SECS", age)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("auth.max_token_age_secs"), "{age}: {err}");
        }
        let s = load(&[("ORDERSYS__AUTH__MAX_TOKEN_AGE_SECS", "2592000")]).unwrap();
        assert_eq!(s.auth.max_token_age_secs, 2_592_000);
    }

    #[test]
    fn the_shutdown_drain_is_off_by_default_and_at_most_a_minute() {
        assert_eq!(load(&[]).unwrap().http.shutdown_drain(), Duration::ZERO);
        let key = "ORDERSYS__HTTP__SHUTDOWN_DRAIN_SECS";
        for (secs, drain) in [("0", 0), ("15", 15), ("60", 60)] {
            let s = load(&[(key, secs)]).unwrap();
            assert_eq!(s.http.shutdown_drain(), Duration::from_secs(drain));
        }
        for bad in ["61", "-1", "soon"] {
            let err = load(&[(key, bad)]).unwrap_err().to_string();
            assert!(err.contains("shutdown_drain_secs"), "{bad}: {err}");
        }
    }
}
