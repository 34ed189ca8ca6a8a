//! Webhook delivery as a built-in task handler (DESIGN §6; semantics in
//! `docs/scheduling.md`, "Webhooks"): a task whose payload is a [`WebhookRequest`] envelope is POSTed to
//! its URL by a [`WebhookHandler`].
//!
//! Delivery is **at least once**, like every task (`docs/tasks.md`): a receiver can see the same
//! delivery more than once and must deduplicate by the [`IDEMPOTENCY_KEY`] header, which is the
//! same on every attempt of a task. Each attempt sends:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `User-Agent` | [`WebhookConfig::user_agent`] (default [`DEFAULT_USER_AGENT`]) |
//! | `Idempotency-Key` | `helix-<queue id>-<task id>-<created_at in Unix ms>`, see [`idempotency_key`] |
//! | `Helix-Task-Id` | the task id |
//! | `Helix-Attempt` | the attempt number, from 1 |
//!
//! and the envelope's own headers. How an attempt ends:
//!
//! | response | outcome |
//! |---|---|
//! | 2xx | done, the status and the start of the body kept as the task's `result` |
//! | 408, 429, 5xx | retried after the queue's backoff, or after `Retry-After` (capped at [`WebhookConfig::max_retry_after`]) |
//! | 3xx | dead (redirects are not followed), unless [`WebhookConfig::follow_redirects`] allows following within the origin |
//! | other 4xx (and anything else) | dead: another attempt would get the same answer |
//! | connection refused, DNS failure, timeout, broken connection | retried |
//! | malformed envelope, bad URL, refused destination | dead |
//!
//! Failures keep the status and the start of the body in the task's `last_error`.
//!
//! **Destinations** ([`Destinations`]): the handler refuses loopback, link-local (including the
//! cloud metadata address 169.254.169.254), unspecified, multicast and broadcast addresses,
//! other cloud metadata addresses, their forms inside IPv6 (mapped, translated, compatible,
//! NAT64, 6to4), Teredo and NAT64 local-use addresses, and well-known metadata names, unless an allow-list entry names the
//! address; it checks the addresses a name **resolves to** (its own DNS resolver, so a name
//! that resolves to a refused address is refused, on every connection), not only the URL text.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use helix_store::TaskRecord;
pub use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, redirect};
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use super::handler::{TaskContext, TaskHandler, TaskOutcome};

/// The longest webhook URL, in bytes: 2,048 (what browsers and most servers accept).
pub const MAX_URL_BYTES: usize = 2_048;
/// How much of a response body is kept in the task's `result` or `last_error`: its first
/// 1,024 bytes, cut at a character boundary (ending with `…` when cut).
pub const MAX_RESPONSE_EXCERPT_BYTES: usize = 1_024;
/// The default bound on establishing a connection (TCP and TLS): 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on a whole attempt, from sending the request to reading the start of the
/// response body: 30 s.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured by default: 1 h (a longer one is cut to it).
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);
/// The `User-Agent` sent by default.
pub const DEFAULT_USER_AGENT: &str = concat!("helix-webhook/", env!("CARGO_PKG_VERSION"));
/// The header carrying the delivery's idempotency key ([`idempotency_key`]).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The header carrying the task id.
pub const TASK_ID_HEADER: &str = "Helix-Task-Id";
/// The header carrying the attempt number, from 1.
pub const ATTEMPT_HEADER: &str = "Helix-Attempt";

/// Headers an envelope may not set: those Helix sets itself, and those that frame the
/// request or the connection (any `helix-*` name is refused too).
const RESERVED_HEADERS: [&str; 14] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "user-agent",
    "idempotency-key",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
];

/// Host names of cloud metadata services, refused unless an allow-list entry names them.
const METADATA_NAMES: [&str; 4] =
    ["metadata.google.internal", "metadata.goog", "metadata", "instance-data.ec2.internal"];

