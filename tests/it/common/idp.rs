//! A real identity provider's key endpoints on 127.0.0.1: JWKS and OIDC
//! discovery, with keys that can rotate and failures that can be switched on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the JWKS endpoint does on its next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Serve,
    Fail,
    Garbage,
    Slow(Duration),
}

struct IdpState {
    addr: SocketAddr,
    jwks: Mutex<serde_json::Value>,
    mode: Mutex<Mode>,
    fetches: AtomicUsize,
    issuer: Mutex<String>,
    cache_control: Mutex<Option<String>>,
}

/// The IdP; its server stops when this is dropped or `stop` is called.
pub struct Idp {
    pub addr: SocketAddr,
    state: Arc<IdpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    pub async fn start(jwks: serde_json::Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, jwks).await
    }

    async fn serve(listener: tokio::net::TcpListener, jwks: serde_json::Value) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            addr,
            jwks: Mutex::new(jwks),
            mode: Mutex::new(Mode::Serve),
            fetches: AtomicUsize::new(0),
            issuer: Mutex::new(format!("http://{addr}")),
            cache_control: Mutex::new(None),
        });
        let app = Router::new()
            .route("/jwks", get(jwks_handler))
            .route("/.well-known/openid-configuration", get(discovery_handler))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set_keys(&self, jwks: serde_json::Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The issuer the discovery document advertises (by default, its own URL).
    pub fn set_advertised_issuer(&self, issuer: &str) {
        *self.state.issuer.lock().unwrap() = issuer.to_owned();
    }

    pub fn set_cache_control(&self, value: &str) {
        *self.state.cache_control.lock().unwrap() = Some(value.to_owned());
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Stops serving: connections are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks_handler(State(state): State<Arc<IdpState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Mode::Garbage => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"keys\": \"nope\"}",
        )
            .into_response(),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            body(&state)
        }
        Mode::Serve => body(&state),
    }
}

fn body(state: &IdpState) -> Response {
    let jwks = state.jwks.lock().unwrap().to_string();
    let cache = state.cache_control.lock().unwrap().clone();
    let mut response = ([(header::CONTENT_TYPE, "application/json")], jwks).into_response();
    if let Some(cache) = cache {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, cache.parse().unwrap());
    }
    response
}

async fn discovery_handler(State(state): State<Arc<IdpState>>) -> Response {
    let issuer = state.issuer.lock().unwrap().clone();
    let host = format!("http://{}", state.addr);
    let doc = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{host}/jwks")});
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}
