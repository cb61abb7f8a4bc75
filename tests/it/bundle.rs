//! OPA bundles: served by a real HTTP server on 127.0.0.1 (polled with
//! `ETag`), read from a file, signed and verified, and refused when broken,
//! tampered with or unsigned, while the previous policies keep serving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::*;
use arbiter::policy::bundle::Bundle;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::Digest;

/// A `.tar.gz` with the given files, named with a leading `/` as `opa build` writes them.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        let full = format!("/{name}");
        header.as_old_mut().name[..full.len()].copy_from_slice(full.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn policy(allowed_path: &str) -> String {
    format!(
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.path == \"{allowed_path}\"\n\nallow if data.extra.open == input.attributes.request.http.path\n"
    )
}

/// A bundle allowing `path`, with a manifest and data (written compactly
/// with sorted keys, so their bytes are their canonical form).
fn bundle_files(allowed_path: &str, revision: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            ".manifest".into(),
            format!(r#"{{"revision":"{revision}","roots":["envoy","extra"]}}"#).into_bytes(),
        ),
        (
            "envoy/authz/policy.rego".into(),
            policy(allowed_path).into_bytes(),
        ),
        ("extra/data.json".into(), br#"{"open":"/public"}"#.to_vec()),
    ]
}

fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    tar_gz(&refs)
}

/// An ES256 signing key as `opa sign` would use it: private PEM to sign, public PEM to verify.
struct SigningKey {
    private: jsonwebtoken::EncodingKey,
    public_pem: String,
}

fn signing_key() -> SigningKey {
    let pair = rcgen::KeyPair::generate().unwrap();
    SigningKey {
        private: jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        public_pem: pair.public_key_pem(),
    }
}

/// Adds a `.signatures.json` over the files (SHA-256 of each file's bytes).
fn sign(
    files: &[(String, Vec<u8>)],
    key: &SigningKey,
    scope: Option<&str>,
) -> Vec<(String, Vec<u8>)> {
    let listed: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, data)| {
            let hash: String = sha2::Sha256::digest(data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            serde_json::json!({"name": name, "hash": hash, "algorithm": "SHA-256"})
        })
        .collect();
    let mut claims = serde_json::json!({"files": listed});
    if let Some(scope) = scope {
        claims["scope"] = scope.into();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("release".into());
    let token = jsonwebtoken::encode(&header, &claims, &key.private).unwrap();
    let mut signed = files.to_vec();
    signed.push((
        ".signatures.json".into(),
        serde_json::json!({"signatures": [token]})
            .to_string()
            .into_bytes(),
    ));
    signed
}

struct ServerState {
    body: Mutex<(Vec<u8>, String)>,
    status: Mutex<StatusCode>,
    requests: AtomicUsize,
    not_modified: AtomicUsize,
    authorizations: Mutex<Vec<String>>,
}

/// A bundle server: serves the current bundle with its `ETag` and answers
/// `304 Not Modified` to a matching `If-None-Match`.
struct BundleServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl BundleServer {
    async fn start(bundle: Vec<u8>, etag: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            body: Mutex::new((bundle, etag.to_owned())),
            status: Mutex::new(StatusCode::OK),
            requests: AtomicUsize::new(0),
            not_modified: AtomicUsize::new(0),
            authorizations: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/bundles/authz.tar.gz", get(serve_bundle))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/bundles/authz.tar.gz", self.addr)
    }

    fn publish(&self, bundle: Vec<u8>, etag: &str) {
        *self.state.body.lock().unwrap() = (bundle, etag.to_owned());
    }

    fn fail_with(&self, status: StatusCode) {
        *self.state.status.lock().unwrap() = status;
    }
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_bundle(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        state
            .authorizations
            .lock()
            .unwrap()
            .push(auth.to_str().unwrap().to_owned());
    }
    let status = *state.status.lock().unwrap();
    if status != StatusCode::OK {
        return (status, "unavailable").into_response();
    }
    let (body, etag) = state.body.lock().unwrap().clone();
    let quoted = format!("\"{etag}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == quoted.as_bytes())
    {
        state.not_modified.fetch_add(1, Ordering::SeqCst);
        return StatusCode::NOT_MODIFIED.into_response();
    }
    ([(header::ETAG, quoted)], body).into_response()
}

async fn allowed(arbiter: &TestArbiter, path: &str) -> bool {
    is_allowed(
        &arbiter
            .check_json(&http_request("GET", path, &[], ""))
            .await,
    )
}

