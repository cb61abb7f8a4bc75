//! Which parts of the input document a policy set can read, found in its
//! syntax tree: every reference to `input` (directly, or through an import
//! such as `import input.attributes.request.http`) up to its first part
//! that is not a literal key. What such a reference names is needed whole;
//! nothing else is. `input` used any other way (a bare `input`, `input[x]`,
//! `with input as ...`) means the whole document.
//!
//! Rego test files (`*_test.rego`) are left out: the decision never reaches them.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::input::InputPaths;

/// One step of a reference: a literal key, or anything else.
enum Step<'a> {
    Key(&'a str),
    Dynamic,
}

/// A reference chain (`a.b["c"][x]`): its root variable, its steps, and the
/// index expressions to look into for references of their own.
struct Chain<'a> {
    root: &'a str,
    steps: Vec<Step<'a>>,
    indexes: Vec<&'a Json>,
}

/// The input paths the policies read, given regorus's syntax tree of the
/// loaded modules (`Engine::get_ast_as_json`) and their sources in the same
/// order. Anything unexpected in the tree means the whole document.
pub fn analyze(ast_json: &str, sources: &[(&Path, &str)]) -> InputPaths {
    let Ok(Json::Array(modules)) = serde_json::from_str::<Json>(ast_json) else {
        return InputPaths::all();
    };
    if modules.len() != sources.len() {
        return InputPaths::all();
    }
    let mut reads = InputPaths::default();
    for (module, (file, text)) in modules.iter().zip(sources) {
        if file.to_string_lossy().ends_with("_test.rego") {
            continue;
        }
        let Some(ast) = module.get("ast") else {
            return InputPaths::all();
        };
        let Some(aliases) = input_aliases(ast, text) else {
            return InputPaths::all();
        };
        let Some(map) = ast.as_object() else {
            return InputPaths::all();
        };
        for (key, node) in map {
            if key != "imports" && key != "package" {
                walk(node, &aliases, &mut reads);
            }
        }
        if reads.is_all() {
            break;
        }
    }
    reads
}

/// Names bound to a part of the input by the module's imports
/// (`import input.attributes.request.http` binds `http`); `None` when an
/// import cannot be read.
fn input_aliases(ast: &Json, text: &str) -> Option<HashMap<String, Vec<String>>> {
    let mut aliases = HashMap::new();
    let imports = match ast.get("imports") {
        None | Some(Json::Null) => return Some(aliases),
        Some(Json::Array(imports)) => imports,
        Some(_) => return None,
    };
    for import in imports {
        let chain = chain(import.get("refr")?)?;
        if chain.root != "input" {
            continue;
        }
        let mut path = Vec::new();
        for step in &chain.steps {
            match step {
                Step::Key(key) => path.push((*key).to_owned()),
                // Not a plain path: nothing can be projected.
                Step::Dynamic => return None,
            }
        }
        let name = match import.get("as") {
            None | Some(Json::Null) => path.last().cloned().unwrap_or_else(|| "input".into()),
            Some(span) => {
                let start = usize::try_from(span.get("start")?.as_u64()?).ok()?;
                let end = usize::try_from(span.get("end")?.as_u64()?).ok()?;
                text.get(start..end)?.trim().to_owned()
            }
        };
        aliases.insert(name, path);
    }
    Some(aliases)
}

fn walk(node: &Json, aliases: &HashMap<String, Vec<String>>, reads: &mut InputPaths) {
    match node {
        Json::Object(map) => {
            if let Some(chain) = chain(node) {
                let base = match chain.root {
                    "input" => Some(Vec::new()),
                    name => aliases.get(name).cloned(),
                };
                if let Some(mut path) = base {
                    for step in &chain.steps {
                        match step {
                            Step::Key(key) => path.push((*key).to_owned()),
                            Step::Dynamic => break,
                        }
                    }
                    reads.add(&path);
                }
                for index in chain.indexes {
                    walk(index, aliases, reads);
                }
                return;
            }
            for child in map.values() {
                walk(child, aliases, reads);
            }
        }
        Json::Array(items) => {
            for item in items {
                walk(item, aliases, reads);
            }
        }
        _ => {}
    }
}

/// The reference chain a node is, if it is one (`Var`, `RefDot`, `RefBrack`).
fn chain(node: &Json) -> Option<Chain<'_>> {
    let map = node.as_object()?;
    if map.len() != 1 {
        return None;
    }
    if let Some(var) = map.get("Var") {
        return Some(Chain {
            root: var.get("value")?.as_str()?,
            steps: Vec::new(),
            indexes: Vec::new(),
        });
    }
    if let Some(dot) = map.get("RefDot") {
        let mut inner = chain(dot.get("refr")?)?;
        let name = dot.get("field")?.as_array()?.get(1)?.as_str()?;
        inner.steps.push(Step::Key(name));
        return Some(inner);
    }
    if let Some(brack) = map.get("RefBrack") {
        let mut inner = chain(brack.get("refr")?)?;
        let index = brack.get("index")?;
        let key = index
            .get("String")
            .and_then(|s| s.get("value"))
            .and_then(Json::as_str);
        inner.steps.push(key.map_or(Step::Dynamic, Step::Key));
        inner.indexes.push(index);
        return Some(inner);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn reads(rego: &str) -> InputPaths {
        let mut engine = regorus::Engine::new();
        engine.add_policy("p.rego".into(), rego.into()).unwrap();
        analyze(
            &engine.get_ast_as_json().unwrap(),
            &[(Path::new("p.rego"), rego)],
        )
    }

    fn paths(reads: &InputPaths) -> Vec<String> {
        reads.paths()
    }

    #[test]
    fn literal_references_and_imports_are_read_up_to_their_first_dynamic_step() {
        let r = reads(
            r#"package envoy.authz
import input.attributes.request.http
import input.identity as who
allow if {
    http.method == "GET"
    http.headers["x-device-id"] == "d"
    input.parsed_path[0] == "api"
    some scope in who.scopes
    input.source[data.which] == 1
}
"#,
        );
        assert_eq!(
            paths(&r),
            vec![
                "attributes.request.http.headers.x-device-id",
                "attributes.request.http.method",
                "identity.scopes",
                "parsed_path",
                "source",
            ]
        );
    }

    #[test]
    fn any_other_use_of_input_is_the_whole_document() {
        for body in ["input[x] == 1", "x := input", "count(input) > 0"] {
            let r = reads(&format!("package p\nallow if {{\n  some x\n  {body}\n}}\n"));
            assert!(r.is_all(), "{body}");
        }
        let r = reads("package p\nallow := true\n");
        assert!(paths(&r).is_empty() && !r.is_all());
    }

    #[test]
    fn references_inside_an_index_count_too() {
        let r = reads("package p\nallow if data.x[input.user.id]\n");
        assert_eq!(paths(&r), vec!["user.id"]);
    }
}
