//! The gRPC service Envoy calls, and the wiring of one running Arbiter:
//! request -> context -> input -> policy -> decision -> response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::config::{BodyErrors, OnInvalidToken};
use crate::context::{ParseOptions, ParsedBody, RequestContext, split_target};
use crate::decision::{self, DecisionOptions};
use crate::identity::{Authentication, Authenticator, Identity};
use crate::policy::{PolicyError, PolicySet};
use crate::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use crate::proto::auth::{CheckRequest, CheckResponse};
use crate::proto::core::address;
use crate::telemetry::{self, Metrics, RequestSummary};

pub mod lane;
pub mod tls;

/// Why Arbiter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
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

/// State shared by the gRPC service and the admin endpoints.
pub struct Shared {
    pub policies: ArcSwap<PolicySet>,
    pub reload_status: crate::policy::reload::ReloadStatus,
    /// The OPA bundle source, if one is configured.
    pub bundle: Option<Arc<crate::policy::reload::BundleFetcher>>,
    /// Policy reloads (files or bundle) run one at a time, so that a slow
    /// one cannot swap in a set older than a faster one's.
    reload_lock: tokio::sync::Mutex<()>,
    /// Reloads of the gRPC listener's certificates.
    pub tls_reload_status: crate::policy::reload::ReloadStatus,
    pub authenticator: Authenticator,
    pub metrics: Metrics,
    pub readiness: Readiness,
    parse_options: Arc<ParseOptions>,
    /// Slow evaluations and large bodies run here, off the async workers.
    pub lane: lane::SlowLane,
    /// How long a decision may evaluate on an async worker.
    inline_budget: std::time::Duration,
    eval_timeout: std::time::Duration,
    /// Bodies at least this large are parsed in the slow lane.
    lane_body_bytes: usize,
    decision_options: DecisionOptions,
    limiter: tokio::sync::Semaphore,
    pub decision_log: telemetry::DecisionLog,
    decision_timeout: std::time::Duration,
    body_errors: crate::config::BodyErrors,
    /// Data path of the device inventory, if configured.
    inventory_path: Option<Vec<String>>,
}

