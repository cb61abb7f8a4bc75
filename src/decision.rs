//! Turning a policy outcome, or the error that stopped it, into Envoy's
//! `CheckResponse` and a record for the decision log.
//!
//! Total and fail-closed: every error becomes a `denied_response` with a
//! bounded reason. Arbiter never answers with a gRPC error or an
//! `error_response`, because Envoy applies `failure_mode_allow` to those
//! and a misconfigured Envoy would then let the request through.

use regorus::Value;

use crate::identity::TokenError;
use crate::policy::{HeaderList, PolicyError, PolicyOutcome};
use crate::proto::auth::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
};
use crate::proto::core::{HeaderValue, HeaderValueOption, QueryParameter, header_value_option};
use crate::proto::http_type::HttpStatus;
use crate::proto::rpc::Status;

/// gRPC status codes Arbiter answers with inside `CheckResponse.status`.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;

const DEFAULT_DENY_STATUS: u16 = 403;
const MAX_REASON_LEN: usize = 64;

/// How decisions are turned into responses.
#[derive(Debug, Clone, Default)]
pub struct DecisionOptions {
    /// Answer every deny with an allow, recording the deny that would have been made.
    pub dry_run: bool,
    /// Header that carries the deny reason to the client, if any.
    pub reason_header: Option<String>,
}

/// Why a request was denied: a small, fixed vocabulary for metrics, logs
/// and the reason header, plus whatever reason the policy itself gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The policy said no; with the policy's own reason when it gave a valid one.
    Policy(Option<String>),
    /// The decision rule was undefined for this input.
    Undefined,
    /// The decision was neither a boolean nor a valid result object.
    InvalidResult,
    /// Evaluation failed (a conflict, or a strict built-in error).
    PolicyError,
    /// Evaluation ran past its time limit.
    Timeout,
    /// The request's token was rejected before the policy was asked.
    Token(TokenError),
    /// The request's body has a supported content type but does not parse.
    RequestParseError,
    /// Too many decisions in progress: the request waited until its deadline.
    Overloaded,
    /// The decision did not finish before its deadline.
    DeadlineExceeded,
    /// Something else on the decision path failed.
    Internal,
}

impl DenyReason {
    /// The label used in metrics, logs and the reason header.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Policy(Some(reason)) => reason,
            Self::Policy(None) => "policy_denied",
            Self::Undefined => "policy_undefined",
            Self::InvalidResult => "invalid_result",
            Self::PolicyError => "policy_error",
            Self::Timeout => "policy_timeout",
            Self::Token(error) => error.label(),
            Self::RequestParseError => "request_parse_error",
            Self::Overloaded => "overloaded",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Internal => "internal_error",
        }
    }

    fn from_error(error: &PolicyError) -> Self {
        match error {
            PolicyError::Undefined => Self::Undefined,
            PolicyError::InvalidResult { .. } => Self::InvalidResult,
            PolicyError::Timeout { .. } => Self::Timeout,
            PolicyError::Evaluation { .. } => Self::PolicyError,
            // Loading errors never reach a decision; should one, it is ours.
            PolicyError::Read { .. }
            | PolicyError::Compile { .. }
            | PolicyError::Data { .. }
            | PolicyError::NoPolicies { .. }
            | PolicyError::MissingDecision { .. }
            | PolicyError::Prepare { .. }
            | PolicyError::Rvm { .. }
            | PolicyError::Bundle(_) => Self::Internal,
        }
    }

    /// A policy's reason is used as a label only if it is short and plain;
    /// anything else (it may carry request data) becomes `policy_denied`.
    pub fn from_policy(reason: Option<&str>) -> Self {
        let valid = reason.filter(|r| {
            !r.is_empty()
                && r.len() <= MAX_REASON_LEN
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        });
        Self::Policy(valid.map(str::to_owned))
    }
}

/// What was decided, for the decision log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub decision_id: String,
    /// What Envoy was told: `true` lets the request through.
    pub allowed: bool,
    /// Set when the policy denied: why. Also set under dry run, where `allowed` stays `true`.
    pub deny_reason: Option<DenyReason>,
    /// The HTTP status of the denied response, if any.
    pub http_status: Option<u16>,
    /// The error that made this a deny, for the log only (never sent to the client).
    pub error: Option<String>,
    pub dry_run: bool,
}

/// A decision ready to send.
#[derive(Debug, Clone)]
pub struct Decision {
    pub response: CheckResponse,
    pub record: DecisionRecord,
}

