//! Fault injection while requests keep flowing: the IdP turns slow, fails,
//! serves garbage and goes away; some requests make the policy run out of
//! time. Through all of it no request is allowed that the policy denies, and
//! every request that can be decided is decided.
//!
//! A reload racing a stream of requests is in `tests/reload.rs`
//! (`reload_under_load_drops_and_misdecides_nothing`); Arbiter killed and
//! restarted under load behind Envoy in `tests/replicas.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::idp::{Idp, Mode};
use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::proto::auth::CheckRequest;
use jsonwebtoken::Algorithm;

/// What a request carries, and so what the policy must decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A token signed by a key the IdP published: allowed.
    Good,
    /// A token naming a key the IdP never published: denied, and each one
    /// sends Arbiter to the IdP (at most once per interval).
    UnknownKid,
    /// A token signed by a key nobody trusts, with the good key's kid.
    Forged,
    /// No token: denied.
    Anonymous,
    /// A good token, but the request makes the policy run past its limit.
    Slow,
}

const KINDS: [Kind; 5] = [
    Kind::Good,
    Kind::UnknownKid,
    Kind::Forged,
    Kind::Anonymous,
    Kind::Slow,
];

const POLICY: &str = r#"
package envoy.authz

default allow := false

allow if {
  input.identity.subject == "alice"
  not input.attributes.request.http.headers["x-slow"]
}

allow if {
  input.attributes.request.http.headers["x-slow"]
  count([x | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); x := i * j]) > 0
}
"#;

fn request(token: Option<&str>, slow: bool) -> CheckRequest {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> =
        auth.iter().map(|a| ("authorization", a.as_str())).collect();
    if slow {
        headers.push(("x-slow", "1"));
    }
    serde_json::from_str(&http_request("GET", "/orders", &headers, "")).unwrap()
}

/// Waits until Arbiter has tried the IdP twice more (unknown kids keep
/// asking), so that every phase of the fault plan meets real requests.
async fn tried_the_idp_twice(arbiter: &TestArbiter) {
    let before = metric(&arbiter.metrics().await, "arbiter_jwks_fetches_total").unwrap();
    wait_for_metric(
        &arbiter.running.admin_addr.to_string(),
        "arbiter_jwks_fetches_total",
        before + 2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_faults_and_slow_policies_under_load_never_allow_wrongly() {
    let key = TestKey::generate("good", Algorithm::ES256).unwrap();
    let stranger = TestKey::generate("good", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let toml = format!(
        "[server]\ndecision_timeout = \"5s\"\n[policy]\neval_timeout = \"50ms\"\n\
         [[identity.jwt]]\nname = \"corp\"\nissuer = \"{}\"\naudiences = [\"api\"]\n\
         jwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\nkid_miss_min_interval = \"100ms\"\n\
         fetch_timeout = \"300ms\"\nmax_staleness = \"1h\"\n",
        idp.issuer(),
        idp.jwks_url()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let signed = |key: &TestKey, kid: &str| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        key.sign_with_header(
            &header,
            &serde_json::json!({"iss": idp.issuer(), "aud": "api", "sub": "alice", "exp": exp}),
        )
        .unwrap()
    };
    let good = signed(&key, "good");
    let unknown = signed(&key, "rotated-away");
    let forged = signed(&stranger, "good");
    let requests: Vec<(Kind, CheckRequest)> = KINDS
        .iter()
        .map(|kind| {
            let request = match kind {
                Kind::Good => request(Some(&good), false),
                Kind::UnknownKid => request(Some(&unknown), false),
                Kind::Forged => request(Some(&forged), false),
                Kind::Anonymous => request(None, false),
                Kind::Slow => request(Some(&good), true),
            };
            (*kind, request)
        })
        .collect();
    let requests = Arc::new(requests);

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let mut client = arbiter.client().await;
        let (stop, requests) = (Arc::clone(&stop), Arc::clone(&requests));
        workers.push(tokio::spawn(async move {
            let mut seen: Vec<(Kind, bool, String)> = Vec::new();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let (kind, request) = &requests[i % requests.len()];
                i += 1;
                let response = client
                    .check(request.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?} was not answered: {e}"))
                    .into_inner();
                let reason = if is_allowed(&response) {
                    String::new()
                } else {
                    header_values(&denied_response(&response).headers, "x-arbiter-reason")
                        .first()
                        .map(|r| r.to_string())
                        .unwrap_or_default()
                };
                seen.push((*kind, is_allowed(&response), reason));
            }
            seen
        }));
    }

    // Each fault for a while, then the IdP comes back, then it goes away.
    for mode in [
        Mode::Serve,
        Mode::Slow(Duration::from_secs(10)),
        Mode::Fail,
        Mode::Garbage,
        Mode::Serve,
    ] {
        idp.set_mode(mode);
        tried_the_idp_twice(&arbiter).await;
    }
    idp.stop();
    tried_the_idp_twice(&arbiter).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = Vec::new();
    for worker in workers {
        seen.extend(worker.await.unwrap());
    }
    for kind in KINDS {
        let of_kind: Vec<_> = seen.iter().filter(|(k, _, _)| *k == kind).collect();
        assert!(
            of_kind.len() >= 20,
            "{kind:?}: only {} requests",
            of_kind.len()
        );
        let allowed = of_kind.iter().filter(|(_, allowed, _)| *allowed).count();
        if kind == Kind::Good {
            // Keys fetched before the faults keep verifying good tokens:
            // every one of them is decided, and allowed.
            assert_eq!(allowed, of_kind.len(), "good tokens denied: {of_kind:?}");
        } else {
            assert_eq!(allowed, 0, "{kind:?} allowed");
        }
    }
    let reasons = |kind: Kind| -> std::collections::BTreeSet<String> {
        seen.iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, _, r)| r.clone())
            .collect()
    };
    assert_eq!(reasons(Kind::Slow), ["policy_timeout".to_owned()].into());
    assert_eq!(
        reasons(Kind::Forged),
        ["token_signature_invalid".to_owned()].into()
    );
    assert!(
        reasons(Kind::UnknownKid)
            .iter()
            .all(|r| r.starts_with("token_") || r.starts_with("jwks_")),
        "{:?}",
        reasons(Kind::UnknownKid)
    );
    eprintln!("{} requests decided through the faults", seen.len());
    arbiter.running.shutdown().await;
}
