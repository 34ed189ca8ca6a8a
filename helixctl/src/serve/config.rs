//! The configuration of `helixctl serve`: a TOML file, then `HELIX_SERVE__…` environment
//! variables over it, validated at start with errors that name the key.
//!
//! ```toml
//! database_url = "sqlite:///var/lib/helix/helix.db"   # default: the CLI's --database-url
//!
//! [http]
//! bind = "127.0.0.1:8080"                # the default
//! token = "a long random string"         # required by every POST; or HELIX_SERVE__HTTP__TOKEN
//! max_body_bytes = 1114112               # the default, 1 MiB + 64 KiB
//!
//! [[queues]]
//! domain = "default"
//! name = "webhooks"
//! partitions = 16
//!
//! [webhook]
//! connect_timeout = "5s"
//! response_timeout = "30s"
//! allow_hosts = ["hooks.example.com", "*.partner.example"]
//! allow_networks = ["10.1.0.0/16"]
//!
//! [cluster]                              # ClusterConfig, every key optional
//! session_timeout = "3s"
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use helix_actors::tasks::webhook::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, Destinations, IpNet, WebhookConfig,
};
use helix_core::{ClusterConfig, DomainName, MAX_PARTITIONS, QueueName};
use helix_store::StoreUrl;
use serde::Deserialize;

/// The prefix of the environment variables that override the file: `HELIX_SERVE__HTTP__TOKEN`
/// sets `http.token`, `HELIX_SERVE__DATABASE_URL` sets `database_url` (keys are separated by
/// two underscores).
pub const ENV_PREFIX: &str = "HELIX_SERVE";

/// The address the HTTP API listens on by default: the loopback interface only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// The largest request body accepted by default: 1 MiB (a task's largest payload) and 64 KiB
/// for the JSON around it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// The bounds of `http.max_body_bytes`.
pub const MAX_BODY_BYTES_RANGE: (usize, usize) = (1024, 64 * 1024 * 1024);

/// A secret (the API token, a database URL with its password): its `Debug` and `Display`
/// print `***`, so that it never reaches a log or an error message by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything `helixctl serve` reads at start. Every key is optional; see the
/// [module](self) for an example file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The cluster's database; when absent, the command line's `--database-url` (or
    /// `HELIX_DATABASE_URL`, or `sqlite://helix.db`). Shown only redacted.
    pub database_url: Option<Secret>,
    /// The HTTP API.
    pub http: HttpConfig,
    /// The queues this process serves with the webhook handler, created at start when
    /// missing. Default: one queue `default/webhooks` of 16 partitions.
    pub queues: Queues,
    /// How webhooks are delivered.
    pub webhook: WebhookSettings,
    /// The cluster's timings ([`ClusterConfig`]; every process of a cluster should use the
    /// same).
    pub cluster: ClusterConfig,
}

/// The `[http]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on. Default [`DEFAULT_BIND`] (loopback only); port 0 picks a free
    /// port (the address is printed on stdout).
    pub bind: String,
    /// The bearer token that every mutating request (POST, PUT, PATCH, DELETE) must present
    /// as `Authorization: Bearer <token>`. Without one (and without
    /// `allow_unauthenticated`), the API is read-only: every mutating request gets 401.
    pub token: Option<Secret>,
    /// Accept mutating requests without a token. Only for a trusted network; refused together
    /// with a `token`.
    pub allow_unauthenticated: bool,
    /// The largest request body accepted; a larger one gets 413. Default
    /// [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.to_owned(),
            token: None,
            allow_unauthenticated: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The `[[queues]]` array (a newtype so that its default is one queue, not none).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Queues(pub Vec<QueueConfig>);

impl Default for Queues {
    fn default() -> Self {
        Self(vec![QueueConfig {
            domain: "default".to_owned(),
            name: "webhooks".to_owned(),
            partitions: 16,
            capacity: 1,
        }])
    }
}

/// One `[[queues]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The queue's domain.
    pub domain: String,
    /// The queue's name.
    pub name: String,
    /// Its partition count (1 to 65,536); it never changes, so an existing queue must have
    /// this many.
    pub partitions: u64,
    /// This process's weight for the queue's partitions. Default 1.
    #[serde(default = "one")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}

/// The `[webhook]` table, mapped onto [`WebhookConfig`] and [`Destinations`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The bound on connecting. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The bound on one whole attempt. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How many redirects to follow. Default 0.
    pub follow_redirects: u32,
    /// Host names deliveries may go to (`*.example.com` for subdomains). With this or
    /// `allow_networks` non-empty, nothing else is allowed.
    pub allow_hosts: Vec<String>,
    /// Networks (`10.0.0.0/8`, `127.0.0.1/32`) deliveries may go to, even ones refused by
    /// default (loopback, link-local).
    pub allow_networks: Vec<String>,
    /// Networks refused on top of the default rules.
    pub deny_networks: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            follow_redirects: 0,
            allow_hosts: Vec::new(),
            allow_networks: Vec::new(),
            deny_networks: Vec::new(),
        }
    }
}

