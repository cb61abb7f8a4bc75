//! Policy fixtures: named requests with the decisions they must get, run
//! through the real decision path (tokens signed at run time by test keys and
//! verified like any other), plus Rego unit tests (`test_*` rules in
//! `*_test.rego` files), reported like `opa test`.
//!
//! A fixture file is `*.fixtures.yaml`, `*.fixtures.yml` or
//! `*.fixtures.json` anywhere under the policy paths:
//!
//! ```yaml
//! cases:
//!   - name: frontend may list products
//!     request:                      # how Envoy would send it, compactly
//!       method: GET
//!       path: /api/products/42?fields=name
//!       headers: {accept: application/json}
//!       body: '{"a": 1}'
//!       source: 10.1.2.3            # the peer address Envoy reports
//!       principal: spiffe://cluster.local/ns/shop/sa/frontend
//!     token:                        # a user token, signed at run time
//!       claims: {sub: alice, scope: "orders:read"}
//!     device:                       # a device posture token, signed at run time
//!       claims: {compliant: true}
//!     expect:
//!       allowed: false
//!       status: 403
//!       reason: device_not_compliant
//!       headers: {x-arbiter-reason: device_not_compliant}
//!       body: ""
//! ```
//!
//! `request.check_request` takes a whole CheckRequest in the protobuf JSON
//! mapping instead; `token.raw` / `device.raw` take a ready token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::{Config, JwtProviderConfig, OnInvalidToken, TokenLocation};
use crate::identity::test_keys::{TestKey, jwks};
use crate::pipeline::Pipeline;
use crate::policy::PolicySet;
use crate::proto::auth::CheckRequest;
use crate::proto::auth::check_response::HttpResponse;

/// Issuer and audience of the tokens fixtures sign.
pub const FIXTURE_ISSUER: &str = "https://idp.fixtures.arbiter.test";
pub const FIXTURE_DEVICE_ISSUER: &str = "https://mdm.fixtures.arbiter.test";
pub const FIXTURE_AUDIENCE: &str = "arbiter-fixtures";

/// Why fixtures could not be run (as opposed to a case failing).
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("invalid fixture file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("fixture setup failed: {0}")]
    Setup(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: RequestSpec,
    token: Option<TokenSpec>,
    device: Option<TokenSpec>,
    expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    source: Option<String>,
    principal: Option<String>,
    destination_principal: Option<String>,
    check_request: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
    raw: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    allowed: bool,
    status: Option<u16>,
    reason: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
}

/// The outcome of one case or Rego test.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `file: case name`, or the Rego rule path.
    pub name: String,
    /// `None` when it passed; otherwise what went wrong, readable.
    pub failure: Option<String>,
}

/// Everything `arbiter test` found and ran.
#[derive(Debug, Default)]
pub struct Report {
    pub fixtures: Vec<CaseResult>,
    pub rego_tests: Vec<CaseResult>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.fixtures
            .iter()
            .chain(&self.rego_tests)
            .filter(|r| r.failure.is_some())
            .count()
    }

    pub fn total(&self) -> usize {
        self.fixtures.len() + self.rego_tests.len()
    }

    /// The report as `arbiter test` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for result in self.fixtures.iter().chain(&self.rego_tests) {
            if let Some(failure) = &result.failure {
                let _ = writeln!(out, "FAIL: {}\n{}\n", result.name, indent(failure));
            }
        }
        if !self.rego_tests.is_empty() {
            let passed = self
                .rego_tests
                .iter()
                .filter(|r| r.failure.is_none())
                .count();
            let _ = writeln!(out, "Rego tests: PASS {passed}/{}", self.rego_tests.len());
        }
        let passed = self.fixtures.iter().filter(|r| r.failure.is_none()).count();
        let _ = writeln!(out, "Fixtures: PASS {passed}/{}", self.fixtures.len());
        let _ = writeln!(
            out,
            "{} passed, {} failed",
            self.total() - self.failed(),
            self.failed()
        );
        out
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fixture suite under the configured paths, ready to run: policies
/// loaded with the fixture keys in place, the keys to sign with, the files.
struct Suite {
    pipeline: Arc<Pipeline>,
    user_key: TestKey,
    device_key: TestKey,
    files: FoundFiles,
}

