//! The stages of one decision, each on its own, on the example zero-trust
//! policies in `policies/` (GET /api/orders/7 with an RS256 token carrying
//! the `orders:read` scope, from 10.1.2.3):
//! request decoding, context parsing, token verification (cached and not),
//! input building, policy evaluation, response building; and the policy's
//! cost as the number of routes in `data.config.route_scopes` grows from
//! 10 to 10,000.
//!
//! `cargo bench --bench stages`; results in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbiter::Config;
use arbiter::context::{ParseOptions, RequestContext};
use arbiter::decision::{self, DecisionOptions};
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::identity::{Authenticator, DevicePosture, Identity};
use arbiter::policy::PolicySet;
use arbiter::proto::auth::CheckRequest;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use prost::Message;

// mimalloc: the decision path allocates many small, short-lived values
// (regorus values, protobuf strings); glibc's allocator cost 10-20% of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKENS: usize = 2000;

fn request(token: &str) -> CheckRequest {
    let text = std::fs::read_to_string("benches/load/request.json").unwrap();
    let mut request: CheckRequest = serde_json::from_str(&text).unwrap();
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers
        .insert("authorization".into(), format!("Bearer {token}"));
    request
}

struct Setup {
    config: Config,
    tokens: Vec<String>,
    dir: tempfile::TempDir,
}

/// The example policies with their data, and a provider whose key signed `tokens`.
fn setup(cache_size: usize) -> Setup {
    let key = TestKey::generate("bench", Algorithm::RS256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key]).to_string()).unwrap();
    let policies = std::fs::canonicalize("policies").unwrap();
    let toml = format!(
        "[policy]\npaths = [\"{}\"]\n[identity]\ntoken_cache_size = {cache_size}\n[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.bench\"\naudiences = [\"api\"]\njwks_file = \"jwks.json\"\nalgorithms = [\"RS256\"]\n",
        policies.display()
    );
    let config = Config::from_toml(&toml, Path::new("bench.toml"), dir.path()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tokens = (0..TOKENS)
        .map(|i| {
            key.sign(&serde_json::json!({
                "iss": "https://idp.bench", "aud": "api", "sub": format!("user-{i}"),
                "scope": "orders:read orders:write", "iat": now, "exp": now + 3600
            }))
            .unwrap()
        })
        .collect();
    Setup {
        config,
        tokens,
        dir,
    }
}

/// The example data with `n` scope routes: the real five, then `n - 5`
/// that never match this request, spread over the methods.
fn data_with_routes(n: usize) -> String {
    let mut data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("policies/data.json").unwrap()).unwrap();
    let routes = data["config"]["route_scopes"].as_object_mut().unwrap();
    let real: usize = routes.values().map(|r| r.as_object().unwrap().len()).sum();
    for i in 0..n.saturating_sub(real) {
        let method = ["GET", "POST", "PUT", "DELETE"][i % 4];
        let table = routes
            .entry(method)
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .unwrap();
        table.insert(
            format!("/api/service-{i}/items/*"),
            format!("service-{i}:read").into(),
        );
    }
    data.to_string()
}