/// A configuration that could not be read or does not validate; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Who may send mutating requests.
#[derive(Debug, Clone)]
pub enum Access {
    /// Those presenting this bearer token.
    Token(Secret),
    /// Nobody: the API is read-only.
    ReadOnly,
    /// Everybody (`allow_unauthenticated = true`).
    Open,
}

/// A [`ServeConfig`] that passed validation, in the types the server uses.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The database URL (its `Display` redacts the password).
    pub database_url: StoreUrl,
    /// The database URL as given, for connecting.
    pub database_url_raw: Secret,
    /// The address to listen on.
    pub bind: SocketAddr,
    /// Who may send mutating requests.
    pub access: Access,
    /// The largest request body.
    pub max_body_bytes: usize,
    /// The queues to serve: domain, name, partitions, capacity.
    pub queues: Vec<(DomainName, QueueName, u64, u32)>,
    /// The webhook handler's configuration.
    pub webhook: WebhookConfig,
    /// The cluster's timings.
    pub cluster: ClusterConfig,
}

impl ServeConfig {
    /// Reads the TOML file `path` (when given), then the `HELIX_SERVE__…` environment
    /// variables over it ([`ENV_PREFIX`]).
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or parsed, or a value has the wrong type.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder =
                builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        builder = builder
            .add_source(config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__"));
        let read = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        read.try_deserialize().map_err(|e| ConfigError(e.to_string()))
    }

    /// Reads the TOML text `text` alone (no environment): for tests and embedding.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// Checks every key; `fallback_database_url` stands for an absent `database_url`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first key that is wrong and why.
    pub fn validate(&self, fallback_database_url: &str) -> Result<Validated, ConfigError> {
        let bad = |key: &str, why: String| ConfigError(format!("{key}: {why}"));
        let raw = self.database_url.clone().unwrap_or_else(|| Secret::new(fallback_database_url));
        let database_url = StoreUrl::parse(raw.expose()).map_err(|e| bad("database_url", e.to_string()))?;
        let bind: SocketAddr = self.http.bind.parse().map_err(|_| {
            bad(
                "http.bind",
                format!("{:?} is not an address as host:port (an IP address and a port)", self.http.bind),
            )
        })?;
        let access = match (&self.http.token, self.http.allow_unauthenticated) {
            (Some(token), false) if token.expose().trim().is_empty() => {
                return Err(bad("http.token", "must not be empty".into()));
            }
            (Some(token), false) => Access::Token(token.clone()),
            (Some(_), true) => {
                return Err(bad(
                    "http.allow_unauthenticated",
                    "cannot be true while http.token is set".into(),
                ));
            }
            (None, true) => Access::Open,
            (None, false) => Access::ReadOnly,
        };
        let (min, max) = MAX_BODY_BYTES_RANGE;
        if !(min..=max).contains(&self.http.max_body_bytes) {
            return Err(bad("http.max_body_bytes", format!("must be between {min} and {max}")));
        }
        if self.queues.0.is_empty() {
            return Err(bad("queues", "at least one queue must be served".into()));
        }
        let mut queues = Vec::new();
        for (i, q) in self.queues.0.iter().enumerate() {
            let domain =
                DomainName::new(&q.domain).map_err(|e| bad(&format!("queues[{i}].domain"), e.to_string()))?;
            let name =
                QueueName::new(&q.name).map_err(|e| bad(&format!("queues[{i}].name"), e.to_string()))?;
            if q.partitions == 0 || q.partitions > u64::from(MAX_PARTITIONS) {
                return Err(bad(
                    &format!("queues[{i}].partitions"),
                    format!("must be between 1 and {MAX_PARTITIONS}"),
                ));
            }
            if q.capacity == 0 {
                return Err(bad(&format!("queues[{i}].capacity"), "must be 1 or more".into()));
            }
            if queues.iter().any(|(d, n, _, _)| *d == domain && *n == name) {
                return Err(bad(&format!("queues[{i}]"), format!("{domain}/{name} is listed twice")));
            }
            queues.push((domain, name, q.partitions, q.capacity));
        }
        let w = &self.webhook;
        if w.connect_timeout.is_zero() {
            return Err(bad("webhook.connect_timeout", "must be more than 0".into()));
        }
        if w.response_timeout.is_zero() {
            return Err(bad("webhook.response_timeout", "must be more than 0".into()));
        }
        let mut destinations = Destinations::new();
        for (i, host) in w.allow_hosts.iter().enumerate() {
            if host.trim().is_empty() || host.contains(['/', ':', ' ']) {
                return Err(bad(
                    &format!("webhook.allow_hosts[{i}]"),
                    format!("{host:?} is not a host name"),
                ));
            }
            destinations = destinations.allow_host(host);
        }
        for (i, net) in w.allow_networks.iter().enumerate() {
            destinations = destinations.allow_network(
                network(net).map_err(|why| bad(&format!("webhook.allow_networks[{i}]"), why))?,
            );
        }
        for (i, net) in w.deny_networks.iter().enumerate() {
            destinations = destinations
                .deny_network(network(net).map_err(|why| bad(&format!("webhook.deny_networks[{i}]"), why))?);
        }
        let webhook = WebhookConfig::default()
            .timeouts(w.connect_timeout, w.response_timeout)
            .follow_redirects(w.follow_redirects)
            .destinations(destinations);
        self.cluster.validate().map_err(|e| bad("cluster", e.to_string()))?;
        Ok(Validated {
            database_url,
            database_url_raw: raw,
            bind,
            access,
            max_body_bytes: self.http.max_body_bytes,
            queues,
            webhook,
            cluster: self.cluster.clone(),
        })
    }
}

