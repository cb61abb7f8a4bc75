//! The gRPC API, through a real tonic client against a real server.

use crate::common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const POLICY: &str = r#"
package envoy.authz

import input.attributes.request.http

default allow := {"allowed": false, "http_status": 401, "body": "who are you?", "headers": {"www-authenticate": "Basic"}, "reason": "unknown_user"}

allow := {
  "allowed": true,
  "headers": {"x-user": "alice", "x-roles": ["reader", "writer"]},
  "request_headers_to_remove": ["authorization"],
  "response_headers_to_add": {"x-served-by": "arbiter"},
  "query_parameters_to_set": {"lang": "en"},
  "query_parameters_to_remove": ["debug"],
  "dynamic_metadata": {"user": "alice"},
} if http.headers.authorization == "Basic YWxpY2U6cGFzcw=="

allow := {"allowed": true} if {
  input.parsed_path == ["orders"]
  input.parsed_body.item == "book"
}

allow := {"allowed": true} if input.parsed_query.probe == ["1"]
"#;

#[tokio::test]
async fn allow_carries_every_mutation_the_policy_asked_for() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "").await;
    let response = arbiter
        .check_json(&http_request(
            "GET",
            "/",
            &[("authorization", "Basic YWxpY2U6cGFzcw==")],
            "",
        ))
        .await;
    assert!(is_allowed(&response));
    let ok = ok_response(&response);
    assert_eq!(header_values(&ok.headers, "x-user"), vec!["alice"]);
    assert_eq!(
        header_values(&ok.headers, "x-roles"),
        vec!["reader", "writer"]
    );
    assert_eq!(ok.headers_to_remove, vec!["authorization"]);
    assert_eq!(
        header_values(&ok.response_headers_to_add, "x-served-by"),
        vec!["arbiter"]
    );
    assert_eq!(ok.query_parameters_to_set.len(), 1);
    assert_eq!(ok.query_parameters_to_set[0].key, "lang");
    assert_eq!(ok.query_parameters_to_remove, vec!["debug"]);
    let metadata = response.dynamic_metadata.unwrap();
    assert!(metadata.fields.contains_key("user"));
    assert!(metadata.fields.contains_key("decision_id"));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn deny_carries_status_body_headers_and_reason() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "").await;
    let response = arbiter
        .check_json(&http_request(
            "GET",
            "/",
            &[("authorization", "Basic bWFsbG9yeTp4")],
            "",
        ))
        .await;
    assert!(!is_allowed(&response));
    let denied = denied_response(&response);
    assert_eq!(denied.status.as_ref().unwrap().code, 401);
    assert_eq!(denied.body, "who are you?");
    assert_eq!(
        header_values(&denied.headers, "www-authenticate"),
        vec!["Basic"]
    );
    assert_eq!(
        header_values(&denied.headers, "x-arbiter-reason"),
        vec!["unknown_user"]
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn the_policy_sees_the_parsed_body_and_query() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "").await;
    let json_body = http_request(
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        r#"{"item": "book"}"#,
    );
    assert!(is_allowed(&arbiter.check_json(&json_body).await));
    let other = http_request(
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        r#"{"item": "gun"}"#,
    );
    assert!(!is_allowed(&arbiter.check_json(&other).await));
    assert!(is_allowed(
        &arbiter
            .check_json(&http_request("GET", "/x?probe=1", &[], ""))
            .await
    ));
    arbiter.running.shutdown().await;
}

/// Written the OPA way: it denies a body field it dislikes and allows the
/// rest, so a body that does not parse (`parsed_body: null`) would pass it.
const DENY_LIST_POLICY: &str = r#"
package envoy.authz

default allow := true

allow := false if input.parsed_body.role == "admin"
"#;

