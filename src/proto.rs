//! Generated code for the subset of Envoy's ext_authz v3 API in `proto/`.
//!
//! Each package gets its prost messages and their protobuf JSON mapping
//! (`serde` impls from pbjson), so a `CheckRequest` can be read from the
//! JSON that `arbiter eval` and fixtures use.

#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.serde.rs"));
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.serde.rs"));
        }
    }
    pub mod service {
        pub mod auth {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.serde.rs"));
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        include!(concat!(env!("OUT_DIR"), "/google.rpc.serde.rs"));
    }
}

pub use envoy::config::core::v3 as core;
pub use envoy::service::auth::v3 as auth;
pub use envoy::r#type::v3 as http_type;
pub use google::rpc;
