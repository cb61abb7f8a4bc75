//! Logs and metrics: the `tracing` subscriber, the decision log line, and
//! the counters and histograms of a decision, encoded through
//! `prometheus-client` by each component that owns them (see [`encode`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::{DescriptorEncoder, Histogram, counter, counters, gauge};

use crate::config::{LogConfig, LogFormat};
use crate::decision::DecisionRecord;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the decision log {path}: {source}")]
pub struct LogError {
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides the
/// configured level. Decision lines go to `decision_file` (in the configured
/// format) when one is set, and to stdout otherwise. A second call (as in tests) leaves the first
/// subscriber in place.
///
/// # Errors
/// The decision log file cannot be opened.
pub fn init_logging(config: &LogConfig) -> Result<(), LogError> {
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let file = match &config.decision_file {
        None => None,
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LogError {
                    path: path.clone(),
                    source,
                })?,
        ),
    };
    let writer = Router {
        decisions: file.map(std::sync::Mutex::new),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _already_set = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

/// Sends decision lines to the decision file, when there is one, and
/// everything else to stdout.
struct Router {
    decisions: Option<std::sync::Mutex<std::fs::File>>,
}

enum Out<'a> {
    Stdout(std::io::Stdout),
    File(std::sync::MutexGuard<'a, std::fs::File>),
}

impl std::io::Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Stdout(out) => out.write(buf),
            Self::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::File(file) => file.flush(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Router {
    type Writer = Out<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Out::Stdout(std::io::stdout())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        match &self.decisions {
            Some(file) if meta.target() == DECISION_TARGET => match file.lock() {
                Ok(guard) => Out::File(guard),
                Err(poisoned) => Out::File(poisoned.into_inner()),
            },
            _ => Out::Stdout(std::io::stdout()),
        }
    }
}

/// The `tracing` target of decision log lines.
pub const DECISION_TARGET: &str = "arbiter::decision";

/// How decisions are logged: which allows are sampled, which fields masked.
#[derive(Debug)]
pub struct DecisionLog {
    /// Fraction of allows logged, 0 to 1; every deny is logged.
    allow_sample_rate: f64,
    mask: Vec<crate::config::LogField>,
    /// Lines for the writer thread; a full queue drops the line.
    queue: std::sync::mpsc::SyncSender<DecisionLine>,
    /// Lines queued and not yet written, for [`DecisionLog::flush`].
    pending: std::sync::Arc<AtomicU64>,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

/// How many decision lines may wait for the writer before new ones are dropped.
const DECISION_QUEUE: usize = 16_384;

/// How often the writer wakes to write what was queued: lines are written
/// in batches, and a decision never wakes a thread.
const DECISION_FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// The text fields of a decision line, in the order they are written.
const LINE_FIELDS: [&str; 12] = [
    "decision_id",
    "revision",
    "reason",
    "method",
    "host",
    "path",
    "source_address",
    "source_principal",
    "subject",
    "provider",
    "device_id",
    "error",
];

/// One decision line on its way to the writer thread. Its text fields
/// ([`LINE_FIELDS`]) share one string, so a decision allocates once for
/// its line; the writer formats it. Its JSON form is that of `tracing`'s
/// JSON lines for the other logs.
struct DecisionLine {
    timestamp: std::time::SystemTime,
    allowed: bool,
    dry_run: bool,
    http_status: u16,
    eval_us: u64,
    total_us: u64,
    text: String,
    /// Where each of [`LINE_FIELDS`] ends in `text`.
    ends: [usize; LINE_FIELDS.len()],
}

impl DecisionLine {
    /// The text fields, named.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let starts = std::iter::once(0).chain(self.ends);
        LINE_FIELDS
            .into_iter()
            .zip(starts.zip(self.ends))
            .map(|(name, (start, end))| (name, self.text.get(start..end).unwrap_or_default()))
    }

    fn result(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }

    /// Appends the line as JSON and a newline to `out`.
    fn write_json(&self, out: &mut Vec<u8>, clock: &mut SecondClock) {
        use std::io::Write as _;
        out.extend_from_slice(b"{\"timestamp\":\"");
        clock.write_rfc3339(self.timestamp, out);
        out.extend_from_slice(
            b"\",\"level\":\"INFO\",\"message\":\"decision\",\"target\":\"arbiter::decision\"",
        );
        for (name, value) in self.fields() {
            let _ = write!(out, ",\"{name}\":");
            // A string always serializes.
            let _ = serde_json::to_writer(&mut *out, value);
            // The order of the fields is that of the other logs' decision lines.
            match name {
                "revision" => {
                    let _ = write!(out, ",\"result\":\"{}\"", self.result());
                }
                "reason" => {
                    let _ = write!(
                        out,
                        ",\"dry_run\":{},\"http_status\":{}",
                        self.dry_run, self.http_status
                    );
                }
                _ => {}
            }
        }
        let _ = writeln!(
            out,
            ",\"eval_us\":{},\"total_us\":{}}}",
            self.eval_us, self.total_us
        );
    }
}

/// RFC 3339 UTC timestamps, with the date and time of day formatted once a
/// second: the writer thread stamps every line.
#[derive(Default)]
struct SecondClock {
    second: Option<u64>,
    prefix: String,
}

impl SecondClock {
    fn write_rfc3339(&mut self, at: std::time::SystemTime, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let Ok(since_epoch) = at.duration_since(std::time::UNIX_EPOCH) else {
            // A clock set before 1970: rare enough to format whole.
            let text = std::time::UNIX_EPOCH
                .duration_since(at)
                .ok()
                .and_then(|before| time::Duration::try_from(before).ok())
                .and_then(|before| time::OffsetDateTime::UNIX_EPOCH.checked_sub(before))
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            out.extend_from_slice(text.as_bytes());
            return;
        };
        let second = since_epoch.as_secs();
        if self.second != Some(second) {
            let text = i64::try_from(second)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            // `2026-12-05T20:50:01Z`: kept without its zone, the fraction goes between.
            self.prefix = text.trim_end_matches('Z').to_owned();
            self.second = Some(second);
        }
        let _ = write!(out, "{}.{:06}Z", self.prefix, since_epoch.subsec_micros());
    }
}

/// Where the writer thread puts decision lines.
enum Sink {
    /// JSON lines, written in batches to stdout or the decision file.
    Json(Box<dyn std::io::Write + Send>),
    /// Through `tracing`, one line at a time, in its text format.
    Text,
    /// Nowhere: for commands whose standard output is their report.
    Discard,
}

impl Sink {
    fn open(config: &LogConfig) -> Self {
        if config.format == LogFormat::Text {
            return Self::Text;
        }
        let out: Box<dyn std::io::Write + Send> = match &config.decision_file {
            None => Box::new(std::io::stdout()),
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => Box::new(file),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the decision log file; decision lines go to stdout");
                    Box::new(std::io::stdout())
                }
            },
        };
        Self::Json(out)
    }

    /// Writes every line queued now; returns how many, and whether the
    /// log is closed (its last sender dropped).
    fn drain(
        &mut self,
        lines: &std::sync::mpsc::Receiver<DecisionLine>,
        buf: &mut Vec<u8>,
        clock: &mut SecondClock,
    ) -> (u64, bool) {
        use std::sync::mpsc::TryRecvError;
        let mut written = 0;
        let closed = loop {
            match lines.try_recv() {
                Ok(line) => {
                    match self {
                        Self::Json(_) => line.write_json(buf, clock),
                        Self::Text => line.emit(),
                        Self::Discard => {}
                    }
                    written += 1;
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if let Self::Json(out) = self
            && !buf.is_empty()
        {
            let _ = out.write_all(buf).and_then(|()| out.flush());
            buf.clear();
        }
        (written, closed)
    }
}

impl DecisionLine {
    fn emit(&self) {
        let mut fields = self.fields().map(|(_, value)| value);
        let mut next = || fields.next().unwrap_or_default();
        let (decision_id, revision, reason, method, host, path) =
            (next(), next(), next(), next(), next(), next());
        let (source_address, source_principal, subject, provider, device_id, error) =
            (next(), next(), next(), next(), next(), next());
        tracing::info!(
            target: "arbiter::decision",
            decision_id = %decision_id,
            revision = %revision,
            result = self.result(),
            reason = %reason,
            dry_run = self.dry_run,
            http_status = self.http_status,
            method = %method,
            host = %host,
            path = %path,
            source_address = %source_address,
            source_principal = %source_principal,
            subject = %subject,
            provider = %provider,
            device_id = %device_id,
            error = %error,
            eval_us = self.eval_us,
            total_us = self.total_us,
            "decision"
        );
    }
}

impl DecisionLog {
    /// The decision log, with its writer thread: formatting and writing a
    /// line happen there, so a decision never waits for the log.
    pub fn new(config: &LogConfig) -> Self {
        Self::with_queue(config, DECISION_QUEUE)
    }

    /// A decision log that writes nothing (`arbiter eval` and `test`, whose
    /// standard output is their report).
    pub fn discard() -> Self {
        Self::with_sink(&LogConfig::default(), DECISION_QUEUE, Sink::Discard)
    }

    fn with_queue(config: &LogConfig, capacity: usize) -> Self {
        Self::with_sink(config, capacity, Sink::open(config))
    }

    fn with_sink(config: &LogConfig, capacity: usize, mut sink: Sink) -> Self {
        let (queue, lines) = std::sync::mpsc::sync_channel::<DecisionLine>(capacity);
        let pending = std::sync::Arc::new(AtomicU64::new(0));
        let written = std::sync::Arc::clone(&pending);
        let writer = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut clock = SecondClock::default();
                // Ends once the DecisionLog is dropped and the queue is empty.
                loop {
                    std::thread::sleep(DECISION_FLUSH_INTERVAL);
                    let (n, closed) = sink.drain(&lines, &mut buf, &mut clock);
                    written.fetch_sub(n, Ordering::Release);
                    if closed {
                        return;
                    }
                }
            });
        if let Err(e) = writer {
            tracing::error!(error = %e, "cannot start the decision log writer; decision lines will be dropped and counted");
        }
        Self {
            allow_sample_rate: config.allow_sample_rate.clamp(0.0, 1.0),
            mask: config.mask.clone(),
            queue,
            pending,
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every queued line is written, or `within` passes.
    pub async fn flush(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.pending.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn keep(&self, record: &DecisionRecord) -> bool {
        if !record.allowed || record.deny_reason.is_some() || self.allow_sample_rate >= 1.0 {
            return true;
        }
        let draw = (uuid::Uuid::new_v4().as_u64_pair().0 >> 11) as f64 / (1u64 << 53) as f64;
        draw < self.allow_sample_rate
    }

    fn field<'a>(&self, name: &str, value: &'a str) -> &'a str {
        if self.mask.iter().any(|m| m.as_str() == name) {
            "[masked]"
        } else {
            value
        }
    }

    /// Queues one decision line (target `arbiter::decision`) for the
    /// writer, unless sampled out; when the queue is full the line is
    /// dropped and counted (`arbiter_decision_log_dropped_total`). No
    /// header, token, cookie or body is ever part of it.
    pub fn write(
        &self,
        record: &DecisionRecord,
        request: &RequestSummary<'_>,
        eval: Duration,
        total: Duration,
    ) {
        if !tracing::enabled!(target: "arbiter::decision", tracing::Level::INFO)
            || !self.keep(record)
        {
            return;
        }
        let values: [&str; LINE_FIELDS.len()] = [
            &record.decision_id,
            request.revision,
            record.deny_reason.as_ref().map_or("", |r| r.as_str()),
            self.field("method", request.method),
            self.field("host", request.host),
            self.field("path", request.path),
            self.field("source_address", request.source_address),
            self.field("source_principal", request.source_principal),
            self.field("subject", request.subject),
            self.field("provider", request.provider),
            self.field("device_id", request.device_id),
            self.field("error", record.error.as_deref().unwrap_or("")),
        ];
        let mut text = String::with_capacity(values.iter().map(|v| v.len()).sum());
        let ends = values.map(|value| {
            text.push_str(value);
            text.len()
        });
        let line = DecisionLine {
            timestamp: std::time::SystemTime::now(),
            allowed: record.allowed,
            dry_run: record.dry_run,
            http_status: record.http_status.unwrap_or(0),
            eval_us: u64::try_from(eval.as_micros()).unwrap_or(u64::MAX),
            total_us: u64::try_from(total.as_micros()).unwrap_or(u64::MAX),
            text,
            ends,
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send(line).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the decision log says of the request, besides the decision itself.
#[derive(Debug, Default)]
pub struct RequestSummary<'a> {
    pub revision: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    /// Path without the query string, which may carry secrets.
    pub path: &'a str,
    pub source_address: &'a str,
    pub source_principal: &'a str,
    pub subject: &'a str,
    pub provider: &'a str,
    pub device_id: &'a str,
}

/// Distinct deny reasons kept as labels; past this, new ones count as `other`.
const MAX_REASON_LABELS: usize = 256;

/// Arbiter's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Counts by deny reason, for denies (`[0]`) and allows (`[1]`): looked
    /// up by `&str`, so a decision allocates only for a reason not seen before.
    decisions: Mutex<[BTreeMap<String, u64>; 2]>,
    pub decision_latency: Histogram,
    pub eval_latency: Histogram,
    /// gRPC calls answered with an error status instead of a decision, by
    /// status code (0-16): requests too large or not decodable.
    refusals: [AtomicU64; 17],
    /// Check calls received and not yet answered (waiting for a permit or deciding).
    in_flight: AtomicU64,
    /// Allows without a reason, the common case: counted without the lock.
    allowed: AtomicU64,
    /// Decisions the bytecode VM failed and the interpreter made.
    rvm_fallbacks: AtomicU64,
    /// Checked decisions where the VM and the interpreter disagreed.
    rvm_mismatches: AtomicU64,
    /// HTTP front door requests, by door and status class (2xx, 4xx, 5xx).
    http_requests: [[AtomicU64; 3]; FrontDoor::ALL.len()],
}

/// The HTTP front doors, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    EnvoyHttp,
    ForwardAuth,
    OpaData,
    Authzen,
}

impl FrontDoor {
    pub const ALL: [Self; 4] = [
        Self::EnvoyHttp,
        Self::ForwardAuth,
        Self::OpaData,
        Self::Authzen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::EnvoyHttp => "envoy_http",
            Self::ForwardAuth => "forward_auth",
            Self::OpaData => "opa_data",
            Self::Authzen => "authzen",
        }
    }
}