impl Shared {
    /// State for a policy set that has already been loaded. Starts the
    /// identity providers' key refresh, so it must run inside Tokio.
    pub fn new(config: &Config, policies: PolicySet, http: &reqwest::Client) -> Self {
        let reason_header = Some(config.decision.reason_header.clone()).filter(|h| !h.is_empty());
        Self {
            policies: ArcSwap::from_pointee(policies),
            reload_status: Default::default(),
            tls_reload_status: Default::default(),
            bundle: None,
            reload_lock: tokio::sync::Mutex::new(()),
            authenticator: Authenticator::start(&config.identity, &config.device, http),
            metrics: Metrics::default(),
            readiness: Readiness {
                policies_loaded: AtomicBool::new(true),
                shutting_down: AtomicBool::new(false),
            },
            parse_options: Arc::new(ParseOptions::from_config(config)),
            lane: lane::SlowLane::start(&config.server.slow_lane),
            inline_budget: config
                .server
                .slow_lane
                .inline_budget
                .min(config.policy.eval_timeout),
            eval_timeout: config.policy.eval_timeout,
            lane_body_bytes: config.server.slow_lane.body_bytes,
            limiter: tokio::sync::Semaphore::new(config.server.max_concurrent_decisions),
            decision_log: telemetry::DecisionLog::new(&config.log),
            decision_timeout: config.server.decision_timeout,
            body_errors: config.policy.body_errors,
            inventory_path: config.device.inventory.as_ref().map(|p| {
                p.split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
            decision_options: DecisionOptions {
                dry_run: config.decision.dry_run,
                reason_header,
            },
        }
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
        self.readiness.is_ready() && self.authenticator.is_ready()
    }

    /// The deny for a request that could not be decided in time, or for
    /// which the slow lane had no room.
    fn undecided(&self, reason: decision::DenyReason) -> decision::Decision {
        let decision = decision::unavailable(
            reason,
            &self.decision_options,
            uuid::Uuid::new_v4().to_string(),
        );
        self.metrics.record_decision(
            &decision.record,
            self.decision_timeout,
            std::time::Duration::ZERO,
        );
        let policies = self.policies.load();
        let summary = RequestSummary {
            revision: policies.revision().as_str(),
            ..RequestSummary::default()
        };
        self.decision_log.write(
            &decision.record,
            &summary,
            std::time::Duration::ZERO,
            self.decision_timeout,
        );
        decision
    }

    /// Decides one CheckRequest: total, never an error.
    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        self.decide(request, false).await.response
    }

    /// Decides one CheckRequest and, when `keep_input` is set, also returns
    /// the input document the policy saw (for `arbiter test` and `eval`).
    pub async fn decide(&self, request: CheckRequest, keep_input: bool) -> Checked {
        let started = Instant::now();
        // Taken once: the request finishes on this set even if a reload swaps another in.
        let policies = self.policies.load_full();
        let ctx = match self.parse(request).await {
            Ok(ctx) => ctx,
            Err(lane::LaneFull) => {
                let decision = self.undecided(decision::DenyReason::Overloaded);
                return Checked {
                    response: decision.response,
                    record: decision.record,
                    input: None,
                };
            }
        };
        let authentication = self.authenticator.authenticate(&ctx).await;
        let decision_id = uuid::Uuid::new_v4().to_string();
        let mut eval = std::time::Duration::ZERO;
        let mut kept_input = None;
        let mut device_id = None;
        let unparsed_body = match (&ctx.body, self.body_errors) {
            (ParsedBody::Invalid(why), BodyErrors::Deny) => Some(why.as_str()),
            _ => None,
        };
        let decision = match (&authentication, unparsed_body) {
            (
                Authentication::Rejected {
                    error,
                    on_invalid: OnInvalidToken::Deny,
                    ..
                },
                _,
            ) => decision::reject_token(*error, &self.decision_options, decision_id),
            (_, Some(why)) => decision::reject_body(why, &self.decision_options, decision_id),
            _ => {
                // Posture is verified only when the policy will see it.
                let device = self
                    .authenticator
                    .device_posture(&ctx, &authentication)
                    .await;
                device_id = device.device_id().map(str::to_owned);
                let inventory = self
                    .inventory_path
                    .as_ref()
                    .map(|path| policies.data_at(path));
                let identity = Identity {
                    user: authentication.clone(),
                    device,
                };
                let input = if keep_input {
                    let full = crate::input::build(&ctx, &identity, inventory.as_ref());
                    kept_input = Some(full.clone());
                    full
                } else {
                    crate::input::build_reading(
                        &ctx,
                        &identity,
                        inventory.as_ref(),
                        policies.reads(),
                    )
                };
                let eval_started = Instant::now();
                let evaluation = self.evaluate(&policies, input).await;
                eval = eval_started.elapsed();
                match evaluation {
                    Ok(evaluation) => {
                        self.metrics.record_engine(evaluation.engine);
                        decision::decide(evaluation.result, &self.decision_options, decision_id)
                    }
                    Err(lane::LaneFull) => decision::unavailable(
                        decision::DenyReason::Overloaded,
                        &self.decision_options,
                        decision_id,
                    ),
                }
            }
        };
        let total = started.elapsed();
        self.metrics.record_decision(&decision.record, total, eval);
        let http = ctx.http();
        let source = ctx.attributes.source.as_ref();
        let source_address = source
            .and_then(|s| s.address.as_ref())
            .and_then(|a| match &a.address {
                Some(address::Address::SocketAddress(s)) => Some(s.address.as_str()),
                _ => None,
            })
            .unwrap_or_default();
        let (subject, provider) = match &authentication {
            Authentication::Verified(t) => (
                t.subject.as_deref().unwrap_or_default(),
                t.provider.as_str(),
            ),
            Authentication::Rejected { provider, .. } => {
                ("", provider.as_deref().unwrap_or_default())
            }
            Authentication::Anonymous => ("", ""),
        };
        let summary = RequestSummary {
            revision: policies.revision().as_str(),
            method: http.map(|h| h.method.as_str()).unwrap_or_default(),
            host: http.map(|h| h.host.as_str()).unwrap_or_default(),
            path: http.map(|h| split_target(&h.path).0).unwrap_or_default(),
            source_address,
            source_principal: source.map(|s| s.principal.as_str()).unwrap_or_default(),
            subject,
            provider,
            device_id: device_id.as_deref().unwrap_or_default(),
        };
        self.decision_log
            .write(&decision.record, &summary, eval, total);
        Checked {
            response: decision.response,
            record: decision.record,
            input: kept_input,
        }
    }

    /// The request, parsed: on the async worker, or in the slow lane when
    /// its body is large.
    async fn parse(&self, request: CheckRequest) -> Result<RequestContext, lane::LaneFull> {
        let body = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map_or(0, |h| h.body.len() + h.raw_body.len());
        if body < self.lane_body_bytes {
            return Ok(RequestContext::from_check(request, &self.parse_options));
        }
        let options = Arc::clone(&self.parse_options);
        self.lane
            .run(move || RequestContext::from_check(request, &options))
            .await
    }

    /// The decision on the async worker within the inline budget; past it,
    /// evaluated again in the slow lane with what remains of `eval_timeout`.
    async fn evaluate(
        &self,
        policies: &Arc<PolicySet>,
        input: regorus::Value,
    ) -> Result<crate::policy::Evaluation, lane::LaneFull> {
        let started = Instant::now();
        let inline = policies.evaluate_decision_within(input.clone(), self.inline_budget);
        let timed_out = matches!(inline.result, Err(PolicyError::Timeout { .. }));
        if !timed_out || self.inline_budget >= self.eval_timeout {
            return Ok(inline);
        }
        let remaining = self.eval_timeout.saturating_sub(started.elapsed());
        let policies = Arc::clone(policies);
        let limit_ms = self.eval_timeout.as_millis();
        let mut evaluation = self
            .lane
            .run(move || policies.evaluate_decision_within(input, remaining))
            .await?;
        // The limit that ran out is eval_timeout, spent in two parts.
        if let Err(PolicyError::Timeout { .. }) = evaluation.result {
            evaluation.result = Err(PolicyError::Timeout { limit_ms });
        }
        Ok(evaluation)
    }
}

/// One decision with what led to it.
#[derive(Debug)]
pub struct Checked {
    pub response: CheckResponse,
    pub record: decision::DecisionRecord,
    /// The input document, when asked for and when the policy was consulted.
    pub input: Option<regorus::Value>,
}

/// `envoy.service.auth.v3.Authorization`, a thin adapter over [`Shared::check`].
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
        let deadline = grpc_timeout(request.metadata())
            .map(|t| t.mul_f64(0.9))
            .map_or(self.shared.decision_timeout, |t| {
                t.min(self.shared.decision_timeout)
            });
        let request = request.into_inner();
        let shared = &self.shared;
        let _in_flight = shared.metrics.enter();
        let admitted = std::sync::atomic::AtomicBool::new(false);
        let work = async {
            // Waiting here is the back-pressure; the deadline bounds it.
            let _permit = shared.limiter.acquire().await;
            admitted.store(true, Ordering::Relaxed);
            shared.check(request).await
        };
        let response = match tokio::time::timeout(deadline, work).await {
            Ok(response) => response,
            Err(_) => {
                let reason = if admitted.load(Ordering::Relaxed) {
                    decision::DenyReason::DeadlineExceeded
                } else {
                    decision::DenyReason::Overloaded
                };
                shared.undecided(reason).response
            }
        };
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
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    admin_task: JoinHandle<std::io::Result<()>>,
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
        self.shared
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
    let mut shared = Shared::new(config, policies, &http);
    if let Some(fetcher) = bundle {
        shared = shared.with_bundle(fetcher);
    }
    let shared = Arc::new(shared);
    if !shared
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
        tls.clone(),
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
    let admin_task = tokio::spawn(crate::admin::serve(
        admin_listener,
        Arc::clone(&shared),
        shutdown_rx,
    ));
    tracing::info!(%grpc_addr, %admin_addr, "arbiter serving");
    Ok(Running {
        grpc_addr,
        admin_addr,
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
    shared.metrics.record_refusal(status.code());
    tracing::warn!(
        code = ?status.code(),
        message = status.message(),
        "call refused before a decision"
    );
}

async fn watch_for_reload(
    shared: Arc<Shared>,
    policy: crate::config::PolicyConfig,
    tls: Option<Arc<tls::ReloadingTls>>,
    mut hangup: Option<Hangup>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::policy::reload;
    let key_files = shared.authenticator.key_files();
    let mut policy_print = reload::fingerprint(&policy.paths);
    let mut keys_print = reload::fingerprint(&key_files);
    let tls_files = tls.as_ref().map(|t| t.paths()).unwrap_or_default();
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
                .poll(&policy, &shared.policies, &shared.reload_status)
                .await;
        }
        let now = reload::fingerprint(&policy.paths);
        if forced || now != policy_print {
            policy_print = now;
            let _guard = shared.reload_lock.lock().await;
            let bundle = shared.bundle.as_ref().and_then(|b| b.current());
            let _ = reload::reload(&policy, bundle, &shared.policies, &shared.reload_status).await;
        }
        let now = reload::fingerprint(&key_files);
        if forced || now != keys_print {
            keys_print = now;
            shared.authenticator.reload_key_files().await;
        }
        if let Some(tls) = &tls {
            let now = reload::fingerprint(&tls_files);
            if forced || now != tls_print {
                tls_print = now;
                tls.reload(&shared.tls_reload_status);
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
            .poll(&policy, &shared.policies, &shared.reload_status)
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

/// Starts Arbiter and serves until SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// As [`start`].
pub async fn run(config: Config) -> Result<(), StartError> {
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
