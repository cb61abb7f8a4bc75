//! The bytecode VM against the interpreter: every policy that runs on the
//! VM must decide exactly as the interpreter does. Compared here on every
//! fixture of the policy library, on the zero-trust decision of the load
//! tests, on the OPA-compatibility policies in `tests/it/opa/`, and on
//! property-generated requests (methods, paths, queries, headers, claims,
//! device posture, source addresses, principals) through each of them.

use crate::common;

use std::path::PathBuf;

use arbiter::config::{Config, EngineChoice, PolicyConfig, RegoVersion};
use arbiter::context::{ParseOptions, RequestContext};
use arbiter::identity::Identity;
use arbiter::policy::{PolicyError, PolicySet};
use arbiter::proto::auth::CheckRequest;
use proptest::prelude::*;
use regorus::Value;

/// One policy set loaded twice: on the VM (it must compile there) and on
/// the interpreter alone.
#[derive(Debug)]
struct Engines {
    name: &'static str,
    vm: PolicySet,
    plain: PolicySet,
}

impl Engines {
    /// A set that must run on the VM.
    fn load(name: &'static str, config: &PolicyConfig) -> Self {
        Self::with(name, config, PolicySet::load)
            .unwrap_or_else(|e| panic!("{name} does not compile for the bytecode VM: {e}"))
    }

    /// A set from text; `Err` with the reason when it does not compile for
    /// the VM, which `engine = "auto"` must then report.
    fn from_sources(
        name: &'static str,
        rego: &[(&str, &str)],
        data: Option<&str>,
        config: &PolicyConfig,
    ) -> Result<Self, String> {
        Self::with(name, config, |c| PolicySet::from_sources(rego, data, c))
    }

    fn with(
        name: &'static str,
        config: &PolicyConfig,
        load: impl Fn(&PolicyConfig) -> Result<PolicySet, PolicyError>,
    ) -> Result<Self, String> {
        let on = |engine| {
            let mut config = config.clone();
            config.engine = engine;
            load(&config)
        };
        let vm = match on(EngineChoice::Rvm) {
            Ok(vm) => vm,
            Err(e) => {
                let auto = on(EngineChoice::Auto).unwrap();
                let status = auto.engine_status();
                assert_eq!(status.engine, "interpreter", "{name}");
                let reason = status.fallback_reason.unwrap();
                assert!(e.to_string().contains(&reason), "{name}: {e} / {reason}");
                return Err(reason);
            }
        };
        assert_eq!(vm.engine_status().engine, "rvm", "{name}");
        let plain = on(EngineChoice::Interpreter).unwrap();
        assert_eq!(plain.engine_status().engine, "interpreter", "{name}");
        Ok(Self { name, vm, plain })
    }

    /// Both engines' answers for one input, which must be the same; and
    /// the VM's answer on the input cut down to what the policies read
    /// (what Arbiter builds) must be the same again.
    fn compare(&self, what: &str, input: &Value) -> Result<Value, String> {
        let vm = answer(self.vm.vm_value(input.clone()).expect("on the VM"));
        let plain = answer(self.plain.interpret(input.clone()));
        assert_eq!(
            vm, plain,
            "{}: {what}: the VM and the interpreter disagree on {input}",
            self.name
        );
        let projected = self.vm.reads().project(input);
        let partial = answer(self.vm.vm_value(projected.clone()).expect("on the VM"));
        assert_eq!(
            partial,
            plain,
            "{}: {what}: the decision changed on the input cut down to {:?}: {projected}",
            self.name,
            self.vm.reads().paths()
        );
        vm
    }

    /// The answer on the input Arbiter builds for these policies, which
    /// must be the answer on the whole document.
    fn compare_built(&self, what: &str, request: &CheckRequest, whole: &Value) {
        let options = ParseOptions::from_config(&Config::default());
        let ctx = RequestContext::from_check(request.clone(), &options);
        let mut built =
            arbiter::input::build_reading(&ctx, &Identity::anonymous(), None, self.vm.reads());
        for key in ["identity", "device"] {
            let value = whole[key].clone();
            built
                .as_object_mut()
                .unwrap()
                .insert(Value::from(key), value);
        }
        assert_eq!(
            answer(self.vm.vm_value(built.clone()).unwrap()),
            answer(self.plain.interpret(whole.clone())),
            "{}: {what}: built {built}",
            self.name
        );
    }
}