/// What a decision comes to before it is sent: the one place an allow is
/// made. Everything that stops a request (the policy's deny, a policy
/// error, a refused token or body, no time or room to decide) is a `Deny`.
enum Verdict {
    Allow(PolicyOutcome),
    Deny {
        reason: DenyReason,
        status: u16,
        /// The policy's own response (headers, body), or one made here.
        outcome: PolicyOutcome,
        /// For the log only, never sent to the client.
        error: Option<String>,
    },
}

/// Why a request is denied without the policy's answer.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The request's token is invalid (401), or its keys cannot be had (503).
    Token(TokenError),
    /// The body has a supported content type and does not parse (400).
    Body(String),
    /// No time or room to decide (503).
    Unavailable(DenyReason),
}

/// Decides. Only an outcome whose `allowed` is exactly `true` produces an OK.
pub fn decide(
    result: Result<PolicyOutcome, PolicyError>,
    options: &DecisionOptions,
    decision_id: String,
) -> Decision {
    let verdict = match result {
        Ok(outcome) if outcome.allowed() => Verdict::Allow(outcome),
        Ok(outcome) => Verdict::Deny {
            reason: DenyReason::from_policy(outcome.reason.as_deref()),
            status: outcome.http_status.unwrap_or(DEFAULT_DENY_STATUS),
            outcome,
            error: None,
        },
        Err(error) => Verdict::Deny {
            reason: DenyReason::from_error(&error),
            status: DEFAULT_DENY_STATUS,
            outcome: PolicyOutcome::default(),
            error: Some(error.to_string()),
        },
    };
    respond(verdict, options, decision_id)
}

/// Denies a request before (or instead of) the policy's answer.
pub fn refuse(refusal: Refusal, options: &DecisionOptions, decision_id: String) -> Decision {
    let mut outcome = PolicyOutcome::default();
    let (reason, status, error) = match refusal {
        // RFC 6750: an invalid token is a 401 with `WWW-Authenticate`; keys
        // or an introspection endpoint that cannot be had are a 503 (the
        // token may be fine).
        Refusal::Token(
            error @ (TokenError::KeysUnavailable
            | TokenError::KeysStale
            | TokenError::IntrospectionUnavailable),
        ) => (DenyReason::Token(error), 503, None),
        Refusal::Token(error) => {
            outcome.headers = vec![(
                "www-authenticate".to_owned(),
                "Bearer error=\"invalid_token\"".to_owned(),
            )];
            (DenyReason::Token(error), 401, None)
        }
        // As OPA's Envoy plugin 1.x: 400, body `request_parse_error: <why>`.
        Refusal::Body(why) => {
            let reason = DenyReason::RequestParseError;
            outcome.body = format!("{}: {why}", reason.as_str());
            (reason, 400, Some(why))
        }
        Refusal::Unavailable(reason) => (reason, 503, None),
    };
    respond(
        Verdict::Deny {
            reason,
            status,
            outcome,
            error,
        },
        options,
        decision_id,
    )
}

/// The verdict as Envoy's answer and the log's record. Under dry run a
/// deny is answered with an allow and recorded as the deny it would be.
fn respond(verdict: Verdict, options: &DecisionOptions, decision_id: String) -> Decision {
    let mut record = DecisionRecord {
        decision_id,
        allowed: true,
        deny_reason: None,
        http_status: None,
        error: None,
        dry_run: options.dry_run,
    };
    let response = match verdict {
        Verdict::Allow(outcome) => allow(&outcome, &record.decision_id),
        Verdict::Deny {
            reason,
            error,
            status: _,
            outcome: _,
        } if options.dry_run => {
            record.deny_reason = Some(reason);
            record.error = error;
            allow(&PolicyOutcome::default(), &record.decision_id)
        }
        Verdict::Deny {
            reason,
            status,
            outcome,
            error,
        } => {
            record.allowed = false;
            record.http_status = Some(status);
            record.error = error;
            let response = deny(&outcome, &reason, status, options, &record.decision_id);
            record.deny_reason = Some(reason);
            response
        }
    };
    Decision { response, record }
}

