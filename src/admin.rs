//! The operator's HTTP endpoints: `/healthz` (alive), `/readyz` (policies
//! loaded and not shutting down) and `/metrics` (Prometheus text format).
//!
//! The endpoints see the running Arbiter only through [`Operations`]: what
//! is ready and why, and the metrics text.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints read of a running Arbiter.
pub trait Operations: Send + Sync + 'static {
    /// Whether it should be sent traffic, and the report `/readyz` shows.
    fn readiness(&self) -> (bool, serde_json::Value);
    /// Every metric, in Prometheus text format.
    fn metrics_text(&self) -> String;
}

/// Serves the admin endpoints until `shutdown` turns true.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    operations: Arc<dyn Operations>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(operations);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(operations): State<Arc<dyn Operations>>) -> impl IntoResponse {
    let (ready, body) = operations.readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics(State(operations): State<Arc<dyn Operations>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        operations.metrics_text(),
    )
}
