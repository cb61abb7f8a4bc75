//! The `arbiter` command line: `serve` (the default), `eval` and `check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use arbiter::Config;
use arbiter::pipeline::Pipeline;
use arbiter::policy::PolicySet;
use arbiter::proto::auth::CheckRequest;

// mimalloc: the decision path allocates many small, short-lived values
// (regorus values, protobuf strings); glibc's allocator cost 10-20% of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "arbiter",
    version,
    about = "Zero-trust policy decision point for Envoy's ext_authz"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz gRPC API (the default).
    Serve {
        /// Config file (TOML). Without one, the embedded defaults are used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the input document and the decision for one CheckRequest.
    Eval {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A CheckRequest in the protobuf JSON mapping.
        #[arg(long, short)]
        request: PathBuf,
    },
    /// Load and compile the policies and data, and report any error.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Policy directories or files (default: the configured policy paths).
        paths: Vec<PathBuf>,
    },
    /// Run the fixtures (`*.fixtures.yaml`) and Rego unit tests (`*_test.rego`).
    Test {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Policy directories (default: the configured policy paths).
        paths: Vec<PathBuf>,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::from_file(path)?),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Eval { config, request } => eval(config.as_deref(), &request),
        Command::Check { config, paths } => check(config.as_deref(), paths),
        Command::Test { config, paths } => test(config.as_deref(), paths),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arbiter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    arbiter::telemetry::init_logging(&config.log)?;
    let runtime = arbiter::server::runtime().context("cannot start the async runtime")?;
    runtime.block_on(arbiter::run(config))?;
    Ok(ExitCode::SUCCESS)
}

fn eval(config: Option<&Path>, request: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let text = std::fs::read_to_string(request)
        .with_context(|| format!("cannot read {}", request.display()))?;
    let check: CheckRequest = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a CheckRequest in the protobuf JSON mapping",
            request.display()
        )
    })?;
    let policies = PolicySet::load(&config.policy)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The pipeline `serve` runs, so the request's token and device posture
    // are verified exactly as they would be there.
    let (revision, checked) = runtime.block_on(async {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        let revocations = arbiter::identity::revocation::Revocations::load(
            config.identity.revocation.as_ref().map(|r| r.file.as_path()),
        )?;
        let introspectors = config
            .identity
            .introspection
            .iter()
            .map(|i| {
                arbiter::identity::introspection::Introspector::new(
                    i,
                    &http,
                    config.identity.token_cache_size,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pipeline = Pipeline::new(&config, policies, &http)
            .with_revocations(std::sync::Arc::new(revocations))
            .with_introspectors(introspectors)
            .without_decision_log();
        if !pipeline
            .authenticator
            .wait_ready(config.identity.startup_grace)
            .await
        {
            eprintln!(
                "warning: not every identity provider's keys could be fetched; their tokens are denied"
            );
        }
        let revision = pipeline.policies.load().revision().to_string();
        anyhow::Ok((revision, pipeline.decide(check, true).await))
    })?;
    let input_json = match &checked.input {
        Some(input) => serde_json::from_str(&input.to_json_str()?)?,
        None => serde_json::Value::Null,
    };
    let report = serde_json::json!({
        "revision": revision,
        "input": input_json,
        "allowed": checked.record.allowed,
        "reason": checked.record.deny_reason.as_ref().map(|r| r.as_str()),
        "error": checked.record.error,
        "response": serde_json::to_value(&checked.response)?,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if checked.record.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn config_with_paths(config: Option<&Path>, paths: Vec<PathBuf>) -> anyhow::Result<Config> {
    let mut config = load_config(config)?;
    if !paths.is_empty() {
        config.policy.paths = paths;
    }
    Ok(config)
}

fn check(config: Option<&Path>, paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = config_with_paths(config, paths)?;
    let policies = PolicySet::load(&config.policy)?;
    for warning in arbiter::policy::lint(&config.policy)? {
        eprintln!("warning: {warning}");
    }
    let engine = policies.engine_status();
    if let Some(reason) = &engine.fallback_reason {
        eprintln!("note: the decision runs on the interpreter: {reason}");
    }
    println!(
        "ok: {} files, revision {}, decision {}, engine {}",
        policies.files().len(),
        policies.revision(),
        config.policy.decision,
        engine.engine
    );
    let reads = policies.reads();
    if reads.is_all() {
        println!("reads: the whole input document");
    } else if reads.paths().is_empty() {
        println!("reads: nothing of the input document");
    } else {
        println!("reads: {}", reads.paths().join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn test(config: Option<&Path>, paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = config_with_paths(config, paths)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(arbiter::fixtures::run(&config))?;
    print!("{}", report.render());
    Ok(if report.failed() == 0 && report.total() > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
