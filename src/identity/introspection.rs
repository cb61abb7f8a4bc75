//! OAuth 2.0 Token Introspection (RFC 7662) for bearer tokens that are not
//! JWTs: the authorization server says whether an opaque token is active
//! and what it carries. Answers are cached (active ones until the earlier
//! of their `exp` and `cache_max`, inactive ones for `negative_cache`), and
//! concurrent requests for one token share one call. An endpoint that
//! cannot answer is a 503 for tokens not in the cache, never an allow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::token::{self, TokenError, VerifiedToken};
use crate::config::IntrospectionConfig;

/// Why an introspector could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("identity.introspection {name}: cannot read the client secret {path}: {message}")]
pub struct IntrospectionError {
    name: String,
    path: String,
    message: String,
}

/// One cached answer: a verified token or "inactive", and until when
/// (Unix seconds) it may be used.
#[derive(Clone)]
struct Answer {
    token: Result<Arc<VerifiedToken>, TokenError>,
    until: u64,
}

/// One authorization server's introspection endpoint.
pub struct Introspector {
    pub config: IntrospectionConfig,
    secret: String,
    http: reqwest::Client,
    cache: quick_cache::sync::Cache<[u8; 32], Answer>,
    calls: AtomicU64,
}

impl Introspector {
    /// # Errors
    /// The client secret file cannot be read.
    pub fn new(
        config: &IntrospectionConfig,
        http: &reqwest::Client,
        cache_size: usize,
    ) -> Result<Self, IntrospectionError> {
        let secret = std::fs::read_to_string(&config.client_secret_file)
            .map_err(|e| IntrospectionError {
                name: config.name.clone(),
                path: config.client_secret_file.display().to_string(),
                message: e.to_string(),
            })?
            .trim()
            .to_owned();
        Ok(Self {
            config: config.clone(),
            secret,
            http: http.clone(),
            cache: quick_cache::sync::Cache::new(cache_size.max(1)),
            calls: AtomicU64::new(0),
        })
    }

    /// Calls made to the endpoint so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The token's verified identity, from the cache or the endpoint.
    ///
    /// # Errors
    /// `Inactive` (401), `WrongAudience` (401), or
    /// `IntrospectionUnavailable` (503) when the endpoint cannot answer.
    pub async fn introspect(&self, raw: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let key = token::cache_key(raw);
        // A used-up answer is dropped and asked again, once.
        for _ in 0..2 {
            let answer = self.cache.get_or_insert_async(&key, self.ask(raw)).await?;
            if token::now() < answer.until {
                return answer.token;
            }
            self.cache.remove(&key);
        }
        Err(TokenError::IntrospectionUnavailable)
    }

    /// One call to the endpoint. A failed call is an error and is not cached.
    async fn ask(&self, raw: &str) -> Result<Answer, TokenError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let response = self
            .http
            .post(&self.config.endpoint)
            .basic_auth(&self.config.client_id, Some(&self.secret))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "token={}&token_type_hint=access_token",
                percent_encoding::utf8_percent_encode(raw, percent_encoding::NON_ALPHANUMERIC)
            ))
            .timeout(self.config.fetch_timeout)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(provider = %self.config.name, error = %e, "introspection endpoint unreachable");
                TokenError::IntrospectionUnavailable
            })?;
        if !response.status().is_success() {
            tracing::warn!(provider = %self.config.name, status = %response.status(), "introspection endpoint failed");
            return Err(TokenError::IntrospectionUnavailable);
        }
        let body = super::jwks::read_limited(response, super::jwks::MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %self.config.name, error = %e, "introspection answer refused");
                TokenError::IntrospectionUnavailable
            })?;
        let answer: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|e| {
                tracing::warn!(provider = %self.config.name, error = %e, "introspection answer is not a JSON object");
                TokenError::IntrospectionUnavailable
            })?;
        let now = token::now();
        let negative = now.saturating_add(self.config.negative_cache.as_secs().max(1));
        Ok(
            match token::from_introspection(&self.config.name, answer, &self.config.audiences, now)
            {
                Ok(verified) => {
                    let until = now
                        .saturating_add(secs(self.config.cache_max))
                        .min(verified.expires_at);
                    Answer {
                        token: Ok(Arc::new(verified)),
                        until,
                    }
                }
                Err(e) => Answer {
                    token: Err(e),
                    until: negative,
                },
            },
        )
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}
