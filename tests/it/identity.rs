//! Identity: bearer JWTs verified against a real JWKS server on 127.0.0.1,
//! through a real gRPC client and server.

use std::time::Duration;

use crate::common::idp::{Idp, Mode};
use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

const POLICY: &str = r#"
package envoy.authz

default allow := {"allowed": false, "http_status": 403, "reason": "anonymous"}

allow := {
  "allowed": true,
  "headers": {
    "x-subject": input.identity.subject,
    "x-provider": input.identity.provider,
    "x-scopes": concat(" ", input.identity.scopes),
    "x-tenant": input.identity.claims.tenant,
  },
} if input.identity != null

allow := {"allowed": false, "http_status": 401, "reason": concat(":", ["policy_saw", input.identity_error])} if input.identity_error
"#;

fn provider_toml(idp: &Idp, extra: &str) -> String {
    format!(
        "[identity]\nstartup_grace = \"5s\"\n[[identity.jwt]]\nname = \"corp\"\nissuer = \"{}\"\naudiences = [\"api\"]\njwks_uri = \"{}\"\nalgorithms = [\"RS256\", \"ES256\"]\nmax_lifetime = \"2h\"\nkid_miss_min_interval = \"60s\"\nrefresh_max = \"1h\"\nrefresh_min = \"1h\"\n{extra}\n",
        idp.issuer(),
        idp.jwks_url()
    )
}

fn claims(idp: &Idp) -> serde_json::Value {
    json!({
        "iss": idp.issuer(), "aud": "api", "sub": "alice", "tenant": "acme",
        "scope": "orders:read orders:write", "iat": now(), "exp": now() + 600
    })
}

fn with(mut base: serde_json::Value, patch: serde_json::Value) -> serde_json::Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// (allowed, HTTP status if denied, reason header, upstream headers if allowed)
async fn check(
    arbiter: &TestArbiter,
    token: Option<&str>,
) -> (bool, u32, String, Vec<(String, String)>) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let response = arbiter
        .check_json(&http_request("GET", "/orders", &headers, ""))
        .await;
    if is_allowed(&response) {
        let ok = ok_response(&response);
        let headers = ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        (true, 200, String::new(), headers)
    } else {
        let denied = denied_response(&response);
        let reason = header_values(&denied.headers, "x-arbiter-reason")
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default();
        (
            false,
            denied.status.as_ref().map_or(0, |s| s.code as u32),
            reason,
            Vec::new(),
        )
    }
}

