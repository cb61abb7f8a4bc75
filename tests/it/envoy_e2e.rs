//! End to end through a real Envoy: Envoy's ext_authz filter asks Arbiter,
//! and an echo upstream shows what got through.
//!
//! Skipped (with a message) when Envoy is not installed, unless
//! `REQUIRE_ENVOY=1`, as `.ci/run` sets after installing it.

use std::sync::atomic::Ordering;

use crate::common::TestArbiter;
use crate::common::envoy::{Echo, Envoy, Upstream, envoy_binary};

const POLICY: &str = r#"
package envoy.authz

import input.attributes.request.http

default allow := {
  "allowed": false,
  "http_status": 401,
  "body": "{\"error\": \"unauthenticated\"}",
  "headers": {"www-authenticate": "Bearer realm=\"shop\"", "content-type": "application/json"},
  "reason": "no_credentials",
}

# The credential here is a fixed string; identity verification is the
# identity module's work, not this test's.
allow := {
  "allowed": true,
  "headers": {"x-user": "alice", "x-roles": ["reader", "writer"]},
  "request_headers_to_remove": ["authorization"],
  "response_headers_to_add": {"x-decided-by": "arbiter"},
  "query_parameters_to_set": {"tenant": "acme"},
  "query_parameters_to_remove": ["debug"],
} if {
  http.headers.authorization == "Bearer alice-token"
  not input.parsed_body.item == "gun"
}

allow := {"allowed": false, "http_status": 403, "body": "no guns", "reason": "forbidden_item"} if {
  http.headers.authorization == "Bearer alice-token"
  input.parsed_body.item == "gun"
}
"#;

struct Stack {
    arbiter: TestArbiter,
    upstream: Upstream,
    envoy: Envoy,
    http: reqwest::Client,
}

async fn stack() -> Option<Stack> {
    stack_with(POLICY, "").await
}

