//! Configuration: a TOML file, or the embedded defaults when there is none.
//!
//! Every table rejects unknown keys, so a typo is an error naming the key
//! and its line instead of a setting silently left at its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The whole configuration of one Arbiter process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub policy: PolicyConfig,
    pub decision: DecisionConfig,
    pub log: LogConfig,
}

/// The gRPC listener that Envoy calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the `envoy.service.auth.v3.Authorization` and `grpc.health.v1.Health` services.
    pub grpc_addr: SocketAddr,
    /// Largest CheckRequest accepted, in bytes (OPA's plugin: 4 MiB).
    pub max_request_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9191)),
            max_request_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The operator's HTTP listener: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub addr: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8181)),
        }
    }
}

/// Which Rego syntax the policies are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum RegoVersion {
    #[default]
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v0")]
    V0,
}

/// Where policies come from and how they are evaluated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directories (searched recursively) or single `.rego` / data files.
    /// Relative paths are taken from the config file's directory.
    pub paths: Vec<PathBuf>,
    /// The rule whose value is the decision, as in OPA's `--set=plugins.envoy_ext_authz_grpc.path`.
    pub decision: DecisionPath,
    pub rego_version: RegoVersion,
    /// Wall-clock limit on one evaluation; a policy that runs longer is a deny.
    #[serde(with = "humantime_serde")]
    pub eval_timeout: Duration,
    /// `false` (the default) gives OPA's semantics: a built-in error makes the
    /// expression undefined. `true` fails the whole evaluation (a deny).
    pub strict_builtin_errors: bool,
    /// Leave `parsed_body` null, as OPA's `skip-request-body-parse`.
    pub skip_request_body_parse: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            paths: vec![PathBuf::from("policies")],
            decision: DecisionPath::default(),
            rego_version: RegoVersion::V1,
            eval_timeout: Duration::from_millis(50),
            strict_builtin_errors: false,
            skip_request_body_parse: false,
        }
    }
}

/// What becomes of a decision once the policy has made it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Turn every deny into an allow and log the deny that would have been
    /// made. For rolling out a new policy; logged loudly at start.
    pub dry_run: bool,
    /// Response header that carries the machine-readable deny reason to the
    /// client; empty to send none.
    pub reason_header: String,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            reason_header: "x-arbiter-reason".to_owned(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `arbiter=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// A rule path such as `envoy/authz/allow`, naming `data.envoy.authz.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionPath {
    segments: Vec<String>,
}

impl DecisionPath {
    /// The path as a Rego reference, e.g. `data.envoy.authz.allow`.
    pub fn rule_ref(&self) -> String {
        let mut out = String::from("data");
        for segment in &self.segments {
            if is_identifier(segment) {
                out.push('.');
                out.push_str(segment);
            } else {
                out.push_str("[\"");
                out.push_str(&segment.replace('\\', "\\\\").replace('"', "\\\""));
                out.push_str("\"]");
            }
        }
        out
    }
}

impl DecisionPath {
    /// The package as regorus names it (`data.envoy.authz`) and the rule's
    /// name within it (`allow`).
    pub fn package_and_name(&self) -> Option<(String, String)> {
        let (name, package) = self.segments.split_last()?;
        let mut joined = String::from("data");
        for segment in package {
            joined.push('.');
            joined.push_str(segment);
        }
        Some((joined, name.clone()))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Default for DecisionPath {
    fn default() -> Self {
        Self {
            segments: ["envoy", "authz", "allow"].map(String::from).to_vec(),
        }
    }
}

impl FromStr for DecisionPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim().trim_start_matches('/');
        let trimmed = trimmed.strip_prefix("data/").unwrap_or(trimmed);
        let segments: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "decision path {s:?} must be slash-separated rule path segments, such as \"envoy/authz/allow\""
            ));
        }
        Ok(Self { segments })
    }
}

impl fmt::Display for DecisionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("/"))
    }
}

impl<'de> Deserialize<'de> for DecisionPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads and validates a config file. Relative policy paths are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has an unknown key or an invalid value.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, path, base)
    }

    /// Parses a config from TOML text; `origin` names it in errors and
    /// `base` resolves relative policy paths.
    ///
    /// # Errors
    /// Invalid TOML, an unknown key or an invalid value.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for path in &mut config.policy.paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.policy.paths.is_empty() {
            return Err(ConfigError::Invalid {
                path: "policy.paths".into(),
                message: "at least one policy path is required".into(),
            });
        }
        if self.policy.eval_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                path: "policy.eval_timeout".into(),
                message: "must be greater than zero".into(),
            });
        }
        if !self.decision.reason_header.is_empty()
            && !self
                .decision
                .reason_header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid {
                path: "decision.reason_header".into(),
                message: "must be a lower-case header name".into(),
            });
        }
        if self.server.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid {
                path: "server.max_request_bytes".into(),
                message: "must be at least 1024".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Path::new("/etc/arbiter"))
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.grpc_addr.to_string(), "127.0.0.1:9191");
        assert_eq!(config.admin.addr.to_string(), "127.0.0.1:8181");
        assert_eq!(config.policy.decision.rule_ref(), "data.envoy.authz.allow");
        assert_eq!(config.policy.eval_timeout, Duration::from_millis(50));
        assert_eq!(
            config.policy.paths,
            vec![PathBuf::from("/etc/arbiter/policies")]
        );
        assert!(!config.decision.dry_run);
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let err = parse("[policy]\ndecision = \"a/b\"\ndry_rn = true\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("dry_rn"), "{text}");
        assert!(text.contains("test.toml"), "{text}");
    }

    #[test]
    fn decision_path_forms() {
        let p: DecisionPath = "/envoy/authz/allow".parse().unwrap();
        assert_eq!(p.rule_ref(), "data.envoy.authz.allow");
        let p: DecisionPath = "data/istio/authz/allow".parse().unwrap();
        assert_eq!(p.rule_ref(), "data.istio.authz.allow");
        let p: DecisionPath = "my-app/allow".parse().unwrap();
        assert_eq!(p.rule_ref(), "data[\"my-app\"].allow");
        assert_eq!(p.to_string(), "my-app/allow");
        assert!("envoy//allow".parse::<DecisionPath>().is_err());
        assert!("".parse::<DecisionPath>().is_err());
    }

    #[test]
    fn timeouts_and_versions_parse() {
        let config =
            parse("[policy]\neval_timeout = \"5ms\"\nrego_version = \"v0\"\npaths = [\"/abs\"]\n")
                .unwrap();
        assert_eq!(config.policy.eval_timeout, Duration::from_millis(5));
        assert_eq!(config.policy.rego_version, RegoVersion::V0);
        assert_eq!(config.policy.paths, vec![PathBuf::from("/abs")]);
        assert!(parse("[policy]\nrego_version = \"v2\"\n").is_err());
        assert!(parse("[policy]\neval_timeout = \"0s\"\n").is_err());
    }
}
