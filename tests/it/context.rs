//! Context through the gRPC API: the client address believed only through
//! trusted proxies, SPIFFE principals (also from a peer certificate), and
//! device posture that a client cannot forge.

use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use jsonwebtoken::Algorithm;
use serde_json::json;

/// Hands the parts of the input this test is about back as dynamic metadata.
const ECHO_POLICY: &str = r#"
package envoy.authz
allow := {"allowed": true, "dynamic_metadata": {"source": input.source, "destination": input.destination, "device": input.device}}
"#;

fn request(peer: &str, headers: &[(&str, &str)], principal: &str, certificate: &str) -> String {
    let mut header_map = serde_json::Map::new();
    header_map.insert(":method".into(), "GET".into());
    header_map.insert(":path".into(), "/".into());
    for (k, v) in headers {
        header_map.insert((*k).into(), (*v).into());
    }
    json!({
        "attributes": {
            "source": {
                "address": {"socketAddress": {"address": peer, "portValue": 40000}},
                "principal": principal, "certificate": certificate
            },
            "destination": {
                "address": {"socketAddress": {"address": "10.9.9.9", "portValue": 8080}},
                "principal": "spiffe://cluster.local/ns/shop/sa/orders"
            },
            "request": {"http": {"method": "GET", "path": "/", "headers": header_map}}
        }
    })
    .to_string()
}

async fn seen(arbiter: &TestArbiter, json: &str) -> serde_json::Value {
    let response = arbiter.check_json(json).await;
    assert!(is_allowed(&response));
    serde_json::to_value(response.dynamic_metadata.unwrap()).unwrap()
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_through_trusted_proxies() {
    let arbiter = TestArbiter::start(
        &[("p.rego", ECHO_POLICY)],
        "[context]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]",
    )
    .await;
    let cases = [
        // (peer, X-Forwarded-For, client address Arbiter must believe)
        ("203.0.113.9", Some("10.0.0.1"), "203.0.113.9"),
        ("203.0.113.9", Some("127.0.0.1, 10.1.1.1"), "203.0.113.9"),
        ("10.0.0.2", Some("198.51.100.7"), "198.51.100.7"),
        (
            "10.0.0.2",
            Some("6.6.6.6, 198.51.100.7, 10.0.0.3"),
            "198.51.100.7",
        ),
        ("10.0.0.2", Some("garbage"), "10.0.0.2"),
        ("10.0.0.2", Some("1.2.3.4, 999.1.1.1"), "10.0.0.2"),
        ("10.0.0.2", Some("%00, \u{7f}"), "10.0.0.2"),
        ("::ffff:10.0.0.2", Some("2001:db8::1"), "2001:db8::1"),
        ("fd00::5", Some("[2001:db8::9]:4711"), "2001:db8::9"),
        ("10.0.0.2", None, "10.0.0.2"),
        // What does not parse ends the walk: an empty entry (a trailing or
        // doubled comma) is not skipped to believe what the client wrote.
        ("10.0.0.2", Some("6.6.6.6,"), "10.0.0.2"),
        ("10.0.0.2", Some("6.6.6.6,, 10.0.0.3"), "10.0.0.3"),
        ("10.0.0.2", Some("6.6.6.6, _hidden, 10.0.0.3"), "10.0.0.3"),
    ];
    for (peer, xff, want) in cases {
        let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        let meta = seen(&arbiter, &request(peer, &headers, "", "")).await;
        assert_eq!(meta["source"]["ip"], want, "peer {peer}, xff {xff:?}");
        assert!(
            meta["source"]["address"]
                .as_str()
                .unwrap()
                .parse::<std::net::IpAddr>()
                .is_ok()
        );
    }
    let meta = seen(
        &arbiter,
        &request(
            "10.0.0.2",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")],
            "",
            "",
        ),
    )
    .await;
    assert_eq!(
        meta["source"]["forwarded_for"],
        json!(["6.6.6.6", "198.51.100.7"])
    );
    assert_eq!(meta["source"]["trusted_hops"], 1.0);
    // A malformed peer address never becomes a client address.
    let meta = seen(
        &arbiter,
        &request("not-an-ip", &[("x-forwarded-for", "10.0.0.1")], "", ""),
    )
    .await;
    assert_eq!(meta["source"]["ip"], serde_json::Value::Null);
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn spiffe_principals_are_parsed_and_judged_by_trust_domain() {
    let arbiter = TestArbiter::start(&[("p.rego", ECHO_POLICY)], "").await;
    let meta = seen(
        &arbiter,
        &request(
            "10.0.0.1",
            &[],
            "spiffe://cluster.local/ns/prod/sa/orders",
            "",
        ),
    )
    .await;
    assert_eq!(
        meta["source"]["principal"],
        json!({"id": "spiffe://cluster.local/ns/prod/sa/orders", "spiffe": true, "trusted": true,
               "trust_domain": "cluster.local", "path": "/ns/prod/sa/orders", "namespace": "prod", "service_account": "orders"})
    );
    assert_eq!(
        meta["destination"]["principal"]["service_account"],
        "orders"
    );
    let meta = seen(
        &arbiter,
        &request(
            "10.0.0.1",
            &[],
            "spiffe://evil.example/ns/prod/sa/orders",
            "",
        ),
    )
    .await;
    assert_eq!(meta["source"]["principal"]["trusted"], false);
    let meta = seen(&arbiter, &request("10.0.0.1", &[], "CN=legacy", "")).await;
    assert_eq!(
        meta["source"]["principal"],
        json!({"id": "CN=legacy", "spiffe": false, "trusted": false})
    );
    let meta = seen(&arbiter, &request("10.0.0.1", &[], "", "")).await;
    assert_eq!(meta["source"]["principal"], serde_json::Value::Null);
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn the_uri_san_of_a_peer_certificate_is_the_principal() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/pay/sa/billing"
            .try_into()
            .unwrap(),
    )];
    let pem = params.self_signed(&key).unwrap().pem();
    let encoded =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let arbiter = TestArbiter::start(&[("p.rego", ECHO_POLICY)], "").await;
    let meta = seen(&arbiter, &request("10.0.0.1", &[], "", &encoded)).await;
    assert_eq!(meta["source"]["principal"]["namespace"], "pay");
    assert_eq!(meta["source"]["principal"]["service_account"], "billing");
    let meta = seen(
        &arbiter,
        &request("10.0.0.1", &[], "", "not%20a%20certificate"),
    )
    .await;
    assert_eq!(meta["source"]["principal"], serde_json::Value::Null);
    arbiter.running.shutdown().await;
}

