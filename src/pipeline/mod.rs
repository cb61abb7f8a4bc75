//! The one decision pipeline: request -> context -> identity -> input ->
//! policy -> decision, with the limits, metrics and decision log every
//! decision shares. Every front door (gRPC, the HTTP front doors), `arbiter
//! eval`, the fixture runner, the benches and the fuzz targets decide
//! through [`Pipeline::decide`]; a front door only translates its protocol
//! into a `CheckRequest` and the decision back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;

use crate::config::{BodyErrors, Config, OnInvalidToken};
use crate::context::{ParseOptions, ParsedBody, RequestContext, split_target};
use crate::decision::{self, DecisionOptions, Refusal};
use crate::identity::{Authentication, Authenticator, Identity};
use crate::policy::{PolicyError, PolicySet};
use crate::proto::auth::{CheckRequest, CheckResponse};
use crate::proto::core::address;
use crate::telemetry::{self, Metrics, RequestSummary};

pub mod lane;

/// Every stage of a decision and what they share: the current policy set,
/// the identity providers, the slow lane, the limits, metrics and the
/// decision log.
pub struct Pipeline {
    pub policies: ArcSwap<PolicySet>,
    pub authenticator: Authenticator,
    pub metrics: Metrics,
    parse_options: Arc<ParseOptions>,
    /// As `parse_options`, with loopback trusted too: forward-auth callers
    /// are trusted proxies by construction (the door refuses any other).
    forwarded_options: Arc<ParseOptions>,
    /// Slow evaluations and large bodies run here, off the async workers.
    pub lane: lane::SlowLane,
    /// How long a decision may evaluate on an async worker.
    inline_budget: Duration,
    eval_timeout: Duration,
    /// Bodies at least this large are parsed in the slow lane.
    lane_body_bytes: usize,
    decision_options: DecisionOptions,
    limiter: tokio::sync::Semaphore,
    pub decision_log: telemetry::DecisionLog,
    decision_timeout: Duration,
    body_errors: crate::config::BodyErrors,
    /// Data path of the device inventory, if configured.
    inventory_path: Option<crate::config::DataPath>,
}

impl Pipeline {
    /// The pipeline for a policy set that has already been loaded. Starts
    /// the identity providers' key refresh, so it must run inside Tokio.
    pub fn new(config: &Config, policies: PolicySet, http: &reqwest::Client) -> Self {
        let reason_header = Some(config.decision.reason_header.clone()).filter(|h| !h.is_empty());
        Self {
            policies: ArcSwap::from_pointee(policies),
            authenticator: Authenticator::start(&config.identity, &config.device, http),
            metrics: Metrics::default(),
            parse_options: Arc::new(ParseOptions::from_config(config)),
            forwarded_options: Arc::new(ParseOptions::forwarded(config)),
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
            inventory_path: config.device.inventory.clone(),
            decision_options: DecisionOptions {
                dry_run: config.decision.dry_run,
                reason_header,
            },
        }
    }

    /// The callers whose forward-auth requests are answered: the trusted
    /// proxies, and loopback unless `[http] trust_loopback = false`.
    pub fn forwarders(&self) -> &[ipnet::IpNet] {
        &self.forwarded_options.trusted_proxies
    }

    /// The header that carries a deny's reason to the client, if any.
    pub fn reason_header(&self) -> Option<&str> {
        self.decision_options.reason_header.as_deref()
    }

    /// The same pipeline checking every token against `revocations` (the
    /// revocation file) besides the list the policy data may carry.
    #[must_use]
    pub fn with_revocations(
        mut self,
        revocations: Arc<crate::identity::revocation::Revocations>,
    ) -> Self {
        self.authenticator.use_revocations(revocations);
        self
    }

    /// The same pipeline introspecting opaque bearer tokens with these.
    #[must_use]
    pub fn with_introspectors(
        mut self,
        introspectors: Vec<crate::identity::introspection::Introspector>,
    ) -> Self {
        self.authenticator.use_introspectors(introspectors);
        self
    }

    /// A verified token that the policy data's revocation list names is
    /// rejected as an invalid token is (`token_revoked`).
    fn revoked_by_data(
        &self,
        policies: &PolicySet,
        authentication: Authentication,
    ) -> Authentication {
        match &authentication {
            Authentication::Verified(token) if self.data_revokes(policies, token) => {
                Authentication::Rejected {
                    provider: Some(token.provider.clone()),
                    error: crate::identity::TokenError::Revoked,
                    on_invalid: self.authenticator.on_invalid(&token.provider),
                }
            }
            _ => authentication,
        }
    }

    /// A verified device posture token that the policy data's revocation
    /// list names is refused as the list refuses a user's (`token_revoked`).
    fn device_revoked_by_data(
        &self,
        policies: &PolicySet,
        device: crate::identity::DevicePosture,
    ) -> crate::identity::DevicePosture {
        use crate::identity::DevicePosture;
        match &device {
            DevicePosture::Verified { token, .. } if self.data_revokes(policies, token) => {
                DevicePosture::Rejected(crate::identity::TokenError::Revoked)
            }
            _ => device,
        }
    }

