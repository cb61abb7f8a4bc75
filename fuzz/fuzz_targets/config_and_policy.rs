//! Any bytes as a config file, a policy or a bundle (the first byte
//! chooses): each is refused with an error or loaded, never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use arbiter::Config;
use arbiter::policy::PolicySet;
use arbiter::policy::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((choice, rest)) = data.split_first() else {
        return;
    };
    match choice % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            let _ = Config::from_toml(&text, Path::new("fuzz.toml"), Path::new("/nonexistent"));
        }
        1 => {
            // Parsing is exponential in nesting up to policy::nesting's limit
            // (milliseconds at it); a short policy keeps every run quick.
            let text = String::from_utf8_lossy(rest.get(..4096).unwrap_or(rest));
            let _ = PolicySet::from_sources(&[("fuzz.rego", &text)], None, &common::CONFIG.policy);
        }
        _ => {
            let _ = Bundle::read("fuzz.tar.gz", rest, None, 1 << 20);
        }
    }
});