/// An answer to compare: the decision's value, or the kind of error.
fn answer(result: Result<Value, PolicyError>) -> Result<Value, String> {
    result.map_err(|e| match e {
        PolicyError::Timeout { .. } => "timeout".to_owned(),
        PolicyError::Evaluation { .. } => "evaluation error".to_owned(),
        other => other.to_string(),
    })
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The input the pipeline builds for a CheckRequest, for an anonymous
/// caller, with `identity` and `device` then set as given.
fn input_for(request: CheckRequest, identity: Option<Value>, device: Option<Value>) -> Value {
    let options = ParseOptions::from_config(&Config::default());
    let ctx = RequestContext::from_check(request, &options);
    let mut input = arbiter::input::build(&ctx, &Identity::anonymous(), None);
    let doc = input.as_object_mut().unwrap();
    if let Some(identity) = identity {
        doc.insert(Value::from("identity"), identity);
    }
    if let Some(device) = device {
        doc.insert(Value::from("device"), device);
    }
    input
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
    serde_json::from_str(&common::http_request(method, path, headers, body)).unwrap()
}

#[tokio::test]
async fn the_policy_library_decides_every_fixture_the_same_on_both_engines() {
    let mut config = Config::default();
    config.policy.paths = vec![root().join("policies")];
    let engines = Engines::load("policies/", &config.policy);
    let inputs = arbiter::fixtures::inputs(&config).await.unwrap();
    assert!(inputs.len() >= 40, "{} fixture inputs", inputs.len());
    let mut allowed = 0;
    for (name, input) in &inputs {
        let value = engines.compare(name, input).unwrap();
        allowed += usize::from(value["allowed"] == Value::from(true));
    }
    assert!(
        allowed >= 15,
        "{allowed} allowed: the comparison covers both answers"
    );
}

/// The OPA Envoy plugin's documented policies (tests/it/opa/), with the
/// requests `tests/it/opa_compat.rs` sends them, where they run on the VM.
#[test]
fn the_opa_compatibility_policies_decide_the_same_on_both_engines() {
    let v0 = PolicyConfig {
        rego_version: RegoVersion::V0,
        ..PolicyConfig::default()
    };
    let basic = [
        Engines::from_sources(
            "v0 basic auth",
            &[("p.rego", include_str!("opa/v0_basic_auth.rego"))],
            None,
            &v0,
        ),
        Engines::from_sources(
            "v1 basic auth",
            &[("p.rego", include_str!("opa/v1_basic_auth.rego"))],
            Some(include_str!("opa/roles.json")),
            &PolicyConfig::default(),
        ),
    ];
    let alice = "Basic YWxpY2U6cGFzc3dvcmQ=";
    let bob = "Basic Ym9iOnBhc3N3b3Jk";
    let mut compiled = 0;
    for engines in &basic {
        let engines = match engines {
            Ok(engines) => engines,
            // Runs on the interpreter, reported (checked in `with`).
            Err(reason) => {
                eprintln!("on the interpreter: {reason}");
                continue;
            }
        };
        compiled += 1;
        for (method, path, authorization, allowed) in [
            ("GET", "/productpage", alice, true),
            ("GET", "/api/v1/products", alice, false),
            ("GET", "/api/v1/products", bob, true),
            ("DELETE", "/api/v1/products", bob, false),
            ("GET", "/productpage", "Bearer nonsense", false),
        ] {
            let input = input_for(
                request(method, path, &[("authorization", authorization)], ""),
                None,
                None,
            );
            let value = engines.compare(path, &input);
            assert_eq!(value, Ok(Value::from(allowed)), "{}", engines.name);
        }
    }

    assert!(compiled >= 1, "{basic:?}");

    // io.jwt.decode_verify is Arbiter's: the VM suspends and Arbiter answers.
    let jwt = Engines::from_sources(
        "v0 JWT tutorial",
        &[("p.rego", include_str!("opa/v0_jwt_tutorial.rego"))],
        None,
        &v0,
    )
    .expect("the JWT tutorial runs on the VM, its built-in answered by Arbiter");
    let hs256 = |secret: &str, role: &str, exp_offset: i64| {
        common::hs256(secret, role, "YWxpY2U", exp_offset)
    };
    for (what, method, path, token, body, allowed) in [
        (
            "guest reads",
            "GET",
            "/people",
            hs256("secret", "guest", 600),
            "",
            true,
        ),
        (
            "guest writes",
            "POST",
            "/people",
            hs256("secret", "guest", 600),
            "{\"firstname\": \"bob\"}",
            false,
        ),
        (
            "admin writes",
            "POST",
            "/people",
            hs256("secret", "admin", 600),
            "{\"firstname\": \"bob\"}",
            true,
        ),
        (
            "admin as himself",
            "POST",
            "/people",
            hs256("secret", "admin", 600),
            "{\"firstname\": \"alice\"}",
            false,
        ),
        (
            "wrong secret",
            "GET",
            "/people",
            hs256("guessed", "admin", 600),
            "",
            false,
        ),
        (
            "expired",
            "GET",
            "/people",
            hs256("secret", "admin", -30),
            "",
            false,
        ),
        (
            "not a token",
            "GET",
            "/people",
            "abc.def".to_owned(),
            "",
            false,
        ),
    ] {
        let input = input_for(
            request(
                method,
                path,
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("content-type", "application/json"),
                ],
                body,
            ),
            None,
            None,
        );
        assert_eq!(
            jwt.compare(what, &input),
            Ok(Value::from(allowed)),
            "{what}"
        );
    }

    // A decision built from partial rules with constant keys does not
    // compile for the VM: it runs on the interpreter, and says why.
    let config = PolicyConfig {
        decision: "envoy/authz/result".parse().unwrap(),
        ..PolicyConfig::default()
    };
    let object = PolicySet::from_sources(
        &[("p.rego", include_str!("opa/v1_object_result.rego"))],
        None,
        &config,
    )
    .unwrap();
    let status = object.engine_status();
    assert_eq!(status.engine, "interpreter");
    assert!(
        status.fallback_reason.unwrap().contains("partial rules"),
        "{:?}",
        object.engine_status()
    );
    let forced = PolicyConfig {
        engine: EngineChoice::Rvm,
        ..config
    };
    let err = PolicySet::from_sources(
        &[("p.rego", include_str!("opa/v1_object_result.rego"))],
        None,
        &forced,
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Rvm { .. }), "{err}");
}