    /// Whether the policy data's revocation list names `token` (counted).
    fn data_revokes(&self, policies: &PolicySet, token: &crate::identity::VerifiedToken) -> bool {
        let revoked = policies
            .revocations()
            .is_some_and(|list| list.revokes(token));
        if revoked {
            self.authenticator.revocations().count_revoked();
        }
        revoked
    }

    /// The same pipeline with its decision log switched off, for commands
    /// whose standard output is their report.
    #[must_use]
    pub fn without_decision_log(mut self) -> Self {
        self.decision_log = telemetry::DecisionLog::discard();
        self
    }

    /// The deny for a request that could not be decided in time, or for
    /// which the slow lane had no room.
    pub fn undecided(&self, reason: decision::DenyReason) -> decision::Decision {
        let decision = decision::refuse(
            Refusal::Unavailable(reason),
            &self.decision_options,
            uuid::Uuid::new_v4().to_string(),
        );
        self.metrics
            .record_decision(&decision.record, self.decision_timeout, Duration::ZERO);
        let policies = self.policies.load();
        let summary = RequestSummary {
            revision: policies.revision().as_str(),
            ..RequestSummary::default()
        };
        self.decision_log.write(
            &decision.record,
            &summary,
            Duration::ZERO,
            self.decision_timeout,
        );
        decision
    }

    // `check`, `decide` and `decide_forwarded` return the decision's future
    // rather than await it: an `async fn` around it would hold the request
    // a second time and add its size to a state machine that is moved.

