//! Tokens and sessions revoked before they expire: a list of token IDs
//! (`jti`), session IDs (`sid`) and subjects revoked as of a time, from a
//! file (`[identity.revocation] file`) or from the policy bundle
//! (`data.arbiter.revocation`), in the same shape:
//!
//! ```json
//! {"tokens": ["<jti>"], "sessions": ["<sid>"], "subjects": {"<sub>": "2026-01-01T00:00:00Z"}}
//! ```
//!
//! A subject's entry revokes its tokens issued (`iat`) before that time; a
//! token of a listed subject without `iat` cannot show it is newer and is
//! revoked. Checking a token is three hash lookups.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Deserialize;

use super::token::VerifiedToken;

/// Why a revocation list was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RevocationError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: subject {subject:?}: {time:?} is not an RFC 3339 time")]
    Time {
        path: PathBuf,
        subject: String,
        time: String,
    },
}

/// One revocation list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RevocationList {
    tokens: HashSet<String>,
    sessions: HashSet<String>,
    /// Subject to the time (Unix seconds) before which its tokens are revoked.
    subjects: HashMap<String, u64>,
    /// The same by the tokens' `email` claim (from events naming a subject
    /// by email; the file names subjects by `sub`).
    emails: HashMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    sessions: Vec<String>,
    #[serde(default)]
    subjects: HashMap<String, String>,
}

impl RevocationList {
    /// Reads a list from its JSON text; `path` names it in errors.
    ///
    /// # Errors
    /// The text is not a list of this shape, or a time does not parse.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RevocationError> {
        let file: ListFile = serde_json::from_str(text).map_err(|e| RevocationError::Invalid {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let mut subjects = HashMap::with_capacity(file.subjects.len());
        for (subject, time) in file.subjects {
            let Some(at) = rfc3339_seconds(&time) else {
                return Err(RevocationError::Time {
                    path: path.to_owned(),
                    subject,
                    time,
                });
            };
            subjects.insert(subject, at);
        }
        Ok(Self {
            tokens: file.tokens.into_iter().collect(),
            sessions: file.sessions.into_iter().collect(),
            subjects,
            emails: HashMap::new(),
        })
    }

    /// A list from the policy data (`data.arbiter.revocation`).
    ///
    /// # Errors
    /// As [`RevocationList::parse`].
    pub fn from_data(value: &regorus::Value) -> Result<Option<Self>, RevocationError> {
        if value == &regorus::Value::Undefined {
            return Ok(None);
        }
        let path = Path::new("data.arbiter.revocation");
        let text = value.to_json_str().map_err(|e| RevocationError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path).map(Some)
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.sessions.len() + self.subjects.len() + self.emails.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this list revokes `token`.
    pub fn revokes(&self, token: &VerifiedToken) -> bool {
        if self.is_empty() {
            return false;
        }
        let listed = |set: &HashSet<String>, claim: &str| match token.claim(claim) {
            regorus::Value::String(id) => set.contains(&**id),
            _ => false,
        };
        // A claim lookup costs more than an empty set's check.
        if (!self.tokens.is_empty() && listed(&self.tokens, "jti"))
            || (!self.sessions.is_empty() && listed(&self.sessions, "sid"))
        {
            return true;
        }
        let issued_before =
            |revoked_before: &u64| token.issued_at.is_none_or(|iat| iat < *revoked_before);
        let by_subject = token
            .subject
            .as_ref()
            .and_then(|s| self.subjects.get(s))
            .is_some_and(issued_before);
        let by_email = !self.emails.is_empty()
            && token
                .string_claim("email")
                .and_then(|e| self.emails.get(e))
                .is_some_and(issued_before);
        by_subject || by_email
    }
}

/// Seconds since the Unix epoch of an RFC 3339 date-time.
fn rfc3339_seconds(text: &str) -> Option<u64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(parsed.unix_timestamp()).ok()
}

/// The file's list as last loaded, reloaded when the file changes; a file
/// that does not parse is refused and the last good list stays.
#[derive(Debug)]
pub struct Revocations {
    file: Option<PathBuf>,
    current: ArcSwap<RevocationList>,
    /// What the IdP's session-revoked events revoked: in memory, kept
    /// across reloads of the file and of policies, lost on restart.
    events: ArcSwap<RevocationList>,
    events_applied: AtomicU64,
    events_refused: AtomicU64,
    last_error: ArcSwapOption<String>,
    reload_failures: AtomicU64,
    revoked: AtomicU64,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            file: None,
            current: ArcSwap::from_pointee(RevocationList::default()),
            events: ArcSwap::from_pointee(RevocationList::default()),
            events_applied: AtomicU64::new(0),
            events_refused: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            reload_failures: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }
}