/// Why a webhook envelope or URL is refused, at enqueue ([`TaskSpec::webhook`]) or by the
/// handler (which makes the task dead with this message).
///
/// [`TaskSpec::webhook`]: crate::client::TaskSpec::webhook
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL does not parse.
    #[error("webhook url {url:?} is not a valid url: {reason}")]
    NotAUrl {
        /// The URL as given (cut to 100 bytes).
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The URL's scheme is not `http` or `https`.
    #[error("webhook url scheme {0:?} is not http or https")]
    Scheme(String),
    /// The URL has no host.
    #[error("webhook url has no host")]
    NoHost,
    /// The URL carries a user name or a password (`user:pass@`): credentials belong in a
    /// header, not in a URL that is logged and stored.
    #[error("webhook url carries credentials (user:pass@); send them in a header instead")]
    UserInfo,
    /// The URL is longer than [`MAX_URL_BYTES`].
    #[error("webhook url of {0} bytes is over the limit of {MAX_URL_BYTES} bytes")]
    TooLong(usize),
    /// The envelope sets a header that Helix sets or that frames the request.
    #[error("webhook header {0:?} is set by helix or frames the request and cannot be given")]
    ReservedHeader(String),
    /// A header name or value is not valid HTTP.
    #[error("webhook header {name:?} is not valid: {reason}")]
    BadHeader {
        /// The header's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body does not serialize as JSON.
    #[error("webhook body does not serialize as json: {0}")]
    Body(String),
    /// A task payload that is not a webhook envelope.
    #[error("task payload is not a webhook envelope: {0}")]
    Envelope(String),
    /// The HTTP client could not be built (the TLS setup failed).
    #[error("the webhook http client could not be built: {0}")]
    Client(String),
}

/// The payload of a webhook task: a JSON envelope
/// `{"url": "https://…", "body": <any JSON>, "headers": {"name": "value", …}}`.
///
/// - `url`: `http` or `https`, with a host, without `user:pass@`, at most [`MAX_URL_BYTES`];
/// - `body`: the request body, sent as JSON (`Content-Type: application/json`);
/// - `headers` (optional): extra request headers, valid HTTP; not those Helix sets
///   (`Content-Type`, `User-Agent`, `Idempotency-Key`, any `Helix-*`) nor those that frame the
///   request (`Host`, `Content-Length`, `Transfer-Encoding`, `Connection`, …).
///
/// Unknown fields are refused (a misspelt `header` would otherwise be dropped silently).
///
/// ```
/// use helix_actors::tasks::webhook::WebhookRequest;
///
/// let request = WebhookRequest::new("https://hooks.example.com/orders", &serde_json::json!({ "order": 42 }))?
///     .header("X-Signature", "sha256=…")?;
/// assert_eq!(request.url(), "https://hooks.example.com/orders");
/// # Ok::<(), helix_actors::tasks::webhook::WebhookError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    url: String,
    body: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

impl WebhookRequest {
    /// A POST of `body` (as JSON) to `url`.
    ///
    /// # Errors
    /// A [`WebhookError`] naming what is wrong with the URL ([`validate_url`]), or
    /// [`WebhookError::Body`] when `body` does not serialize.
    pub fn new<T: Serialize + ?Sized>(url: &str, body: &T) -> Result<Self, WebhookError> {
        validate_url(url)?;
        let body = serde_json::to_value(body).map_err(|e| WebhookError::Body(e.to_string()))?;
        Ok(Self { url: url.to_owned(), body, headers: BTreeMap::new() })
    }

    /// The same request with the extra header `name: value` (replacing an earlier one of the
    /// same name, compared without case).
    ///
    /// # Errors
    /// [`WebhookError::ReservedHeader`] for a header Helix sets or one that frames the
    /// request; [`WebhookError::BadHeader`] for a name or value that is not valid HTTP.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, WebhookError> {
        check_header(name, value)?;
        self.headers.retain(|n, _| !n.eq_ignore_ascii_case(name));
        self.headers.insert(name.to_owned(), value.to_owned());
        Ok(self)
    }

    /// The destination URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request body.
    pub fn body(&self) -> &serde_json::Value {
        &self.body
    }

    /// The extra headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// Checks the URL and the headers; returns the parsed URL.
    ///
    /// # Errors
    /// As [`validate_url`] and [`header`](Self::header).
    pub fn validate(&self) -> Result<Url, WebhookError> {
        let url = validate_url(&self.url)?;
        for (name, value) in &self.headers {
            check_header(name, value)?;
        }
        Ok(url)
    }

    /// The envelope as a task payload (JSON).
    ///
    /// # Errors
    /// [`WebhookError::Body`] when it does not serialize (it always does once built).
    pub fn to_payload(&self) -> Result<Vec<u8>, WebhookError> {
        serde_json::to_vec(self).map_err(|e| WebhookError::Body(e.to_string()))
    }

    /// Reads and checks an envelope from a task payload.
    ///
    /// # Errors
    /// [`WebhookError::Envelope`] when the payload is not an envelope; otherwise as
    /// [`validate`](Self::validate).
    pub fn from_payload(payload: &[u8]) -> Result<Self, WebhookError> {
        let request: Self =
            serde_json::from_slice(payload).map_err(|e| WebhookError::Envelope(e.to_string()))?;
        request.validate()?;
        Ok(request)
    }
}

/// Checks a webhook URL: at most [`MAX_URL_BYTES`], parses, scheme `http` or `https`, a host,
/// no user name or password. Returns the parsed URL. Says nothing about the destination's
/// addresses: the handler's [`Destinations`] decide those when it delivers.
///
/// # Errors
/// The [`WebhookError`] naming the first rule broken, in that order.
pub fn validate_url(url: &str) -> Result<Url, WebhookError> {
    if url.len() > MAX_URL_BYTES {
        return Err(WebhookError::TooLong(url.len()));
    }
    let parsed = Url::parse(url).map_err(|e| match e {
        url::ParseError::EmptyHost => WebhookError::NoHost,
        other => WebhookError::NotAUrl { url: cut(url, 100), reason: other.to_string() },
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::Scheme(parsed.scheme().to_owned()));
    }
    match parsed.host() {
        None => return Err(WebhookError::NoHost),
        Some(Host::Domain("")) => return Err(WebhookError::NoHost),
        Some(_) => {}
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::UserInfo);
    }
    Ok(parsed)
}

fn check_header(name: &str, value: &str) -> Result<(), WebhookError> {
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str())
        || lower.starts_with("helix-")
        || lower.starts_with("proxy-")
    {
        return Err(WebhookError::ReservedHeader(name.to_owned()));
    }
    let bad = |reason: String| WebhookError::BadHeader { name: name.to_owned(), reason };
    HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
    HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// `text` cut to at most `max` bytes at a character boundary, ending with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The idempotency key of every attempt of `task`:
