//! The load generator against a real Arbiter: it signs tokens that Arbiter
//! verifies, sends a short burst and reports what Arbiter decided.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

/// A real Arbiter on 127.0.0.1:0 with one policy file.
struct TestArbiter {
    running: arbiter::Running,
    _dir: tempfile::TempDir,
}

impl TestArbiter {
    async fn start(files: &[(&str, &str)], toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join("policies").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let config = arbiter::Config::from_toml(toml, Path::new("test.toml"), dir.path()).unwrap();
        let running = arbiter::start(&config).await.unwrap();
        Self { running, _dir: dir }
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.running.admin_addr);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
}

use arbiter::metrics::sum_of as metric;

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
    if output.stdout.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "arbiter-load did not print JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
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
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\ndecision_timeout = \"5s\"\n[admin]\naddr = \"127.0.0.1:0\"\n[[identity.jwt]]\nname = \"bench\"\nissuer = \"https://idp.bench\"\naudiences = [\"api\"]\njwks_file = \"{out}/jwks.json\"\nalgorithms = [\"ES256\"]\n"
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
            concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/load/request.json"),
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

    // Fresh tokens first, while Arbiter has seen none: each of the 20 is
    // sent once, then the run stops; not one is found in the token cache.
    let hits = |text: &str| {
        metric(text, "arbiter_token_cache_lookups_total{result=\"hit\"}").unwrap_or(0.0)
    };
    let hits_before = hits(&arbiter.metrics().await);
    let fresh = run(&[
        "--tokens",
        &tokens,
        "--token-use",
        "fresh",
        "--warmup",
        "0ms",
        "--duration",
        "30s",
    ])
    .await
    .unwrap();
    assert_eq!(fresh["requests"], 20, "{fresh}");
    assert_eq!(fresh["allowed"], 20, "{fresh}");
    assert!(fresh["errors"].as_object().unwrap().is_empty(), "{fresh}");
    assert_eq!(
        hits(&arbiter.metrics().await),
        hits_before,
        "a token was sent twice"
    );

    let short = ["--duration", "500ms", "--warmup", "100ms"];
    let with_tokens = run(&[&short[..], &["--tokens", &tokens]].concat())
        .await
        .unwrap();
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
    let anonymous = run(&short).await.unwrap();
    assert_eq!(anonymous["allowed"], 0, "{anonymous}");
    assert_eq!(
        anonymous["denied"]["7"], anonymous["requests"],
        "{anonymous}"
    );

    arbiter.running.shutdown().await;
}
