//! Reading the decision rule's value: a boolean, or an object with exactly
//! the fields and semantics of OPA's Envoy plugin (plus Arbiter's `reason`).

use regorus::Value;

use super::PolicyError;

/// Header (or query parameter) names and values, in the order the policy gave them.
pub type HeaderList = Vec<(String, String)>;

/// What the policy decided, with everything it asked Envoy to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOutcome {
    allowed: bool,
    /// Added to the upstream request when allowed, to the client response when denied.
    pub headers: HeaderList,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: HeaderList,
    pub query_parameters_to_set: HeaderList,
    pub query_parameters_to_remove: Vec<String>,
    /// Body of a denied response.
    pub body: String,
    /// Status of a denied response (default 403).
    pub http_status: Option<u16>,
    /// An object handed to Envoy as dynamic metadata.
    pub dynamic_metadata: Option<Value>,
    /// Arbiter's machine-readable deny reason (`reason` in the result object).
    pub reason: Option<String>,
}

impl PolicyOutcome {
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Reads a decision value. Only exactly `true`, or an object whose
    /// `allowed` is exactly `true`, allows.
    ///
    /// # Errors
    /// Undefined, or neither a boolean nor a well-typed result object.
    pub fn from_value(value: Value) -> Result<Self, PolicyError> {
        match value {
            Value::Undefined => Err(PolicyError::Undefined),
            Value::Bool(allowed) => Ok(Self {
                allowed,
                ..Self::default()
            }),
            Value::Object(ref object) => {
                // Read in one pass over the object: a lookup by name would
                // allocate each name as a `Value`.
                let mut found: [Option<&Value>; RESULT_FIELDS.len()] = [None; RESULT_FIELDS.len()];
                for (key, value) in object.iter() {
                    if let Value::String(key) = key
                        && let Some(i) = RESULT_FIELDS.iter().position(|f| **f == **key)
                        && let Some(slot) = found.get_mut(i)
                        && *value != Value::Undefined
                    {
                        *slot = Some(value);
                    }
                }
                let field = |name: &str| {
                    debug_assert!(RESULT_FIELDS.contains(&name), "{name} is not read");
                    RESULT_FIELDS
                        .iter()
                        .position(|f| *f == name)
                        .and_then(|i| found.get(i).copied().flatten())
                };
                let allowed = match field("allowed") {
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(invalid(format!(
                            "\"allowed\" must be a boolean, got {}",
                            kind(other)
                        )));
                    }
                    None => {
                        return Err(invalid("the result object has no \"allowed\" field".into()));
                    }
                };
                let mut outcome = Self {
                    allowed,
                    ..Self::default()
                };
                if let Some(v) = field("headers") {
                    outcome.headers = header_list("headers", v)?;
                }
                if let Some(v) = field("request_headers_to_remove") {
                    outcome.request_headers_to_remove =
                        string_list("request_headers_to_remove", v)?;
                }
                if let Some(v) = field("response_headers_to_add") {
                    outcome.response_headers_to_add = header_list("response_headers_to_add", v)?;
                }
                if let Some(v) = field("query_parameters_to_set") {
                    outcome.query_parameters_to_set = header_list("query_parameters_to_set", v)?;
                }
                if let Some(v) = field("query_parameters_to_remove") {
                    outcome.query_parameters_to_remove =
                        string_list("query_parameters_to_remove", v)?;
                }
                if let Some(v) = field("body") {
                    outcome.body = match v {
                        Value::String(s) => s.to_string(),
                        other => {
                            return Err(invalid(format!(
                                "\"body\" must be a string, got {}",
                                kind(other)
                            )));
                        }
                    };
                }
                if let Some(v) = field("http_status") {
                    outcome.http_status = Some(http_status(v)?);
                }
                if let Some(v) = field("dynamic_metadata") {
                    if v.as_object().is_err() {
                        return Err(invalid(format!(
                            "\"dynamic_metadata\" must be an object, got {}",
                            kind(v)
                        )));
                    }
                    outcome.dynamic_metadata = Some(v.clone());
                }
                if let Some(v) = field("reason") {
                    outcome.reason = match v {
                        Value::String(s) => Some(s.to_string()),
                        other => {
                            return Err(invalid(format!(
                                "\"reason\" must be a string, got {}",
                                kind(other)
                            )));
                        }
                    };
                }
                Ok(outcome)
            }
            other => Err(invalid(format!("got {}", kind(&other)))),
        }
    }
}

/// The fields of a decision object that Arbiter reads.
const RESULT_FIELDS: [&str; 10] = [
    "allowed",
    "headers",
    "request_headers_to_remove",
    "response_headers_to_add",
    "query_parameters_to_set",
    "query_parameters_to_remove",
    "body",
    "http_status",
    "dynamic_metadata",
    "reason",
];

