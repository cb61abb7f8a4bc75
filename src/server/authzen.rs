//! The OpenID AuthZEN Authorization API 1.0 on the HTTP listener: a policy
//! enforcement point in an application asks whether a subject may perform
//! an action on a resource.
//!
//! - `POST /access/v1/evaluation`: one request, `{"decision": bool, ...}`.
//! - `POST /access/v1/evaluations`: `evaluations` items, each merged over
//!   the request's own `subject`, `action`, `resource` and `context`,
//!   answered in request order; `options.evaluations_semantic` is
//!   `execute_all` (the default), `deny_on_first_deny` or
//!   `permit_on_first_permit` (stop after the first such answer).
//! - `GET /.well-known/authzen-configuration`: the PDP's metadata.
//!
//! The policy's input is the request as sent (extra members kept) plus
//! `identity`, the caller's own bearer token verified by `[[identity.jwt]]`
//! (`null` without one; an invalid one is a 401). `[authzen] decision`
//! names the rule; it yields a boolean or `{"decision": bool, "context":
//! {...}}`. Anything else, and every error, is `decision: false` with the
//! reason in `context.reason`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};

use super::Shared;
use crate::config::OnInvalidToken;
use crate::decision::{DecisionRecord, DenyReason};
use crate::identity::Authentication;
use crate::pipeline::DocumentError;
use crate::proto::auth::attribute_context::{HttpRequest, Request};
use crate::proto::auth::{AttributeContext, CheckRequest};
use crate::telemetry::{FrontDoor, RequestSummary};

/// The four members an evaluation is made of; items of a batch inherit
/// each from the request when they do not give it.
const MEMBERS: [&str; 4] = ["subject", "action", "resource", "context"];

/// `POST /access/v1/evaluation`.
pub async fn evaluation(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(super::front_doors::Caller(peer)): ConnectInfo<super::front_doors::Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match parse(&body) {
        Ok(request) => single(&shared, &headers, request, peer).await,
        Err(why) => answer(&shared, &headers, StatusCode::BAD_REQUEST, &error(&why)),
    }
}

/// One evaluation: validated, the caller verified, decided.
async fn single(
    shared: &Shared,
    headers: &HeaderMap,
    request: Map<String, Json>,
    peer: SocketAddr,
) -> Response {
    if let Err(why) = validate(&request) {
        return answer(shared, headers, StatusCode::BAD_REQUEST, &error(&why));
    }
    let caller = match caller(shared, headers).await {
        Ok(caller) => caller,
        Err(refused) => return answer(shared, headers, refused.0, &refused.1),
    };
    let decided = decide(shared, request, &caller, peer).await;
    answer(shared, headers, StatusCode::OK, &decided.answer)
}

/// The most evaluations one batch may ask for: each is a decision, and a
/// batch holds its connection until the last is made.
pub const MAX_BATCH: usize = 1000;

/// `POST /access/v1/evaluations`.
pub async fn evaluations(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(super::front_doors::Caller(peer)): ConnectInfo<super::front_doors::Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = match parse(&body) {
        Ok(request) => request,
        Err(why) => return answer(&shared, &headers, StatusCode::BAD_REQUEST, &error(&why)),
    };
    let items = match request.remove("evaluations") {
        None => Vec::new(),
        Some(Json::Array(items)) => items,
        Some(_) => {
            return answer(
                &shared,
                &headers,
                StatusCode::BAD_REQUEST,
                &error("`evaluations` must be an array"),
            );
        }
    };
    let semantic = request
        .get("options")
        .and_then(|o| o.get("evaluations_semantic"))
        .and_then(Json::as_str)
        .unwrap_or("execute_all")
        .to_owned();
    let stop_on = match semantic.as_str() {
        "execute_all" => None,
        "deny_on_first_deny" => Some(false),
        "permit_on_first_permit" => Some(true),
        other => {
            return answer(
                &shared,
                &headers,
                StatusCode::BAD_REQUEST,
                &error(&format!("unknown evaluations_semantic {other:?}")),
            );
        }
    };
    if items.len() > MAX_BATCH {
        return answer(
            &shared,
            &headers,
            StatusCode::BAD_REQUEST,
            &error(&format!(
                "at most {MAX_BATCH} evaluations per request, got {}",
                items.len()
            )),
        );
    }
    // Without items, the request is one evaluation and answered as one.
    if items.is_empty() {
        return single(&shared, &headers, request, peer).await;
    }
    let mut merged = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Json::Object(item) = item else {
            return answer(
                &shared,
                &headers,
                StatusCode::BAD_REQUEST,
                &error(&format!("evaluations[{i}] must be an object")),
            );
        };
        let mut evaluation = item;
        for member in MEMBERS {
            if !evaluation.contains_key(member)
                && let Some(default) = request.get(member)
            {
                evaluation.insert(member.to_owned(), default.clone());
            }
        }
        if let Err(why) = validate(&evaluation) {
            return answer(
                &shared,
                &headers,
                StatusCode::BAD_REQUEST,
                &error(&format!("evaluations[{i}]: {why}")),
            );
        }
        merged.push(evaluation);
    }
    let caller = match caller(&shared, &headers).await {
        Ok(caller) => caller,
        Err(refused) => return answer(&shared, &headers, refused.0, &refused.1),
    };
    let mut results = Vec::with_capacity(merged.len());
    for evaluation in merged {
        let decided = decide(&shared, evaluation, &caller, peer).await;
        results.push(decided.answer);
        if stop_on == Some(decided.decision) {
            break;
        }
    }
    answer(
        &shared,
        &headers,
        StatusCode::OK,
        &json!({ "evaluations": results }),
    )
}

