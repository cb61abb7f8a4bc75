//! `arbiter-load`: a load generator for Arbiter's gRPC Check API.
//!
//! It sends CheckRequests built from a JSON template, over N HTTP/2
//! connections with M requests in flight on each, as fast as possible or
//! at a fixed rate, and reports throughput, latency percentiles from an HDR
//! histogram, errors and decisions. At a fixed rate, a response that came
//! back later than the next request was due is corrected for (HDR's
//! coordinated-omission correction), so a stalled server shows up as
//! latency instead of as fewer requests.
//!
//! ```text
//! arbiter-load tokens --count 100000 --out target/bench     # jwks.json + tokens.txt
//! arbiter-load run --request policies/examples/bench.json --tokens target/bench/tokens.txt
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::proto::auth::CheckRequest;
use arbiter::proto::auth::authorization_client::AuthorizationClient;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

// mimalloc: the decision path allocates many small, short-lived values
// (regorus values, protobuf strings); glibc's allocator cost 10-20% of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "arbiter-load",
    about = "Load generator for Arbiter's Check API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send CheckRequests and report throughput and latency.
    Run(RunArgs),
    /// Make a signing key and tokens: writes `jwks.json` and `tokens.txt` to `--out`.
    Tokens(TokenArgs),
    /// Write one CheckRequest as a gRPC message body (5-byte prefix and
    /// protobuf), for h2load's `-d` to replay.
    Frame(FrameArgs),
}

#[derive(clap::Args)]
struct FrameArgs {
    /// A CheckRequest in the protobuf JSON mapping.
    #[arg(long)]
    request: PathBuf,
    /// Send the first token of this file as `authorization: Bearer <token>`.
    #[arg(long)]
    tokens: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

/// The request as a gRPC length-prefixed message: uncompressed flag, then
/// the protobuf's length (big-endian u32), then the protobuf.
fn write_frame(args: &FrameArgs) -> anyhow::Result<()> {
    use prost::Message as _;
    let template = template(&args.request)?;
    let token = match &args.tokens {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .with_context(|| format!("{} holds no token", path.display()))?;
            Some(format!("Bearer {}", first.trim()))
        }
        None => None,
    };
    let message = with_token(&template, token.as_deref()).encode_to_vec();
    let length = u32::try_from(message.len()).context("request too large for one gRPC message")?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&message);
    std::fs::write(&args.out, frame).with_context(|| args.out.display().to_string())?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TokenUse {
    /// Cycle through the tokens: after the first round every token is in Arbiter's cache.
    Repeated,
    /// Every request carries a token not sent before; the run stops when they run out.
    Fresh,
}

#[derive(Parser)]
struct RunArgs {
    /// Arbiter's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    target: String,
    /// CheckRequest template (protobuf JSON).
    #[arg(long)]
    request: PathBuf,
    /// Tokens, one per line, sent as `authorization: Bearer <token>`.
    #[arg(long)]
    tokens: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "repeated")]
    token_use: TokenUse,
    /// How many of the tokens to cycle through with `--token-use repeated`.
    #[arg(long, default_value_t = 10_000)]
    distinct_tokens: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight on each connection.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second in all; 0 for as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Measured time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured time first (connections, caches, CPU frequency).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Runtime worker threads for the generator itself.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Parser)]
struct TokenArgs {
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "RS256")]
    alg: String,
    #[arg(long, default_value = "https://idp.bench")]
    issuer: String,
    #[arg(long, default_value = "api")]
    audience: String,
    #[arg(long, default_value = "orders:read orders:write")]
    scope: String,
    /// Token lifetime.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    lifetime: Duration,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tokens(args) => make_tokens(&args),
        Command::Frame(args) => write_frame(&args),
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()?;
            let report = runtime.block_on(run(&args))?;
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
    }
}

