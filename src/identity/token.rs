//! One JWT: reading its header without trusting it, verifying it against a
//! key set, and the verified result.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use sha2::{Digest, Sha256};

use super::jwks::{KeyKind, KeySet};
use crate::config::JwtProviderConfig;

/// Why a token is not accepted. Each has a short, fixed label for logs,
/// metrics and the response; the token itself is never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token_too_large")]
    TooLarge,
    #[error("token_malformed")]
    Malformed,
    #[error("token_algorithm_not_allowed")]
    AlgorithmNotAllowed,
    #[error("token_critical_header_unsupported")]
    UnsupportedCritical,
    #[error("token_unknown_issuer")]
    UnknownIssuer,
    #[error("token_unknown_key")]
    UnknownKid,
    #[error("token_key_mismatch")]
    KeyMismatch,
    #[error("token_signature_invalid")]
    BadSignature,
    #[error("token_expired")]
    Expired,
    #[error("token_not_yet_valid")]
    NotYetValid,
    #[error("token_wrong_audience")]
    WrongAudience,
    #[error("token_missing_claim")]
    MissingClaim,
    #[error("token_lifetime_too_long")]
    LifetimeTooLong,
    #[error("jwks_unavailable")]
    KeysUnavailable,
    #[error("jwks_stale")]
    KeysStale,
    #[error("device_posture_stale")]
    PostureStale,
    #[error("token_revoked")]
    Revoked,
    #[error("token_inactive")]
    Inactive,
    #[error("introspection_unavailable")]
    IntrospectionUnavailable,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "token_too_large",
            Self::Malformed => "token_malformed",
            Self::AlgorithmNotAllowed => "token_algorithm_not_allowed",
            Self::UnsupportedCritical => "token_critical_header_unsupported",
            Self::UnknownIssuer => "token_unknown_issuer",
            Self::UnknownKid => "token_unknown_key",
            Self::KeyMismatch => "token_key_mismatch",
            Self::BadSignature => "token_signature_invalid",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongAudience => "token_wrong_audience",
            Self::MissingClaim => "token_missing_claim",
            Self::LifetimeTooLong => "token_lifetime_too_long",
            Self::KeysUnavailable => "jwks_unavailable",
            Self::KeysStale => "jwks_stale",
            Self::PostureStale => "device_posture_stale",
            Self::Revoked => "token_revoked",
            Self::Inactive => "token_inactive",
            Self::IntrospectionUnavailable => "introspection_unavailable",
        }
    }
}

/// A token whose every check passed. Only this module builds one.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub provider: String,
    pub issuer: String,
    pub subject: Option<String>,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    pub expires_at: u64,
    pub issued_at: Option<u64>,
    not_before: Option<u64>,
    pub(super) kid: Option<String>,
    /// The generation of the key set that verified it.
    pub(super) key_generation: u64,
    /// The key that verified it.
    pub(super) key_fingerprint: super::jwks::KeyFingerprint,
    /// `input.identity`, built once at verification so a cached token costs no conversion.
    document: regorus::Value,
}

impl VerifiedToken {
    /// The token as the policy sees it: `{provider, issuer, subject, audience, scopes, claims, expires_at}`.
    pub fn document(&self) -> &regorus::Value {
        &self.document
    }

    /// One claim of the token (`Undefined` if it has none). The claims are
    /// kept once, in the policy's form, so a cached token holds no copy.
    pub fn claim(&self, name: &str) -> &regorus::Value {
        &self.document["claims"][name]
    }

    /// A string claim.
    pub fn string_claim(&self, name: &str) -> Option<&str> {
        match self.claim(name) {
            regorus::Value::String(s) => Some(s),
            _ => None,
        }
    }

    fn build_document(&mut self, claims: serde_json::Map<String, serde_json::Value>) {
        use regorus::Value;
        use std::collections::BTreeMap;
        let strings = |items: &[String]| {
            Value::from(
                items
                    .iter()
                    .map(|s| Value::from(s.as_str()))
                    .collect::<Vec<_>>(),
            )
        };
        let mut doc = BTreeMap::new();
        doc.insert(Value::from("provider"), Value::from(self.provider.as_str()));
        doc.insert(Value::from("issuer"), Value::from(self.issuer.as_str()));
        doc.insert(
            Value::from("subject"),
            self.subject.as_deref().map_or(Value::Null, Value::from),
        );
        doc.insert(Value::from("audience"), strings(&self.audience));
        doc.insert(Value::from("scopes"), strings(&self.scopes));
        doc.insert(
            Value::from("claims"),
            Value::from(serde_json::Value::Object(claims)),
        );
        doc.insert(Value::from("expires_at"), Value::from(self.expires_at));
        self.document = Value::from(doc);
    }