/// `GET /.well-known/authzen-configuration`.
pub async fn configuration(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = format!("http://{host}");
    answer(
        &shared,
        &headers,
        StatusCode::OK,
        &json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        }),
    )
}

fn parse(body: &Bytes) -> Result<Map<String, Json>, String> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(request)) => Ok(request),
        Ok(_) => Err("the request must be a JSON object".into()),
        Err(e) => Err(format!("the request is not JSON: {e}")),
    }
}

/// The members AuthZEN requires: `subject.type`, `subject.id`,
/// `action.name`, `resource.type`, `resource.id`, each a string.
fn validate(request: &Map<String, Json>) -> Result<(), String> {
    for (member, field) in [
        ("subject", "type"),
        ("subject", "id"),
        ("action", "name"),
        ("resource", "type"),
        ("resource", "id"),
    ] {
        let present = request
            .get(member)
            .and_then(|m| m.get(field))
            .and_then(Json::as_str)
            .is_some_and(|s| !s.is_empty());
        if !present {
            return Err(format!("`{member}.{field}` is required (a string)"));
        }
    }
    Ok(())
}

/// Who asks: `input.identity`, and `input.identity_error` for an invalid
/// token that `on_invalid = "pass_to_policy"` hands to the policy.
struct Caller {
    identity: Json,
    error: Option<&'static str>,
}

/// The caller's verified token as `input.identity`, or the refusal of an
/// invalid one (401; 503 when its provider's keys cannot be had).
async fn caller(shared: &Shared, headers: &HeaderMap) -> Result<Caller, (StatusCode, Json)> {
    let forwarded: std::collections::BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    headers: forwarded,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    let anonymous = |error| Caller {
        identity: Json::Null,
        error,
    };
    match shared.pipeline.authenticate(request).await {
        Authentication::Anonymous => Ok(anonymous(None)),
        Authentication::Verified(token) => token
            .document()
            .to_json_str()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .map(|identity| Caller {
                identity,
                error: None,
            })
            .ok_or_else(|| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    error("the identity could not be read"),
                )
            }),
        Authentication::Rejected {
            on_invalid: OnInvalidToken::PassToPolicy,
            error: why,
            ..
        } => Ok(anonymous(Some(why.label()))),
        Authentication::Rejected { error: why, .. } => {
            let status = match why {
                crate::identity::TokenError::KeysUnavailable
                | crate::identity::TokenError::KeysStale
                | crate::identity::TokenError::IntrospectionUnavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::UNAUTHORIZED,
            };
            Err((status, json!({"error": why.label()})))
        }
    }
}

struct Decided {
    decision: bool,
    answer: Json,
}

