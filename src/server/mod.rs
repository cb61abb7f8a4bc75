//! The gRPC service Envoy calls, and the wiring of one running Arbiter:
//! request -> context -> input -> policy -> decision -> response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::policy::{PolicyError, PolicySet};
use crate::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use crate::proto::auth::{CheckRequest, CheckResponse};

pub mod authzen;
pub mod front_doors;
pub mod tls;

pub use crate::pipeline::{Checked, Pipeline, lane};

/// Why Arbiter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("revocation list: {0}")]
    Revocation(#[from] crate::identity::revocation::RevocationError),
    #[error(transparent)]
    Introspection(#[from] crate::identity::introspection::IntrospectionError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Whether Arbiter should be sent traffic: policies are loaded and it is not shutting down.
#[derive(Debug, Default)]
pub struct Readiness {
    policies_loaded: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.policies_loaded.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }
}

/// A running Arbiter's state: the decision pipeline, and what operating it
/// needs (readiness, reloads, the bundle source).
pub struct Shared {
    pub pipeline: Pipeline,
    pub reload_status: crate::policy::reload::ReloadStatus,
    /// The OPA bundle source, if one is configured.
    pub bundle: Option<Arc<crate::policy::reload::BundleFetcher>>,
    /// Policy reloads (files or bundle) run one at a time, so that a slow
    /// one cannot swap in a set older than a faster one's.
    reload_lock: tokio::sync::Mutex<()>,
    /// Reloads of the gRPC listener's certificates.
    pub tls_reload_status: crate::policy::reload::ReloadStatus,
    pub readiness: Readiness,
    /// The rule that answers AuthZEN evaluations.
    pub authzen_decision: crate::config::DecisionPath,
    /// The receiver of the IdP's Security Event Tokens, when configured.
    pub ssf: Option<crate::identity::ssf::SsfReceiver>,
    /// The headers forward-auth proxies describe the original request in.
    pub forward_auth_headers: crate::config::ForwardAuthHeaders,
    /// Every part's metrics, registered once the state is shared.
    metrics: std::sync::OnceLock<crate::metrics::Registry>,
}

impl Shared {
    /// State for a policy set that has already been loaded. Starts the
    /// identity providers' key refresh, so it must run inside Tokio.
    pub fn new(
        config: &Config,
        policies: PolicySet,
        http: &reqwest::Client,
        revocations: Arc<crate::identity::revocation::Revocations>,
        introspectors: Vec<crate::identity::introspection::Introspector>,
    ) -> Self {
        let ssf = config.identity.ssf.as_ref().map(|ssf| {
            crate::identity::ssf::SsfReceiver::start(ssf, http, Arc::clone(&revocations))
        });
        Self {
            ssf,
            pipeline: Pipeline::new(config, policies, http)
                .with_revocations(revocations)
                .with_introspectors(introspectors),
            reload_status: Default::default(),
            tls_reload_status: Default::default(),
            bundle: None,
            reload_lock: tokio::sync::Mutex::new(()),
            readiness: Readiness {
                policies_loaded: AtomicBool::new(true),
                shutting_down: AtomicBool::new(false),
            },
            authzen_decision: config.authzen.decision.clone(),
            forward_auth_headers: config.http.forward_auth_headers,
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Registers each part's metrics; the registry holds the state weakly.
    pub fn register_metrics(self: &Arc<Self>) {
        use crate::metrics::{DescriptorEncoder, Part, Registry};
        type Encode = fn(&Shared, &mut DescriptorEncoder) -> std::fmt::Result;
        let parts: [Encode; 8] = [
            |s, e| s.pipeline.metrics.encode(e),
            |s, e| s.pipeline.decision_log.encode_metrics(e),
            |s, e| s.pipeline.lane.encode_metrics(e),
            |s, e| s.pipeline.authenticator.encode_metrics(e),
            |s, e| s.reload_status.encode_metrics(e, "policy"),
            |s, e| s.tls_reload_status.encode_metrics(e, "tls"),
            |s, e| s.bundle.as_ref().map_or(Ok(()), |b| b.encode_metrics(e)),
            Shared::encode_state,
        ];
        let mut registry = Registry::default();
        for encode in parts {
            registry.register_collector(Box::new(Part::new(Arc::downgrade(self), encode)));
        }
        let _ = self.metrics.set(registry);
    }

    /// The policy set serving (its engine and revision, from one load) and
    /// whether Arbiter is ready.
    fn encode_state(&self, encoder: &mut crate::metrics::DescriptorEncoder) -> std::fmt::Result {
        let policies = self.pipeline.policies.load();
        policies.engine_status().encode_metrics(encoder)?;
        let revision = policies.revision().to_string();
        crate::metrics::gauges(
            encoder,
            "arbiter_policy_revision",
            "The loaded policy revision.",
            &[([("revision", revision.as_str())], 1)],
        )?;
        crate::metrics::gauge(
            encoder,
            "arbiter_ready",
            "Whether Arbiter is ready to decide.",
            u64::from(self.is_ready()),
        )
    }

    /// The same state, with policies that came (partly) from a bundle.
    #[must_use]
    pub fn with_bundle(mut self, fetcher: Arc<crate::policy::reload::BundleFetcher>) -> Self {
        self.bundle = Some(fetcher);
        self
    }

    /// Whether every part is ready: policies loaded, every provider's keys
    /// fetched, and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready() && self.pipeline.authenticator.is_ready()
    }
}

/// What the admin endpoints show of this Arbiter.
impl crate::admin::Operations for Shared {
    fn readiness(&self) -> (bool, serde_json::Value) {
        let ready = self.is_ready();
        let authenticator = &self.pipeline.authenticator;
        let providers: serde_json::Map<String, serde_json::Value> = authenticator
            .key_stores()
            .map(|(name, store)| {
                (
                    name.to_owned(),
                    serde_json::json!({
                        "keys_loaded": store.has_keys(),
                        "key_age_seconds": store.key_age().map(|a| a.as_secs()),
                    }),
                )
            })
            .collect();
        let policies = self.pipeline.policies.load();
        let engine = policies.engine_status();
        let revocations = authenticator.revocations();
        let body = serde_json::json!({
            "ready": ready,
            "policy_revision": policies.revision().to_string(),
            "engine": engine.engine,
            "fallback_reason": engine.fallback_reason,
            "identity_providers": providers,
            "last_reload_error": self.reload_status.last_error.load().as_deref().cloned(),
            "last_tls_reload_error": self.tls_reload_status.last_error.load().as_deref().cloned(),
            "revocation": {
                "file": revocations.file(),
                "entries": revocations.entries(),
                "from_bundle": policies.revocations().map(|list| list.len()),
                "last_error": revocations.last_error(),
            },
            "bundle": self.bundle.as_ref().map(|fetcher| {
                let current = fetcher.current();
                serde_json::json!({
                    "source": fetcher.source(),
                    "revision": current.as_ref().map(|b| b.manifest.revision.clone()),
                    "verified": current.as_ref().is_some_and(|b| b.verified),
                })
            }),
        });
        (ready, body)
    }

    fn metrics_text(&self) -> String {
        self.metrics
            .get()
            .map(crate::metrics::encode)
            .unwrap_or_default()
    }
}

/// `envoy.service.auth.v3.Authorization`, a thin adapter over [`Pipeline::check_within_limits`].
#[derive(Clone)]
pub struct CheckService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Answered a tenth early, so that the deny reaches Envoy in time.
        let deadline = grpc_timeout(request.metadata()).map(|t| t.mul_f64(0.9));
        let response = self
            .shared
            .pipeline
            .check_within_limits(request.into_inner(), deadline)
            .await;
        Ok(Response::new(response))
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`,
/// units H M S m u n), if it sent one that parses.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A started Arbiter: its bound addresses and a handle to stop it.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTP front doors' address, when `[http] addr` is set.
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    admin_task: JoinHandle<std::io::Result<()>>,
    http_task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Turns readiness off, stops accepting requests, lets the ones in
    /// flight finish, then returns.
    pub async fn shutdown(self) {
        self.shared
            .readiness
            .shutting_down
            .store(true, Ordering::Release);
        publish_health(&self.health, false).await;
        let _ = self.shutdown.send(true);
        match self.grpc_task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
            Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
            Ok(Ok(())) => {}
        }
        let _ = self.admin_task.await;
        if let Some(task) = self.http_task {
            match task.await {
                Ok(Err(e)) => tracing::error!(error = %e, "HTTP front doors failed"),
                Err(e) => tracing::error!(error = %e, "HTTP front doors task failed"),
                Ok(Ok(())) => {}
            }
        }
        self.shared
            .pipeline
            .decision_log
            .flush(std::time::Duration::from_secs(5))
            .await;
        tracing::info!("arbiter stopped");
    }
}

/// Loads policies, binds both listeners and starts serving.
///
/// # Errors
/// The policies do not load, or a listener cannot be bound.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    if config.decision.dry_run {
        tracing::warn!("DRY RUN: every deny is answered with an allow and only logged");
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .user_agent(concat!("arbiter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError::Http(e.to_string()))?;
    let (policies, bundle) = match &config.policy.bundle {
        Some(bundle) => {
            let fetcher = Arc::new(
                crate::policy::reload::BundleFetcher::new(bundle, &http)
                    .map_err(PolicyError::from)?,
            );
            (fetcher.initial(&config.policy).await?, Some(fetcher))
        }
        None => (PolicySet::load(&config.policy)?, None),
    };
    tracing::info!(
        revision = %policies.revision(),
        files = policies.files().len(),
        decision = %config.policy.decision,
        "policies loaded"
    );
    let revocations = Arc::new(crate::identity::revocation::Revocations::load(
        config
            .identity
            .revocation
            .as_ref()
            .map(|r| r.file.as_path()),
    )?);
    let introspectors = config
        .identity
        .introspection
        .iter()
        .map(|i| {
            crate::identity::introspection::Introspector::new(
                i,
                &http,
                config.identity.token_cache_size,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut shared = Shared::new(config, policies, &http, revocations, introspectors);
    if let Some(fetcher) = bundle {
        shared = shared.with_bundle(fetcher);
    }
    let shared = Arc::new(shared);
    shared.register_metrics();
    if !shared
        .pipeline
        .authenticator
        .wait_ready(config.identity.startup_grace)
        .await
    {
        tracing::warn!(
            grace = ?config.identity.startup_grace,
            "not every identity provider's keys could be fetched; serving, but not ready, and denying their tokens until they arrive"
        );
    }

    let grpc_listener = bind("gRPC", config.server.grpc_addr).await?;
    let admin_listener = bind("admin", config.admin.addr).await?;
    let grpc_addr = local_addr("gRPC", config.server.grpc_addr, &grpc_listener)?;
    let admin_addr = local_addr("admin", config.admin.addr, &admin_listener)?;
    let http_listener = match config.http.addr {
        Some(addr) => {
            let listener = bind("HTTP front doors", addr).await?;
            let bound = local_addr("HTTP front doors", addr, &listener)?;
            Some((listener, bound))
        }
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let (shutdown, shutdown_rx) = watch::channel(false);
    publish_health(&health, shared.is_ready()).await;
    tokio::spawn(track_health(
        health.clone(),
        Arc::clone(&shared),
        shutdown_rx.clone(),
    ));
    // Listening for SIGHUP starts here, before "serving" is announced, so
    // that a SIGHUP sent after that never meets the default action (exit).
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
        .ok();
    #[cfg(not(unix))]
    let hangup = None;
    let tls = match &config.server.tls {
        Some(files) => Some(Arc::new(tls::ReloadingTls::load(files)?)),
        None => None,
    };
    let http_tls = match &config.http.tls {
        Some(files) => Some(Arc::new(tls::ReloadingTls::load(files)?)),
        None => None,
    };
    if let Some(fetcher) = shared.bundle.clone() {
        tokio::spawn(poll_bundle(
            fetcher,
            Arc::clone(&shared),
            config.policy.clone(),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(watch_for_reload(
        Arc::clone(&shared),
        config.policy.clone(),
        tls.iter().chain(http_tls.iter()).cloned().collect(),
        hangup,
        shutdown_rx.clone(),
    ));
    let service = AuthorizationServer::new(CheckService {
        shared: Arc::clone(&shared),
    })
    .max_decoding_message_size(config.server.max_request_bytes);
    let mut grpc_shutdown = shutdown_rx.clone();
    let stopped = async move {
        let _ = grpc_shutdown.wait_for(|stop| *stop).await;
    };
    let refusals = Arc::clone(&shared);
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            move |response: http::Response<tonic::body::Body>| {
                record_refusal(&refusals, &response);
                response
            },
        ))
        .add_service(health_service)
        .add_service(service);
    let grpc_task = match tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            tls::incoming(grpc_listener, tls, shutdown_rx.clone()),
            stopped,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped,
        )),
    };
    let http_addr = http_listener.as_ref().map(|(_, addr)| *addr);
    let http_task = match http_listener {
        Some((listener, _)) => {
            let listening = match &http_tls {
                Some(tls) => front_doors::Listening::Tls(
                    tls::TlsListener::new(listener, Arc::clone(tls), shutdown_rx.clone()).map_err(
                        |source| StartError::Bind {
                            what: "HTTP front doors",
                            addr: http_addr.unwrap_or(config.admin.addr),
                            source,
                        },
                    )?,
                ),
                None => front_doors::Listening::Plain(listener),
            };
            Some(tokio::spawn(front_doors::serve(
                listening,
                Arc::clone(&shared),
                config.server.max_request_bytes,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    let operations: Arc<dyn crate::admin::Operations> = Arc::clone(&shared) as _;
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, operations, shutdown_rx));
    tracing::info!(%grpc_addr, %admin_addr, http_addr = ?http_addr, "arbiter serving");
    Ok(Running {
        grpc_addr,
        admin_addr,
        http_addr,
        http_task,
        shared,
        shutdown,
        health,
        grpc_task,
        admin_task,
    })
}

async fn publish_health(health: &tonic_health::server::HealthReporter, ready: bool) {
    let status = if ready {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <AuthorizationServer<CheckService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Reloads policies and JWKS files when they change on disk (polled every
/// `reload_interval`) or on SIGHUP, until shutdown.
#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

/// A call that tonic answered with an error status before it reached
/// [`CheckService`] (too large, not decodable, unknown method) is denied by
/// Envoy without a decision log entry, so it is logged and counted here.
fn record_refusal(shared: &Shared, response: &http::Response<tonic::body::Body>) {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return;
    };
    if status.code() == tonic::Code::Ok {
        return;
    }
    shared.pipeline.metrics.record_refusal(status.code());
    tracing::warn!(
        code = ?status.code(),
        message = status.message(),
        "call refused before a decision"
    );
}

async fn watch_for_reload(
    shared: Arc<Shared>,
    policy: crate::config::PolicyConfig,
    tls: Vec<Arc<tls::ReloadingTls>>,
    mut hangup: Option<Hangup>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::policy::reload;
    let key_files = shared.pipeline.authenticator.key_files();
    let mut policy_print = reload::fingerprint(&policy.paths);
    let mut keys_print = reload::fingerprint(&key_files);
    let tls_files: Vec<_> = tls.iter().flat_map(|t| t.paths()).collect();
    let mut tls_print = reload::fingerprint(&tls_files);
    let interval = reload::watch_interval(&policy);
    loop {
        #[cfg(unix)]
        let signal = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signal = {
            let _ = &mut hangup;
            std::future::pending::<Option<()>>()
        };
        let tick = async {
            match interval {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = signal => {
                tracing::info!("SIGHUP: reloading policies and key files");
                true
            }
            () = tick => false,
        };
        if forced && let Some(fetcher) = &shared.bundle {
            let _guard = shared.reload_lock.lock().await;
            fetcher
                .poll(&policy, &shared.pipeline.policies, &shared.reload_status)
                .await;
        }
        let now = reload::fingerprint(&policy.paths);
        if forced || now != policy_print {
            policy_print = now;
            let _guard = shared.reload_lock.lock().await;
            let bundle = shared.bundle.as_ref().and_then(|b| b.current());
            let _ = reload::reload(
                &policy,
                bundle,
                &shared.pipeline.policies,
                &shared.reload_status,
            )
            .await;
        }
        let now = reload::fingerprint(&key_files);
        if forced || now != keys_print {
            keys_print = now;
            shared.pipeline.authenticator.reload_key_files().await;
        }
        let now = reload::fingerprint(&tls_files);
        if forced || now != tls_print {
            tls_print = now;
            for listener in &tls {
                listener.reload(&shared.tls_reload_status);
            }
        }
    }
}

/// Polls the bundle source every `poll_interval` until shutdown.
async fn poll_bundle(
    fetcher: Arc<crate::policy::reload::BundleFetcher>,
    shared: Arc<Shared>,
    policy: crate::config::PolicyConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(fetcher.poll_interval()) => {}
        }
        let _guard = shared.reload_lock.lock().await;
        fetcher
            .poll(&policy, &shared.pipeline.policies, &shared.reload_status)
            .await;
    }
}

/// Keeps the gRPC health service in step with readiness (keys arriving or
/// going stale) until shutdown.
async fn track_health(
    health: tonic_health::server::HealthReporter,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = shared.is_ready();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
        let now = shared.is_ready();
        if now != last {
            tracing::info!(ready = now, "readiness changed");
            publish_health(&health, now).await;
            last = now;
        }
    }
}

/// The runtime the server runs on: Tokio's multi-threaded scheduler
/// without its LIFO slot.
///
/// With the slot, a task woken by the running one runs next. Every answered
/// stream wakes its HTTP/2 connection's task, which then ran before the
/// other streams ready to answer and wrote one response per `writev`;
/// without it the connection's task waits its turn and writes the answers
/// of a batch of streams at once. Measured in BENCHMARKS.md: about a tenth
/// of the `writev` calls per request, 1.5x the requests per second, lower
/// latency at half that rate.
///
/// # Errors
/// The runtime could not be built (threads, the I/O driver).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Whether [`runtime`] can leave out the LIFO slot: the setting needs
/// `--cfg tokio_unstable`, which `.cargo/config.toml` sets.
pub const FIFO_SCHEDULER: bool = cfg!(tokio_unstable);

/// Starts Arbiter and serves until SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// As [`start`].
pub async fn run(config: Config) -> Result<(), StartError> {
    if !FIFO_SCHEDULER {
        tracing::warn!(
            "built without --cfg tokio_unstable (RUSTFLAGS replaced .cargo/config.toml): \
             the scheduler keeps its LIFO slot, which costs throughput"
        );
    }
    let running = start(&config).await?;
    wait_for_stop_signal().await;
    tracing::info!("stop signal received, draining");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    addr: SocketAddr,
    listener: &TcpListener,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    /// `.cargo/config.toml` is in effect: a build without it would lose the
    /// scheduler setting with nothing but a warning at start.
    #[test]
    #[allow(
        clippy::assertions_on_constants,
        reason = "a test failure, not a build failure, for a build with other RUSTFLAGS"
    )]
    fn the_runtime_is_built_without_the_lifo_slot() {
        assert!(
            super::FIFO_SCHEDULER,
            "built without --cfg tokio_unstable: is .cargo/config.toml in effect?"
        );
        let runtime = super::runtime().unwrap();
        assert_eq!(runtime.block_on(async { 1 + 1 }), 2);
    }
}
