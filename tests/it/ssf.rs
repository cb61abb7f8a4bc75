//! The IdP's session-revoked events (SSF 1.0 push delivery, CAEP events)
//! against the real server: a real JWKS endpoint for the users' tokens,
//! another for the transmitter's keys, and SETs posted over HTTP.

use crate::common::idp::Idp;
use crate::common::*;
use arbiter::identity::test_keys::{TestKey, jwks};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

const POLICY: &str =
    "package envoy.authz\n\ndefault allow := false\n\nallow if input.identity.subject\n";

struct Setup {
    arbiter: TestArbiter,
    users: Idp,
    user_key: TestKey,
    transmitter: Idp,
    transmitter_key: TestKey,
    http: reqwest::Client,
}

impl Setup {
    async fn start() -> Self {
        let user_key = TestKey::generate("u1", Algorithm::ES256).unwrap();
        let transmitter_key = TestKey::generate("t1", Algorithm::ES256).unwrap();
        let users = Idp::start(jwks(&[&user_key])).await;
        let transmitter = Idp::start(jwks(&[&transmitter_key])).await;
        let toml = format!(
            "[http]\naddr = \"127.0.0.1:0\"\n\
             [[identity.jwt]]\nname = \"idp\"\nissuer = \"{}\"\naudiences = [\"api\"]\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\n\
             [identity.ssf]\nissuer = \"{}\"\naudience = \"https://arbiter.example\"\njwks_uri = \"{}\"\nalgorithms = [\"ES256\"]\n",
            users.issuer(),
            users.jwks_url(),
            transmitter.issuer(),
            transmitter.jwks_url()
        );
        let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
        Self {
            arbiter,
            users,
            user_key,
            transmitter,
            transmitter_key,
            http: reqwest::Client::new(),
        }
    }

    fn token(&self, sub: &str, iat: u64, sid: &str) -> String {
        self.user_key
            .sign(&json!({"iss": self.users.issuer(), "aud": "api", "sub": sub, "sid": sid, "iat": iat, "exp": now() + 600}))
            .unwrap()
    }

    /// The deny reason, or `None` when allowed.
    async fn decide(&self, token: &str) -> Option<String> {
        self.arbiter.bearer_reason(token).await
    }

    fn set(&self, key: &TestKey, audience: &str, events: &Value) -> String {
        key.sign(&json!({
            "iss": self.transmitter.issuer(),
            "aud": audience,
            "iat": now(),
            "jti": format!("set-{}", now()),
            "events": events,
        }))
        .unwrap()
    }

    async fn push(&self, set: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.arbiter.http_url("/ssf/events"))
            .header("content-type", "application/secevent+jwt")
            .body(set.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn session_revoked(subject: Value, at: u64) -> Value {
    json!({ SESSION_REVOKED: {"subject": subject, "event_timestamp": at} })
}

#[tokio::test]
async fn a_session_revoked_event_takes_effect_at_once_and_a_forged_one_changes_nothing() {
    let s = Setup::start().await;
    let issued = now() - 10;
    let alice = s.token("alice", issued, "s-1");
    let bob = s.token("bob", issued, "s-2");
    assert_eq!(s.decide(&alice).await, None);
    assert_eq!(s.decide(&bob).await, None);

    // A forged SET (another key), one for another receiver, one with an
    // unknown event type: each refused with RFC 8935's error, nothing changes.
    let forger = TestKey::generate("t1", Algorithm::ES256).unwrap();
    let bob_subject = json!({"format": "iss_sub", "iss": s.users.issuer(), "sub": "bob"});
    for (set, err) in [
        (
            s.set(
                &forger,
                "https://arbiter.example",
                &session_revoked(bob_subject.clone(), now()),
            ),
            "invalid_key",
        ),
        (
            s.set(
                &s.transmitter_key,
                "https://other.example",
                &session_revoked(bob_subject.clone(), now()),
            ),
            "invalid_audience",
        ),
        (
            s.set(
                &s.transmitter_key,
                "https://arbiter.example",
                &json!({"https://example.com/event-type/unknown": {"subject": bob_subject}}),
            ),
            "invalid_request",
        ),
    ] {
        let (status, answer) = s.push(&set).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["err"], err, "{answer}");
    }
    assert_eq!(s.decide(&bob).await, None, "a refused SET revoked bob");

    // The real one: alice's tokens issued before the event are refused at once.
    let subject = json!({"format": "iss_sub", "iss": s.users.issuer(), "sub": "alice"});
    let (status, answer) = s
        .push(&s.set(
            &s.transmitter_key,
            "https://arbiter.example",
            &session_revoked(subject, now()),
        ))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(s.decide(&alice).await.as_deref(), Some("token_revoked"));
    assert_eq!(s.decide(&bob).await, None);
    let later = s.token("alice", now() + 5, "s-3");
    assert_eq!(
        s.decide(&later).await,
        None,
        "a token issued after the event passes"
    );

    // A subject carrying a session revokes that session only.
    let session = json!({"format": "opaque", "id": "bob", "sid": "s-2"});
    let (status, _) = s
        .push(&s.set(
            &s.transmitter_key,
            "https://arbiter.example",
            &session_revoked(session, now()),
        ))
        .await;
    assert_eq!(status, 202);
    assert_eq!(s.decide(&bob).await.as_deref(), Some("token_revoked"));
    assert_eq!(s.decide(&s.token("bob", issued, "s-4")).await, None);

    // A subject named by email revokes the tokens carrying that email.
    let carol = s
        .user_key
        .sign(&json!({"iss": s.users.issuer(), "aud": "api", "sub": "c-123", "email": "carol@example.com", "iat": issued, "exp": now() + 600}))
        .unwrap();
    assert_eq!(s.decide(&carol).await, None);
    let by_email = json!({"format": "email", "email": "carol@example.com"});
    let (status, _) = s
        .push(&s.set(
            &s.transmitter_key,
            "https://arbiter.example",
            &session_revoked(by_email, now()),
        ))
        .await;
    assert_eq!(status, 202);
    assert_eq!(s.decide(&carol).await.as_deref(), Some("token_revoked"));

    let metrics = s.arbiter.metrics().await;
    assert_eq!(
        metric(&metrics, "arbiter_ssf_events_total{result=\"refused\"}"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "arbiter_ssf_events_total{result=\"applied\"}"),
        Some(3.0),
        "{metrics}"
    );
    s.arbiter.running.shutdown().await;
}
