//! JSON Web Key Sets: fetching, validating, caching and refreshing one
//! provider's verification keys.
//!
//! Each fetched set is an immutable [`KeySet`] swapped in whole. A fetch that
//! fails, or returns anything but a set with at least one usable key, never
//! replaces good keys. Fetches for unknown `kid`s are coalesced and limited to
//! one per `kid_miss_min_interval`, so a flood of random kids cannot hammer
//! the IdP.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{JwtProviderConfig, KeySource};

/// Largest JWKS or discovery document accepted.
pub(super) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A response's body, refused past `max` bytes: by its length header, or
/// as it arrives, so an endpoint cannot make Arbiter buffer without end.
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, String> {
    let too_large = || format!("document larger than {max} bytes");
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return Err(too_large());
        }
    }
    Ok(body)
}
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// Why keys could not be fetched or used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("reading {path} failed: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid key set from {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("OIDC discovery at {url} failed: {message}")]
    Discovery { url: String, message: String },
}

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub fn for_algorithm(alg: Algorithm) -> Option<Self> {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(Self::Rsa),
            Algorithm::ES256 => Some(Self::EcP256),
            Algorithm::ES384 => Some(Self::EcP384),
            Algorithm::EdDSA => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// SHA-256 of a key's public parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFingerprint([u8; 32]);

impl KeyFingerprint {
    /// For a token no key verified (an introspected one).
    pub const NONE: Self = Self([0; 32]);
}

impl KeyFingerprint {
    fn of(parameters: &AlgorithmParameters) -> Result<Self, String> {
        use sha2::Digest;
        let canonical =
            serde_json::to_vec(parameters).map_err(|e| format!("unreadable key: {e}"))?;
        Ok(Self(sha2::Sha256::digest(canonical).into()))
    }
}

/// One usable verification key.
pub struct VerificationKey {
    pub kid: Option<String>,
    /// A hash of the key material: a kid the IdP reuses for another key is
    /// another key.
    pub fingerprint: KeyFingerprint,
    /// The key's own `alg`, when the JWKS names one: the token's must match.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        KeyKind::for_algorithm(alg) == Some(self.kind) && self.alg.is_none_or(|a| a == alg)
    }
}

/// An immutable snapshot of one provider's keys.
#[derive(Debug)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    pub fetched_at: Instant,
    pub fetched_at_wall: SystemTime,
    /// How long the IdP said the set may be cached (`Cache-Control: max-age`).
    pub max_age: Option<Duration>,
    pub generation: u64,
}

impl KeySet {
    pub fn find(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether a token verified earlier (by the key `fingerprint` named
    /// `kid`, in the set of `generation`) is still vouched for by this set:
    /// the same key must still be published under that kid, so a withdrawn
    /// key, or a kid the IdP reused for a new key, vouches for nothing. A
    /// token without a kid cannot name its key, so it counts only against
    /// the very set that verified it; after any refresh it is verified again.
    pub fn still_vouches_for(
        &self,
        kid: Option<&str>,
        fingerprint: KeyFingerprint,
        generation: u64,
    ) -> bool {
        match kid {
            Some(kid) => self.find(kid).is_some_and(|k| k.fingerprint == fingerprint),
            None => self.generation == generation,
        }
    }

    /// Parses a JWKS document, keeping the keys Arbiter can use safely.
    ///
    /// # Errors
    /// Not JSON, no `keys` array, or not one usable key in it.
    pub fn parse(
        origin: &str,
        body: &[u8],
        max_age: Option<Duration>,
        generation: u64,
    ) -> Result<Self, JwksError> {
        let invalid = |message: String| JwksError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let entries = doc
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| invalid("no \"keys\" array".into()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for entry in entries {
            match usable_key(entry) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(reason),
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(origin, skipped = ?skipped, "JWKS keys skipped");
        }
        if keys.is_empty() {
            return Err(invalid(format!("no usable key ({})", skipped.join("; "))));
        }
        Ok(Self {
            keys,
            fetched_at: Instant::now(),
            fetched_at_wall: SystemTime::now(),
            max_age,
            generation,
        })
    }
}

fn usable_key(entry: &serde_json::Value) -> Result<VerificationKey, String> {
    let jwk: Jwk =
        serde_json::from_value(entry.clone()).map_err(|e| format!("unreadable key: {e}"))?;
    let kid = jwk.common.key_id.clone();
    let label = kid.clone().unwrap_or_else(|| "(no kid)".into());
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err(format!("{label}: not a signing key"));
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| format!("{label}: modulus is not base64url"))?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return Err(format!("{label}: RSA key shorter than {MIN_RSA_BITS} bits"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err(format!("{label}: unsupported curve")),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!("{label}: symmetric keys are never accepted"));
        }
        _ => return Err(format!("{label}: unsupported key type")),
    };
    let alg = match jwk.common.key_algorithm {
        Some(key_alg) => {
            let alg: Algorithm = key_alg
                .to_string()
                .parse()
                .map_err(|_| format!("{label}: key algorithm {key_alg} cannot sign tokens"))?;
            if KeyKind::for_algorithm(alg) != Some(kind) {
                return Err(format!(
                    "{label}: key algorithm {key_alg} does not fit its key type"
                ));
            }
            Some(alg)
        }
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{label}: {e}"))?;
    let fingerprint = KeyFingerprint::of(&jwk.algorithm).map_err(|e| format!("{label}: {e}"))?;
    Ok(VerificationKey {
        kid,
        fingerprint,
        alg,
        kind,
        key,
    })
}

/// Why a provider's keys cannot be used for a token right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysUnavailable {
    /// Never fetched successfully.
    NotFetched,
    /// The last good set is older than `max_staleness`.
    Stale,
}

/// Fetch counters for one provider.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
}

