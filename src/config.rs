//! Configuration: a TOML file, or the embedded defaults when there is none.
//!
//! Every table rejects unknown keys, so a typo is an error naming the key
//! and its line instead of a setting silently left at its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The whole configuration of one Arbiter process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub authzen: AuthzenConfig,
    pub admin: AdminConfig,
    pub policy: PolicyConfig,
    pub decision: DecisionConfig,
    pub log: LogConfig,
    pub identity: IdentityConfig,
    pub context: ContextConfig,
    pub device: DeviceConfig,
}

/// What Arbiter believes about where a request comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// Proxies (CIDRs) whose `X-Forwarded-For` entries are believed, hop by
    /// hop from the right. Empty (the default): the peer is the client.
    /// A bare address counts as a /32 (or /128).
    #[serde(deserialize_with = "deserialize_nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// SPIFFE trust domains whose peer IDs are marked `trusted`.
    pub trust_domains: Vec<String>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            trust_domains: vec!["cluster.local".to_owned()],
        }
    }
}

fn deserialize_nets<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(deserializer)?;
    raw.iter()
        .map(|s| {
            crate::address::parse_address_or_network(s).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not an IP address or CIDR"))
            })
        })
        .collect()
}

/// Whether a device posture token must name the user it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostureBinding {
    /// A posture token that names no user is not verified
    /// (`posture_not_bound`): otherwise one device's token, once stolen,
    /// vouches for any caller, even an anonymous one.
    #[default]
    Required,
    /// For fleets whose posture tokens name no user: such a token is
    /// verified for any caller. A token that names a user must still name
    /// the verified caller.
    Optional,
}

/// Device posture: a token signed by the device-management service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Header carrying the posture token (a JWT, no prefix).
    pub header: String,
    /// The device-management service as a token issuer; no posture tokens without it.
    pub jwt: Option<JwtProviderConfig>,
    /// Posture older than this (from the token's `iat`) is refused.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Claim naming the user the device belongs to; it must be the
    /// verified user's subject, or the device is not verified.
    pub subject_claim: String,
    /// Whether a posture token must name its user (`subject_claim`).
    pub binding: PostureBinding,
    /// Slash-separated data path of a device inventory keyed by device ID
    /// (e.g. `devices`), merged into `input.device.inventory`.
    pub inventory: Option<DataPath>,
    /// A compliance header set by a trusted edge that strips it from
    /// clients. Off unless named; used only without a posture token, and then
    /// `input.device.verified` is `false`.
    pub trusted_edge_header: Option<String>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            header: "x-device-posture".to_owned(),
            jwt: None,
            max_age: Duration::from_secs(3600),
            subject_claim: "user".to_owned(),
            binding: PostureBinding::Required,
            inventory: None,
            trusted_edge_header: None,
        }
    }
}

/// The gRPC listener that Envoy calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the `envoy.service.auth.v3.Authorization` and `grpc.health.v1.Health` services.
    pub grpc_addr: SocketAddr,
    /// Largest CheckRequest accepted, in bytes (OPA's plugin: 4 MiB).
    pub max_request_bytes: usize,
    /// TLS on the gRPC listener; plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// Decisions in progress at once; further requests wait (back-pressure)
    /// until their deadline, then get a 503 deny with reason `overloaded`.
    pub max_concurrent_decisions: usize,
    /// The longest a decision may take, queueing included. A shorter
    /// deadline from the caller's `grpc-timeout` is honoured (90% of it, so
    /// the deny reaches Envoy before Envoy gives up).
    #[serde(with = "humantime_serde")]
    pub decision_timeout: Duration,
    /// The slow lane: OS threads of its own for the evaluations and body
    /// parsing that would hold up the async workers.
    pub slow_lane: SlowLaneConfig,
}

/// Evaluations that are not done within `inline_budget`, and bodies of
/// `body_bytes` or more, continue on a bounded pool of threads of their
/// own, so a slow or hostile request never stalls the quick ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowLaneConfig {
    /// How long a decision may evaluate on an async worker before it is
    /// evaluated again in the slow lane, with what remains of `eval_timeout`.
    #[serde(with = "humantime_serde")]
    pub inline_budget: Duration,
    /// Threads of the slow lane: at most this many slow evaluations at once.
    pub threads: usize,
    /// Slow work waiting for a thread; past it a request is denied at once
    /// with `overloaded` (503).
    pub queue: usize,
    /// Bodies at least this large are parsed in the slow lane.
    pub body_bytes: usize,
}

impl Default for SlowLaneConfig {
    fn default() -> Self {
        Self {
            inline_budget: Duration::from_millis(2),
            threads: 2,
            queue: 64,
            body_bytes: 64 * 1024,
        }
    }
}

/// TLS for the gRPC listener, with rustls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, every client (Envoy) must present a
    /// certificate they issued (mutual TLS), so only the enforcement points can ask.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9191)),
            max_request_bytes: 4 * 1024 * 1024,
            tls: None,
            max_concurrent_decisions: 1024,
            decision_timeout: Duration::from_millis(200),
            slow_lane: SlowLaneConfig::default(),
        }
    }
}