/// Rego whose meaning turns on an undefined value, each with the answer OPA
/// gives (`None`: undefined). regorus 0.14's VM bound `x := <undefined>`
/// and went on, so the first group decided `true` on the VM: the
/// assignments are guarded for it (`src/policy/vm_source.rs`). A function
/// with a default runs on the interpreter, and says why.
const UNDEFINED_CORNERS: [(&str, &str, &str, Option<bool>); 16] = [
    (
        "assigned and unused",
        "allow if { x := input.missing; true }",
        "{}",
        None,
    ),
    (
        "assigned then negated",
        "blocked := {\"mallory\": true}\nallow if { client := input.headers[\"x-client\"]; not blocked[client] }",
        r#"{"headers": {}}"#,
        None,
    ),
    (
        "assigned then negated, present",
        "blocked := {\"mallory\": true}\nallow if { client := input.headers[\"x-client\"]; not blocked[client] }",
        r#"{"headers": {"x-client": "alice"}}"#,
        Some(true),
    ),
    (
        "assigned from a call",
        "allow if { x := lower(input.missing); true }",
        "{}",
        None,
    ),
    (
        "assigned from data",
        "allow if { x := data.nothing.here; true }",
        "{}",
        None,
    ),
    (
        "assigned from a rule",
        "r := input.missing\nallow if { x := r; true }",
        "{}",
        None,
    ),
    (
        "destructured",
        "allow if { [a, b] := input.pair; true }",
        "{}",
        None,
    ),
    (
        "destructured, present",
        "allow if { [a, b] := input.pair; a < b }",
        r#"{"pair": [1, 2]}"#,
        Some(true),
    ),
    (
        "assigned in a comprehension",
        "allow if { ks := [k | some v in input.vs; k := v.k]; count(ks) == 1 }",
        r#"{"vs": [{"k": 1}, {}]}"#,
        Some(true),
    ),
    (
        "unified",
        "allow if { x = input.missing; true }",
        "{}",
        None,
    ),
    (
        "negated comparison",
        "allow if not input.missing == \"x\"",
        "{}",
        Some(true),
    ),
    ("inequality", "allow if input.missing != \"x\"", "{}", None),
    (
        "every over nothing",
        "allow if { every x in [] { x > 0 } }",
        "{}",
        Some(true),
    ),
    (
        "else chain",
        "f(x) := \"a\" if x > 1\n else := \"b\" if x > 0\n else := \"c\"\nallow if f(0) == \"c\"",
        "{}",
        Some(true),
    ),
    (
        "default function",
        "default f(_) := \"d\"\nf(x) := \"one\" if x == 1\nallow if f(2) == \"d\"",
        "{}",
        Some(true),
    ),
    (
        "built-in error is undefined",
        "allow if { x := to_number(input.n); true }",
        r#"{"n": "x"}"#,
        None,
    ),
];