impl Suite {
    async fn prepare(config: &Config) -> Result<Self, FixtureError> {
        let files = find_files(&config.policy.paths)?;
        let user_key = TestKey::generate("fixture-user", jsonwebtoken::Algorithm::ES256)
            .map_err(|e| FixtureError::Setup(e.to_string()))?;
        let device_key = TestKey::generate("fixture-device", jsonwebtoken::Algorithm::ES256)
            .map_err(|e| FixtureError::Setup(e.to_string()))?;
        let config = fixture_config(config, &user_key, &device_key);
        let policies = PolicySet::load(&config.policy)?;
        let pipeline = Arc::new(
            Pipeline::new(&config, policies, &reqwest::Client::new()).without_decision_log(),
        );
        if !pipeline
            .authenticator
            .wait_ready(Duration::from_secs(5))
            .await
        {
            return Err(FixtureError::Setup("fixture keys did not load".into()));
        }
        Ok(Self {
            pipeline,
            user_key,
            device_key,
            files,
        })
    }

    /// Every case of every fixture file, with the file's name.
    fn cases(&self) -> Result<Vec<(String, Case)>, FixtureError> {
        let mut cases = Vec::new();
        for path in &self.files.fixtures {
            let text = std::fs::read_to_string(path).map_err(|e| FixtureError::Read {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let file: FixtureFile = parse_fixture_file(path, &text)?;
            let label = path.display().to_string();
            cases.extend(
                file.cases
                    .into_iter()
                    .map(|case| (format!("{label}: {}", case.name), case)),
            );
        }
        Ok(cases)
    }
}

/// Runs every fixture file and Rego unit test under the configured policy
/// paths. Must run inside a Tokio runtime.
///
/// # Errors
/// The policies do not load, or a fixture file cannot be read or parsed.
pub async fn run(config: &Config) -> Result<Report, FixtureError> {
    let suite = Suite::prepare(config).await?;
    let rego_tests = run_rego_tests(&suite.pipeline.policies.load(), &suite.files.rego_tests);
    let mut fixtures = Vec::new();
    for (name, case) in suite.cases()? {
        let failure =
            match run_case(&suite.pipeline, &case, &suite.user_key, &suite.device_key).await {
                Ok(failure) => failure,
                Err(message) => Some(format!("cannot build the request: {message}")),
            };
        fixtures.push(CaseResult { name, failure });
    }
    Ok(Report {
        fixtures,
        rego_tests,
    })
}

/// The input document of every fixture case whose request reaches the
/// policy (tokens signed and verified, as `arbiter test` runs them): what
/// the engines are compared on.
///
/// # Errors
/// As [`run`], or a case's request cannot be built.
pub async fn inputs(config: &Config) -> Result<Vec<(String, regorus::Value)>, FixtureError> {
    let suite = Suite::prepare(config).await?;
    let mut inputs = Vec::new();
    for (name, case) in suite.cases()? {
        let request = build_request(&case, &suite.user_key, &suite.device_key)
            .map_err(|message| FixtureError::Setup(format!("{name}: {message}")))?;
        if let Some(input) = suite.pipeline.decide(request, true).await.input {
            inputs.push((name, input));
        }
    }
    Ok(inputs)
}

fn parse_fixture_file(path: &Path, text: &str) -> Result<FixtureFile, FixtureError> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let parsed = if is_json {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        yaml_serde::from_str(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| FixtureError::Parse {
        path: path.to_owned(),
        message,
    })
}

/// The user's config with the fixture IdP and device service in place of
/// the real ones, so tokens signed here verify and no IdP is contacted.
fn fixture_config(base: &Config, user: &TestKey, device: &TestKey) -> Config {
    let provider =
        |name: &str, issuer: &str, key: &TestKey, from: TokenLocation| JwtProviderConfig {
            name: name.into(),
            issuer: issuer.into(),
            audiences: vec![FIXTURE_AUDIENCE.into()],
            skip_audience_check: false,
            keys: crate::config::KeySource::Inline(jwks(&[key]).to_string().into()),
            algorithms: vec![crate::config::SigningAlgorithm::ES256],
            leeway: Duration::from_secs(60),
            max_lifetime: None,
            from,
            on_invalid: OnInvalidToken::Deny,
            refresh_min: Duration::from_secs(3600),
            refresh_max: Duration::from_secs(3600),
            kid_miss_min_interval: Duration::from_secs(3600),
            max_staleness: Duration::from_secs(24 * 3600),
            fetch_timeout: Duration::from_secs(5),
        };
    let mut config = base.clone();
    let (from, on_invalid) = base
        .identity
        .jwt
        .first()
        .map(|p| (p.from.clone(), p.on_invalid))
        .unwrap_or_default();
    let mut user_provider = provider("fixtures", FIXTURE_ISSUER, user, from);
    user_provider.on_invalid = on_invalid;
    config.identity.jwt = vec![user_provider];
    config.device.jwt = Some(provider(
        "fixtures-device",
        FIXTURE_DEVICE_ISSUER,
        device,
        TokenLocation::default(),
    ));
    config.decision.dry_run = false;
    config
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sign(spec: &TokenSpec, key: &TestKey, issuer: &str, device: bool) -> Result<String, String> {
    if let Some(raw) = &spec.raw {
        return Ok(raw.clone());
    }
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), issuer.into());
    claims.insert("aud".into(), FIXTURE_AUDIENCE.into());
    claims.insert("iat".into(), now().into());
    claims.insert("exp".into(), (now() + 3600).into());
    if device {
        claims.insert("sub".into(), "fixture-device".into());
    }
    for (k, v) in &spec.claims {
        if v.is_null() {
            claims.remove(k);
        } else {
            claims.insert(k.clone(), v.clone());
        }
    }
    // Relative times: `iat: -7200` means two hours ago, `exp: -60` a minute ago
    // (also `nbf` and `auth_time`).
    for name in ["iat", "exp", "nbf", "auth_time"] {
        if let Some(offset) = claims.get(name).and_then(serde_json::Value::as_i64)
            && offset.unsigned_abs() < 10 * 365 * 24 * 3600
        {
            let at = i64::try_from(now())
                .unwrap_or(i64::MAX)
                .saturating_add(offset);
            claims.insert(name.into(), at.into());
        }
    }
    key.sign(&serde_json::Value::Object(claims))
        .map_err(|e| e.to_string())
}

fn build_request(case: &Case, user: &TestKey, device: &TestKey) -> Result<CheckRequest, String> {
    let spec = &case.request;
    let mut request: CheckRequest = match &spec.check_request {
        Some(full) => {
            serde_json::from_value(full.clone()).map_err(|e| format!("check_request: {e}"))?
        }
        None => {
            let method = spec.method.clone().unwrap_or_else(|| "GET".into());
            let path = spec.path.clone().unwrap_or_else(|| "/".into());
            let host = spec.host.clone().unwrap_or_else(|| "fixture.test".into());
            let mut headers: serde_json::Map<String, serde_json::Value> = spec
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone().into()))
                .collect();
            headers.insert(":method".into(), method.clone().into());
            headers.insert(":path".into(), path.clone().into());
            headers.insert(":authority".into(), host.clone().into());
            let body = spec.body.clone().unwrap_or_default();
            if !body.is_empty() && !headers.contains_key("content-length") {
                headers.insert("content-length".into(), body.len().to_string().into());
            }
            let peer = |address: &Option<String>, principal: &Option<String>| {
                let mut p = serde_json::Map::new();
                if let Some(address) = address {
                    p.insert("address".into(), serde_json::json!({"socketAddress": {"address": address, "portValue": 40000}}));
                }
                if let Some(principal) = principal {
                    p.insert("principal".into(), principal.clone().into());
                }
                serde_json::Value::Object(p)
            };
            serde_json::from_value(serde_json::json!({
                "attributes": {
                    "source": peer(&Some(spec.source.clone().unwrap_or_else(|| "10.0.0.1".into())), &spec.principal),
                    "destination": peer(&None, &spec.destination_principal),
                    "request": {"http": {
                        "id": format!("fixture-{}", case.name), "method": method, "path": path, "host": host,
                        "scheme": "https", "protocol": "HTTP/1.1", "headers": headers, "body": body
                    }}
                }
            }))
            .map_err(|e| e.to_string())?
        }
    };
    let http = request
        .attributes
        .get_or_insert_with(Default::default)
        .request
        .get_or_insert_with(Default::default)
        .http
        .get_or_insert_with(Default::default);
    if let Some(token) = &case.token {
        let signed = sign(token, user, FIXTURE_ISSUER, false)?;
        http.headers
            .insert("authorization".into(), format!("Bearer {signed}"));
    }
    if let Some(posture) = &case.device {
        let signed = sign(posture, device, FIXTURE_DEVICE_ISSUER, true)?;
        http.headers.insert("x-device-posture".into(), signed);
    }
    Ok(request)
}