struct DeviceSetup {
    arbiter: TestArbiter,
    user_key: TestKey,
    device_key: TestKey,
}

async fn device_setup(policy: &str, extra: &str) -> DeviceSetup {
    let user_key = TestKey::generate("u", Algorithm::RS256).unwrap();
    let device_key = TestKey::generate("d", Algorithm::ES256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.json");
    let devices = dir.path().join("devices.json");
    std::fs::write(&users, jwks(&[&user_key]).to_string()).unwrap();
    std::fs::write(&devices, jwks(&[&device_key]).to_string()).unwrap();
    let toml = format!(
        "[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_file = \"{}\"\n\
         [device]\nheader = \"x-device-posture\"\nmax_age = \"1h\"\ninventory = \"devices\"\n{extra}\n\
         [device.jwt]\nname = \"mdm\"\nissuer = \"https://mdm.test\"\naudiences = [\"arbiter\"]\njwks_file = \"{}\"\nalgorithms = [\"ES256\"]\n",
        users.display(),
        devices.display()
    );
    let data = r#"{"devices": {"laptop-42": {"asset_tag": "A-1042", "owner": "alice"}},
        "arbiter": {"revocation": {"tokens": ["revoked-posture"]}}}"#;
    let arbiter = TestArbiter::start(&[("p.rego", policy), ("data.json", data)], &toml).await;
    std::mem::forget(dir);
    DeviceSetup {
        arbiter,
        user_key,
        device_key,
    }
}

fn user_token(key: &TestKey, sub: &str) -> String {
    key.sign(&json!({"iss": "https://idp.test", "aud": "api", "sub": sub, "iat": now(), "exp": now() + 600}))
        .unwrap()
}

fn posture(key: &TestKey, patch: serde_json::Value) -> String {
    let mut claims = json!({
        "iss": "https://mdm.test", "aud": "arbiter", "sub": "laptop-42", "user": "alice",
        "compliant": true, "managed": true, "encrypted": true, "os": "macOS", "os_version": "15.1",
        "patched": true, "risk": "low", "iat": now() - 30, "exp": now() + 600
    });
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    key.sign(&claims).unwrap()
}

async fn device_seen(s: &DeviceSetup, headers: &[(&str, &str)]) -> serde_json::Value {
    seen(&s.arbiter, &request("10.0.0.1", headers, "", "")).await["device"].clone()
}

