//! Verified identity: the caller's bearer JWT, checked by Arbiter itself
//! against its provider's keys, before the policy sees any claim.
//!
//! A [`VerifiedToken`] can only be built here, after the signature, the
//! algorithm (on the provider's allow-list and fitting the key), `iss`,
//! `aud`, `exp`, `nbf` and the lifetime limit have been checked. The input
//! document accepts nothing else as an identity.

pub mod introspection;
pub mod jwks;
pub mod revocation;
pub mod ssf;
/// Keys made at run time: `arbiter test` signs its fixture tokens with
/// them. Public API only with the `test-support` feature, which the tests,
/// benches, the load generator and the fuzz targets enable (a workspace
/// build also unifies it into the service's build; `-p arbiter` does not).
#[cfg(feature = "test-support")]
pub mod test_keys;
#[cfg(not(feature = "test-support"))]
#[allow(dead_code, reason = "the parts only tests and tools use")]
pub(crate) mod test_keys;
mod token;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    DeviceConfig, IdentityConfig, JwtProviderConfig, OnInvalidToken, PostureBinding, TokenLocation,
};
use crate::context::RequestContext;

pub use jwks::{JwksError, KeySet, KeyStore};
pub use token::{TokenError, VerifiedToken, verify_with_keys};

/// What the request's credentials came to.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No token at any configured location.
    Anonymous,
    Verified(Arc<VerifiedToken>),
    /// A token was present and is not valid.
    Rejected {
        provider: Option<String>,
        error: TokenError,
        on_invalid: OnInvalidToken,
    },
}

/// Everything verified about the caller: user and device.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Authentication,
    pub device: DevicePosture,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            user: Authentication::Anonymous,
            device: DevicePosture::Absent,
        }
    }
}

/// The device posture a request carries.
#[derive(Debug, Clone)]
pub enum DevicePosture {
    /// No posture token (and no trusted edge header).
    Absent,
    /// A posture token that verified, and how it relates to the caller:
    /// only [`PostureBinding::Bound`] and [`PostureBinding::Unbound`] make
    /// the device `verified` for the policy.
    Verified {
        token: Arc<VerifiedToken>,
        binding: UserBinding,
        age: Duration,
    },
    /// A posture token that is forged, expired, stale or otherwise invalid.
    Rejected(TokenError),
    /// No token, but the configured trusted edge set its compliance header.
    EdgeHeader(String),
}

/// How a verified posture token relates to the verified caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserBinding {
    /// The token names the verified caller.
    Bound,
    /// The token names no user, and `[device] binding = "optional"` accepts that.
    Unbound,
    /// The token names no user, and binding is required.
    NotBound,
    /// The token names another user, or the caller is not verified.
    OtherUser,
}

impl UserBinding {
    /// Whether the posture may be believed for this caller.
    pub fn is_verified(self) -> bool {
        matches!(self, Self::Bound | Self::Unbound)
    }

    /// Why the posture is not believed, for `input.device.error`.
    pub fn error(self) -> Option<&'static str> {
        match self {
            Self::Bound | Self::Unbound => None,
            Self::NotBound => Some("posture_not_bound"),
            Self::OtherUser => Some("device_user_mismatch"),
        }
    }
}

impl DevicePosture {
    /// The device's ID (`device_id`, else `sub`) from a verified posture token.
    pub fn device_id(&self) -> Option<&str> {
        match self {
            Self::Verified { token, .. } => token
                .string_claim("device_id")
                .or_else(|| token.string_claim("sub")),
            _ => None,
        }
    }
}

/// Verifies device posture tokens.
struct DeviceVerifier {
    providers: Vec<Provider>,
    location: TokenLocation,
    max_age: Duration,
    subject_claim: String,
    binding: PostureBinding,
    edge_header: Option<String>,
}

/// One configured provider and its keys.
struct Provider {
    config: JwtProviderConfig,
    keys: Arc<KeyStore>,
}