/// Runs one case; `Ok(None)` when it passed.
async fn run_case(
    pipeline: &Pipeline,
    case: &Case,
    user: &TestKey,
    device: &TestKey,
) -> Result<Option<String>, String> {
    let request = build_request(case, user, device)?;
    let checked = pipeline.decide(request, true).await;
    let response = &checked.response;
    let allowed = response.status.as_ref().is_some_and(|s| s.code == 0);
    let (status, headers, body) = match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().and_then(|s| u16::try_from(s.code).ok()),
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            d.body.clone(),
        ),
        Some(HttpResponse::OkResponse(ok)) => (
            None,
            ok.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect::<Vec<_>>(),
            String::new(),
        ),
        None => (None, Vec::new(), String::new()),
    };
    let reason = checked
        .record
        .deny_reason
        .as_ref()
        .map(|r| r.as_str().to_owned());
    let want = &case.expect;
    let mut problems = Vec::new();
    if allowed != want.allowed {
        problems.push(format!(
            "expected {}, got {}",
            verdict(want.allowed),
            verdict(allowed)
        ));
    }
    if let Some(expected) = want.status
        && status != Some(expected)
    {
        problems.push(format!(
            "expected status {expected}, got {}",
            status.map_or("none".into(), |s| s.to_string())
        ));
    }
    if let Some(expected) = &want.reason
        && reason.as_deref() != Some(expected.as_str())
    {
        problems.push(format!(
            "expected reason {expected:?}, got {:?}",
            reason.unwrap_or_default()
        ));
    }
    for (name, value) in &want.headers {
        let got: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if !got.contains(&value.as_str()) {
            problems.push(format!("expected header {name}: {value:?}, got {got:?}"));
        }
    }
    if let Some(expected) = &want.body
        && *expected != body
    {
        problems.push(format!("expected body {expected:?}, got {body:?}"));
    }
    if problems.is_empty() {
        return Ok(None);
    }
    let mut text = problems.join("\n");
    if let Some(error) = &checked.record.error {
        let _ = write!(text, "\nerror: {error}");
    }
    match &checked.input {
        Some(input) => {
            let pretty = input
                .to_json_str()
                .ok()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .and_then(|j| serde_json::to_string_pretty(&j).ok())
                .unwrap_or_default();
            let _ = write!(text, "\ninput:\n{pretty}");
        }
        None => text.push_str("\n(the policy was not consulted: the token was rejected first)"),
    }
    Ok(Some(text))
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

