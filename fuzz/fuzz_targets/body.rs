//! Any bytes as a request body, declared as JSON, a form, multipart or
//! text (the first byte chooses): body parsing, the input document and the
//! decision. Nothing may panic, and nothing is allowed.
#![no_main]

#[path = "common.rs"]
mod common;

use arbiter::proto::auth::attribute_context::HttpRequest;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 5] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let Some((choice, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(*choice) % CONTENT_TYPES.len()];
    let raw = choice & 0x80 != 0;
    let http = HttpRequest {
        method: "POST".into(),
        path: "/api/upload?x=1".into(),
        host: "fuzz".into(),
        headers: [("content-type".to_owned(), content_type.to_owned())]
            .into_iter()
            .collect(),
        body: if raw {
            String::new()
        } else {
            String::from_utf8_lossy(body).into_owned()
        },
        raw_body: if raw { body.to_vec() } else { Vec::new() },
        ..Default::default()
    };
    let request = common::check_request(http);
    common::decide_and_check(request);
});
