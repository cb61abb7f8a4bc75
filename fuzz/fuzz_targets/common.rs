#![allow(dead_code, reason = "each fuzz target uses part of it")]

//! What the fuzz targets share: a config, a policy that reads every part of
//! the input and never allows, so that any allow is a bug, and the decision
//! pipeline `serve` runs, loaded with that policy.

use std::path::Path;
use std::sync::LazyLock;

use arbiter::Config;
use arbiter::context::ParseOptions;
use arbiter::pipeline::Pipeline;
use arbiter::policy::PolicySet;
use arbiter::proto::auth::attribute_context::{HttpRequest, Request};
use arbiter::proto::auth::{AttributeContext, CheckRequest};

pub static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    Config::from_toml(
        "[context]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]\n",
        Path::new("fuzz.toml"),
        Path::new("."),
    )
    .expect("the fuzz config is valid")
});

pub static OPTIONS: LazyLock<ParseOptions> = LazyLock::new(|| ParseOptions::from_config(&CONFIG));

const NEVER_ALLOWS: &str = r#"package envoy.authz

default allow := {"allowed": false, "reason": "never"}

allow := {"allowed": false, "reason": reason, "headers": {"x-seen": seen}} if {
	seen := sprintf("%v %v %v %v", [
		count(input.parsed_path),
		count(object.keys(input.parsed_query)),
		type_name(input.parsed_body),
		input.source.ip,
	])
	reason := concat("-", [k | some k, _ in input.attributes.request.http.headers])
}
"#;

pub static POLICY: LazyLock<PolicySet> = LazyLock::new(|| {
    PolicySet::from_sources(&[("never.rego", NEVER_ALLOWS)], None, &CONFIG.policy)
        .expect("the fuzz policy compiles")
});

pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

pub static PIPELINE: LazyLock<Pipeline> = LazyLock::new(|| {
    RUNTIME.block_on(async {
        let policies = PolicySet::from_sources(&[("never.rego", NEVER_ALLOWS)], None, &CONFIG.policy)
            .expect("the fuzz policy compiles");
        Pipeline::new(&CONFIG, policies, &reqwest::Client::new()).without_decision_log()
    })
});

/// Decides a request through the pipeline with the policy that never
/// allows, and checks that it was denied.
pub fn decide_and_check(request: CheckRequest) {
    let checked = RUNTIME.block_on(PIPELINE.decide(request, false));
    assert!(
        !checked.record.allowed,
        "allowed although the policy never allows"
    );
}

/// A CheckRequest carrying just this HTTP request.
pub fn check_request(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
