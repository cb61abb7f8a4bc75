//! The HTTP front doors, on one listener (`[http] addr`; HTTP/1.1 and h2c).
//! Each only translates its protocol into a request for the pipeline and
//! the decision back; limits, deadlines, the slow lane, metrics and the
//! decision log are the pipeline's, as for gRPC.
//!
//! - `/envoy/...`: Envoy's HTTP ext_authz (`http_service` with
//!   `path_prefix: /envoy`).
//! - `/forward-auth`: nginx `auth_request`, Caddy `forward_auth`, Traefik
//!   `forwardAuth`; only from trusted proxies (and loopback).
//! - `/v1/data/...`, `/v0/data/...`, `/health`: OPA's REST Data API, for
//!   applications that ask OPA today.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Shared;
use crate::config::ForwardAuthHeaders;
use crate::pipeline::DocumentError;
use crate::policy::PolicyError;
use crate::proto::auth::attribute_context::{HttpRequest, Peer, Request};
use crate::proto::auth::check_response::HttpResponse;
use crate::proto::auth::{AttributeContext, CheckRequest, CheckResponse};
use crate::proto::core::{Address, HeaderValueOption, SocketAddress, address, socket_address};
use crate::telemetry::FrontDoor;

/// The prefix Envoy's `http_service` is configured with.
const ENVOY_PREFIX: &str = "/envoy";

/// The listener the front doors are served on.
pub enum Listening {
    Plain(TcpListener),
    Tls(super::tls::TlsListener),
}

/// The caller's address, on a plain or a TLS connection.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, super::tls::TlsListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, super::tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Serves the HTTP front doors until `shutdown` turns true.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: Listening,
    shared: Arc<Shared>,
    max_body_bytes: usize,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/envoy", any(envoy_check))
        .route("/envoy/", any(envoy_check))
        .route("/envoy/{*rest}", any(envoy_check))
        .route("/forward-auth", any(forward_auth))
        .route("/v1/data", get(data_v1).post(data_v1))
        .route("/v1/data/", get(data_v1).post(data_v1))
        .route("/v1/data/{*path}", get(data_v1_at).post(data_v1_at))
        .route("/v0/data/{*path}", post(data_v0_at))
        .route("/health", get(health))
        .route("/ssf/events", post(ssf_events))
        .route("/access/v1/evaluation", post(super::authzen::evaluation))
        .route("/access/v1/evaluations", post(super::authzen::evaluations))
        .route(
            "/.well-known/authzen-configuration",
            get(super::authzen::configuration),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(shared);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    match listener {
        Listening::Plain(listener) => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<Caller>(),
            )
            .with_graceful_shutdown(stopped)
            .await
        }
        Listening::Tls(listener) => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<Caller>(),
            )
            .with_graceful_shutdown(stopped)
            .await
        }
    }
}

/// Envoy's HTTP ext_authz: the original method, `/envoy` + the original
/// path and query, the headers Envoy forwards, and the body if configured.
async fn envoy_check(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .strip_prefix(ENVOY_PREFIX)
        .unwrap_or("/");
    let target = if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("/{target}")
    };
    let mut headers = headers;
    // Envoy names the client here when it does not append X-Forwarded-For;
    // either is believed only through `trusted_proxies`.
    if !headers.contains_key("x-forwarded-for")
        && let Some(external) = headers.get("x-envoy-external-address").cloned()
    {
        headers.insert("x-forwarded-for", external);
    }
    let original = Original {
        method: method.as_str().to_owned(),
        target,
        host: host_of(&headers),
        scheme: header_str(&headers, "x-forwarded-proto").unwrap_or_default(),
    };
    let request = check_request(peer, &original, &headers, &body);
    let response = shared.pipeline.check_within_limits(request, None).await;
    let answer = to_http(&response, Door::Envoy);
    shared
        .pipeline
        .metrics
        .record_http(FrontDoor::EnvoyHttp, answer.status().as_u16());
    answer
}