/// `helix-<queue id>-<task id>-<created_at in Unix milliseconds>`.
///
/// Made only of what never changes for a task (its queue, its id, the instant it was
/// enqueued; milliseconds, which every store keeps exactly), so it is the same on every
/// attempt, under every owner, and after an operator's retry of the dead task; the creation
/// instant keeps it apart from a task that reuses the id in a store that was emptied and
/// started again.
pub fn idempotency_key(task: &TaskRecord) -> String {
    format!("helix-{}-{}-{}", task.queue_id, task.id, task.created_at.timestamp_millis())
}

/// A destination the handler refuses, and the rule that refused it: the task is dead with
/// this as its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The host or address refused.
    pub destination: String,
    /// The rule that refused it.
    pub rule: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "webhook destination {} refused: {}", self.destination, self.rule)
    }
}

impl std::error::Error for Refused {}

/// Where a [`WebhookHandler`] may deliver (SSRF protection).
///
/// **Default** (no allow-list): any host, except addresses in these ranges, refused because a
/// webhook URL comes from outside and must not reach the worker's own machine or its cloud
/// metadata service:
/// - loopback `127.0.0.0/8`, `::1`;
/// - link-local `169.254.0.0/16` (which holds the metadata address `169.254.169.254`),
///   `fe80::/10`;
/// - unspecified `0.0.0.0/8`, `::`;
/// - multicast `224.0.0.0/4`, `ff00::/8`, and broadcast `255.255.255.255`;
/// - the metadata addresses `fd00:ec2::254` (AWS, IPv6), `100.100.100.200` (Alibaba Cloud),
///   `168.63.129.16` (Azure WireServer) and `192.0.0.192` (Oracle Cloud);
/// - the IPv4 forms of these inside IPv6 addresses (IPv4-mapped `::ffff:0:0/96`,
///   IPv4-translated `::ffff:0:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`, 6to4
///   `2002::/16`);
/// - all of Teredo `2001::/32` (its client address is hidden, obfuscated) and of NAT64
///   local-use `64:ff9b:1::/48` (where its IPv4 address sits depends on the local prefix
///   length, unknown here): allow a network to reach them;
/// - the metadata host names `metadata.google.internal`, `metadata.goog`, `metadata` and
///   `instance-data.ec2.internal`;
/// - and the networks added with [`deny_network`](Self::deny_network), also inside IPv6 in the
///   forms above (private networks such as `10.0.0.0/8` are allowed unless denied so).
///
/// **Allow-list**: once any entry is added, a destination must be an allowed host
/// ([`allow_host`](Self::allow_host)) or have its addresses in an allowed network
/// ([`allow_network`](Self::allow_network), [`allow_ip`](Self::allow_ip)). An address inside
/// an allowed network is allowed whatever the rules above say (that is how `127.0.0.1` is
/// allowed on purpose); an allowed *host name* is not exempt from them, so a listed name
/// that resolves to a refused address is still refused. A listed metadata name is allowed by
/// name.
///
/// The rules apply to the **resolved** addresses: the handler's client resolves names with a
/// resolver that drops refused addresses and fails when none is left, on every connection
/// (so a DNS answer that changes between a check and the connection cannot get around them);
/// literal IP addresses in a URL are checked before sending, and so is every redirect hop.
/// The client uses no proxy (a proxy would resolve names out of reach of these rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    hosts: Vec<String>,
    networks: Vec<IpNet>,
    denied: Vec<IpNet>,
}

impl Destinations {
    /// The default rules, no allow-list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows the host `name` (case-insensitive, a trailing dot ignored), or every subdomain
    /// of `example.com` with `*.example.com` (not `example.com` itself). Its addresses must
    /// still pass the default rules.
    pub fn allow_host(mut self, name: &str) -> Self {
        self.hosts.push(normalize(name));
        self
    }

    /// Allows every address in `network`, even one the default rules refuse.
    pub fn allow_network(mut self, network: IpNet) -> Self {
        self.networks.push(network.trunc());
        self
    }

    /// Allows the address `ip` alone, even one the default rules refuse.
    pub fn allow_ip(self, ip: IpAddr) -> Self {
        self.allow_network(IpNet::from(ip))
    }

    /// Refuses every address in `network` too (unless an allowed network holds it).
    pub fn deny_network(mut self, network: IpNet) -> Self {
        self.denied.push(network.trunc());
        self
    }

    fn restricted(&self) -> bool {
        !(self.hosts.is_empty() && self.networks.is_empty())
    }

