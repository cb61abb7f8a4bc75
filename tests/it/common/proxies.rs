//! Real nginx and Caddy (from Debian, installed by
//! `scripts/install-proxies.sh`) in front of an upstream, asking Arbiter's
//! forward-auth front door, configured from `deploy/nginx/arbiter.conf` and
//! `deploy/caddy/Caddyfile`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The binary `name` (on PATH or in /usr/sbin). When it is missing,
/// `scripts/install-proxies.sh` is run once; if that fails the test is
/// skipped (said on stderr), or fails under `REQUIRE_ENVOY=1`, which
/// `.ci/run` sets for every real part the tests start.
pub fn proxy_binary(name: &str) -> Option<PathBuf> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    if let Some(found) = find(name) {
        return Some(found);
    }
    INSTALL.call_once(install);
    let found = find(name);
    if found.is_none() {
        assert!(
            std::env::var("REQUIRE_ENVOY").as_deref() != Ok("1"),
            "REQUIRE_ENVOY=1 but no {name} found: run scripts/install-proxies.sh"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("\nSKIPPED: no {name}, and scripts/install-proxies.sh failed\n").as_bytes(),
        );
    }
    found
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn install() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("flock")
        .arg(std::env::temp_dir().join("arbiter-install-proxies.lock"))
        .arg("bash")
        .arg(root.join("scripts/install-proxies.sh"))
        .stdout(std::process::Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("scripts/install-proxies.sh failed: {status:?}\n").as_bytes(),
        );
    }
}

/// A running proxy; killed when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// nginx with `deploy/nginx/arbiter.conf` as its only server.
    pub async fn nginx(binary: &Path, arbiter: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let site = deployed(
            "deploy/nginx/arbiter.conf",
            &[
                ("127.0.0.1:8080", port),
                ("127.0.0.1:9292", arbiter.port()),
                ("127.0.0.1:8000", upstream.port()),
            ],
        );
        std::fs::write(dir.path().join("arbiter.conf"), site).unwrap();
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/arbiter.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self::running(child, dir, port, "nginx").await
    }

    /// Caddy with `deploy/caddy/Caddyfile`.
    pub async fn caddy(binary: &Path, arbiter: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let caddyfile = deployed(
            "deploy/caddy/Caddyfile",
            &[
                ("127.0.0.1:8080", port),
                ("127.0.0.1:9292", arbiter.port()),
                ("127.0.0.1:8000", upstream.port()),
            ],
        );
        std::fs::write(dir.path().join("Caddyfile"), caddyfile).unwrap();
        let child = Command::new(binary)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.path().join("Caddyfile"))
            // Caddy keeps state under XDG dirs; keep it in the test's.
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("caddy.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self::running(child, dir, port, "caddy").await
    }

    async fn running(mut child: Child, dir: tempfile::TempDir, port: u16, name: &str) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let logs: String = ["error.log", "caddy.log"]
                    .iter()
                    .filter_map(|f| std::fs::read_to_string(dir.path().join(f)).ok())
                    .collect();
                panic!("{name} exited before it listened: {status}\n{logs}");
            }
            assert!(Instant::now() < deadline, "{name} did not listen in 20 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self { addr, child, dir }
    }

    /// The proxy's own log, for a failing assertion's message.
    pub fn log(&self) -> String {
        ["error.log", "caddy.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A deployed file with each `from` address's port replaced.
fn deployed(file: &str, ports: &[(&str, u16)]) -> String {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    ports.iter().fold(text, |text, (from, to)| {
        assert!(text.contains(from), "{file} no longer has {from}");
        text.replace(from, &format!("127.0.0.1:{to}"))
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
