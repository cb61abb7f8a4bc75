//! The decision log of the real binary: one JSON line per decision with the
//! documented fields, never a token, cookie or secret header; sampling of
//! allows, masking, and a separate file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Binary, http_request};
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::proto::auth::CheckRequest;
use arbiter::proto::auth::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;

const POLICY: &str = "package envoy.authz\ndefault allow := {\"allowed\": false, \"reason\": \"not_ok\"}\nallow := true if input.parsed_path[0] == \"ok\"\n";

fn start(dir: &Path, extra: &str) -> Binary {
    std::fs::write(
        dir.join("arbiter.toml"),
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n{extra}\n"
        ),
    )
    .unwrap();
    Binary::serve(&dir.join("arbiter.toml"))
}

fn decision_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "arbiter::decision")
        .collect()
}

fn setup() -> (tempfile::TempDir, TestKey) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), POLICY).unwrap();
    let key = TestKey::generate("k", Algorithm::ES256).unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key]).to_string()).unwrap();
    (dir, key)
}

const PROVIDER: &str = "[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_file = \"jwks.json\"\nalgorithms = [\"ES256\"]\n";

async fn send(grpc: &str, key: &TestKey) -> (String, Vec<String>) {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = key.sign(&serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": exp})).unwrap();
    let mut secrets = vec![
        token.clone(),
        "cookie-secret-4711".to_owned(),
        "api-key-secret-0815".to_owned(),
        "query-secret-1234".to_owned(),
        "body-secret-9999".to_owned(),
    ];
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for path in [
        "/ok/x?token=query-secret-1234",
        "/no/y?token=query-secret-1234",
    ] {
        let json = http_request(
            "POST",
            path,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("cookie", "session=cookie-secret-4711"),
                ("x-api-key", "api-key-secret-0815"),
                ("content-type", "application/json"),
            ],
            "{\"password\": \"body-secret-9999\"}",
        );
        let request: CheckRequest = serde_json::from_str(&json).unwrap();
        client.check(request).await.unwrap();
    }
    // An invalid token too: its reason is logged, the token never.
    let bad = format!("{}x", &token[..token.len() - 1]);
    secrets.push(bad.clone());
    let json = http_request(
        "GET",
        "/ok",
        &[("authorization", &format!("Bearer {bad}"))],
        "",
    );
    client
        .check(serde_json::from_str::<CheckRequest>(&json).unwrap())
        .await
        .unwrap();
    (token, secrets)
}

/// A secret whole, each part of a token (header, claims, signature) and
/// every 16-byte stretch of it: a log must hold none of them.
fn probes(secret: &str) -> Vec<&str> {
    let mut probes = vec![secret];
    probes.extend(secret.split('.').filter(|part| part.len() >= 8));
    let mut start = 0;
    while start + 16 <= secret.len() {
        probes.push(&secret[start..start + 16]);
        start += 8;
    }
    probes
}

fn wait_for(lines: &Arc<Mutex<Vec<String>>>, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = lines.lock().unwrap().clone();
        if decision_lines(&now).len() >= count || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn one_line_per_decision_with_its_fields_and_no_secrets() {
    let (dir, key) = setup();
    let server = start(dir.path(), PROVIDER);
    let (_token, secrets) = send(&server.grpc, &key).await;
    let all = wait_for(&server.lines, 3);
    let decisions = decision_lines(&all);
    assert_eq!(decisions.len(), 3, "{all:?}");
    for line in &decisions {
        for field in [
            "decision_id",
            "revision",
            "result",
            "reason",
            "http_status",
            "method",
            "host",
            "path",
            "source_address",
            "source_principal",
            "subject",
            "provider",
            "device_id",
            "eval_us",
            "total_us",
            "timestamp",
        ] {
            assert!(line.get(field).is_some(), "{field} missing from {line}");
        }
    }
    assert_eq!(decisions[0]["result"], "allow");
    assert_eq!(decisions[0]["subject"], "alice");
    assert_eq!(decisions[0]["provider"], "idp");
    assert_eq!(
        decisions[0]["path"], "/ok/x",
        "the query string is not logged"
    );
    assert_eq!(decisions[1]["result"], "deny");
    assert_eq!(decisions[1]["reason"], "not_ok");
    assert!(
        decisions[2]["reason"]
            .as_str()
            .unwrap()
            .starts_with("token_"),
        "{}",
        decisions[2]
    );
    let everything = all.join("\n");
    for secret in &secrets {
        for probe in probes(secret) {
            assert!(
                !everything.contains(probe),
                "part of a secret reached the log: {probe}"
            );
        }
    }
}

#[tokio::test]
async fn decisions_to_a_file_allows_sampled_out_fields_masked() {
    let (dir, key) = setup();
    let server = start(
        dir.path(),
        &format!(
            "[log]\ndecision_file = \"decisions.log\"\nallow_sample_rate = 0.0\nmask = [\"path\", \"subject\"]\n{PROVIDER}"
        ),
    );
    let (_token, secrets) = send(&server.grpc, &key).await;
    let file = dir.path().join("decisions.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if decision_lines(&lines).len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let decisions = decision_lines(&lines);
    assert_eq!(
        decisions.len(),
        2,
        "only the two denies: {lines:?} stdout: {:?}",
        server.lines.lock().unwrap()
    );
    assert!(decisions.iter().all(|d| d["result"] == "deny"));
    assert!(
        decisions
            .iter()
            .all(|d| d["path"] == "[masked]" && d["subject"] == "[masked]")
    );
    assert!(
        decision_lines(&server.lines.lock().unwrap()).is_empty(),
        "decisions also went to stdout"
    );
    let everything = format!(
        "{}\n{}",
        lines.join("\n"),
        server.lines.lock().unwrap().join("\n")
    );
    for secret in &secrets {
        for probe in probes(secret) {
            assert!(
                !everything.contains(probe),
                "part of a secret was logged: {probe}"
            );
        }
    }
}
