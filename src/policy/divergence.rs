//! Rego that regorus evaluates differently from OPA, found in the syntax
//! tree so that `arbiter check` can name the file, line and pattern.
//!
//! Both patterns are negations over a value that may be undefined. OPA's
//! compiler evaluates a nested call, and a rule used as a key, before the
//! `not`: when that value is undefined the whole body fails. regorus
//! evaluates the value under the negation, where undefined makes the `not`
//! succeed. Binding the value to a variable first (`c := client`) gives
//! the same answer on both.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value as Json;

/// One place where a policy may decide differently on Arbiter and on OPA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// The divergences in each module, given regorus's syntax tree of the
/// modules (`Engine::get_ast_as_json`) and their sources in the same order.
pub fn find(ast_json: &str, sources: &[(&Path, &str)]) -> Vec<(String, Divergence)> {
    let Ok(Json::Array(modules)) = serde_json::from_str::<Json>(ast_json) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (module, (file, text)) in modules.iter().zip(sources) {
        let Some(ast) = module.get("ast") else {
            continue;
        };
        let rules = rule_names(ast);
        let mut negations = Vec::new();
        find_negations(ast, &mut negations);
        for negated in negations {
            let mut inner = Vec::new();
            undefined_first(negated, &rules, text, &mut inner);
            for divergence in inner {
                found.push((file.display().to_string(), divergence));
            }
        }
    }
    found
}

/// Names of the module's rules and functions, and of its imports.
fn rule_names(ast: &Json) -> HashSet<String> {
    let mut names = HashSet::new();
    for rule in ast
        .get("rules")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let Some(rule) = rule.as_object().and_then(|r| r.values().next()) else {
            continue;
        };
        let head_ref = rule
            .get("head")
            .and_then(|h| h.as_object()?.values().next()?.get("refr"))
            .or_else(|| rule.get("refr"));
        if let Some(name) = head_ref.and_then(root_var) {
            names.insert(name.to_owned());
        }
    }
    for import in ast
        .get("imports")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(alias) = import.get("as").and_then(Json::as_str) {
            names.insert(alias.to_owned());
        } else if let Some(last) = import.get("refr").and_then(last_field) {
            names.insert(last.to_owned());
        }
    }
    names
}

fn root_var(node: &Json) -> Option<&str> {
    let (kind, inner) = node.as_object()?.iter().next()?;
    match kind.as_str() {
        "Var" => inner.get("value")?.as_str(),
        "RefDot" | "RefBrack" => root_var(inner.get("refr")?),
        _ => None,
    }
}

fn last_field(node: &Json) -> Option<&str> {
    let (kind, inner) = node.as_object()?.iter().next()?;
    match kind.as_str() {
        "Var" => inner.get("value")?.as_str(),
        "RefDot" => inner.get("field")?.get(1)?.as_str(),
        _ => None,
    }
}

fn find_negations<'a>(node: &'a Json, out: &mut Vec<&'a Json>) {
    match node {
        Json::Object(map) => {
            if let Some(expr) = map.get("NotExpr").and_then(|n| n.get("expr")) {
                out.push(expr);
            }
            for child in map.values() {
                find_negations(child, out);
            }
        }
        Json::Array(items) => {
            for item in items {
                find_negations(item, out);
            }
        }
        _ => {}
    }
}

/// Values inside a negated expression that OPA evaluates before the `not`.
fn undefined_first(node: &Json, rules: &HashSet<String>, text: &str, out: &mut Vec<Divergence>) {
    let Some((kind, inner)) = node.as_object().and_then(|m| m.iter().next()) else {
        return;
    };
    match kind.as_str() {
        "RefBrack" => {
            if let Some(index) = inner.get("index") {
                let rule_key = match index.as_object().and_then(|m| m.iter().next()) {
                    Some((k, v)) if k == "Var" => v
                        .get("value")
                        .and_then(Json::as_str)
                        .is_some_and(|name| rules.contains(name)),
                    Some((k, _)) => k == "Call",
                    None => false,
                };
                if rule_key {
                    out.push(divergence(index, text, "a rule or call used as a key"));
                }
                undefined_first(index, rules, text, out);
            }
            if let Some(refr) = inner.get("refr") {
                undefined_first(refr, rules, text, out);
            }
        }
        "Call" => {
            for param in inner
                .get("params")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                if param.get("Call").is_some() {
                    out.push(divergence(param, text, "a call nested in a call"));
                }
                undefined_first(param, rules, text, out);
            }
        }
        _ => {
            for child in inner.as_object().into_iter().flat_map(|m| m.values()) {
                let items: Vec<&Json> = match child {
                    Json::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                // Expression nodes are one-key objects (`{"Var": {...}}`);
                // spans and field names are not.
                for item in items {
                    if item.as_object().is_some_and(|m| m.len() == 1) {
                        undefined_first(item, rules, text, out);
                    }
                }
            }
        }
    }
}

fn divergence(node: &Json, text: &str, what: &str) -> Divergence {
    let span = node
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|inner| inner.get("span"));
    let number = |key: &str| span.and_then(|s| s.get(key)).and_then(Json::as_u64);
    let source = number("start")
        .zip(number("end"))
        .and_then(|(start, end)| text.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
        .unwrap_or("?");
    Divergence {
        line: number("line").unwrap_or(0),
        column: number("col").unwrap_or(0),
        message: format!(
            "`not` over {what} (`{source}`): OPA evaluates it before the `not`, so when it is undefined the body fails; regorus makes the `not` succeed. Bind it to a variable first (`x := {source}`) to get OPA's answer on both"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    fn divergences(text: &str) -> Vec<(u64, String)> {
        let mut engine = regorus::Engine::new();
        engine.add_policy("p.rego".into(), text.into()).unwrap();
        let ast = engine.get_ast_as_json().unwrap();
        find(&ast, &[(Path::new("p.rego"), text)])
            .into_iter()
            .map(|(file, d)| {
                assert_eq!(file, "p.rego");
                (d.line, d.message)
            })
            .collect()
    }

    #[test]
    fn negations_over_values_opa_evaluates_first_are_found() {
        let text = r#"package p

import input.attributes.request.http

client := http.headers["x-client"]

bypass := {"svc-a": true}

allow if not bypass[client]

allow if not contains(lower(http.path), "admin")

allow if not bypass[lower(http.host)]
"#;
        let found = divergences(text);
        let lines: Vec<u64> = found.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [9, 11, 13], "{found:?}");
        assert!(found[0].1.contains("`client`"), "{}", found[0].1);
        assert!(found[1].1.contains("`lower(http.path)`"), "{}", found[1].1);
    }

    #[test]
    fn negations_that_mean_the_same_on_both_are_not() {
        let text = r#"package p

bypass := {"svc-a": true}

allow if {
	client := input.client
	not bypass[client]
	not input.user == "admin"
	not startswith(input.path, "/admin")
	not bypass[input.other]
}
"#;
        assert_eq!(divergences(text), []);
    }
}
