//! The soak: a real Envoy in front of the real `arbiter` binary, under steady
//! load for a long time (10 minutes by default) while the IdP rotates its
//! signing key and the policy is rewritten and reloaded. Every interval it
//! prints requests, errors, wrong decisions, latency percentiles and the
//! resident memory of Arbiter and Envoy; at the end it fails on any error,
//! any wrong decision, or Arbiter's memory growing once its token cache
//! is full.
//!
//! Ignored by `cargo test` because of its length; run it with
//! `scripts/soak.sh` (which sets the knobs below from its arguments):
//!
//! - `SOAK_SECONDS` (600), `SOAK_RATE` requests/s (400),
//! - `SOAK_ROTATE_SECONDS` (60), `SOAK_RELOAD_SECONDS` (15),
//! - `SOAK_REPORT_SECONDS` (30).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::envoy::{Envoy, Upstream, envoy_binary, resident_kib};
use crate::common::idp::Idp;
use crate::common::{Binary, test_config_toml};
use arbiter::identity::test_keys::{TestKey, jwks};
use hdrhistogram::Histogram;
use jsonwebtoken::Algorithm;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn policy(version: u64) -> String {
    format!(
        r#"
package envoy.authz

# Rewritten every reload period; the decisions never change, but every
# allowed request carries the version that decided it.
version := "{version}"

default allow := {{"allowed": false, "http_status": 403, "reason": "not_allowed"}}

allow := {{"allowed": true, "headers": {{"x-policy-version": version}}}} if {{
  input.identity.subject == "alice"
  input.parsed_path[0] == "api"
}}
"#
    )
}

/// What a request carries, and so what must happen to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A new token from the current key for every request: allowed.
    FreshToken,
    /// The current key's token, reused (the verified-token cache): allowed.
    CachedToken,
    /// No token: denied by the policy.
    Anonymous,
    /// The current key's kid, signed by a key the IdP never published.
    Forged,
    /// A good token on a path the policy denies.
    WrongPath,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::FreshToken,
        Kind::CachedToken,
        Kind::Anonymous,
        Kind::Forged,
        Kind::WrongPath,
    ];

    fn should_allow(self) -> bool {
        matches!(self, Kind::FreshToken | Kind::CachedToken)
    }
}

/// The keys in use: the IdP publishes `current` (and for a while the one
/// before it); clients sign with `current`.
struct Signer {
    current: TestKey,
    cached: String,
    forger: TestKey,
    issuer: String,
    generation: u64,
}

impl Signer {
    fn token(&self, key: &TestKey, sub: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": "api", "sub": sub, "iat": now, "exp": now + 600, "jti": jti,
        });
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(self.current.kid.clone());
        key.sign_with_header(&header, &claims).unwrap()
    }
}

#[derive(Default)]
struct Interval {
    requests: u64,
    errors: u64,
    wrong: u64,
    latency_us: Option<Histogram<u64>>,
}