#[tokio::test]
async fn a_valid_token_reaches_the_policy_as_verified_identity() {
    let rsa = TestKey::generate("rsa-1", Algorithm::RS256).unwrap();
    let ec = TestKey::generate("ec-1", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&rsa, &ec])).await;
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &provider_toml(&idp, "")).await;
    for key in [&rsa, &ec] {
        let token = key.sign(&claims(&idp)).unwrap();
        let (allowed, _, reason, headers) = check(&arbiter, Some(&token)).await;
        assert!(allowed, "{:?}: {reason}", key.alg);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-subject"), Some("alice"));
        assert_eq!(get("x-provider"), Some("corp"));
        assert_eq!(get("x-scopes"), Some("orders:read orders:write"));
        assert_eq!(get("x-tenant"), Some("acme"));
    }
    let (allowed, status, reason, _) = check(&arbiter, None).await;
    assert!(!allowed);
    assert_eq!(
        (status, reason.as_str()),
        (403, "anonymous"),
        "no token: identity null, the policy decides"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn hostile_tokens_are_rejected_each_with_its_reason() {
    let rsa = TestKey::generate("rsa-1", Algorithm::RS256).unwrap();
    let ec = TestKey::generate("ec-1", Algorithm::ES256).unwrap();
    let ps = TestKey::generate("ps-1", Algorithm::PS256).unwrap();
    let stranger = TestKey::generate("rsa-1", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&rsa, &ec, &ps])).await;
    let arbiter = TestArbiter::start(
        &[("p.rego", POLICY)],
        &provider_toml(&idp, "leeway = \"5s\""),
    )
    .await;
    let good = claims(&idp);
    let b64 = |s: &str| base64_url(s.as_bytes());
    let valid = rsa.sign(&good).unwrap();
    let parts: Vec<&str> = valid.split('.').collect();
    let n = rsa.jwk()["n"].as_str().unwrap().to_owned();

    let hmac_with_public_key = {
        let header = Header::new(Algorithm::HS256);
        jsonwebtoken::encode(
            &header,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()),
        )
        .unwrap()
    };
    let mut crit = Header::new(Algorithm::RS256);
    crit.kid = Some("rsa-1".into());
    crit.crit = Some(vec!["exp".into()]);
    let mut wrong_kid_type = Header::new(Algorithm::RS256);
    wrong_kid_type.kid = Some("ec-1".into());

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rsa.sign(&with(good.clone(), json!({"exp": now() - 60})))
                .unwrap(),
            "token_expired",
        ),
        (
            "not yet valid",
            rsa.sign(&with(good.clone(), json!({"nbf": now() + 600})))
                .unwrap(),
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            rsa.sign(&with(good.clone(), json!({"aud": "other"})))
                .unwrap(),
            "token_wrong_audience",
        ),
        (
            "no audience",
            rsa.sign(&with(good.clone(), json!({"aud": null}))).unwrap(),
            "token_missing_claim",
        ),
        (
            "no expiry",
            rsa.sign(&with(good.clone(), json!({"exp": null}))).unwrap(),
            "token_missing_claim",
        ),
        (
            "unknown issuer",
            rsa.sign(&with(good.clone(), json!({"iss": "https://evil.example"})))
                .unwrap(),
            "token_unknown_issuer",
        ),
        (
            "lifetime too long",
            rsa.sign(&with(good.clone(), json!({"exp": now() + 3 * 3600})))
                .unwrap(),
            "token_lifetime_too_long",
        ),
        (
            "signed by a stranger",
            stranger.sign(&good).unwrap(),
            "token_signature_invalid",
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with(good.clone(), json!({"sub": "root"})).to_string()),
                parts[2]
            ),
            "token_signature_invalid",
        ),
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), parts[1]),
            "token_algorithm_not_allowed",
        ),
        (
            "HMAC with the public key (algorithm confusion)",
            hmac_with_public_key,
            "token_algorithm_not_allowed",
        ),
        (
            "PS256 not on the allow-list",
            ps.sign(&good).unwrap(),
            "token_algorithm_not_allowed",
        ),
        (
            "RS256 header naming an EC key",
            rsa.sign_with_header(&wrong_kid_type, &good).unwrap(),
            "token_key_mismatch",
        ),
        (
            "critical header",
            rsa.sign_with_header(&crit, &good).unwrap(),
            "token_critical_header_unsupported",
        ),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            "token_malformed",
        ),
        ("four parts", format!("{valid}.x"), "token_malformed"),
        (
            "bad base64",
            format!("{}.!!!.{}", parts[0], parts[2]),
            "token_malformed",
        ),
        (
            "payload not JSON",
            format!("{}.{}.{}", parts[0], b64("not json"), parts[2]),
            "token_malformed",
        ),
        (
            "payload not an object",
            format!("{}.{}.{}", parts[0], b64("[1]"), parts[2]),
            "token_malformed",
        ),
        ("megabytes", "a".repeat(2 * 1024 * 1024), "token_too_large"),
        (
            "just over the limit",
            format!("{}.{}.{}", parts[0], "a".repeat(8 * 1024), parts[2]),
            "token_too_large",
        ),
    ];
    for (name, token, want) in &cases {
        let (allowed, status, reason, _) = check(&arbiter, Some(token)).await;
        assert!(!allowed, "{name} was allowed");
        assert_eq!(reason, *want, "{name}");
        assert_eq!(status, 401, "{name}");
    }
    let (allowed, ..) = check(&arbiter, Some(&valid)).await;
    assert!(allowed, "the untampered token still passes");
    arbiter.running.shutdown().await;
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn rotation_is_picked_up_by_kid_miss_without_waiting_for_refresh() {
    let old = TestKey::generate("2025", Algorithm::RS256).unwrap();
    let new = TestKey::generate("2026", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&old])).await;
    let toml = provider_toml(&idp, "").replace(
        "kid_miss_min_interval = \"60s\"",
        "kid_miss_min_interval = \"1ms\"",
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let old_token = old.sign(&claims(&idp)).unwrap();
    assert!(check(&arbiter, Some(&old_token)).await.0);
    let fetches = idp.fetches();
    idp.set_keys(jwks(&[&old, &new]));
    let (allowed, _, reason, _) = check(&arbiter, Some(&new.sign(&claims(&idp)).unwrap())).await;
    assert!(allowed, "{reason}");
    assert_eq!(idp.fetches(), fetches + 1, "one fetch for the new kid");

    // The IdP withdraws the old key. Once the keys are refetched, a token it
    // signed no longer passes, even though it sits in the verified-token cache.
    idp.set_keys(jwks(&[&new]));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("2027".into());
    assert!(
        !check(
            &arbiter,
            Some(&new.sign_with_header(&header, &claims(&idp)).unwrap())
        )
        .await
        .0
    );
    let (allowed, _, reason, _) = check(&arbiter, Some(&old_token)).await;
    assert!(!allowed, "a withdrawn key still vouched for a cached token");
    assert_eq!(reason, "token_unknown_key");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_random_kids_fetches_at_most_once_per_interval() {
    let key = TestKey::generate("real", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    // Signing 2,000 tokens on the test's single thread takes seconds; the
    // deadline is lifted so that this test measures fetches, not queueing.
    let toml = format!(
        "[server]\ndecision_timeout = \"30s\"\n{}",
        provider_toml(&idp, "")
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let before = idp.fetches();
    let mut client = arbiter.client().await;
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let token = key.sign_with_header(&header, &claims(&idp)).unwrap();
        let request: arbiter::proto::auth::CheckRequest = serde_json::from_str(&http_request(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        ))
        .unwrap();
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.check(request).await.unwrap().into_inner()
        }));
        if i % 200 == 0 {
            client = arbiter.client().await;
        }
    }
    for task in tasks {
        let response = task.await.unwrap();
        assert!(!is_allowed(&response));
        assert_eq!(
            header_values(&denied_response(&response).headers, "x-arbiter-reason"),
            vec!["token_unknown_key"]
        );
    }
    // The first miss fetches; every later one falls within the interval.
    assert_eq!(
        idp.fetches() - before,
        1,
        "fetches for 2000 unknown kids within one kid_miss_min_interval"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn concurrent_misses_for_a_new_kid_share_one_fetch() {
    let old = TestKey::generate("old", Algorithm::ES256).unwrap();
    let new = TestKey::generate("new", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&old])).await;
    // No interval to hide behind: only coalescing can keep this to one
    // fetch. The deadline is lifted above the IdP's slowness.
    let toml = format!(
        "[server]\ndecision_timeout = \"10s\"\n{}",
        provider_toml(&idp, "")
    )
    .replace(
        "kid_miss_min_interval = \"60s\"",
        "kid_miss_min_interval = \"1ms\"",
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    idp.set_keys(jwks(&[&old, &new]));
    // Slow enough that every request below misses while the fetch runs.
    idp.set_mode(Mode::Slow(Duration::from_millis(800)));
    let before = idp.fetches();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let token = new
            .sign(&with(claims(&idp), json!({"jti": format!("t{i}")})))
            .unwrap();
        let request: arbiter::proto::auth::CheckRequest = serde_json::from_str(&http_request(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        ))
        .unwrap();
        let mut client = arbiter.client().await;
        tasks.push(tokio::spawn(async move {
            client.check(request).await.unwrap().into_inner()
        }));
    }
    for task in tasks {
        let response = task.await.unwrap();
        assert!(is_allowed(&response), "{response:?}");
    }
    assert_eq!(idp.fetches() - before, 1, "50 concurrent misses, one fetch");
    arbiter.running.shutdown().await;
}

