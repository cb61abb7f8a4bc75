//! Every fixture and Rego unit test under `policies/`, run by `cargo test`
//! through the same runner as `arbiter test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use arbiter::Config;

fn config_for(paths: Vec<PathBuf>) -> Config {
    let mut config = Config::default();
    config.policy.paths = paths;
    config
}

#[tokio::test]
async fn every_policy_in_policies_passes_its_fixtures_and_tests() {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let report = arbiter::fixtures::run(&config_for(vec![policies]))
        .await
        .unwrap();
    println!("{}", report.render());
    assert!(
        report.fixtures.len() >= 30,
        "the policy library's fixtures were not found"
    );
    assert!(
        !report.rego_tests.is_empty(),
        "the Rego unit tests were not found"
    );
    assert_eq!(report.failed(), 0, "{}", report.render());
}

const POLICY: &str = "package envoy.authz\ndefault allow := false\nallow if input.attributes.request.http.method == \"GET\"\n";

fn broken_suite() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("p.fixtures.yaml"),
        "cases:\n  - name: get is allowed\n    request: {method: GET, path: /x}\n    expect: {allowed: true}\n  - name: deliberately wrong\n    request: {method: POST, path: /orders}\n    expect: {allowed: true, status: 200}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package p_test\nimport data.envoy.authz\ntest_get if authz.allow with input as {\"attributes\": {\"request\": {\"http\": {\"method\": \"GET\"}}}}\ntest_wrong if authz.allow with input as {}\n",
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn a_broken_fixture_fails_with_a_readable_diff() {
    let dir = broken_suite();
    let report = arbiter::fixtures::run(&config_for(vec![dir.path().to_owned()]))
        .await
        .unwrap();
    assert_eq!(report.failed(), 2, "{}", report.render());
    let text = report.render();
    assert!(
        text.contains("FAIL: ") && text.contains("deliberately wrong"),
        "{text}"
    );
    assert!(text.contains("expected allow, got deny"), "{text}");
    assert!(
        text.contains("\"parsed_path\""),
        "the input document is shown: {text}"
    );
    assert!(text.contains("FAIL: data.p_test.test_wrong"), "{text}");
    assert!(text.contains("Rego tests: PASS 1/2"), "{text}");
    assert!(text.contains("2 passed, 2 failed"), "{text}");
}

#[test]
fn arbiter_test_exits_non_zero_on_failure_and_zero_on_success() {
    let binary = env!("CARGO_BIN_EXE_arbiter");
    let dir = broken_suite();
    let failing = Command::new(binary)
        .arg("test")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!failing.status.success());
    assert!(String::from_utf8_lossy(&failing.stdout).contains("expected allow, got deny"));

    std::fs::remove_file(dir.path().join("p_test.rego")).unwrap();
    std::fs::write(
        dir.path().join("p.fixtures.yaml"),
        "cases:\n  - name: post is denied\n    request: {method: POST, path: /orders}\n    expect: {allowed: false, status: 403, reason: policy_denied}\n",
    )
    .unwrap();
    let passing = Command::new(binary)
        .arg("test")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        passing.status.success(),
        "{}",
        String::from_utf8_lossy(&passing.stdout)
    );
}

#[test]
fn arbiter_check_names_file_line_and_warns_about_http_send() {
    let binary = env!("CARGO_BIN_EXE_arbiter");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.rego"),
        "package envoy.authz\n\nallow if {\n  input.x ==\n}\n",
    )
    .unwrap();
    let out = Command::new(binary)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.rego:5:1"), "{stderr}");

    std::fs::write(
        dir.path().join("bad.rego"),
        "package envoy.authz\n\nallow if {\n  r := http.send({\"method\": \"get\", \"url\": \"https://idp/keys\"})\n  r.status_code == 200\n}\n",
    )
    .unwrap();
    let out = Command::new(binary)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bad.rego:4:8: http.send sends nothing"),
        "{stderr}"
    );
}

/// A negation over a rule used as a key decides differently on regorus and
/// on OPA when the rule is undefined (OPA's body fails, regorus's `not`
/// succeeds): `arbiter check` says where, and the policy still loads.
#[test]
fn arbiter_check_warns_where_regorus_and_opa_differ() {
    let binary = env!("CARGO_BIN_EXE_arbiter");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bypass.rego"),
        "package envoy.authz\n\nclient := input.attributes.request.http.headers[\"x-client\"]\n\nbypass := {\"svc-a\": true}\n\ndefault allow := false\n\nallow if not bypass[client]\n\nallow if {\n\tinput.attributes.request.http.method == \"PUT\"\n\tcrypto.sha256(client) == \"00\"\n}\n",
    )
    .unwrap();
    let out = Command::new(binary)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bypass.rego:9:21: `not` over a rule or call used as a key (`client`)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "bypass.rego:13:2: crypto.sha256 is an OPA built-in that Arbiter does not have"
        ),
        "{stderr}"
    );
}

/// `arbiter eval` runs the pipeline `serve` runs: a valid token becomes
/// `input.identity`, a forged one is denied as `serve` denies it.
#[test]
fn arbiter_eval_verifies_the_token_as_serve_does() {
    use arbiter::identity::test_keys::{TestKey, jwks};
    use jsonwebtoken::Algorithm;
    let binary = env!("CARGO_BIN_EXE_arbiter");
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate("k1", Algorithm::RS256).unwrap();
    let forger = TestKey::generate("k1", Algorithm::RS256).unwrap();
    std::fs::write(dir.path().join("keys.json"), jwks(&[&key]).to_string()).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.rego"),
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.identity.subject == \"alice\"\n",
    )
    .unwrap();
    let config = dir.path().join("arbiter.toml");
    std::fs::write(
        &config,
        "[policy]\npaths = [\"policies\"]\n\n[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_file = \"keys.json\"\n",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "iat": now, "exp": now + 600});
    let eval = |token: &str| {
        let request = dir.path().join("request.json");
        std::fs::write(
            &request,
            serde_json::json!({"attributes": {"request": {"http": {
                "method": "GET", "path": "/", "host": "api.test",
                "headers": {"authorization": format!("Bearer {token}")}
            }}}})
            .to_string(),
        )
        .unwrap();
        let out = Command::new(binary)
            .args(["eval", "--config"])
            .arg(&config)
            .arg("--request")
            .arg(&request)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), report)
    };
    let (code, report) = eval(&key.sign(&claims).unwrap());
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["input"]["identity"]["subject"], "alice", "{report}");
    assert_eq!(report["input"]["identity"]["provider"], "idp", "{report}");
    let (code, report) = eval(&forger.sign(&claims).unwrap());
    assert_eq!(code, Some(2), "{report}");
    assert_eq!(report["reason"], "token_signature_invalid", "{report}");
}