/// One evaluation through the policy, under the pipeline's limits, logged
/// as a decision.
async fn decide(
    shared: &Shared,
    mut evaluation: Map<String, Json>,
    caller: &Caller,
    peer: SocketAddr,
) -> Decided {
    let started = std::time::Instant::now();
    let pipeline = &shared.pipeline;
    let identity = &caller.identity;
    evaluation.insert("identity".into(), identity.clone());
    // Arbiter's alone: a member of that name in the request is dropped.
    evaluation.remove("identity_error");
    if let Some(error) = caller.error {
        evaluation.insert("identity_error".into(), Json::from(error));
    }
    let subject = string_at(&evaluation, "subject", "id");
    let action = string_at(&evaluation, "action", "name");
    let resource = format!(
        "{}/{}",
        string_at(&evaluation, "resource", "type"),
        string_at(&evaluation, "resource", "id")
    );
    let input = regorus::Value::from_json_str(&Json::Object(evaluation).to_string());
    let path = shared.authzen_decision.segments().to_vec();
    let result = match input {
        Ok(input) => {
            pipeline
                .within_limits(None, pipeline.query_document(path, input), |reason| {
                    Err(DocumentError::Policy(undecided(&reason)))
                })
                .await
        }
        Err(e) => Err(DocumentError::Policy(
            crate::policy::PolicyError::Evaluation {
                message: e.to_string(),
            },
        )),
    };
    let (decision, context, reason, failure) = read_result(result);
    let decision_id = uuid::Uuid::new_v4().to_string();
    let record = DecisionRecord {
        decision_id,
        allowed: decision,
        deny_reason: reason.clone(),
        http_status: None,
        error: failure,
        dry_run: false,
    };
    let total = started.elapsed();
    pipeline.metrics.record_decision(&record, total, total);
    let policies = pipeline.policies.load();
    let source = peer.ip().to_string();
    let summary = RequestSummary {
        revision: policies.revision().as_str(),
        method: &action,
        host: "authzen",
        path: &resource,
        source_address: &source,
        subject: &subject,
        provider: identity
            .get("provider")
            .and_then(Json::as_str)
            .unwrap_or_default(),
        ..RequestSummary::default()
    };
    pipeline.decision_log.write(&record, &summary, total, total);
    let mut answer = Map::new();
    answer.insert("decision".into(), Json::Bool(decision));
    let mut context = context;
    if let Some(reason) = &reason {
        context
            .entry("reason")
            .or_insert_with(|| Json::from(reason.as_str()));
    }
    if !context.is_empty() {
        answer.insert("context".into(), Json::Object(context));
    }
    Decided {
        decision,
        answer: Json::Object(answer),
    }
}

fn undecided(reason: &DenyReason) -> crate::policy::PolicyError {
    crate::policy::PolicyError::Evaluation {
        message: reason.as_str().to_owned(),
    }
}

/// The decision, its context, why it is false, and the error behind that.
fn read_result(
    result: Result<regorus::Value, DocumentError>,
) -> (bool, Map<String, Json>, Option<DenyReason>, Option<String>) {
    let value = match result {
        Ok(value) => value,
        Err(DocumentError::Overloaded) => {
            return (false, Map::new(), Some(DenyReason::Overloaded), None);
        }
        Err(DocumentError::Policy(e)) => {
            let reason = match &e {
                crate::policy::PolicyError::Timeout { .. } => DenyReason::Timeout,
                crate::policy::PolicyError::Evaluation { message }
                    if message == DenyReason::Overloaded.as_str() =>
                {
                    DenyReason::Overloaded
                }
                crate::policy::PolicyError::Evaluation { message }
                    if message == DenyReason::DeadlineExceeded.as_str() =>
                {
                    DenyReason::DeadlineExceeded
                }
                _ => DenyReason::PolicyError,
            };
            return (false, Map::new(), Some(reason), Some(e.to_string()));
        }
    };
    match value {
        regorus::Value::Undefined => (false, Map::new(), Some(DenyReason::Undefined), None),
        regorus::Value::Bool(decision) => (
            decision,
            Map::new(),
            (!decision).then_some(DenyReason::Policy(None)),
            None,
        ),
        other => {
            let json: Option<Json> = other
                .to_json_str()
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            let Some(Json::Object(mut object)) = json else {
                return (false, Map::new(), Some(DenyReason::InvalidResult), None);
            };
            let Some(Json::Bool(decision)) = object.remove("decision") else {
                return (false, Map::new(), Some(DenyReason::InvalidResult), None);
            };
            let context = match object.remove("context") {
                Some(Json::Object(context)) => context,
                _ => Map::new(),
            };
            let reason = (!decision)
                .then(|| DenyReason::from_policy(context.get("reason").and_then(Json::as_str)));
            (decision, context, reason, None)
        }
    }
}

fn string_at(request: &Map<String, Json>, member: &str, field: &str) -> String {
    request
        .get(member)
        .and_then(|m| m.get(field))
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn error(message: &str) -> Json {
    json!({ "error": message })
}

/// A JSON answer, with the caller's `X-Request-ID` echoed.
fn answer(shared: &Shared, headers: &HeaderMap, status: StatusCode, body: &Json) -> Response {
    shared
        .pipeline
        .metrics
        .record_http(FrontDoor::Authzen, status.as_u16());
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response();
    if let Some(id) = headers.get("x-request-id") {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    response
}
