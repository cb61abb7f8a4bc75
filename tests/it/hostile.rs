//! Hostile input: requests built to exhaust or confuse the decision point.
//! Every one is decided as the policy says, denied with a reason, or refused
//! with a gRPC error that is logged and counted (Envoy denies on an error);
//! none crashes Arbiter or is allowed by accident, and memory stays bounded.
//!
//! A megabyte token is in `tests/identity.rs` (`token_too_large`); a policy
//! that runs past its time limit in `tests/grpc_api.rs` (`policy_timeout`).

use crate::common;

use crate::common::*;
use arbiter::proto::auth::attribute_context::HttpRequest;
use arbiter::proto::auth::{CheckRequest, CheckResponse};
use prost::Message;

/// Allows alice and denies everyone else. A body that does not parse never
/// reaches it: Arbiter denies that first (`request_parse_error`).
const POLICY: &str = r#"
package envoy.authz

http := input.attributes.request.http

default allow := {"allowed": false, "reason": "not_alice"}

allow := {"allowed": true} if http.headers["x-user"] == "alice"

default regex_allowed := false

regex_allowed if regex.match(http.headers["x-pattern"], "aaaa")
"#;

const LIMIT: usize = 1024 * 1024;

async fn arbiter() -> TestArbiter {
    TestArbiter::start(
        &[("p.rego", POLICY)],
        &format!("[server]\nmax_request_bytes = {LIMIT}\n[policy]\neval_timeout = \"200ms\""),
    )
    .await
}

fn request(headers: &[(&str, &str)], body: &str) -> CheckRequest {
    serde_json::from_str(&http_request("POST", "/", headers, body)).unwrap()
}

fn http_of(request: &mut CheckRequest) -> &mut HttpRequest {
    request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
}

fn with_headers(mut request: CheckRequest, count: usize, value_len: usize) -> CheckRequest {
    let http = http_of(&mut request);
    let value = "v".repeat(value_len);
    for i in 0..count {
        http.headers.insert(format!("x-filler-{i}"), value.clone());
    }
    request
}

/// The decision's reason header: `None` for an allow.
fn outcome(response: &CheckResponse) -> Option<String> {
    if is_allowed(response) {
        return None;
    }
    let denied = denied_response(response);
    Some(header_values(&denied.headers, "x-arbiter-reason")[0].to_owned())
}

async fn decide(
    arbiter: &TestArbiter,
    request: CheckRequest,
) -> Result<Option<String>, tonic::Status> {
    let response = arbiter.client().await.check(request).await?;
    Ok(outcome(&response.into_inner()))
}