async fn stack_with(policy: &str, config: &str) -> Option<Stack> {
    let binary = envoy_binary()?;
    let arbiter = TestArbiter::start(&[("authz.rego", policy)], config).await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&binary, arbiter.running.grpc_addr, upstream.addr).await;
    Some(Stack {
        arbiter,
        upstream,
        envoy,
        http: reqwest::Client::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_reaches_upstream_with_the_policys_headers() {
    let Some(s) = stack().await else { return };
    let response = s
        .http
        .get(s.envoy.url("/api/items?debug=1&page=2"))
        .header("authorization", "Bearer alice-token")
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-decided-by"], "arbiter");
    let echo: Echo = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        echo.headers["x-user"],
        vec!["alice"],
        "the client's x-user must be replaced, not appended to"
    );
    let roles: Vec<&str> = echo.headers["x-roles"]
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    assert_eq!(roles, vec!["reader", "writer"]);
    assert!(
        !echo.headers.contains_key("authorization"),
        "removed header reached upstream"
    );
    assert!(echo.uri.contains("tenant=acme"), "{}", echo.uri);
    assert!(echo.uri.contains("page=2"), "{}", echo.uri);
    assert!(!echo.uri.contains("debug"), "{}", echo.uri);
    assert_eq!(s.upstream.hits.load(Ordering::SeqCst), 1);
    s.arbiter.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_gets_the_policys_status_body_and_headers() {
    let Some(s) = stack().await else { return };
    let response = s.http.get(s.envoy.url("/api/items")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"shop\""
    );
    assert_eq!(response.headers()["x-arbiter-reason"], "no_credentials");
    assert_eq!(
        response.text().await.unwrap(),
        "{\"error\": \"unauthenticated\"}"
    );
    assert_eq!(
        s.upstream.hits.load(Ordering::SeqCst),
        0,
        "a denied request reached upstream"
    );
    s.arbiter.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_sees_the_request_body() {
    let Some(s) = stack().await else { return };
    let post = |item: &str| {
        s.http
            .post(s.envoy.url("/api/orders"))
            .header("authorization", "Bearer alice-token")
            .header("content-type", "application/json")
            .body(format!("{{\"item\": \"{item}\"}}"))
            .send()
    };
    let denied = post("gun").await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-arbiter-reason"], "forbidden_item");
    assert_eq!(denied.text().await.unwrap(), "no guns");
    let allowed = post("book").await.unwrap();
    assert_eq!(allowed.status(), 200);
    let echo: Echo = serde_json::from_str(&allowed.text().await.unwrap()).unwrap();
    assert_eq!(echo.body, "{\"item\": \"book\"}");
    assert_eq!(s.upstream.hits.load(Ordering::SeqCst), 1);
    s.arbiter.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_arbiter_stopped_envoy_denies() {
    let Some(s) = stack().await else { return };
    let before = s
        .http
        .get(s.envoy.url("/api/items"))
        .header("authorization", "Bearer alice-token")
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);
    s.arbiter.running.shutdown().await;
    for _ in 0..5 {
        let after = s
            .http
            .get(s.envoy.url("/api/items"))
            .header("authorization", "Bearer alice-token")
            .send()
            .await
            .unwrap();
        assert_eq!(
            after.status(),
            503,
            "with Arbiter gone Envoy must fail closed"
        );
    }
    assert_eq!(
        s.upstream.hits.load(Ordering::SeqCst),
        1,
        "only the request made before the stop got through"
    );
    assert!(
        s.envoy
            .stat("http.ingress.ext_authz.error")
            .await
            .unwrap_or(0)
            >= 5
    );
}

/// Shows the upstream what Arbiter believed about the client.
const SOURCE_POLICY: &str = r#"
package envoy.authz
allow := {"allowed": true, "headers": {"x-client-ip": input.source.ip, "x-peer": input.source.address}}
"#;

async fn client_ip_seen(s: &Stack, xff: Option<&str>) -> (String, String) {
    let mut request = s.http.get(s.envoy.url("/whoami"));
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo: Echo = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    (
        echo.headers["x-client-ip"][0].clone(),
        echo.headers["x-peer"][0].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_x_forwarded_for_does_not_move_the_client() {
    let Some(s) = stack_with(SOURCE_POLICY, "").await else {
        return;
    };
    assert_eq!(
        client_ip_seen(&s, Some("198.51.100.7")).await,
        ("127.0.0.1".into(), "127.0.0.1".into())
    );
    assert_eq!(
        client_ip_seen(&s, Some("garbage, ::zz")).await,
        ("127.0.0.1".into(), "127.0.0.1".into())
    );
    assert_eq!(
        client_ip_seen(&s, None).await,
        ("127.0.0.1".into(), "127.0.0.1".into())
    );
    s.arbiter.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_through_a_trusted_proxy_names_the_client() {
    // Here the test client plays a trusted proxy on 127.0.0.1 in front of Envoy.
    let Some(s) = stack_with(
        SOURCE_POLICY,
        "[context]\ntrusted_proxies = [\"127.0.0.1\"]",
    )
    .await
    else {
        return;
    };
    assert_eq!(
        client_ip_seen(&s, Some("6.6.6.6, 198.51.100.7")).await.0,
        "198.51.100.7"
    );
    assert_eq!(client_ip_seen(&s, Some("not-an-ip")).await.0, "127.0.0.1");
    s.arbiter.running.shutdown().await;
}

/// Sensitive paths need a verified, compliant device bound to the user.
const DEVICE_POLICY: &str = r#"
package envoy.authz

default allow := {"allowed": false, "reason": "device_not_verified"}

allow := {"allowed": true} if {
  input.device.verified
  input.device.compliant == true
}

allow := {"allowed": false, "reason": "device_not_compliant"} if {
  input.device.verified
  not input.device.compliant == true
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_posture_through_envoy_cannot_be_forged() {
    use arbiter::identity::test_keys::{TestKey, jwks};
    use jsonwebtoken::Algorithm;
    let user_key = TestKey::generate("u", Algorithm::RS256).unwrap();
    let device_key = TestKey::generate("d", Algorithm::ES256).unwrap();
    let forger = TestKey::generate("d", Algorithm::ES256).unwrap();
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("u.json"), jwks(&[&user_key]).to_string()).unwrap();
    std::fs::write(keys.path().join("d.json"), jwks(&[&device_key]).to_string()).unwrap();
    let config = format!(
        "[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_file = \"{}\"\n\
         [device]\nmax_age = \"10m\"\n[device.jwt]\nname = \"mdm\"\nissuer = \"https://mdm.test\"\naudiences = [\"arbiter\"]\njwks_file = \"{}\"\nalgorithms = [\"ES256\"]\n",
        keys.path().join("u.json").display(),
        keys.path().join("d.json").display()
    );
    let Some(s) = stack_with(DEVICE_POLICY, &config).await else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let user = |sub: &str| {
        user_key
            .sign(&serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": sub, "exp": now + 600}))
            .unwrap()
    };
    let posture = |key: &TestKey, owner: &str, compliant: bool, iat: u64| {
        key.sign(&serde_json::json!({
            "iss": "https://mdm.test", "aud": "arbiter", "sub": "laptop-1", "user": owner,
            "compliant": compliant, "iat": iat, "exp": now + 600
        }))
        .unwrap()
    };
    let send =
        |token: String, device: Option<String>, extra: Option<(&'static str, &'static str)>| {
            let mut request = s.http.get(s.envoy.url("/payments")).bearer_auth(token);
            if let Some(device) = device {
                request = request.header("x-device-posture", device);
            }
            if let Some((k, v)) = extra {
                request = request.header(k, v);
            }
            request.send()
        };
    let cases = [
        (
            "valid",
            send(
                user("alice"),
                Some(posture(&device_key, "alice", true, now)),
                None,
            )
            .await
            .unwrap(),
            200,
            "",
        ),
        (
            "forged",
            send(
                user("alice"),
                Some(posture(&forger, "alice", true, now)),
                None,
            )
            .await
            .unwrap(),
            403,
            "device_not_verified",
        ),
        (
            "stale",
            send(
                user("alice"),
                Some(posture(&device_key, "alice", true, now - 3600)),
                None,
            )
            .await
            .unwrap(),
            403,
            "device_not_verified",
        ),
        (
            "another user's",
            send(
                user("bob"),
                Some(posture(&device_key, "alice", true, now)),
                None,
            )
            .await
            .unwrap(),
            403,
            "device_not_verified",
        ),
        (
            "non-compliant",
            send(
                user("alice"),
                Some(posture(&device_key, "alice", false, now)),
                None,
            )
            .await
            .unwrap(),
            403,
            "device_not_compliant",
        ),
        (
            "missing",
            send(user("alice"), None, None).await.unwrap(),
            403,
            "device_not_verified",
        ),
        (
            "a compliance header",
            send(
                user("alice"),
                None,
                Some(("x-device-compliance", "compliant")),
            )
            .await
            .unwrap(),
            403,
            "device_not_verified",
        ),
    ];
    for (name, response, status, reason) in cases {
        assert_eq!(response.status(), status, "{name}");
        if !reason.is_empty() {
            assert_eq!(response.headers()["x-arbiter-reason"], reason, "{name}");
        }
    }
    assert_eq!(
        s.upstream.hits.load(Ordering::SeqCst),
        1,
        "only the valid posture got through"
    );
    s.arbiter.running.shutdown().await;
}