#[test]
fn undefined_values_decide_as_in_opa_on_both_engines() {
    let config = PolicyConfig {
        decision: "t/allow".parse().unwrap(),
        ..PolicyConfig::default()
    };
    for (name, body, input, opa) in UNDEFINED_CORNERS {
        let text = format!("package t\n\n{body}\n");
        let input = Value::from_json_str(input).unwrap();
        let want = Ok(opa.map_or(Value::Undefined, Value::from));
        match Engines::from_sources(name, &[("t.rego", &text)], None, &config) {
            Ok(engines) => {
                let got = engines.compare(name, &input);
                assert_eq!(got, want, "{name}: not OPA's answer");
            }
            Err(reason) => {
                assert_eq!(name, "default function", "{name} left the VM: {reason}");
                assert!(reason.contains("t.rego:3: "), "{reason}");
                let plain = PolicySet::from_sources(&[("t.rego", &text)], None, &config).unwrap();
                assert_eq!(answer(plain.interpret(input)), want, "{name}");
            }
        }
    }
}

/// Two values for one key of a partial object, or for one complete rule, are
/// OPA's `eval_conflict_error`: an error (so a deny), never one of the two.
/// `with` replaces the input for one expression, as in OPA (the VM does not
/// compile `with`; such a set runs on the interpreter and says so).
#[test]
fn conflicts_and_with_as_in_opa() {
    let config = PolicyConfig {
        decision: "t/allow".parse().unwrap(),
        ..PolicyConfig::default()
    };
    let pairs = Value::from_json_str(r#"{"pairs": [["a", 1], ["a", 2]], "vs": [1, 2]}"#).unwrap();
    for body in [
        "o[k] := v if { some p in input.pairs; k := p[0]; v := p[1] }\nallow if o.a == 1",
        "x := v if { some v in input.vs }\nallow if x == 1",
    ] {
        let text = format!("package t\n\n{body}\n");
        let set = PolicySet::from_sources(&[("t.rego", &text)], None, &config).unwrap();
        assert_eq!(
            answer(set.interpret(pairs.clone())),
            Err("evaluation error".into()),
            "{body}"
        );
        assert!(set.decide(pairs.clone()).is_err(), "{body}");
    }
    let text = "package t\n\ninner if input.x == 1\n\nallow if inner with input as {\"x\": 1}\n";
    let set = PolicySet::from_sources(&[("t.rego", text)], None, &config).unwrap();
    assert_eq!(set.engine_status().engine, "interpreter");
    let empty = Value::new_object();
    assert_eq!(answer(set.interpret(empty.clone())), Ok(Value::from(true)));
    assert!(set.decide(empty).unwrap().allowed());
}

fn zero_trust() -> Engines {
    let mut config = Config::default();
    config.policy.paths = vec![root().join("benches/load/zero-trust")];
    Engines::load("zero-trust", &config.policy)
}

#[test]
fn the_zero_trust_decision_is_the_same_on_both_engines() {
    let engines = zero_trust();
    let identity = |scopes: &[&str]| {
        Value::from(serde_json::json!({
            "provider": "bench", "issuer": "https://idp.bench", "subject": "user-1",
            "audience": ["api"], "scopes": scopes, "claims": {"sub": "user-1"}, "expires_at": 1
        }))
    };
    let allowed = input_for(
        request(
            "GET",
            "/api/orders/42",
            &[
                ("x-device-id", "dev-bench"),
                ("x-forwarded-for", "10.1.2.3"),
            ],
            "",
        ),
        Some(identity(&["orders:read"])),
        None,
    );
    let value = engines.compare("allowed", &allowed).unwrap();
    assert_eq!(value["allowed"], Value::from(true), "{value}");
    let denied = input_for(
        request("GET", "/api/orders/42", &[("x-device-id", "dev-bench")], ""),
        Some(identity(&["orders:write"])),
        None,
    );
    let value = engines.compare("denied", &denied).unwrap();
    assert_eq!(value["allowed"], Value::from(false), "{value}");
}

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"];

/// Segments the policies look for, and some they never do.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "api", "public", "admin", "orders", "products", "tenants", "acme", "globex",
            "reports", "hr", "payments", "audit", "projects", "people", "productpage", "v1",
            "health", "..", ".", "%2F", "%2e%2e", "index.html", "42", "2026",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9%._~-]{0,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => composed_path(),
        1 => prop::sample::select(vec![
            "/productpage", "/api/v1/products", "/public/index.html", "/api/orders/7",
            "/api/tenants/acme/projects", "/admin/audit/2026", "/api/payments/2026/03",
        ])
        .prop_map(str::to_owned),
    ]
}

