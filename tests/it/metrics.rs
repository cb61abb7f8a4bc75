//! `/metrics` of a running Arbiter, read as Prometheus reads it: every line
//! is a `# HELP`, a `# TYPE` or a sample of the family declared before it,
//! and every documented family is there with its type and labels.

use std::collections::BTreeMap;

use crate::common::idp::Idp;
use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use jsonwebtoken::Algorithm;
use serde_json::json;

const POLICY: &str = r#"package envoy.authz
default allow := {"allowed": false, "reason": "not \"alice\"\n"}
allow := {"allowed": true} if input.identity.subject == "alice"
"#;

/// The families README documents (every one but the bundle's, which need a
/// bundle), with their types and label names.
const DOCUMENTED: &[(&str, &str, &[&str])] = &[
    ("arbiter_decisions_total", "counter", &["result", "reason"]),
    ("arbiter_decisions_in_flight", "gauge", &[]),
    ("arbiter_policy_engine", "gauge", &["engine"]),
    ("arbiter_rvm_fallbacks_total", "counter", &[]),
    ("arbiter_rvm_mismatches_total", "counter", &[]),
    ("arbiter_decision_log_dropped_total", "counter", &[]),
    ("arbiter_decision_duration_seconds", "histogram", &["le"]),
    ("arbiter_policy_eval_duration_seconds", "histogram", &["le"]),
    ("arbiter_policy_revision", "gauge", &["revision"]),
    ("arbiter_ready", "gauge", &[]),
    ("arbiter_jwks_fetches_total", "counter", &["provider"]),
    (
        "arbiter_jwks_fetch_failures_total",
        "counter",
        &["provider"],
    ),
    ("arbiter_jwks_key_age_seconds", "gauge", &["provider"]),
    ("arbiter_token_cache_entries", "gauge", &[]),
    ("arbiter_token_cache_lookups_total", "counter", &["result"]),
    ("arbiter_policy_reloads_total", "counter", &[]),
    ("arbiter_policy_reload_failures_total", "counter", &[]),
    ("arbiter_tls_reloads_total", "counter", &[]),
    ("arbiter_tls_reload_failures_total", "counter", &[]),
    ("arbiter_grpc_refusals_total", "counter", &["code"]),
    (
        "arbiter_http_requests_total",
        "counter",
        &["door", "status"],
    ),
    ("arbiter_slow_lane_runs_total", "counter", &[]),
    ("arbiter_slow_lane_refused_total", "counter", &[]),
    ("arbiter_slow_lane_queue_depth", "gauge", &[]),
    ("arbiter_slow_lane_queue_seconds", "histogram", &["le"]),
    (
        "arbiter_introspection_calls_total",
        "counter",
        &["provider"],
    ),
    ("arbiter_revocation_entries", "gauge", &[]),
    ("arbiter_revocation_reload_failures_total", "counter", &[]),
    ("arbiter_ssf_events_total", "counter", &["result"]),
    ("arbiter_tokens_revoked_total", "counter", &[]),
];

/// One family as scraped: its type and samples (name with suffix, labels, value).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the text exposition format strictly: a sample must belong to the
/// family whose `# TYPE` came last (histograms by `_bucket`, `_sum`,
/// `_count`), labels must be `name="value"` with escapes, values numbers.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "empty help: {line}");
            families.entry(name.to_owned()).or_default().help = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            let family = families.entry(name.to_owned()).or_default();
            assert!(family.kind.is_empty(), "{name} declared twice");
            assert!(family.help, "{name}: TYPE before HELP");
            family.kind = kind.to_owned();
            current = name.to_owned();
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, labels(rest.strip_suffix('}').expect("closing brace"))),
            None => (series, BTreeMap::new()),
        };
        let family = families.get_mut(&current).expect("a sample after a TYPE");
        let belongs = match family.kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{current}{suffix}")),
            _ => name == current,
        };
        assert!(belongs, "{name} is not a sample of {current}");
        family.samples.push((name.to_owned(), labels, value));
    }
    families
}

fn labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label name=\"");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {name}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    labels
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_documented_family() {
    let key = TestKey::generate("k1", Algorithm::ES256).unwrap();
    let idp = Idp::start(jwks(&[&key])).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret").unwrap();
    let toml = format!(
        "[server]\nmax_request_bytes = 65536\n\
         [[identity.jwt]]\nname = 'idp \"east\" \\ 1'\nissuer = \"{}\"\naudiences = [\"api\"]\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\n\
         [[identity.introspection]]\nname = \"as\"\nendpoint = \"http://127.0.0.1:9/introspect\"\nclient_id = \"arbiter\"\nclient_secret_file = \"{}\"\n",
        idp.issuer(),
        idp.jwks_url(),
        secret.path().display()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let claims = |sub: &str| json!({"iss": idp.issuer(), "aud": "api", "sub": sub, "iat": now(), "exp": now() + 600});
    let alice = key.sign(&claims("alice")).unwrap();
    let bob = key.sign(&claims("bob")).unwrap();
    assert_eq!(arbiter.bearer_reason(&alice).await, None);
    assert_eq!(arbiter.bearer_reason(&alice).await, None);
    assert!(arbiter.bearer_reason(&bob).await.is_some());
    // A call over max_request_bytes is refused with a gRPC error, and counted.
    let huge = "x".repeat(100_000);
    let refused = arbiter
        .client()
        .await
        .check(
            serde_json::from_str::<arbiter::proto::auth::CheckRequest>(&http_request(
                "GET",
                "/",
                &[("x-pad", huge.as_str())],
                "",
            ))
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange);

    let families = parse(&arbiter.metrics().await);
    for (name, kind, label_names) in DOCUMENTED {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is missing from /metrics"));
        assert_eq!(family.kind, *kind, "{name}");
        assert!(!family.samples.is_empty(), "{name} has no sample");
        for (sample, labels, _) in &family.samples {
            let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
            let mut want: Vec<&str> = label_names
                .iter()
                .copied()
                .filter(|l| *l != "le" || sample.ends_with("_bucket"))
                .collect();
            names.sort_unstable();
            want.sort_unstable();
            assert_eq!(names, want, "labels of {sample}");
        }
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented: std::collections::BTreeSet<&str> = readme
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("arbiter_"))
        .map(|s| s.split('{').next().unwrap_or(s))
        .collect();
    for (name, _, _) in DOCUMENTED {
        assert!(documented.contains(name), "README does not document {name}");
    }
    for name in documented
        .iter()
        .filter(|n| !n.starts_with("arbiter_bundle_"))
    {
        assert!(
            DOCUMENTED.iter().any(|(n, _, _)| n == name),
            "README documents {name}, which this test does not check"
        );
    }
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let family = families.get(name)?;
        family
            .samples
            .iter()
            .find(|(_, l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        value(
            "arbiter_decisions_total",
            &[("result", "allow"), ("reason", "")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            "arbiter_decisions_total",
            &[("result", "deny"), ("reason", "policy_denied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("arbiter_token_cache_lookups_total", &[("result", "hit")]),
        Some(1.0)
    );
    assert_eq!(
        // The provider's name, quotes and backslash, escaped and read back.
        value(
            "arbiter_jwks_fetches_total",
            &[("provider", r#"idp "east" \ 1"#)]
        ),
        Some(1.0)
    );
    let count = families["arbiter_decision_duration_seconds"]
        .samples
        .iter()
        .find(|(name, _, _)| name.ends_with("_count"))
        .map(|(_, _, v)| *v);
    assert_eq!(count, Some(3.0));
    assert_eq!(value("arbiter_ready", &[]), Some(1.0));
    arbiter.running.shutdown().await;
}