/// Forward-auth: the original request is described by `X-Forwarded-*`
/// (Traefik, Caddy) or `X-Original-*` (nginx) headers, which are believed
/// only from a trusted proxy.
async fn forward_auth(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    headers: HeaderMap,
) -> Response {
    let pipeline = &shared.pipeline;
    let caller = crate::address::canonical(peer.ip());
    let trusted = pipeline
        .forwarders()
        .iter()
        .any(|net| net.contains(&caller));
    if !trusted {
        tracing::warn!(%peer, "forward-auth request from a caller that is not a trusted proxy");
        pipeline
            .metrics
            .record_http(FrontDoor::ForwardAuth, StatusCode::FORBIDDEN.as_u16());
        return (
            StatusCode::FORBIDDEN,
            [(reason_header(pipeline), "untrusted_forwarder")],
            "forward-auth is answered only for trusted proxies\n",
        )
            .into_response();
    }
    // Only the configured family: the proxy passes the client's headers
    // on, so a client could write the other one.
    let (method, uri) = match shared.forward_auth_headers {
        ForwardAuthHeaders::XForwarded => ("x-forwarded-method", "x-forwarded-uri"),
        ForwardAuthHeaders::XOriginal => ("x-original-method", "x-original-uri"),
    };
    let given = |name| header_str(&headers, name).filter(|value| !value.is_empty());
    let (Some(method), Some(uri)) = (given(method), given(uri)) else {
        // Without the original request there is nothing to decide; a
        // default ("GET /") would judge another request than the one served.
        pipeline
            .metrics
            .record_http(FrontDoor::ForwardAuth, StatusCode::FORBIDDEN.as_u16());
        return (
            StatusCode::FORBIDDEN,
            [(reason_header(pipeline), "forward_auth_incomplete")],
            format!("forward-auth needs the original method and URI in {method} and {uri}\n"),
        )
            .into_response();
    };
    let original = Original {
        method,
        target: path_of(&uri),
        host: header_str(&headers, "x-forwarded-host").unwrap_or_else(|| host_of(&headers)),
        scheme: header_str(&headers, "x-forwarded-proto").unwrap_or_default(),
    };
    let request = check_request(peer, &original, &headers, &Bytes::new());
    let response = pipeline
        .within_limits(
            None,
            async { pipeline.decide_forwarded(request).await.response },
            |reason| pipeline.undecided(reason).response,
        )
        .await;
    let answer = to_http(&response, Door::ForwardAuth);
    pipeline
        .metrics
        .record_http(FrontDoor::ForwardAuth, answer.status().as_u16());
    answer
}

/// nginx's `X-Original-URL` may be absolute (`https://host/path?q`).
fn path_of(uri: &str) -> String {
    match uri.parse::<Uri>() {
        Ok(parsed) if parsed.scheme().is_some() => parsed
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        _ if uri.starts_with('/') => uri.to_owned(),
        _ => format!("/{uri}"),
    }
}

/// The request that is being authorized, as the front door learned it.
struct Original {
    method: String,
    target: String,
    host: String,
    scheme: String,
}

