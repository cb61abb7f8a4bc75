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

use super::{PolicyError, PolicySet};
use crate::config::PolicyConfig;

/// What reloading has done, for metrics and readiness details.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub reloads: AtomicU64,
    pub failures: AtomicU64,
    /// The last failed reload's error, cleared by the next good one.
    pub last_error: ArcSwapOption<String>,
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
    current: &ArcSwap<PolicySet>,
    status: &ReloadStatus,
) -> Result<bool, PolicyError> {
    let owned = config.clone();
    let loaded = tokio::task::spawn_blocking(move || PolicySet::load(&owned))
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
