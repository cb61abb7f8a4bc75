//! Any bytes as a CheckRequest: decoding, then the whole decision pipeline
//! (context, identity, input, policy, decision). Nothing may panic, and nothing is allowed.
#![no_main]

#[path = "common.rs"]
mod common;

use arbiter::proto::auth::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    common::decide_and_check(request);
});