#[derive(Debug, Default)]
struct FoundFiles {
    fixtures: Vec<PathBuf>,
    rego_tests: Vec<PathBuf>,
}

fn find_files(paths: &[PathBuf]) -> Result<FoundFiles, FixtureError> {
    fn walk(dir: &Path, found: &mut FoundFiles) -> Result<(), FixtureError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| FixtureError::Read {
                path: dir.to_owned(),
                message: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(&path, found)?;
            } else {
                classify(&path, &name, found);
            }
        }
        Ok(())
    }
    fn classify(path: &Path, name: &str, found: &mut FoundFiles) {
        if [".fixtures.yaml", ".fixtures.yml", ".fixtures.json"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            found.fixtures.push(path.to_owned());
        } else if name.ends_with("_test.rego") {
            found.rego_tests.push(path.to_owned());
        }
    }
    let mut found = FoundFiles::default();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut found)?;
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            classify(path, &name, &mut found);
        }
    }
    Ok(found)
}

/// Every identifier in a Rego file that starts with `test_`, outside
/// comments and strings, once each: the candidates for test rules, which
/// the compiled policy then confirms as rule heads.
fn test_rule_candidates(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut start = None;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let ident = b.is_ascii_alphanumeric() || b == b'_';
            match (start, ident) {
                (None, true) if !in_string => {
                    let after_ident = i > 0 && bytes.get(i - 1).is_some_and(|p| *p == b'.');
                    if !after_ident {
                        start = Some(i);
                    }
                }
                (Some(from), false) => {
                    push_candidate(&mut names, line.get(from..i));
                    start = None;
                }
                _ => {}
            }
            if !ident && start.is_none() {
                match b {
                    b'"' | b'`' => in_string = !in_string,
                    b'#' if !in_string => break,
                    _ => {}
                }
            }
        }
        if let Some(from) = start {
            push_candidate(&mut names, line.get(from..));
        }
    }
    names
}

