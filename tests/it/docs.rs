//! SECURITY.md backs each claim with tests, named `area::test` (a module
//! of the integration tests, `tests/it/<area>.rs`) or `module::tests::test` (a unit test in `src/`). A cited test
//! that no longer exists makes the claim unbacked, so each must be found.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The source file of a unit test's module: `policy::net::tests::x` is in
/// `src/policy/net.rs` (or `src/policy/net/mod.rs`).
fn unit_test_file(name: &str) -> Option<PathBuf> {
    let module: Vec<&str> = name.split("::").take_while(|s| *s != "tests").collect();
    let dir = module
        .iter()
        .fold(root().join("src"), |path, segment| path.join(segment));
    [dir.with_extension("rs"), dir.join("mod.rs")]
        .into_iter()
        .find(|file| file.exists())
}

/// Every `a::b` in backticks in the test column of SECURITY.md's tables.
fn cited_tests(security: &str) -> Vec<String> {
    let mut cited = Vec::new();
    for line in security.lines().filter(|l| l.starts_with('|')) {
        let Some(column) = line.trim_end_matches('|').rsplit('|').next() else {
            continue;
        };
        for (i, part) in column.split('`').enumerate() {
            let name = part.trim();
            if i % 2 == 1
                && name.contains("::")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '*')
            {
                cited.push(name.to_owned());
            }
        }
    }
    cited
}

#[test]
fn every_test_security_md_cites_exists() {
    let security = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    let cited = cited_tests(&security);
    assert!(cited.len() > 50, "too few citations found: {cited:?}");
    let mut missing = Vec::new();
    for name in &cited {
        let first = name.split("::").next().unwrap_or_default();
        let last = name.rsplit("::").next().unwrap_or_default();
        // `module::tests::name` is a unit test in that module's file under
        // src/; `area::name` is in the integration tests' tests/it/<area>.rs.
        let file = if name.split("::").any(|s| s == "tests") {
            unit_test_file(name)
        } else {
            Some(root().join("tests/it").join(format!("{first}.rs")))
        };
        let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
            missing.push(name.clone());
            continue;
        };
        let found = match last {
            // A whole file or module of tests.
            "*" => true,
            "tests" => text.contains("mod tests"),
            _ => text.contains(&format!("fn {last}(")),
        };
        if !found {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "SECURITY.md cites tests that do not exist: {missing:?}"
    );
}
