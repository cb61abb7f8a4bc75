//! The operator's HTTP endpoints: `/healthz` (alive), `/readyz` (policies
//! loaded and not shutting down) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Shared;

/// Serves the admin endpoints until `shutdown` turns true.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let ready = shared.is_ready();
    let providers: serde_json::Map<String, serde_json::Value> = shared
        .pipeline
        .authenticator
        .key_stores()
        .map(|(name, store)| {
            (
                name.to_owned(),
                serde_json::json!({
                    "keys_loaded": store.has_keys(),
                    "key_age_seconds": store.key_age().map(|a| a.as_secs()),
                }),
            )
        })
        .collect();
    let policies = shared.pipeline.policies.load();
    let engine = policies.engine_status();
    let body = serde_json::json!({
        "ready": ready,
        "policy_revision": policies.revision().to_string(),
        "engine": engine.engine,
        "fallback_reason": engine.fallback_reason,
        "identity_providers": providers,
        "last_reload_error": shared.reload_status.last_error.load().as_deref().cloned(),
        "last_tls_reload_error": shared.tls_reload_status.last_error.load().as_deref().cloned(),
        "revocation": {
            "file": shared.pipeline.authenticator.revocations().file(),
            "entries": shared.pipeline.authenticator.revocations().entries(),
            "from_bundle": policies.revocations().map(|list| list.len()),
            "last_error": shared.pipeline.authenticator.revocations().last_error(),
        },
        "bundle": shared.bundle.as_ref().map(|fetcher| {
            let current = fetcher.current();
            serde_json::json!({
                "source": fetcher.source(),
                "revision": current.as_ref().map(|b| b.manifest.revision.clone()),
                "verified": current.as_ref().is_some_and(|b| b.verified),
            })
        }),
    });
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

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let policies = shared.pipeline.policies.load();
    let revision = policies.revision().to_string();
    let mut text = shared.pipeline.metrics.render(&revision, shared.is_ready());
    crate::telemetry::render_engine(&mut text, &policies.engine_status());
    crate::telemetry::render_decision_log(&mut text, &shared.pipeline.decision_log);
    shared.pipeline.lane.render(&mut text);
    crate::telemetry::render_identity(&mut text, &shared.pipeline.authenticator);
    crate::telemetry::render_reloads(&mut text, "policy", &shared.reload_status);
    crate::telemetry::render_reloads(&mut text, "tls", &shared.tls_reload_status);
    if let Some(fetcher) = &shared.bundle {
        crate::telemetry::render_bundle(&mut text, fetcher);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
