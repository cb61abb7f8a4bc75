//! The HTTP front doors against the real server: Envoy's HTTP ext_authz
//! (through a real Envoy, `deploy/envoy/http-service.yaml`), forward-auth
//! (as nginx, Caddy and Traefik call it), and OPA's Data API. Each decides
//! through the same pipeline as gRPC.

use std::sync::atomic::Ordering;

use crate::common::envoy::{Echo, Envoy, Upstream, envoy_binary};
use crate::common::{TestArbiter, metric};

/// Allows alice (by a header the proxy forwards) with headers for the
/// upstream, denies everyone else with a 401 and a reason, fails on
/// `x-fail`, and reads the client address, the parsed path and the body.
const POLICY: &str = r#"
package envoy.authz

import input.attributes.request.http

default allow := {
  "allowed": false,
  "http_status": 401,
  "body": "who are you?",
  "headers": {"www-authenticate": "Bearer realm=\"shop\""},
  "reason": "no_credentials",
}

allow := {
  "allowed": true,
  "headers": {"x-user": "alice", "x-roles": ["reader", "writer"], "x-client-ip": input.source.ip},
  "request_headers_to_remove": ["x-api-key"],
} if {
  http.headers["x-api-key"] == "alice-key"
  input.parsed_path[0] == "api"
  http.method in {"GET", "POST"}
  not input.parsed_body.item == "gun"
}

allow := {"allowed": false, "http_status": 403, "body": "no guns", "reason": "forbidden_item"} if {
  http.headers["x-api-key"] == "alice-key"
  input.parsed_body.item == "gun"
}

allow := {"allowed": false, "http_status": 503, "reason": "maintenance"} if http.headers["x-maintenance"]

# Two values for one complete rule: an evaluation error, which must deny.
allow := true if http.headers["x-fail"]
allow := false if http.headers["x-fail"]

# For the Data API.
tenants := {"acme": {"plan": "gold"}}

can_read if input.user == "alice"
"#;

const HTTP: &str = "[http]\naddr = \"127.0.0.1:0\"\n";