#[tokio::test]
async fn a_bundle_server_is_polled_with_etags_and_new_bundles_replace_old_ones() {
    let server = BundleServer::start(pack(&bundle_files("/v1", "r1")), "r1").await;
    let token_dir = tempfile::tempdir().unwrap();
    std::fs::write(token_dir.path().join("token"), "s3cret\n").unwrap();
    let arbiter = TestArbiter::start(
        &[],
        &format!(
            "[policy.bundle]\nsource = \"{}\"\npoll_interval = \"1s\"\nbearer_token_file = \"{}\"\n",
            server.url(),
            token_dir.path().join("token").display()
        ),
    )
    .await;
    assert!(allowed(&arbiter, "/v1").await);
    assert!(allowed(&arbiter, "/public").await, "data from the bundle");
    assert!(!allowed(&arbiter, "/v2").await);
    assert_eq!(arbiter.readyz().await["bundle"]["revision"], "r1");
    assert!(
        poll_until(|| async { server.state.not_modified.load(Ordering::SeqCst) >= 1 }).await,
        "an unchanged bundle was downloaded again instead of 304"
    );
    assert!(
        server
            .state
            .authorizations
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "Bearer s3cret")
    );

    server.publish(pack(&bundle_files("/v2", "r2")), "r2");
    assert!(poll_until(|| async { allowed(&arbiter, "/v2").await }).await);
    assert!(!allowed(&arbiter, "/v1").await);
    let metrics = arbiter.metrics().await;
    assert!(
        metrics.contains("arbiter_bundle_activations_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("revision=\"r2\""), "{metrics}");

    // A broken policy in a new bundle: rejected with its file and line, r2 keeps serving.
    let mut broken = bundle_files("/v3", "r3");
    broken[1].1 = b"package envoy.authz\n\nallow if {\n".to_vec();
    server.publish(pack(&broken), "r3");
    assert!(
        poll_until(|| async {
            arbiter.readyz().await["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains("envoy/authz/policy.rego:"))
        })
        .await,
        "{}",
        arbiter.readyz().await
    );
    assert!(allowed(&arbiter, "/v2").await);
    assert!(!allowed(&arbiter, "/v3").await);

    // The server fails: still r2, failures counted.
    server.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    wait_for_metric(
        &arbiter.running.admin_addr.to_string(),
        "arbiter_bundle_fetch_failures_total",
        1.0,
    )
    .await;
    assert!(allowed(&arbiter, "/v2").await);
    assert_eq!(arbiter.readyz().await["bundle"]["revision"], "r2");
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn signed_bundles_are_verified_and_tampered_ones_refused() {
    let key = signing_key();
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("authz.tar.gz");
    let key_path = dir.path().join("bundle.pub.pem");
    std::fs::write(&key_path, &key.public_pem).unwrap();
    std::fs::write(
        &bundle_path,
        pack(&sign(&bundle_files("/v1", "r1"), &key, None)),
    )
    .unwrap();
    let arbiter = TestArbiter::start(
        &[],
        &format!(
            "[policy.bundle]\nsource = \"{}\"\npoll_interval = \"1s\"\n[policy.bundle.verification]\nkey_file = \"{}\"\nalgorithm = \"ES256\"\n",
            bundle_path.display(),
            key_path.display()
        ),
    )
    .await;
    assert!(allowed(&arbiter, "/v1").await);
    assert_eq!(arbiter.readyz().await["bundle"]["verified"], true);

    // A policy changed after signing.
    let mut tampered = sign(&bundle_files("/v1", "r1"), &key, None);
    tampered[1].1 = policy("/admin").into_bytes();
    std::fs::write(&bundle_path, pack(&tampered)).unwrap();
    assert!(
        poll_until(|| async {
            arbiter.readyz().await["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains("digest mismatch"))
        })
        .await
    );
    assert!(!allowed(&arbiter, "/admin").await);
    assert!(allowed(&arbiter, "/v1").await);

    // Unsigned.
    std::fs::write(&bundle_path, pack(&bundle_files("/admin", "r9"))).unwrap();
    assert!(
        poll_until(|| async {
            arbiter.readyz().await["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains("not signed"))
        })
        .await
    );
    assert!(!allowed(&arbiter, "/admin").await);

    // A properly signed new bundle goes in.
    std::fs::write(
        &bundle_path,
        pack(&sign(&bundle_files("/v2", "r2"), &key, None)),
    )
    .unwrap();
    assert!(poll_until(|| async { allowed(&arbiter, "/v2").await }).await);
    assert!(arbiter.readyz().await["last_reload_error"].is_null());
    arbiter.running.shutdown().await;
}

#[test]
fn bundles_that_do_not_verify_are_refused_with_the_reason() {
    let key = signing_key();
    let other = signing_key();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("pub.pem");
    std::fs::write(&key_path, &key.public_pem).unwrap();
    let verifier = arbiter::policy::bundle::BundleVerifier::from_config(
        &arbiter::config::BundleVerificationConfig {
            key_file: key_path,
            algorithm: "ES256".into(),
            scope: Some("write".into()),
        },
    )
    .unwrap();
    let read = |files: &[(String, Vec<u8>)]| {
        Bundle::read("b.tar.gz", &pack(files), Some(&verifier), 1 << 20)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let files = bundle_files("/v1", "r1");
    assert_eq!(read(&sign(&files, &key, Some("write"))), Ok(()));

    type Files = Vec<(String, Vec<u8>)>;
    let cases: Vec<(&str, Files, &str)> = vec![
        (
            "another key",
            sign(&files, &other, Some("write")),
            "does not verify",
        ),
        (
            "wrong scope",
            sign(&files, &key, Some("read")),
            "scope mismatch",
        ),
        (
            "an unsigned extra file",
            {
                let mut f = sign(&files, &key, Some("write"));
                f.push(("envoy/extra.rego".into(), b"package envoy.extra\n".to_vec()));
                f
            },
            "envoy/extra.rego is not covered",
        ),
        (
            "a signed file removed",
            {
                let mut f = sign(&files, &key, Some("write"));
                f.remove(2);
                f
            },
            "does not have: extra/data.json",
        ),
        (
            "two signatures",
            {
                let mut f = sign(&files, &key, Some("write"));
                let last = f.len() - 1;
                let token =
                    serde_json::from_slice::<serde_json::Value>(&f[last].1).unwrap()["signatures"]
                        [0]
                    .clone();
                f[last].1 = serde_json::json!({"signatures": [token, token]})
                    .to_string()
                    .into_bytes();
                f
            },
            "exactly one signature",
        ),
    ];
    for (what, files, expected) in cases {
        let error = read(&files).expect_err(what);
        assert!(error.contains(expected), "{what}: {error}");
    }
}

#[test]
fn hostile_and_unsupported_archives_are_refused() {
    let read = |bytes: &[u8], max: u64| {
        Bundle::read("b.tar.gz", bytes, None, max)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(
        read(b"not gzip at all", 1 << 20)
            .unwrap_err()
            .contains("not a gzipped tar")
    );
    // 4 MiB of zeros compresses to a few KiB; the limit is on what it inflates to.
    let bomb = tar_gz(&[("envoy/data.json", &vec![b' '; 4 << 20])]);
    assert!(bomb.len() < 64 * 1024);
    assert!(read(&bomb, 1 << 20).unwrap_err().contains("uncompressed"));
    let wasm = tar_gz(&[("policy.wasm", b"\0asm")]);
    assert!(read(&wasm, 1 << 20).unwrap_err().contains("Wasm"));
    let outside = tar_gz(&[
        (".manifest", br#"{"roots":["envoy"]}"#),
        ("other/p.rego", b"package other\n"),
    ]);
    assert!(
        read(&outside, 1 << 20)
            .unwrap_err()
            .contains("do not permit 'package other'")
    );
    // A path that climbs out of the bundle is refused, not read.
    let escape = tar_gz(&[(
        "envoy/../../etc/p.rego",
        b"package envoy.authz\nallow := true\n",
    )]);
    let err = read(&escape, 1 << 20).unwrap_err();
    assert!(err.contains("../../etc/p.rego"), "{err}");
    let overlapping = tar_gz(&[(".manifest", br#"{"roots":["a/b","a"]}"#)]);
    assert!(
        read(&overlapping, 1 << 20)
            .unwrap_err()
            .contains("overlapped")
    );
}

#[tokio::test]
async fn start_fails_clearly_when_no_bundle_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let toml = test_config_toml(
        "[policy.bundle]\nsource = \"http://127.0.0.1:9/authz.tar.gz\"\nstartup_timeout = \"300ms\"\nfetch_timeout = \"200ms\"\n",
    );
    let config =
        arbiter::config::Config::from_toml(&toml, std::path::Path::new("t.toml"), dir.path())
            .unwrap();
    let error = arbiter::start(&config)
        .await
        .err()
        .expect("started without policies");
    assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
}

#[tokio::test]
async fn local_policies_and_a_bundle_load_together() {
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("lib.tar.gz");
    std::fs::write(
        &bundle_path,
        tar_gz(&[
            (
                "lib/paths.rego",
                b"package lib.paths\n\nopen := {\"/health\"}\n",
            ),
            ("lib/teams/data.json", br#"["red","blue"]"#),
        ]),
    )
    .unwrap();
    let arbiter = TestArbiter::start(
        &[(
            "authz.rego",
            "package envoy.authz\n\nimport data.lib\n\ndefault allow := false\n\nallow if lib.paths.open[input.attributes.request.http.path]\n\nallow if {\n\tcount(lib.teams) == 2\n\tinput.attributes.request.http.path == \"/teams\"\n}\n",
        )],
        &format!(
            "[policy]\npaths = [\"policies\"]\n[policy.bundle]\nsource = \"{}\"\n",
            bundle_path.display()
        ),
    )
    .await;
    assert!(allowed(&arbiter, "/health").await);
    assert!(allowed(&arbiter, "/teams").await);
    assert!(!allowed(&arbiter, "/admin").await);
    arbiter.running.shutdown().await;
}