/// A network as `10.0.0.0/8`, or one address (`127.0.0.1`, `::1`).
fn network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network (10.0.0.0/8) or an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match ServeConfig::from_toml(text).and_then(|c| c.validate("memory://")) {
            Ok(_) => panic!("{text} validated"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_validate_to_a_read_only_loopback_api_with_one_queue() {
        let v = ServeConfig::default().validate("memory://").expect("defaults validate");
        assert_eq!(v.bind, DEFAULT_BIND.parse().expect("addr"));
        assert!(matches!(v.access, Access::ReadOnly));
        assert_eq!(v.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(v.queues.len(), 1);
        assert_eq!(v.queues[0].2, 16);
    }

    #[test]
    fn a_file_sets_every_table() {
        let text = r#"
            database_url = "sqlite:///tmp/x.db"
            [http]
            bind = "0.0.0.0:9000"
            token = "s3cret-token"
            max_body_bytes = 4096
            [[queues]]
            domain = "d"
            name = "q"
            partitions = 4
            [webhook]
            connect_timeout = "2s"
            allow_networks = ["127.0.0.1/32", "::1"]
            [cluster]
            session_timeout = "6s"
            heartbeat_interval = "1s"
        "#;
        let v = ServeConfig::from_toml(text).expect("parses").validate("memory://").expect("validates");
        assert_eq!(v.bind.port(), 9000);
        assert!(matches!(&v.access, Access::Token(t) if t.expose() == "s3cret-token"));
        assert_eq!(v.queues[0].2, 4);
        assert_eq!(v.webhook.connect_timeout, Duration::from_secs(2));
        assert_eq!(v.cluster.session_timeout, Duration::from_secs(6));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            error("[[queues]]\ndomain = \"d\"\nname = \"q\"\npartitions = 0")
                .starts_with("queues[0].partitions: must be between 1 and 65536")
        );
        assert!(error("[http]\nbind = \"localhost\"").starts_with("http.bind:"));
        assert!(error("[http]\nmax_body_bytes = 10").starts_with("http.max_body_bytes:"));
        assert!(error("[http]\ntoken = \"\"").starts_with("http.token:"));
        assert!(
            error("[http]\ntoken = \"t\"\nallow_unauthenticated = true")
                .starts_with("http.allow_unauthenticated:")
        );
        assert!(error("[webhook]\nallow_networks = [\"nope\"]").starts_with("webhook.allow_networks[0]:"));
        assert!(
            error("[[queues]]\ndomain = \"bad name\"\nname = \"q\"\npartitions = 1")
                .starts_with("queues[0].domain:")
        );
        assert!(error("database_url = \"ftp://x\"").starts_with("database_url:"));
        assert!(error("[cluster]\nheartbeat_interval = \"5s\"").starts_with("cluster:"));
        assert!(error("[http]\nbnd = \"x\"").contains("bnd"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let text = "database_url = \"mysql://root:hunter2@db/helix\"\n[http]\ntoken = \"tok-very-secret\"";
        let config = ServeConfig::from_toml(text).expect("parses");
        let validated = config.validate("memory://").expect("validates");
        for shown in [format!("{config:?}"), format!("{validated:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("tok-very-secret"), "{shown}");
        }
    }
}