    /// Decides one CheckRequest: total, never an error.
    pub fn check(&self, request: CheckRequest) -> impl Future<Output = CheckResponse> + Send + '_ {
        self.decide_parsed_with(request, false, &self.parse_options)
            .map(|checked| checked.response)
    }

    /// Decides one CheckRequest and, when `keep_input` is set, also returns
    /// the input document the policy saw (for `arbiter test` and `eval`).
    pub fn decide(
        &self,
        request: CheckRequest,
        keep_input: bool,
    ) -> impl Future<Output = Checked> + Send + '_ {
        self.decide_parsed_with(request, keep_input, &self.parse_options)
    }

    /// As [`Pipeline::decide`], for a request a trusted proxy forwarded
    /// (forward-auth): its `X-Forwarded-For` is walked with loopback trusted.
    pub fn decide_forwarded(
        &self,
        request: CheckRequest,
    ) -> impl Future<Output = Checked> + Send + '_ {
        self.decide_parsed_with(request, false, &self.forwarded_options)
    }

    fn decide_parsed_with<'a>(
        &'a self,
        request: CheckRequest,
        keep_input: bool,
        options: &'a Arc<ParseOptions>,
    ) -> impl Future<Output = Checked> + Send + 'a {
        // The request and its context on the heap: held in the decision's
        // state machine, they would be copied with it each time it moves.
        self.decide_boxed(Box::new(request), keep_input, options)
    }

    async fn decide_boxed(
        &self,
        request: Box<CheckRequest>,
        keep_input: bool,
        options: &Arc<ParseOptions>,
    ) -> Checked {
        let started = Instant::now();
        // Taken once: the request finishes on this set even if a reload swaps another in.
        let policies = self.policies.load_full();
        let parsed = if body_len(&request) < self.lane_body_bytes {
            Ok(Box::new(RequestContext::from_check(*request, options)))
        } else {
            // Boxed: only a large body takes this path.
            Box::pin(self.parse_in_lane(*request, options))
                .await
                .map(Box::new)
        };
        let ctx = match parsed {
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
        let authentication =
            self.revoked_by_data(&policies, self.authenticator.authenticate(&ctx).await);
        let decision_id = uuid::Uuid::new_v4().to_string();
        let mut eval = Duration::ZERO;
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
            ) => decision::refuse(Refusal::Token(*error), &self.decision_options, decision_id),
            (_, Some(why)) => decision::refuse(
                Refusal::Body(why.to_owned()),
                &self.decision_options,
                decision_id,
            ),
            _ => {
                // Posture is verified only when the policy will see it.
                let device = self.device_revoked_by_data(
                    &policies,
                    self.authenticator
                        .device_posture(&ctx, &authentication)
                        .await,
                );
                device_id = device.device_id().map(str::to_owned);
                let inventory = self
                    .inventory_path
                    .as_ref()
                    .map(|path| policies.data_at(path.segments()));
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
                    Err(lane::LaneFull) => decision::refuse(
                        Refusal::Unavailable(decision::DenyReason::Overloaded),
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

    /// The request parsed in the slow lane, for a large body.
    async fn parse_in_lane(
        &self,
        request: CheckRequest,
        options: &Arc<ParseOptions>,
    ) -> Result<RequestContext, lane::LaneFull> {
        let options = Arc::clone(options);
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
        drop(inline);
        // Boxed: only a slow evaluation takes this path.
        Box::pin(self.evaluate_in_lane(policies, input, started)).await
    }

    /// The evaluation again in the slow lane, with what remains of
    /// `eval_timeout` since `started`.
    async fn evaluate_in_lane(
        &self,
        policies: &Arc<PolicySet>,
        input: regorus::Value,
        started: Instant,
    ) -> Result<crate::policy::Evaluation, lane::LaneFull> {
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

    /// The value of the document at `data.<path>` for `input` (OPA's Data
    /// API): on the async worker within the inline budget, past it in the
    /// slow lane with what remains of `eval_timeout`.
    ///
    /// # Errors
    /// The evaluation failed or ran out of time, or the slow lane was full.
    pub async fn query_document(
        &self,
        path: Vec<String>,
        input: regorus::Value,
    ) -> Result<regorus::Value, DocumentError> {
        let started = Instant::now();
        let policies = self.policies.load_full();
        let inline = policies.query_path(&path, input.clone(), self.inline_budget);
        let result = match inline {
            Err(PolicyError::Timeout { .. }) if self.inline_budget < self.eval_timeout => {
                let remaining = self.eval_timeout.saturating_sub(started.elapsed());
                let limit_ms = self.eval_timeout.as_millis();
                self.lane
                    .run(move || policies.query_path(&path, input, remaining))
                    .await
                    .map_err(|lane::LaneFull| DocumentError::Overloaded)?
                    .map_err(|e| match e {
                        PolicyError::Timeout { .. } => PolicyError::Timeout { limit_ms },
                        other => other,
                    })
            }
            other => other,
        };
        self.metrics.eval_latency.observe(started.elapsed());
        result.map_err(DocumentError::Policy)
    }

    /// Who is calling, from the bearer token (or cookie) in `request`'s
    /// headers, verified by the configured providers as for any decision:
    /// for front doors whose callers are applications (AuthZEN).
    pub async fn authenticate(&self, request: CheckRequest) -> Authentication {
        let ctx = RequestContext::from_check(request, &self.parse_options);
        let policies = self.policies.load_full();
        self.revoked_by_data(&policies, self.authenticator.authenticate(&ctx).await)
    }

    /// Runs `work` under the limits every front door shares: it waits for
    /// one of `max_concurrent_decisions` slots, and is given up at the
    /// caller's deadline (capped by `decision_timeout`), when `undecided`
    /// makes the answer: `overloaded` if it never got a slot, else
    /// `deadline_exceeded`. Should `work` panic, the answer is `undecided`'s
    /// `internal`: a reset stream would leave the verdict to the proxy's
    /// failure mode.
    pub async fn within_limits<T>(
        &self,
        caller_deadline: Option<Duration>,
        work: impl std::future::Future<Output = T>,
        undecided: impl FnOnce(decision::DenyReason) -> T,
    ) -> T {
        let deadline =
            caller_deadline.map_or(self.decision_timeout, |t| t.min(self.decision_timeout));
        let _in_flight = self.metrics.enter();
        let admitted = std::sync::atomic::AtomicBool::new(false);
        let admitted_work = async {
            // Waiting here is the back-pressure; the deadline bounds it.
            let _permit = self.limiter.acquire().await;
            admitted.store(true, std::sync::atomic::Ordering::Relaxed);
            std::panic::AssertUnwindSafe(work).catch_unwind().await
        };
        match tokio::time::timeout(deadline, admitted_work).await {
            Ok(Ok(done)) => done,
            Ok(Err(_)) => {
                tracing::error!("a decision panicked: denied as internal");
                undecided(decision::DenyReason::Internal)
            }
            Err(_) => undecided(if admitted.load(std::sync::atomic::Ordering::Relaxed) {
                decision::DenyReason::DeadlineExceeded
            } else {
                decision::DenyReason::Overloaded
            }),
        }
    }

    /// Decides one CheckRequest under the shared limits: what every
    /// front door that speaks ext_authz calls.
    pub fn check_within_limits(
        &self,
        request: CheckRequest,
        caller_deadline: Option<Duration>,
    ) -> impl Future<Output = CheckResponse> + Send + '_ {
        // Boxed: the limit and timeout wrappers would otherwise hold the
        // decision's state machine twice over.
        self.within_limits(caller_deadline, Box::pin(self.check(request)), |reason| {
            self.undecided(reason).response
        })
    }
}

/// The size of a request's body, raw or as text: large ones are parsed in
/// the slow lane.
fn body_len(request: &CheckRequest) -> usize {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or(0, |h| h.body.len() + h.raw_body.len())
}

/// Why a document could not be given.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(transparent)]
    Policy(PolicyError),
    #[error("too many evaluations waiting: the slow lane is full")]
    Overloaded,
}

/// One decision with what led to it.
#[derive(Debug)]
pub struct Checked {
    pub response: CheckResponse,
    pub record: decision::DecisionRecord,
    /// The input document, when asked for and when the policy was consulted.
    pub input: Option<regorus::Value>,
}
