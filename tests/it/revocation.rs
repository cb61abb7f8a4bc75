//! Tokens revoked before they expire, against the real server and a real
//! JWKS endpoint on 127.0.0.1: by token ID, by session and by subject, from
//! the revocation file (reloaded while serving) and from the policy data.

use crate::common::idp::Idp;
use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const POLICY: &str = r#"
package envoy.authz

default allow := false

allow if input.identity.subject
"#;

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

struct Setup {
    arbiter: TestArbiter,
    key: TestKey,
    idp: Idp,
    list: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(list: &Value, data: Option<&Value>) -> Self {
        let key = TestKey::generate("k1", Algorithm::ES256).unwrap();
        let idp = Idp::start(jwks(&[&key])).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revoked.json");
        std::fs::write(&file, list.to_string()).unwrap();
        let toml = format!(
            "[policy]\nreload_interval = \"50ms\"\n[identity.revocation]\nfile = \"{}\"\n\
             [[identity.jwt]]\nname = \"idp\"\nissuer = \"{}\"\naudiences = [\"api\"]\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\n",
            file.display(),
            idp.issuer(),
            idp.jwks_url()
        );
        let data = data.map(Value::to_string);
        let mut files = vec![("p.rego", POLICY)];
        if let Some(data) = &data {
            files.push(("data.json", data));
        }
        let arbiter = TestArbiter::start(&files, &toml).await;
        Self {
            arbiter,
            key,
            idp,
            list: file,
            _dir: dir,
        }
    }

    fn token(&self, claims: &Value) -> String {
        let mut all = json!({"iss": self.idp.issuer(), "aud": "api", "sub": "alice", "iat": now(), "exp": now() + 600});
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        self.key.sign(&all).unwrap()
    }

    /// The deny reason, or `None` when allowed.
    async fn decide(&self, token: &str) -> Option<String> {
        self.arbiter.bearer_reason(token).await
    }
}

#[tokio::test]
async fn a_cached_token_revoked_by_id_is_refused_within_two_seconds_and_others_pass() {
    let s = Setup::start(&json!({"tokens": []}), None).await;
    let revoked = s.token(&json!({"jti": "t-1"}));
    let other = s.token(&json!({"jti": "t-2"}));
    assert_eq!(s.decide(&revoked).await, None);
    assert_eq!(
        s.decide(&revoked).await,
        None,
        "now in the verified-token cache"
    );
    let changed = std::time::Instant::now();
    std::fs::write(&s.list, json!({"tokens": ["t-1"]}).to_string()).unwrap();
    let refused = poll_until(|| async { s.decide(&revoked).await.is_some() }).await;
    assert!(refused, "the revoked token kept passing");
    assert!(
        changed.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        changed.elapsed()
    );
    assert_eq!(s.decide(&revoked).await.as_deref(), Some("token_revoked"));
    assert_eq!(
        s.decide(&other).await,
        None,
        "another token must still pass"
    );
    let metrics = s.arbiter.metrics().await;
    assert!(
        metric(&metrics, "arbiter_tokens_revoked_total").unwrap() >= 2.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "arbiter_revocation_entries"), Some(1.0));

    // A broken list is refused, reported, and the last good one stays.
    std::fs::write(&s.list, "{\"tokens\": [\"t-1\"").unwrap();
    wait_for_metric(
        &s.arbiter.running.admin_addr.to_string(),
        "arbiter_revocation_reload_failures_total",
        1.0,
    )
    .await;
    assert_eq!(s.decide(&revoked).await.as_deref(), Some("token_revoked"));
    assert_eq!(s.decide(&other).await, None);
    let readyz = s.arbiter.readyz().await;
    assert!(
        readyz["revocation"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked.json:1:")),
        "{readyz}"
    );
    s.arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_subject_revoked_as_of_a_time_refuses_older_tokens_and_accepts_newer_ones() {
    let cutoff = now() - 60;
    let s = Setup::start(&json!({"subjects": {"alice": rfc3339(cutoff)}}), None).await;
    let older = s.token(&json!({"iat": cutoff - 300}));
    let newer = s.token(&json!({"iat": cutoff + 30}));
    let no_iat = {
        let mut claims =
            json!({"iss": s.idp.issuer(), "aud": "api", "sub": "alice", "exp": now() + 600});
        claims.as_object_mut().unwrap().remove("iat");
        s.key.sign(&claims).unwrap()
    };
    let bob = s.token(&json!({"sub": "bob", "iat": cutoff - 300}));
    assert_eq!(s.decide(&older).await.as_deref(), Some("token_revoked"));
    assert_eq!(s.decide(&newer).await, None);
    assert_eq!(
        s.decide(&no_iat).await.as_deref(),
        Some("token_revoked"),
        "a token that cannot show it is newer is revoked"
    );
    assert_eq!(s.decide(&bob).await, None);
    s.arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_revoked_session_refuses_its_tokens() {
    let s = Setup::start(&json!({"sessions": ["s-9"]}), None).await;
    assert_eq!(
        s.decide(&s.token(&json!({"sid": "s-9"}))).await.as_deref(),
        Some("token_revoked")
    );
    assert_eq!(s.decide(&s.token(&json!({"sid": "s-10"}))).await, None);
    s.arbiter.running.shutdown().await;
}

/// The same list shape in the policy data (for lists shipped in a bundle)
/// revokes too, beside the file's.
#[tokio::test]
async fn a_list_in_the_policy_data_revokes_too() {
    let data = json!({"arbiter": {"revocation": {"tokens": ["from-data"]}}});
    let s = Setup::start(&json!({"tokens": ["from-file"]}), Some(&data)).await;
    for (jti, want) in [
        ("from-data", Some("token_revoked")),
        ("from-file", Some("token_revoked")),
        ("neither", None),
    ] {
        assert_eq!(
            s.decide(&s.token(&json!({"jti": jti}))).await.as_deref(),
            want,
            "{jti}"
        );
    }
    let readyz = s.arbiter.readyz().await;
    assert_eq!(readyz["revocation"]["from_bundle"], 1, "{readyz}");
    s.arbiter.running.shutdown().await;
}

#[tokio::test]
async fn a_broken_list_at_start_stops_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked.json");
    std::fs::write(&file, "{\n  \"tokens\": [1]\n}").unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.rego"), POLICY).unwrap();
    let toml = test_config_toml(&format!(
        "[identity.revocation]\nfile = \"{}\"\n",
        file.display()
    ));
    let config = arbiter::Config::from_toml(&toml, &dir.path().join("a.toml"), dir.path()).unwrap();
    let error = arbiter::start(&config)
        .await
        .err()
        .expect("start must fail");
    assert!(error.to_string().contains("revoked.json:2:"), "{error}");
}
