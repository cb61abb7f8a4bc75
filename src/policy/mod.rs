//! Policies: loading `.rego` and data files, preparing one regorus engine,
//! and evaluating the decision rule on a clone of it for each request.
//!
//! A [`PolicySet`] is immutable once loaded. Reloading builds a new one off
//! the request path and swaps it in; a request keeps the set it started with.

pub mod builtins;
pub mod bundle;
mod divergence;
mod nesting;
mod net;
mod outcome;
mod reads;
pub mod reload;
mod rvm;
mod vm_source;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use crate::config::{DecisionPath, EngineChoice, PolicyConfig, RegoVersion};

pub use outcome::{HeaderList, PolicyOutcome};

/// Why policies could not be loaded, or a decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy error in {path}:{message}")]
    Compile { path: PathBuf, message: String },
    #[error("invalid data file {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("no .rego files found under {paths}")]
    NoPolicies { paths: String },
    #[error("the decision rule {rule} is not defined by any policy")]
    MissingDecision { rule: String },
    #[error("cannot prepare policies: {message}")]
    Prepare { message: String },
    #[error(
        "the decision does not compile for the bytecode VM (policy.engine = \"rvm\"): {message}"
    )]
    Rvm { message: String },
    #[error("policy evaluation exceeded its time limit of {limit_ms} ms")]
    Timeout { limit_ms: u128 },
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error("policy evaluation failed: {message}")]
    Evaluation { message: String },
    #[error("the decision is undefined")]
    Undefined,
    #[error("the decision is not a boolean or a valid result object: {message}")]
    InvalidResult { message: String },
}

/// A hash of every loaded file's name and contents: two sets with the same
/// revision make the same decisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(String);

impl Revision {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The files one policy set was built from.
#[derive(Debug, Default, Clone)]
struct SourceFiles {
    rego: Vec<(PathBuf, String)>,
    /// Data files with the data path their directory gives them.
    data: Vec<(PathBuf, Vec<String>, String)>,
}

/// How the decision is read from the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// `eval_rule`: the decision path names a rule (the fast path).
    Rule,
    /// `eval_query`: the decision is an object built from partial rules
    /// (`result["allowed"] := ...`), which regorus only evaluates as a query.
    Query,
}

/// Which engine decided one request, for metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineUsed {
    /// The bytecode VM.
    Rvm,
    /// The interpreter: the set does not run on the VM, or was taken off it.
    Interpreter,
    /// The VM failed on this request; the interpreter decided it.
    RvmFallback,
    /// The VM's answer differed from the interpreter's on a checked
    /// request: the interpreter's answer was used, and the set is off the
    /// VM from now on.
    RvmMismatch,
}

/// A decision rule's outcome and the engine that reached it.
#[derive(Debug)]
pub struct Evaluation {
    pub result: Result<PolicyOutcome, PolicyError>,
    pub engine: EngineUsed,
}

/// Checks the VM against the interpreter on a sample of requests: the
/// first [`CHECK_FIRST`] of a set's decisions and one in [`CHECK_EVERY`]
/// after. The VM silently turns some errors into a failed rule body, so a
/// difference here means the VM cannot be trusted with this set.
#[derive(Debug, Default)]
struct Verifier {
    decisions: std::sync::atomic::AtomicU64,
    /// Why the set was taken off the VM, once it was.
    demoted: std::sync::OnceLock<String>,
}

const CHECK_FIRST: u64 = 1000;
const CHECK_EVERY: u64 = 1024;

impl Verifier {
    fn should_check(&self) -> bool {
        let n = self
            .decisions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        n < CHECK_FIRST || n % CHECK_EVERY == 0
    }
}

/// Which engine a set's decisions run on, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    pub engine: &'static str,
    /// Why the interpreter runs it, when it does.
    pub fallback_reason: Option<String>,
}

impl EngineStatus {
    /// The engine as a metric.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode_metrics(
        &self,
        encoder: &mut crate::metrics::DescriptorEncoder,
    ) -> std::fmt::Result {
        crate::metrics::gauges(
            encoder,
            "arbiter_policy_engine",
            "The engine that evaluates the current policy set's decision.",
            &[([("engine", self.engine)], 1)],
        )
    }
}

/// A loaded, compiled and prepared set of policies and data.
pub struct PolicySet {
    revision: Revision,
    template: Engine,
    rule: String,
    lookup: Lookup,
    /// The decision compiled for the bytecode VM, when it compiles.
    rvm: Option<rvm::CompiledDecision>,
    /// Why the decision runs on the interpreter, when it does from the start.
    interpreter_reason: Option<String>,
    verifier: Verifier,
    /// The parts of the input document the policies can read.
    reads: crate::input::InputPaths,
    eval_timeout: std::time::Duration,
    files: Vec<PathBuf>,
    /// Each policy file (as the engine names it) with its package (`data.a.b`).
    packages: Vec<(String, String)>,
    /// Revocations shipped with the data (`data.arbiter.revocation`).
    revocations: Option<Arc<crate::identity::revocation::RevocationList>>,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("revision", &self.revision)
            .field("rule", &self.rule)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// Reads every `.rego` file and every `data.json` / `data.yaml` under the
    /// configured paths, compiles them and prepares the engine.
    ///
    /// A data file's directory, relative to the configured path it was found
    /// under, is its place in `data` (as in OPA): `policies/acme/data.json`
    /// is loaded at `data.acme`.
    ///
    /// # Errors
    /// A file cannot be read or parsed (the error names the file and line),
    /// data files conflict, or no policy defines the decision rule.
    pub fn load(config: &PolicyConfig) -> Result<Self, PolicyError> {
        let bundle = config
            .bundle
            .as_ref()
            .map(bundle::read_configured_file)
            .transpose()?;
        Self::load_with(config, bundle.as_ref())
    }