fn invalid(message: String) -> PolicyError {
    PolicyError::InvalidResult { message }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

/// `{"name": "value" | ["v1", "v2"]}` or an array of such objects.
fn header_list(field: &str, value: &Value) -> Result<HeaderList, PolicyError> {
    let mut out = HeaderList::new();
    let mut add_object = |object: &Value| -> Result<(), PolicyError> {
        let object = object.as_object().map_err(|_| {
            invalid(format!(
                "\"{field}\" must be an object or an array of objects, got {}",
                kind(object)
            ))
        })?;
        for (name, values) in object.iter() {
            let Value::String(name) = name else {
                return Err(invalid(format!("\"{field}\" names must be strings")));
            };
            match values {
                Value::String(v) => out.push((name.to_string(), v.to_string())),
                Value::Array(items) => {
                    for item in items.iter() {
                        let Value::String(v) = item else {
                            return Err(invalid(format!(
                                "\"{field}\" values must be strings or arrays of strings, got {} in {name}",
                                kind(item)
                            )));
                        };
                        out.push((name.to_string(), v.to_string()));
                    }
                }
                other => {
                    return Err(invalid(format!(
                        "\"{field}\" values must be strings or arrays of strings, got {} for {name}",
                        kind(other)
                    )));
                }
            }
        }
        Ok(())
    };
    match value {
        Value::Array(items) => {
            for item in items.iter() {
                add_object(item)?;
            }
        }
        other => add_object(other)?,
    }
    Ok(out)
}

fn string_list(field: &str, value: &Value) -> Result<Vec<String>, PolicyError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Set(items) => items.iter().collect(),
        other => {
            return Err(invalid(format!(
                "\"{field}\" must be an array of strings, got {}",
                kind(other)
            )));
        }
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.to_string()),
            other => Err(invalid(format!(
                "\"{field}\" must hold strings, got {}",
                kind(other)
            ))),
        })
        .collect()
}

fn http_status(value: &Value) -> Result<u16, PolicyError> {
    let code = value
        .as_u64()
        .ok()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| (100..=599).contains(n));
    code.ok_or_else(|| {
        invalid("\"http_status\" must be an HTTP status code from 100 to 599".into())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn outcome(json: &str) -> Result<PolicyOutcome, PolicyError> {
        PolicyOutcome::from_value(Value::from_json_str(json).unwrap())
    }

    #[test]
    fn booleans() {
        assert!(outcome("true").unwrap().allowed());
        assert!(!outcome("false").unwrap().allowed());
    }

    #[test]
    fn full_object() {
        let o = outcome(
            r#"{"allowed": false, "headers": {"x-a": "1", "x-b": ["2", "3"]},
                "request_headers_to_remove": ["authorization"],
                "response_headers_to_add": [{"x-c": "4"}, {"x-c": "5"}],
                "query_parameters_to_set": {"q": "v"}, "query_parameters_to_remove": ["token"],
                "body": "nope", "http_status": 401, "dynamic_metadata": {"k": 1},
                "reason": "device_not_compliant"}"#,
        )
        .unwrap();
        assert!(!o.allowed());
        assert_eq!(
            o.headers,
            vec![
                ("x-a".into(), "1".into()),
                ("x-b".into(), "2".into()),
                ("x-b".into(), "3".into())
            ]
        );
        assert_eq!(o.request_headers_to_remove, vec!["authorization"]);
        assert_eq!(o.response_headers_to_add.len(), 2);
        assert_eq!(o.query_parameters_to_set, vec![("q".into(), "v".into())]);
        assert_eq!(o.query_parameters_to_remove, vec!["token"]);
        assert_eq!(o.body, "nope");
        assert_eq!(o.http_status, Some(401));
        assert!(o.dynamic_metadata.is_some());
        assert_eq!(o.reason.as_deref(), Some("device_not_compliant"));
    }

    #[test]
    fn ill_typed_results_are_errors_never_allows() {
        for bad in [
            r#"{"headers": {}}"#,
            r#"{"allowed": "true"}"#,
            r#"{"allowed": 1}"#,
            r#"{"allowed": true, "headers": {"x": 1}}"#,
            r#"{"allowed": true, "headers": "x"}"#,
            r#"{"allowed": true, "request_headers_to_remove": "x"}"#,
            r#"{"allowed": false, "http_status": "401"}"#,
            r#"{"allowed": false, "http_status": 42}"#,
            r#"{"allowed": false, "body": {}}"#,
            r#"{"allowed": true, "dynamic_metadata": []}"#,
            r#""allow""#,
            "1",
            "null",
            "[true]",
        ] {
            assert!(
                matches!(outcome(bad), Err(PolicyError::InvalidResult { .. })),
                "{bad} must be rejected"
            );
        }
        assert!(matches!(
            PolicyOutcome::from_value(Value::Undefined),
            Err(PolicyError::Undefined)
        ));
    }
}