fn make_tokens(args: &TokenArgs) -> anyhow::Result<()> {
    let alg: jsonwebtoken::Algorithm = args.alg.parse().context("--alg")?;
    let key = TestKey::generate("bench", alg).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("jwks.json"), jwks(&[&key]).to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = args.count.div_ceil(threads);
    let started = Instant::now();
    let chunks: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let key = &key;
                scope.spawn(move || {
                    let first = t * per_thread;
                    let last = ((t + 1) * per_thread).min(args.count);
                    (first..last)
                        .map(|i| {
                            key.sign(&serde_json::json!({
                                "iss": args.issuer, "aud": args.audience,
                                "sub": format!("user-{i}"), "scope": args.scope,
                                "iat": now, "exp": now + args.lifetime.as_secs(),
                            }))
                            .map_err(|e| anyhow::anyhow!("{e}"))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signing thread panicked")))
            })
            .collect()
    });
    let mut text = String::new();
    for chunk in chunks {
        for token in chunk? {
            text.push_str(&token);
            text.push('\n');
        }
    }
    std::fs::write(args.out.join("tokens.txt"), text)?;
    eprintln!(
        "{} {} tokens and jwks.json in {} ({:.1?})",
        args.count,
        args.alg,
        args.out.display(),
        started.elapsed()
    );
    Ok(())
}

/// Where the requests' tokens come from.
struct Tokens {
    list: Vec<String>,
    fresh: bool,
    next: AtomicU64,
}

impl Tokens {
    fn load(args: &RunArgs) -> anyhow::Result<Option<Self>> {
        let Some(path) = &args.tokens else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let mut list: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| format!("Bearer {l}"))
            .collect();
        let fresh = args.token_use == TokenUse::Fresh;
        if !fresh {
            list.truncate(args.distinct_tokens.max(1));
        }
        if list.is_empty() {
            bail!("{} holds no tokens", path.display());
        }
        Ok(Some(Self {
            list,
            fresh,
            next: AtomicU64::new(0),
        }))
    }

    /// The next token; `None` once fresh tokens run out.
    fn next(&self) -> Option<&str> {
        let i = usize::try_from(self.next.fetch_add(1, Ordering::Relaxed)).ok()?;
        if self.fresh {
            self.list.get(i).map(String::as_str)
        } else {
            self.list.get(i % self.list.len()).map(String::as_str)
        }
    }
}

fn template(path: &Path) -> anyhow::Result<CheckRequest> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a CheckRequest", path.display()))
}

fn with_token(template: &CheckRequest, token: Option<&str>) -> CheckRequest {
    let mut request = template.clone();
    if let Some(token) = token
        && let Some(http) = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
    {
        http.headers
            .insert("authorization".to_owned(), token.to_owned());
    }
    request
}

/// What one worker saw.
struct Tally {
    latency: Histogram<u64>,
    /// Requests measured (the histogram also holds corrected samples).
    requests: u64,
    allowed: u64,
    denied: std::collections::BTreeMap<i32, u64>,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            requests: 0,
            allowed: 0,
            denied: Default::default(),
            errors: Default::default(),
        })
    }

    fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.requests += other.requests;
        self.allowed += other.allowed;
        for (k, v) in &other.denied {
            *self.denied.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        Ok(())
    }
}

struct Report {
    tally: Tally,
    elapsed: Duration,
    args_summary: String,
}

impl Report {
    fn requests(&self) -> u64 {
        self.tally.requests
    }