    fn host_allowed(&self, name: &str) -> bool {
        let name = normalize(name);
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => {
                name.len() > domain.len() + 1 && name.ends_with(domain) && {
                    let dot = name.len() - domain.len() - 1;
                    name.as_bytes()[dot] == b'.'
                }
            }
            None => *h == name,
        })
    }

    fn network_allowed(&self, ip: IpAddr) -> bool {
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        self.networks.iter().any(|n| n.contains(&ip) || embedded.is_some_and(|v4| n.contains(&v4)))
    }

    /// Checks a URL's host before any connection: a name (metadata names, the allow-list) or
    /// a literal address (every rule).
    ///
    /// # Errors
    /// The [`Refused`] destination and the rule that refused it.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        match url.host() {
            None => Err(Refused { destination: url.to_string(), rule: "the url has no host".to_owned() }),
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), false),
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), false),
            Some(Host::Domain(name)) => self.check_name(name),
        }
    }

    /// Checks a host name: a metadata name is refused unless listed by name; with an
    /// allow-list, a name it does not list is refused when no allowed network could hold its
    /// addresses (its addresses are checked when it is resolved).
    ///
    /// # Errors
    /// The [`Refused`] name and the rule that refused it.
    pub fn check_name(&self, name: &str) -> Result<(), Refused> {
        let normal = normalize(name);
        let listed = self.host_allowed(&normal);
        if METADATA_NAMES.contains(&normal.as_str()) && !listed {
            return Err(Refused {
                destination: name.to_owned(),
                rule: "a cloud metadata host name (allow it by name to reach it)".to_owned(),
            });
        }
        if self.restricted() && !listed && self.networks.is_empty() {
            return Err(Refused {
                destination: name.to_owned(),
                rule: "the host is not on the allow-list".to_owned(),
            });
        }
        Ok(())
    }

    /// Checks one address: `by_name` says whether it is the address of a host the allow-list
    /// names (which exempts it from the allow-list, not from the default rules).
    ///
    /// # Errors
    /// The [`Refused`] address and the rule that refused it.
    pub fn check_ip(&self, ip: IpAddr, by_name: bool) -> Result<(), Refused> {
        if self.network_allowed(ip) {
            return Ok(());
        }
        let refused = |rule: String| Err(Refused { destination: ip.to_string(), rule });
        if let Some(rule) = default_rule(ip) {
            return refused(format!(
                "{rule} addresses are refused by default (allow the address to reach it)"
            ));
        }
        if self.restricted() && !by_name {
            return refused(
                "the address is in no allowed network and its host is not on the allow-list".to_owned(),
            );
        }
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        if let Some(net) =
            self.denied.iter().find(|n| n.contains(&ip) || embedded.is_some_and(|v4| n.contains(&v4)))
        {
            return refused(format!("the address is in the denied network {net}"));
        }
        Ok(())
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The IPv4 address inside an IPv6 one: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` (the well-known
/// prefix, a /96), and 6to4 `2002:aabb:ccdd::/48` (`aa.bb.cc.dd` in the second and third
/// groups).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(v4(s[6], s[7]))
        }
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// The default rule that refuses `ip`, if any.
fn default_rule(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_rule(v4).map(str::to_owned),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                return Some("loopback (::1)".to_owned());
            }
            if v6.is_unspecified() {
                return Some("unspecified (::)".to_owned());
            }
            if v6.is_multicast() {
                return Some("multicast (ff00::/8)".to_owned());
            }
            if s[0] & 0xffc0 == 0xfe80 {
                return Some("link-local (fe80::/10)".to_owned());
            }
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                return Some("cloud metadata (fd00:ec2::254)".to_owned());
            }
            if s[..2] == [0x2001, 0] {
                return Some("Teredo (2001::/32)".to_owned());
            }
            if s[..3] == [0x64, 0xff9b, 1] {
                return Some("NAT64 local-use (64:ff9b:1::/48)".to_owned());
            }
            embedded_v4(ip).and_then(v4_rule).map(|rule| format!("IPv4 {rule} inside IPv6"))
        }
    }
}

fn v4_rule(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback (127.0.0.0/8)")
    } else if ip.octets()[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_link_local() {
        Some("link-local and cloud metadata (169.254.0.0/16)")
    } else if ip.is_multicast() {
        Some("multicast (224.0.0.0/4)")
    } else if ip.is_broadcast() {
        Some("broadcast (255.255.255.255)")
    } else if ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata (100.100.100.200, Alibaba Cloud)")
    } else if ip == Ipv4Addr::new(168, 63, 129, 16) {
        Some("cloud metadata (168.63.129.16, Azure WireServer)")
    } else if ip == Ipv4Addr::new(192, 0, 0, 192) {
        Some("cloud metadata (192.0.0.192, Oracle Cloud)")
    } else {
        None
    }
}

/// Resolves names for the handler's client and keeps only the addresses its
/// [`Destinations`] allow: a name whose every address is refused fails to resolve, with the
/// [`Refused`] rule as the error.
struct GuardedResolver {
    destinations: Arc<Destinations>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let destinations = Arc::clone(&self.destinations);
        Box::pin(async move {
            type Failure = Box<dyn std::error::Error + Send + Sync>;
            let host = name.as_str().to_owned();
            destinations.check_name(&host)?;
            let by_name = destinations.host_allowed(&host);
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match destinations.check_ip(addr.ip(), by_name) {
                    Ok(()) => true,
                    Err(refused) => {
                        first_refusal.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            match first_refusal {
                Some(refused) if allowed.is_empty() => Err(Box::new(Refused {
                    destination: format!("{host} ({})", refused.destination),
                    rule: refused.rule,
                }) as Failure),
                _ => Ok::<Addrs, Failure>(Box::new(allowed.into_iter())),
            }
        })
    }
}

/// How a [`WebhookHandler`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The bound on establishing a connection (TCP and TLS). Default
    /// [`DEFAULT_CONNECT_TIMEOUT`] (5 s).
    pub connect_timeout: Duration,
    /// The bound on a whole attempt: connecting, sending, the response's head and the start
    /// of its body. Never more than nine tenths of the task's own timeout (so that the
    /// handler, not the runner, reports the timeout, with its reason). Default
    /// [`DEFAULT_RESPONSE_TIMEOUT`] (30 s).
    pub response_timeout: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to it. Default
    /// [`DEFAULT_MAX_RETRY_AFTER`] (1 h).
    pub max_retry_after: Duration,
    /// How many redirects an attempt follows, each hop checked against the URL rules and the
    /// [`Destinations`] (301, 302 and 303 are followed with a GET without body, as browsers
    /// do; 307 and 308 with the same POST). Only redirects within the delivery URL's origin
    /// (scheme, host and port) are followed, so that the envelope's headers reach no other
    /// host; a hop to another origin, an `https` to `http` downgrade included, is a permanent
    /// failure, nothing sent to it. Default 0: a 3xx answer is a permanent failure.
    pub follow_redirects: u32,
    /// Where deliveries may go. Default: [`Destinations::new`].
    pub destinations: Destinations,
    /// The `User-Agent` of every request. Default [`DEFAULT_USER_AGENT`].
    pub user_agent: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            follow_redirects: 0,
            destinations: Destinations::new(),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
        }
    }
}

impl WebhookConfig {
    /// The same configuration delivering only where `destinations` allow.
    pub fn destinations(mut self, destinations: Destinations) -> Self {
        self.destinations = destinations;
        self
    }

    /// The same configuration with these timeouts.
    pub fn timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }

    /// The same configuration following up to `hops` redirects.
    pub fn follow_redirects(mut self, hops: u32) -> Self {
        self.follow_redirects = hops;
        self
    }

    /// The same configuration honouring `Retry-After` up to `max`.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }
}

/// Delivers webhook tasks: POSTs each task's [`WebhookRequest`] and answers its outcome by the
/// table of the [module](self). Register it like any [`TaskHandler`]
/// ([`WorkerBuilder::tasks`](crate::node::WorkerBuilder::tasks)); enqueue with
/// [`TaskSpec::webhook`](crate::client::TaskSpec::webhook).
///
/// One handler holds one HTTP client (rustls, its connection pool shared by all its
/// partitions); it runs on the worker's handler arbiter like every task handler.
///
/// ```no_run
/// use std::net::{IpAddr, Ipv4Addr};
/// use helix_actors::tasks::TaskPolicy;
/// use helix_actors::tasks::webhook::{Destinations, WebhookConfig, WebhookHandler};
///
/// # fn demo(builder: helix_actors::node::WorkerBuilder, queue: helix_core::QueueId) -> Result<(), Box<dyn std::error::Error>> {
/// let config = WebhookConfig::default()
///     .destinations(Destinations::new().allow_host("hooks.example.com").allow_host("*.partner.example"));
/// let builder = builder.tasks(queue, WebhookHandler::new(config)?, TaskPolicy::default());
/// # let _ = builder; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WebhookHandler {
    client: reqwest::Client,
    config: Arc<WebhookConfig>,
    destinations: Arc<Destinations>,
}

