//! Limits: a per-decision deadline (the caller's grpc-timeout honoured) and
//! a bound on concurrent decisions, both answered with a 503 deny, never an
//! allow and never a hang.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::idp::{Idp, Mode};
use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::proto::auth::CheckRequest;
use jsonwebtoken::Algorithm;

const POLICY: &str = "package envoy.authz\nallow := true\n";

/// An Arbiter whose IdP takes 3 s to answer, and a request whose token names
/// an unknown kid, so that deciding it waits on that fetch.
async fn slow_setup(extra: &str) -> (TestArbiter, Idp, CheckRequest) {
    let key = TestKey::generate("k", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let toml = format!(
        "{extra}\n[[identity.jwt]]\nname = \"idp\"\nissuer = \"{}\"\naudiences = [\"api\"]\njwks_uri = \"{}\"\nkid_miss_min_interval = \"1ms\"\nfetch_timeout = \"10s\"\n",
        idp.issuer(),
        idp.jwks_url()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    idp.set_mode(Mode::Slow(Duration::from_secs(3)));
    let token = token_with_kid(&key, Some("rotated-away"), &idp.issuer());
    let request = serde_json::from_str(&http_request(
        "GET",
        "/",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    ))
    .unwrap();
    (arbiter, idp, request)
}

fn reason(response: &arbiter::proto::auth::CheckResponse) -> (u32, String) {
    let denied = denied_response(response);
    (
        denied.status.as_ref().unwrap().code as u32,
        header_values(&denied.headers, "x-arbiter-reason")[0].to_owned(),
    )
}

#[tokio::test]
async fn the_callers_grpc_timeout_bounds_the_decision() {
    let (arbiter, _idp, request) = slow_setup("[server]\ndecision_timeout = \"10s\"").await;
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let response = arbiter
        .client()
        .await
        .check(request)
        .await
        .expect("Arbiter answers before the caller gives up")
        .into_inner();
    let elapsed = started.elapsed();
    assert!(!is_allowed(&response));
    assert_eq!(reason(&response), (503, "deadline_exceeded".into()));
    assert!(
        elapsed >= Duration::from_millis(850) && elapsed < Duration::from_millis(1000),
        "{elapsed:?}"
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn past_the_concurrency_limit_requests_wait_then_fail_closed() {
    let (arbiter, _idp, slow) =
        slow_setup("[server]\nmax_concurrent_decisions = 1\ndecision_timeout = \"400ms\"").await;
    let mut first_client = arbiter.client().await;
    let first = tokio::spawn(async move { first_client.check(slow).await.unwrap().into_inner() });
    // The slow one holds the only permit once it is in flight.
    common::wait_for_metric(
        &arbiter.running.admin_addr.to_string(),
        "arbiter_decisions_in_flight",
        1.0,
    )
    .await;
    let quick: CheckRequest = serde_json::from_str(&http_request("GET", "/", &[], "")).unwrap();
    // This one's deadline (90 ms of its 100 ms) passes while the slow
    // decision still holds the only permit.
    let mut hurried = tonic::Request::new(quick.clone());
    hurried.set_timeout(Duration::from_millis(100));
    let second = arbiter
        .client()
        .await
        .check(hurried)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reason(&second),
        (503, "overloaded".into()),
        "no permit before the deadline"
    );
    // This one waits for the permit (back-pressure) and is decided once the
    // slow decision gives up at its own deadline.
    let mut patient_client = arbiter.client().await;
    let patient =
        tokio::spawn(async move { patient_client.check(quick).await.unwrap().into_inner() });
    let first = first.await.unwrap();
    assert_eq!(reason(&first), (503, "deadline_exceeded".into()));
    assert!(
        is_allowed(&patient.await.unwrap()),
        "a waiting request is decided once a permit frees up"
    );
    arbiter.running.shutdown().await;
}

/// A decision that panics is a deny (`internal`) through the shared limits,
/// and its slot is given back: never a reset
/// stream, which would leave the verdict to the proxy's failure mode.
#[tokio::test]
async fn a_decision_that_panics_is_denied_internal() {
    use arbiter::decision::DenyReason;
    let config = arbiter::Config::default();
    let policies =
        arbiter::policy::PolicySet::from_sources(&[("p.rego", POLICY)], None, &config.policy)
            .unwrap();
    let pipeline = arbiter::pipeline::Pipeline::new(&config, policies, &reqwest::Client::new());
    for _ in 0..=config.server.max_concurrent_decisions {
        let answer = pipeline
            .within_limits(
                None,
                async {
                    if POLICY.contains("allow") {
                        panic!("a bug on the decision path");
                    }
                    DenyReason::Policy(None)
                },
                |reason| reason,
            )
            .await;
        // Past max_concurrent_decisions a slot lost to a panic would show
        // as `overloaded` at the deadline.
        assert_eq!(answer, DenyReason::Internal);
    }
}
