//! Cost of one whole decision (context, token verification, input, policy,
//! response) in process, with a token seen before (verified-token cache)
//! versus a token seen for the first time, for RS256 and ES256.
//!
//! `cargo bench --bench identity`; results in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arbiter::Config;
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::pipeline::Pipeline;
use arbiter::policy::PolicySet;
use arbiter::proto::auth::CheckRequest;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;

// mimalloc: the decision path allocates many small, short-lived values
// (regorus values, protobuf strings); glibc's allocator cost 10-20% of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY: &str = r#"
package envoy.authz

import input.attributes.request.http

default allow := {"allowed": false, "reason": "denied"}

allow := {"allowed": true, "headers": {"x-subject": input.identity.subject}} if {
    input.identity != null
    required_scope[http.method] in input.identity.scopes
    net.cidr_contains("10.0.0.0/8", input.attributes.source.address.socketAddress.address)
}

required_scope := {"GET": "orders:read", "POST": "orders:write"}
"#;

const TOKENS: usize = 2000;

fn request(token: &str) -> CheckRequest {
    serde_json::from_value(serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.1.2.3", "portValue": 40000}}},
            "request": {"http": {
                "method": "GET", "path": "/api/orders/42?expand=items", "host": "shop", "protocol": "HTTP/2",
                "headers": {":method": "GET", ":path": "/api/orders/42?expand=items", ":authority": "shop",
                            "authorization": format!("Bearer {token}"), "accept": "application/json",
                            "user-agent": "bench/1.0", "x-request-id": "5c1a7e5e-1111-2222-3333-444455556666"}
            }}
        }
    }))
    .unwrap()
}

struct Setup {
    shared: Arc<Pipeline>,
    requests: Vec<CheckRequest>,
    _dir: tempfile::TempDir,
}

fn setup(runtime: &tokio::runtime::Runtime, alg: Algorithm, cache_size: usize) -> Setup {
    setup_revoking(runtime, alg, cache_size, 0)
}

/// As [`setup`], with a revocation list of `revoked` entries of each kind,
/// none of which names the bench's tokens (every check is a miss, the
/// common case).
fn setup_revoking(
    runtime: &tokio::runtime::Runtime,
    alg: Algorithm,
    cache_size: usize,
    revoked: usize,
) -> Setup {
    let key = TestKey::generate("bench", alg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key]).to_string()).unwrap();
    let list = serde_json::json!({
        "tokens": (0..revoked).map(|i| format!("jti-{i}")).collect::<Vec<_>>(),
        "sessions": (0..revoked).map(|i| format!("sid-{i}")).collect::<Vec<_>>(),
        "subjects": (0..revoked).map(|i| (format!("gone-{i}"), serde_json::Value::from("2026-01-01T00:00:00Z"))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(dir.path().join("revoked.json"), list.to_string()).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), POLICY).unwrap();
    let toml = format!(
        "[identity]\ntoken_cache_size = {cache_size}\n[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.bench\"\naudiences = [\"api\"]\njwks_file = \"jwks.json\"\nalgorithms = [\"RS256\", \"ES256\"]\n[log]\nlevel = \"error\"\n"
    );
    let config = Config::from_toml(&toml, Path::new("bench.toml"), dir.path()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let requests = (0..TOKENS)
        .map(|i| {
            let token = key
                .sign(&serde_json::json!({
                    "iss": "https://idp.bench", "aud": "api", "sub": format!("user-{i}"),
                    "scope": "orders:read orders:write", "iat": now, "exp": now + 3600
                }))
                .unwrap();
            request(&token)
        })
        .collect();
    let revocations = arbiter::identity::revocation::Revocations::load(
        (revoked > 0)
            .then(|| dir.path().join("revoked.json"))
            .as_deref(),
    )
    .unwrap();
    let shared = runtime.block_on(async {
        let policies = PolicySet::load(&config.policy).unwrap();
        let shared = Arc::new(
            Pipeline::new(&config, policies, &reqwest::Client::new())
                .with_revocations(Arc::new(revocations)),
        );
        assert!(
            shared
                .authenticator
                .wait_ready(std::time::Duration::from_secs(5))
                .await
        );
        shared
    });
    Setup {
        shared,
        requests,
        _dir: dir,
    }
}

fn decisions(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("decision");
    for (alg, name) in [(Algorithm::RS256, "rs256"), (Algorithm::ES256, "es256")] {
        let cached = setup(&runtime, alg, 10_000);
        let response = runtime.block_on(cached.shared.check(cached.requests[0].clone()));
        assert_eq!(
            response.status.unwrap().code,
            0,
            "the bench request must be allowed"
        );
        group.bench_function(format!("{name}_cached_token"), |b| {
            b.to_async(&runtime)
                .iter(|| cached.shared.check(cached.requests[0].clone()));
        });
        // The same with 30,000 revocation entries (10,000 each of token IDs,
        // sessions and subjects): the cost of checking every use.
        let revoking = setup_revoking(&runtime, alg, 10_000, 10_000);
        group.bench_function(format!("{name}_cached_token_revocation_30k"), |b| {
            b.to_async(&runtime)
                .iter(|| revoking.shared.check(revoking.requests[0].clone()));
        });
        // A one-entry cache and 2000 tokens in turn: every token is verified.
        // Each is checked once first: the bench must time verifications that
        // succeed, not a quick path that refuses them.
        let fresh = setup(&runtime, alg, 1);
        for request in &fresh.requests {
            let response = runtime.block_on(fresh.shared.check(request.clone()));
            assert_eq!(
                response.status.unwrap().code,
                0,
                "every new-token bench request must verify and be allowed"
            );
        }
        let next = AtomicUsize::new(0);
        group.bench_function(format!("{name}_new_token"), |b| {
            b.to_async(&runtime).iter(|| {
                let i = next.fetch_add(1, Ordering::Relaxed) % TOKENS;
                fresh.shared.check(fresh.requests[i].clone())
            });
        });
    }
    let anonymous = setup(&runtime, Algorithm::ES256, 1);
    let plain = request("x");
    let mut no_token = plain.clone();
    if let Some(http) = no_token
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.remove("authorization");
    }
    let response = runtime.block_on(anonymous.shared.check(no_token.clone()));
    assert_eq!(
        response.status.map(|s| (s.code, s.message)),
        Some((7, "denied".to_owned())),
        "the anonymous bench request must reach the policy and be denied by it"
    );
    group.bench_function("no_token_denied", |b| {
        b.to_async(&runtime)
            .iter(|| anonymous.shared.check(no_token.clone()));
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