/// The HTTP front doors: Envoy's HTTP ext_authz (`/envoy/...`),
/// forward-auth for nginx, Caddy and Traefik (`/forward-auth`) and OPA's
/// Data API (`/v1/data/...`), on one listener (HTTP/1.1 and h2c).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where to listen; the front doors are off without it.
    pub addr: Option<SocketAddr>,
    /// Whether a forward-auth caller on loopback (a proxy on the same host
    /// or in the same pod) is trusted like one in `trusted_proxies`.
    pub trust_loopback: bool,
    /// TLS (and, with `client_ca_file`, mutual TLS) on this listener,
    /// reloaded like the gRPC listener's.
    pub tls: Option<TlsConfig>,
    /// Which headers the forward-auth proxy describes the original request
    /// in. Only those are read: a proxy passes the client's own headers on,
    /// so the other family may be the client's.
    pub forward_auth_headers: ForwardAuthHeaders,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: None,
            trust_loopback: true,
            tls: None,
            forward_auth_headers: ForwardAuthHeaders::XForwarded,
        }
    }
}

/// The headers a forward-auth proxy sets for the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardAuthHeaders {
    /// `X-Forwarded-Method` and `X-Forwarded-Uri` (Traefik, Caddy).
    XForwarded,
    /// `X-Original-Method` and `X-Original-URI`, set by the operator (nginx).
    XOriginal,
}

/// The OpenID AuthZEN Authorization API 1.0 on the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzenConfig {
    /// The rule whose value answers an evaluation: a boolean, or
    /// `{"decision": bool, "context": {...}}`.
    pub decision: DecisionPath,
}

impl Default for AuthzenConfig {
    fn default() -> Self {
        Self {
            decision: DecisionPath::from_static("authzen/decision"),
        }
    }
}

/// A path into the data document, written with slashes (`a/b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPath(Vec<String>);

impl DataPath {
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for DataPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        let segments: Vec<String> = raw
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segments.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "{raw:?} names no data path; write it like \"devices\" or \"inventory/devices\""
            )));
        }
        Ok(Self(segments))
    }
}

/// The operator's HTTP listener: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub addr: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8181)),
        }
    }
}

/// Which Rego syntax the policies are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum RegoVersion {
    #[default]
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v0")]
    V0,
}

/// Which engine evaluates the decision rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// regorus's bytecode VM where it can compile the decision, the
    /// interpreter where it cannot (the reason is logged and in `/readyz`).
    #[default]
    Auto,
    /// The bytecode VM, or the load fails: for policy authors who want to
    /// know that their policies compile for it.
    Rvm,
    /// Always the interpreter.
    Interpreter,
}

/// What happens to a request whose body has a supported content type but
/// does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyErrors {
    /// Denied before the policy is asked: 400, reason `request_parse_error`
    /// (OPA's Envoy plugin 1.x).
    #[default]
    Deny,
    /// The policy decides, with `parsed_body: null` and the reason in
    /// `body_error` (OPA 0.x failed the whole check instead).
    PassToPolicy,
}

/// Where policies come from and how they are evaluated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directories (searched recursively) or single `.rego` / data files.
    /// Relative paths are taken from the config file's directory.
    pub paths: Vec<PathBuf>,
    /// The rule whose value is the decision, as in OPA's `--set=plugins.envoy_ext_authz_grpc.path`.
    pub decision: DecisionPath,
    pub rego_version: RegoVersion,
    /// Wall-clock limit on one evaluation; a policy that runs longer is a deny.
    #[serde(with = "humantime_serde")]
    pub eval_timeout: Duration,
    /// `false` (the default) gives OPA's semantics: a built-in error makes the
    /// expression undefined. `true` fails the whole evaluation (a deny).
    pub strict_builtin_errors: bool,
    /// Leave `parsed_body` null, as OPA's `skip-request-body-parse`.
    pub skip_request_body_parse: bool,
    /// A body that does not parse: denied (the default) or passed to the policy.
    pub body_errors: BodyErrors,
    /// Which engine evaluates the decision rule.
    pub engine: EngineChoice,
    /// How often policy, data and JWKS files are checked for changes;
    /// `"0s"` to reload on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// An OPA bundle to load policies and data from, beside `paths`.
    pub bundle: Option<BundleConfig>,
}

/// An OPA bundle (`.tar.gz`) from a file or an HTTP(S) server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// `https://…` (polled, with `ETag` / `If-None-Match`) or a file path.
    pub source: BundleLocation,
    /// How often the source is checked for a new bundle.
    #[serde(
        with = "humantime_serde",
        default = "BundleConfig::default_poll_interval"
    )]
    pub poll_interval: Duration,
    /// How long start-up waits for the first bundle before giving up.
    #[serde(
        with = "humantime_serde",
        default = "BundleConfig::default_startup_timeout"
    )]
    pub startup_timeout: Duration,
    /// Limit on one download.
    #[serde(
        with = "humantime_serde",
        default = "BundleConfig::default_fetch_timeout"
    )]
    pub fetch_timeout: Duration,
    /// Largest bundle accepted, compressed or not, in bytes.
    #[serde(default = "BundleConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// File holding a bearer token sent to the bundle server (re-read on every fetch).
    pub bearer_token_file: Option<PathBuf>,
    /// Bundle signature verification; when set, unsigned or wrongly signed bundles are refused.
    pub verification: Option<BundleVerificationConfig>,
}

