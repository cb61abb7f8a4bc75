//! A receiver of the IdP's Security Event Tokens (SET, RFC 8417) pushed by
//! an OpenID Shared Signals (SSF 1.0) transmitter (RFC 8935): a CAEP
//! `session-revoked` or `credential-change` event revokes the subject's
//! tokens issued before the event, or its session when the subject names
//! one, at once and in memory. SETs are verified with the transmitter's
//! keys, handled like an `[[identity.jwt]]` provider's.

use std::sync::Arc;

use jsonwebtoken::Validation;
use serde_json::{Map, Value as Json};

use super::jwks::KeyStore;
use super::revocation::Revocations;
use super::token;
use crate::config::{JwtProviderConfig, SsfConfig};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

/// Why a SET was refused, as RFC 8935 §2.3 names the errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("the SET's issuer is not the configured transmitter")]
    InvalidIssuer,
    #[error("the SET is not addressed to this receiver")]
    InvalidAudience,
    /// The transmitter's keys cannot be had now: the SET may be fine, and
    /// the transmitter should send it again.
    #[error("the transmitter's keys are not available; send it again later")]
    Unavailable,
}

impl SetError {
    /// The `err` code of RFC 8935's error response.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidAudience => "invalid_audience",
            Self::Unavailable => "temporarily_unavailable",
        }
    }
}

/// What one accepted SET revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Tokens of `subject` (their `sub`) issued before `before` (Unix seconds).
    Subject {
        subject: String,
        before: u64,
    },
    /// Tokens whose `email` claim is `email`, issued before `before`.
    Email {
        email: String,
        before: u64,
    },
    Session(String),
}

/// The transmitter's keys and what its SETs must say.
pub struct SsfReceiver {
    provider: JwtProviderConfig,
    keys: Arc<KeyStore>,
    revocations: Arc<Revocations>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SsfReceiver {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

impl SsfReceiver {
    /// Starts fetching the transmitter's keys; must run inside Tokio.
    pub fn start(
        config: &SsfConfig,
        http: &reqwest::Client,
        revocations: Arc<Revocations>,
    ) -> Self {
        let provider = config.as_provider();
        let keys = Arc::new(KeyStore::new(&provider, http.clone()));
        let refresher = Some(keys.spawn_refresher());
        Self {
            provider,
            keys,
            revocations,
            refresher,
        }
    }

    /// Verifies one SET and applies its events.
    ///
    /// # Errors
    /// The SET does not verify, is not for this receiver, or carries an
    /// event it does not know; nothing is applied then.
    pub async fn receive(&self, set: &str) -> Result<Vec<Revoked>, SetError> {
        let claims = self.verify(set).await?;
        // Times in a SET are the transmitter's, as a token's `iat` is the
        // IdP's; only one far ahead of ours (past the leeway) is cut back.
        let latest = token::now().saturating_add(self.provider.leeway.as_secs());
        let revoked = events(&claims, latest)?;
        self.revocations.apply_events(&revoked);
        Ok(revoked)
    }

    async fn verify(&self, set: &str) -> Result<Map<String, Json>, SetError> {
        let unverified = token::peek(set).map_err(|e| SetError::InvalidRequest(e.to_string()))?;
        if unverified.issuer != self.provider.issuer {
            return Err(SetError::InvalidIssuer);
        }
        let mut keys = self.keys.keys().map_err(|_| SetError::Unavailable)?;
        // A kid the keys lack may be a key the transmitter just rotated in.
        if matches!(
            token::signing_key(&unverified, &self.provider.algorithms, &keys),
            Err(super::TokenError::UnknownKid)
        ) && let Some(fresh) = self
            .keys
            .refresh_for_unknown_kid(Some(keys.generation))
            .await
        {
            keys = fresh;
        }
        let key = token::signing_key(&unverified, &self.provider.algorithms, &keys)
            .map_err(|e| SetError::InvalidKey(e.to_string()))?;
        let mut validation = Validation::new(unverified.alg);
        validation.leeway = self.provider.leeway.as_secs();
        // A SET need not expire (RFC 8417 §2.2); one that does is checked.
        validation.set_required_spec_claims(&["iss", "aud"]);
        validation.set_issuer(&[self.provider.issuer.as_str()]);
        validation.set_audience(&self.provider.audiences);
        match jsonwebtoken::decode::<Map<String, Json>>(set, &key.key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => SetError::InvalidAudience,
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => SetError::InvalidIssuer,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    SetError::InvalidKey("the signature does not verify".into())
                }
                _ => SetError::InvalidRequest(e.to_string()),
            }),
        }
    }
}

/// The revocations a verified SET asks for: each event must be one this
/// receiver knows, about a subject it can name.
/// A NumericDate (RFC 7519): seconds since the epoch, possibly fractional.
fn numeric_date(value: &Json) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            // Whole seconds: a fraction changes nothing a token's `iat` can tell.
            .map(|t| t.floor() as u64)
    })
}