#[tokio::test]
async fn a_body_that_does_not_parse_is_denied_400_before_the_policy() {
    let arbiter = TestArbiter::start(&[("p.rego", DENY_LIST_POLICY)], "").await;
    for (content_type, body, why) in [
        (
            "application/json",
            r#"{"role": "admin""#,
            "invalid JSON body",
        ),
        (
            "application/json; charset=utf-8",
            "{not json",
            "invalid JSON body",
        ),
        (
            "application/x-www-form-urlencoded",
            "role=admin&x=%zz",
            r#"invalid form body: invalid URL escape "%zz""#,
        ),
        (
            "application/x-www-form-urlencoded",
            "role=admin;x=1",
            "invalid form body: invalid semicolon separator in query",
        ),
        (
            "multipart/form-data; boundary=B",
            "--B\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nadmin",
            "invalid multipart body",
        ),
    ] {
        let request = http_request("POST", "/users", &[("content-type", content_type)], body);
        let response = arbiter.check_json(&request).await;
        assert!(!is_allowed(&response), "{content_type}: {body}");
        let denied = denied_response(&response);
        assert_eq!(denied.status.as_ref().unwrap().code, 400, "{body}");
        assert_eq!(
            header_values(&denied.headers, "x-arbiter-reason"),
            vec!["request_parse_error"]
        );
        assert!(
            denied
                .body
                .starts_with(&format!("request_parse_error: {why}")),
            "{body}: {}",
            denied.body
        );
    }
    // A body that parses is still the policy's to decide.
    for (body, allowed) in [
        (r#"{"role": "admin"}"#, false),
        (r#"{"role": "dev"}"#, true),
    ] {
        let request = http_request(
            "POST",
            "/users",
            &[("content-type", "application/json")],
            body,
        );
        assert_eq!(
            is_allowed(&arbiter.check_json(&request).await),
            allowed,
            "{body}"
        );
    }
    let metrics = arbiter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "arbiter_decisions_total{result=\"deny\",reason=\"request_parse_error\"}"
        ),
        Some(5.0),
        "{metrics}"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn body_errors_can_be_passed_to_the_policy_instead() {
    let config = "[policy]\nbody_errors = \"pass_to_policy\"";
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], config).await;
    let broken = http_request(
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        "{not json",
    );
    let response = arbiter.check_json(&broken).await;
    assert!(!is_allowed(&response));
    assert_eq!(
        header_values(&denied_response(&response).headers, "x-arbiter-reason"),
        vec!["unknown_user"]
    );
    arbiter.running.shutdown().await;
    // The option does what it says: the deny-list policy now sees
    // `parsed_body: null` and lets the malformed body through.
    let arbiter = TestArbiter::start(&[("p.rego", DENY_LIST_POLICY)], config).await;
    let request = http_request(
        "POST",
        "/users",
        &[("content-type", "application/json")],
        r#"{"role": "admin""#,
    );
    assert!(is_allowed(&arbiter.check_json(&request).await));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn malformed_escapes_in_the_path_and_query_do_not_fail_the_request() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "").await;
    let odd = arbiter
        .check_json(&http_request("GET", "/%zz/%?probe=1", &[], ""))
        .await;
    assert!(
        is_allowed(&odd),
        "a malformed escape in the path must not fail the request"
    );
    // Go's url.ParseQuery drops the pair with the bad escape and keeps the rest.
    let dropped = arbiter
        .check_json(&http_request("GET", "/x?probe=%zz1", &[], ""))
        .await;
    assert!(!is_allowed(&dropped));
    let kept = arbiter
        .check_json(&http_request("GET", "/x?bad=%&probe=1&worse=%g1", &[], ""))
        .await;
    assert!(is_allowed(&kept));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn an_empty_check_request_is_denied() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "").await;
    let response = arbiter.check_json("{}").await;
    assert!(!is_allowed(&response));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn policy_errors_fail_closed_with_a_reason() {
    let policy = r#"
package envoy.authz
allow := input.attributes.request.http.headers["x-result"]
allow := true if input.attributes.request.http.headers["x-conflict"]
allow := false if input.attributes.request.http.headers["x-conflict"]
allow := true if {
  input.attributes.request.http.headers["x-slow"]
  count([x | some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); x := i + j]) < 0
}
"#;
    let arbiter =
        TestArbiter::start(&[("p.rego", policy)], "[policy]\neval_timeout = \"20ms\"").await;
    for (headers, reason) in [
        (vec![], "policy_undefined"),
        (vec![("x-result", "yes")], "invalid_result"),
        (vec![("x-conflict", "1")], "policy_error"),
        (vec![("x-slow", "1")], "policy_timeout"),
    ] {
        let response = arbiter
            .check_json(&http_request("GET", "/", &headers, ""))
            .await;
        assert!(!is_allowed(&response), "{headers:?}");
        let denied = denied_response(&response);
        assert_eq!(denied.status.as_ref().unwrap().code, 403);
        assert_eq!(
            header_values(&denied.headers, "x-arbiter-reason"),
            vec![reason],
            "{headers:?}"
        );
    }
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn dry_run_allows_what_the_policy_denies() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "[decision]\ndry_run = true").await;
    let response = arbiter.check_json(&http_request("GET", "/", &[], "")).await;
    assert!(is_allowed(&response));
    let metrics = arbiter.metrics().await;
    assert!(
        metrics.contains("arbiter_decisions_total{result=\"allow\",reason=\"unknown_user\"} 1"),
        "{metrics}"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn health_service_and_admin_endpoints() {
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], "").await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", arbiter.running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let admin = format!("http://{}", arbiter.running.admin_addr);
    assert_eq!(
        reqwest::get(format!("{admin}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(ready["ready"], true);

    arbiter.check_json(&http_request("GET", "/", &[], "")).await;
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("arbiter_decisions_total{result=\"deny\",reason=\"unknown_user\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("arbiter_decision_duration_seconds_count 1"));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let arbiter =
        TestArbiter::start(&[("p.rego", POLICY)], "[server]\nmax_request_bytes = 2048").await;
    let big = "x".repeat(4096);
    let request: arbiter::proto::auth::CheckRequest =
        serde_json::from_str(&http_request("POST", "/", &[], &big)).unwrap();
    let result = arbiter.client().await.check(request).await;
    let status = result.expect_err("an oversized request must not be decided");
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_broken_policy_stops_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/bad.rego"),
        "package envoy.authz\n\nallow if {\n  input.x ==\n}\n",
    )
    .unwrap();
    let config = arbiter::Config::from_toml(
        &test_config_toml(""),
        std::path::Path::new("t.toml"),
        dir.path(),
    )
    .unwrap();
    let err = arbiter::start(&config)
        .await
        .err()
        .expect("start must fail");
    let text = err.to_string();
    assert!(text.contains("bad.rego:5"), "{text}");
}

/// A deny-list keyed by a header: without the header the assignment is
/// undefined and the body fails (OPA's answer). regorus 0.14's bytecode VM
/// bound the undefined value and allowed; the VM now gets the assignment
/// guarded, and this runs on the VM.
#[tokio::test]
async fn a_deny_list_keyed_by_a_missing_header_denies_on_the_vm() {
    const DENY_LIST: &str = r#"
package envoy.authz

blocked := {"mallory": true}

default allow := false

allow if {
	client := input.attributes.request.http.headers["x-client"]
	not blocked[client]
}
"#;
    let arbiter = TestArbiter::start(&[("p.rego", DENY_LIST)], "").await;
    for (headers, allowed) in [
        (vec![], false),
        (vec![("x-client", "mallory")], false),
        (vec![("x-client", "alice")], true),
    ] {
        let response = arbiter
            .check_json(&http_request("GET", "/", &headers, ""))
            .await;
        assert_eq!(is_allowed(&response), allowed, "{headers:?}");
    }
    let metrics = arbiter.metrics().await;
    assert_eq!(
        metric(&metrics, "arbiter_policy_engine{engine=\"rvm\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "arbiter_rvm_mismatches_total"), Some(0.0));
    arbiter.running.shutdown().await;
}