impl BundleConfig {
    /// Where the bundle comes from.
    pub fn location(&self) -> BundleLocation {
        self.source.clone()
    }

    fn default_poll_interval() -> Duration {
        Duration::from_secs(60)
    }
    fn default_startup_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_fetch_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_bytes() -> u64 {
        256 * 1024 * 1024
    }
}

/// Where a bundle comes from: read from the config's `source` string.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleLocation {
    Url(reqwest::Url),
    File(PathBuf),
}

impl BundleLocation {
    /// `http://` and `https://` sources are URLs; anything else a file path.
    ///
    /// # Errors
    /// A source that starts like a URL but is not one.
    pub fn parse(source: &str, base: &Path) -> Result<Self, String> {
        if source.starts_with("http://") || source.starts_with("https://") {
            reqwest::Url::parse(source)
                .map(Self::Url)
                .map_err(|e| format!("{source}: {e}"))
        } else {
            let path = PathBuf::from(source);
            Ok(Self::File(if path.is_relative() {
                base.join(path)
            } else {
                path
            }))
        }
    }
}

impl<'de> Deserialize<'de> for BundleLocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        // A relative file is resolved against the config's directory later.
        Self::parse(&source, Path::new("")).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for BundleLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The key that bundle signatures (`.signatures.json`, as `opa sign` makes them) must verify with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleVerificationConfig {
    /// PEM public key (RSA, ECDSA, Ed25519), or the shared secret for HS256/384/512.
    pub key_file: PathBuf,
    /// The signing algorithm, as OPA names it (default RS256).
    #[serde(default = "BundleVerificationConfig::default_algorithm")]
    pub algorithm: String,
    /// The scope the signature must carry, if any.
    pub scope: Option<String>,
}

impl BundleVerificationConfig {
    fn default_algorithm() -> String {
        "RS256".to_owned()
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            paths: vec![PathBuf::from("policies")],
            decision: DecisionPath::default(),
            rego_version: RegoVersion::V1,
            eval_timeout: Duration::from_millis(50),
            strict_builtin_errors: false,
            skip_request_body_parse: false,
            body_errors: BodyErrors::Deny,
            engine: EngineChoice::Auto,
            reload_interval: Duration::from_secs(1),
            bundle: None,
        }
    }
}

/// What becomes of a decision once the policy has made it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Turn every deny into an allow and log the deny that would have been
    /// made. For rolling out a new policy; logged loudly at start.
    pub dry_run: bool,
    /// Response header that carries the machine-readable deny reason to the
    /// client; empty to send none.
    pub reason_header: String,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            reason_header: "x-arbiter-reason".to_owned(),
        }
    }
}

/// Verified identity: JWT providers and the verified-token cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
    /// Verified tokens kept, so a repeated token costs a lookup, not a signature check.
    pub token_cache_size: usize,
    /// How long start-up waits for every provider's first key fetch before
    /// serving (not ready, and denying their tokens, until the keys arrive).
    #[serde(with = "humantime_serde")]
    pub startup_grace: Duration,
    pub jwt: Vec<JwtProviderConfig>,
    /// Tokens, sessions and subjects revoked before their tokens expire.
    pub revocation: Option<RevocationConfig>,
    /// A Shared Signals transmitter whose session-revoked events are received.
    pub ssf: Option<SsfConfig>,
    /// Authorization servers that introspect opaque (non-JWT) bearer tokens.
    pub introspection: Vec<IntrospectionConfig>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            max_token_bytes: 8 * 1024,
            token_cache_size: 10_000,
            startup_grace: Duration::from_secs(10),
            jwt: Vec::new(),
            revocation: None,
            ssf: None,
            introspection: Vec::new(),
        }
    }
}

/// The SSF transmitter (the IdP) whose Security Event Tokens are accepted
/// at `POST /ssf/events`; its keys are handled like a JWT provider's.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSsf")]
pub struct SsfConfig {
    /// The SETs' `iss`.
    pub issuer: String,
    /// The SETs' `aud` must name this receiver.
    pub audience: String,
    /// `jwks_uri` or `jwks_file`, exactly one.
    pub keys: KeySource,
    pub algorithms: Vec<SigningAlgorithm>,
}

/// `[identity.ssf]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsf {
    issuer: String,
    audience: String,
    jwks_uri: Option<String>,
    jwks_file: Option<PathBuf>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<SigningAlgorithm>,
}

impl TryFrom<RawSsf> for SsfConfig {
    type Error = String;

    fn try_from(raw: RawSsf) -> Result<Self, String> {
        let keys = KeySource::from_keys(raw.jwks_uri, raw.jwks_file, false)
            .ok_or("exactly one of jwks_uri and jwks_file is required")?;
        Ok(Self {
            issuer: raw.issuer,
            audience: raw.audience,
            keys,
            algorithms: raw.algorithms,
        })
    }
}