/// The CheckRequest Envoy's gRPC ext_authz would have sent for this request:
/// the peer as source, the headers lower-cased (repeated ones joined with
/// commas, as Envoy does) with the pseudo-headers, and the body.
fn check_request(
    peer: SocketAddr,
    original: &Original,
    headers: &HeaderMap,
    body: &Bytes,
) -> CheckRequest {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map.insert(":method".into(), original.method.clone());
    map.insert(":path".into(), original.target.clone());
    map.insert(":authority".into(), original.host.clone());
    let size = header_str(headers, "content-length")
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(-1);
    let (text, raw) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), Vec::new()),
        Err(_) => (String::new(), body.to_vec()),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: peer.ip().to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            peer.port(),
                        ))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(pbjson_types::Timestamp {
                    seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(now.subsec_nanos()).unwrap_or_default(),
                }),
                http: Some(HttpRequest {
                    id: header_str(headers, "x-request-id").unwrap_or_default(),
                    method: original.method.clone(),
                    headers: map,
                    path: original.target.clone(),
                    host: original.host.clone(),
                    scheme: original.scheme.clone(),
                    size,
                    protocol: "HTTP/1.1".into(),
                    body: text,
                    raw_body: raw,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn host_of(headers: &HeaderMap) -> String {
    header_str(headers, header::HOST.as_str()).unwrap_or_default()
}

fn reason_header(pipeline: &crate::pipeline::Pipeline) -> HeaderName {
    pipeline
        .reason_header()
        .and_then(|h| HeaderName::try_from(h).ok())
        .unwrap_or_else(|| HeaderName::from_static("x-arbiter-reason"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Door {
    Envoy,
    ForwardAuth,
}

/// The decision as an HTTP answer. Allowed: 200 with the headers the policy
/// set for the upstream (the proxy copies them: Envoy's
/// `allowed_upstream_headers`, Caddy's `copy_headers`, nginx's
/// `auth_request_set`, Traefik's `authResponseHeaders`) and, for Envoy, the
/// headers to remove in `x-envoy-auth-headers-to-remove`. Denied: the
/// policy's status, headers and body.
fn to_http(response: &CheckResponse, door: Door) -> Response {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let mut answer = Response::new(Body::empty());
            *answer.status_mut() = StatusCode::OK;
            add_headers(answer.headers_mut(), &ok.headers);
            if door == Door::Envoy && !ok.headers_to_remove.is_empty() {
                if let Ok(value) = HeaderValue::from_str(&ok.headers_to_remove.join(",")) {
                    answer
                        .headers_mut()
                        .insert("x-envoy-auth-headers-to-remove", value);
                }
            }
            answer
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            // Envoy's HTTP ext_authz takes a 5xx from the authorization
            // server for a failed call (`failure_mode_allow` applies), so
            // a deny goes to Envoy as 3xx or 4xx only; to the other
            // proxies, any status from 300 up is a deny.
            let deny_statuses = match door {
                Door::Envoy => 300..=499,
                Door::ForwardAuth => 300..=599,
            };
            let status = denied
                .status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .filter(|code| deny_statuses.contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
            let mut answer = Response::new(Body::from(denied.body.clone()));
            *answer.status_mut() = status;
            add_headers(answer.headers_mut(), &denied.headers);
            answer
        }
        // Every decision carries one of the two; should one not, deny.
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}

fn add_headers(out: &mut HeaderMap, headers: &[HeaderValueOption]) {
    for option in headers {
        let Some(h) = &option.header else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(h.key.as_str()),
            HeaderValue::from_str(&h.value),
        ) else {
            continue;
        };
        if option.append.as_ref().is_some_and(|a| a.value) {
            out.append(name, value);
        } else {
            out.insert(name, value);
        }
    }
}

/// `POST /v1/data` with `{"input": ...}`: the whole data document.
async fn data_v1(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    method: Method,
    body: Bytes,
) -> Response {
    data_v1_answer(&shared, peer, Vec::new(), &method, &body).await
}

/// `GET|POST /v1/data/{path}`: `{"result": ..., "decision_id": ...}`, or
/// only the decision ID when the document is undefined.
async fn data_v1_at(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    uri: Uri,
    method: Method,
    body: Bytes,
) -> Response {
    let path = segments(uri.path().strip_prefix("/v1/data").unwrap_or_default());
    data_v1_answer(&shared, peer, path, &method, &body).await
}

async fn data_v1_answer(
    shared: &Shared,
    peer: SocketAddr,
    path: Vec<String>,
    method: &Method,
    body: &Bytes,
) -> Response {
    let input = if method == Method::POST && !body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut request)) => request.remove("input"),
            Ok(_) => {
                return opa_error(
                    shared,
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "the body must be an object with an \"input\" member",
                );
            }
            Err(e) => {
                return opa_error(
                    shared,
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    &format!("the body is not JSON: {e}"),
                );
            }
        }
    } else {
        None
    };
    let decision_id = uuid::Uuid::new_v4().to_string();
    match evaluate(shared, peer, &decision_id, path, input).await {
        Ok(result) => {
            let mut answer = serde_json::Map::new();
            if let Some(result) = result {
                answer.insert("result".into(), result);
            }
            answer.insert("decision_id".into(), decision_id.into());
            opa_json(shared, StatusCode::OK, &serde_json::Value::Object(answer))
        }
        Err(answer) => answer,
    }
}

/// `POST /v0/data/{path}`: the body is the input, the answer the bare value,
/// 404 when undefined.
async fn data_v0_at(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    uri: Uri,
    body: Bytes,
) -> Response {
    let raw = uri.path().strip_prefix("/v0/data").unwrap_or_default();
    let input = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(input) => Some(input),
            Err(e) => {
                return opa_error(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    &format!("the body is not JSON: {e}"),
                );
            }
        }
    };
    let name = raw.trim_start_matches('/').to_owned();
    let decision_id = uuid::Uuid::new_v4().to_string();
    match evaluate(&shared, peer, &decision_id, segments(raw), input).await {
        Ok(Some(result)) => opa_json(&shared, StatusCode::OK, &result),
        Ok(None) => opa_error(
            &shared,
            StatusCode::NOT_FOUND,
            "undefined_document",
            &format!("document missing: data/{name}"),
        ),
        Err(answer) => answer,
    }
}