impl WebhookHandler {
    /// A handler delivering under `config`.
    ///
    /// # Errors
    /// [`WebhookError::Client`] when the HTTP client cannot be built (its TLS setup failed).
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        let destinations = Arc::new(config.destinations.clone());
        let policy = if config.follow_redirects == 0 {
            redirect::Policy::none()
        } else {
            let (hops, rules) = (config.follow_redirects as usize, Arc::clone(&destinations));
            redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > hops {
                    let stop = format!("more than {hops} redirects");
                    return attempt.error(stop);
                }
                let hop = validate_url(attempt.url().as_str())
                    .map_err(|e| Refused { destination: attempt.url().to_string(), rule: e.to_string() })
                    .and_then(|url| rules.check_url(&url));
                if let Err(refused) = hop {
                    return attempt.error(refused);
                }
                match attempt.previous().first().map(|from| check_redirect(from, attempt.url())) {
                    Some(Err(refused)) => attempt.error(refused),
                    _ => attempt.follow(),
                }
            })
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(policy)
            .no_proxy()
            .user_agent(config.user_agent.clone())
            .dns_resolver(Arc::new(GuardedResolver { destinations: Arc::clone(&destinations) }))
            .build()
            .map_err(|e| WebhookError::Client(chain(&e)))?;
        Ok(Self { client, config: Arc::new(config), destinations })
    }

    /// The configuration this handler delivers under.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// One attempt of `task`.
    async fn deliver(&self, task: &TaskContext) -> TaskOutcome {
        let request = match WebhookRequest::from_payload(task.payload()) {
            Ok(request) => request,
            Err(e) => return TaskOutcome::fail(e),
        };
        let url = match request.validate() {
            Ok(url) => url,
            Err(e) => return TaskOutcome::fail(e),
        };
        if let Err(refused) = self.destinations.check_url(&url) {
            return TaskOutcome::fail(refused);
        }
        let body = match serde_json::to_vec(request.body()) {
            Ok(body) => body,
            Err(e) => return TaskOutcome::fail(WebhookError::Body(e.to_string())),
        };
        let budget = self.config.response_timeout.min(task.timeout() * 9 / 10).max(Duration::from_millis(1));
        let mut send = self
            .client
            .post(url)
            .timeout(budget)
            .header(CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY, idempotency_key(task.record()))
            .header(TASK_ID_HEADER, task.id().to_string())
            .header(ATTEMPT_HEADER, task.attempt().to_string())
            .body(body);
        for (name, value) in request.headers() {
            send = send.header(name.as_str(), value.as_str());
        }
        let response = match send.send().await {
            Ok(response) => response,
            Err(e) => return self.transport_failure(&e, budget),
        };
        let (status, headers) = (response.status(), response.headers().clone());
        let excerpt = match excerpt(response).await {
            Ok(excerpt) => excerpt,
            // A 2xx whose body broke off: the receiver may not have committed; try again.
            Err(e) => return self.transport_failure(&e, budget),
        };
        self.judge(status, &headers, &excerpt)
    }

    /// The outcome of a response.
    fn judge(&self, status: StatusCode, headers: &HeaderMap, excerpt: &str) -> TaskOutcome {
        let described = |note: &str| {
            let mut text = format!("HTTP {status}{note}");
            if !excerpt.is_empty() {
                text.push_str(": ");
                text.push_str(excerpt);
            }
            text
        };
        if status.is_success() {
            return TaskOutcome::done_with(described(""));
        }
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            return match retry_after(headers, SystemTime::now(), self.config.max_retry_after) {
                Some(delay) => TaskOutcome::retry_after(
                    described(&format!(" (retry after {} ms, from Retry-After)", delay.as_millis())),
                    delay,
                ),
                None => TaskOutcome::retry(described("")),
            };
        }
        if status.is_redirection() {
            return TaskOutcome::fail(described(&redirect_note(
                status,
                headers.get(LOCATION),
                self.config.follow_redirects,
            )));
        }
        TaskOutcome::fail(described(" (permanent: not retried)"))
    }

    /// The outcome of a request that got no usable response.
    fn transport_failure(&self, error: &reqwest::Error, budget: Duration) -> TaskOutcome {
        let text = chain(error);
        if let Some(refused) = find::<Refused>(error) {
            return TaskOutcome::fail(refused);
        }
        if error.is_redirect() {
            return TaskOutcome::fail(format!("webhook redirect refused: {text}"));
        }
        if error.is_builder() {
            return TaskOutcome::fail(format!("webhook request could not be built: {text}"));
        }
        if error.is_timeout() {
            return TaskOutcome::retry(format!(
                "webhook timed out (connect bound {} ms, attempt bound {} ms): {text}",
                self.config.connect_timeout.as_millis(),
                budget.as_millis()
            ));
        }
        TaskOutcome::retry(format!("webhook delivery failed: {text}"))
    }
}

