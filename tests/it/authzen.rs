//! The OpenID AuthZEN Authorization API 1.0 against the real server running
//! `examples/authzen-todo/`: every decision vector of the AuthZEN interop
//! "Todo" scenario (the openid/authzen interop tests for the Authorization
//! API 1.0), one at a time and batched, plus the API's own rules.

use std::path::PathBuf;

use arbiter::identity::test_keys::{TestKey, jwks};
use arbiter::{Config, Running};
use serde_json::{Value, json};

/// The interop users: email (the AuthZEN subject ID) and opaque user ID.
const USERS: [(&str, &str); 5] = [
    (
        "rick@the-citadel.com",
        "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    ),
    (
        "morty@the-citadel.com",
        "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    ),
    (
        "summer@the-smiths.com",
        "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    ),
    (
        "beth@the-smiths.com",
        "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    ),
    (
        "jerry@the-smiths.com",
        "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs",
    ),
];

/// Per user, in the vectors' order: read beth, read self, read todos,
/// create, update rick's todo, update own todo, delete rick's, delete own.
/// (For rick, "own" is the todo of morty, as in the vectors.)
const EXPECTED: [[bool; 8]; 5] = [
    [true, true, true, true, true, true, true, true],
    [true, true, true, true, false, true, false, true],
    [true, true, true, true, false, true, false, true],
    [true, true, true, false, false, false, false, false],
    [true, true, true, false, false, false, false, false],
];

/// The 40 interop vectors: (request, expected decision).
fn vectors() -> Vec<(Value, bool)> {
    let mut out = Vec::new();
    for ((email, pid), expected) in USERS.iter().zip(EXPECTED) {
        let subject = json!({"type": "user", "id": email, "identity": pid});
        let own = if *email == "rick@the-citadel.com" {
            "morty@the-citadel.com"
        } else {
            email
        };
        let todo = |owner: &str| json!({"type": "todo", "id": "7240d0db-8ff0-41ec-98b2-34a096273b92", "ownerID": owner});
        let requests = [
            (
                "can_read_user",
                json!({"type": "user", "id": "beth@the-smiths.com", "userID": "beth@the-smiths.com"}),
            ),
            (
                "can_read_user",
                json!({"type": "user", "id": email, "userID": pid}),
            ),
            ("can_read_todos", json!({"type": "todo", "id": "todo-1"})),
            ("can_create_todo", json!({"type": "todo", "id": "todo-1"})),
            ("can_update_todo", todo("rick@the-citadel.com")),
            ("can_update_todo", todo(own)),
            ("can_delete_todo", todo("rick@the-citadel.com")),
            ("can_delete_todo", todo(own)),
        ];
        for ((action, resource), want) in requests.into_iter().zip(expected) {
            out.push((
                json!({"subject": subject, "action": {"name": action}, "resource": resource}),
                want,
            ));
        }
    }
    out
}

struct Todo {
    running: Running,
    http: reqwest::Client,
}

impl Todo {
    /// The example as it is, on free ports, with `extra` TOML merged in.
    async fn start(extra: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/authzen-todo");
        let text = std::fs::read_to_string(dir.join("arbiter.toml")).unwrap();
        let mut table: toml::Table = text.parse().unwrap();
        let extra: toml::Table = extra.parse().unwrap();
        for (key, value) in extra {
            table.insert(key, value);
        }
        for (section, key) in [("server", "grpc_addr"), ("admin", "addr"), ("http", "addr")] {
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap()
                .insert(key.into(), toml::Value::String("127.0.0.1:0".into()));
        }
        let config =
            Config::from_toml(&table.to_string(), &dir.join("arbiter.toml"), &dir).unwrap();
        Self {
            running: arbiter::start(&config).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr.unwrap())
    }

    /// Decisions made so far, from `/metrics`.
    async fn metrics_decisions(&self) -> f64 {
        let url = format!("http://{}/metrics", self.running.admin_addr);
        let text = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        arbiter::metrics::sum_of(&text, "arbiter_decisions_total").unwrap_or(0.0)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }
}

#[tokio::test]
async fn the_todo_example_passes_every_interop_vector_one_at_a_time() {
    let todo = Todo::start("").await;
    for (request, want) in vectors() {
        let (status, answer) = todo.post("/access/v1/evaluation", &request).await;
        assert_eq!(status, 200, "{request}: {answer}");
        assert_eq!(answer["decision"], want, "{request}: {answer}");
    }
    todo.running.shutdown().await;
}

#[tokio::test]
async fn the_todo_example_passes_every_interop_vector_batched() {
    let todo = Todo::start("").await;
    let vectors = vectors();
    let items: Vec<Value> = vectors.iter().map(|(request, _)| request.clone()).collect();
    let (status, answer) = todo
        .post("/access/v1/evaluations", &json!({"evaluations": items}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["evaluations"].as_array().unwrap();
    assert_eq!(results.len(), vectors.len());
    for ((request, want), got) in vectors.iter().zip(results) {
        assert_eq!(got["decision"], *want, "{request}: {got}");
    }
    // Request-level members are defaults for the items.
    let (_, answer) = todo
        .post(
            "/access/v1/evaluations",
            &json!({
                "subject": {"type": "user", "id": "morty@the-citadel.com"},
                "action": {"name": "can_update_todo"},
                "evaluations": [
                    {"resource": {"type": "todo", "id": "1", "ownerID": "morty@the-citadel.com"}},
                    {"resource": {"type": "todo", "id": "2", "ownerID": "rick@the-citadel.com"}},
                    {"action": {"name": "can_read_todos"}, "resource": {"type": "todo", "id": "3"}},
                ],
            }),
        )
        .await;
    let decisions: Vec<&Value> = answer["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["decision"])
        .collect();
    assert_eq!(
        decisions,
        [&json!(true), &json!(false), &json!(true)],
        "{answer}"
    );
    todo.running.shutdown().await;
}

#[tokio::test]
async fn evaluation_semantics_stop_where_asked() {
    let todo = Todo::start("").await;
    let item = |owner: &str| json!({"resource": {"type": "todo", "id": "t", "ownerID": owner}});
    let batch = |semantic: &str| {
        json!({
            "subject": {"type": "user", "id": "summer@the-smiths.com"},
            "action": {"name": "can_delete_todo"},
            "options": {"evaluations_semantic": semantic},
            "evaluations": [item("summer@the-smiths.com"), item("rick@the-citadel.com"), item("summer@the-smiths.com")],
        })
    };
    for (semantic, want) in [
        ("execute_all", vec![true, false, true]),
        ("deny_on_first_deny", vec![true, false]),
        ("permit_on_first_permit", vec![true]),
    ] {
        let (status, answer) = todo.post("/access/v1/evaluations", &batch(semantic)).await;
        assert_eq!(status, 200, "{answer}");
        let got: Vec<bool> = answer["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["decision"].as_bool().unwrap())
            .collect();
        assert_eq!(got, want, "{semantic}: {answer}");
    }
    let (status, _) = todo
        .post("/access/v1/evaluations", &batch("most_of_them"))
        .await;
    assert_eq!(status, 400);
    todo.running.shutdown().await;
}

/// A decision rule that fails (two values) or is not a decision is
/// `decision: false` with the reason, never a permit.
#[tokio::test]
async fn policy_errors_are_denies_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package authzen.todo\n\ndecision := true if input.action.name == \"conflict\"\n\ndecision := false if input.action.name == \"conflict\"\n\ndecision := \"yes\" if input.action.name == \"odd\"\n",
    )
    .unwrap();
    let extra = format!(
        "[policy]\npaths = [\"{}\"]\ndecision = \"authzen/todo/decision\"\n",
        dir.path().display()
    );
    let todo = Todo::start(&extra).await;
    for (action, reason) in [
        ("conflict", "policy_error"),
        ("odd", "invalid_result"),
        ("unknown", "policy_undefined"),
    ] {
        let request = json!({
            "subject": {"type": "user", "id": "rick@the-citadel.com"},
            "action": {"name": action},
            "resource": {"type": "todo", "id": "1"},
        });
        let (status, answer) = todo.post("/access/v1/evaluation", &request).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer,
            json!({"decision": false, "context": {"reason": reason}}),
            "{action}"
        );
    }
    todo.running.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_are_400_and_the_request_id_is_echoed() {
    let todo = Todo::start("").await;
    let complete = json!({
        "subject": {"type": "user", "id": "rick@the-citadel.com"},
        "action": {"name": "can_read_todos"},
        "resource": {"type": "todo", "id": "todo-1"},
    });
    for (member, field) in [
        ("subject", "type"),
        ("subject", "id"),
        ("action", "name"),
        ("resource", "type"),
        ("resource", "id"),
    ] {
        let mut request = complete.clone();
        request[member].as_object_mut().unwrap().remove(field);
        let (status, answer) = todo.post("/access/v1/evaluation", &request).await;
        assert_eq!(status, 400, "without {member}.{field}: {answer}");
    }
    let response = todo
        .http
        .post(todo.url("/access/v1/evaluation"))
        .header("x-request-id", "req-42")
        .body(complete.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(response.status(), 200);
    let broken = todo
        .http
        .post(todo.url("/access/v1/evaluation"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    // A batch past the limit is refused whole, before any decision.
    let decided = todo.metrics_decisions().await;
    let items: Vec<Value> = (0..=arbiter::server::authzen::MAX_BATCH)
        .map(|_| json!({}))
        .collect();
    let mut batch = complete.clone();
    batch["evaluations"] = Value::Array(items);
    let (status, answer) = todo.post("/access/v1/evaluations", &batch).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(todo.metrics_decisions().await, decided);
    let configuration: Value = serde_json::from_str(
        &todo
            .http
            .get(todo.url("/.well-known/authzen-configuration"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        configuration["access_evaluation_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/access/v1/evaluation"),
        "{configuration}"
    );
    todo.running.shutdown().await;
}

/// The todo example with `policy` as its decision and a PEP token
/// provider (`pep`, ES256) with `provider_extra` TOML, and a token of it.
async fn with_pep_provider(
    policy: &str,
    provider_extra: &str,
) -> (Todo, String, tempfile::TempDir) {
    let key = TestKey::generate("pep", jsonwebtoken::Algorithm::ES256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, jwks(&[&key]).to_string()).unwrap();
    let policy_dir = dir.path().join("policies");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("p.rego"), policy).unwrap();
    let extra = format!(
        "[policy]\npaths = [\"{}\"]\ndecision = \"authzen/todo/decision\"\n[[identity.jwt]]\nname = \"pep\"\nissuer = \"https://idp.test\"\naudiences = [\"pdp\"]\njwks_file = \"{}\"\nalgorithms = [\"ES256\"]\n{provider_extra}",
        policy_dir.display(),
        keys.display()
    );
    let todo = Todo::start(&extra).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key
        .sign(&json!({"iss": "https://idp.test", "aud": "pdp", "sub": "todo-app", "iat": now, "exp": now + 300}))
        .unwrap();
    (todo, token, dir)
}

/// `token` with its signature's last character changed.
fn forged(token: &str) -> String {
    let mut forged = token.to_owned();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    forged
}

/// With `on_invalid = "pass_to_policy"`, an invalid PEP token is no 401:
/// the policy sees `identity: null` and the reason in `identity_error`.
#[tokio::test]
async fn an_invalid_pep_token_passed_to_the_policy_comes_with_its_error() {
    let (todo, token, _dir) = with_pep_provider(
        "package authzen.todo\n\ndecision := {\"decision\": false, \"context\": {\"identity\": input.identity, \"error\": object.get(input, \"identity_error\", \"none\")}}\n",
        "on_invalid = \"pass_to_policy\"\n",
    )
    .await;
    let request = json!({
        "subject": {"type": "user", "id": "rick@the-citadel.com"},
        "action": {"name": "can_read_todos"},
        "resource": {"type": "todo", "id": "todo-1"},
    });
    let ask = |bearer: String| {
        todo.http
            .post(todo.url("/access/v1/evaluation"))
            .header("authorization", format!("Bearer {bearer}"))
            .body(request.to_string())
            .send()
    };
    let refused = ask(forged(&token)).await.unwrap();
    assert_eq!(refused.status(), 200);
    let answer: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(answer["context"]["identity"], Value::Null, "{answer}");
    // Which one depends on the character changed (base64's last one).
    assert!(
        ["token_signature_invalid", "token_malformed"]
            .contains(&answer["context"]["error"].as_str().unwrap_or_default()),
        "{answer}"
    );
    let valid: Value =
        serde_json::from_str(&ask(token.clone()).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(valid["context"]["error"], "none", "{valid}");
    // The caller cannot say it itself, in the request or in a batch item.
    let mut claimed = request.clone();
    claimed["identity_error"] = json!("token_expired");
    claimed["evaluations"] = json!([{"identity_error": "token_expired"}]);
    let (status, answer) = todo.post("/access/v1/evaluations", &claimed).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["evaluations"][0]["context"]["error"], "none",
        "{answer}"
    );
    let (_, answer) = todo.post("/access/v1/evaluation", &claimed).await;
    assert_eq!(answer["context"]["error"], "none", "{answer}");
    todo.running.shutdown().await;
}

/// The PEP's own token, verified by `[[identity.jwt]]`, is in the input as
/// `identity`; an invalid one is a 401 and no decision.
#[tokio::test]
async fn the_callers_token_is_verified_and_given_to_the_policy() {
    let (todo, token, _dir) = with_pep_provider(
        "package authzen.todo\n\ndefault decision := false\n\ndecision := {\"decision\": true, \"context\": {\"pep\": input.identity.subject}} if input.identity.subject == \"todo-app\"\n",
        "",
    )
    .await;
    let request = json!({
        "subject": {"type": "user", "id": "rick@the-citadel.com"},
        "action": {"name": "can_read_todos"},
        "resource": {"type": "todo", "id": "todo-1"},
    });
    let ask = |bearer: Option<String>| {
        let mut call = todo
            .http
            .post(todo.url("/access/v1/evaluation"))
            .body(request.to_string());
        if let Some(token) = bearer {
            call = call.header("authorization", format!("Bearer {token}"));
        }
        call.send()
    };
    let answer: Value = serde_json::from_str(
        &ask(Some(token.clone()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        answer,
        json!({"decision": true, "context": {"pep": "todo-app"}})
    );
    let anonymous: Value =
        serde_json::from_str(&ask(None).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(anonymous["decision"], false, "{anonymous}");
    let refused = ask(Some(forged(&token))).await.unwrap();
    assert_eq!(refused.status(), 401);
    todo.running.shutdown().await;
}
