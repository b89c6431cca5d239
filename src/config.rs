//! Configuration: one TOML file, overridable by `AXON_*` environment variables.
//!
//! Every key has a default, so a missing file yields a working local server
//! (`127.0.0.1:8008`, server name `localhost`, data under `./data`, registration closed).
//! `config.toml` at the repository root documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The file read when neither `--config` nor `AXON_CONFIG` names one and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";

/// The top-level keys of [`Config`], which `AXON_<KEY>[__<SUBKEY>]` variables may set.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server_name",
    "public_baseurl",
    "http",
    "database",
    "registration",
    "limits",
    "logging",
    "metrics",
    "well_known",
    "presence",
    "outbound",
    "media",
    "user_directory",
    "guests",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The domain part of every user and room ID this server creates. Cannot change later.
    pub server_name: String,
    /// The URL clients reach this server at; advertised by `/.well-known/matrix/client`.
    /// Derived from the first listener when unset.
    pub public_baseurl: Option<String>,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub registration: RegistrationConfig,
    pub limits: LimitsConfig,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    pub well_known: WellKnownConfig,
    pub presence: PresenceConfig,
    /// Requests this server makes to other addresses (push gateways, URL previews).
    pub outbound: crate::outbound::OutboundConfig,
    /// The media repository: uploads, downloads, thumbnails, blob storage, URL previews.
    pub media: crate::services::media::MediaConfig,
    /// Notifications: push-rule evaluation, `/notifications`, pushers and their delivery.
    pub push: PushConfig,
    /// Who `POST /user_directory/search` finds.
    pub user_directory: UserDirectoryConfig,
    /// Guest accounts (`POST /register?kind=guest`).
    pub guests: GuestsConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestsConfig {
    /// Anyone may register a guest account, which may use only the spec's guest endpoints.
    /// Off (the default), guest registration answers `403 M_GUEST_ACCESS_FORBIDDEN`.
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserDirectoryConfig {
    /// Every local user can be found. Off (the default), a search finds the users who share
    /// a room with the searcher or are joined to a public room.
    pub search_all_users: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Addresses the client (and later federation) API listens on.
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Directory holding the RocksDB database and the admin socket.
    pub path: PathBuf,
    /// RocksDB block cache, in MiB.
    pub cache_mib: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Only the admin creates accounts (`axon user create`).
    Closed,
    /// Anyone who can reach the server may register (m.login.dummy). For local testing.
    Open,
    /// Registration needs a token made with `axon token create` (m.login.registration_token).
    Token,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    pub mode: RegistrationMode,
    /// Minimum password length accepted by /register and /account/password.
    pub min_password_length: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request body for JSON endpoints, in bytes (M_TOO_LARGE above it).
    pub max_body_bytes: usize,
    /// Login attempts per client IP address.
    pub login: RateLimit,
    /// Failed logins per account, whatever the address.
    pub failed_login_per_account: RateLimit,
    /// Registration requests per client IP address.
    pub register: RateLimit,
    /// Events sent per user: messages, state, redactions, room creations, membership changes
    /// (join, invite, leave, kick, ban, unban) and profile changes (one per room updated);
    /// typing notifications and presence changes (`PUT`) take one each too.
    pub events: RateLimit,
    /// Most `initial_state` entries one `createRoom` may carry (400 `M_TOO_LARGE` above).
    pub create_room_max_initial_state: usize,
    /// Most users one `createRoom` may invite (400 `M_TOO_LARGE` above).
    pub create_room_max_invites: usize,
    /// Password hashes waiting per hashing thread (one thread per core); when the queue is
    /// full, login, registration and password changes get 429 `M_LIMIT_EXCEEDED`.
    pub password_queue_per_core: usize,
    /// Distinct filters stored per user (identical filters share one ID); 400 `M_TOO_LARGE`
    /// above.
    pub max_filters_per_user: usize,
    /// Distinct account-data types per user in each scope (global, and each room); 400
    /// `M_TOO_LARGE` above. Replacing an existing type is always allowed.
    pub max_account_data_types: usize,
    /// Most messages one `sendToDevice` request may carry, counted as given and again after
    /// `*` is expanded to the users' devices; 400 `M_TOO_LARGE` above.
    pub to_device_max_messages: usize,
    /// Most to-device messages waiting for one device (one that does not sync); a message
    /// for a device whose queue is full is dropped (logged), the others of the request are
    /// stored.
    pub to_device_max_pending: usize,
    /// Room keys stored in one version of a user's key backup; an upload that would store
    /// more is refused whole with 400 `M_TOO_LARGE`. Replacing a stored key is always allowed.
    pub max_backup_keys_per_version: usize,
    /// Devices of one user that may hold a `/sync` WebSocket at once (each device one, two
    /// while a new connection replaces the old); another device's upgrade is refused with
    /// 429 `M_LIMIT_EXCEEDED`.
    pub sync_sockets_per_user: usize,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter directive, e.g. `info` or `axon=debug,tower_http=info`.
    /// `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Path of the Prometheus endpoint.
    pub path: String,
    /// The metrics endpoint's own listener, never one of the client listeners: metrics
    /// reveal traffic patterns and are for the operator only. Loopback by default.
    pub listen: SocketAddr,
}

/// Where metrics are served unless `metrics.listen` says otherwise.
pub const DEFAULT_METRICS_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9108);

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WellKnownConfig {
    /// `m.homeserver.base_url` in `/.well-known/matrix/client`; defaults to `public_baseurl`.
    pub client: Option<String>,
    /// `m.server` in `/.well-known/matrix/server` (`host:port` of federation);
    /// defaults to the host of `public_baseurl` on port 443 (https) or its own port.
    pub server: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Track and share online status. Large servers turn it off (every status change wakes
    /// everyone sharing a room with the user); then nothing is tracked or sent, `PUT
    /// /presence` succeeds and changes nothing, and `GET /presence` answers `offline`.
    pub enabled: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Evaluate push rules after commit: `/notifications` entries and pushes. Off, neither
    /// happens (unread counts in `/sync` are evaluated at sync time and stay exact).
    pub enabled: bool,
    /// Events waiting for push-rule evaluation (after they are durable) at most; past it,
    /// new events get no `/notifications` entry and no push (unread counts in `/sync` are
    /// unaffected), and the drop is logged and counted (`axon_push_events_dropped_total`).
    pub queue_events: usize,
    /// First delay before retrying a push the gateway failed (5xx, 429, no connection),
    /// in milliseconds; doubled after each failure up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts per push before it is given up.
    pub max_attempts: u32,
    /// Pushes waiting or in flight at most (past it new ones are dropped and logged).
    pub max_pending_pushes: usize,
    /// Push requests in flight at once.
    pub concurrent_requests: usize,
    /// Pushers one user may have.
    pub max_pushers_per_user: usize,
    /// Days `/notifications` entries are kept.
    pub notification_retention_days: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_events: 100_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            max_attempts: 10,
            max_pending_pushes: 10_000,
            concurrent_requests: 64,
            max_pushers_per_user: 20,
            notification_retention_days: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".to_owned(),
            public_baseurl: None,
            http: HttpConfig::default(),
            database: DatabaseConfig::default(),
            registration: RegistrationConfig::default(),
            limits: LimitsConfig::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
            well_known: WellKnownConfig::default(),
            presence: PresenceConfig::default(),
            outbound: crate::outbound::OutboundConfig::default(),
            media: crate::services::media::MediaConfig::default(),
            push: PushConfig::default(),
            user_directory: UserDirectoryConfig::default(),
            guests: GuestsConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: vec![SocketAddr::from(([127, 0, 0, 1], 8008))] }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("./data"), cache_mib: 8 }
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self { mode: RegistrationMode::Closed, min_password_length: 8 }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            login: RateLimit { per_second: 0.5, burst: 10 },
            failed_login_per_account: RateLimit { per_second: 0.1, burst: 5 },
            register: RateLimit { per_second: 0.2, burst: 5 },
            events: RateLimit { per_second: 10.0, burst: 50 },
            create_room_max_initial_state: 200,
            create_room_max_invites: 100,
            password_queue_per_core: 64,
            max_filters_per_user: 100,
            max_account_data_types: 1000,
            to_device_max_messages: 10_000,
            to_device_max_pending: 10_000,
            max_backup_keys_per_version: 1_000_000,
            sync_sockets_per_user: 32,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Pretty }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".to_owned(),
            listen: SocketAddr::from(DEFAULT_METRICS_LISTEN),
        }
    }
}