#[async_trait(?Send)]
impl TaskHandler for WebhookHandler {
    async fn run(&self, task: TaskContext) -> TaskOutcome {
        self.deliver(&task).await
    }
}

/// Whether a redirect from the delivery's URL `from` to `to` may be followed: only within the
/// same origin (scheme, host and port), so that the envelope's headers (a signature, an API
/// key) reach no other host, and never from `https` to `http`. The error says why not.
fn check_redirect(from: &Url, to: &Url) -> Result<(), RedirectRefused> {
    let (origin, next) = (from.origin().ascii_serialization(), to.origin().ascii_serialization());
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(RedirectRefused(format!(
            "a redirect from {origin} to {next} is a downgrade from https, not followed"
        )));
    }
    if from.origin() != to.origin() {
        return Err(RedirectRefused(format!(
            "a redirect from {origin} to another origin, {next}, is not followed \
             (only redirects within the origin are, so that the envelope's headers reach no other host)"
        )));
    }
    Ok(())
}

/// A redirect hop the handler does not follow ([`check_redirect`]): a permanent failure.
#[derive(Debug)]
struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// What [`WebhookHandler::judge`] says of a 3xx answer that reached it, not followed: why it
/// was not, by the configuration (`follow` hops), the status and the `Location`.
fn redirect_note(status: StatusCode, location: Option<&HeaderValue>, follow: u32) -> String {
    let Some(location) = location else {
        return if follow == 0 {
            " (not followed: no Location header, and following redirects is off)".to_owned()
        } else {
            " (not followed: no Location header)".to_owned()
        };
    };
    let to = location.to_str().map_or_else(|_| "a Location that is not text".to_owned(), |l| cut(l, 200));
    let why = if follow == 0 {
        "following redirects is off".to_owned()
    } else if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        format!("{} is not a redirect to follow (only 301, 302, 303, 307 and 308 are)", status.as_u16())
    } else {
        "the Location is not a url to follow".to_owned()
    };
    format!(" (a redirect to {to} not followed: {why})")
}

/// The first [`MAX_RESPONSE_EXCERPT_BYTES`] of a response body, as text cut at a character
/// boundary (`…` when cut); the rest is not read.
async fn excerpt(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut more = false;
    while let Some(chunk) = response.chunk().await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_RESPONSE_EXCERPT_BYTES {
            more = true;
            break;
        }
    }
    // Lossy: a multi-byte character split at the end of what was read is cut off below.
    let text = String::from_utf8_lossy(&bytes);
    let mut out = cut(&text, MAX_RESPONSE_EXCERPT_BYTES);
    if more && !out.ends_with('…') {
        out.push('…');
    }
    Ok(out)
}

/// The delay a `Retry-After` header asks for, at most `max`: delta-seconds (`120`) or an
/// HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`, and the two obsolete forms), counted from
/// `now` (a date in the past: at once). `None` when absent or not valid.
fn retry_after(headers: &HeaderMap, now: SystemTime, max: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: too many of them is simply "very long".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(max))
}

