//! Policies in the style of OPA's Envoy plugin documentation, in v0 and v1
//! syntax, with boolean and object results, decided by Arbiter as OPA
//! decides them. Each runs through a real gRPC client and server.

use crate::common::*;

/// The documented shape of an Envoy request as OPA sees it (Basic auth for alice).
fn documented_request(method: &str, path: &str, authorization: &str) -> String {
    serde_json::json!({
      "attributes": {
        "source": {"address": {"socketAddress": {"address": "172.17.0.10", "portValue": 36472}}},
        "destination": {"address": {"socketAddress": {"address": "172.17.0.17", "portValue": 9080}}},
        "request": {"http": {
          "id": "13359530607844510314",
          "method": method,
          "headers": {
            ":authority": "192.168.99.100:31380", ":method": method, ":path": path,
            "accept": "*/*", "authorization": authorization,
            "user-agent": "curl/7.54.0", "x-forwarded-proto": "http",
            "x-request-id": "3f5c7e6e-0c7e-4f1e-9bb1-123456789abc"
          },
          "path": path, "host": "192.168.99.100:31380", "protocol": "HTTP/1.1"
        }}
      }
    })
    .to_string()
}

const ALICE: &str = "Basic YWxpY2U6cGFzc3dvcmQ="; // alice:password
const BOB: &str = "Basic Ym9iOnBhc3N3b3Jk"; // bob:password

const V0_BASIC_AUTH: &str = include_str!("opa/v0_basic_auth.rego");

const V1_BASIC_AUTH: &str = include_str!("opa/v1_basic_auth.rego");

const ROLES_DATA: &str = include_str!("opa/roles.json");

/// (method, path, authorization, allowed) for both Basic-auth policies.
const BASIC_AUTH_CASES: [(&str, &str, &str, bool); 5] = [
    ("GET", "/productpage", ALICE, true),
    ("GET", "/api/v1/products", ALICE, false),
    ("GET", "/api/v1/products", BOB, true),
    ("DELETE", "/api/v1/products", BOB, false),
    ("GET", "/productpage", "Bearer nonsense", false),
];

