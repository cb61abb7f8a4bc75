//! Arbiter's integration tests, one module per area, in one test binary:
//! each a real client against a real server (or the real binary).
//! `cargo test --test it <module>::` runs one area.

// Tests may unwrap, panic and index: a failure is the test failing.
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    dead_code
)]

mod common;

mod authzen;
mod bundle;
mod context;
mod decision_log;
mod deploy_manifests;
mod docs;
mod engines;
mod envoy_e2e;
mod faults;
mod front_doors;
mod grpc_api;
mod hostile;
mod identity;
mod introspection;
mod limits;
mod metrics;
mod opa_compat;
mod policy_fixtures;
mod properties;
mod reload;
mod replicas;
mod revocation;
mod shutdown;
mod slow_lane;
mod soak;
mod ssf;
mod tls;