impl SsfConfig {
    /// The transmitter as a key source, with a JWT provider's defaults.
    pub fn as_provider(&self) -> JwtProviderConfig {
        JwtProviderConfig {
            name: "ssf".into(),
            issuer: self.issuer.clone(),
            audiences: vec![self.audience.clone()],
            skip_audience_check: false,
            keys: self.keys.clone(),
            algorithms: self.algorithms.clone(),
            leeway: default_leeway(),
            max_lifetime: None,
            from: TokenLocation::default(),
            on_invalid: OnInvalidToken::Deny,
            refresh_min: default_refresh_min(),
            refresh_max: default_refresh_max(),
            kid_miss_min_interval: default_kid_miss_interval(),
            max_staleness: default_max_staleness(),
            fetch_timeout: default_fetch_timeout(),
        }
    }
}

/// OAuth 2.0 Token Introspection (RFC 7662) for bearer tokens that are not
/// JWTs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// `input.identity.provider` of its tokens.
    pub name: String,
    /// The introspection endpoint (POST, form-encoded).
    pub endpoint: String,
    /// Arbiter's client ID at the authorization server (HTTP Basic).
    pub client_id: String,
    /// A file holding the client secret.
    pub client_secret_file: PathBuf,
    /// When not empty, the answer's `aud` must name one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// An active answer is kept until the earlier of its `exp` and this.
    #[serde(default = "default_introspection_cache_max", with = "humantime_serde")]
    pub cache_max: Duration,
    /// How long an inactive answer is kept.
    #[serde(default = "default_negative_cache", with = "humantime_serde")]
    pub negative_cache: Duration,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Where the token is read from (the `Authorization: Bearer` header by default).
    #[serde(default)]
    pub from: TokenLocation,
    #[serde(default)]
    pub on_invalid: OnInvalidToken,
}

fn default_introspection_cache_max() -> Duration {
    Duration::from_secs(60)
}

fn default_negative_cache() -> Duration {
    Duration::from_secs(10)
}

/// A revocation list file, reloaded like policies (watched and on SIGHUP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// `{"tokens": [jti], "sessions": [sid], "subjects": {sub: RFC 3339 time}}`.
    pub file: PathBuf,
}

/// Where a provider's token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenLocation {
    /// A header; `prefix` (e.g. `Bearer `, matched case-insensitively) is stripped.
    Header {
        name: String,
        prefix: Option<String>,
    },
    /// A cookie by name.
    Cookie { name: String },
}

impl TokenLocation {
    /// Header names are matched as Envoy sends them: lower case.
    fn lower_case_header(&mut self) {
        if let Self::Header { name, .. } = self {
            *name = name.to_ascii_lowercase();
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Header { name, .. } | Self::Cookie { name } => name.is_empty(),
        }
    }
}

impl Default for TokenLocation {
    fn default() -> Self {
        Self::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }
    }
}