fn composed_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..5),
        prop::option::of("[a-z]{1,4}=[a-z%0-9]{0,6}(&[a-z]{1,4}=[a-z0-9]{0,4}){0,2}"),
    )
        .prop_map(|(segments, query)| {
            let mut path = format!("/{}", segments.join("/"));
            if let Some(query) = query {
                path.push('?');
                path.push_str(&query);
            }
            path
        })
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.{a}.{b}.7")),
        any::<u8>().prop_map(|a| format!("192.168.{a}.20")),
        any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
        Just("::1".to_owned()),
        Just("not-an-ip".to_owned()),
    ]
}

fn principal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("spiffe://cluster.local/ns/shop/sa/frontend".to_owned()),
        Just("spiffe://cluster.local/ns/shop/sa/orders".to_owned()),
        Just("spiffe://cluster.local.evil/ns/shop/sa/frontend".to_owned()),
        Just("cluster.local/ns/shop/sa/frontend".to_owned()),
        "spiffe://[a-z.]{1,12}/ns/[a-z]{1,6}/sa/[a-z]{1,6}",
    ]
}

/// Claims of a verified token, as `input.identity` shows them.
fn identity() -> impl Strategy<Value = Option<serde_json::Value>> {
    let scopes = prop::collection::vec(
        prop::sample::select(vec![
            "orders:read",
            "orders:write",
            "payments:read",
            "products:read",
            "admin",
            "other",
        ]),
        0..4,
    );
    let roles = prop::collection::vec(
        prop::sample::select(vec!["viewer", "editor", "admin", "auditor", "guest"]),
        0..3,
    );
    let permissions = prop::collection::vec(
        prop::sample::select(vec![
            "GET:/api/orders/*",
            "post:/api/orders/**",
            "DELETE:/api/**",
            "GET:/public/*",
            "nonsense",
            ":/",
        ]),
        0..3,
    );
    let claims = (
        prop::sample::select(vec!["alice", "bob", "carol", "frank", "ivan"]),
        scopes,
        roles,
        permissions,
        prop::option::of(prop::sample::select(vec!["acme", "globex"])),
        prop::option::of(prop::sample::select(vec!["hr", "finance"])),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec!["pwd", "otp", "hwk", "mfa"]),
            0..3,
        )),
        prop::option::of(prop::sample::select(vec![
            "phr",
            "urn:arbiter:acr:password",
        ])),
        prop::option::of(-7200i64..60),
    )
        .prop_map(
            |(sub, scopes, roles, permissions, tenant, department, amr, acr, auth_time)| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let mut claims = serde_json::json!({
                    "sub": sub, "roles": roles, "permissions": permissions,
                    "scope": scopes.join(" "),
                });
                let set = |claims: &mut serde_json::Value, key: &str, value: serde_json::Value| {
                    claims[key] = value;
                };
                if let Some(tenant) = tenant {
                    set(&mut claims, "tenant", tenant.into());
                }
                if let Some(department) = department {
                    set(&mut claims, "department", department.into());
                }
                if let Some(amr) = amr {
                    set(&mut claims, "amr", amr.into());
                }
                if let Some(acr) = acr {
                    set(&mut claims, "acr", acr.into());
                }
                if let Some(offset) = auth_time {
                    set(&mut claims, "auth_time", (now + offset).into());
                }
                serde_json::json!({
                    "provider": "fixtures", "issuer": "https://fixtures.arbiter", "subject": sub,
                    "audience": ["api"], "scopes": scopes, "claims": claims, "expires_at": now + 600
                })
            },
        );
    prop::option::of(claims)
}

