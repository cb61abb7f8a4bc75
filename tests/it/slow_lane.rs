//! A slow or hostile request never stalls the others: the real binary gets
//! 20 requests a second whose large body makes the policy run into its
//! time limit, beside 200 quick requests a second and `/readyz` polled
//! every 100 ms, for 8 seconds. The slow ones are parsed and evaluated in
//! the slow lane; the quick ones, and the health checks, stay fast.
//!
//! The bounds are orders of magnitude, loose enough for a shared CI
//! machine and a debug build; BENCHMARKS.md has the measured figures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use arbiter::proto::auth::CheckRequest;
use arbiter::proto::auth::authorization_client::AuthorizationClient;

const POLICY: &str = r#"
package envoy.authz

default allow := false

allow if input.attributes.request.http.method == "GET"

allow if {
	input.attributes.request.http.method == "POST"
	every item in input.parsed_body.items {
		regex.match(`^[a-z]+[0-9]*$`, item)
		count([x | some x in numbers.range(1, count(item) * 10)]) > 0
	}
}
"#;

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_never_stall_quick_ones_or_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), POLICY).unwrap();
    let config = dir.path().join("arbiter.toml");
    // A short queue, so that what the lane cannot take is refused at once
    // rather than waiting past the decision's deadline.
    std::fs::write(
        &config,
        test_config_toml(
            "[server]\ndecision_timeout = \"5s\"\n[server.slow_lane]\nqueue = 4\n\
             [policy]\neval_timeout = \"50ms\"\n[log]\nallow_sample_rate = 0.0\n",
        ),
    )
    .unwrap();
    let server = Binary::serve(&config);

    let items: Vec<String> = (0..40_000).map(|i| format!("item{i}")).collect();
    let body = serde_json::json!({ "items": items }).to_string();
    let slow: CheckRequest = serde_json::from_str(&http_request(
        "POST",
        "/upload",
        &[("content-type", "application/json")],
        &body,
    ))
    .unwrap();
    let quick: CheckRequest = serde_json::from_str(&http_request("GET", "/", &[], "")).unwrap();
    let connect = || async {
        AuthorizationClient::connect(format!("http://{}", server.grpc))
            .await
            .unwrap()
            .max_encoding_message_size(8 << 20)
    };
    // Separate connections: what is measured is Arbiter, not HTTP/2 framing.
    let (slow_client, quick_client) = (connect().await, connect().await);

    let seconds = 8;
    let slow_reasons = Arc::new(Mutex::new(Vec::new()));
    let quick_results = Arc::new(Mutex::new(Vec::new()));
    let ready_latency = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();

    let mut slow_ticker = tokio::time::interval(Duration::from_millis(50));
    let mut quick_ticker = tokio::time::interval(Duration::from_millis(5));
    let mut ready_ticker = tokio::time::interval(Duration::from_millis(100));
    let ready_url = format!("http://{}/readyz", server.admin);
    let http = reqwest::Client::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::select! {
            _ = slow_ticker.tick() => {
                let (mut client, request, reasons) = (slow_client.clone(), slow.clone(), Arc::clone(&slow_reasons));
                tasks.push(tokio::spawn(async move {
                    let response = client.check(request).await.unwrap().into_inner();
                    let reason = if is_allowed(&response) {
                        "allowed".to_owned()
                    } else {
                        header_values(&denied_response(&response).headers, "x-arbiter-reason")[0].to_owned()
                    };
                    reasons.lock().unwrap().push(reason);
                }));
            }
            _ = quick_ticker.tick() => {
                let (mut client, request, results) = (quick_client.clone(), quick.clone(), Arc::clone(&quick_results));
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let response = client.check(request).await.unwrap().into_inner();
                    results.lock().unwrap().push((sent.elapsed(), is_allowed(&response)));
                }));
            }
            _ = ready_ticker.tick() => {
                let (http, url, latency) = (http.clone(), ready_url.clone(), Arc::clone(&ready_latency));
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let status = http.get(url).send().await.unwrap().status();
                    latency.lock().unwrap().push(sent.elapsed());
                    assert_eq!(status, 200);
                }));
            }
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    let slow_reasons = slow_reasons.lock().unwrap().clone();
    let quick_results = quick_results.lock().unwrap().clone();
    let mut quick: Vec<Duration> = quick_results.iter().map(|(latency, _)| *latency).collect();
    let mut ready = ready_latency.lock().unwrap().clone();
    let (quick_p50, quick_p99) = (percentile(&mut quick, 0.5), percentile(&mut quick, 0.99));
    let ready_p99 = percentile(&mut ready, 0.99);
    let timed_out = slow_reasons
        .iter()
        .filter(|r| *r == "policy_timeout")
        .count();
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!(
        "{} slow requests ({timed_out} policy_timeout, the rest overloaded), {} quick: p50 {quick_p50:?}, p99 {quick_p99:?}; /readyz p99 {ready_p99:?}; slow-lane runs {:?}",
        slow_reasons.len(),
        quick_results.len(),
        metric(&metrics, "arbiter_slow_lane_runs_total")
    );
    assert!(
        slow_reasons.len() >= 100,
        "{} slow requests",
        slow_reasons.len()
    );
    assert!(
        quick_results.len() >= 1000,
        "{} quick requests",
        quick_results.len()
    );
    let wrong: Vec<&String> = slow_reasons
        .iter()
        .filter(|r| *r != "policy_timeout" && *r != "overloaded")
        .collect();
    assert!(
        wrong.is_empty(),
        "slow requests not denied as they should be: {wrong:?}"
    );
    assert!(
        timed_out > 0,
        "no slow request reached its policy: {slow_reasons:?}"
    );
    assert!(
        quick_results.iter().all(|(_, allowed)| *allowed),
        "a quick request was denied"
    );
    // Inline, the same load took quick requests to a p99 of 117 ms and
    // /readyz to 54 ms (BENCHMARKS.md); in the slow lane they stay an order
    // of magnitude below.
    assert!(
        quick_p99 < Duration::from_millis(30),
        "quick p99 {quick_p99:?}"
    );
    assert!(
        ready_p99 < Duration::from_millis(40),
        "/readyz p99 {ready_p99:?}"
    );
    assert!(
        metric(&metrics, "arbiter_slow_lane_runs_total").is_some_and(|n| n >= timed_out as f64),
        "{metrics}"
    );
}