#[tokio::test]
async fn many_headers_and_long_values_within_the_limit_are_decided_by_the_policy() {
    let arbiter = arbiter().await;
    for (count, len) in [(5_000, 100), (1, 900 * 1024), (30_000, 0)] {
        for (user, expected) in [("alice", None), ("mallory", Some("not_alice"))] {
            let request = with_headers(request(&[("x-user", user)], ""), count, len);
            assert!(request.encoded_len() < LIMIT, "{count} x {len}");
            let decided = decide(&arbiter, request).await.unwrap();
            assert_eq!(
                decided.as_deref(),
                expected,
                "{count} headers of {len} bytes"
            );
        }
    }
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn requests_over_the_limit_are_refused_and_counted_never_decided() {
    let arbiter = arbiter().await;
    let many = with_headers(request(&[("x-user", "alice")], ""), 20_000, 60);
    let long = with_headers(request(&[("x-user", "alice")], ""), 1, LIMIT);
    let body = request(&[("x-user", "alice")], &"x".repeat(LIMIT));
    for hostile in [many, long, body] {
        assert!(hostile.encoded_len() > LIMIT);
        let status = decide(&arbiter, hostile)
            .await
            .expect_err("a request over the limit must not be decided");
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    }
    let metrics = arbiter.metrics().await;
    assert_eq!(
        metric(&metrics, "arbiter_grpc_refusals_total{code=\"OutOfRange\"}"),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE arbiter_decisions_total counter"),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arbiter_decisions_total"),
        None,
        "nothing was decided: {metrics}"
    );
    // A body just under the limit, as Envoy sends one at its own
    // `with_request_body.max_request_bytes`, is still decided.
    let mut at_limit = request(&[("x-user", "alice")], "");
    let room = LIMIT - at_limit.encoded_len() - 16;
    at_limit = request(&[("x-user", "alice")], &"x".repeat(room));
    assert!(at_limit.encoded_len() <= LIMIT);
    assert_eq!(decide(&arbiter, at_limit).await.unwrap(), None);
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn deeply_nested_json_bodies_are_a_parse_error_not_a_crash() {
    let arbiter = arbiter().await;
    let json = [("content-type", "application/json"), ("x-user", "alice")];
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(
        decide(&arbiter, request(&json, &nested(100)))
            .await
            .unwrap(),
        None
    );
    for depth in [129, 10_000, 300_000] {
        let decided = decide(&arbiter, request(&json, &nested(depth)))
            .await
            .unwrap();
        assert_eq!(
            decided.as_deref(),
            Some("request_parse_error"),
            "depth {depth}"
        );
    }
    let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let decided = decide(&arbiter, request(&json, &objects)).await.unwrap();
    assert_eq!(decided.as_deref(), Some("request_parse_error"));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn huge_multipart_and_form_bodies_are_decided() {
    let arbiter = arbiter().await;
    let multipart = [
        ("content-type", "multipart/form-data; boundary=B"),
        ("x-user", "alice"),
    ];
    let parts: String = (0..10_000)
        .map(|i| format!("--B\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"))
        .collect::<String>()
        + "--B--\r\n";
    assert_eq!(
        decide(&arbiter, request(&multipart, &parts)).await.unwrap(),
        None
    );
    let json_part = format!(
        "--B\r\nContent-Disposition: form-data; name=\"j\"\r\nContent-Type: application/json\r\n\r\n{}\r\n--B--\r\n",
        "[".repeat(50_000)
    );
    let decided = decide(&arbiter, request(&multipart, &json_part))
        .await
        .unwrap();
    assert_eq!(decided.as_deref(), Some("request_parse_error"));
    let unterminated = "--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nvvvv";
    let decided = decide(&arbiter, request(&multipart, unterminated))
        .await
        .unwrap();
    assert_eq!(decided.as_deref(), Some("request_parse_error"));
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-user", "alice"),
    ];
    let pairs = "a=1&".repeat(200_000);
    assert_eq!(
        decide(&arbiter, request(&form, &pairs)).await.unwrap(),
        None
    );
    arbiter.running.shutdown().await;
}

/// Sends protobuf bytes as they are, so that a test can send what prost
/// would never encode: a `string` field that is not UTF-8.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len).to_vec()))
    }
}

async fn check_raw(arbiter: &TestArbiter, bytes: Vec<u8>) -> Result<CheckResponse, tonic::Status> {
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", arbiter.running.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
    let response = grpc
        .unary(tonic::Request::new(bytes), path, RawCodec)
        .await?;
    Ok(CheckResponse::decode(response.into_inner().as_slice()).unwrap())
}

