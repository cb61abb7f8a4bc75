//! Helpers shared by the integration tests: a real Arbiter on 127.0.0.1:0
//! with policies written to a temporary directory, and a real gRPC client.

pub mod envoy;
pub mod idp;
pub mod proxies;

use std::path::Path;

use arbiter::proto::auth::authorization_client::AuthorizationClient;
use arbiter::proto::auth::check_response::HttpResponse;
use arbiter::proto::auth::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use arbiter::proto::core::HeaderValueOption;
use arbiter::{Config, Running};
use tonic::transport::Channel;

/// A running Arbiter and the directory its policies live in.
pub struct TestArbiter {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl TestArbiter {
    /// Starts Arbiter with the given policy files and extra TOML config.
    pub async fn start(files: &[(&str, &str)], extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join("policies").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let toml = test_config_toml(extra_toml);
        let config = Config::from_toml(&toml, Path::new("test.toml"), dir.path()).unwrap();
        let running = arbiter::start(&config).await.unwrap();
        Self { running, dir }
    }

    pub async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.running.grpc_addr))
            .await
            .unwrap()
    }

    /// A URL on the HTTP front doors' listener (`[http] addr` must be set).
    pub fn http_url(&self, path: &str) -> String {
        let addr = self
            .running
            .http_addr
            .expect("the test config sets [http] addr");
        format!("http://{addr}{path}")
    }

    /// The admin endpoint `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.running.admin_addr);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// The admin endpoint `/readyz`, parsed.
    pub async fn readyz(&self) -> serde_json::Value {
        let url = format!("http://{}/readyz", self.running.admin_addr);
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Decides a GET carrying `token` as a bearer token: `None` when
    /// allowed, else the deny's reason.
    pub async fn bearer_reason(&self, token: &str) -> Option<String> {
        let authorization = format!("Bearer {token}");
        let response = self
            .check_json(&http_request(
                "GET",
                "/",
                &[("authorization", &authorization)],
                "",
            ))
            .await;
        if is_allowed(&response) {
            return None;
        }
        let denied = denied_response(&response);
        header_values(&denied.headers, "x-arbiter-reason")
            .first()
            .map(|r| (*r).to_owned())
    }

    pub async fn check_json(&self, json: &str) -> CheckResponse {
        let request: CheckRequest = serde_json::from_str(json).unwrap();
        self.client()
            .await
            .check(request)
            .await
            .unwrap()
            .into_inner()
    }
}

/// The real `arbiter` binary, serving with a config file; killed when dropped.
pub struct Binary {
    pub child: std::process::Child,
    pub grpc: String,
    pub admin: String,
    /// Every stdout line so far (JSON logs).
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts `arbiter serve --config <config>` and waits for "arbiter serving".
    pub fn serve(config: &Path) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (grpc, admin) = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "arbiter serving").then(|| {
                    (
                        v["grpc_addr"].as_str().unwrap().to_owned(),
                        v["admin_addr"].as_str().unwrap().to_owned(),
                    )
                })
            });
            if let Some(addrs) = found {
                break addrs;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("arbiter exited: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "arbiter did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Self {
            child,
            grpc,
            admin,
            lines,
        }
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's config with both listeners on free ports of 127.0.0.1.
/// Policies come from `policies/` beside the config.
pub fn test_config_toml(extra: &str) -> String {
    let mut table: toml::Table = extra.parse().unwrap();
    for (section, key) in [("server", "grpc_addr"), ("admin", "addr")] {
        let section = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        section
            .as_table_mut()
            .unwrap()
            .entry(key)
            .or_insert_with(|| toml::Value::String("127.0.0.1:0".into()));
    }
    table.to_string()
}

pub fn is_allowed(response: &CheckResponse) -> bool {
    let ok_status = response.status.as_ref().map(|s| s.code) == Some(0);
    let ok_body = matches!(response.http_response, Some(HttpResponse::OkResponse(_)));
    assert_eq!(
        ok_status, ok_body,
        "status and response kind disagree: {response:?}"
    );
    ok_status
}

pub fn ok_response(response: &CheckResponse) -> &OkHttpResponse {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an ok_response, got {other:?}"),
    }
}

pub fn denied_response(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a denied_response, got {other:?}"),
    }
}

pub fn header_values<'a>(headers: &'a [HeaderValueOption], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .filter(|h| h.key == name)
        .map(|h| h.value.as_str())
        .collect()
}

/// Seconds since the Unix epoch, for token claims.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A compact CheckRequest in the protobuf JSON mapping.
pub fn http_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut header_map = serde_json::Map::new();
    header_map.insert(":method".into(), method.into());
    header_map.insert(":path".into(), path.into());
    for (k, v) in headers {
        header_map.insert((*k).into(), (*v).into());
    }
    serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.5", "portValue": 40000}}},
            "request": {"http": {
                "method": method, "path": path, "host": "example.test", "protocol": "HTTP/1.1",
                "headers": header_map, "body": body
            }}
        }
    })
    .to_string()
}

pub use arbiter::metrics::sum_of as metric;

/// Waits until the admin endpoint at `admin` reports `name` at `value` or
/// more: the event a test waits for, rather than a sleep.
pub async fn wait_for_metric(admin: &str, name: &str, value: f64) {
    let url = format!("http://{admin}/metrics");
    let reached = poll_until(|| {
        let url = url.clone();
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            metric(&text, name).is_some_and(|v| v >= value)
        }
    })
    .await;
    assert!(reached, "{name} never reached {value}");
}

/// Polls `probe` every 100 ms for up to 10 s until it holds.
pub async fn poll_until<F, Fut>(mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if probe().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// A token for `issuer` and audience `api`, valid for ten minutes, signed by
/// `key` with the given `kid` in its header (`None`: no kid at all).
pub fn token_with_kid(
    key: &arbiter::identity::test_keys::TestKey,
    kid: Option<&str>,
    issuer: &str,
) -> String {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = kid.map(str::to_owned);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    key.sign_with_header(
        &header,
        &serde_json::json!({"iss": issuer, "aud": "api", "exp": exp}),
    )
    .unwrap()
}

/// An HS256 token as the OPA Envoy tutorial makes them: `role`, `sub`, and
/// `nbf`/`exp` around now (`exp_offset` seconds from now).
pub fn hs256(secret: &str, role: &str, sub: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"role": role, "sub": sub, "nbf": now - 60, "exp": now + exp_offset}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
