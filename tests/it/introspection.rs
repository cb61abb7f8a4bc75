//! Opaque bearer tokens verified by OAuth 2.0 Token Introspection (RFC 7662)
//! against a real introspection endpoint on 127.0.0.1: active, inactive,
//! cached and shared between concurrent requests, the endpoint down, and
//! the revocation list applied to introspected tokens too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::common::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::json;

const POLICY: &str = r#"
package envoy.authz

default allow := false

allow := {"allowed": true, "headers": {"x-user": input.identity.subject, "x-provider": input.identity.provider}} if {
	"orders:read" in input.identity.scopes
}
"#;

/// An authorization server's introspection endpoint: known tokens, HTTP
/// Basic `arbiter:s3cret`, a call counter, and a switch that makes it fail.
struct AuthorizationServer {
    url: String,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthorizationServer {
    async fn start() -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (counter, failing) = (Arc::clone(&calls), Arc::clone(&down));
        let app = axum::Router::new().route(
            "/introspect",
            post(move |headers: HeaderMap, body: Bytes| {
                let (counter, failing) = (Arc::clone(&counter), Arc::clone(&failing));
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent requests overlap.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    if failing.load(Ordering::SeqCst) {
                        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
                    }
                    let basic = format!(
                        "Basic {}",
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "arbiter:s3cret")
                    );
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
                        .split('&')
                        .filter_map(|p| p.split_once('='))
                        .map(|(k, v)| {
                            let decoded = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                            (k.to_owned(), decoded.into_owned())
                        })
                        .collect();
                    let answer = match form.get("token").map(String::as_str) {
                        Some(t) if t.starts_with("live-") => json!({
                            "active": true, "sub": t.trim_start_matches("live-"), "scope": "orders:read",
                            "aud": "api", "iss": "https://as.test", "exp": now() + 600, "iat": now() - 5,
                            "jti": t,
                        }),
                        Some("wrong-audience") => json!({"active": true, "sub": "x", "scope": "orders:read", "aud": "other"}),
                        // An active answer padded past what Arbiter reads.
                        Some("huge-answer") => json!({
                            "active": true, "sub": "huge", "scope": "orders:read", "aud": "api",
                            "exp": now() + 600, "padding": "x".repeat(2 * 1024 * 1024),
                        }),
                        _ => json!({"active": false}),
                    };
                    (StatusCode::OK, answer.to_string())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            calls,
            down,
            task,
        }
    }
}

impl Drop for AuthorizationServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(server: &AuthorizationServer, revoked: &str) -> (TestArbiter, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("revoked.json"), revoked).unwrap();
    let toml = format!(
        "[identity.revocation]\nfile = \"{}\"\n\
         [[identity.introspection]]\nname = \"as\"\nendpoint = \"{}\"\nclient_id = \"arbiter\"\nclient_secret_file = \"{}\"\naudiences = [\"api\"]\ncache_max = \"1h\"\nnegative_cache = \"1h\"\nfetch_timeout = \"2s\"\n",
        dir.path().join("revoked.json").display(),
        server.url,
        dir.path().join("secret").display()
    );
    (TestArbiter::start(&[("p.rego", POLICY)], &toml).await, dir)
}

async fn ask(arbiter: &TestArbiter, token: &str) -> arbiter::proto::auth::CheckResponse {
    arbiter
        .check_json(&http_request(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_cached_and_fail_closed() {
    let server = AuthorizationServer::start().await;
    let (arbiter, _dir) = start(&server, r#"{"tokens": ["live-mallory"]}"#).await;

    let allowed = ask(&arbiter, "live-alice").await;
    assert!(is_allowed(&allowed), "{allowed:?}");
    let ok = ok_response(&allowed);
    assert_eq!(header_values(&ok.headers, "x-user"), ["alice"]);
    assert_eq!(header_values(&ok.headers, "x-provider"), ["as"]);
    assert_eq!(
        arbiter.bearer_reason("dead-token").await.as_deref(),
        Some("token_inactive")
    );
    assert_eq!(
        arbiter.bearer_reason("wrong-audience").await.as_deref(),
        Some("token_wrong_audience")
    );
    // The revocation list applies to introspected tokens too.
    assert_eq!(
        arbiter.bearer_reason("live-mallory").await.as_deref(),
        Some("token_revoked")
    );

    // 50 concurrent requests with a new token: one call, shared.
    let before = server.calls.load(Ordering::SeqCst);
    let requests = (0..50).map(|_| arbiter.bearer_reason("live-bob"));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(Option::is_none), "{answers:?}");
    let calls = server.calls.load(Ordering::SeqCst) - before;
    assert!(calls <= 2, "{calls} calls for one token");

    // The endpoint down: cached tokens keep passing (until cache_max), new
    // ones are a 503, never an allow.
    server.down.store(true, Ordering::SeqCst);
    assert_eq!(arbiter.bearer_reason("live-alice").await, None);
    let new = ask(&arbiter, "live-carol").await;
    assert!(!is_allowed(&new));
    let denied = denied_response(&new);
    assert_eq!(denied.status.as_ref().unwrap().code, 503);
    assert_eq!(
        header_values(&denied.headers, "x-arbiter-reason"),
        ["introspection_unavailable"]
    );
    let metrics = arbiter.metrics().await;
    assert!(
        metric(&metrics, "arbiter_introspection_calls_total").unwrap() >= 5.0,
        "{metrics}"
    );
    arbiter.running.shutdown().await;
}

/// An endpoint that answers with megabytes is not read to the end: the
/// token is refused as if the endpoint were down, never allowed.
#[tokio::test]
async fn an_introspection_answer_past_the_size_limit_is_refused() {
    let server = AuthorizationServer::start().await;
    let (arbiter, _dir) = start(&server, "{}").await;
    assert_eq!(
        arbiter.bearer_reason("huge-answer").await.as_deref(),
        Some("introspection_unavailable")
    );
    assert_eq!(arbiter.bearer_reason("live-alice").await, None);
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_wrong_client_secret_is_never_an_allow() {
    let server = AuthorizationServer::start().await;
    let (arbiter, dir) = start(&server, "{}").await;
    arbiter.running.shutdown().await;
    std::fs::write(dir.path().join("secret"), "guess").unwrap();
    let toml = format!(
        "[[identity.introspection]]\nname = \"as\"\nendpoint = \"{}\"\nclient_id = \"arbiter\"\nclient_secret_file = \"{}\"\n",
        server.url,
        dir.path().join("secret").display()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    assert_eq!(
        arbiter.bearer_reason("live-alice").await.as_deref(),
        Some("introspection_unavailable")
    );
    arbiter.running.shutdown().await;
}