/// Device posture as `input.device` shows it: verified or not, compliant or not.
fn device() -> impl Strategy<Value = Option<serde_json::Value>> {
    prop::option::of(
        (
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["alice", "frank", "carol"]),
        )
            .prop_map(|(verified, compliant, user)| {
                serde_json::json!({
                    "id": "laptop-42", "verified": verified, "compliant": compliant,
                    "managed": true, "claims": {"user": user, "compliant": compliant},
                })
            }),
    )
}

fn generated_input() -> impl Strategy<Value = (String, CheckRequest, Value)> {
    (
        prop_oneof![2 => Just("GET"), 1 => prop::sample::select(METHODS.to_vec())],
        path(),
        ip(),
        principal(),
        prop::option::of(prop::sample::select(vec![
            "dev-bench",
            "dev-lost",
            "laptop-42",
        ])),
        prop::option::of(prop::sample::select(vec![
            "Basic YWxpY2U6cGFzc3dvcmQ=",
            "Basic Ym9iOnBhc3N3b3Jk",
            "Basic !!!",
            "Bearer x.y.z",
        ])),
        identity(),
        device(),
    )
        .prop_map(
            |(method, path, source, principal, device_id, authorization, identity, device)| {
                let mut headers: Vec<(&str, &str)> = vec![("x-forwarded-for", &source)];
                if let Some(id) = &device_id {
                    headers.push(("x-device-id", id));
                }
                if let Some(auth) = &authorization {
                    headers.push(("authorization", auth));
                }
                let mut check = request(method, &path, &headers, "");
                if let Some(peer) = check.attributes.as_mut().and_then(|a| a.source.as_mut()) {
                    peer.principal = principal.clone();
                }
                let what = format!("{method} {path} from {source} as {principal:?}");
                let input = input_for(
                    check.clone(),
                    identity.map(Value::from),
                    device.map(Value::from),
                );
                (what, check, input)
            },
        )
}

