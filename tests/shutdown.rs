//! SIGTERM on the real binary: requests in flight are answered, then the
//! process exits; no request is left hanging or answered with an error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arbiter::proto::auth::CheckRequest;
use arbiter::proto::auth::authorization_client::AuthorizationClient;
use common::{http_request, is_allowed};

/// Slow on purpose: each decision takes a noticeable time, so that some are
/// in flight when SIGTERM arrives.
const SLOW_POLICY: &str = "package envoy.authz\ndefault allow := false\nallow if count([x | some i in numbers.range(1, 250); some j in numbers.range(1, 250); x := i + j]) > 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), SLOW_POLICY).unwrap();
    std::fs::write(
        dir.path().join("arbiter.toml"),
        "[server]\ngrpc_addr = \"127.0.0.1:0\"\ndecision_timeout = \"30s\"\n[admin]\naddr = \"127.0.0.1:0\"\n[policy]\neval_timeout = \"20s\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["serve", "--config"])
        .arg(dir.path().join("arbiter.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let grpc = loop {
        let line = lines.next().expect("arbiter exited").unwrap();
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if log["message"] == "arbiter serving" {
            break log["grpc_addr"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let request: CheckRequest = serde_json::from_str(&http_request("GET", "/", &[], "")).unwrap();
    // Time one decision, so that SIGTERM lands while the next ones run.
    let mut probe = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let started = Instant::now();
    assert!(is_allowed(
        &probe.check(request.clone()).await.unwrap().into_inner()
    ));
    let one = started.elapsed();

    let mut in_flight = Vec::new();
    for _ in 0..6 {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let request = request.clone();
        in_flight.push(tokio::spawn(async move { client.check(request).await }));
    }
    tokio::time::sleep(one / 2).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );

    let mut answered = 0;
    for task in in_flight {
        let response = task
            .await
            .unwrap()
            .expect("a request in flight was lost at shutdown");
        assert!(is_allowed(&response.into_inner()));
        answered += 1;
    }
    assert_eq!(answered, 6);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "arbiter did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(
        AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .is_err(),
        "new connections must be refused after shutdown"
    );
}