#[tokio::test]
async fn v0_boolean_policy() {
    let arbiter = TestArbiter::start(
        &[("policy.rego", V0_BASIC_AUTH)],
        "[policy]\nrego_version = \"v0\"",
    )
    .await;
    for (method, path, auth, want) in BASIC_AUTH_CASES {
        let response = arbiter
            .check_json(&documented_request(method, path, auth))
            .await;
        assert_eq!(is_allowed(&response), want, "{method} {path} {auth}");
        if !want {
            // A boolean false carries no policy headers, body or status beyond the default.
            let denied = denied_response(&response);
            assert_eq!(denied.status.as_ref().unwrap().code, 403);
            assert!(denied.body.is_empty());
        }
    }
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn v1_boolean_policy_with_data_document() {
    let arbiter = TestArbiter::start(
        &[("policy.rego", V1_BASIC_AUTH), ("data.json", ROLES_DATA)],
        "",
    )
    .await;
    for (method, path, auth, want) in BASIC_AUTH_CASES {
        let response = arbiter
            .check_json(&documented_request(method, path, auth))
            .await;
        assert_eq!(is_allowed(&response), want, "{method} {path} {auth}");
    }
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn v0_policy_is_rejected_without_the_v0_setting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/policy.rego"), V0_BASIC_AUTH).unwrap();
    let config = arbiter::Config::from_toml(
        &test_config_toml(""),
        std::path::Path::new("t.toml"),
        dir.path(),
    )
    .unwrap();
    let err = arbiter::start(&config)
        .await
        .err()
        .expect("v0 syntax needs rego_version = \"v0\"");
    assert!(err.to_string().contains("policy.rego:"), "{err}");
}

/// The plugin's documented object result: headers, removal, status and body,
/// read from a decision path other than the default.
const V1_OBJECT_RESULT: &str = include_str!("opa/v1_object_result.rego");

#[tokio::test]
async fn object_result_at_a_custom_decision_path() {
    let arbiter = TestArbiter::start(
        &[("policy.rego", V1_OBJECT_RESULT)],
        "[policy]\ndecision = \"envoy/authz/result\"",
    )
    .await;

    let response = arbiter
        .check_json(&documented_request("GET", "/health", ALICE))
        .await;
    assert!(is_allowed(&response));
    let ok = ok_response(&response);
    assert_eq!(header_values(&ok.headers, "x-ext-auth-allow"), vec!["yes"]);
    assert_eq!(
        header_values(&ok.headers, "x-validated-by"),
        vec!["security-checkpoint"]
    );
    assert_eq!(
        ok.headers_to_remove,
        vec!["one-auth-header", "another-auth-header"]
    );
    assert_eq!(
        header_values(&ok.response_headers_to_add, "x-foo"),
        vec!["bar"]
    );

    let response = arbiter
        .check_json(&documented_request(
            "GET",
            "/api/v1/products?lang=en",
            ALICE,
        ))
        .await;
    assert!(is_allowed(&response));
    let response = arbiter
        .check_json(&documented_request(
            "GET",
            "/api/v1/products?lang=fr",
            ALICE,
        ))
        .await;
    assert!(!is_allowed(&response));

    let response = arbiter
        .check_json(&documented_request("POST", "/health", ALICE))
        .await;
    let denied = denied_response(&response);
    assert_eq!(denied.status.as_ref().unwrap().code, 403);
    assert_eq!(denied.body, "Unauthorized Request");
    assert_eq!(
        header_values(&denied.headers, "x-ext-auth-allow"),
        vec!["yes"]
    );

    let mut anonymous: serde_json::Value =
        serde_json::from_str(&documented_request("POST", "/health", "")).unwrap();
    anonymous["attributes"]["request"]["http"]["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let response = arbiter.check_json(&anonymous.to_string()).await;
    let denied = denied_response(&response);
    assert_eq!(denied.status.as_ref().unwrap().code, 401);
    assert_eq!(denied.body, "Authentication Failed");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn v0_object_result_and_parsed_body() {
    let policy = r#"
package envoy.authz

default allow = {"allowed": false, "http_status": 400, "body": "bad request"}

allow = response {
    input.attributes.request.http.method == "POST"
    input.parsed_body.firstname == "Charlie"
    not input.truncated_body
    response := {
        "allowed": true,
        "headers": {"x-firstname": input.parsed_body.firstname},
    }
}
"#;
    let arbiter = TestArbiter::start(
        &[("policy.rego", policy)],
        "[policy]\nrego_version = \"v0\"",
    )
    .await;
    let charlie = http_request(
        "POST",
        "/people",
        &[("content-type", "application/json")],
        r#"{"firstname": "Charlie", "lastname": "Opa"}"#,
    );
    let response = arbiter.check_json(&charlie).await;
    assert!(is_allowed(&response));
    assert_eq!(
        header_values(&ok_response(&response).headers, "x-firstname"),
        vec!["Charlie"]
    );

    let truncated = http_request(
        "POST",
        "/people",
        &[
            ("content-type", "application/json"),
            ("content-length", "500"),
        ],
        r#"{"firstname": "Charlie"}"#,
    );
    let response = arbiter.check_json(&truncated).await;
    let denied = denied_response(&response);
    assert_eq!(denied.status.as_ref().unwrap().code, 400);
    assert_eq!(denied.body, "bad request");

    let form = http_request(
        "POST",
        "/people",
        &[("content-type", "application/x-www-form-urlencoded")],
        "firstname=Charlie",
    );
    assert!(
        !is_allowed(&arbiter.check_json(&form).await),
        "form values are arrays, as in OPA"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn the_input_document_matches_the_plugin_field_for_field() {
    // A policy that hands the whole input back as dynamic metadata shows
    // exactly what the policy saw.
    let policy = r#"
package envoy.authz
allow := {"allowed": true, "dynamic_metadata": {"input": input}}
"#;
    let arbiter = TestArbiter::start(&[("policy.rego", policy)], "").await;
    let response = arbiter
        .check_json(&documented_request(
            "GET",
            "/api/v1/products?lang=en&lang=de&q=a+b",
            ALICE,
        ))
        .await;
    let metadata = serde_json::to_value(response.dynamic_metadata.unwrap()).unwrap();
    let input = &metadata["input"];
    assert_eq!(
        input["parsed_path"],
        serde_json::json!(["api", "v1", "products"])
    );
    assert_eq!(
        input["parsed_query"],
        serde_json::json!({"lang": ["en", "de"], "q": ["a b"]})
    );
    assert_eq!(input["parsed_body"], serde_json::Value::Null);
    assert_eq!(input["truncated_body"], false);
    assert_eq!(
        input["version"],
        serde_json::json!({"ext_authz": "v3", "encoding": "protojson"})
    );
    assert_eq!(
        input["attributes"]["source"]["address"]["socketAddress"]["address"],
        "172.17.0.10"
    );
    assert_eq!(
        input["attributes"]["source"]["address"]["socketAddress"]["portValue"],
        36472.0
    );
    assert_eq!(
        input["attributes"]["request"]["http"]["headers"][":authority"],
        "192.168.99.100:31380"
    );
    assert_eq!(
        input["attributes"]["request"]["http"]["id"],
        "13359530607844510314"
    );
    assert!(
        input["attributes"]["request"]["http"].get("size").is_none(),
        "empty fields are left out"
    );
    arbiter.running.shutdown().await;
}

/// The OPA Envoy tutorial's policy: HS256 tokens verified in Rego with
/// `io.jwt.decode_verify`, roles from claims, the body checked on POST.
const V0_JWT_TUTORIAL: &str = include_str!("opa/v0_jwt_tutorial.rego");

#[tokio::test]
async fn jwt_tutorial_policy_verifies_tokens_in_rego() {
    let arbiter = TestArbiter::start(
        &[("policy.rego", V0_JWT_TUTORIAL)],
        "[policy]\nrego_version = \"v0\"",
    )
    .await;
    // sub is base64url("alice") in the tutorial's tokens.
    let guest = hs256("secret", "guest", "YWxpY2U", 3600);
    let admin = hs256("secret", "admin", "Ym9i", 3600);
    let forged = hs256("not-the-secret", "admin", "Ym9i", 3600);
    let expired = hs256("secret", "guest", "YWxpY2U", -10);
    let request = |method: &str, path: &str, token: &str, body: &str| {
        http_request(
            method,
            path,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            body,
        )
    };
    let cases = [
        (request("GET", "/people", &guest, ""), true),
        (
            request("POST", "/people", &guest, r#"{"firstname": "Charlie"}"#),
            false,
        ),
        (
            request("POST", "/people", &admin, r#"{"firstname": "Charlie"}"#),
            true,
        ),
        (
            request("POST", "/people", &admin, r#"{"firstname": "Bob"}"#),
            false,
        ),
        (request("GET", "/people", &forged, ""), false),
        (request("GET", "/people", &expired, ""), false),
        (request("GET", "/people", "not-a-jwt", ""), false),
    ];
    for (i, (req, want)) in cases.iter().enumerate() {
        assert_eq!(
            is_allowed(&arbiter.check_json(req).await),
            *want,
            "case {i}"
        );
    }
    arbiter.running.shutdown().await;
}

/// What OPA's Envoy plugin 1.x makes of awkward requests, each answer as
/// OPA 1.x gives it: a query pair with a bad escape dropped (Go's
/// `url.ParseQuery`), a body of a supported type that does not parse
/// denied with 400 `request_parse_error` before the policy, and an
/// IPv4-mapped IPv6 address inside its IPv4 network.
#[tokio::test]
async fn requests_are_parsed_as_opa_1x_parses_them() {
    const POLICY: &str = r#"
package envoy.authz

import input.attributes.request.http

default allow := false

allow if input.parsed_query == {"ok": ["1"]}

allow if {
	http.method == "POST"
	input.parsed_body.role != "admin"
}

allow if net.cidr_contains("10.0.0.0/8", http.headers["x-client-ip"])
"#;
    let arbiter = TestArbiter::start(&[("policy.rego", POLICY)], "").await;
    let json = [("content-type", "application/json")];
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for (method, path, headers, body, want) in [
        ("GET", "/x?q=%zz&ok=1", &[][..], "", Ok(())),
        ("GET", "/x?ok=1&q=%", &[], "", Ok(())),
        ("GET", "/x?q=%zz", &[], "", Err(403)),
        ("GET", "/x?ok=1;q=2", &[], "", Err(403)),
        ("POST", "/x", &json, r#"{"role": "dev"}"#, Ok(())),
        ("POST", "/x", &json, r#"{"role": "admin"}"#, Err(403)),
        ("POST", "/x", &json, r#"{"role": "admin""#, Err(400)),
        ("POST", "/x", &form, "role=dev", Ok(())),
        ("POST", "/x", &form, "role=admin&note=100%", Err(400)),
        (
            "GET",
            "/x",
            &[("x-client-ip", "::ffff:10.1.2.3")],
            "",
            Ok(()),
        ),
        ("GET", "/x", &[("x-client-ip", "10.1.2.3")], "", Ok(())),
        (
            "GET",
            "/x",
            &[("x-client-ip", "::ffff:11.1.2.3")],
            "",
            Err(403),
        ),
    ] {
        let response = arbiter
            .check_json(&http_request(method, path, headers, body))
            .await;
        let got = if is_allowed(&response) {
            Ok(())
        } else {
            let denied = denied_response(&response);
            if denied.status.as_ref().unwrap().code == 400 {
                assert!(
                    denied.body.starts_with("request_parse_error: "),
                    "{}",
                    denied.body
                );
            }
            Err(denied.status.as_ref().unwrap().code)
        };
        assert_eq!(got, want, "{method} {path} {headers:?} {body}");
    }
    arbiter.running.shutdown().await;
}