/// One provider's keys: the current snapshot and how to get the next one.
pub struct KeyStore {
    provider: String,
    issuer: String,
    source: KeySource,
    http: reqwest::Client,
    current: ArcSwapOption<KeySet>,
    /// Held while a kid-miss fetch runs; holds when the last one started.
    miss_fetch: tokio::sync::Mutex<Option<Instant>>,
    generation: AtomicU64,
    pub stats: FetchStats,
    refresh_min: Duration,
    refresh_max: Duration,
    kid_miss_min_interval: Duration,
    max_staleness: Duration,
    fetch_timeout: Duration,
    /// The JWKS URL found by OIDC discovery.
    discovered: ArcSwapOption<String>,
}

impl KeyStore {
    pub fn new(config: &JwtProviderConfig, http: reqwest::Client) -> Self {
        Self {
            provider: config.name.clone(),
            issuer: config.issuer.clone(),
            source: config.keys.clone(),
            http,
            current: ArcSwapOption::empty(),
            miss_fetch: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            stats: FetchStats::default(),
            refresh_min: config.refresh_min,
            refresh_max: config.refresh_max,
            kid_miss_min_interval: config.kid_miss_min_interval,
            max_staleness: config.max_staleness,
            fetch_timeout: config.fetch_timeout,
            discovered: ArcSwapOption::empty(),
        }
    }

    /// The current keys, if they may be used.
    ///
    /// # Errors
    /// No keys yet, or the last good ones are older than `max_staleness`.
    pub fn keys(&self) -> Result<Arc<KeySet>, KeysUnavailable> {
        let set = self
            .current
            .load_full()
            .ok_or(KeysUnavailable::NotFetched)?;
        if set.fetched_at.elapsed() > self.max_staleness {
            return Err(KeysUnavailable::Stale);
        }
        Ok(set)
    }

    /// The file the keys come from, for a `jwks_file` provider.
    pub fn file(&self) -> Option<&std::path::Path> {
        match &self.source {
            KeySource::File(path) => Some(path),
            _ => None,
        }
    }

    pub fn has_keys(&self) -> bool {
        self.keys().is_ok()
    }

    /// Seconds since the current keys were fetched, if any.
    pub fn key_age(&self) -> Option<Duration> {
        self.current.load().as_ref().map(|s| s.fetched_at.elapsed())
    }