/// What happens to a request whose token is present but invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalidToken {
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`; the policy is not asked.
    #[default]
    Deny,
    /// The policy decides, seeing `identity: null` and `identity_error`.
    PassToPolicy,
}

/// One JWT issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawJwtProvider")]
pub struct JwtProviderConfig {
    pub name: String,
    /// Must equal the token's `iss`; also how a token finds its provider.
    pub issuer: String,
    /// The token's `aud` must name one of these.
    pub audiences: Vec<String>,
    /// Accept tokens for any audience. Off by default; logged loudly when on.
    pub skip_audience_check: bool,
    /// Where the keys come from.
    pub keys: KeySource,
    pub algorithms: Vec<SigningAlgorithm>,
    pub leeway: Duration,
    /// Longest accepted lifetime (`exp - iat`, or `exp - now` without `iat`).
    pub max_lifetime: Option<Duration>,
    pub from: TokenLocation,
    pub on_invalid: OnInvalidToken,
    /// Key refresh: `Cache-Control: max-age` is honoured within these bounds;
    /// without it, `refresh_max` is used.
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    /// At most one fetch per this interval for tokens naming an unknown `kid`.
    pub kid_miss_min_interval: Duration,
    /// While the IdP is unreachable, the last good keys serve this long; then its tokens are denied.
    pub max_staleness: Duration,
    pub fetch_timeout: Duration,
}

/// Where a provider's keys come from: `jwks_uri`, `jwks_file` or
/// `discovery = true`, exactly one of them.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    Uri(String),
    File(PathBuf),
    /// A JWKS document held in memory (`arbiter test`'s fixture keys; not
    /// configurable).
    Inline(std::sync::Arc<str>),
    /// OIDC discovery at `issuer` + `/.well-known/openid-configuration`.
    Discovery,
}

impl KeySource {
    /// The one source the file's keys name, if exactly one.
    fn from_keys(uri: Option<String>, file: Option<PathBuf>, discovery: bool) -> Option<Self> {
        match (uri, file, discovery) {
            (Some(uri), None, false) => Some(Self::Uri(uri)),
            (None, Some(file), false) => Some(Self::File(file)),
            (None, None, true) => Some(Self::Discovery),
            _ => None,
        }
    }
}

impl TryFrom<RawJwtProvider> for JwtProviderConfig {
    type Error = String;

    fn try_from(raw: RawJwtProvider) -> Result<Self, String> {
        let keys = KeySource::from_keys(raw.jwks_uri, raw.jwks_file, raw.discovery)
            .ok_or_else(|| {
                format!(
                    "provider {:?}: exactly one of jwks_uri, jwks_file or discovery = true is required",
                    raw.name
                )
            })?;
        Ok(Self {
            name: raw.name,
            issuer: raw.issuer,
            audiences: raw.audiences,
            skip_audience_check: raw.skip_audience_check,
            keys,
            algorithms: raw.algorithms,
            leeway: raw.leeway,
            max_lifetime: raw.max_lifetime,
            from: raw.from,
            on_invalid: raw.on_invalid,
            refresh_min: raw.refresh_min,
            refresh_max: raw.refresh_max,
            kid_miss_min_interval: raw.kid_miss_min_interval,
            max_staleness: raw.max_staleness,
            fetch_timeout: raw.fetch_timeout,
        })
    }
}

/// A JWT provider as written in the file: the key source is three keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtProvider {
    name: String,
    /// Must equal the token's `iss`; also how a token finds its provider.
    issuer: String,
    /// The token's `aud` must name one of these.
    #[serde(default)]
    audiences: Vec<String>,
    /// Accept tokens for any audience. Off by default; logged loudly when on.
    #[serde(default)]
    skip_audience_check: bool,
    /// Keys from a JWKS URL...
    jwks_uri: Option<String>,
    /// ...or a JWKS file...
    jwks_file: Option<PathBuf>,
    /// ...or OIDC discovery at `issuer` + `/.well-known/openid-configuration`.
    #[serde(default)]
    discovery: bool,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<SigningAlgorithm>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    leeway: Duration,
    /// Longest accepted lifetime (`exp - iat`, or `exp - now` without `iat`).
    #[serde(default, with = "humantime_serde")]
    max_lifetime: Option<Duration>,
    #[serde(default)]
    from: TokenLocation,
    #[serde(default)]
    on_invalid: OnInvalidToken,
    /// Key refresh: `Cache-Control: max-age` is honoured within these bounds;
    /// without it, `refresh_max` is used.
    #[serde(default = "default_refresh_min", with = "humantime_serde")]
    refresh_min: Duration,
    #[serde(default = "default_refresh_max", with = "humantime_serde")]
    refresh_max: Duration,
    /// At most one fetch per this interval for tokens naming an unknown `kid`.
    #[serde(default = "default_kid_miss_interval", with = "humantime_serde")]
    kid_miss_min_interval: Duration,
    /// While the IdP is unreachable, the last good keys serve this long; then its tokens are denied.
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    max_staleness: Duration,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    fetch_timeout: Duration,
}

fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_refresh_min() -> Duration {
    Duration::from_secs(30)
}
fn default_refresh_max() -> Duration {
    Duration::from_secs(600)
}
fn default_kid_miss_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Algorithms a provider may allow. HMAC is never one: a shared secret is
/// not an identity provider's key, and allowing it invites algorithm confusion.
/// The algorithms a token may be signed with: asymmetric only, so a
/// published key can never be used to sign (no HMAC, never `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::PS384 => A::PS384,
            Self::PS512 => A::PS512,
            Self::ES256 => A::ES256,
            Self::ES384 => A::ES384,
            Self::EdDSA => A::EdDSA,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `arbiter=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    /// Decision lines go to this file (JSON, appended) instead of stdout.
    pub decision_file: Option<PathBuf>,
    /// Fraction of allows that are logged (0 to 1); every deny is logged.
    pub allow_sample_rate: f64,
    /// Decision log fields to leave out (replaced by "[masked]").
    pub mask: Vec<LogField>,
}

/// The fields of a decision log line that `[log] mask` may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogField {
    Method,
    Host,
    Path,
    SourceAddress,
    SourcePrincipal,
    Subject,
    Provider,
    DeviceId,
    Error,
}

impl LogField {
    /// The field's name in a decision line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Host => "host",
            Self::Path => "path",
            Self::SourceAddress => "source_address",
            Self::SourcePrincipal => "source_principal",
            Self::Subject => "subject",
            Self::Provider => "provider",
            Self::DeviceId => "device_id",
            Self::Error => "error",
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
            decision_file: None,
            allow_sample_rate: 1.0,
            mask: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// A rule path such as `envoy/authz/allow`, naming `data.envoy.authz.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionPath {
    segments: Vec<String>,
}

impl DecisionPath {
    /// The path as a Rego reference, e.g. `data.envoy.authz.allow`.
    pub fn rule_ref(&self) -> String {
        let mut out = String::from("data");
        for segment in &self.segments {
            if is_identifier(segment) {
                out.push('.');
                out.push_str(segment);
            } else {
                out.push_str("[\"");
                out.push_str(&segment.replace('\\', "\\\\").replace('"', "\\\""));
                out.push_str("\"]");
            }
        }
        out
    }
}

