//! SIGTERM on the real binary: requests in flight are answered, then the
//! process exits; no request is left hanging or answered with an error.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::idp::{Idp, Mode};
use crate::common::{Binary, denied_response, header_values, http_request, is_allowed};
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::proto::auth::CheckRequest;
use arbiter::proto::auth::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits() {
    // Each request waits on a slow key fetch (its token names an unknown
    // kid), so it is in flight inside Arbiter when SIGTERM arrives.
    let key = TestKey::generate("k", Algorithm::RS256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.rego"),
        "package envoy.authz\nallow := true\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("arbiter.toml"),
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\ndecision_timeout = \"30s\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
             [[identity.jwt]]\nname = \"idp\"\nissuer = \"{}\"\naudiences = [\"api\"]\njwks_uri = \"{}\"\nkid_miss_min_interval = \"1ms\"\nfetch_timeout = \"10s\"\n",
            idp.issuer(),
            idp.jwks_url()
        ),
    )
    .unwrap();
    let mut server = Binary::serve(&dir.path().join("arbiter.toml"));
    idp.set_mode(Mode::Slow(Duration::from_millis(1500)));

    let token = common::token_with_kid(&key, Some("unknown"), &idp.issuer());
    let request: CheckRequest = serde_json::from_str(&http_request(
        "GET",
        "/",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    ))
    .unwrap();
    let mut in_flight = Vec::new();
    for _ in 0..6 {
        let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc))
            .await
            .unwrap();
        let request = request.clone();
        in_flight.push(tokio::spawn(async move { client.check(request).await }));
    }
    // All six are inside Arbiter, sharing one slow key fetch.
    common::wait_for_metric(&server.admin, "arbiter_decisions_in_flight", 6.0).await;
    assert_eq!(
        idp.fetches(),
        2,
        "the start-up fetch and the one they share"
    );
    server.signal("TERM");

    for task in in_flight {
        let response = task
            .await
            .unwrap()
            .expect("a request in flight was lost at shutdown")
            .into_inner();
        assert!(!is_allowed(&response));
        assert_eq!(
            header_values(&denied_response(&response).headers, "x-arbiter-reason"),
            vec!["token_unknown_key"]
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
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
        AuthorizationClient::connect(format!("http://{}", server.grpc))
            .await
            .is_err(),
        "new connections must be refused after shutdown"
    );
}
