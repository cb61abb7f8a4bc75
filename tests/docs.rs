//! SECURITY.md backs each claim with tests, named `file::test` (a file in
//! `tests/`) or `module::tests::test` (a unit test in `src/`). A cited test
//! that no longer exists makes the claim unbacked, so each must be found.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
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
    let mut sources = Vec::new();
    rust_files(&root().join("src"), &mut sources);
    let cited = cited_tests(&security);
    assert!(cited.len() > 50, "too few citations found: {cited:?}");
    let mut missing = Vec::new();
    for name in &cited {
        let first = name.split("::").next().unwrap_or_default();
        let last = name.rsplit("::").next().unwrap_or_default();
        if last == "*" || last == "tests" {
            // A whole file or module of tests: it must exist.
            let file = root().join("tests").join(format!("{first}.rs"));
            let module = sources.iter().any(|s| s.contains("mod tests"));
            if !file.exists() && !module {
                missing.push(name.clone());
            }
            continue;
        }
        let needle = format!("fn {last}(");
        let integration = root().join("tests").join(format!("{first}.rs"));
        // `module::tests::name` is a unit test in src/, whatever the module
        // shares its name with; `file::name` is in tests/<file>.rs.
        let unit = name.split("::").any(|s| s == "tests");
        let found = match std::fs::read_to_string(&integration) {
            Ok(text) if !unit => text.contains(&needle),
            _ => sources.iter().any(|s| s.contains(&needle)),
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