/// Waits until the IdP has served `more` further JWKS fetches and returns
/// how long that took; fails after `within`.
async fn time_fetches(idp: &Idp, more: usize, within: Duration) -> Duration {
    let target = idp.fetches() + more;
    let started = std::time::Instant::now();
    while idp.fetches() < target {
        assert!(
            started.elapsed() < within,
            "{more} fetches did not come within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn idp_failures_keep_good_keys_until_the_staleness_bound() {
    let key = TestKey::generate("k", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let arbiter = TestArbiter::start(
        &[("p.rego", POLICY)],
        &provider_toml(&idp, "max_staleness = \"3s\"\nfetch_timeout = \"500ms\"").replace(
            "kid_miss_min_interval = \"60s\"",
            "kid_miss_min_interval = \"1ms\"",
        ),
    )
    .await;
    let token = key.sign(&claims(&idp)).unwrap();
    assert!(check(&arbiter, Some(&token)).await.0);

    // Garbage and errors never replace good keys: force fetches with unknown kids.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("unknown".into());
    let probe = key.sign_with_header(&header, &claims(&idp)).unwrap();
    for mode in [
        Mode::Garbage,
        Mode::Fail,
        Mode::Slow(Duration::from_secs(30)),
    ] {
        idp.set_mode(mode.clone());
        let before = idp.fetches();
        let started = std::time::Instant::now();
        assert!(!check(&arbiter, Some(&probe)).await.0);
        assert!(idp.fetches() > before, "{mode:?}: no fetch was tried");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode:?}: the fetch timeout did not apply"
        );
        let fresh = key
            .sign(&with(claims(&idp), json!({"jti": format!("{mode:?}")})))
            .unwrap();
        let (allowed, _, reason, _) = check(&arbiter, Some(&fresh)).await;
        assert!(allowed, "{mode:?} replaced good keys: {reason}");
    }

    idp.stop();
    let fresh = key
        .sign(&with(claims(&idp), json!({"jti": "down"})))
        .unwrap();
    assert!(
        check(&arbiter, Some(&fresh)).await.0,
        "keys serve while the IdP is down, within the bound"
    );
    // Past max_staleness the keys go stale: readiness turns false.
    let ready_url = format!("http://{}/readyz", arbiter.running.admin_addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(&ready_url).await.unwrap().status() == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "keys never went stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (allowed, status, reason, _) = check(&arbiter, Some(&token)).await;
    assert!(!allowed, "stale keys must fail closed");
    assert_eq!((status, reason.as_str()), (503, "jwks_stale"));
    let metrics = arbiter.metrics().await;
    assert!(
        metrics.contains("arbiter_jwks_fetch_failures_total{provider=\"corp\"}"),
        "{metrics}"
    );
    let ready = reqwest::get(format!("http://{}/readyz", arbiter.running.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "stale keys make Arbiter unready");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_cached_token_is_still_checked_for_expiry() {
    let key = TestKey::generate("k", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let arbiter = TestArbiter::start(
        &[("p.rego", POLICY)],
        &provider_toml(&idp, "leeway = \"0s\""),
    )
    .await;
    let exp = now() + 2;
    let token = key.sign(&with(claims(&idp), json!({"exp": exp}))).unwrap();
    assert!(check(&arbiter, Some(&token)).await.0);
    assert!(
        check(&arbiter, Some(&token)).await.0,
        "second use, from the cache"
    );
    let metrics = arbiter.metrics().await;
    assert!(
        metrics.contains("arbiter_token_cache_lookups_total{result=\"hit\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("arbiter_token_cache_lookups_total{result=\"miss\"} 1"),
        "{metrics}"
    );
    // Still in the cache: the next uses are refused from the second `exp` passes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let (allowed, _, reason, _) = check(&arbiter, Some(&token)).await;
        if !allowed {
            break reason;
        }
        assert!(now() <= exp, "allowed after its exp");
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reason, "token_expired");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn without_keys_arbiter_is_not_ready_and_denies_tokens() {
    let key = TestKey::generate("k", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set_mode(Mode::Fail);
    let toml =
        provider_toml(&idp, "").replace("startup_grace = \"5s\"", "startup_grace = \"200ms\"");
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let ready = reqwest::get(format!("http://{}/readyz", arbiter.running.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let (allowed, status, reason, _) =
        check(&arbiter, Some(&key.sign(&claims(&idp)).unwrap())).await;
    assert!(!allowed);
    assert_eq!((status, reason.as_str()), (503, "jwks_unavailable"));

    // The IdP recovers: the background refresh retries and Arbiter becomes ready.
    idp.set_mode(Mode::Serve);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = reqwest::get(format!("http://{}/readyz", arbiter.running.admin_addr))
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        check(&arbiter, Some(&key.sign(&claims(&idp)).unwrap()))
            .await
            .0
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn pass_to_policy_hands_the_error_to_the_policy() {
    let key = TestKey::generate("k", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let arbiter = TestArbiter::start(
        &[("p.rego", POLICY)],
        &provider_toml(&idp, "on_invalid = \"pass_to_policy\""),
    )
    .await;
    let expired = key
        .sign(&with(claims(&idp), json!({"exp": now() - 600})))
        .unwrap();
    let (allowed, status, reason, _) = check(&arbiter, Some(&expired)).await;
    assert!(!allowed);
    assert_eq!((status, reason.as_str()), (401, "policy_saw:token_expired"));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn oidc_discovery_and_cookie_tokens() {
    let key = TestKey::generate("k", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let toml = format!(
        "[[identity.jwt]]\nname = \"web\"\nissuer = \"{}\"\naudiences = [\"api\"]\ndiscovery = true\nalgorithms = [\"ES256\"]\nfrom = {{ cookie = {{ name = \"session\" }} }}\n",
        idp.issuer()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let token = key.sign(&claims(&idp)).unwrap();
    let cookie = format!("theme=dark; session={token}; other=1");
    let response = arbiter
        .check_json(&http_request("GET", "/", &[("cookie", &cookie)], ""))
        .await;
    assert!(is_allowed(&response));
    // The same token in the Authorization header is not where this provider looks.
    let response = arbiter
        .check_json(&http_request(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        ))
        .await;
    assert!(!is_allowed(&response));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background_as_cache_control_allows() {
    let key = TestKey::generate("k", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set_cache_control("public, max-age=1");
    let toml = provider_toml(&idp, "")
        .replace("refresh_min = \"1h\"", "refresh_min = \"1s\"")
        .replace("refresh_max = \"1h\"", "refresh_max = \"2s\"");
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    // max-age=1 within [1s, 2s]: two refreshes take two to four seconds.
    let took = time_fetches(&idp, 2, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "max-age=1: two background fetches in {took:?}"
    );

    // A huge max-age is capped at refresh_max (2 s)...
    idp.set_cache_control("max-age=86400");
    time_fetches(&idp, 1, Duration::from_secs(5)).await;
    let took = time_fetches(&idp, 1, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "max-age above refresh_max: next fetch after {took:?}"
    );

    // ...and no-store is raised to refresh_min (1 s), never a fetch loop.
    idp.set_cache_control("no-store");
    time_fetches(&idp, 1, Duration::from_secs(5)).await;
    let took = time_fetches(&idp, 2, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "no-store: two background fetches in {took:?}"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let key = TestKey::generate("k", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set_advertised_issuer("https://evil.example");
    let toml = format!(
        "[identity]\nstartup_grace = \"300ms\"\n[[identity.jwt]]\nname = \"web\"\nissuer = \"{}\"\naudiences = [\"api\"]\ndiscovery = true\nalgorithms = [\"ES256\"]\n",
        idp.issuer()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let (allowed, status, reason, _) =
        check(&arbiter, Some(&key.sign(&claims(&idp)).unwrap())).await;
    assert!(!allowed);
    assert_eq!((status, reason.as_str()), (503, "jwks_unavailable"));
    assert_eq!(
        idp.fetches(),
        0,
        "the keys of an IdP that names another issuer were fetched"
    );
    arbiter.running.shutdown().await;
}