    /// As [`PolicySet::load`], with an already fetched bundle's policies
    /// and data added to the configured paths'. The bundle's manifest
    /// chooses the Rego version if it names one.
    ///
    /// # Errors
    /// As [`PolicySet::load`].
    pub fn load_with(
        config: &PolicyConfig,
        bundle: Option<&bundle::Bundle>,
    ) -> Result<Self, PolicyError> {
        let mut sources = collect(&config.paths)?;
        let mut rego_version = config.rego_version;
        if let Some(bundle) = bundle {
            sources.rego.extend(bundle.files.rego.iter().cloned());
            sources.data.extend(bundle.files.data.iter().cloned());
            match bundle.manifest.rego_version {
                Some(0) => rego_version = RegoVersion::V0,
                Some(_) => rego_version = RegoVersion::V1,
                None => {}
            }
        }
        if sources.rego.is_empty() {
            return Err(PolicyError::NoPolicies {
                paths: config
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Self::compile(sources, config, rego_version)
    }

    /// Builds a set from policy and data given as text: for tests, fixtures
    /// and tools that hold policies in memory.
    ///
    /// # Errors
    /// As [`PolicySet::load`].
    pub fn from_sources(
        rego: &[(&str, &str)],
        data_json: Option<&str>,
        config: &PolicyConfig,
    ) -> Result<Self, PolicyError> {
        let sources = SourceFiles {
            rego: rego
                .iter()
                .map(|(name, text)| (PathBuf::from(name), (*text).to_owned()))
                .collect(),
            data: data_json
                .map(|d| vec![(PathBuf::from("data.json"), Vec::new(), d.to_owned())])
                .unwrap_or_default(),
        };
        Self::compile(sources, config, config.rego_version)
    }

    fn compile(
        sources: SourceFiles,
        config: &PolicyConfig,
        rego_version: RegoVersion,
    ) -> Result<Self, PolicyError> {
        let mut engine = new_engine(config, rego_version)?;

        let mut hasher = Sha256::new();
        let mut files = Vec::new();
        let mut packages = Vec::new();
        let mut data = Vec::new();
        for (path, text) in &sources.rego {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            nesting::check(text).map_err(|at| PolicyError::Compile {
                path: path.clone(),
                message: format!(
                    "{}:{}: `[` and `{{` nested more than {} levels deep (parsing time doubles with each level)",
                    at.line,
                    at.column,
                    nesting::MAX_NESTING
                ),
            })?;
            let package = engine
                .add_policy(path.display().to_string(), text.clone())
                .map_err(|e| PolicyError::Compile {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            packages.push((path.display().to_string(), package));
            files.push(path.clone());
        }
        for (path, prefix, text) in &sources.data {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            let value = parse_data(path, text, prefix.is_empty())?;
            let nested = prefix.iter().rev().fold(value, |inner, key| {
                Value::from(BTreeMap::from([(Value::from(key.as_str()), inner)]))
            });
            engine
                .add_data(nested.clone())
                .map_err(|e| PolicyError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            data.push(nested);
            files.push(path.clone());
        }

        let revocations = crate::identity::revocation::RevocationList::from_data(
            &engine.get_data()["arbiter"]["revocation"],
        )
        .map_err(|e| PolicyError::Data {
            path: PathBuf::from("data.arbiter.revocation"),
            message: e.to_string(),
        })?
        .map(Arc::new);
        let rule = config.decision.rule_ref();
        let lookup = prepare(&mut engine, &rule, &config.decision, &packages)?;
        // Printed while trying the decision on an empty input, not by a request.
        let _ = engine.take_prints();
        let ast = engine.get_ast_as_json().ok();
        let reads = match &ast {
            Some(ast) => reads::analyze(
                ast,
                &sources
                    .rego
                    .iter()
                    .map(|(p, t)| (p.as_path(), t.as_str()))
                    .collect::<Vec<_>>(),
            ),
            None => crate::input::InputPaths::all(),
        };
        let rego = || sources.rego.iter().map(|(p, t)| (p.as_path(), t.as_str()));
        let vm_unsafe =
            rvm::package_import(rego(), &packages).or_else(|| vm_source::default_function(rego()));
        let chosen = match vm_unsafe {
            Some(reason) if config.engine != EngineChoice::Interpreter => Err(reason),
            _ => {
                match vm_source::guarded_sources(ast.as_deref().unwrap_or_default(), &sources.rego)
                {
                    Ok(None) => choose_engine(&mut engine, &rule, lookup, config),
                    Ok(Some(guarded)) => vm_engine(config, rego_version, &guarded, &data).and_then(
                        |mut vm_engine| choose_engine(&mut vm_engine, &rule, lookup, config),
                    ),
                    Err(reason) => Err(reason),
                }
            }
        };
        let (rvm, interpreter_reason) = match chosen {
            Ok(compiled) => (Some(compiled), None),
            Err(reason) if config.engine == EngineChoice::Rvm => {
                return Err(PolicyError::Rvm { message: reason });
            }
            Err(reason) => {
                if config.engine == EngineChoice::Auto {
                    tracing::warn!(decision = %rule, reason = %reason, "the decision runs on the interpreter, not the bytecode VM");
                }
                (None, Some(reason))
            }
        };
        let digest = hasher.finalize();
        let revision = Revision(
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        Ok(Self {
            revision,
            template: engine,
            rule,
            lookup,
            rvm,
            interpreter_reason,
            verifier: Verifier::default(),
            reads,
            eval_timeout: config.eval_timeout,
            files,
            packages,
            revocations,
        })
    }

    /// The revocation list shipped with the data, if there is one.
    pub fn revocations(&self) -> Option<&crate::identity::revocation::RevocationList> {
        self.revocations.as_deref()
    }

    pub fn revision(&self) -> &Revision {
        &self.revision
    }

    /// The parts of the input document these policies can read: only those
    /// need building.
    pub fn reads(&self) -> &crate::input::InputPaths {
        &self.reads
    }

    /// The data document at a path of keys (`Undefined` where there is none).
    pub fn data_at(&self, path: &[String]) -> Value {
        let mut value = self.template.get_data();
        for key in path {
            value = value[key.as_str()].clone();
        }
        value
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The rules that one loaded policy file declares, among `names`, as full
    /// paths (`data.<package>.<name>`): what the parser read as rule heads,
    /// wherever they stand in the file.
    ///
    /// # Errors
    /// The file is not part of this set.
    pub fn declared_rules<'a>(
        &self,
        file: &Path,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<String>, PolicyError> {
        let file = file.display().to_string();
        let Some((_, package)) = self.packages.iter().find(|(f, _)| *f == file) else {
            return Err(PolicyError::Prepare {
                message: format!("{file} is not among the loaded policies"),
            });
        };
        Ok(names
            .into_iter()
            .filter(|name| {
                self.template
                    .has_declared_rule_rooted_at(&file, name)
                    .unwrap_or(false)
            })
            .map(|name| format!("{package}.{name}"))
            .collect())
    }

    /// Which engine this set's decisions run on.
    pub fn engine_status(&self) -> EngineStatus {
        match (&self.rvm, self.verifier.demoted.get()) {
            (Some(_), None) => EngineStatus {
                engine: "rvm",
                fallback_reason: None,
            },
            (Some(_), Some(why)) => EngineStatus {
                engine: "interpreter",
                fallback_reason: Some(why.clone()),
            },
            (None, _) => EngineStatus {
                engine: "interpreter",
                fallback_reason: self.interpreter_reason.clone(),
            },
        }
    }

    /// Evaluates the decision rule for one input and reads the result.
    ///
    /// # Errors
    /// The evaluation failed or ran out of time, the decision is undefined,
    /// or it is neither a boolean nor a valid result object.
    pub fn decide(&self, input: Value) -> Result<PolicyOutcome, PolicyError> {
        self.evaluate_decision(input).result
    }

    /// As [`PolicySet::decide`], and which engine decided.
    pub fn evaluate_decision(&self, input: Value) -> Evaluation {
        self.evaluate_decision_within(input, self.eval_timeout)
    }

    /// As [`PolicySet::evaluate_decision`], within `limit` rather than
    /// `eval_timeout`: a shorter limit is the inline budget, past which the
    /// decision continues in the slow lane.
    pub fn evaluate_decision_within(&self, input: Value, limit: std::time::Duration) -> Evaluation {
        let (value, engine) = match &self.rvm {
            Some(compiled) if self.verifier.demoted.get().is_none() => {
                self.on_the_vm(compiled, input, limit)
            }
            _ => (self.interpret_within(input, limit), EngineUsed::Interpreter),
        };
        Evaluation {
            result: value.and_then(PolicyOutcome::from_value),
            engine,
        }
    }

    /// The decision rule's value on the bytecode VM alone, with no check
    /// and no fallback; `None` when this set does not run on the VM. For
    /// comparing the engines.
    pub fn vm_value(&self, input: Value) -> Option<Result<Value, PolicyError>> {
        let compiled = self.rvm.as_ref()?;
        Some(compiled.evaluate(input).map_err(|e| match e {
            rvm::RvmError::Timeout => PolicyError::Timeout {
                limit_ms: self.eval_timeout.as_millis(),
            },
            rvm::RvmError::Vm(message) => PolicyError::Evaluation { message },
        }))
    }

    /// The decision rule's value on the interpreter alone (the plain path
    /// that the VM is compared with).
    ///
    /// # Errors
    /// The evaluation failed or ran out of time.
    pub fn interpret(&self, input: Value) -> Result<Value, PolicyError> {
        self.interpret_within(input, self.eval_timeout)
    }

    fn interpret_within(
        &self,
        input: Value,
        limit: std::time::Duration,
    ) -> Result<Value, PolicyError> {
        match self.lookup {
            Lookup::Rule => self.evaluate_within(&self.rule, input, limit),
            Lookup::Query => self.query(input, limit),
        }
    }

    fn on_the_vm(
        &self,
        compiled: &rvm::CompiledDecision,
        input: Value,
        limit: std::time::Duration,
    ) -> (Result<Value, PolicyError>, EngineUsed) {
        // Values share their contents: keeping one for the interpreter is cheap.
        let kept = input.clone();
        match compiled.evaluate_within(input, limit) {
            Ok(value) if self.verifier.should_check() => match self.interpret_within(kept, limit) {
                // The interpreter is the slower one: running out of time
                // there says nothing about the VM's answer.
                Err(PolicyError::Timeout { .. }) => (Ok(value), EngineUsed::Rvm),
                Ok(plain) if plain == value => (Ok(value), EngineUsed::Rvm),
                plain => {
                    let why = format!(
                        "the bytecode VM answered {value} where the interpreter answered {}",
                        match &plain {
                            Ok(v) => v.to_string(),
                            Err(e) => e.to_string(),
                        }
                    );
                    tracing::error!(revision = %self.revision, difference = %why, "the bytecode VM and the interpreter disagree: this policy set runs on the interpreter from now on");
                    let _ = self
                        .verifier
                        .demoted
                        .set(format!("taken off the bytecode VM: {why}"));
                    (plain, EngineUsed::RvmMismatch)
                }
            },
            Ok(value) => (Ok(value), EngineUsed::Rvm),
            Err(rvm::RvmError::Timeout) => (
                Err(PolicyError::Timeout {
                    limit_ms: limit.as_millis(),
                }),
                EngineUsed::Rvm,
            ),
            Err(rvm::RvmError::Vm(message)) => {
                tracing::warn!(revision = %self.revision, error = %message, "the bytecode VM failed; the interpreter decides this request");
                (self.interpret_within(kept, limit), EngineUsed::RvmFallback)
            }
        }
    }

    fn query(&self, input: Value, limit: std::time::Duration) -> Result<Value, PolicyError> {
        self.query_one(self.rule.clone(), input, limit, "the decision")
    }

    /// The one value of `query` for `input` (`Undefined` when there is
    /// none); two values are an error naming `what`.
    fn query_one(
        &self,
        query: String,
        input: Value,
        limit: std::time::Duration,
        what: &str,
    ) -> Result<Value, PolicyError> {
        let mut engine = self.engine_within(limit);
        engine.set_input(input);
        let results = engine.eval_query(query, false);
        log_prints(&mut engine);
        let results = results.map_err(|e| classify(&e, limit))?;
        let mut values = results
            .result
            .into_iter()
            .filter_map(|r| r.expressions.into_iter().next().map(|e| e.value));
        match (values.next(), values.next()) {
            (None, _) => Ok(Value::Undefined),
            (Some(value), None) => Ok(value),
            (Some(_), Some(_)) => Err(PolicyError::Evaluation {
                message: format!("{what} has more than one value"),
            }),
        }
    }

    /// The document at `data.<path>` (a rule, a package or plain data) for
    /// one input, as OPA's Data API gives it: `Undefined` when there is none.
    ///
    /// # Errors
    /// The evaluation failed or ran past `limit`.
    pub fn query_path(
        &self,
        path: &[String],
        input: Value,
        limit: std::time::Duration,
    ) -> Result<Value, PolicyError> {
        let mut query = String::from("data");
        for segment in path {
            query.push('[');
            query.push_str(&serde_json::Value::from(segment.as_str()).to_string());
            query.push(']');
        }
        self.query_one(query, input, limit, "the document")
    }

    /// A clone of the prepared engine whose evaluations stop at `limit`.
    fn engine_within(&self, limit: std::time::Duration) -> Engine {
        let mut engine = self.template.clone();
        if limit != self.eval_timeout {
            engine.set_execution_timer_config(timer(limit));
        }
        engine
    }

    /// Evaluates any rule (e.g. `data.envoy.authz.test_x`) against an input.
    ///
    /// # Errors
    /// The evaluation failed or ran out of time.
    pub fn evaluate(&self, rule: &str, input: Value) -> Result<Value, PolicyError> {
        self.evaluate_within(rule, input, self.eval_timeout)
    }

    fn evaluate_within(
        &self,
        rule: &str,
        input: Value,
        limit: std::time::Duration,
    ) -> Result<Value, PolicyError> {
        let mut engine = self.engine_within(limit);
        engine.set_input(input);
        let value = engine.eval_rule(rule.to_owned());
        log_prints(&mut engine);
        value.map_err(|e| classify(&e, limit))
    }
}

/// What the policy `print`ed during one evaluation, to the log rather than
/// to standard error, where it would mix with the decision log.
fn log_prints(engine: &mut Engine) {
    if let Ok(lines) = engine.take_prints() {
        for line in lines {
            tracing::info!(target: "arbiter::policy::print", "{line}");
        }
    }
}

/// The interpreter's time limit: checked every 64 steps.
fn timer(limit: std::time::Duration) -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    }
}

fn classify(e: &anyhow::Error, limit: std::time::Duration) -> PolicyError {
    if matches!(
        e.downcast_ref::<regorus::LimitError>(),
        Some(regorus::LimitError::TimeLimitExceeded { .. })
    ) {
        PolicyError::Timeout {
            limit_ms: limit.as_millis(),
        }
    } else {
        PolicyError::Evaluation {
            message: e.to_string().trim().to_owned(),
        }
    }
}

/// An engine with Arbiter's settings and built-ins and no policies yet.
fn new_engine(config: &PolicyConfig, rego_version: RegoVersion) -> Result<Engine, PolicyError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(rego_version == RegoVersion::V0);
    engine.set_strict_builtin_errors(config.strict_builtin_errors);
    engine.set_execution_timer_config(timer(config.eval_timeout));
    engine.set_gather_prints(true);
    builtins::register(&mut engine).map_err(|e| PolicyError::Prepare {
        message: e.to_string(),
    })?;
    Ok(engine)
}

/// The engine the VM's program is compiled from when its sources differ
/// from the loaded ones (see `vm_source`); any failure is a reason to run
/// the interpreter.
fn vm_engine(
    config: &PolicyConfig,
    rego_version: RegoVersion,
    rego: &[(PathBuf, String)],
    data: &[Value],
) -> Result<Engine, String> {
    let mut engine = new_engine(config, rego_version).map_err(|e| e.to_string())?;
    for (path, text) in rego {
        engine
            .add_policy(path.display().to_string(), text.clone())
            .map_err(|e| format!("the assignment-guarded policies do not load: {e}"))?;
    }
    for value in data {
        engine.add_data(value.clone()).map_err(|e| e.to_string())?;
    }
    Ok(engine)
}

/// The decision compiled for the VM, or why the interpreter runs it.
fn choose_engine(
    engine: &mut Engine,
    rule: &str,
    lookup: Lookup,
    config: &PolicyConfig,
) -> Result<rvm::CompiledDecision, String> {
    if config.engine == EngineChoice::Interpreter {
        return Err("policy.engine = \"interpreter\"".into());
    }
    if config.strict_builtin_errors {
        return Err(
            "strict_builtin_errors is on, and the bytecode VM cannot report a built-in's error"
                .into(),
        );
    }
    if lookup == Lookup::Query {
        return Err(format!(
            "{rule} is an object built from partial rules with constant keys (`{}[\"allowed\"] := ...`), which the bytecode VM does not compile",
            rule.rsplit('.').next().unwrap_or_default()
        ));
    }
    rvm::CompiledDecision::compile(
        engine,
        rule,
        config.eval_timeout,
        config.strict_builtin_errors,
    )
}

/// Checks that the decision rule exists, chooses how to read it, and leaves
/// the engine prepared so that each per-request clone starts from compiled
/// policies.
fn prepare(
    engine: &mut Engine,
    rule: &str,
    path: &DecisionPath,
    packages: &[(String, String)],
) -> Result<Lookup, PolicyError> {
    engine.set_input(Value::new_object());
    let lookup = match engine.eval_rule(rule.to_owned()) {
        Err(e) if e.to_string() == "not a valid rule path" => {
            if !declares_decision(engine, path, packages) {
                return Err(PolicyError::MissingDecision {
                    rule: format!("{rule} (decision path {path})"),
                });
            }
            Lookup::Query
        }
        Ok(_) => return Ok(Lookup::Rule),
        Err(e) => {
            fatal_prepare_error(&e)?;
            return Ok(Lookup::Rule);
        }
    };
    if let Err(e) = engine.eval_query(rule.to_owned(), false) {
        fatal_prepare_error(&e)?;
    }
    Ok(lookup)
}

/// Evaluating against an empty input may fail at run time (a conflict, the
/// time limit); such a policy is still loaded and fails closed per request.
/// A compile-time error, which carries a source location, stops the load.
fn fatal_prepare_error(e: &anyhow::Error) -> Result<(), PolicyError> {
    let message = e.to_string();
    if e.downcast_ref::<regorus::LimitError>().is_none() && message.contains("-->") {
        return Err(PolicyError::Prepare { message });
    }
    Ok(())
}

/// Whether a module in the decision's package declares a rule rooted at its
/// last segment (as `result["allowed"] := ...` does for `result`).
fn declares_decision(engine: &Engine, path: &DecisionPath, packages: &[(String, String)]) -> bool {
    let Some((package, name)) = path.package_and_name() else {
        return false;
    };
    packages
        .iter()
        .filter(|(_, declared)| *declared == package)
        .any(|(file, _)| {
            engine
                .has_declared_rule_rooted_at(file, &name)
                .unwrap_or(false)
        })
}

/// A data file's value; one at the root of `data` must be an object.
fn parse_data(path: &Path, text: &str, at_root: bool) -> Result<Value, PolicyError> {
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let value = if is_yaml {
        Value::from_yaml_str(text)
    } else {
        Value::from_json_str(text)
    }
    .map_err(|e| PolicyError::Data {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if at_root && value.as_object().is_err() {
        return Err(PolicyError::Data {
            path: path.to_owned(),
            message: "a data file at the root of the data document must hold an object".into(),
        });
    }
    Ok(value)
}

/// Built-ins that compile in Arbiter but never do what a policy expects.
const SILENT_BUILTINS: [(&str, &str); 2] = [
    (
        "http.send(",
        "http.send sends nothing in Arbiter and is always undefined; use [[identity.jwt]] providers for keys and data files for data",
    ),
    (
        "opa.runtime(",
        "opa.runtime() has no OPA runtime behind it in Arbiter",
    ),
];

/// OPA built-ins that regorus lacks (checked against regorus 0.14.1): a
/// policy that calls one loads, and every evaluation that reaches the call
/// fails (a `policy_error` deny).
const MISSING_BUILTINS: [&str; 10] = [
    "crypto.",
    "regex.globs_match(",
    "strings.render_template(",
    "net.lookup_ip_addr(",
    "graphql.",
    "rego.parse_module(",
    "providers.aws.",
    "io.jwt.encode_sign",
    "net.cidr_overlap(",
    "cast_",
];

/// Warnings about policies that compile but silently never work in
/// Arbiter, each with its file and line.
///
/// # Errors
/// A policy file cannot be read.
pub fn lint(config: &PolicyConfig) -> Result<Vec<String>, PolicyError> {
    let sources = collect(&config.paths)?;
    let mut warnings = Vec::new();
    for (path, text) in &sources.rego {
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            for (needle, why) in SILENT_BUILTINS {
                if let Some(col) = code.find(needle) {
                    warnings.push(format!("{}:{}:{}: {why}", path.display(), n + 1, col + 1));
                }
            }
            for needle in MISSING_BUILTINS {
                let called = code.match_indices(needle).find(|(at, _)| {
                    let before = code.get(..*at).and_then(|b| b.chars().next_back());
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                });
                if let Some((col, _)) = called {
                    let name: String = code
                        .get(col..)
                        .unwrap_or_default()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                        .collect();
                    warnings.push(format!(
                        "{}:{}:{}: {name} is an OPA built-in that Arbiter does not have: every evaluation that reaches it fails (a policy_error deny)",
                        path.display(),
                        n + 1,
                        col + 1
                    ));
                }
            }
        }
    }
    // Patterns regorus evaluates differently from OPA, from the syntax tree.
    let mut engine = new_engine(config, config.rego_version)?;
    let mut parsed = Vec::new();
    for (path, text) in &sources.rego {
        if engine
            .add_policy(path.display().to_string(), text.clone())
            .is_ok()
        {
            parsed.push((path.as_path(), text.as_str()));
        }
    }
    if let Ok(ast) = engine.get_ast_as_json() {
        for (file, d) in divergence::find(&ast, &parsed) {
            warnings.push(format!("{file}:{}:{}: {}", d.line, d.column, d.message));
        }
    }
    Ok(warnings)
}

const DATA_FILE_NAMES: [&str; 3] = ["data.json", "data.yaml", "data.yml"];

fn collect(paths: &[PathBuf]) -> Result<SourceFiles, PolicyError> {
    let mut sources = SourceFiles::default();
    for root in paths {
        let meta = std::fs::metadata(root).map_err(|source| PolicyError::Read {
            path: root.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(root, root, &mut sources)?;
        } else {
            add_file(root, Vec::new(), &mut sources)?;
        }
    }
    Ok(sources)
}

fn walk(root: &Path, dir: &Path, sources: &mut SourceFiles) -> Result<(), PolicyError> {
    let read_error = |source| PolicyError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    // Sorted, so that the revision and any error are the same on every load.
    entries.sort();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        // Hidden entries include Kubernetes ConfigMap bookkeeping (`..data`).
        if name.as_deref().is_none_or(|n| n.starts_with('.')) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(root, &path, sources)?;
        } else {
            let prefix = path
                .parent()
                .and_then(|parent| parent.strip_prefix(root).ok())
                .map(|rel| {
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            add_file(&path, prefix, sources)?;
        }
    }
    Ok(())
}

fn add_file(
    path: &Path,
    prefix: Vec<String>,
    sources: &mut SourceFiles,
) -> Result<(), PolicyError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_rego = path.extension().is_some_and(|e| e == "rego");
    let is_data = DATA_FILE_NAMES.contains(&name.as_str());
    if !is_rego && !is_data {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })?;
    if is_rego {
        sources.rego.push((path.to_owned(), text));
    } else {
        sources.data.push((path.to_owned(), prefix, text));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(rego: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::from_sources(&[("test.rego", rego)], None, &PolicyConfig::default())
    }

    fn input(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    /// `net.cidr_contains` alone leaves the program without host calls (it
    /// runs to completion, the VM's fast mode), and still with OPA's
    /// reading of IPv4-mapped addresses, not regorus's.
    #[test]
    fn net_cidr_contains_runs_on_the_vm_without_host_calls_and_as_opa() {
        let text = "package envoy.authz\n\nallow := net.cidr_contains(input.cidr, input.ip)\n";
        let policies = set(text).unwrap();
        let compiled = policies.rvm.as_ref().unwrap();
        assert!(!compiled.host_calls());
        for (json, want) in [
            (
                r#"{"cidr": "10.0.0.0/8", "ip": "::ffff:10.1.2.3"}"#,
                Value::from(true),
            ),
            (
                r#"{"cidr": "::ffff:10.0.0.0/104", "ip": "10.1.2.3"}"#,
                Value::from(true),
            ),
            (r#"{"cidr": "::/0", "ip": "10.1.2.3"}"#, Value::from(false)),
            (
                r#"{"cidr": "10.0.0.0/8", "ip": "010.1.2.3"}"#,
                Value::Undefined,
            ),
            (r#"{"cidr": 10, "ip": "10.1.2.3"}"#, Value::Undefined),
            (r#"{"cidr": "10.0.0.0/8", "ip": null}"#, Value::Undefined),
            ("{}", Value::Undefined),
        ] {
            assert_eq!(compiled.evaluate(input(json)).unwrap(), want, "{json}");
            assert_eq!(policies.interpret(input(json)).ok(), Some(want), "{json}");
        }
    }

    #[test]
    fn boolean_decision() {
        let policies =
            set("package envoy.authz\ndefault allow := false\nallow if input.user == \"alice\"\n")
                .unwrap();
        assert!(
            policies
                .decide(input(r#"{"user":"alice"}"#))
                .unwrap()
                .allowed()
        );
        assert!(
            !policies
                .decide(input(r#"{"user":"bob"}"#))
                .unwrap()
                .allowed()
        );
    }

    #[test]
    fn decision_built_from_partial_rules_is_read_as_a_query() {
        let config = PolicyConfig {
            decision: "envoy/authz/result".parse().unwrap(),
            ..PolicyConfig::default()
        };
        let rego = "package envoy.authz\ndefault allow := false\nallow if input.ok\nresult[\"allowed\"] := allow\nresult[\"body\"] := \"no\" if not allow\n";
        let policies = PolicySet::from_sources(&[("r.rego", rego)], None, &config).unwrap();
        assert!(policies.decide(input(r#"{"ok": true}"#)).unwrap().allowed());
        let denied = policies.decide(input("{}")).unwrap();
        assert!(!denied.allowed());
        assert_eq!(denied.body, "no");
        let missing = PolicyConfig {
            decision: "envoy/authz/nothing".parse().unwrap(),
            ..PolicyConfig::default()
        };
        assert!(matches!(
            PolicySet::from_sources(&[("r.rego", rego)], None, &missing),
            Err(PolicyError::MissingDecision { .. })
        ));
    }

    #[test]
    fn the_vm_runs_what_it_compiles_and_says_why_not_otherwise() {
        let on_vm =
            set("package envoy.authz\ndefault allow := false\nallow if input.user == \"alice\"\n")
                .unwrap();
        assert_eq!(on_vm.engine_status().engine, "rvm");
        let evaluation = on_vm.evaluate_decision(input(r#"{"user":"alice"}"#));
        assert_eq!(evaluation.engine, EngineUsed::Rvm);
        assert!(evaluation.result.unwrap().allowed());

        let forced = PolicyConfig {
            engine: EngineChoice::Interpreter,
            ..PolicyConfig::default()
        };
        let plain = PolicySet::from_sources(
            &[("p.rego", "package envoy.authz\nallow := true\n")],
            None,
            &forced,
        )
        .unwrap();
        let status = plain.engine_status();
        assert_eq!(status.engine, "interpreter");
        assert!(status.fallback_reason.unwrap().contains("interpreter"));
        assert_eq!(
            plain.evaluate_decision(input("{}")).engine,
            EngineUsed::Interpreter
        );
    }

    #[test]
    fn a_whole_package_import_keeps_the_set_on_the_interpreter() {
        let rego = [
            ("lib.rego", "package lib.util\nok if input.ok\n"),
            (
                "p.rego",
                "package envoy.authz\nimport data.lib.util\ndefault allow := false\nallow if util.ok\n",
            ),
        ];
        let policies = PolicySet::from_sources(&rego, None, &PolicyConfig::default()).unwrap();
        let status = policies.engine_status();
        assert_eq!(status.engine, "interpreter");
        let reason = status.fallback_reason.unwrap();
        assert!(
            reason.contains("p.rego:2: `import data.lib.util`"),
            "{reason}"
        );
        assert!(policies.decide(input(r#"{"ok": true}"#)).unwrap().allowed());
        // Importing the rule itself is fine.
        let rego = [
            rego[0],
            (
                "p.rego",
                "package envoy.authz\nimport data.lib.util.ok\ndefault allow := false\nallow if ok\n",
            ),
        ];
        let policies = PolicySet::from_sources(&rego, None, &PolicyConfig::default()).unwrap();
        assert_eq!(policies.engine_status().engine, "rvm");
        assert!(policies.decide(input(r#"{"ok": true}"#)).unwrap().allowed());
    }

    #[test]
    fn a_difference_from_the_interpreter_takes_the_set_off_the_vm() {
        // Conflicting values: the interpreter reports an error; the VM
        // makes the rule undefined without one.
        let policies =
            set("package envoy.authz\nallow := true if input.a\nallow := false if input.b\n")
                .unwrap();
        assert_eq!(policies.engine_status().engine, "rvm");
        let both = input(r#"{"a":true,"b":true}"#);
        assert!(matches!(
            policies.vm_value(both.clone()),
            Some(Ok(Value::Undefined))
        ));
        let evaluation = policies.evaluate_decision(both);
        assert_eq!(evaluation.engine, EngineUsed::RvmMismatch);
        assert!(
            matches!(evaluation.result, Err(PolicyError::Evaluation { .. })),
            "the interpreter's answer is used: {:?}",
            evaluation.result
        );
        let status = policies.engine_status();
        assert_eq!(status.engine, "interpreter");
        assert!(status.fallback_reason.unwrap().contains("taken off"));
        assert_eq!(
            policies.evaluate_decision(input(r#"{"a":true}"#)).engine,
            EngineUsed::Interpreter
        );
    }

    #[test]
    fn undefined_decision_is_an_error() {
        let policies = set("package envoy.authz\nallow if input.user == \"alice\"\n").unwrap();
        assert!(matches!(
            policies.decide(input("{}")),
            Err(PolicyError::Undefined)
        ));
    }

    #[test]
    fn missing_decision_rule_fails_the_load() {
        let err = set("package other\nallow := true\n").unwrap_err();
        assert!(matches!(err, PolicyError::MissingDecision { .. }), "{err}");
        assert!(err.to_string().contains("data.envoy.authz.allow"));
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = set("package envoy.authz\n\nallow if {\n  input.a ==\n}\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("test.rego:5"), "{text}");
    }

    #[test]
    fn nesting_at_the_limit_compiles_and_deeper_is_refused_with_file_and_line() {
        let at = |depth: usize| {
            format!(
                "package envoy.authz\n\nallow := count({}1{}) > 0\n",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(set(&at(nesting::MAX_NESTING)).is_ok());
        // One level past the limit: without the check this parses (slowly) and loads.
        let err = set(&at(nesting::MAX_NESTING + 1)).unwrap_err().to_string();
        assert!(err.contains("test.rego:3:"), "{err}");
        assert!(err.contains("nested more than"), "{err}");
    }

    #[test]
    fn v0_policies_need_the_v0_setting() {
        let rego = "package envoy.authz\ndefault allow = false\nallow { input.x == 1 }\n";
        assert!(set(rego).is_err());
        let config = PolicyConfig {
            rego_version: RegoVersion::V0,
            ..PolicyConfig::default()
        };
        let policies = PolicySet::from_sources(&[("v0.rego", rego)], None, &config).unwrap();
        assert!(policies.decide(input(r#"{"x":1}"#)).unwrap().allowed());
    }

    #[test]
    fn builtin_errors_are_undefined_as_in_opa() {
        let policies = set(
            "package envoy.authz\ndefault allow := false\nallow if net.cidr_contains(\"10.0.0.0/8\", input.ip)\nallow if input.fallback\n",
        )
        .unwrap();
        let outcome = policies
            .decide(input(r#"{"ip":"not-an-ip","fallback":true}"#))
            .unwrap();
        assert!(outcome.allowed());
    }

    #[test]
    fn conflicting_values_are_an_evaluation_error() {
        let policies =
            set("package envoy.authz\nallow := true if input.a\nallow := false if input.b\n")
                .unwrap();
        assert!(matches!(
            policies.decide(input(r#"{"a":true,"b":true}"#)),
            Err(PolicyError::Evaluation { .. })
        ));
    }

    #[test]
    fn runaway_policy_is_stopped_by_the_time_limit() {
        let config = PolicyConfig {
            eval_timeout: Duration::from_millis(50),
            ..PolicyConfig::default()
        };
        let policies = PolicySet::from_sources(
            &[(
                "slow.rego",
                "package envoy.authz\ndefault allow := false\nallow if {\n  count([x | some i in numbers.range(1, input.n); some j in numbers.range(1, input.n); x := i * j]) < 0\n}\n",
            )],
            None,
            &config,
        )
        .unwrap();
        // Run to the end, the comprehension is 16M products and a deny; only
        // the execution timer turns it into this error.
        let result = policies.decide(input(r#"{"n": 4000}"#));
        assert!(
            matches!(result, Err(PolicyError::Timeout { limit_ms: 50 })),
            "{result:?}"
        );
    }

    #[test]
    fn data_files_are_nested_by_directory_and_change_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("acme/users")).unwrap();
        std::fs::write(
            dir.path().join("policy.rego"),
            "package envoy.authz\nallow if data.acme.users.admins[_] == input.user\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("acme/users/data.yaml"),
            "admins:\n  - alice\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("acme/README.md"), "ignored").unwrap();
        let config = PolicyConfig {
            paths: vec![dir.path().to_owned()],
            ..PolicyConfig::default()
        };
        let first = PolicySet::load(&config).unwrap();
        assert!(
            first
                .decide(input(r#"{"user":"alice"}"#))
                .unwrap()
                .allowed()
        );
        assert_eq!(first.files().len(), 2);

        std::fs::write(
            dir.path().join("acme/users/data.yaml"),
            "admins:\n  - bob\n",
        )
        .unwrap();
        let second = PolicySet::load(&config).unwrap();
        assert_ne!(first.revision(), second.revision());
        assert!(matches!(
            second.decide(input(r#"{"user":"alice"}"#)),
            Err(PolicyError::Undefined)
        ));
    }

    #[test]
    fn broken_data_file_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.rego"),
            "package envoy.authz\nallow := true\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("data.json"), "{\n  \"a\": [1,\n}\n").unwrap();
        let config = PolicyConfig {
            paths: vec![dir.path().to_owned()],
            ..PolicyConfig::default()
        };
        let text = PolicySet::load(&config).unwrap_err().to_string();
        assert!(text.contains("data.json"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }
}
