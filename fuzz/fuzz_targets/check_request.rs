//! Any bytes as a CheckRequest: decoding, the request context, the input
//! document and the decision. Nothing may panic, and nothing is allowed.
#![no_main]

#[path = "common.rs"]
mod common;

use arbiter::context::RequestContext;
use arbiter::identity::Identity;
use arbiter::proto::auth::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let ctx = RequestContext::from_check(request, &common::OPTIONS);
    common::decide_and_check(&ctx, &Identity::anonymous());
});