fn events(claims: &Map<String, Json>, latest: u64) -> Result<Vec<Revoked>, SetError> {
    let Some(Json::Object(events)) = claims.get("events") else {
        return Err(SetError::InvalidRequest("the SET has no events".into()));
    };
    if events.is_empty() {
        return Err(SetError::InvalidRequest("the SET has no events".into()));
    }
    // RFC 8417 §2.2 requires `iat`. Without it an event would have to
    // revoke as of its arrival, and the same SET replayed later would
    // revoke tokens issued after the event.
    let issued = claims
        .get("iat")
        .and_then(numeric_date)
        .ok_or_else(|| SetError::InvalidRequest("the SET has no iat (a NumericDate)".into()))?;
    let mut revoked = Vec::new();
    for (kind, event) in events {
        if kind != SESSION_REVOKED && kind != CREDENTIAL_CHANGE {
            return Err(SetError::InvalidRequest(format!(
                "unknown event type {kind:?}"
            )));
        }
        // SSF 1.0 puts the subject in `sub_id`; CAEP's earlier drafts in the event.
        let subject = event
            .get("subject")
            .or_else(|| claims.get("sub_id"))
            .ok_or_else(|| SetError::InvalidRequest(format!("{kind}: no subject")))?;
        // A time far ahead would revoke tokens not yet issued.
        let before = event
            .get("event_timestamp")
            .and_then(numeric_date)
            .unwrap_or(issued)
            .min(latest);
        if let Some(sid) = subject.get("sid").and_then(Json::as_str) {
            revoked.push(Revoked::Session(sid.to_owned()));
            continue;
        }
        let named = |member: &str| {
            subject
                .get(member)
                .and_then(Json::as_str)
                .map(str::to_owned)
        };
        let event = match subject.get("format").and_then(Json::as_str) {
            Some("iss_sub") => named("sub").map(|subject| Revoked::Subject { subject, before }),
            Some("opaque") => named("id").map(|subject| Revoked::Subject { subject, before }),
            Some("email") => named("email").map(|email| Revoked::Email { email, before }),
            _ => None,
        }
        .ok_or_else(|| {
            SetError::InvalidRequest(format!(
                "{kind}: the subject must be iss_sub, opaque or email, or carry a sid"
            ))
        })?;
        revoked.push(event);
    }
    Ok(revoked)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn claims(value: Json) -> Map<String, Json> {
        match value {
            Json::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn events_name_subjects_and_sessions() {
        let set = claims(serde_json::json!({
            "iat": 100,
            "events": {
                SESSION_REVOKED: {"subject": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"}, "event_timestamp": 90},
                CREDENTIAL_CHANGE: {"subject": {"format": "opaque", "id": "x", "sid": "s-1"}},
            }
        }));
        let mut got = events(&set, u64::MAX).unwrap();
        got.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            got,
            [
                Revoked::Session("s-1".into()),
                Revoked::Subject {
                    subject: "alice".into(),
                    before: 90
                },
            ]
        );
        let unknown =
            claims(serde_json::json!({"iat": 100, "events": {"https://example/other": {}}}));
        assert!(matches!(
            events(&unknown, u64::MAX),
            Err(SetError::InvalidRequest(_))
        ));
        let nameless = claims(serde_json::json!({
            "iat": 100,
            "events": {SESSION_REVOKED: {"subject": {"format": "phone"}}}
        }));
        assert!(events(&nameless, u64::MAX).is_err());
    }

    /// A SET without `iat` is refused: its events would revoke as of their
    /// arrival, and a replay would revoke tokens issued since. A time past
    /// the latest Arbiter allows (its clock and leeway) is cut back to it;
    /// a fractional NumericDate counts.
    #[test]
    fn events_revoke_as_of_their_time_never_as_of_arrival_or_later() {
        let alice = serde_json::json!({"subject": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"}});
        let undated = claims(serde_json::json!({"events": {SESSION_REVOKED: alice}}));
        assert!(
            matches!(events(&undated, u64::MAX), Err(SetError::InvalidRequest(m)) if m.contains("iat"))
        );
        let at = |event_timestamp: serde_json::Value| {
            let event = serde_json::json!({
                "subject": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"},
                "event_timestamp": event_timestamp,
            });
            let set = claims(serde_json::json!({"iat": 100.5, "events": {SESSION_REVOKED: event}}));
            match events(&set, 5_000).unwrap().as_slice() {
                [Revoked::Subject { before, .. }] => Some(*before),
                _ => None,
            }
        };
        assert_eq!(at(serde_json::json!(4_000)), Some(4_000));
        assert_eq!(at(serde_json::json!(9_000)), Some(5_000));
        assert_eq!(at(serde_json::json!(4_000.9)), Some(4_000));
        assert_eq!(at(serde_json::Value::Null), Some(100), "the SET's iat");
    }
}