fn allow(outcome: &PolicyOutcome, decision_id: &str) -> CheckResponse {
    CheckResponse {
        status: Some(Status {
            code: GRPC_OK,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: header_options(&outcome.headers),
            headers_to_remove: outcome.request_headers_to_remove.clone(),
            response_headers_to_add: header_options(&outcome.response_headers_to_add),
            query_parameters_to_set: outcome
                .query_parameters_to_set
                .iter()
                .map(|(key, value)| QueryParameter {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            query_parameters_to_remove: outcome.query_parameters_to_remove.clone(),
        })),
        dynamic_metadata: Some(metadata(outcome.dynamic_metadata.as_ref(), decision_id)),
    }
}

fn deny(
    outcome: &PolicyOutcome,
    reason: &DenyReason,
    status: u16,
    options: &DecisionOptions,
    decision_id: &str,
) -> CheckResponse {
    let mut headers = outcome.headers.clone();
    if let Some(name) = &options.reason_header {
        headers.push((name.clone(), reason.as_str().to_owned()));
    }
    CheckResponse {
        status: Some(Status {
            code: GRPC_PERMISSION_DENIED,
            message: reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: header_options(&headers),
            body: outcome.body.clone(),
        })),
        dynamic_metadata: Some(metadata(outcome.dynamic_metadata.as_ref(), decision_id)),
    }
}

/// The first value of a name replaces whatever the client sent under that
/// name; further values of the same name are appended. The upstream thus
/// sees exactly the values the policy set, never a client's spoofed one.
///
/// Envoy's ext_authz filter reads `append_action` only when it is not the
/// default (`APPEND_IF_EXISTS_OR_ADD`) and otherwise falls back to the
/// deprecated `append` flag, so appends are asked for with `append: true`.
fn header_options(headers: &HeaderList) -> Vec<HeaderValueOption> {
    let mut seen: Vec<&str> = Vec::new();
    headers
        .iter()
        .map(|(key, value)| {
            let (append, action) = if seen.contains(&key.as_str()) {
                (
                    Some(pbjson_types::BoolValue { value: true }),
                    header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
                )
            } else {
                seen.push(key);
                (
                    None,
                    header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
                )
            };
            HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.clone(),
                    value: value.clone(),
                    raw_value: Vec::new(),
                }),
                append,
                append_action: action.into(),
                keep_empty_value: false,
            }
        })
        .collect()
}

/// The policy's dynamic metadata plus `decision_id`, as OPA's plugin adds it.
fn metadata(policy_metadata: Option<&Value>, decision_id: &str) -> pbjson_types::Struct {
    let mut fields = match policy_metadata.map(to_proto_value) {
        Some(pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::StructValue(s)),
        }) => s.fields,
        _ => Default::default(),
    };
    fields.insert(
        "decision_id".to_owned(),
        pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::StringValue(
                decision_id.to_owned(),
            )),
        },
    );
    pbjson_types::Struct { fields }
}