    /// Still within `exp` and `nbf` (with leeway) at `now`: checked on every use.
    ///
    /// # Errors
    /// Expired or not yet valid.
    pub fn check_time(&self, now: u64, leeway: Duration) -> Result<(), TokenError> {
        let leeway = leeway.as_secs();
        if self.expires_at.saturating_add(leeway) <= now {
            return Err(TokenError::Expired);
        }
        if self
            .not_before
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

/// What a token says about itself, read before anything about it is trusted.
#[derive(Debug)]
pub struct Unverified {
    pub issuer: String,
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Whether a bearer token has a JWS's shape (three dot-separated parts):
/// the others go to introspection.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

pub(super) fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Reads the header and the issuer, rejecting what no provider could accept:
/// anything but three base64url parts of JSON objects, `alg: none` or HMAC
/// (never accepted from an identity provider), and any `crit` header.
///
/// # Errors
/// The token is malformed or asks for something Arbiter never accepts.
pub fn peek(token: &str) -> Result<Unverified, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = decode_json(header)?;
    let payload = decode_json(payload)?;
    let alg = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or(TokenError::Malformed)?;
    let alg: Algorithm = alg.parse().map_err(|_| TokenError::AlgorithmNotAllowed)?;
    if KeyKind::for_algorithm(alg).is_none() {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    // Arbiter implements no JWS extension, so any critical one is unknown (RFC 7515 §4.1.11).
    if header.contains_key("crit") {
        return Err(TokenError::UnsupportedCritical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(serde_json::Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let issuer = payload
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .ok_or(TokenError::MissingClaim)?
        .to_owned();
    Ok(Unverified { issuer, alg, kid })
}

fn decode_json(part: &str) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed),
    }
}

/// Verifies a token against one provider's key set.
///
/// # Errors
/// Every failed check, each with its own [`TokenError`].
/// The key that must have signed a token: the one its `kid` names, or,
/// without a kid, the only key fit for its algorithm, which must be one of
/// `algorithms`.
///
/// # Errors
/// The algorithm is not allowed, or no single fitting key is known.
pub fn signing_key<'k>(
    unverified: &Unverified,
    algorithms: &[crate::config::SigningAlgorithm],
    keys: &'k KeySet,
) -> Result<&'k super::jwks::VerificationKey, TokenError> {
    if !algorithms.iter().any(|a| a.jwt() == unverified.alg) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    let key = match &unverified.kid {
        Some(kid) => keys.find(kid).ok_or(TokenError::UnknownKid)?,
        None => {
            // Without a kid, only an unambiguous key will do.
            let mut fitting = keys.keys.iter().filter(|k| k.accepts(unverified.alg));
            match (fitting.next(), fitting.next()) {
                (Some(key), None) => key,
                (None, _) => return Err(TokenError::KeyMismatch),
                (Some(_), Some(_)) => return Err(TokenError::UnknownKid),
            }
        }
    };
    if !key.accepts(unverified.alg) {
        return Err(TokenError::KeyMismatch);
    }
    Ok(key)
}

pub fn verify_with_keys(
    token: &str,
    unverified: &Unverified,
    provider: &JwtProviderConfig,
    keys: &KeySet,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let key = signing_key(unverified, &provider.algorithms, keys)?;

    let mut validation = Validation::new(unverified.alg);
    validation.leeway = provider.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[provider.issuer.as_str()]);
    let mut required = vec!["exp", "iss"];
    if provider.skip_audience_check {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&provider.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);

    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key.key,
        &validation,
    )
    .map_err(|e| classify(&e))?;
    let claims = data.claims;
    let expires_at = claims
        .get("exp")
        .and_then(as_seconds)
        .ok_or(TokenError::MissingClaim)?;
    let not_before = claims.get("nbf").and_then(as_seconds);
    if let Some(max) = provider.max_lifetime {
        let start = claims.get("iat").and_then(as_seconds).unwrap_or(now);
        if expires_at.saturating_sub(start) > max.as_secs() {
            return Err(TokenError::LifetimeTooLong);
        }
    }
    let audience = audience(&claims);
    let mut verified = VerifiedToken {
        provider: provider.name.clone(),
        issuer: provider.issuer.clone(),
        subject: claims
            .get("sub")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        audience,
        scopes: scopes(&claims),
        expires_at,
        issued_at: claims.get("iat").and_then(as_seconds),
        not_before,
        kid: unverified.kid.clone(),
        key_generation: keys.generation,
        key_fingerprint: key.fingerprint,
        document: regorus::Value::Null,
    };
    verified.build_document(claims);
    Ok(verified)
}

/// An opaque token the provider's introspection endpoint called active
/// (RFC 7662): its answer is the token's claims.
///
/// # Errors
/// Not active, expired, or for none of `audiences` (when given).
pub fn from_introspection(
    provider: &str,
    answer: serde_json::Map<String, serde_json::Value>,
    audiences: &[String],
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    if answer.get("active") != Some(&serde_json::Value::Bool(true)) {
        return Err(TokenError::Inactive);
    }
    let expires_at = answer.get("exp").and_then(as_seconds);
    if expires_at.is_some_and(|exp| exp <= now) {
        return Err(TokenError::Inactive);
    }
    let audience = audience(&answer);
    if !audiences.is_empty() && !audience.iter().any(|a| audiences.contains(a)) {
        return Err(TokenError::WrongAudience);
    }
    let mut verified = VerifiedToken {
        provider: provider.to_owned(),
        issuer: answer
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        subject: answer
            .get("sub")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        audience,
        scopes: scopes(&answer),
        expires_at: expires_at.unwrap_or(u64::MAX),
        issued_at: answer.get("iat").and_then(as_seconds),
        not_before: answer.get("nbf").and_then(as_seconds),
        kid: None,
        key_generation: 0,
        key_fingerprint: super::jwks::KeyFingerprint::NONE,
        document: regorus::Value::Null,
    };
    verified.build_document(answer);
    Ok(verified)
}

/// `aud`, a string or a list of strings.
fn audience(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn as_seconds(value: &serde_json::Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// Scopes from `scope` (space-separated, RFC 8693) or `scp` (string or list).
fn scopes(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        let values: Vec<String> = match claims.get(name) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for v in values {
            if seen.insert(v.clone()) {
                out.push(v);
            }
        }
    }
    out
}

fn classify(error: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
        ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::AlgorithmNotAllowed
        }
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
            TokenError::KeyMismatch
        }
        _ => TokenError::Malformed,
    }
}