fn resident_mib(pid: Option<u32>) -> f64 {
    pid.and_then(resident_kib)
        .map_or(0.0, |kib| kib as f64 / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes 10 minutes; run with scripts/soak.sh"]
async fn soak() {
    let Some(envoy_bin) = envoy_binary() else {
        panic!("the soak needs Envoy: run scripts/install-envoy.sh");
    };
    let seconds = knob("SOAK_SECONDS", 600);
    let rate = knob("SOAK_RATE", 400).max(1);
    let rotate = Duration::from_secs(knob("SOAK_ROTATE_SECONDS", 60).max(1));
    let reload = Duration::from_secs(knob("SOAK_RELOAD_SECONDS", 15).max(1));
    let report = Duration::from_secs(knob("SOAK_REPORT_SECONDS", 30).max(1));

    let first_key = TestKey::generate("k0", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&first_key])).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let policy_path = dir.path().join("policies/authz.rego");
    std::fs::write(&policy_path, policy(0)).unwrap();
    let config = dir.path().join("arbiter.toml");
    std::fs::write(
        &config,
        test_config_toml(&format!(
            "[policy]\nreload_interval = \"1s\"\n\
             [log]\nallow_sample_rate = 0.0\n\
             [[identity.jwt]]\nname = \"corp\"\nissuer = \"{}\"\naudiences = [\"api\"]\n\
             jwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\nkid_miss_min_interval = \"1s\"\n",
            idp.issuer(),
            idp.jwks_url()
        )),
    )
    .unwrap();
    let arbiter = Binary::serve(&config);
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&envoy_bin, arbiter.grpc.parse().unwrap(), upstream.addr).await;

    let signer = {
        let forger = TestKey::generate("k0", Algorithm::ES256).unwrap();
        let mut signer = Signer {
            cached: String::new(),
            current: first_key,
            forger,
            issuer: idp.issuer(),
            generation: 0,
        };
        signer.cached = signer.token(&signer.current, "alice");
        Arc::new(Mutex::new(signer))
    };

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Arc::new(Mutex::new(Interval::default()));
    let total_requests = Arc::new(AtomicU64::new(0));
    // Every policy version an allowed request reached the upstream with.
    let versions_seen = Arc::new(Mutex::new(std::collections::BTreeSet::<u64>::new()));
    let workers = 8u64;
    let per_worker = Duration::from_secs_f64(workers as f64 / rate as f64);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (stop, interval, signer) = (
            Arc::clone(&stop),
            Arc::clone(&interval),
            Arc::clone(&signer),
        );
        let total = Arc::clone(&total_requests);
        let versions = Arc::clone(&versions_seen);
        let base = envoy.url("");
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ticker = tokio::time::interval(per_worker);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = worker as usize;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let kind = Kind::ALL[n % Kind::ALL.len()];
                n += 1;
                let (path, token) = {
                    let s = signer.lock().unwrap();
                    match kind {
                        Kind::FreshToken => ("/api/orders", Some(s.token(&s.current, "alice"))),
                        Kind::CachedToken => ("/api/orders", Some(s.cached.clone())),
                        Kind::Anonymous => ("/api/orders", None),
                        Kind::Forged => ("/api/orders", Some(s.token(&s.forger, "alice"))),
                        Kind::WrongPath => ("/admin/users", Some(s.cached.clone())),
                    }
                };
                let mut request = http
                    .get(format!("{base}{path}"))
                    .timeout(Duration::from_secs(5));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let sent = Instant::now();
                let answer = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        response.text().await.map(|body| (status, body))
                    }
                    Err(e) => Err(e),
                };
                let latency = sent.elapsed();
                let status = answer.as_ref().map(|(status, _)| *status);
                if let Ok((200, body)) = &answer {
                    let version = serde_json::from_str::<serde_json::Value>(body)
                        .ok()
                        .and_then(|echo| {
                            echo["headers"]["x-policy-version"][0]
                                .as_str()?
                                .parse()
                                .ok()
                        });
                    match version {
                        Some(v) => {
                            versions.lock().unwrap().insert(v);
                        }
                        None => eprintln!("allowed without a policy version: {body}"),
                    }
                }
                let (error, wrong) = match status {
                    Ok(200) => (false, !kind.should_allow()),
                    Ok(401 | 403) => (false, kind.should_allow()),
                    _ => (true, false),
                };
                if error || wrong {
                    eprintln!("{kind:?} -> {status:?}");
                }
                total.fetch_add(1, Ordering::Relaxed);
                let mut i = interval.lock().unwrap();
                i.requests += 1;
                i.errors += u64::from(error);
                i.wrong += u64::from(wrong);
                let histogram = i
                    .latency_us
                    .get_or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).unwrap());
                let _ = histogram.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
        }));
    }

    println!(
        "soak: {seconds} s at {rate} requests/s through Envoy; key rotation every {rotate:?}, \
         policy reload every {reload:?}"
    );
    println!(
        "{:>6} {:>8} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>5} {:>7}",
        "t(s)",
        "requests",
        "errors",
        "wrong",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "arbiter",
        "envoy",
        "keys",
        "reloads"
    );
    let (mut errors, mut wrong, mut rss) = (0u64, 0u64, Vec::new());
    let (mut next_rotate, mut next_reload, mut next_report) = (rotate, reload, report);
    let mut reloads = 0u64;
    // When each version was written, to judge which ones had time to be seen.
    let mut written = vec![(0u64, Duration::ZERO)];
    let end = Duration::from_secs(seconds);
    while started.elapsed() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = started.elapsed();
        if now >= next_rotate {
            next_rotate += rotate;
            // Publish the new key beside the current one, then sign with it;
            // the key before that leaves the JWKS.
            let mut s = signer.lock().unwrap();
            s.generation += 1;
            let new = TestKey::generate(&format!("k{}", s.generation), Algorithm::ES256).unwrap();
            idp.set_keys(jwks(&[&s.current, &new]));
            s.current = new;
            s.forger = TestKey::generate(&s.current.kid, Algorithm::ES256).unwrap();
            s.cached = s.token(&s.current, "alice");
        }
        if now >= next_reload {
            next_reload += reload;
            reloads += 1;
            std::fs::write(&policy_path, policy(reloads)).unwrap();
            written.push((reloads, now));
        }
        if now >= next_report || now >= end {
            next_report += report;
            let finished = std::mem::take(&mut *interval.lock().unwrap());
            errors += finished.errors;
            wrong += finished.wrong;
            let arbiter_rss = resident_mib(Some(arbiter.child.id()));
            rss.push((now, arbiter_rss));
            let q = |h: &Option<Histogram<u64>>, q: f64| {
                h.as_ref()
                    .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
            };
            let max = finished
                .latency_us
                .as_ref()
                .map_or(0.0, |h| h.max() as f64 / 1000.0);
            println!(
                "{:>6} {:>8} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.1}Mi {:>7.1}Mi {:>5} {:>7}",
                now.as_secs(),
                finished.requests,
                finished.errors,
                finished.wrong,
                q(&finished.latency_us, 0.5),
                q(&finished.latency_us, 0.9),
                q(&finished.latency_us, 0.99),
                q(&finished.latency_us, 0.999),
                max,
                arbiter_rss,
                resident_mib(envoy.pid()),
                signer.lock().unwrap().generation + 1,
                reloads
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let total = total_requests.load(Ordering::Relaxed);
    let metrics = reqwest::get(format!("http://{}/metrics", arbiter.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let policy_reloads = counter("arbiter_policy_reloads_total");
    let jwks_fetches = counter("arbiter_jwks_fetches_total");
    println!(
        "total: {total} requests, {errors} errors, {wrong} wrong decisions; \
         Arbiter reloaded its policy {policy_reloads} times and fetched keys {jwks_fetches} times"
    );
    assert_eq!(errors, 0, "requests that failed");
    assert_eq!(wrong, 0, "requests decided wrongly");
    assert!(total > 0);
    // Every rewrite was loaded and decided requests: a lost reload shows as
    // a version no allowed request ever carried. The last one may have been
    // written too close to the end to be polled and used.
    let seen = versions_seen.lock().unwrap().clone();
    let due: Vec<u64> = written
        .iter()
        .filter(|(_, at)| *at + Duration::from_secs(5) <= end)
        .map(|(v, _)| *v)
        .collect();
    let missed: Vec<u64> = due.iter().copied().filter(|v| !seen.contains(v)).collect();
    assert!(
        missed.is_empty(),
        "policy versions never seen deciding: {missed:?} (seen {seen:?})"
    );
    assert!(
        policy_reloads >= (due.len() - 1) as f64,
        "{policy_reloads} reloads counted for {} rewrites",
        due.len() - 1
    );
    // Each rotation makes clients sign with a kid Arbiter has not seen: a
    // fetch on the kid miss, at least one per rotation plus the first.
    let rotations = signer.lock().unwrap().generation;
    assert!(
        jwks_fetches >= (rotations + 1) as f64,
        "{jwks_fetches} key fetches for {rotations} rotations"
    );
    // Memory flat: the verified-token cache (10,000 tokens) fills in the
    // first minutes, as a fifth of the requests bring a new token; from
    // then on resident memory must not grow.
    let settled = Duration::from_secs(10_000 * Kind::ALL.len() as u64 / rate + 30);
    let after: Vec<f64> = rss
        .iter()
        .filter(|(at, _)| *at >= settled)
        .map(|(_, mib)| *mib)
        .collect();
    if let [start, rest @ ..] = after.as_slice()
        && rest.len() >= 2
    {
        let peak = rest.iter().copied().fold(*start, f64::max);
        println!(
            "Arbiter resident memory once the token cache is full ({settled:?}): \
             {start:.1} MiB, peak {peak:.1} MiB after"
        );
        assert!(peak - start < 4.0, "memory grew: {rss:?}");
    } else {
        println!("too short to judge memory once the token cache is full ({settled:?})");
    }
}