impl DecisionPath {
    /// A path from fixed segments (`"authzen/decision"`).
    fn from_static(path: &'static str) -> Self {
        Self {
            segments: path.split('/').map(str::to_owned).collect(),
        }
    }

    /// The path's segments (`["envoy", "authz", "allow"]`).
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The package as regorus names it (`data.envoy.authz`) and the rule's
    /// name within it (`allow`).
    pub fn package_and_name(&self) -> Option<(String, String)> {
        let (name, package) = self.segments.split_last()?;
        let mut joined = String::from("data");
        for segment in package {
            joined.push('.');
            joined.push_str(segment);
        }
        Some((joined, name.clone()))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Default for DecisionPath {
    fn default() -> Self {
        Self {
            segments: ["envoy", "authz", "allow"].map(String::from).to_vec(),
        }
    }
}

impl FromStr for DecisionPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim().trim_start_matches('/');
        let trimmed = trimmed.strip_prefix("data/").unwrap_or(trimmed);
        let segments: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "decision path {s:?} must be slash-separated rule path segments, such as \"envoy/authz/allow\""
            ));
        }
        Ok(Self { segments })
    }
}

impl fmt::Display for DecisionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("/"))
    }
}

impl<'de> Deserialize<'de> for DecisionPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl Config {
    fn validate_identity(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut issuers = std::collections::HashSet::new();
        let providers = self
            .identity
            .jwt
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("identity.jwt[{i}]"), p))
            .chain(self.device.jwt.iter().map(|p| ("device.jwt".to_owned(), p)));
        if self.device.header.is_empty() {
            return Err(ConfigError::Invalid {
                path: "device.header".into(),
                message: "must not be empty".into(),
            });
        }
        for (at, p) in providers {
            let invalid = |key: &str, message: String| ConfigError::Invalid {
                path: format!("{at}.{key} ({})", p.name),
                message,
            };
            if p.name.is_empty() || !names.insert(p.name.clone()) {
                return Err(invalid("name", "must be present and unique".into()));
            }
            if p.issuer.is_empty() || !issuers.insert(p.issuer.clone()) {
                return Err(invalid(
                    "issuer",
                    "must be present and unique across providers".into(),
                ));
            }
            if p.audiences.is_empty() && !p.skip_audience_check {
                return Err(invalid(
                    "audiences",
                    "at least one audience is required (or skip_audience_check = true)".into(),
                ));
            }
            if p.algorithms.is_empty() {
                return Err(invalid(
                    "algorithms",
                    "at least one algorithm is required".into(),
                ));
            }
            if p.refresh_min > p.refresh_max || p.refresh_min.is_zero() {
                return Err(invalid(
                    "refresh_min",
                    "must be positive and at most refresh_max".into(),
                ));
            }
            if p.fetch_timeout.is_zero() {
                return Err(invalid("fetch_timeout", "must be positive".into()));
            }
            if p.from.is_empty() {
                return Err(invalid(
                    "from",
                    "the header or cookie name must not be empty".into(),
                ));
            }
        }
        for (i, p) in self.identity.introspection.iter().enumerate() {
            let invalid = |key: &str, message: String| ConfigError::Invalid {
                path: format!("identity.introspection[{i}].{key} ({})", p.name),
                message,
            };
            // A token's provider names the source that vouched for it, in
            // the input and the logs: one name, one source.
            if p.name.is_empty() || !names.insert(p.name.clone()) {
                return Err(invalid(
                    "name",
                    "must be present and unique across providers".into(),
                ));
            }
            if !(p.endpoint.starts_with("https://") || p.endpoint.starts_with("http://")) {
                return Err(invalid("endpoint", "must be an http(s) URL".into()));
            }
            if p.fetch_timeout.is_zero() {
                return Err(invalid("fetch_timeout", "must be positive".into()));
            }
            if p.from.is_empty() {
                return Err(invalid(
                    "from",
                    "the header or cookie name must not be empty".into(),
                ));
            }
        }
        Ok(())
    }

    /// Reads and validates a config file. Relative policy paths are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has an unknown key or an invalid value.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, path, base)
    }

    /// Parses a config from TOML text; `origin` names it in errors and
    /// `base` resolves relative policy paths.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key or an invalid value.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        // With a bundle, local policy paths are only what is asked for.
        let paths_given = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("policy")?.as_table()?.get("paths").cloned())
            .is_some();
        if config.policy.bundle.is_some() && !paths_given {
            config.policy.paths.clear();
        }
        for path in &mut config.policy.paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(bundle) = &mut config.policy.bundle {
            if let BundleLocation::File(path) = &mut bundle.source
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
            let files = bundle
                .bearer_token_file
                .iter_mut()
                .chain(bundle.verification.as_mut().map(|v| &mut v.key_file));
            for file in files {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        let tls_files = config
            .server
            .tls
            .iter_mut()
            .chain(config.http.tls.iter_mut())
            .flat_map(|tls| {
                [
                    Some(&mut tls.cert_file),
                    Some(&mut tls.key_file),
                    tls.client_ca_file.as_mut(),
                ]
                .into_iter()
                .flatten()
            });
        let revocation_file = config.identity.revocation.as_mut().map(|r| &mut r.file);
        let ssf_keys = config
            .identity
            .ssf
            .as_mut()
            .and_then(|s| match &mut s.keys {
                KeySource::File(file) => Some(file),
                _ => None,
            });
        let secrets = config
            .identity
            .introspection
            .iter_mut()
            .map(|i| &mut i.client_secret_file);
        for file in tls_files
            .chain(config.log.decision_file.as_mut())
            .chain(revocation_file)
            .chain(ssf_keys)
            .chain(secrets)
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        for provider in config
            .identity
            .jwt
            .iter_mut()
            .chain(config.device.jwt.iter_mut())
        {
            if let KeySource::File(file) = &mut provider.keys
                && file.is_relative()
            {
                *file = base.join(&*file);
            }
            provider.from.lower_case_header();
        }
        for introspector in &mut config.identity.introspection {
            introspector.from.lower_case_header();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.policy.paths.is_empty() && self.policy.bundle.is_none() {
            return Err(ConfigError::Invalid {
                path: "policy.paths".into(),
                message: "at least one policy path or a policy.bundle is required".into(),
            });
        }
        if let Some(bundle) = &self.policy.bundle {
            if bundle.poll_interval < Duration::from_secs(1) {
                return Err(ConfigError::Invalid {
                    path: "policy.bundle.poll_interval".into(),
                    message: "must be at least 1s".into(),
                });
            }
        }
        if self.server.slow_lane.inline_budget.is_zero() {
            return Err(ConfigError::Invalid {
                path: "server.slow_lane.inline_budget".into(),
                message: "must be greater than zero".into(),
            });
        }
        if self.server.slow_lane.threads == 0 {
            return Err(ConfigError::Invalid {
                path: "server.slow_lane.threads".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.policy.eval_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                path: "policy.eval_timeout".into(),
                message: "must be greater than zero".into(),
            });
        }
        if !self.decision.reason_header.is_empty()
            && !self
                .decision
                .reason_header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid {
                path: "decision.reason_header".into(),
                message: "must be a lower-case header name".into(),
            });
        }
        self.validate_identity()?;
        if !(0.0..=1.0).contains(&self.log.allow_sample_rate) {
            return Err(ConfigError::Invalid {
                path: "log.allow_sample_rate".into(),
                message: "must be between 0 and 1".into(),
            });
        }
        if self.server.max_concurrent_decisions == 0 || self.server.decision_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                path: "server.max_concurrent_decisions / server.decision_timeout".into(),
                message: "must be greater than zero".into(),
            });
        }
        if self.server.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid {
                path: "server.max_request_bytes".into(),
                message: "must be at least 1024".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Path::new("/etc/arbiter"))
    }

    #[test]
    fn log_mask_names_decision_log_fields_only() {
        let config = parse("[log]\nmask = [\"path\", \"device_id\"]\n").unwrap();
        assert_eq!(config.log.mask, [LogField::Path, LogField::DeviceId]);
        let error = parse("[log]\nmask = [\"password\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("test.toml") && error.contains("password"),
            "{error}"
        );
    }

    /// Introspection entries are checked as JWT providers are: a name
    /// unique across both, an http(s) endpoint, a timeout, and a header
    /// name matched in lower case as Envoy sends it.
    #[test]
    fn introspection_entries_are_validated_and_their_header_lower_cased() {
        let entry = |name: &str, extra: &str| {
            format!(
                "[[identity.introspection]]\nname = \"{name}\"\nendpoint = \"https://as.test/introspect\"\n\
                 client_id = \"arbiter\"\nclient_secret_file = \"secret\"\n{extra}"
            )
        };
        let jwt = "[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_uri = \"https://idp.test/keys\"\n";
        let config = parse(&entry(
            "as",
            "from = { header = { name = \"X-Opaque-Token\" } }\n",
        ))
        .unwrap();
        assert_eq!(
            config.identity.introspection[0].from,
            TokenLocation::Header {
                name: "x-opaque-token".into(),
                prefix: None
            }
        );
        for (text, key) in [
            (format!("{jwt}{}", entry("idp", "")), "name"),
            (format!("{}{}", entry("as", ""), entry("as", "")), "name"),
            (entry("", ""), "name"),
            (entry("as", "fetch_timeout = \"0s\"\n"), "fetch_timeout"),
            (entry("as", "from = { header = { name = \"\" } }\n"), "from"),
            (
                entry("as", "").replace("https://as.test/introspect", "as.test"),
                "endpoint",
            ),
        ] {
            let error = parse(&text).unwrap_err().to_string();
            assert!(
                error.contains("identity.introspection[") && error.contains(key),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(config.admin.addr.to_string(), "127.0.0.1:8181");
        assert_eq!(config.policy.decision.rule_ref(), "data.envoy.authz.allow");
        assert_eq!(config.policy.eval_timeout, Duration::from_millis(50));
        assert_eq!(
            config.policy.paths,
            vec![PathBuf::from("/etc/arbiter/policies")]
        );
        assert!(!config.decision.dry_run);
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let err = parse("[policy]\ndecision = \"a/b\"\ndry_rn = true\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("dry_rn"), "{text}");
        assert!(text.contains("test.toml"), "{text}");
    }

    #[test]
    fn decision_path_forms() {
        let p: DecisionPath = "/envoy/authz/allow".parse().unwrap();
        assert_eq!(p.rule_ref(), "data.envoy.authz.allow");
        let p: DecisionPath = "data/istio/authz/allow".parse().unwrap();
        assert_eq!(p.rule_ref(), "data.istio.authz.allow");
        let p: DecisionPath = "my-app/allow".parse().unwrap();
        assert_eq!(p.rule_ref(), "data[\"my-app\"].allow");
        assert_eq!(p.to_string(), "my-app/allow");
        assert!("envoy//allow".parse::<DecisionPath>().is_err());
        assert!("".parse::<DecisionPath>().is_err());
    }

    #[test]
    fn jwt_providers_are_validated() {
        let ok = parse(
            "[[identity.jwt]]\nname = \"corp\"\nissuer = \"https://idp\"\naudiences = [\"api\"]\njwks_file = \"keys.json\"\n",
        )
        .unwrap();
        let p = &ok.identity.jwt[0];
        assert_eq!(
            p.keys,
            KeySource::File(PathBuf::from("/etc/arbiter/keys.json"))
        );
        assert_eq!(p.from, TokenLocation::default());
        assert_eq!(p.leeway, Duration::from_secs(60));
        assert_eq!(p.on_invalid, OnInvalidToken::Deny);

        for (bad, key) in [
            (
                "name = \"a\"\nissuer = \"i\"\naudiences = [\"x\"]\n",
                "exactly one",
            ),
            (
                "name = \"a\"\nissuer = \"i\"\naudiences = [\"x\"]\njwks_file = \"k\"\ndiscovery = true\n",
                "exactly one",
            ),
            (
                "name = \"a\"\nissuer = \"i\"\njwks_file = \"k\"\n",
                "audience",
            ),
            (
                "name = \"a\"\nissuer = \"i\"\naudiences = [\"x\"]\njwks_file = \"k\"\nalgorithms = [\"HS256\"]\n",
                "HS256",
            ),
            (
                "name = \"a\"\nissuer = \"i\"\naudiences = [\"x\"]\njwks_file = \"k\"\nalgorithms = [\"none\"]\n",
                "none",
            ),
            (
                "name = \"a\"\nissuer = \"i\"\naudiences = [\"x\"]\njwks_file = \"k\"\nfrom = { cookie = { name = \"\" } }\n",
                "cookie",
            ),
        ] {
            let err = parse(&format!("[[identity.jwt]]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.to_lowercase().contains(&key.to_lowercase()) && !err.contains("unknown field"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn relative_file_paths_are_taken_from_the_config_directory() {
        let config = parse(
            "[server.tls]\ncert_file = \"tls/cert.pem\"\nkey_file = \"/abs/key.pem\"\nclient_ca_file = \"ca.pem\"\n[log]\ndecision_file = \"decisions.log\"\n",
        )
        .unwrap();
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/etc/arbiter/tls/cert.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/key.pem"));
        assert_eq!(
            tls.client_ca_file,
            Some(PathBuf::from("/etc/arbiter/ca.pem"))
        );
        assert_eq!(
            config.log.decision_file,
            Some(PathBuf::from("/etc/arbiter/decisions.log"))
        );
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let nets = |list: &str| -> Vec<String> {
            parse(&format!("[context]\ntrusted_proxies = {list}\n"))
                .unwrap()
                .context
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            nets(r#"["10.0.0.0/8", "192.168.1.1", "fd00::/8"]"#),
            vec!["10.0.0.0/8", "192.168.1.1/32", "fd00::/8"]
        );
        // IPv4-mapped networks as Go reads them: at prefix 96 or more the
        // IPv4 network; below it an IPv6 network, never all of IPv4.
        assert_eq!(
            nets(r#"["::ffff:10.0.0.0/104", "::ffff:10.0.0.0/80", "::ffff:10.0.0.9"]"#),
            vec!["10.0.0.0/8", "::/80", "10.0.0.9/32"]
        );
        let err = parse("[context]\ntrusted_proxies = [\"10.0.0.0/33\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.0.0.0/33") && err.contains("line"), "{err}");
    }

    #[test]
    fn timeouts_and_versions_parse() {
        let config =
            parse("[policy]\neval_timeout = \"5ms\"\nrego_version = \"v0\"\npaths = [\"/abs\"]\n")
                .unwrap();
        assert_eq!(config.policy.eval_timeout, Duration::from_millis(5));
        assert_eq!(config.policy.rego_version, RegoVersion::V0);
        assert_eq!(config.policy.paths, vec![PathBuf::from("/abs")]);
        let err = parse("[policy]\nrego_version = \"v2\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `v2`"), "{err}");
        let err = parse("[policy]\neval_timeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("eval_timeout"), "{err}");
    }
}