/// The document's value (`None` when undefined), or the error answer.
/// Every query is a decision in the log and the metrics.
async fn evaluate(
    shared: &Shared,
    peer: SocketAddr,
    decision_id: &str,
    path: Vec<String>,
    input: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, Response> {
    let started = std::time::Instant::now();
    let pipeline = &shared.pipeline;
    let document = format!("/v1/data/{}", path.join("/"));
    let input = match input {
        None => regorus::Value::Undefined,
        Some(json) => regorus::Value::from_json_str(&json.to_string()).map_err(|e| {
            opa_error(
                shared,
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                &e.to_string(),
            )
        })?,
    };
    let value = pipeline
        .within_limits(None, pipeline.query_document(path, input), |_| {
            Err(DocumentError::Overloaded)
        })
        .await;
    log_query(
        shared,
        peer,
        decision_id,
        &document,
        &value,
        started.elapsed(),
    );
    match value {
        Ok(regorus::Value::Undefined) => Ok(None),
        Ok(value) => {
            let text = value.to_json_str().map_err(|e| {
                opa_error(
                    shared,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    &e.to_string(),
                )
            })?;
            serde_json::from_str(&text).map(Some).map_err(|e| {
                opa_error(
                    shared,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    &e.to_string(),
                )
            })
        }
        Err(DocumentError::Overloaded) => Err(opa_error(
            shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many evaluations waiting",
        )),
        Err(DocumentError::Policy(e)) => {
            tracing::warn!(error = %e, "data API evaluation failed");
            Err(opa_error(
                shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                &e.to_string(),
            ))
        }
    }
}

/// A Data API query in the decision log and metrics: allowed when the
/// document is `true` (or an object whose `allowed` is `true`), or another
/// defined value; denied when it is `false`, undefined or failed.
fn log_query(
    shared: &Shared,
    peer: SocketAddr,
    decision_id: &str,
    document: &str,
    value: &Result<regorus::Value, DocumentError>,
    took: std::time::Duration,
) {
    use crate::decision::{DecisionRecord, DenyReason};
    let (allowed, deny_reason, error) = match value {
        Ok(regorus::Value::Undefined) => (false, Some(DenyReason::Undefined), None),
        Ok(regorus::Value::Bool(allowed)) => (
            *allowed,
            (!allowed).then_some(DenyReason::Policy(None)),
            None,
        ),
        Ok(other) => match &other[&regorus::Value::from("allowed")] {
            regorus::Value::Bool(false) => (false, Some(DenyReason::Policy(None)), None),
            _ => (true, None, None),
        },
        Err(DocumentError::Overloaded) => (false, Some(DenyReason::Overloaded), None),
        Err(DocumentError::Policy(e)) => {
            let reason = match e {
                PolicyError::Timeout { .. } => DenyReason::Timeout,
                _ => DenyReason::PolicyError,
            };
            (false, Some(reason), Some(e.to_string()))
        }
    };
    let record = DecisionRecord {
        decision_id: decision_id.to_owned(),
        allowed,
        deny_reason,
        http_status: None,
        error,
        dry_run: false,
    };
    let pipeline = &shared.pipeline;
    pipeline.metrics.record_decision(&record, took, took);
    let policies = pipeline.policies.load();
    let source = peer.ip().to_string();
    let summary = crate::telemetry::RequestSummary {
        revision: policies.revision().as_str(),
        method: "POST",
        host: "opa_data",
        path: document,
        source_address: &source,
        ..crate::telemetry::RequestSummary::default()
    };
    pipeline.decision_log.write(&record, &summary, took, took);
}

/// The raw URL path after `/v1/data/` as document keys (`a/b` is
/// `data.a.b`; `a%2Fb` is the one key `a/b`, decoded once after splitting).
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

fn opa_json(shared: &Shared, status: StatusCode, body: &serde_json::Value) -> Response {
    shared
        .pipeline
        .metrics
        .record_http(FrontDoor::OpaData, status.as_u16());
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn opa_error(shared: &Shared, status: StatusCode, code: &str, message: &str) -> Response {
    opa_json(
        shared,
        status,
        &serde_json::json!({"code": code, "message": message}),
    )
}

/// `POST /ssf/events`: one Security Event Token pushed by the transmitter
/// (RFC 8935). 202 when its events are applied; 400 with RFC 8935's error
/// JSON when it does not verify or asks for what this receiver does not
/// do, and then nothing changes; 503 while the transmitter's keys cannot
/// be had (it should send the SET again); 404 when no transmitter is
/// configured.
async fn ssf_events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Caller(peer)): ConnectInfo<Caller>,
    body: Bytes,
) -> Response {
    let Some(receiver) = &shared.ssf else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let revocations = shared.pipeline.authenticator.revocations();
    let set = String::from_utf8_lossy(&body);
    match receiver.receive(set.trim()).await {
        Ok(revoked) => {
            tracing::info!(target: "arbiter::ssf", %peer, revoked = ?revoked, "security event applied");
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            revocations.count_refused_event();
            tracing::warn!(target: "arbiter::ssf", %peer, error = %e, "security event refused");
            let status = match e {
                crate::identity::ssf::SetError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"err": e.code(), "description": e.to_string()}).to_string(),
            )
                .into_response()
        }
    }
}

/// OPA's `/health`: 200 `{}` when ready, else 500.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_ready() {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response()
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error": "not ready"}"#,
        )
            .into_response()
    }
}