    /// Fetches once and, if the result is good, swaps it in.
    ///
    /// # Errors
    /// The fetch failed or returned no usable keys; the old keys stay.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, JwksError> {
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        match self.fetch(generation).await {
            Ok(set) => {
                let set = Arc::new(set);
                tracing::info!(provider = %self.provider, keys = set.keys.len(), "JWKS loaded");
                self.current.store(Some(Arc::clone(&set)));
                Ok(set)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %self.provider, error = %e, "JWKS fetch failed; keeping the previous keys");
                Err(e)
            }
        }
    }

    /// A token named a `kid` that the current set lacks: fetch again, unless
    /// another request already did since `seen`, or one started less than
    /// `kid_miss_min_interval` ago. Concurrent misses wait for one fetch.
    pub async fn refresh_for_unknown_kid(&self, seen: Option<u64>) -> Option<Arc<KeySet>> {
        let mut last = self.miss_fetch.lock().await;
        let current = self.current.load_full();
        if current.as_ref().map(|s| s.generation) != seen {
            return current;
        }
        if last.is_some_and(|at| at.elapsed() < self.kid_miss_min_interval) {
            return None;
        }
        *last = Some(Instant::now());
        self.refresh().await.ok()
    }

    /// How long until the next background refresh after a good fetch.
    fn next_refresh(&self, set: &KeySet) -> Duration {
        set.max_age
            .unwrap_or(self.refresh_max)
            .clamp(self.refresh_min, self.refresh_max)
    }

    /// Refreshes in the background for as long as the store lives: before
    /// the cache age runs out, and with backoff while fetches fail.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let Some(this) = store.upgrade() else { return };
                let wait = match this.refresh().await {
                    Ok(set) => {
                        failures = 0;
                        this.next_refresh(&set)
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        let backoff =
                            Duration::from_millis(250).saturating_mul(1 << failures.min(8));
                        backoff.min(this.refresh_min)
                    }
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        })
    }

    async fn fetch(&self, generation: u64) -> Result<KeySet, JwksError> {
        match &self.source {
            KeySource::File(path) => {
                let body = tokio::fs::read(path).await.map_err(|e| JwksError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                KeySet::parse(&path.display().to_string(), &body, None, generation)
            }
            KeySource::Uri(url) => self.fetch_url(url, generation).await,
            KeySource::Inline(jwks) => {
                KeySet::parse(&self.provider, jwks.as_bytes(), None, generation)
            }
            KeySource::Discovery => {
                let url = match self.discovered.load_full() {
                    Some(url) => url,
                    None => {
                        let url = Arc::new(self.discover(&self.issuer).await?);
                        self.discovered.store(Some(Arc::clone(&url)));
                        url
                    }
                };
                let result = self.fetch_url(&url, generation).await;
                if result.is_err() {
                    // The IdP may have moved its keys: discover again next time.
                    self.discovered.store(None);
                }
                result
            }
        }
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let response = self
            .http
            .get(url)
            .timeout(self.fetch_timeout)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        Ok((read_limited(response, MAX_DOCUMENT_BYTES).await?, max_age))
    }

    async fn fetch_url(&self, url: &str, generation: u64) -> Result<KeySet, JwksError> {
        let (body, max_age) = self.get(url).await.map_err(|message| JwksError::Fetch {
            url: url.to_owned(),
            message,
        })?;
        KeySet::parse(url, &body, max_age, generation)
    }

    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let error = |message: String| JwksError::Discovery {
            url: url.clone(),
            message,
        };
        let (body, _) = self.get(&url).await.map_err(error)?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| error(format!("not JSON: {e}")))?;
        // OIDC Discovery 1.0 §4.3: the document's issuer must be the one asked about.
        if doc.get("issuer").and_then(serde_json::Value::as_str) != Some(issuer) {
            return Err(error(
                "the document's issuer does not match the configured issuer".into(),
            ));
        }
        doc.get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| error("no jwks_uri".into()))
    }
}

/// `max-age` from a `Cache-Control` header; `no-store`/`no-cache` count as zero.
pub fn parse_max_age(header: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            max_age = value
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }

    #[test]
    fn garbage_key_sets_are_rejected() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"{\"keys\": 5}",
            b"{\"keys\": []}",
            b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
        ] {
            assert!(
                KeySet::parse("t", body, None, 1).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn short_rsa_keys_are_skipped() {
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc1u8; 128]);
        let body =
            format!(r#"{{"keys": [{{"kty": "RSA", "kid": "short", "n": "{n}", "e": "AQAB"}}]}}"#);
        let err = KeySet::parse("t", body.as_bytes(), None, 1).unwrap_err();
        assert!(err.to_string().contains("shorter than 2048"), "{err}");
    }
}
