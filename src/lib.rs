//! Arbiter: a zero-trust policy decision point for Envoy's ext_authz.
//!
//! Data flows one way: request -> [`context`] -> [`identity`] -> [`input`]
//! -> [`policy`] -> [`decision`] -> response, run by [`pipeline`] for every
//! front door; [`server`] wires the listeners to it, and [`config`],
//! [`telemetry`] and [`admin`] stand at the side; [`address`] reads
//! addresses and networks, and [`metrics`] encodes metrics, for all of them.
#![forbid(unsafe_code)]

pub mod address;
pub mod admin;
pub mod config;
pub mod context;
pub mod decision;
pub mod fixtures;
pub mod identity;
pub mod input;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proto;
pub mod server;
pub mod telemetry;

pub use config::Config;
pub use server::{Running, StartError, run, start};
