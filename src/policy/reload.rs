//! Hot reload: policies, data and JWKS files are watched (by polling the
//! whole tree, so Kubernetes ConfigMap symlink swaps are seen) and reloaded
//! on change or on SIGHUP. A new set is loaded and compiled off the request
//! path, then swapped in whole; requests in flight finish on the set they
//! started with. A broken set is rejected with its file and line, and the
//! previous one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};

use super::bundle::{Bundle, BundleError, BundleVerifier, read_limited_file};
use super::{PolicyError, PolicySet};
use crate::config::{BundleConfig, BundleLocation, PolicyConfig};

/// What reloading has done, for metrics and readiness details.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub reloads: AtomicU64,
    pub failures: AtomicU64,
    /// The last failed reload's error, cleared by the next good one.
    pub last_error: ArcSwapOption<String>,
}

impl ReloadStatus {
    /// Reloads and rejected reloads of one kind of file (`policy`, `tls`).
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode_metrics(
        &self,
        encoder: &mut crate::metrics::DescriptorEncoder,
        what: &str,
    ) -> std::fmt::Result {
        crate::metrics::counter(
            encoder,
            &format!("arbiter_{what}_reloads_total"),
            &format!("Reloads that swapped in new {what} files."),
            self.reloads.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        crate::metrics::counter(
            encoder,
            &format!("arbiter_{what}_reload_failures_total"),
            &format!("Reloads rejected; the previous {what} files kept serving."),
            self.failures.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// A fingerprint of every file under some paths: names, sizes and
/// modification times. Cheap enough to take every second.
pub fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    fn visit(path: &Path, hasher: &mut Sha256, depth: usize) {
        // Follows symlinks (ConfigMaps are symlinks), with a depth bound against loops.
        let Ok(meta) = std::fs::metadata(path) else {
            hasher.update(b"missing");
            return;
        };
        hasher.update(path.to_string_lossy().as_bytes());
        if meta.is_dir() {
            if depth > 16 {
                return;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            for entry in entries {
                visit(&entry, hasher, depth + 1);
            }
        } else {
            hasher.update(meta.len().to_le_bytes());
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hasher.update(modified.to_le_bytes());
        }
    }
    let mut hasher = Sha256::new();
    for path in paths {
        visit(path, &mut hasher, 0);
    }
    hasher.finalize().into()
}

/// Loads the configured policies again and, if they compile, swaps them in.
///
/// # Errors
/// The new set does not load; the current one stays.
pub async fn reload(
    config: &PolicyConfig,
    bundle: Option<Arc<Bundle>>,
    current: &ArcSwap<PolicySet>,
    status: &ReloadStatus,
) -> Result<bool, PolicyError> {
    let owned = config.clone();
    let loaded =
        tokio::task::spawn_blocking(move || PolicySet::load_with(&owned, bundle.as_deref()))
            .await
            .map_err(|e| PolicyError::Prepare {
                message: format!("reload task failed: {e}"),
            })
            .and_then(|r| r);
    match loaded {
        Ok(set) => {
            status.last_error.store(None);
            if set.revision() == current.load().revision() {
                return Ok(false);
            }
            let old = current.load().revision().clone();
            tracing::info!(old = %old, new = %set.revision(), files = set.files().len(), "policies reloaded");
            current.store(Arc::new(set));
            status.reloads.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        }
        Err(e) => {
            status.failures.fetch_add(1, Ordering::Relaxed);
            status.last_error.store(Some(Arc::new(e.to_string())));
            tracing::error!(error = %e, revision = %current.load().revision(), "policy reload rejected; the previous policies keep serving");
            Err(e)
        }
    }
}

/// How often the watcher looks for changes; `None` for SIGHUP only.
pub fn watch_interval(config: &PolicyConfig) -> Option<Duration> {
    Some(config.reload_interval).filter(|d| !d.is_zero())
}

/// What a bundle fetch found.
enum Fetched {
    Unchanged,
    New {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// Fetches an OPA bundle from a file or an HTTP(S) server, and keeps the
/// one serving now. A fetched bundle replaces it only once it has been
/// verified and compiled with the local policies.
pub struct BundleFetcher {
    config: BundleConfig,
    location: BundleLocation,
    http: reqwest::Client,
    verifier: Option<Arc<BundleVerifier>>,
    /// The `ETag` of the bundle serving now, sent as `If-None-Match`.
    etag: std::sync::Mutex<Option<String>>,
    current: ArcSwapOption<Bundle>,
    pub fetch_failures: AtomicU64,
    pub activations: AtomicU64,
}

impl BundleFetcher {
    /// Activations, failed fetches and the bundle serving now.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode_metrics(
        &self,
        encoder: &mut crate::metrics::DescriptorEncoder,
    ) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        crate::metrics::counter(
            encoder,
            "arbiter_bundle_activations_total",
            "Bundles verified, compiled and swapped in.",
            self.activations.load(Relaxed),
        )?;
        crate::metrics::counter(
            encoder,
            "arbiter_bundle_fetch_failures_total",
            "Bundle fetches that failed (network, HTTP status, size).",
            self.fetch_failures.load(Relaxed),
        )?;
        if let Some(bundle) = self.current() {
            let source = self.source();
            let verified = bundle.verified.to_string();
            crate::metrics::gauges(
                encoder,
                "arbiter_bundle_info",
                "The bundle serving now.",
                &[(
                    [
                        ("source", source.as_str()),
                        ("revision", bundle.manifest.revision.as_str()),
                        ("verified", verified.as_str()),
                    ],
                    1,
                )],
            )?;
        }
        Ok(())
    }

    /// Reads the verification key, if one is configured.
    ///
    /// # Errors
    /// The verification key cannot be read.
    pub fn new(config: &BundleConfig, http: &reqwest::Client) -> Result<Self, BundleError> {
        let verifier = config
            .verification
            .as_ref()
            .map(BundleVerifier::from_config)
            .transpose()?
            .map(Arc::new);
        if verifier.is_none() {
            tracing::warn!(
                source = %config.location(),
                "bundle signatures are not verified; configure [policy.bundle.verification] so that only your pipeline can change policies"
            );
        }
        Ok(Self {
            location: config.location(),
            config: config.clone(),
            http: http.clone(),
            verifier,
            etag: std::sync::Mutex::new(None),
            current: ArcSwapOption::empty(),
            fetch_failures: AtomicU64::new(0),
            activations: AtomicU64::new(0),
        })
    }

    /// The bundle serving now.
    pub fn current(&self) -> Option<Arc<Bundle>> {
        self.current.load_full()
    }

    pub fn source(&self) -> String {
        self.location.to_string()
    }

    pub fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    fn error(&self, message: String) -> BundleError {
        BundleError {
            bundle: self.location.to_string(),
            message,
        }
    }

    async fn fetch(&self) -> Result<Fetched, BundleError> {
        match &self.location {
            BundleLocation::File(path) => {
                let path = path.clone();
                let max = self.config.max_bytes;
                let bytes = tokio::task::spawn_blocking(move || read_limited_file(&path, max))
                    .await
                    .map_err(|e| self.error(e.to_string()))?
                    .map_err(|e| self.error(e))?;
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                if self.current().is_some_and(|b| b.digest == digest) {
                    return Ok(Fetched::Unchanged);
                }
                Ok(Fetched::New { bytes, etag: None })
            }
            BundleLocation::Url(url) => self.download(url).await,
        }
    }

    async fn download(&self, url: &reqwest::Url) -> Result<Fetched, BundleError> {
        let mut request = self
            .http
            .get(url.clone())
            .timeout(self.config.fetch_timeout);
        let etag = self.etag.lock().ok().and_then(|e| e.clone());
        if let (Some(etag), true) = (etag, self.current().is_some()) {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(file) = &self.config.bearer_token_file {
            let token = std::fs::read_to_string(file)
                .map_err(|e| self.error(format!("bearer token file {}: {e}", file.display())))?;
            request = request.bearer_auth(token.trim());
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| self.error(e.to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::Unchanged);
        }
        if !response.status().is_success() {
            return Err(self.error(format!("the server answered {}", response.status())));
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.error(e.to_string()))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > self.config.max_bytes {
                return Err(self.error(format!("larger than {} bytes", self.config.max_bytes)));
            }
        }
        Ok(Fetched::New { bytes, etag })
    }

    /// Reads and verifies fetched bytes, and compiles them with the local
    /// policies, off the async workers.
    async fn build(
        &self,
        bytes: Vec<u8>,
        policy: &PolicyConfig,
    ) -> Result<(Arc<Bundle>, PolicySet), PolicyError> {
        let name = self.location.to_string();
        let max = self.config.max_bytes;
        let config = policy.clone();
        let verifier = self.verifier.clone();
        tokio::task::spawn_blocking(move || {
            let bundle = Arc::new(Bundle::read(&name, &bytes, verifier.as_deref(), max)?);
            let set = PolicySet::load_with(&config, Some(&bundle))?;
            Ok((bundle, set))
        })
        .await
        .map_err(|e| PolicyError::Prepare {
            message: format!("bundle load task failed: {e}"),
        })?
    }

    fn activate(&self, bundle: Arc<Bundle>, etag: Option<String>) {
        tracing::info!(
            source = %self.location,
            bundle_revision = %bundle.manifest.revision,
            verified = bundle.verified,
            "bundle activated"
        );
        self.current.store(Some(bundle));
        if let Ok(mut slot) = self.etag.lock() {
            *slot = etag;
        }
        self.activations.fetch_add(1, Ordering::Relaxed);
    }

    /// The first bundle, retried until `startup_timeout`, compiled with the
    /// local policies.
    ///
    /// # Errors
    /// No valid bundle arrived in time; the last error says why.
    pub async fn initial(&self, policy: &PolicyConfig) -> Result<PolicySet, PolicyError> {
        let deadline = tokio::time::Instant::now() + self.config.startup_timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let attempt = match self.fetch().await {
                Ok(Fetched::New { bytes, etag }) => {
                    self.build(bytes, policy).await.map(|built| (built, etag))
                }
                Ok(Fetched::Unchanged) => Err(PolicyError::Bundle(self.error("no bundle".into()))),
                Err(e) => Err(PolicyError::Bundle(e)),
            };
            match attempt {
                Ok(((bundle, set), etag)) => {
                    self.activate(bundle, etag);
                    return Ok(set);
                }
                // A bundle that arrived but is invalid will not fix itself by waiting.
                Err(
                    e @ (PolicyError::Compile { .. }
                    | PolicyError::Data { .. }
                    | PolicyError::MissingDecision { .. }
                    | PolicyError::Prepare { .. }),
                ) => return Err(e),
                Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(e),
                Err(e) => {
                    self.fetch_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in = ?pause, "waiting for the policy bundle");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Fetches once and, if there is a new bundle that verifies and
    /// compiles, swaps it in. A bad bundle is counted and logged, and the
    /// current set keeps serving.
    pub async fn poll(
        &self,
        policy: &PolicyConfig,
        current: &ArcSwap<PolicySet>,
        status: &ReloadStatus,
    ) -> bool {
        let (bytes, etag) = match self.fetch().await {
            Ok(Fetched::Unchanged) => return false,
            Ok(Fetched::New { bytes, etag }) => (bytes, etag),
            Err(e) => {
                self.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, revision = %current.load().revision(), "bundle fetch failed; the current policies keep serving");
                return false;
            }
        };
        match self.build(bytes, policy).await {
            Ok((bundle, set)) => {
                status.last_error.store(None);
                self.activate(bundle, etag);
                let old = current.load().revision().clone();
                if set.revision() != &old {
                    tracing::info!(old = %old, new = %set.revision(), "policies reloaded from the bundle");
                    current.store(Arc::new(set));
                    status.reloads.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                false
            }
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                status.last_error.store(Some(Arc::new(e.to_string())));
                tracing::error!(error = %e, revision = %current.load().revision(), "new bundle rejected; the previous policies keep serving");
                false
            }
        }
    }
}
