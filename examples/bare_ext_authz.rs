//! The transport limit for `scripts/bench-h2load.sh`: a tonic ext_authz
//! server that decodes each CheckRequest and answers OK, nothing else. What
//! Arbiter adds is measured against it, in the same run.
//!
//! `cargo run --release --example bare_ext_authz -- 127.0.0.1:9393 [fifo]`
//!
//! With `fifo`, it runs on Arbiter's runtime (`arbiter::server::runtime`,
//! the scheduler without its LIFO slot): the transport limit of that
//! runtime, which `scripts/bench-h2load.sh` reports beside the plain one.

use arbiter::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use arbiter::proto::auth::{CheckRequest, CheckResponse};
use arbiter::proto::rpc::Status as RpcStatus;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare;

#[tonic::async_trait]
impl Authorization for Bare {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        drop(request.into_inner());
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                message: String::new(),
                details: Vec::new(),
            }),
            http_response: None,
            dynamic_metadata: None,
        }))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9393".to_owned())
        .parse()?;
    let runtime = match args.next().as_deref() {
        None => tokio::runtime::Runtime::new()?,
        Some("fifo") => arbiter::server::runtime()?,
        Some(other) => return Err(format!("unknown runtime {other:?}: only `fifo`").into()),
    };
    runtime.block_on(serve(addr))
}

async fn serve(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Bare).max_decoding_message_size(4 * 1024 * 1024))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}