#[tokio::test]
async fn verified_device_posture_bound_to_the_user() {
    let s = device_setup(ECHO_POLICY, "").await;
    let alice = format!("Bearer {}", user_token(&s.user_key, "alice"));
    let bob = format!("Bearer {}", user_token(&s.user_key, "bob"));
    let good = posture(&s.device_key, json!({}));

    let device = device_seen(
        &s,
        &[("authorization", &alice), ("x-device-posture", &good)],
    )
    .await;
    assert_eq!(device["verified"], true);
    assert_eq!(device["id"], "laptop-42");
    assert_eq!(device["compliant"], true);
    assert_eq!(device["os_version"], "15.1");
    assert_eq!(device["risk"], "low");
    assert!(device["age_seconds"].as_f64().unwrap() >= 30.0);
    assert_eq!(device["inventory"]["asset_tag"], "A-1042");
    assert_eq!(device["claims"]["managed"], true);

    // Alice's device presented by Bob, or with no verified user: not verified.
    let device = device_seen(&s, &[("authorization", &bob), ("x-device-posture", &good)]).await;
    assert_eq!(device["verified"], false);
    assert_eq!(device["error"], "device_user_mismatch");
    let device = device_seen(&s, &[("x-device-posture", &good)]).await;
    assert_eq!(device["verified"], false);
    assert_eq!(device["error"], "device_user_mismatch");

    // A posture token that names no user is bound to nobody: by default it
    // vouches for no caller, neither a verified one nor an anonymous one.
    let unbound = posture(&s.device_key, json!({"user": null}));
    for headers in [
        vec![("x-device-posture", unbound.as_str())],
        vec![
            ("authorization", alice.as_str()),
            ("x-device-posture", unbound.as_str()),
        ],
    ] {
        let device = device_seen(&s, &headers).await;
        assert_eq!(device["verified"], false, "{headers:?}");
        assert_eq!(device["error"], "posture_not_bound");
        assert_eq!(device["compliant"], true, "claims are shown, not believed");
    }

    // Missing: null.
    let device = device_seen(&s, &[("authorization", &alice)]).await;
    assert_eq!(device, serde_json::Value::Null);

    // A posture token that the revocation list in the policy data names.
    let revoked = posture(&s.device_key, json!({"jti": "revoked-posture"}));
    let device = device_seen(
        &s,
        &[("authorization", &alice), ("x-device-posture", &revoked)],
    )
    .await;
    assert_eq!(device["verified"], false, "{device}");
    assert_eq!(device["error"], "token_revoked");
    s.arbiter.running.shutdown().await;
}

#[tokio::test]
async fn unbound_posture_is_verified_only_when_binding_is_optional() {
    let s = device_setup(ECHO_POLICY, "binding = \"optional\"").await;
    let alice = format!("Bearer {}", user_token(&s.user_key, "alice"));
    let bob = format!("Bearer {}", user_token(&s.user_key, "bob"));
    let unbound = posture(&s.device_key, json!({"user": null}));
    let device = device_seen(&s, &[("x-device-posture", &unbound)]).await;
    assert_eq!(device["verified"], true);
    assert_eq!(device.get("error"), None);
    // A token that names a user is still bound to that user.
    let alices = posture(&s.device_key, json!({}));
    let device = device_seen(
        &s,
        &[("authorization", &bob), ("x-device-posture", &alices)],
    )
    .await;
    assert_eq!(device["verified"], false);
    assert_eq!(device["error"], "device_user_mismatch");
    let device = device_seen(
        &s,
        &[("authorization", &alice), ("x-device-posture", &alices)],
    )
    .await;
    assert_eq!(device["verified"], true);
    s.arbiter.running.shutdown().await;
}

#[tokio::test]
async fn forged_expired_stale_and_misplaced_posture_is_refused() {
    let s = device_setup(ECHO_POLICY, "").await;
    let alice = format!("Bearer {}", user_token(&s.user_key, "alice"));
    let forger = TestKey::generate("d", Algorithm::ES256).unwrap();
    let cases = [
        (
            "forged",
            posture(&forger, json!({})),
            "token_signature_invalid",
        ),
        (
            "expired",
            posture(&s.device_key, json!({"exp": now() - 120})),
            "token_expired",
        ),
        (
            "stale",
            posture(
                &s.device_key,
                json!({"iat": now() - 7200, "exp": now() + 600}),
            ),
            "device_posture_stale",
        ),
        (
            "wrong audience",
            posture(&s.device_key, json!({"aud": "other"})),
            "token_wrong_audience",
        ),
        (
            "a user token in the posture header",
            user_token(&s.user_key, "alice"),
            "token_unknown_issuer",
        ),
        ("garbage", "compliant".to_owned(), "token_malformed"),
    ];
    for (name, token, want) in cases {
        let device = device_seen(
            &s,
            &[("authorization", &alice), ("x-device-posture", &token)],
        )
        .await;
        assert_eq!(device["verified"], false, "{name}: {device}");
        assert_eq!(device["error"], want, "{name}");
        assert!(
            device.get("compliant").is_none(),
            "{name}: an unverified token's claims must not reach the policy"
        );
    }
    // A compliance header from the client is ignored unless a trusted edge is configured.
    let device = device_seen(
        &s,
        &[
            ("authorization", &alice),
            ("x-device-compliance", "compliant"),
        ],
    )
    .await;
    assert_eq!(device, serde_json::Value::Null);
    s.arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_trusted_edge_header_is_used_only_when_configured_and_never_verified() {
    let s = device_setup(ECHO_POLICY, "trusted_edge_header = \"x-device-compliance\"").await;
    let device = device_seen(&s, &[("x-device-compliance", "compliant")]).await;
    assert_eq!(
        device,
        json!({"id": null, "verified": false, "compliant": true, "source": "edge_header"})
    );
    // A posture token, when present, takes precedence over the header.
    let alice = format!("Bearer {}", user_token(&s.user_key, "alice"));
    let good = posture(&s.device_key, json!({}));
    let device = device_seen(
        &s,
        &[
            ("authorization", &alice),
            ("x-device-compliance", "noncompliant"),
            ("x-device-posture", &good),
        ],
    )
    .await;
    assert_eq!(device["verified"], true);
    assert_eq!(device["compliant"], true);
    assert_eq!(device.get("source"), None);
    s.arbiter.running.shutdown().await;
}