impl Config {
    /// Loads the configuration: defaults, then the file (if any), then `AXON_*` variables
    /// (`AXON_SERVER_NAME`, `AXON_REGISTRATION__MODE`, `AXON_HTTP__LISTEN='["0.0.0.0:8008"]'`).
    ///
    /// `path` is the file named by the user; it must exist. Without it, `config.toml` in the
    /// working directory is read when present.
    pub fn load(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let file = match path {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_owned())),
            Some(p) => Some(p.to_owned()),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                default.exists().then_some(default)
            }
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &file {
            figment = figment.merge(Toml::file(file));
        }
        // Only variables naming a configuration section count: AXON_CONFIG, AXON_PASSWORD
        // and the test harness's AXON_* variables are not configuration keys.
        let env = Env::prefixed("AXON_")
            .filter(|key| {
                let top = key.as_str().split("__").next().unwrap_or_default();
                TOP_LEVEL_KEYS.iter().any(|k| top.eq_ignore_ascii_case(k))
            })
            .split("__");
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok((config, file))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            ConfigError::Invalid(format!("server_name {:?}: {e}", self.server_name))
        })?;
        if self.http.listen.is_empty() {
            return Err(ConfigError::Invalid("http.listen must name at least one address".into()));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid("limits.max_body_bytes must be at least 1024".into()));
        }
        for (name, rate) in [
            ("login", self.limits.login),
            ("failed_login_per_account", self.limits.failed_login_per_account),
            ("register", self.limits.register),
            ("events", self.limits.events),
        ] {
            if !rate.per_second.is_finite() || rate.per_second <= 0.0 || rate.burst == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name}: per_second and burst must be positive"
                )));
            }
        }
        for (name, value) in [
            ("password_queue_per_core", self.limits.password_queue_per_core),
            ("max_filters_per_user", self.limits.max_filters_per_user),
            ("max_account_data_types", self.limits.max_account_data_types),
            ("to_device_max_messages", self.limits.to_device_max_messages),
            ("to_device_max_pending", self.limits.to_device_max_pending),
            ("max_backup_keys_per_version", self.limits.max_backup_keys_per_version),
            ("sync_sockets_per_user", self.limits.sync_sockets_per_user),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("limits.{name} must be at least 1")));
            }
        }
        if !self.metrics.path.starts_with('/') {
            return Err(ConfigError::Invalid("metrics.path must start with '/'".into()));
        }
        crate::outbound::AddressPolicy::new(&self.outbound)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.media.validate().map_err(ConfigError::Invalid)?;
        if let Some(url) = &self.public_baseurl {
            url::Url::parse(url)
                .map_err(|e| ConfigError::Invalid(format!("public_baseurl {url:?}: {e}")))?;
        }
        Ok(())
    }

    /// The base URL clients use, with a trailing slash.
    pub fn client_base_url(&self) -> String {
        let url = self.well_known.client.clone().or_else(|| self.public_baseurl.clone());
        let url = url.unwrap_or_else(|| {
            let addr = self.http.listen[0];
            let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
                "localhost".to_owned()
            } else {
                addr.ip().to_string()
            };
            format!("http://{host}:{}/", addr.port())
        });
        if url.ends_with('/') { url } else { format!("{url}/") }
    }

    /// The `m.server` delegation target for federation.
    pub fn federation_server(&self) -> String {
        if let Some(server) = &self.well_known.server {
            return server.clone();
        }
        let base = self.client_base_url();
        match url::Url::parse(&base) {
            Ok(url) => {
                let host = url.host_str().unwrap_or(&self.server_name).to_owned();
                let port = url.port_or_known_default().unwrap_or(8448);
                format!("{host}:{port}")
            }
            Err(_) => format!("{}:8448", self.server_name),
        }
    }
}
