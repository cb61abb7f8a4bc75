//! Writes the fuzz targets' seed corpus (`fuzz/seeds/<target>/`) from the
//! project's own fixtures: example requests, the policy library, the
//! configs, bodies and tokens of the kinds the tests use. Run it after
//! changing those and commit the result:
//!
//! `cargo run --example fuzz_seeds`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::Path;

use arbiter::identity::test_keys::TestKey;
use arbiter::proto::auth::CheckRequest;
use prost::Message;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn files_with(dir: &str, extension: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![Path::new(dir).to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn name_of(path: &Path) -> String {
    path.to_string_lossy().replace(['/', '.'], "_")
}

fn main() {
    // The seeds and the fixtures they come from are paths in the repository.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let _ = std::fs::remove_dir_all("fuzz/seeds");
    let mut requests = files_with("policies/examples", "json");
    requests.push("benches/load/request.json".into());
    for path in requests {
        let request: CheckRequest =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        write("check_request", &name_of(&path), &request.encode_to_vec());
    }

    let bodies: [(u8, &[u8]); 6] = [
        (0, br#"{"item": "book", "qty": 2, "tags": ["a", {"b": [1, 2.5, null, true]}]}"#),
        (0, b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"),
        (1, b"a=1&b=%20two&a=3&c&%ZZ=bad"),
        (2, b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nvalue\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n"),
        (4, "caf\u{e9} \u{1F600}".as_bytes()),
        (0x80, b"\xff\xfe\x00{\"raw\": true}"),
    ];
    for (i, (choice, body)) in bodies.iter().enumerate() {
        let mut bytes = vec![*choice];
        bytes.extend_from_slice(body);
        write("body", &format!("body_{i}"), &bytes);
    }

    let key = TestKey::generate("other", jsonwebtoken::Algorithm::ES256).unwrap();
    let claims = serde_json::json!({"iss": "https://idp.fuzz", "aud": "api", "sub": "alice", "exp": 4_000_000_000u64});
    let tokens = [
        key.sign(&claims).unwrap(),
        format!(
            "eyJhbGciOiJub25lIn0.{}.",
            "eyJpc3MiOiJodHRwczovL2lkcC5mdXp6IiwiYXVkIjoiYXBpIiwic3ViIjoiYWxpY2UiLCJleHAiOjQwMDAwMDAwMDB9"
        ),
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enoiLCJjcml0IjpbIngiXX0.e30.c2ln".to_owned(),
        "not.a.token".to_owned(),
        String::new(),
    ];
    for (i, token) in tokens.iter().enumerate() {
        write("token", &format!("token_{i}"), token.as_bytes());
    }

    let mut configs = files_with("benches/load", "toml");
    configs.extend(files_with("deploy/docker", "toml"));
    for path in configs {
        let mut bytes = vec![0];
        bytes.extend(std::fs::read(&path).unwrap());
        write("config_and_policy", &name_of(&path), &bytes);
    }
    for path in files_with("policies", "rego") {
        let mut bytes = vec![1];
        bytes.extend(std::fs::read(&path).unwrap());
        write("config_and_policy", &name_of(&path), &bytes);
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (name, text) in [
        (".manifest", r#"{"revision":"seed","roots":["envoy"]}"#),
        (
            "envoy/authz/policy.rego",
            "package envoy.authz\n\ndefault allow := false\n",
        ),
        ("envoy/data.json", r#"{"routes":{"GET":["/"]}}"#),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, text.as_bytes()).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(vec![2], flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    // The leading byte chooses the bundle branch; the gzip stream follows it.
    let bundle = gz.finish().unwrap();
    write("config_and_policy", "bundle", &bundle);

    // Regression: 42 nested `[` in a rule head hung regorus's parser (a
    // fuzzer timeout in CI); now refused by policy::nesting at once.
    let mut nested = vec![1];
    nested.extend_from_slice(
        format!("package p\n\nde{}nials contains 1\n", "[".repeat(42)).as_bytes(),
    );
    write("config_and_policy", "regression_nested_brackets", &nested);
}
