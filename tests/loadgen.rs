//! The load generator against a real Arbiter: it signs tokens that Arbiter
//! verifies, sends a short burst and reports what Arbiter decided.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;

fn load(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_arbiter-load"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbiter_load_drives_a_real_arbiter_and_counts_its_decisions() {
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().to_str().unwrap().to_owned();
    load(&["tokens", "--count", "20", "--out", &out, "--alg", "ES256"]);
    let arbiter = TestArbiter::start(
        &[(
            "p.rego",
            "package envoy.authz\n\ndefault allow := false\n\nallow if \"orders:read\" in input.identity.scopes\n",
        )],
        &format!(
            "[server]\ndecision_timeout = \"5s\"\n[[identity.jwt]]\nname = \"bench\"\nissuer = \"https://idp.bench\"\naudiences = [\"api\"]\njwks_file = \"{out}/jwks.json\"\nalgorithms = [\"ES256\"]\n"
        ),
    )
    .await;
    let target = format!("http://{}", arbiter.running.grpc_addr);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--json",
            "--target",
            &target,
            "--request",
            "benches/load/request.json",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--connections",
            "1",
            "--concurrency",
            "4",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            load(&refs)
        })
    };
    let tokens = format!("{out}/tokens.txt");

    let with_tokens = run(&["--tokens", &tokens]).await.unwrap();
    assert!(
        with_tokens["requests"].as_u64().unwrap() > 0,
        "{with_tokens}"
    );
    assert_eq!(
        with_tokens["allowed"], with_tokens["requests"],
        "{with_tokens}"
    );
    assert!(with_tokens["errors"].as_object().unwrap().is_empty());
    assert!(with_tokens["latency_us"]["p50"].as_u64().unwrap() > 0);

    // Without a token the same policy denies, and the report says so.
    let anonymous = run(&[]).await.unwrap();
    assert_eq!(anonymous["allowed"], 0, "{anonymous}");
    assert_eq!(
        anonymous["denied"]["7"], anonymous["requests"],
        "{anonymous}"
    );

    // Fresh tokens run out after 20 requests: no token is sent twice.
    let fresh = run(&["--tokens", &tokens, "--token-use", "fresh"])
        .await
        .unwrap();
    assert!(fresh["requests"].as_u64().unwrap() <= 20, "{fresh}");
    arbiter.running.shutdown().await;
}