#[test]
fn generated_requests_decide_the_same_on_both_engines() {
    let mut config = Config::default();
    config.policy.paths = vec![root().join("policies")];
    let sets = [
        Engines::load("policies/", &config.policy),
        zero_trust(),
        Engines::from_sources(
            "v0 basic auth",
            &[("p.rego", include_str!("opa/v0_basic_auth.rego"))],
            None,
            &PolicyConfig {
                rego_version: RegoVersion::V0,
                ..PolicyConfig::default()
            },
        )
        .expect("v0 basic auth runs on the VM"),
    ];
    // A fixed seed: the same 1,024 requests on every run and machine.
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig {
            cases: 1024,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let answers = std::cell::RefCell::new(std::collections::BTreeSet::new());
    runner
        .run(&generated_input(), |(what, check, input)| {
            for engines in &sets {
                let answer = engines.compare(&what, &input);
                engines.compare_built(&what, &check, &input);
                answers
                    .borrow_mut()
                    .insert(format!("{}: {answer:?}", engines.name));
            }
            Ok(())
        })
        .unwrap();
    // Not one answer over and over: the inputs reach many rules of the
    // library (grants and denials) and both answers of basic auth.
    let answers = answers.into_inner();
    for (set, at_least) in [("policies/", 6), ("v0 basic auth", 2)] {
        let distinct = answers.iter().filter(|a| a.starts_with(set)).count();
        assert!(
            distinct >= at_least,
            "{set}: {distinct} answers: {answers:#?}"
        );
    }
}

/// Addresses and networks where Go's `net` (OPA) and Rust's readings part:
/// IPv4-mapped IPv6 on either side, mapped networks of prefix 96 or more,
/// host bits set, and strings that are not addresses at all.
const NETWORK_OPERANDS: [&str; 14] = [
    "10.0.0.0/8",
    "10.1.2.3",
    "::ffff:10.1.2.3",
    "::ffff:a01:203",
    "::ffff:11.1.2.3",
    "::ffff:10.0.0.0/104",
    "::ffff:0:0/96",
    "::/0",
    "0.0.0.0/0",
    "10.1.2.3/8",
    "2001:db8::/32",
    "2001:db8::1",
    "010.1.2.3",
    "not-an-address",
];

/// `net.cidr_contains` runs on the VM as one of its own built-ins, with
/// Arbiter's (OPA's) semantics; the other network built-ins through host
/// calls. Every pair of the operands above, from the input, from data and
/// as literals, decides the same on both engines, and as OPA does.
#[test]
fn network_built_ins_decide_the_same_on_both_engines() {
    let config = PolicyConfig {
        decision: "t/allow".parse().unwrap(),
        ..PolicyConfig::default()
    };
    let policy = r#"package t

default contains := "undefined"

contains := net.cidr_contains(input.cidr, input.candidate)

in_data := [c | some c in data.networks; net.cidr_contains(c, input.candidate)]

default intersects := "undefined"

intersects := net.cidr_intersects(input.cidr, input.candidate)

default matches := "undefined"

matches := net.cidr_contains_matches([input.cidr], [input.candidate])

literal := [
	net.cidr_contains("10.0.0.0/8", "::ffff:10.1.2.3"),
	net.cidr_contains("::ffff:10.0.0.0/104", "10.1.2.3"),
	net.cidr_contains("::/0", "10.1.2.3"),
]

allow := {
	"contains": contains,
	"in_data": in_data,
	"intersects": intersects,
	"matches": matches,
	"literal": literal,
}
"#;
    let data = serde_json::json!({ "networks": NETWORK_OPERANDS }).to_string();
    let engines = Engines::from_sources("network", &[("t.rego", policy)], Some(&data), &config)
        .expect("the network built-ins run on the VM");
    for cidr in NETWORK_OPERANDS {
        for candidate in NETWORK_OPERANDS {
            let input = Value::from(serde_json::json!({ "cidr": cidr, "candidate": candidate }));
            let what = format!("{cidr} / {candidate}");
            let answer = engines.compare(&what, &input).unwrap();
            assert_eq!(
                answer["literal"],
                Value::from(serde_json::json!([true, true, false])),
                "{what}"
            );
            // OPA's answers where Go and Rust read an address differently.
            let opa = match (cidr, candidate) {
                ("10.0.0.0/8", "::ffff:10.1.2.3" | "::ffff:a01:203") => Some(true),
                ("::ffff:10.0.0.0/104", "10.1.2.3") => Some(true),
                ("::/0", "10.1.2.3") => Some(false),
                ("10.0.0.0/8", "010.1.2.3") => None,
                _ => continue,
            };
            let want = opa.map_or(Value::from("undefined"), Value::from);
            assert_eq!(answer["contains"], want, "{what}: not OPA's answer");
        }
    }
}