/// One Check call counted in `arbiter_decisions_in_flight` until it is dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts what the policy engine did out of the ordinary for one decision.
    pub fn record_engine(&self, engine: crate::policy::EngineUsed) {
        use crate::policy::EngineUsed;
        match engine {
            EngineUsed::Rvm | EngineUsed::Interpreter => {}
            EngineUsed::RvmFallback => {
                self.rvm_fallbacks.fetch_add(1, Ordering::Relaxed);
            }
            EngineUsed::RvmMismatch => {
                self.rvm_mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a Check call as in flight for as long as the guard lives.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Counts one answer of an HTTP front door.
    pub fn record_http(&self, door: FrontDoor, status: u16) {
        let class = match status {
            200..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        if let Some(counter) = self
            .http_requests
            .get(door as usize)
            .and_then(|by_class| by_class.get(class))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a call refused with gRPC status `code` before any decision.
    pub fn record_refusal(&self, code: tonic::Code) {
        if let Some(counter) = self.refusals.get(code as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_decision(&self, record: &DecisionRecord, total: Duration, eval: Duration) {
        self.decision_latency.observe(total);
        self.eval_latency.observe(eval);
        if record.allowed && record.deny_reason.is_none() {
            self.allowed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let reason = record
            .deny_reason
            .as_ref()
            .map(|r| r.as_str())
            .unwrap_or("");
        if let Ok(mut decisions) = self.decisions.lock() {
            let labels: usize = decisions.iter().map(BTreeMap::len).sum();
            let [denies, allows] = &mut *decisions;
            let counts = if record.allowed { allows } else { denies };
            if let Some(count) = counts.get_mut(reason) {
                *count += 1;
            } else if labels >= MAX_REASON_LABELS {
                *counts.entry("other".to_owned()).or_default() += 1;
            } else {
                counts.insert(reason.to_owned(), 1);
            }
        }
    }

    /// The decisions' metrics: counts by result and reason, latencies,
    /// engine fallbacks, calls in flight, refusals and HTTP front doors.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let allowed = self.allowed.load(Ordering::Relaxed);
        let mut by_reason: Vec<([(&str, &str); 2], u64)> = Vec::new();
        if allowed > 0 {
            by_reason.push(([("result", "allow"), ("reason", "")], allowed));
        }
        let decisions = self.decisions.lock().ok();
        if let Some(decisions) = &decisions {
            for (result, counts) in ["deny", "allow"].into_iter().zip(decisions.iter()) {
                for (reason, count) in counts {
                    by_reason.push(([("result", result), ("reason", reason.as_str())], *count));
                }
            }
        }
        counters(
            encoder,
            "arbiter_decisions_total",
            "Decisions made, by result and deny reason.",
            &by_reason,
        )?;
        drop(decisions);
        self.decision_latency.encode(
            encoder,
            "arbiter_decision_duration_seconds",
            "Time from receiving a CheckRequest to answering it.",
        )?;
        self.eval_latency.encode(
            encoder,
            "arbiter_policy_eval_duration_seconds",
            "Time spent evaluating the decision rule.",
        )?;
        counter(
            encoder,
            "arbiter_rvm_fallbacks_total",
            "Decisions the bytecode VM failed, made by the interpreter instead.",
            self.rvm_fallbacks.load(Ordering::Relaxed),
        )?;
        counter(
            encoder,
            "arbiter_rvm_mismatches_total",
            "Checked decisions where the bytecode VM and the interpreter disagreed (the set then runs on the interpreter).",
            self.rvm_mismatches.load(Ordering::Relaxed),
        )?;
        gauge(
            encoder,
            "arbiter_decisions_in_flight",
            "Check calls received and not yet answered.",
            self.in_flight.load(Ordering::Relaxed),
        )?;
        let refusals: Vec<([(&str, String); 1], u64)> = self
            .refusals
            .iter()
            .enumerate()
            .map(|(code, count)| (code, count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .map(|(code, count)| {
                let code = tonic::Code::from(i32::try_from(code).unwrap_or_default());
                ([("code", format!("{code:?}"))], count)
            })
            .collect();
        counters(
            encoder,
            "arbiter_grpc_refusals_total",
            "Calls answered with a gRPC error instead of a decision (Envoy denies them), by status code.",
            &refusals,
        )?;
        let mut http = Vec::new();
        for door in FrontDoor::ALL {
            for (class, label) in ["2xx", "4xx", "5xx"].into_iter().enumerate() {
                let count = self
                    .http_requests
                    .get(door as usize)
                    .and_then(|by_class| by_class.get(class))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                http.push(([("door", door.label()), ("status", label)], count));
            }
        }
        counters(
            encoder,
            "arbiter_http_requests_total",
            "Requests answered by the HTTP front doors, by door and status class.",
            &http,
        )
    }
}

impl DecisionLog {
    /// Decision lines dropped because the writer could not keep up.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode_metrics(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        counter(
            encoder,
            "arbiter_decision_log_dropped_total",
            "Decision lines dropped because the log writer could not keep up (decisions never wait for it).",
            self.dropped(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use crate::decision::DenyReason;

    fn record(allowed: bool, reason: Option<DenyReason>) -> DecisionRecord {
        DecisionRecord {
            decision_id: "d".into(),
            allowed,
            deny_reason: reason,
            http_status: None,
            error: None,
            dry_run: false,
        }
    }

    fn summary() -> RequestSummary<'static> {
        RequestSummary {
            revision: "r",
            method: "GET",
            path: "/",
            ..RequestSummary::default()
        }
    }

    #[tokio::test]
    async fn a_full_decision_log_drops_and_counts_lines_and_never_waits() {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || SharedBuf(std::sync::Arc::clone(&sink)))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let config = LogConfig {
            decision_file: Some(
                std::env::temp_dir().join(format!("arbiter-decisions-{}.log", std::process::id())),
            ),
            ..LogConfig::default()
        };
        // No room at all: every line is dropped, and counted.
        let full = DecisionLog::with_queue(&config, 0);
        for _ in 0..3 {
            full.write(
                &record(false, Some(DenyReason::Undefined)),
                &summary(),
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        assert_eq!(full.dropped(), 3);
        // With room, lines are written and nothing is dropped.
        let log = DecisionLog::with_queue(&config, 16);
        for _ in 0..3 {
            log.write(
                &record(false, Some(DenyReason::Undefined)),
                &summary(),
                Duration::ZERO,
                Duration::ZERO,
            );
        }
        log.flush(Duration::from_secs(5)).await;
        assert_eq!(log.dropped(), 0);
        let path = config.decision_file.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l["target"] == DECISION_TARGET
            && l["result"] == "deny"
            && l["reason"] == "policy_undefined"
            && l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))));
    }

    /// Every field of a line, whatever its text (quotes, backslashes,
    /// control characters, newlines, non-ASCII), reads back from one line of
    /// JSON; the timestamp is RFC 3339 in UTC to the microsecond, across a
    /// second's boundary.
    #[test]
    fn a_decision_line_is_one_line_of_json_with_every_field() {
        let hostile = "q\"uote\\back\nline\u{1}ctl\u{7f}é/\u{2028}";
        let values: [String; LINE_FIELDS.len()] =
            std::array::from_fn(|i| format!("{}-{hostile}", LINE_FIELDS[i]));
        let mut text = String::new();
        let ends = std::array::from_fn(|i| {
            text.push_str(&values[i]);
            text.len()
        });
        let mut clock = SecondClock::default();
        let mut out = Vec::new();
        let at = std::time::UNIX_EPOCH + Duration::from_micros(1_796_496_578_999_999);
        for (at, stamp) in [
            (at, "2026-12-05T18:49:38.999999Z"),
            (at + Duration::from_micros(2), "2026-12-05T18:49:39.000001Z"),
        ] {
            let line = DecisionLine {
                timestamp: at,
                allowed: false,
                dry_run: true,
                http_status: 403,
                eval_us: 12,
                total_us: 34,
                text: text.clone(),
                ends,
            };
            out.clear();
            line.write_json(&mut out, &mut clock);
            let written = String::from_utf8(out.clone()).unwrap();
            assert_eq!(written.matches('\n').count(), 1, "{written}");
            assert!(written.ends_with('\n'));
            let json: serde_json::Value = serde_json::from_str(&written).unwrap();
            assert_eq!(json["timestamp"], stamp);
            for (name, value) in LINE_FIELDS.iter().zip(&values) {
                assert_eq!(json[name], value.as_str(), "{name}");
            }
            assert_eq!(json["level"], "INFO");
            assert_eq!(json["message"], "decision");
            assert_eq!(json["target"], DECISION_TARGET);
            assert_eq!(json["result"], "deny");
            assert_eq!(json["dry_run"], true);
            assert_eq!(json["http_status"], 403);
            assert_eq!(json["eval_us"], 12);
            assert_eq!(json["total_us"], 34);
            assert_eq!(json.as_object().unwrap().len(), LINE_FIELDS.len() + 9);
            // The order of the other logs' decision lines.
            let order = [
                "timestamp",
                "level",
                "message",
                "target",
                "decision_id",
                "revision",
                "result",
                "reason",
                "dry_run",
                "http_status",
                "method",
            ];
            let at: Vec<usize> = order
                .iter()
                .map(|key| written.find(&format!("\"{key}\":")).unwrap())
                .collect();
            assert!(at.windows(2).all(|w| w[0] < w[1]), "{written}");
        }
        out.clear();
        let before_1970 = std::time::UNIX_EPOCH - Duration::from_millis(1500);
        clock.write_rfc3339(before_1970, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "1969-12-31T23:59:58.5Z");
    }

    struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = std::sync::Arc::new(Metrics::default());
        metrics.record_decision(
            &record(true, None),
            Duration::from_micros(40),
            Duration::from_micros(20),
        );
        metrics.record_decision(
            &record(false, Some(DenyReason::Undefined)),
            Duration::from_micros(300),
            Duration::from_micros(200),
        );
        let text = crate::metrics::text_of(&metrics, Metrics::encode);
        assert!(
            text.contains("arbiter_decisions_total{result=\"allow\",reason=\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("arbiter_decisions_total{result=\"deny\",reason=\"policy_undefined\"} 1")
        );
        assert!(
            text.contains("arbiter_decision_duration_seconds_bucket{le=\"5e-05\"} 1"),
            "{text}"
        );
        assert!(text.contains("arbiter_decision_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("arbiter_decision_duration_seconds_count 2"));
        assert!(text.contains("# TYPE arbiter_decisions_total counter"));
    }

    #[test]
    fn policy_reasons_past_the_label_limit_count_as_other() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let deny = |reason: String| {
            metrics.record_decision(
                &record(false, Some(DenyReason::Policy(Some(reason)))),
                Duration::ZERO,
                Duration::ZERO,
            );
        };
        for i in 0..MAX_REASON_LABELS {
            deny(format!("r{i}"));
        }
        deny("r0".into());
        deny("one_too_many".into());
        deny("another".into());
        let text = crate::metrics::text_of(&metrics, Metrics::encode);
        assert!(
            text.contains("arbiter_decisions_total{result=\"deny\",reason=\"r0\"} 2"),
            "{text}"
        );
        assert!(!text.contains("one_too_many"));
        assert!(text.contains("arbiter_decisions_total{result=\"deny\",reason=\"other\"} 2"));
    }
}