    fn rate(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> u64 {
        self.tally.latency.value_at_quantile(p)
    }

    fn text(&self) -> String {
        let errors: u64 = self.tally.errors.values().sum();
        let denied: u64 = self.tally.denied.values().sum();
        let mut out = format!(
            "{}\nrequests {} in {:.2?}: {:.0}/s\nlatency µs: p50 {} p90 {} p99 {} p99.9 {} max {}\ndecisions: allowed {} denied {} {:?}\nerrors: {} {:?}\n",
            self.args_summary,
            self.requests(),
            self.elapsed,
            self.rate(),
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.percentile(0.999),
            self.tally.latency.max(),
            self.tally.allowed,
            denied,
            self.tally.denied,
            errors,
            self.tally.errors
        );
        if errors > 0 {
            out.push_str("WARNING: some requests failed\n");
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "run": self.args_summary,
            "requests": self.requests(),
            "seconds": self.elapsed.as_secs_f64(),
            "rate": self.rate(),
            "latency_us": {
                "p50": self.percentile(0.5), "p90": self.percentile(0.9),
                "p99": self.percentile(0.99), "p999": self.percentile(0.999),
                "max": self.tally.latency.max(),
            },
            "allowed": self.tally.allowed,
            "denied": self.tally.denied.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
            "errors": self.tally.errors,
        })
    }
}

async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let template = Arc::new(template(&args.request)?);
    let tokens = Tokens::load(args)?.map(Arc::new);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        // One Endpoint per connection: tonic multiplexes every clone of a
        // Channel over one HTTP/2 connection.
        let channel = Endpoint::from_shared(args.target.clone())?
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.target))?;
        channels.push(channel);
    }
    let workers = args.connections.max(1) * args.concurrency.max(1);
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let stop_at = measure_from + args.duration;
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    // Each worker is due to send every `workers` intervals; a response later
    // than that hid requests that should have been sent meanwhile, which
    // HDR's correction adds back (so a stall is not averaged away).
    let worker_interval_us = interval.map(|every| {
        u64::try_from((every * u32::try_from(workers).unwrap_or(u32::MAX)).as_micros())
            .unwrap_or(u64::MAX)
    });
    let sequence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let channel: Channel = channels
            .get(worker % channels.len())
            .cloned()
            .context("no connection")?;
        let template = Arc::clone(&template);
        let tokens = tokens.clone();
        let sequence = Arc::clone(&sequence);
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::new(channel);
            let mut tally = Tally::new()?;
            loop {
                let due = match interval {
                    Some(every) => {
                        let n = sequence.fetch_add(1, Ordering::Relaxed);
                        let due = started + every.mul_f64(n as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                if due >= stop_at {
                    return anyhow::Ok(tally);
                }
                let token = match &tokens {
                    Some(tokens) => match tokens.next() {
                        Some(token) => Some(token),
                        None => return anyhow::Ok(tally),
                    },
                    None => None,
                };
                let request = with_token(&template, token);
                // Latency is counted from the send, not from when it was due:
                // the runtime's timer is only millisecond-precise.
                let sent = Instant::now();
                let result = client.check(request).await;
                if due < measure_from {
                    continue;
                }
                tally.requests += 1;
                let micros = u64::try_from(sent.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                match worker_interval_us {
                    Some(expected) => tally.latency.record_correct(micros, expected)?,
                    None => tally.latency.saturating_record(micros),
                }
                match result {
                    Ok(response) => match response.into_inner().status.map(|s| s.code) {
                        Some(0) => tally.allowed += 1,
                        Some(code) => *tally.denied.entry(code).or_default() += 1,
                        None => *tally.errors.entry("no status".into()).or_default() += 1,
                    },
                    Err(status) => {
                        *tally
                            .errors
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                    }
                }
            }
        }));
    }
    let mut total = Tally::new()?;
    for task in tasks {
        total.merge(&task.await??)?;
    }
    let elapsed = Instant::now()
        .min(stop_at)
        .saturating_duration_since(measure_from);
    Ok(Report {
        tally: total,
        elapsed,
        args_summary: format!(
            "target {} connections {} concurrency {} rate {} tokens {}",
            args.target,
            args.connections,
            args.concurrency,
            if args.rate == 0 {
                "max".to_owned()
            } else {
                args.rate.to_string()
            },
            match (&args.tokens, args.token_use) {
                (None, _) => "none".to_owned(),
                (Some(_), TokenUse::Repeated) =>
                    format!("repeated ({} distinct)", args.distinct_tokens),
                (Some(_), TokenUse::Fresh) => "fresh".to_owned(),
            }
        ),
    })
}