async fn start(extra: &str) -> TestArbiter {
    // Decision lines to a file in the test's directory, not to stdout.
    let log = if extra.contains("[log]") {
        ""
    } else {
        "[log]\ndecision_file = \"decisions.log\"\n"
    };
    TestArbiter::start(&[("authz.rego", POLICY)], &format!("{HTTP}{extra}\n{log}")).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct EnvoyStack {
    arbiter: TestArbiter,
    upstream: Upstream,
    envoy: Envoy,
}

async fn envoy_stack(extra: &str) -> Option<EnvoyStack> {
    let binary = envoy_binary()?;
    let arbiter = start(extra).await;
    let upstream = Upstream::start().await;
    let http = arbiter.running.http_addr.unwrap();
    let envoy = Envoy::start_deployed(
        &binary,
        "deploy/envoy/http-service.yaml",
        &[(9292, http.port()), (8000, upstream.addr.port())],
    )
    .await;
    Some(EnvoyStack {
        arbiter,
        upstream,
        envoy,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_ext_authz_allows_with_the_policys_headers_and_denies_with_its_status() {
    let Some(s) = envoy_stack("").await else {
        return;
    };
    let http = client();
    let response = http
        .get(s.envoy.url("/api/items?page=2"))
        .header("x-api-key", "alice-key")
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Echo = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        echo.headers["x-user"],
        vec!["alice"],
        "the client's x-user must be replaced by the policy's"
    );
    assert_eq!(echo.uri, "/api/items?page=2");
    assert!(
        !echo.headers.contains_key("x-api-key"),
        "a header the policy removed reached the upstream"
    );

    let denied = http.get(s.envoy.url("/api/items")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied.headers()["www-authenticate"],
        "Bearer realm=\"shop\""
    );
    assert_eq!(denied.headers()["x-arbiter-reason"], "no_credentials");
    assert_eq!(denied.text().await.unwrap(), "who are you?");

    // The body reaches the policy (with_request_body).
    let gun = http
        .post(s.envoy.url("/api/orders"))
        .header("x-api-key", "alice-key")
        .header("content-type", "application/json")
        .body(r#"{"item": "gun"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(gun.status(), 403);
    assert_eq!(gun.text().await.unwrap(), "no guns");

    // A policy error is a deny, never an allow.
    let failed = http
        .get(s.envoy.url("/api/items"))
        .header("x-api-key", "alice-key")
        .header("x-fail", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 403);
    assert_eq!(failed.headers()["x-arbiter-reason"], "policy_error");
    assert_eq!(s.upstream.hits.load(Ordering::SeqCst), 1);

    let metrics = s.arbiter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "arbiter_http_requests_total{door=\"envoy_http\",status=\"2xx\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "arbiter_http_requests_total{door=\"envoy_http\",status=\"4xx\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    s.arbiter.running.shutdown().await;
}

/// Without Envoy in between: what Envoy's `http_service` sends, from a
/// caller that is not a trusted proxy. Its `X-Forwarded-For` is not
/// believed; a body over the limit is refused.
#[tokio::test]
async fn the_envoy_door_believes_forwarded_addresses_only_from_trusted_proxies() {
    let arbiter = start("[server]\nmax_request_bytes = 4096\n").await;
    let http = client();
    let ask = |xff: &'static str| {
        http.get(arbiter.http_url("/envoy/api/items"))
            .header("x-api-key", "alice-key")
            .header("x-forwarded-for", xff)
            .send()
    };
    let allowed = ask("203.0.113.9").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["x-client-ip"],
        "127.0.0.1",
        "a forwarded address from an untrusted caller was believed"
    );
    // Envoy reads a 5xx from an HTTP authorization server as a failed
    // call (failure_mode_allow would let it through): a deny with one
    // reaches Envoy as a 403; forward-auth proxies get it as it is.
    let maintenance = http
        .get(arbiter.http_url("/envoy/api/items"))
        .header("x-maintenance", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(maintenance.status(), 403);
    assert_eq!(maintenance.headers()["x-arbiter-reason"], "maintenance");
    let forwarded = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items")
        .header("x-maintenance", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 503);
    arbiter.running.shutdown().await;

    let arbiter = start("[context]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    let allowed = http
        .get(arbiter.http_url("/envoy/api/items"))
        .header("x-api-key", "alice-key")
        .header("x-forwarded-for", "198.51.100.7, 203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.headers()["x-client-ip"], "203.0.113.9");
    arbiter.running.shutdown().await;

    let arbiter = start("[server]\nmax_request_bytes = 4096\n").await;
    let big = http
        .post(arbiter.http_url("/envoy/api/orders"))
        .header("x-api-key", "alice-key")
        .header("content-type", "application/json")
        .body(format!(r#"{{"item": "{}"}}"#, "x".repeat(8192)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        big.status(),
        413,
        "a body over max_request_bytes was decided"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn forward_auth_decides_the_request_the_proxy_describes() {
    let arbiter = start("").await;
    let http = client();
    // Traefik and Caddy describe the request with X-Forwarded-*.
    let allowed = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items?page=2")
        .header("x-forwarded-host", "shop.example")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-user"], "alice");
    // The caller is a trusted proxy (loopback), so its X-Forwarded-For is the client.
    assert_eq!(allowed.headers()["x-client-ip"], "203.0.113.9");
    // A policy error is a deny.
    let failed = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items")
        .header("x-api-key", "alice-key")
        .header("x-fail", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 403);
    assert_eq!(failed.headers()["x-arbiter-reason"], "policy_error");
    // Only the configured family is read: X-Original-* here is the
    // client's, and without X-Forwarded-* there is no request to judge.
    let other_family = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/items")
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(other_family.status(), 403);
    assert_eq!(
        other_family.headers()["x-arbiter-reason"],
        "forward_auth_incomplete"
    );
    // An empty URI describes no request either (it is not "/").
    let empty = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "")
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 403);
    assert_eq!(
        empty.headers()["x-arbiter-reason"],
        "forward_auth_incomplete"
    );
    arbiter.running.shutdown().await;

    // nginx describes it with X-Original-* set by the operator; a client's
    // X-Forwarded-Uri passed on by nginx is not read.
    let arbiter = start("forward_auth_headers = \"x-original\"\n").await;
    let nginx = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-original-method", "DELETE")
        .header("x-original-uri", "/api/items")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items")
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(nginx.status(), 401, "DELETE is not allowed by the policy");
    assert_eq!(nginx.headers()["x-arbiter-reason"], "no_credentials");
    assert_eq!(nginx.text().await.unwrap(), "who are you?");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn forward_auth_from_a_caller_that_is_not_a_trusted_proxy_is_refused() {
    let arbiter = start("trust_loopback = false\n").await;
    let http = client();
    let refused = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items")
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["x-arbiter-reason"], "untrusted_forwarder");
    assert!(refused.headers().get("x-user").is_none());
    arbiter.running.shutdown().await;

    let arbiter =
        start("trust_loopback = false\n[context]\ntrusted_proxies = [\"127.0.0.0/8\"]\n").await;
    let accepted = http
        .get(arbiter.http_url("/forward-auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/items")
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn opa_data_api_answers_as_opa_does() {
    // Decision lines are written only where `tracing` is on, as in `serve`:
    // on this test's thread only, which runs the server too (a current-thread
    // runtime), so that other tests see no subscriber they did not set.
    let _tracing = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("decisions.log");
    let arbiter = start(&format!("[log]\ndecision_file = \"{}\"\n", log.display())).await;
    let http = client();
    let post = |path: &str, body: &str| {
        http.post(arbiter.http_url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let answer: serde_json::Value = post(
        "/v1/data/envoy/authz/can_read",
        r#"{"input": {"user": "alice"}}"#,
    )
    .await
    .unwrap()
    .text()
    .await
    .map(|t| serde_json::from_str(&t).unwrap())
    .unwrap();
    assert_eq!(answer["result"], true, "{answer}");
    assert!(
        answer["decision_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let undefined: serde_json::Value = post(
        "/v1/data/envoy/authz/can_read",
        r#"{"input": {"user": "bob"}}"#,
    )
    .await
    .unwrap()
    .text()
    .await
    .map(|t| serde_json::from_str(&t).unwrap())
    .unwrap();
    assert!(undefined.get("result").is_none(), "{undefined}");
    assert!(undefined["decision_id"].is_string(), "{undefined}");
    // A key with a slash in it is one key: decoded once, after splitting.
    let slashed = http
        .get(arbiter.http_url("/v1/data/envoy/authz/tenants/ac%2Fme"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!slashed.contains("result"), "{slashed}");
    let tenants: serde_json::Value = http
        .get(arbiter.http_url("/v1/data/envoy/authz/tenants/acme"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(tenants["result"], serde_json::json!({"plan": "gold"}));
    // v0: the body is the input, the answer the bare value, 404 when undefined.
    let v0 = post("/v0/data/envoy/authz/can_read", r#"{"user": "alice"}"#)
        .await
        .unwrap();
    assert_eq!(v0.status(), 200);
    assert_eq!(v0.text().await.unwrap(), "true");
    let missing = post("/v0/data/envoy/authz/can_read", r#"{"user": "bob"}"#)
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let broken = post("/v1/data/envoy/authz/can_read", "{not json")
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    let health = http.get(arbiter.http_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "{}");
    arbiter.running.shutdown().await;
    // Each query is a decision in the log, under the ID the caller was given.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let logged = |id: &str| lines.iter().find(|l| l["decision_id"] == id).cloned();
    let allowed = logged(answer["decision_id"].as_str().unwrap())
        .unwrap_or_else(|| panic!("the query was not logged: {lines:?}"));
    assert_eq!(
        allowed["path"], "/v1/data/envoy/authz/can_read",
        "{allowed}"
    );
    assert_eq!(allowed["result"], "allow", "{allowed}");
    let denied = logged(undefined["decision_id"].as_str().unwrap()).expect("logged");
    assert_eq!(denied["reason"], "policy_undefined", "{denied}");
}

/// A real proxy in front of the echo upstream, asking Arbiter's
/// forward-auth door: the allowed request reaches the upstream with the
/// policy's header (the client's own replaced), the denied one gets the
/// policy's status and reason and never reaches it.
async fn forward_auth_through(proxy: &str) {
    use crate::common::proxies::{Proxy, proxy_binary};
    let Some(binary) = proxy_binary(proxy) else {
        return;
    };
    let arbiter = start(match proxy {
        "nginx" => "forward_auth_headers = \"x-original\"\n",
        _ => "",
    })
    .await;
    let upstream = Upstream::start().await;
    let http_addr = arbiter.running.http_addr.unwrap();
    let proxy_server = match proxy {
        "nginx" => Proxy::nginx(&binary, http_addr, upstream.addr).await,
        _ => Proxy::caddy(&binary, http_addr, upstream.addr).await,
    };
    let http = client();
    let allowed = http
        .get(proxy_server.url("/api/items?page=2"))
        .header("x-api-key", "alice-key")
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200, "{proxy}: {}", proxy_server.log());
    let echo: Echo = serde_json::from_str(&allowed.text().await.unwrap()).unwrap();
    assert_eq!(echo.headers["x-user"], vec!["alice"], "{proxy}");
    assert_eq!(echo.uri, "/api/items?page=2", "{proxy}");

    let denied = http
        .get(proxy_server.url("/api/items"))
        .header("x-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401, "{proxy}");
    assert_eq!(
        denied.headers()["x-arbiter-reason"],
        "no_credentials",
        "{proxy}"
    );
    let deleted = http
        .delete(proxy_server.url("/api/items"))
        .header("x-api-key", "alice-key")
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleted.status(),
        401,
        "{proxy}: the original method was not DELETE"
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1, "{proxy}");
    let metrics = arbiter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "arbiter_http_requests_total{door=\"forward_auth\",status=\"2xx\"}"
        ),
        Some(1.0),
        "{proxy}: {metrics}"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_asks_arbiter() {
    forward_auth_through("nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_asks_arbiter() {
    forward_auth_through("caddy").await;
}