impl Revocations {
    /// The list in `file`, or none.
    ///
    /// # Errors
    /// The file cannot be read or does not parse (at start, that is fatal).
    pub fn load(file: Option<&Path>) -> Result<Self, RevocationError> {
        let Some(file) = file else {
            return Ok(Self::default());
        };
        let list = read(file)?;
        tracing::info!(file = %file.display(), entries = list.len(), "revocation list loaded");
        Ok(Self {
            file: Some(file.to_owned()),
            current: ArcSwap::from_pointee(list),
            ..Self::default()
        })
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the file again; a broken one is logged, counted and reported,
    /// and the last good list keeps serving.
    pub fn reload(&self) {
        let Some(file) = &self.file else { return };
        match read(file) {
            Ok(list) => {
                tracing::info!(file = %file.display(), entries = list.len(), "revocation list reloaded");
                self.current.store(Arc::new(list));
                self.last_error.store(None);
            }
            Err(e) => {
                tracing::error!(error = %e, "revocation list refused; the last good one stays");
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                self.last_error.store(Some(Arc::new(e.to_string())));
            }
        }
    }

    /// Adds what received events revoked; later events for a subject move
    /// its time forward, never back.
    pub fn apply_events(&self, revoked: &[super::ssf::Revoked]) {
        self.events.rcu(|old| {
            let mut list = RevocationList::clone(old);
            for event in revoked {
                match event {
                    super::ssf::Revoked::Session(sid) => {
                        list.sessions.insert(sid.clone());
                    }
                    super::ssf::Revoked::Subject { subject, before } => {
                        let at = list.subjects.entry(subject.clone()).or_insert(*before);
                        *at = (*at).max(*before);
                    }
                    super::ssf::Revoked::Email { email, before } => {
                        let at = list.emails.entry(email.clone()).or_insert(*before);
                        *at = (*at).max(*before);
                    }
                }
            }
            list
        });
        self.events_applied
            .fetch_add(revoked.len() as u64, Ordering::Relaxed);
    }

    /// Revocations received as events and applied.
    pub fn events_applied(&self) -> u64 {
        self.events_applied.load(Ordering::Relaxed)
    }

    /// Counts an event refused (bad signature, wrong issuer, unknown type).
    pub fn count_refused_event(&self) {
        self.events_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn events_refused(&self) -> u64 {
        self.events_refused.load(Ordering::Relaxed)
    }

    /// Whether the file's list or a received event revokes `token`;
    /// counted when one does.
    pub fn revokes(&self, token: &VerifiedToken) -> bool {
        let revoked = self.current.load().revokes(token) || self.events.load().revokes(token);
        if revoked {
            self.count_revoked();
        }
        revoked
    }

    /// Counts a token refused as revoked (by this list or the bundle's).
    pub fn count_revoked(&self) {
        self.revoked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn entries(&self) -> usize {
        self.current.load().len()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.load().as_deref().cloned()
    }

    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    pub fn revoked(&self) -> u64 {
        self.revoked.load(Ordering::Relaxed)
    }
}

fn read(file: &Path) -> Result<RevocationList, RevocationError> {
    let text = std::fs::read_to_string(file).map_err(|e| RevocationError::Read {
        path: file.to_owned(),
        message: e.to_string(),
    })?;
    RevocationList::parse(&text, file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_broken_ones_name_the_line() {
        let list = RevocationList::parse(
            r#"{"tokens": ["t1"], "sessions": ["s1"], "subjects": {"alice": "2026-01-01T00:00:00Z"}}"#,
            Path::new("r.json"),
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.subjects.get("alice"), Some(&1_767_225_600));
        let broken = RevocationList::parse("{\n\"tokens\": [1]}", Path::new("r.json")).unwrap_err();
        assert!(broken.to_string().starts_with("r.json:2:"), "{broken}");
        let time =
            RevocationList::parse(r#"{"subjects": {"bob": "yesterday"}}"#, Path::new("r.json"))
                .unwrap_err();
        assert!(time.to_string().contains("bob"), "{time}");
        let unknown = RevocationList::parse(r#"{"token": ["t"]}"#, Path::new("r.json"));
        assert!(
            unknown.is_err(),
            "a misspelt key must not pass as an empty list"
        );
    }
}