fn push_candidate<'a>(names: &mut Vec<&'a str>, word: Option<&'a str>) {
    if let Some(word) = word.filter(|w| w.starts_with("test_"))
        && !names.contains(&word)
    {
        names.push(word);
    }
}

fn run_rego_tests(policies: &PolicySet, files: &[PathBuf]) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => results.extend(run_rego_test_file(policies, file, &text)),
            Err(e) => results.push(CaseResult {
                name: file.display().to_string(),
                failure: Some(format!("cannot read the file: {e}")),
            }),
        }
    }
    results
}

/// Runs every `test_` rule one Rego test file declares. A test file in
/// which none is found fails: a test the runner cannot see must not pass.
fn run_rego_test_file(policies: &PolicySet, file: &Path, text: &str) -> Vec<CaseResult> {
    let rules = match policies.declared_rules(file, test_rule_candidates(text)) {
        Ok(rules) if rules.is_empty() => Err("no test_ rules in a _test.rego file".to_owned()),
        Ok(rules) => Ok(rules),
        Err(e) => Err(e.to_string()),
    };
    let rules = match rules {
        Ok(rules) => rules,
        Err(failure) => {
            return vec![CaseResult {
                name: file.display().to_string(),
                failure: Some(failure),
            }];
        }
    };
    rules
        .into_iter()
        .map(|rule| {
            let failure = match policies.evaluate(&rule, regorus::Value::new_object()) {
                Ok(regorus::Value::Bool(true)) => None,
                Ok(regorus::Value::Undefined) | Ok(regorus::Value::Bool(false)) => {
                    Some("FAIL".into())
                }
                Ok(other) => Some(format!("FAIL: not a boolean: {other}")),
                Err(e) => Some(format!("ERROR: {e}")),
            };
            CaseResult {
                name: rule,
                failure,
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn test_rules_are_found_wherever_they_stand_and_only_rule_heads_count() {
        let text = "package a.b_test\n\ntest_one if { true }\ntest_two := true\nhelper if true\n  test_indented if {\n    test_local := 1\n    test_local == 1\n  }\n\ttest_tabbed := true # test_in_comment\nnot_a_test if data.x.test_ref\nmsg := \"test_in_string\"\n";
        assert_eq!(
            test_rule_candidates(text),
            vec![
                "test_one",
                "test_two",
                "test_indented",
                "test_local",
                "test_tabbed"
            ]
        );
        let policies = PolicySet::from_sources(
            &[
                ("a_test.rego", text),
                ("p.rego", "package envoy.authz\nallow := true\n"),
            ],
            None,
            &crate::config::PolicyConfig::default(),
        )
        .unwrap();
        let results = run_rego_test_file(&policies, Path::new("a_test.rego"), text);
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "data.a.b_test.test_one",
                "data.a.b_test.test_two",
                "data.a.b_test.test_indented",
                "data.a.b_test.test_tabbed"
            ]
        );
        assert!(results.iter().all(|r| r.failure.is_none()), "{results:?}");
    }

    #[test]
    fn a_test_file_without_test_rules_fails_loudly() {
        let policies = PolicySet::from_sources(
            &[
                ("empty_test.rego", "package x_test\nhelper := true\n"),
                ("p.rego", "package envoy.authz\nallow := true\n"),
            ],
            None,
            &crate::config::PolicyConfig::default(),
        )
        .unwrap();
        let results = run_rego_test_file(
            &policies,
            Path::new("empty_test.rego"),
            "package x_test\nhelper := true\n",
        );
        assert_eq!(results.len(), 1);
        assert!(
            results[0]
                .failure
                .as_deref()
                .unwrap_or_default()
                .contains("no test_ rules"),
            "{results:?}"
        );
    }

    #[test]
    fn fixture_files_reject_unknown_keys() {
        let err = parse_fixture_file(
            Path::new("x.fixtures.yaml"),
            "cases:\n  - name: a\n    expect: {allowed: true}\n    requst: {}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("requst"), "{err}");
    }
}