fn stages(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cached = setup(10_000);
    let fresh = setup(1);
    let options = ParseOptions::from_config(&cached.config);
    let http = reqwest::Client::new();
    let (cached_auth, fresh_auth) = runtime.block_on(async {
        let a = Authenticator::start(&cached.config.identity, &cached.config.device, &http);
        let b = Authenticator::start(&fresh.config.identity, &fresh.config.device, &http);
        assert!(a.wait_ready(Duration::from_secs(5)).await);
        assert!(b.wait_ready(Duration::from_secs(5)).await);
        (a, b)
    });
    let policies = PolicySet::load(&cached.config.policy).unwrap();
    let check = request(&cached.tokens[0]);
    let bytes = check.encode_to_vec();
    let ctx = RequestContext::from_check(check.clone(), &options);
    let user = runtime.block_on(cached_auth.authenticate(&ctx));
    let identity = Identity {
        user,
        device: DevicePosture::Absent,
    };
    let input = arbiter::input::build(&ctx, &identity, None);
    let outcome = policies.decide(input.clone()).unwrap();
    assert!(outcome.allowed(), "the bench request must be allowed");

    let mut group = c.benchmark_group("stage");
    group.bench_function("decode_check_request", |b| {
        b.iter(|| CheckRequest::decode(bytes.as_slice()).unwrap());
    });
    group.bench_function("parse_context", |b| {
        b.iter(|| RequestContext::from_check(check.clone(), &options));
    });
    group.bench_function("verify_token_cached", |b| {
        b.iter(|| runtime.block_on(cached_auth.authenticate(&ctx)));
    });
    let contexts: Vec<RequestContext> = fresh
        .tokens
        .iter()
        .map(|t| RequestContext::from_check(request(t), &options))
        .collect();
    for ctx in &contexts {
        assert!(
            matches!(
                runtime.block_on(fresh_auth.authenticate(ctx)),
                arbiter::identity::Authentication::Verified(_)
            ),
            "every new-token bench request must verify"
        );
    }
    let next = AtomicUsize::new(0);
    group.bench_function("verify_token_rs256_new", |b| {
        b.iter(|| {
            let i = next.fetch_add(1, Ordering::Relaxed) % TOKENS;
            runtime.block_on(fresh_auth.authenticate(&contexts[i]))
        });
    });
    group.bench_function("build_input", |b| {
        b.iter(|| arbiter::input::build(&ctx, &identity, None));
    });
    group.bench_function("evaluate_example_policy", |b| {
        b.iter(|| policies.decide(input.clone()).unwrap());
    });
    let zero_trust = {
        let mut config = cached.config.policy.clone();
        config.paths = vec![std::fs::canonicalize("benches/load/zero-trust").unwrap()];
        PolicySet::load(&config).unwrap()
    };
    assert!(zero_trust.decide(input.clone()).unwrap().allowed());
    // Only what the zero-trust policy reads (six paths and one header).
    group.bench_function("build_input_zero_trust_reads", |b| {
        b.iter(|| arbiter::input::build_reading(&ctx, &identity, None, zero_trust.reads()));
    });
    group.bench_function("evaluate_zero_trust_policy", |b| {
        b.iter(|| zero_trust.decide(input.clone()).unwrap());
    });
    let trivial = PolicySet::from_sources(
        &[("t.rego", "package envoy.authz\nallow := true\n")],
        None,
        &cached.config.policy,
    )
    .unwrap();
    group.bench_function("evaluate_allow_true", |b| {
        b.iter(|| trivial.decide(input.clone()).unwrap());
    });
    group.bench_function("build_response", |b| {
        b.iter(|| {
            decision::decide(
                Ok(outcome.clone()),
                &DecisionOptions::default(),
                "5c1a7e5e-1111-2222-3333-444455556666".into(),
            )
        });
    });
    group.finish();

    let mut scaling = c.benchmark_group("route_scopes");
    for n in [10, 100, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.json");
        std::fs::write(&data, data_with_routes(n)).unwrap();
        let mut config = cached.config.policy.clone();
        config.paths = vec![
            std::fs::canonicalize("policies/envoy").unwrap(),
            std::fs::canonicalize("policies/lib").unwrap(),
            data,
        ];
        let set = PolicySet::load(&config).unwrap();
        assert!(set.decide(input.clone()).unwrap().allowed());
        scaling.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| set.decide(input.clone()).unwrap());
        });
    }
    scaling.finish();
    let mut permissions = c.benchmark_group("zero_trust_permissions");
    for n in [10, 100, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            "benches/load/zero-trust/policy.rego",
            dir.path().join("policy.rego"),
        )
        .unwrap();
        let mut data: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string("benches/load/zero-trust/data.json").unwrap(),
        )
        .unwrap();
        let api = data["zero_trust"]["permissions"]["GET"]["api"]
            .as_object_mut()
            .unwrap();
        for i in api.len()..n {
            api.insert(format!("service-{i}"), format!("service-{i}:read").into());
        }
        std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
        let mut config = cached.config.policy.clone();
        config.paths = vec![dir.path().to_owned()];
        let set = PolicySet::load(&config).unwrap();
        assert!(set.decide(input.clone()).unwrap().allowed());
        permissions.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| set.decide(input.clone()).unwrap());
        });
    }
    permissions.finish();
    drop((cached.dir, fresh.dir));
}

criterion_group!(benches, stages);
criterion_main!(benches);