/// An error and its sources, joined by `: `.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// The first error of type `T` in `error`'s chain.
fn find<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn urls_are_checked_rule_by_rule() {
        assert!(validate_url("https://hooks.example.com/a?b=c").is_ok());
        assert!(validate_url("http://10.1.2.3:8080/").is_ok());
        assert_eq!(validate_url("ftp://example.com/x"), Err(WebhookError::Scheme("ftp".to_owned())));
        assert_eq!(validate_url("http://:8080/x"), Err(WebhookError::NoHost));
        assert_eq!(validate_url("http://"), Err(WebhookError::NoHost));
        assert_eq!(validate_url("https://user:pass@example.com/"), Err(WebhookError::UserInfo));
        assert_eq!(validate_url("https://user@example.com/"), Err(WebhookError::UserInfo));
        assert!(matches!(validate_url("not a url"), Err(WebhookError::NotAUrl { .. })));
        assert!(matches!(validate_url("mailto:a@b.c"), Err(WebhookError::Scheme(_))));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(validate_url(&long), Err(WebhookError::TooLong(long.len())));
    }

    #[test]
    fn envelopes_refuse_reserved_and_bad_headers_and_unknown_fields() {
        let ok = WebhookRequest::new("https://example.com/", &serde_json::json!({ "a": 1 })).expect("ok");
        for name in
            ["Content-Type", "user-agent", "Idempotency-Key", "Helix-Attempt", "Host", "Transfer-Encoding"]
        {
            assert!(
                matches!(ok.clone().header(name, "x"), Err(WebhookError::ReservedHeader(_))),
                "{name} must be refused"
            );
        }
        assert!(matches!(ok.clone().header("bad name", "x"), Err(WebhookError::BadHeader { .. })));
        assert!(matches!(ok.clone().header("X-Ok", "line\nbreak"), Err(WebhookError::BadHeader { .. })));
        let with = ok.header("X-Sig", "1").expect("ok").header("x-sig", "2").expect("replaced");
        assert_eq!(with.headers().len(), 1);
        let back = WebhookRequest::from_payload(&with.to_payload().expect("payload")).expect("round trip");
        assert_eq!(back, with);
        let typo = br#"{"url": "https://example.com/", "body": 1, "header": {}}"#;
        assert!(matches!(WebhookRequest::from_payload(typo), Err(WebhookError::Envelope(_))));
        let no_body = br#"{"url": "https://example.com/"}"#;
        assert!(matches!(WebhookRequest::from_payload(no_body), Err(WebhookError::Envelope(_))));
        let smuggled = br#"{"url": "https://example.com/", "body": 1, "headers": {"Host": "x"}}"#;
        assert!(matches!(WebhookRequest::from_payload(smuggled), Err(WebhookError::ReservedHeader(_))));
    }

    #[test]
    fn default_rules_refuse_local_link_local_and_metadata_destinations() {
        let d = Destinations::new();
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "100.100.100.200",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "168.63.129.16",
            "192.0.0.192",
            "::ffff:168.63.129.16",
            "::ffff:0:127.0.0.1",
            "::ffff:0:169.254.169.254",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:a83f:8110:1::1",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:a9fe:a9:fe00::",
            "64:ff9b:1::808:808",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001::1",
        ] {
            assert!(d.check_ip(ip(refused), false).is_err(), "{refused} must be refused");
        }
        for allowed in
            ["93.184.216.34", "10.0.0.1", "192.168.1.1", "2606:2800:220:1::1", "fec0::1", "::ffff:8.8.8.8"]
                .into_iter()
                .chain([
                    "::ffff:0:8.8.8.8",
                    "2002:808:808::1",
                    "64:ff9b::808:808",
                    "2001:db8::1",
                    "2001:1::1",
                ])
                .chain(["168.63.129.17", "192.0.0.193"])
        {
            assert_eq!(d.check_ip(ip(allowed), false), Ok(()), "{allowed} must be allowed");
        }
        let rule = d.check_ip(ip("169.254.169.254"), false).expect_err("refused").rule;
        assert!(rule.contains("link-local"), "{rule}");
        for name in ["metadata.google.internal", "METADATA.google.internal.", "metadata"] {
            assert!(d.check_name(name).is_err(), "{name} must be refused");
        }
        assert_eq!(d.check_name("hooks.example.com"), Ok(()));
        let rule_of = |a: &str| d.check_ip(ip(a), false).expect_err("refused").rule;
        assert!(rule_of("2002:7f00:1::").contains("IPv4 loopback (127.0.0.0/8) inside IPv6"));
        assert!(rule_of("::ffff:0:169.254.169.254").contains("IPv4 link-local"));
        assert!(rule_of("168.63.129.16").contains("Azure WireServer"));
        assert!(rule_of("192.0.0.192").contains("Oracle Cloud"));
        assert!(rule_of("2001:0:4136:e378::1").contains("Teredo (2001::/32)"));
        assert!(rule_of("64:ff9b:1::808:808").contains("NAT64 local-use (64:ff9b:1::/48)"));
        let denied = d.deny_network("10.0.0.0/8".parse().expect("net"));
        for inside in
            ["10.2.3.4", "::ffff:10.2.3.4", "::ffff:0:10.2.3.4", "64:ff9b::a02:304", "2002:a02:304::1"]
        {
            assert!(denied.check_ip(ip(inside), false).is_err(), "{inside} is in 10.0.0.0/8");
        }
        let opened = Destinations::new().allow_network("64:ff9b:1::/48".parse().expect("net"));
        assert_eq!(opened.check_ip(ip("64:ff9b:1::808:808"), false), Ok(()), "an allowed network opens it");
    }

    #[test]
    fn the_allow_list_admits_only_what_it_names() {
        let d = Destinations::new()
            .allow_ip(ip("127.0.0.1"))
            .allow_host("hooks.example.com")
            .allow_host("*.partner.example");
        assert_eq!(d.check_ip(ip("127.0.0.1"), false), Ok(()), "named explicitly");
        assert_eq!(d.check_ip(ip("::ffff:127.0.0.1"), false), Ok(()), "its mapped form too");
        assert!(d.check_ip(ip("127.0.0.2"), false).is_err());
        assert!(d.check_ip(ip("93.184.216.34"), false).is_err(), "an address of an unlisted host");
        assert_eq!(d.check_ip(ip("93.184.216.34"), true), Ok(()), "an address of a listed host");
        assert!(
            d.check_ip(ip("169.254.169.254"), true).is_err(),
            "a listed name is not exempt from the rules"
        );
        assert!(d.host_allowed("Hooks.Example.com."));
        assert!(d.host_allowed("a.b.partner.example"));
        assert!(!d.host_allowed("partner.example"));
        assert!(!d.host_allowed("evilpartner.example"));
        let names_only = Destinations::new().allow_host("hooks.example.com");
        assert!(names_only.check_name("other.example.com").is_err());
        assert!(names_only.check_name("metadata.google.internal").is_err());
        assert_eq!(
            Destinations::new().allow_host("metadata.google.internal").check_name("metadata.google.internal"),
            Ok(())
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let max = Duration::from_secs(600);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("value"));
            retry_after(&h, now, max)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        assert_eq!(with("99999999999999999999999"), Some(max));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(with(&date), Some(Duration::from_secs(30)));
        assert_eq!(with(&httpdate::fmt_http_date(now - Duration::from_secs(30))), Some(Duration::ZERO));
        assert_eq!(with(&httpdate::fmt_http_date(now + Duration::from_secs(3_600))), Some(max));
        assert_eq!(with("soon"), None);
        assert_eq!(with("-5"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now, max), None);
    }

    #[test]
    fn redirects_are_followed_only_within_the_origin_and_never_down_to_http() {
        let url = |s: &str| Url::parse(s).expect("a url");
        let from = url("https://hooks.example.com/orders");
        for same in ["https://hooks.example.com/v2/orders", "https://HOOKS.example.com:443/x?y=z"] {
            assert!(check_redirect(&from, &url(same)).is_ok(), "{same} is the same origin");
        }
        for (other, says) in [
            ("https://evil.example.net/collect", "another origin, https://evil.example.net"),
            ("https://other.example.com/orders", "another origin"),
            ("https://hooks.example.com:8443/orders", "another origin, https://hooks.example.com:8443"),
            ("http://hooks.example.com/orders", "a downgrade from https"),
            ("http://evil.example.net/", "a downgrade from https"),
        ] {
            let refused = check_redirect(&from, &url(other)).expect_err(other).to_string();
            assert!(refused.contains(says), "{other}: {refused}");
        }
        let plain = url("http://127.0.0.1:8080/a");
        assert!(check_redirect(&plain, &url("http://127.0.0.1:8080/b")).is_ok());
        assert!(check_redirect(&plain, &url("https://127.0.0.1:8080/b")).is_err(), "another scheme");
        assert!(check_redirect(&plain, &url("http://localhost:8080/b")).is_err(), "another host");
    }

    #[test]
    fn a_3xx_that_was_not_followed_says_why() {
        let off = WebhookHandler::new(WebhookConfig::default()).expect("handler");
        let on = WebhookHandler::new(WebhookConfig::default().follow_redirects(3)).expect("handler");
        let location = |to: &str| {
            let mut h = HeaderMap::new();
            h.insert(LOCATION, HeaderValue::from_str(to).expect("value"));
            h
        };
        let error = |handler: &WebhookHandler, code: u16, headers: &HeaderMap| match handler.judge(
            StatusCode::from_u16(code).expect("status"),
            headers,
            "",
        ) {
            TaskOutcome::Fail(error) => error,
            other => panic!("{code}: a 3xx is a permanent failure, not {other:?}"),
        };
        let to = location("/next");
        assert_eq!(
            error(&off, 302, &to),
            "HTTP 302 Found (a redirect to /next not followed: following redirects is off)"
        );
        assert_eq!(
            error(&off, 302, &HeaderMap::new()),
            "HTTP 302 Found (not followed: no Location header, and following redirects is off)"
        );
        for (code, headers, says) in [
            (300, &to, "(a redirect to /next not followed: 300 is not a redirect to follow"),
            (304, &HeaderMap::new(), "(not followed: no Location header)"),
            (302, &HeaderMap::new(), "(not followed: no Location header)"),
            (307, &to, "(a redirect to /next not followed: the Location is not a url to follow)"),
        ] {
            let error = error(&on, code, headers);
            assert!(error.contains(says), "{code}: {error}");
            assert!(!error.contains("off"), "following is on: {error}");
        }
    }

    #[test]
    fn excerpts_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_RESPONSE_EXCERPT_BYTES);
        let c = cut(&long, MAX_RESPONSE_EXCERPT_BYTES);
        assert!(c.len() <= MAX_RESPONSE_EXCERPT_BYTES && c.ends_with('…'));
        assert_eq!(cut("short", 10), "short");
    }
}
