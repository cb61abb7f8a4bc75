//! The policy text the bytecode VM compiles, where it must differ from the
//! text the interpreter runs.
//!
//! regorus 0.14's VM compiler binds `x := <undefined>` instead of failing
//! the body: its colon-assignment skips the "not undefined" guard that `=`
//! has. So `client := input.headers["x-client"]; not blocked[client]`
//! succeeds on the VM for a request without the header, where OPA and the
//! interpreter fail the body: a deny-list that the VM would turn into an
//! allow. The VM is therefore given every body assignment written as
//! `[lhs] := [rhs]`: the same variables bound to the same values, while an
//! undefined right side leaves the one-element array undefined, which fails
//! the destructuring just as OPA fails the assignment. Lines are kept;
//! columns shift only within a rewritten line.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// The sources to compile for the VM: `None` when they are the loaded
/// sources unchanged (no body assigns with `:=`), else every module with its
/// assignments guarded. `Err` says why the VM cannot be given safe sources.
pub fn guarded_sources(
    ast_json: &str,
    sources: &[(PathBuf, String)],
) -> Result<Option<Vec<(PathBuf, String)>>, String> {
    let modules = match serde_json::from_str::<Json>(ast_json) {
        Ok(Json::Array(modules)) if modules.len() == sources.len() => modules,
        _ => return Err("the policies' syntax tree could not be read".into()),
    };
    let mut changed = false;
    let mut guarded = Vec::with_capacity(sources.len());
    for (module, (path, text)) in modules.iter().zip(sources) {
        let mut edits = Vec::new();
        collect_assignments(module, &mut edits);
        if edits.is_empty() {
            guarded.push((path.clone(), text.clone()));
            continue;
        }
        changed = true;
        guarded.push((path.clone(), apply(path, text, edits)?));
    }
    Ok(changed.then_some(guarded))
}

/// Where one assignment's two sides start and end, as byte offsets.
#[derive(Debug, Clone, Copy)]
struct Assignment {
    lhs: (usize, usize),
    rhs: (usize, usize),
}

fn collect_assignments(node: &Json, out: &mut Vec<Option<Assignment>>) {
    match node {
        Json::Object(map) => {
            if let Some(assign) = map.get("AssignExpr") {
                if assign.get("op").and_then(Json::as_str) == Some("ColEq") {
                    let lhs = assign.get("lhs").and_then(span_of);
                    let rhs = assign.get("rhs").and_then(span_of);
                    out.push(lhs.zip(rhs).map(|(lhs, rhs)| Assignment { lhs, rhs }));
                }
            }
            for child in map.values() {
                collect_assignments(child, out);
            }
        }
        Json::Array(items) => {
            for item in items {
                collect_assignments(item, out);
            }
        }
        _ => {}
    }
}

/// The byte range of an expression node (`{"Variant": {"span": ...}}`).
fn span_of(node: &Json) -> Option<(usize, usize)> {
    let inner = node.as_object()?.values().next()?;
    let span = inner.get("span")?;
    let start = usize::try_from(span.get("start")?.as_u64()?).ok()?;
    let end = usize::try_from(span.get("end")?.as_u64()?).ok()?;
    (start <= end).then_some((start, end))
}

fn apply(path: &Path, text: &str, edits: Vec<Option<Assignment>>) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "{}: an assignment could not be guarded for the bytecode VM ({why})",
            path.display()
        ))
    };
    let mut inserts: Vec<(usize, char)> = Vec::with_capacity(edits.len() * 4);
    for edit in edits {
        let Some(Assignment { lhs, rhs }) = edit else {
            return refuse("no source position");
        };
        let between = text.get(lhs.1..rhs.0);
        if !between.is_some_and(|b| b.contains(":=")) || rhs.1 > text.len() {
            return refuse("unexpected source position");
        }
        inserts.extend([(lhs.0, '['), (lhs.1, ']'), (rhs.0, '['), (rhs.1, ']')]);
    }
    if inserts.iter().any(|(at, _)| !text.is_char_boundary(*at)) {
        return refuse("position inside a character");
    }
    // From the end, so that earlier offsets stay valid; at one offset a
    // closing bracket goes before an opening one.
    inserts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = text.to_owned();
    for (at, bracket) in inserts {
        out.insert(at, bracket);
    }
    Ok(out)
}

/// Why a policy set cannot run on the VM although it compiles: regorus
/// 0.14's VM answers a function with a `default` value as undefined where
/// the default applies. `None` when no module declares one.
pub fn default_function<'a>(rego: impl IntoIterator<Item = (&'a Path, &'a str)>) -> Option<String> {
    for (file, text) in rego {
        if file.to_string_lossy().ends_with("_test.rego") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("default ") else {
                continue;
            };
            let name_end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len());
            if rest.get(name_end..).is_some_and(|r| r.starts_with('(')) {
                return Some(format!(
                    "{}:{}: a function with a default value (`default {}(...)`), which the bytecode VM evaluates wrongly",
                    file.display(),
                    n + 1,
                    rest.get(..name_end).unwrap_or_default()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    fn guard(text: &str) -> String {
        let mut engine = regorus::Engine::new();
        engine.add_policy("p.rego".into(), text.into()).unwrap();
        let ast = engine.get_ast_as_json().unwrap();
        let sources = vec![(PathBuf::from("p.rego"), text.to_owned())];
        guarded_sources(&ast, &sources)
            .unwrap()
            .map_or_else(|| text.to_owned(), |mut s| s.remove(0).1)
    }

    #[test]
    fn body_assignments_are_wrapped_and_nothing_else_changes() {
        let text = "package p\n\nx := 1\n\nallow if {\n\ty := (input.a)\n\t[a, b] := input.p\n\tz := (1 + 2) * 3\n\tzs := [v | some w in input.ws; v := w.k]\n\tq = 2\n}\n";
        let want = "package p\n\nx := 1\n\nallow if {\n\t[y] := ([input.a])\n\t[[a, b]] := [input.p]\n\t[z] := [(1 + 2) * 3]\n\t[zs] := [[v | some w in input.ws; [v] := [w.k]]]\n\tq = 2\n}\n";
        assert_eq!(guard(text), want);
        assert_eq!(text.lines().count(), want.lines().count());
        let plain = "package p\n\nallow if input.a == 1\n";
        assert_eq!(guard(plain), plain);
    }

    #[test]
    fn default_functions_are_found_and_default_rules_are_not() {
        let rego = |text: &'static str| [(Path::new("p.rego"), text)];
        assert!(default_function(rego("package p\ndefault allow := false\n")).is_none());
        let found = default_function(rego("package p\n\ndefault f(_) := 1\n")).unwrap();
        assert!(found.starts_with("p.rego:3: "), "{found}");
    }
}
