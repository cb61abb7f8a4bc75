//! Workload identities: SPIFFE IDs and the peer principals Envoy reports.

use std::fmt;
use std::str::FromStr;

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`, validated as the SPIFFE
/// specification requires: lower-case trust domain of `[a-z0-9._-]`, path
/// segments of `[A-Za-z0-9._-]` that are neither empty nor `.`/`..`, and no
/// port, user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("not a spiffe:// URI")]
    Scheme,
    #[error("invalid trust domain")]
    TrustDomain,
    #[error("invalid path")]
    Path,
}

impl SpiffeId {
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, with its leading `/` (empty for the trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Namespace and service account, for Istio/Kubernetes IDs of the form `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut segments = self.path.strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if trust_domain.is_empty()
            || !trust_domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
        {
            return Err(SpiffeIdError::TrustDomain);
        }
        if !path.is_empty() {
            for segment in path.split('/').skip(1) {
                if segment.is_empty()
                    || segment == "."
                    || segment == ".."
                    || !segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                {
                    return Err(SpiffeIdError::Path);
                }
            }
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// A peer's authenticated identity as Envoy reports it: the certificate's
/// URI SAN, else DNS SAN, else Subject; a SPIFFE ID under Istio mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub spiffe: Option<SpiffeId>,
    /// A SPIFFE ID in one of the configured trust domains.
    pub trusted: bool,
}

impl Principal {
    pub fn new(id: &str, trust_domains: &[String]) -> Self {
        let spiffe = id.parse::<SpiffeId>().ok();
        let trusted = spiffe
            .as_ref()
            .is_some_and(|s| trust_domains.iter().any(|d| d == s.trust_domain()));
        Self {
            id: id.to_owned(),
            spiffe,
            trusted,
        }
    }
}

/// The first URI SAN of a certificate as Envoy sends it with
/// `include_peer_certificate` (URL-encoded PEM). `None` for anything that
/// does not parse.
pub fn uri_san_from_certificate(url_encoded_pem: &str) -> Option<String> {
    let pem_text = percent_encoding::percent_decode_str(url_encoded_pem)
        .decode_utf8()
        .ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
    let certificate = pem.parse_x509().ok()?;
    let san = certificate.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_parts() {
        let id: SpiffeId = "spiffe://cluster.local/ns/prod/sa/orders".parse().unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/prod/sa/orders");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/prod/sa/orders");
        assert_eq!(id.namespace_and_service_account(), Some(("prod", "orders")));
        let bare: SpiffeId = "spiffe://example.org".parse().unwrap();
        assert_eq!(bare.to_string(), "spiffe://example.org");
        assert_eq!(bare.namespace_and_service_account(), None);
        let other: SpiffeId = "spiffe://example.org/workload/db".parse().unwrap();
        assert_eq!(other.namespace_and_service_account(), None);
    }

    #[test]
    fn invalid_ids() {
        for bad in [
            "cluster.local/ns/a/sa/b",
            "https://cluster.local/ns/a",
            "SPIFFE://cluster.local/x",
            "spiffe://",
            "spiffe://Cluster.Local/x",
            "spiffe://td:8080/x",
            "spiffe://user@td/x",
            "spiffe://td/a//b",
            "spiffe://td/a/../b",
            "spiffe://td/a/",
            "spiffe://td/a?b",
            "spiffe://td/a#b",
            "spiffe://td/caf\u{e9}",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn trust_domains_decide_trust() {
        let domains = vec!["cluster.local".to_owned()];
        assert!(Principal::new("spiffe://cluster.local/ns/a/sa/b", &domains).trusted);
        assert!(!Principal::new("spiffe://evil.example/ns/a/sa/b", &domains).trusted);
        let dns = Principal::new("frontend.example.com", &domains);
        assert!(!dns.trusted);
        assert!(dns.spiffe.is_none());
    }
}