#[tokio::test]
async fn invalid_utf8_is_refused_or_read_as_absent_never_allowed() {
    let arbiter = arbiter().await;
    let marker = "MARKER-0123456789";
    let encoded = request(&[("x-user", marker)], "").encode_to_vec();
    let at = encoded
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    let mut hostile = encoded.clone();
    hostile[at..at + 5].copy_from_slice(&[0xff, 0xfe, 0xc0, 0x80, 0xed]);
    let status = check_raw(&arbiter, hostile)
        .await
        .expect_err("a string field that is not UTF-8 cannot be decoded");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    // The same request, untouched, goes through the same raw path: the
    // refusal above is the UTF-8, not the codec.
    let response = check_raw(&arbiter, encoded).await.unwrap();
    assert_eq!(outcome(&response).as_deref(), Some("not_alice"));
    assert_eq!(
        metric(
            &arbiter.metrics().await,
            "arbiter_grpc_refusals_total{code=\"Internal\"}"
        ),
        Some(1.0)
    );

    // With Envoy's `encode_raw_headers`, values are bytes: one that is not
    // UTF-8 reads as absent, so it cannot pass for "alice".
    let mut raw: CheckRequest = request(&[], "");
    let http = http_of(&mut raw);
    http.headers.clear();
    http.header_map = Some(arbiter::proto::core::HeaderMap {
        headers: vec![arbiter::proto::core::HeaderValue {
            key: "x-user".into(),
            value: String::new(),
            raw_value: b"alice\xff".to_vec(),
        }],
    });
    let response = arbiter
        .client()
        .await
        .check(raw)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&response).as_deref(), Some("not_alice"));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn hostile_regex_patterns_are_a_deny_not_a_hang() {
    let policy = r#"
package envoy.authz
default allow := false
allow if regex.match(input.attributes.request.http.headers["x-pattern"], "aaaa")
allow if {
  input.attributes.request.http.headers["x-loop"]
  some i in numbers.range(1, 10000000)
  regex.match("^(a|b)+c$", sprintf("a%dbc", [i]))
  false
}
"#;
    let arbiter = TestArbiter::start(
        &[("p.rego", policy)],
        "[server]\ndecision_timeout = \"10s\"\n[policy]\neval_timeout = \"200ms\"",
    )
    .await;
    // Too big to compile, or not a pattern: the built-in fails, the rule is
    // undefined, the default denies.
    for pattern in ["((a{100}){100}){100}", "(", "a{4294967295}"] {
        let decided = decide(&arbiter, request(&[("x-pattern", pattern)], "")).await;
        assert!(decided.unwrap().is_some(), "{pattern}");
    }
    // Patterns that make a backtracking engine take exponential time run in
    // linear time here (Rust's regex crate), so they are simply decided:
    // these match "aaaa", which also shows the denies above are the
    // patterns, not a policy that never allows.
    for pattern in ["^(a+)+$", "^(a|aa)*$", "^(a|a?)+$"] {
        let decided = decide(&arbiter, request(&[("x-pattern", pattern)], "")).await;
        assert_eq!(decided.unwrap(), None, "{pattern}");
    }
    // Ten million regex matches do not finish within the evaluation limit:
    // the decision is a deny that says so, in bounded time.
    let started = std::time::Instant::now();
    let decided = decide(&arbiter, request(&[("x-loop", "1")], "")).await;
    assert_eq!(decided.unwrap().as_deref(), Some("policy_timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    arbiter.running.shutdown().await;
}

/// The real binary, fed the hostile requests above round after round:
/// its resident memory levels off instead of growing with each round, and
/// every refusal is in its log with the reason.
#[tokio::test]
async fn memory_stays_bounded_under_hostile_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), POLICY).unwrap();
    let config = dir.path().join("arbiter.toml");
    std::fs::write(
        &config,
        // Time is not what this test is about: a debug build on a busy
        // machine may take longer than the default 200 ms over 5,000 headers.
        test_config_toml(&format!(
            "[server]\nmax_request_bytes = {LIMIT}\ndecision_timeout = \"10s\""
        )),
    )
    .unwrap();
    let binary = Binary::serve(&config);
    let mut client = arbiter::proto::auth::authorization_client::AuthorizationClient::connect(
        format!("http://{}", binary.grpc),
    )
    .await
    .unwrap()
    .max_encoding_message_size(4 * LIMIT);
    let json = [("content-type", "application/json"), ("x-user", "alice")];
    let multipart = [
        ("content-type", "multipart/form-data; boundary=B"),
        ("x-user", "alice"),
    ];
    let parts: String = (0..10_000)
        .map(|i| format!("--B\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"))
        .collect();
    let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    // Each with the one answer it must get, every time: allowed (`None`), a
    // deny's reason, or the refusal of a call over the limit.
    let allowed = Ok(None);
    let unparsed = Ok(Some("request_parse_error".to_owned()));
    let hostile = vec![
        (
            with_headers(request(&[("x-user", "alice")], ""), 5_000, 100),
            allowed.clone(),
        ),
        (request(&json, &nested), allowed.clone()),
        (request(&json, &"[".repeat(500_000)), unparsed),
        (request(&multipart, &(parts + "--B--\r\n")), allowed),
        (
            with_headers(request(&[("x-user", "alice")], ""), 1, 2 * LIMIT),
            Err(tonic::Code::OutOfRange),
        ),
    ];
    let mut after_round = Vec::new();
    for _ in 0..6 {
        for (request, want) in &hostile {
            for _ in 0..10 {
                let got = client
                    .check(request.clone())
                    .await
                    .map(|response| outcome(&response.into_inner()))
                    .map_err(|status| status.code());
                assert_eq!(&got, want);
            }
        }
        after_round.push(common::envoy::resident_kib(binary.child.id()).unwrap());
    }
    eprintln!("resident KiB after each round: {after_round:?}");
    let (first, last) = (after_round[1], after_round[5]);
    assert!(
        last < first + 32 * 1024,
        "resident memory grew from {first} KiB to {last} KiB over four rounds: {after_round:?}"
    );
    assert!(
        last < 512 * 1024,
        "resident memory {last} KiB: {after_round:?}"
    );
    let lines = binary.lines.lock().unwrap().clone();
    let refusals = lines
        .iter()
        .filter(|l| l.contains("call refused before a decision") && l.contains("OutOfRange"))
        .count();
    assert_eq!(refusals, 60, "one log line per refused call");
}