fn to_proto_value(value: &Value) -> pbjson_types::Value {
    use pbjson_types::value::Kind;
    let kind = match value {
        Value::Null | Value::Undefined => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(_) => Kind::NumberValue(value.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.to_string()),
        Value::Array(items) => Kind::ListValue(pbjson_types::ListValue {
            values: items.iter().map(to_proto_value).collect(),
        }),
        Value::Set(items) => Kind::ListValue(pbjson_types::ListValue {
            values: items.iter().map(to_proto_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(pbjson_types::Struct {
            fields: object
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.to_string(),
                        other => other.to_json_str().unwrap_or_default(),
                    };
                    (key, to_proto_value(v))
                })
                .collect(),
        }),
    };
    pbjson_types::Value { kind: Some(kind) }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    fn options() -> DecisionOptions {
        DecisionOptions {
            dry_run: false,
            reason_header: Some("x-arbiter-reason".into()),
        }
    }

    fn outcome(json: &str) -> Result<PolicyOutcome, PolicyError> {
        PolicyOutcome::from_value(Value::from_json_str(json).unwrap())
    }

    fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
        match &response.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d,
            other => panic!("expected a denied response, got {other:?}"),
        }
    }

    fn header<'a>(headers: &'a [HeaderValueOption], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.as_str())
    }

    #[test]
    fn allow_carries_mutations_and_decision_id() {
        let d = decide(
            outcome(
                r#"{"allowed": true, "headers": {"x-user": ["alice", "admin"]}, "request_headers_to_remove": ["authorization"], "dynamic_metadata": {"tier": "gold"}}"#,
            ),
            &options(),
            "id-1".into(),
        );
        assert!(d.record.allowed);
        assert_eq!(d.response.status.as_ref().unwrap().code, GRPC_OK);
        let Some(HttpResponse::OkResponse(ok)) = &d.response.http_response else {
            panic!("expected ok_response");
        };
        assert_eq!(ok.headers.len(), 2);
        assert_eq!(
            ok.headers[0].append_action,
            i32::from(header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd)
        );
        assert_eq!(ok.headers[0].append, None);
        assert_eq!(
            ok.headers[1].append,
            Some(pbjson_types::BoolValue { value: true })
        );
        assert_eq!(ok.headers_to_remove, vec!["authorization"]);
        let meta = d.response.dynamic_metadata.unwrap();
        assert!(meta.fields.contains_key("tier"));
        assert!(matches!(
            meta.fields["decision_id"].kind,
            Some(pbjson_types::value::Kind::StringValue(ref s)) if s == "id-1"
        ));
    }

    #[test]
    fn boolean_false_is_a_403_with_the_reason() {
        let d = decide(outcome("false"), &options(), "id".into());
        assert!(!d.record.allowed);
        assert_eq!(
            d.response.status.as_ref().unwrap().code,
            GRPC_PERMISSION_DENIED
        );
        let denied = denied(&d.response);
        assert_eq!(denied.status.as_ref().unwrap().code, 403);
        assert_eq!(
            header(&denied.headers, "x-arbiter-reason"),
            Some("policy_denied")
        );
    }

    #[test]
    fn policy_status_body_headers_and_reason() {
        let d = decide(
            outcome(
                r#"{"allowed": false, "http_status": 401, "body": "login first", "headers": {"www-authenticate": "Bearer"}, "reason": "token_missing"}"#,
            ),
            &options(),
            "id".into(),
        );
        let denied = denied(&d.response);
        assert_eq!(denied.status.as_ref().unwrap().code, 401);
        assert_eq!(denied.body, "login first");
        assert_eq!(header(&denied.headers, "www-authenticate"), Some("Bearer"));
        assert_eq!(
            header(&denied.headers, "x-arbiter-reason"),
            Some("token_missing")
        );
        assert_eq!(
            d.record.deny_reason,
            Some(DenyReason::Policy(Some("token_missing".into())))
        );
    }

    #[test]
    fn reasons_that_could_carry_request_data_are_replaced() {
        let d = decide(
            outcome(r#"{"allowed": false, "reason": "user <script> not allowed"}"#),
            &options(),
            "id".into(),
        );
        assert_eq!(
            header(&denied(&d.response).headers, "x-arbiter-reason"),
            Some("policy_denied")
        );
    }

    #[test]
    fn every_error_is_a_deny_with_a_bounded_reason() {
        for (error, reason) in [
            (PolicyError::Undefined, "policy_undefined"),
            (
                PolicyError::InvalidResult {
                    message: "x".into(),
                },
                "invalid_result",
            ),
            (
                PolicyError::Evaluation {
                    message: "x".into(),
                },
                "policy_error",
            ),
            (PolicyError::Timeout { limit_ms: 50 }, "policy_timeout"),
        ] {
            let d = decide(Err(error), &options(), "id".into());
            assert!(!d.record.allowed);
            assert!(d.record.error.is_some());
            assert_eq!(
                d.response.status.as_ref().unwrap().code,
                GRPC_PERMISSION_DENIED
            );
            let denied = denied(&d.response);
            assert_eq!(denied.status.as_ref().unwrap().code, 403);
            assert_eq!(header(&denied.headers, "x-arbiter-reason"), Some(reason));
            assert!(denied.body.is_empty(), "details stay in the log");
        }
    }

    #[test]
    fn invalid_tokens_get_401_with_the_rfc_6750_challenge() {
        let d = refuse(Refusal::Token(TokenError::Expired), &options(), "id".into());
        assert!(!d.record.allowed);
        let response = denied(&d.response);
        assert_eq!(response.status.as_ref().unwrap().code, 401);
        assert_eq!(
            header(&response.headers, "www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(
            header(&response.headers, "x-arbiter-reason"),
            Some("token_expired")
        );
        let d = refuse(
            Refusal::Token(TokenError::KeysStale),
            &options(),
            "id".into(),
        );
        assert_eq!(denied(&d.response).status.as_ref().unwrap().code, 503);
    }

    #[test]
    fn dry_run_allows_and_records_the_deny() {
        let options = DecisionOptions {
            dry_run: true,
            ..options()
        };
        let d = decide(
            outcome(r#"{"allowed": false, "headers": {"x": "y"}}"#),
            &options,
            "id".into(),
        );
        assert!(d.record.allowed);
        assert_eq!(d.record.deny_reason, Some(DenyReason::Policy(None)));
        assert_eq!(d.response.status.as_ref().unwrap().code, GRPC_OK);
        let d = decide(Err(PolicyError::Undefined), &options, "id".into());
        assert!(d.record.allowed);
    }
}
