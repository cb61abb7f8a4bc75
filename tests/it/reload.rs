//! Hot reload: policies swapped under load without a failed or wrongly
//! decided request, broken reloads rejected with the old set serving, JWKS
//! files reloaded, and SIGHUP on the real binary.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

fn versioned_policy(version: &str) -> String {
    format!(
        "package envoy.authz\nversion := \"{version}\"\nallow := {{\"allowed\": input.attributes.request.http.headers[\"x-want\"] == version, \"dynamic_metadata\": {{\"version\": version}}}}\n"
    )
}

/// Replaces a file in one step, as a deployment tool (or a ConfigMap) would.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_and_misdecides_nothing() {
    let arbiter = TestArbiter::start(
        &[("p.rego", &versioned_policy("1"))],
        "[policy]\nreload_interval = \"20ms\"",
    )
    .await;
    let policy = arbiter.dir.path().join("policies/p.rego");
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let mut client = arbiter.client().await;
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let want = if (i + worker) % 2 == 0 { "1" } else { "2" };
                let request: arbiter::proto::auth::CheckRequest =
                    serde_json::from_str(&http_request("GET", "/", &[("x-want", want)], ""))
                        .unwrap();
                let response = client
                    .check(request)
                    .await
                    .expect("no request may fail during a reload")
                    .into_inner();
                let meta =
                    serde_json::to_value(response.dynamic_metadata.clone().unwrap()).unwrap();
                let version = meta["version"].as_str().unwrap().to_owned();
                assert_eq!(
                    is_allowed(&response),
                    version == want,
                    "decided against the set that answered"
                );
                seen.push(version);
                i += 1;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace(&policy, &versioned_policy("2"));
    let want_two = http_request("GET", "/", &[("x-want", "2")], "");
    eventually("version 2", || async {
        is_allowed(&arbiter.check_json(&want_two).await)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let seen = worker.await.unwrap();
        total += seen.len();
        // Each client sees version 1, then version 2, never back.
        let first_two = seen
            .iter()
            .position(|v| v == "2")
            .expect("the new set never answered");
        assert!(
            seen[first_two..].iter().all(|v| v == "2"),
            "an old set answered after the new one"
        );
    }
    assert!(total > 100, "only {total} requests under load");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_set_and_says_why() {
    let arbiter = TestArbiter::start(
        &[("p.rego", &versioned_policy("1"))],
        "[policy]\nreload_interval = \"20ms\"",
    )
    .await;
    let policy = arbiter.dir.path().join("policies/p.rego");
    let revision = arbiter.readyz().await["policy_revision"].clone();
    replace(
        &policy,
        "package envoy.authz\n\nallow if {\n  input.x ==\n}\n",
    );
    eventually("the rejected reload", || async {
        !arbiter.readyz().await["last_reload_error"].is_null()
    })
    .await;
    let ready = arbiter.readyz().await;
    let error = ready["last_reload_error"].as_str().unwrap();
    assert!(error.contains("p.rego:5"), "{error}");
    assert_eq!(
        ready["policy_revision"], revision,
        "the old set must keep serving"
    );
    assert_eq!(ready["ready"], true);
    let request = http_request("GET", "/", &[("x-want", "1")], "");
    assert!(is_allowed(&arbiter.check_json(&request).await));
    let metrics = arbiter.metrics().await;
    assert!(
        metrics.contains("arbiter_policy_reload_failures_total 1"),
        "{metrics}"
    );

    replace(&policy, &versioned_policy("2"));
    eventually("the fixed reload", || async {
        arbiter.readyz().await["last_reload_error"].is_null()
    })
    .await;
    assert_ne!(arbiter.readyz().await["policy_revision"], revision);
    let request = http_request("GET", "/", &[("x-want", "2")], "");
    assert!(is_allowed(&arbiter.check_json(&request).await));
    arbiter.running.shutdown().await;
}

/// An Arbiter whose one provider reads its keys from a file (reloaded every
/// 20 ms), holding `key` at first; the policy allows any verified caller.
async fn with_jwks_file(
    key: &arbiter::identity::test_keys::TestKey,
    extra: &str,
) -> (TestArbiter, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("jwks.json");
    std::fs::write(
        &keys,
        arbiter::identity::test_keys::jwks(&[key]).to_string(),
    )
    .unwrap();
    let toml = format!(
        "[policy]\nreload_interval = \"20ms\"\n[[identity.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_file = \"{}\"\n{extra}",
        keys.display()
    );
    let policy = "package envoy.authz\nallow := input.identity != null\n";
    let arbiter = TestArbiter::start(&[("p.rego", policy)], &toml).await;
    (arbiter, dir, keys)
}

#[tokio::test]
async fn jwks_files_are_reloaded_and_garbage_is_refused() {
    use arbiter::identity::test_keys::{TestKey, jwks};
    use jsonwebtoken::Algorithm;
    // The IdP reuses the kid for its new key: only the key itself tells them apart.
    let old = TestKey::generate("k", Algorithm::ES256).unwrap();
    let new = TestKey::generate("k", Algorithm::ES256).unwrap();
    let (arbiter, _dir, keys) = with_jwks_file(&old, "kid_miss_min_interval = \"1h\"\n").await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |key: &TestKey, n: u32| {
        let t = key
            .sign(&serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": "a", "exp": exp, "n": n}))
            .unwrap();
        http_request("GET", "/", &[("authorization", &format!("Bearer {t}"))], "")
    };
    let cached = token(&old, 0);
    assert!(is_allowed(&arbiter.check_json(&cached).await));
    assert!(!is_allowed(&arbiter.check_json(&token(&new, 0)).await));

    // A broken file is read, refused and counted; the old keys keep serving.
    replace(&keys, "{\"keys\": \"garbage\"}");
    let admin = arbiter.running.admin_addr.to_string();
    wait_for_metric(&admin, "arbiter_jwks_fetch_failures_total", 1.0).await;
    assert!(
        is_allowed(&arbiter.check_json(&token(&old, 1)).await),
        "garbage replaced good keys"
    );
    assert!(is_allowed(&arbiter.check_json(&cached).await));

    replace(&keys, &jwks(&[&new]).to_string());
    let mut n = 2;
    let arbiter_ref = &arbiter;
    eventually("the new key", || {
        n += 1;
        let request = token(&new, n);
        async move { is_allowed(&arbiter_ref.check_json(&request).await) }
    })
    .await;
    assert!(
        !is_allowed(&arbiter.check_json(&token(&old, 999)).await),
        "the withdrawn key still verifies"
    );
    let response = arbiter.check_json(&cached).await;
    assert!(
        !is_allowed(&response),
        "a cached token still passes on a kid that now names another key"
    );
    assert_eq!(
        header_values(&denied_response(&response).headers, "x-arbiter-reason"),
        vec!["token_signature_invalid"]
    );
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_cached_token_without_kid_stops_passing_when_its_key_is_withdrawn() {
    use arbiter::identity::test_keys::{TestKey, jwks};
    use jsonwebtoken::Algorithm;
    let old = TestKey::generate("k", Algorithm::ES256).unwrap();
    let new = TestKey::generate("k", Algorithm::ES256).unwrap();
    let (arbiter, _dir, keys) = with_jwks_file(&old, "").await;
    // No kid in the header: the only fitting key verifies it.
    let token = token_with_kid(&old, None, "https://idp.test");
    let request = http_request(
        "GET",
        "/",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    );
    assert!(is_allowed(&arbiter.check_json(&request).await));
    assert!(
        is_allowed(&arbiter.check_json(&request).await),
        "from the cache"
    );

    replace(&keys, &jwks(&[&new]).to_string());
    eventually("the old key's withdrawal", || async {
        !is_allowed(&arbiter.check_json(&request).await)
    })
    .await;
    let response = arbiter.check_json(&request).await;
    assert_eq!(
        header_values(&denied_response(&response).headers, "x-arbiter-reason"),
        vec!["token_signature_invalid"]
    );
    arbiter.running.shutdown().await;
}

#[test]
fn sighup_reloads_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), versioned_policy("1")).unwrap();
    std::fs::write(
        dir.path().join("arbiter.toml"),
        "[server]\ngrpc_addr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[policy]\nreload_interval = \"0s\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let server = Binary::serve(&dir.path().join("arbiter.toml"));
    let admin = server.admin.clone();
    let before = blocking_get(&format!("http://{admin}/readyz"))["policy_revision"].clone();
    assert!(before.is_string());
    std::fs::write(dir.path().join("policies/p.rego"), versioned_policy("2")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        blocking_get(&format!("http://{admin}/readyz"))["policy_revision"],
        before,
        "no watching with reload_interval = 0s"
    );
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if blocking_get(&format!("http://{admin}/readyz"))["policy_revision"] != before {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn blocking_get(url: &str) -> serde_json::Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap()
    })
}