/// Verifies tokens for every configured provider.
pub struct Authenticator {
    providers: Vec<Provider>,
    device: Option<DeviceVerifier>,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    max_token_bytes: usize,
    refreshers: Vec<tokio::task::JoinHandle<()>>,
    /// Tokens revoked by the revocation file, checked on every use.
    revocations: Arc<revocation::Revocations>,
    /// Introspection endpoints for bearer tokens that are not JWTs.
    introspectors: Vec<introspection::Introspector>,
    /// Verified-token cache lookups that found a usable entry, and those that did not.
    pub cache_hits: std::sync::atomic::AtomicU64,
    pub cache_misses: std::sync::atomic::AtomicU64,
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        for task in &self.refreshers {
            task.abort();
        }
    }
}

impl Authenticator {
    /// Sets up every provider and starts its background key refresh. Must be
    /// called inside a Tokio runtime.
    pub fn start(config: &IdentityConfig, device: &DeviceConfig, http: &reqwest::Client) -> Self {
        let mut refreshers = Vec::new();
        let mut make = |provider: &JwtProviderConfig| {
            if provider.skip_audience_check {
                tracing::warn!(provider = %provider.name, "audience check is OFF for this provider: tokens for any audience are accepted");
            }
            let keys = Arc::new(KeyStore::new(provider, http.clone()));
            refreshers.push(keys.spawn_refresher());
            Provider {
                config: provider.clone(),
                keys,
            }
        };
        let providers: Vec<Provider> = config.jwt.iter().map(&mut make).collect();
        let device_providers: Vec<Provider> = device
            .jwt
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.from = TokenLocation::Header {
                    name: device.header.to_ascii_lowercase(),
                    prefix: None,
                };
                make(&p)
            })
            .collect();
        if device.binding == PostureBinding::Optional && !device_providers.is_empty() {
            tracing::warn!(claim = %device.subject_claim, "device binding is OPTIONAL: a posture token that names no user is verified for any caller");
        }
        if let Some(edge) = &device.trusted_edge_header {
            tracing::warn!(header = %edge, "device compliance is taken from a header when no posture token is present; the edge must strip it from clients");
        }
        let device =
            (!device_providers.is_empty() || device.trusted_edge_header.is_some()).then(|| {
                DeviceVerifier {
                    location: TokenLocation::Header {
                        name: device.header.to_ascii_lowercase(),
                        prefix: None,
                    },
                    providers: device_providers,
                    max_age: device.max_age,
                    subject_claim: device.subject_claim.clone(),
                    binding: device.binding,
                    edge_header: device
                        .trusted_edge_header
                        .as_ref()
                        .map(|h| h.to_ascii_lowercase()),
                }
            });
        Self {
            providers,
            device,
            cache: quick_cache::sync::Cache::new(config.token_cache_size.max(1)),
            max_token_bytes: config.max_token_bytes,
            refreshers,
            revocations: Arc::default(),
            introspectors: Vec::new(),
            cache_hits: Default::default(),
            cache_misses: Default::default(),
        }
    }

    fn all_providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers
            .iter()
            .chain(self.device.iter().flat_map(|d| d.providers.iter()))
    }

    /// Whether every provider (users' and devices') has usable keys.
    pub fn is_ready(&self) -> bool {
        self.all_providers().all(|p| p.keys.has_keys())
    }

    /// Waits until every provider has keys, or `grace` has passed.
    pub async fn wait_ready(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self.is_ready() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Per-provider key stores, for metrics.
    pub fn key_stores(&self) -> impl Iterator<Item = (&str, &KeyStore)> {
        self.providers
            .iter()
            .map(|p| (p.config.name.as_str(), p.keys.as_ref()))
    }

    /// Introspects opaque bearer tokens with these from now on.
    pub fn use_introspectors(&mut self, introspectors: Vec<introspection::Introspector>) {
        self.introspectors = introspectors;
    }

    /// The introspection endpoints, for metrics.
    pub fn introspectors(&self) -> &[introspection::Introspector] {
        &self.introspectors
    }

    /// Checks every token against these revocations from now on.
    pub fn use_revocations(&mut self, revocations: Arc<revocation::Revocations>) {
        self.revocations = revocations;
    }

    /// The revocation file's list and its reload state.
    pub fn revocations(&self) -> &revocation::Revocations {
        &self.revocations
    }

    /// How a token of `provider` that fails a check is treated.
    pub fn on_invalid(&self, provider: &str) -> OnInvalidToken {
        self.all_providers()
            .find(|p| p.config.name == provider)
            .map(|p| p.config.on_invalid)
            .or_else(|| {
                self.introspectors
                    .iter()
                    .find(|i| i.config.name == provider)
                    .map(|i| i.config.on_invalid)
            })
            .unwrap_or(OnInvalidToken::Deny)
    }

    /// The JWKS files of `jwks_file` providers and the revocation file, for
    /// the reload watcher.
    pub fn key_files(&self) -> Vec<std::path::PathBuf> {
        self.all_providers()
            .filter_map(|p| p.keys.file().map(std::path::Path::to_owned))
            .chain(self.revocations.file().map(std::path::Path::to_owned))
            .collect()
    }

    /// Reads every `jwks_file` provider's keys and the revocation file
    /// again. A file that does not parse is rejected and the previous keys
    /// or list stay.
    pub async fn reload_key_files(&self) {
        for provider in self.all_providers().filter(|p| p.keys.file().is_some()) {
            let _ = provider.keys.refresh().await;
        }
        self.revocations.reload();
    }

    /// Introspection calls, revocations, JWKS fetches and key age per
    /// provider, and the token cache.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode_metrics(
        &self,
        encoder: &mut crate::metrics::DescriptorEncoder,
    ) -> std::fmt::Result {
        use crate::metrics::{counter, counters, gauge, gauges};
        use std::sync::atomic::Ordering::Relaxed;
        let revocations = self.revocations();
        let calls: Vec<([(&str, &str); 1], u64)> = self
            .introspectors()
            .iter()
            .map(|i| ([("provider", i.config.name.as_str())], i.calls()))
            .collect();
        counters(
            encoder,
            "arbiter_introspection_calls_total",
            "Calls to token introspection endpoints, by provider.",
            &calls,
        )?;
        gauge(
            encoder,
            "arbiter_revocation_entries",
            "Entries in the revocation file's list as last loaded.",
            u64::try_from(revocations.entries()).unwrap_or(u64::MAX),
        )?;
        counter(
            encoder,
            "arbiter_revocation_reload_failures_total",
            "Revocation files refused on reload (the last good list stays).",
            revocations.reload_failures(),
        )?;
        counters(
            encoder,
            "arbiter_ssf_events_total",
            "Security Event Tokens received, by result.",
            &[
                ([("result", "applied")], revocations.events_applied()),
                ([("result", "refused")], revocations.events_refused()),
            ],
        )?;
        counter(
            encoder,
            "arbiter_tokens_revoked_total",
            "Verified tokens refused because a revocation list names them.",
            revocations.revoked(),
        )?;
        let by_provider = |read: fn(&KeyStore) -> u64| -> Vec<([(&str, &str); 1], u64)> {
            self.key_stores()
                .map(|(provider, store)| ([("provider", provider)], read(store)))
                .collect()
        };
        counters(
            encoder,
            "arbiter_jwks_fetches_total",
            "JWKS fetches, by provider.",
            &by_provider(|s| s.stats.fetches.load(Relaxed)),
        )?;
        counters(
            encoder,
            "arbiter_jwks_fetch_failures_total",
            "Failed JWKS fetches, by provider.",
            &by_provider(|s| s.stats.failures.load(Relaxed)),
        )?;
        let ages: Vec<([(&str, &str); 1], f64)> = self
            .key_stores()
            .filter_map(|(provider, store)| {
                Some(([("provider", provider)], store.key_age()?.as_secs_f64()))
            })
            .collect();
        gauges(
            encoder,
            "arbiter_jwks_key_age_seconds",
            "Age of the keys in use, by provider.",
            &ages,
        )?;
        gauge(
            encoder,
            "arbiter_token_cache_entries",
            "Verified tokens cached.",
            u64::try_from(self.token_cache_len()).unwrap_or(u64::MAX),
        )?;
        counters(
            encoder,
            "arbiter_token_cache_lookups_total",
            "Verified-token cache lookups, by result.",
            &[
                ([("result", "hit")], self.cache_hits.load(Relaxed)),
                ([("result", "miss")], self.cache_misses.load(Relaxed)),
            ],
        )
    }

    pub fn token_cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Finds the request's token and verifies it: a JWT with its
    /// provider's keys, any other bearer token by introspection.
    pub async fn authenticate(&self, ctx: &RequestContext) -> Authentication {
        if self.providers.is_empty() && self.introspectors.is_empty() {
            return Authentication::Anonymous;
        }
        // Each distinct location once; the token's `iss` picks the provider.
        let mut tried: Vec<&TokenLocation> = Vec::new();
        for provider in &self.providers {
            if tried.contains(&&provider.config.from) {
                continue;
            }
            tried.push(&provider.config.from);
            let Some(raw) = extract(ctx, &provider.config.from) else {
                continue;
            };
            // Only with introspection configured does a token's shape matter.
            if !self.introspectors.is_empty()
                && !token::looks_like_jwt(raw)
                && let Some(introspector) = self
                    .introspectors
                    .iter()
                    .find(|i| i.config.from == provider.config.from)
            {
                return Box::pin(self.introspected(introspector, raw)).await;
            }
            return self
                .verify(&self.providers, raw, &provider.config.from)
                .await;
        }
        for introspector in &self.introspectors {
            if tried.contains(&&introspector.config.from) {
                continue;
            }
            tried.push(&introspector.config.from);
            if let Some(raw) = extract(ctx, &introspector.config.from) {
                return Box::pin(self.introspected(introspector, raw)).await;
            }
        }
        Authentication::Anonymous
    }

    async fn introspected(
        &self,
        introspector: &introspection::Introspector,
        raw: &str,
    ) -> Authentication {
        let reject = |error| Authentication::Rejected {
            provider: Some(introspector.config.name.clone()),
            on_invalid: introspector.config.on_invalid,
            error,
        };
        if raw.len() > self.max_token_bytes {
            return reject(TokenError::TooLarge);
        }
        match introspector.introspect(raw).await {
            Ok(token) if self.revocations.revokes(&token) => reject(TokenError::Revoked),
            Ok(token) => Authentication::Verified(token),
            Err(error) => reject(error),
        }
    }

    /// Finds and verifies the request's device posture token, binding it to
    /// the verified user.
    pub async fn device_posture(
        &self,
        ctx: &RequestContext,
        user: &Authentication,
    ) -> DevicePosture {
        let Some(device) = &self.device else {
            return DevicePosture::Absent;
        };
        let Some(raw) = extract(ctx, &device.location) else {
            return match device.edge_header.as_deref().and_then(|h| ctx.header(h)) {
                Some(value) => DevicePosture::EdgeHeader(value.trim().to_owned()),
                None => DevicePosture::Absent,
            };
        };
        if device.providers.is_empty() {
            return DevicePosture::Rejected(TokenError::UnknownIssuer);
        }
        let token = match self.verify(&device.providers, raw, &device.location).await {
            Authentication::Verified(token) => token,
            Authentication::Rejected { error, .. } => return DevicePosture::Rejected(error),
            Authentication::Anonymous => return DevicePosture::Absent,
        };
        let Some(issued_at) = token.issued_at else {
            return DevicePosture::Rejected(TokenError::MissingClaim);
        };
        let age = Duration::from_secs(token::now().saturating_sub(issued_at));
        if age > device.max_age {
            return DevicePosture::Rejected(TokenError::PostureStale);
        }
        let binding = match (token.claim(&device.subject_claim), device.binding) {
            (regorus::Value::Undefined, PostureBinding::Required) => UserBinding::NotBound,
            (regorus::Value::Undefined, PostureBinding::Optional) => UserBinding::Unbound,
            (regorus::Value::String(owner), _) if matches!(user, Authentication::Verified(user) if user.subject.as_deref() == Some(&**owner)) => {
                UserBinding::Bound
            }
            _ => UserBinding::OtherUser,
        };
        DevicePosture::Verified {
            token,
            binding,
            age,
        }
    }

    async fn verify(
        &self,
        providers: &[Provider],
        raw: &str,
        location: &TokenLocation,
    ) -> Authentication {
        let reject = |provider: Option<&Provider>, error: TokenError| Authentication::Rejected {
            provider: provider.map(|p| p.config.name.clone()),
            on_invalid: provider.map_or(OnInvalidToken::Deny, |p| p.config.on_invalid),
            error,
        };
        if raw.len() > self.max_token_bytes {
            return reject(None, TokenError::TooLarge);
        }
        let cache_key = token::cache_key(raw);
        let now = token::now();
        if let Some(hit) = self.cache.get(&cache_key) {
            // Only a token verified for one of these providers counts: a
            // user's token in the device header is not device posture.
            let provider = providers
                .iter()
                .find(|p| p.config.name == hit.provider && p.config.from == *location);
            // A cached token is still checked for time, and against the
            // current keys: a key the IdP withdrew no longer vouches for it.
            let still_keyed = provider
                .and_then(|p| p.keys.keys().ok())
                .is_some_and(|set| {
                    set.still_vouches_for(
                        hit.kid.as_deref(),
                        hit.key_fingerprint,
                        hit.key_generation,
                    )
                });
            if let Some(provider) = provider
                && still_keyed
            {
                self.cache_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return match hit.check_time(now, provider.config.leeway) {
                    Ok(()) if self.revocations.revokes(&hit) => {
                        reject(Some(provider), TokenError::Revoked)
                    }
                    Ok(()) => Authentication::Verified(hit),
                    Err(e) => reject(Some(provider), e),
                };
            }
            if provider.is_some() {
                self.cache.remove(&cache_key);
            }
        }
        self.cache_misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unverified = match token::peek(raw) {
            Ok(u) => u,
            Err(e) => return reject(None, e),
        };
        let Some(provider) = providers
            .iter()
            .find(|p| p.config.issuer == unverified.issuer && p.config.from == *location)
        else {
            return reject(None, TokenError::UnknownIssuer);
        };
        let keys = match provider.keys.keys() {
            Ok(keys) => keys,
            Err(jwks::KeysUnavailable::NotFetched) => {
                return reject(Some(provider), TokenError::KeysUnavailable);
            }
            Err(jwks::KeysUnavailable::Stale) => {
                return reject(Some(provider), TokenError::KeysStale);
            }
        };
        let mut result = verify_with_keys(raw, &unverified, &provider.config, &keys, now);
        if matches!(result, Err(TokenError::UnknownKid)) {
            // Boxed: a key fetch is rare, and its future would otherwise
            // size every decision's state.
            if let Some(fresh) =
                Box::pin(provider.keys.refresh_for_unknown_kid(Some(keys.generation))).await
            {
                result = verify_with_keys(raw, &unverified, &provider.config, &fresh, token::now());
            }
        }
        match result {
            Ok(verified) => {
                let verified = Arc::new(verified);
                self.cache.insert(cache_key, Arc::clone(&verified));
                if self.revocations.revokes(&verified) {
                    return reject(Some(provider), TokenError::Revoked);
                }
                Authentication::Verified(verified)
            }
            Err(e) => reject(Some(provider), e),
        }
    }
}

/// The raw token at a location, if the request carries one there.
fn extract<'a>(ctx: &'a RequestContext, location: &TokenLocation) -> Option<&'a str> {
    match location {
        TokenLocation::Header { name, prefix } => {
            let value = ctx.header(name)?.trim();
            let token = match prefix {
                Some(prefix) => {
                    let head = value.get(..prefix.len())?;
                    if !head.eq_ignore_ascii_case(prefix) {
                        return None;
                    }
                    value.get(prefix.len()..)?.trim()
                }
                None => value,
            };
            Some(token).filter(|t| !t.is_empty())
        }
        TokenLocation::Cookie { name } => ctx
            .header("cookie")?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"'))
            .filter(|t| !t.is_empty()),
    }
}
