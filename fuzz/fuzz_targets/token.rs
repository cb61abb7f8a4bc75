//! Any bytes as a bearer token, against a provider with a real key:
//! parsing, header checks, key lookup and verification. Nothing may panic,
//! and no token that Arbiter's key did not sign is ever accepted.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::LazyLock;

use arbiter::Config;
use arbiter::context::RequestContext;
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::identity::{Authentication, Authenticator};
use arbiter::proto::auth::attribute_context::HttpRequest;
use libfuzzer_sys::fuzz_target;

struct Setup {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator,
    options: arbiter::context::ParseOptions,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("arbiter-fuzz-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = TestKey::generate("fuzz", jsonwebtoken::Algorithm::ES256).expect("key");
    std::fs::write(dir.join("jwks.json"), jwks(&[&key]).to_string()).expect("jwks");
    let config = Config::from_toml(
        "[[identity.jwt]]\nname = \"fuzz\"\nissuer = \"https://idp.fuzz\"\naudiences = [\"api\"]\njwks_file = \"jwks.json\"\nalgorithms = [\"ES256\", \"RS256\"]\n",
        Path::new("fuzz.toml"),
        &dir,
    )
    .expect("config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    let authenticator = runtime.block_on(async {
        let a = Authenticator::start(&config.identity, &config.device, &http);
        assert!(
            a.wait_ready(std::time::Duration::from_secs(5)).await,
            "the fuzz key did not load: every token would be refused unread"
        );
        a
    });
    let setup = Setup {
        runtime,
        authenticator,
        options: arbiter::context::ParseOptions::from_config(&config),
    };
    // A positive control: a token the key did sign verifies, so the refusals
    // below come from verification, not from a setup that refuses everything.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let signed = key
        .sign(&serde_json::json!({"iss": "https://idp.fuzz", "aud": "api", "exp": exp}))
        .expect("sign");
    assert!(
        matches!(authenticate(&setup, &signed), Authentication::Verified(_)),
        "the fuzz key's own token does not verify"
    );
    setup
});

fn authenticate(setup: &Setup, token: &str) -> Authentication {
    let http = HttpRequest {
        method: "GET".into(),
        path: "/".into(),
        headers: [("authorization".to_owned(), format!("Bearer {token}"))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let request = common::check_request(http);
    let ctx = RequestContext::from_check(request, &setup.options);
    setup
        .runtime
        .block_on(setup.authenticator.authenticate(&ctx))
}

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let token = String::from_utf8_lossy(data);
    assert!(
        !matches!(authenticate(setup, &token), Authentication::Verified(_)),
        "a token the key never signed was accepted"
    );
});
