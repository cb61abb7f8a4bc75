//! Built-ins that regorus lacks and OPA policies use, registered with OPA's
//! names and semantics: `io.jwt.decode`, `io.jwt.decode_verify`, the
//! `io.jwt.verify_*` family (so OPA Envoy policies that verify tokens in
//! Rego run unchanged) and `net.cidr_intersects`, `net.cidr_merge`,
//! `net.cidr_contains_matches`, plus `net.cidr_contains`, which replaces
//! regorus's own so that IPv4-mapped IPv6 addresses match as in OPA.
//!
//! As in OPA, a malformed token makes `io.jwt.decode` fail (undefined under
//! OPA's non-strict built-in errors), while the verify built-ins answer
//! `false` for any token that does not verify.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use regorus::{Engine, Value};

type BuiltinFn = fn(Vec<Value>) -> anyhow::Result<Value>;

/// Every built-in here: its Rego name, how many arguments it takes, and
/// the function. The interpreter gets them as extensions; the bytecode VM
/// calls those of [`VM_NATIVE`] as its own and suspends on the others
/// (HostAwait), which [`call`] answers.
pub const BUILTINS: [(&str, usize, BuiltinFn); 19] = [
    ("io.jwt.decode", 1, decode),
    ("io.jwt.decode_verify", 2, decode_verify),
    ("io.jwt.verify_rs256", 2, |a| {
        verify_one(a, Algorithm::RS256)
    }),
    ("io.jwt.verify_rs384", 2, |a| {
        verify_one(a, Algorithm::RS384)
    }),
    ("io.jwt.verify_rs512", 2, |a| {
        verify_one(a, Algorithm::RS512)
    }),
    ("io.jwt.verify_ps256", 2, |a| {
        verify_one(a, Algorithm::PS256)
    }),
    ("io.jwt.verify_ps384", 2, |a| {
        verify_one(a, Algorithm::PS384)
    }),
    ("io.jwt.verify_ps512", 2, |a| {
        verify_one(a, Algorithm::PS512)
    }),
    ("io.jwt.verify_es256", 2, |a| {
        verify_one(a, Algorithm::ES256)
    }),
    ("io.jwt.verify_es384", 2, |a| {
        verify_one(a, Algorithm::ES384)
    }),
    ("io.jwt.verify_eddsa", 2, |a| {
        verify_one(a, Algorithm::EdDSA)
    }),
    ("io.jwt.verify_hs256", 2, |a| {
        verify_one(a, Algorithm::HS256)
    }),
    ("io.jwt.verify_hs384", 2, |a| {
        verify_one(a, Algorithm::HS384)
    }),
    ("io.jwt.verify_hs512", 2, |a| {
        verify_one(a, Algorithm::HS512)
    }),
    ("io.jwt.verify_es512", 2, |_| Ok(Value::from(false))),
    ("net.cidr_contains", 2, super::net::cidr_contains),
    ("net.cidr_intersects", 2, super::net::cidr_intersects),
    ("net.cidr_merge", 1, super::net::cidr_merge),
    (
        "net.cidr_contains_matches",
        2,
        super::net::cidr_contains_matches,
    ),
];

/// A built-in as regorus's bytecode VM calls it.
pub type VmBuiltin = regorus::unstable::BuiltinFcn;

/// The built-ins here that the VM's compiler also knows by name. It
/// compiles their calls as calls of its own built-in, which need no
/// suspension, and [`vm_native`] gives the VM Arbiter's function for them.
pub const VM_NATIVE: [(&str, VmBuiltin); 1] = [("net.cidr_contains", (vm_cidr_contains, 2))];

/// Arbiter's function for the VM built-in `name`, if it replaces the VM's own.
pub fn vm_native(name: &str) -> Option<VmBuiltin> {
    VM_NATIVE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, builtin)| *builtin)
}

fn vm_cidr_contains(
    _: &regorus::unstable::Span,
    _: &[regorus::unstable::Ref<regorus::unstable::Expr>],
    args: &[Value],
    _strict: bool,
) -> anyhow::Result<Value> {
    Ok(super::net::cidr_contains(args.to_vec()).unwrap_or(Value::Undefined))
}

/// Registers every built-in here on `engine`.
///
/// # Errors
/// A name is already registered.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    for (name, arity, f) in BUILTINS {
        let arity = u8::try_from(arity)?;
        engine.add_extension(name.into(), arity, lenient(f))?;
    }
    Ok(())
}

/// Calls the built-in `name` with OPA's non-strict semantics: an error (or
/// an unknown name, or the wrong number of arguments) is `Undefined`.
pub fn call(name: &str, args: Vec<Value>) -> Value {
    BUILTINS
        .iter()
        .find(|(n, arity, _)| *n == name && *arity == args.len())
        .and_then(|(_, _, f)| f(args).ok())
        .unwrap_or(Value::Undefined)
}

/// regorus fails the whole evaluation when an extension errors; OPA makes
/// the built-in call undefined. This gives OPA's behaviour.
fn lenient(f: BuiltinFn) -> Box<dyn regorus::Extension> {
    Box::new(move |args: Vec<Value>| Ok(f(args).unwrap_or(Value::Undefined)))
}

fn string_arg<'a>(args: &'a [Value], i: usize, name: &str) -> anyhow::Result<&'a str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        _ => bail!("{name}: operand {} must be a string", i + 1),
    }
}

struct Parts {
    header: serde_json::Value,
    payload: serde_json::Value,
    signature: Vec<u8>,
}

fn split(token: &str) -> anyhow::Result<Parts> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("encoded JWT must have 3 sections");
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value = serde_json::from_slice(
        &b64.decode(h.trim_end_matches('='))
            .context("JWT header is not base64url")?,
    )
    .context("JWT header is not JSON")?;
    let payload: serde_json::Value = serde_json::from_slice(
        &b64.decode(p.trim_end_matches('='))
            .context("JWT payload is not base64url")?,
    )
    .context("JWT payload is not JSON")?;
    if !header.is_object() || !payload.is_object() {
        bail!("JWT header and payload must be objects");
    }
    let signature = b64
        .decode(s.trim_end_matches('='))
        .context("JWT signature is not base64url")?;
    Ok(Parts {
        header,
        payload,
        signature,
    })
}

/// `io.jwt.decode(token)`: `[header, payload, signature_hex]`, unverified.
fn decode(args: Vec<Value>) -> anyhow::Result<Value> {
    let parts = split(string_arg(&args, 0, "io.jwt.decode")?)?;
    let hex: String = parts.signature.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Value::from(vec![
        Value::from(parts.header),
        Value::from(parts.payload),
        Value::from(hex),
    ]))
}

/// `io.jwt.verify_*(token, certificate_or_secret)`: whether the signature
/// verifies with the given key (PEM certificate or public key, or a JWKS).
fn verify_one(args: Vec<Value>, alg: Algorithm) -> anyhow::Result<Value> {
    let token = string_arg(&args, 0, "io.jwt.verify")?;
    let key = string_arg(&args, 1, "io.jwt.verify")?;
    let Ok(parts) = split(token) else {
        return Ok(Value::from(false));
    };
    if parts.header.get("alg").and_then(|a| a.as_str()) != Some(alg_name(alg)) {
        return Ok(Value::from(false));
    }
    let keys = if is_hmac(alg) {
        vec![DecodingKey::from_secret(key.as_bytes())]
    } else {
        public_keys(key, alg, parts.header.get("kid").and_then(|k| k.as_str()))
    };
    Ok(Value::from(
        keys.iter().any(|k| signature_ok(token, k, alg)),
    ))
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "",
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Keys from a PEM certificate or public key, or from a JWKS (all keys, or
/// those with the token's kid), usable for `alg`.
fn public_keys(material: &str, alg: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
    let trimmed = material.trim();
    if trimmed.starts_with('{') {
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(trimmed) else {
            return Vec::new();
        };
        let entries: Vec<serde_json::Value> = match doc.get("keys").and_then(|k| k.as_array()) {
            Some(keys) => keys.clone(),
            None => vec![doc],
        };
        return entries
            .iter()
            .filter(|jwk| {
                kid.is_none()
                    || jwk
                        .get("kid")
                        .and_then(|k| k.as_str())
                        .is_none_or(|k| Some(k) == kid)
            })
            .filter_map(|jwk| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk.clone()).ok())
            .filter(|jwk| {
                !matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
                )
            })
            .filter_map(|jwk| DecodingKey::from_jwk(&jwk).ok())
            .collect();
    }
    let pem = trimmed.as_bytes();
    let key = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Vec::new(),
    };
    key.into_iter().collect()
}

fn signature_ok(token: &str, key: &DecodingKey, alg: Algorithm) -> bool {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).is_ok()
}

/// `io.jwt.decode_verify(token, constraints)`: `[valid, header, payload]`,
/// with `[false, {}, {}]` for a token that fails any check. Constraints:
/// `cert` or `secret`, and optionally `alg`, `iss`, `aud`, `time` (ns).
fn decode_verify(args: Vec<Value>) -> anyhow::Result<Value> {
    let token = string_arg(&args, 0, "io.jwt.decode_verify")?;
    let constraints = match args.get(1) {
        Some(Value::Object(o)) => o.clone(),
        _ => bail!("io.jwt.decode_verify: operand 2 must be an object"),
    };
    let get = |name: &str| constraints.get(&Value::from(name)).cloned();
    let invalid = || {
        Value::from(vec![
            Value::from(false),
            Value::from(BTreeMap::<Value, Value>::new()),
            Value::from(BTreeMap::<Value, Value>::new()),
        ])
    };
    let Ok(parts) = split(token) else {
        return Ok(invalid());
    };
    let Some(alg) = parts
        .header
        .get("alg")
        .and_then(|a| a.as_str())
        .and_then(|a| Algorithm::from_str(a).ok())
    else {
        return Ok(invalid());
    };
    if let Some(Value::String(want)) = get("alg")
        && want.as_ref() != alg_name(alg)
    {
        return Ok(invalid());
    }
    let keys = match (get("cert"), get("secret")) {
        (Some(Value::String(cert)), None) if !is_hmac(alg) => {
            public_keys(&cert, alg, parts.header.get("kid").and_then(|k| k.as_str()))
        }
        (None, Some(Value::String(secret))) if is_hmac(alg) => {
            vec![DecodingKey::from_secret(secret.as_bytes())]
        }
        (None, None) => {
            return Err(anyhow!(
                "io.jwt.decode_verify: a cert or secret constraint is required"
            ));
        }
        _ => return Ok(invalid()),
    };
    if !keys.iter().any(|k| signature_ok(token, k, alg)) {
        return Ok(invalid());
    }

    let now_s = match get("time") {
        Some(t) => {
            let ns = t
                .as_u64()
                .map(|n| n as f64)
                .or_else(|_| t.as_f64())
                .map_err(|_| anyhow!("io.jwt.decode_verify: time must be a number"))?;
            ns / 1e9
        }
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    };
    let claim = |name: &str| parts.payload.get(name);
    if let Some(exp) = claim("exp") {
        match exp.as_f64() {
            Some(exp) if now_s < exp => {}
            _ => return Ok(invalid()),
        }
    }
    if let Some(nbf) = claim("nbf") {
        match nbf.as_f64() {
            Some(nbf) if now_s >= nbf => {}
            _ => return Ok(invalid()),
        }
    }
    if let Some(Value::String(iss)) = get("iss")
        && claim("iss").and_then(|i| i.as_str()) != Some(iss.as_ref())
    {
        return Ok(invalid());
    }
    let wanted_aud = match get("aud") {
        Some(Value::String(a)) => Some(a.to_string()),
        _ => None,
    };
    let token_aud: Option<Vec<String>> = claim("aud").map(|a| match a {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    });
    match (token_aud, wanted_aud) {
        (None, None) => {}
        (Some(auds), Some(want)) if auds.contains(&want) => {}
        _ => return Ok(invalid()),
    }
    Ok(Value::from(vec![
        Value::from(true),
        Value::from(parts.header),
        Value::from(parts.payload),
    ]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use crate::identity::test_keys::{TestKey, jwks};

    fn engine() -> Engine {
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(false);
        register(&mut engine).unwrap();
        engine
    }

    fn eval(engine: &mut Engine, query: &str, input: serde_json::Value) -> Value {
        engine.set_input(Value::from(input));
        let results = engine.eval_query(query.into(), false).unwrap();
        results
            .result
            .first()
            .map_or(Value::Undefined, |r| r.expressions[0].value.clone())
    }

    #[test]
    fn decode_returns_header_payload_and_signature() {
        let key = TestKey::generate("k1", Algorithm::RS256).unwrap();
        let token = key.sign(&serde_json::json!({"sub": "alice"})).unwrap();
        let mut e = engine();
        let v = eval(
            &mut e,
            "io.jwt.decode(input.t)",
            serde_json::json!({"t": token}),
        );
        assert_eq!(v[0]["kid"], Value::from("k1"));
        assert_eq!(v[1]["sub"], Value::from("alice"));
        assert!(!v[2].as_string().unwrap().is_empty());
        let v = eval(
            &mut e,
            "x := io.jwt.decode(input.t)",
            serde_json::json!({"t": "garbage"}),
        );
        assert_eq!(
            v,
            Value::Undefined,
            "a malformed token makes decode undefined, as in OPA"
        );
    }

    #[test]
    fn verify_with_pem_jwks_and_secret() {
        let rsa = TestKey::generate("r", Algorithm::RS256).unwrap();
        let es = TestKey::generate("e", Algorithm::ES256).unwrap();
        let claims = serde_json::json!({"sub": "alice"});
        let keys = jwks(&[&rsa, &es]).to_string();
        let mut e = engine();
        let input = serde_json::json!({"r": rsa.sign(&claims).unwrap(), "e": es.sign(&claims).unwrap(), "jwks": keys});
        assert_eq!(
            eval(
                &mut e,
                "io.jwt.verify_rs256(input.r, input.jwks)",
                input.clone()
            ),
            Value::from(true)
        );
        assert_eq!(
            eval(
                &mut e,
                "io.jwt.verify_es256(input.e, input.jwks)",
                input.clone()
            ),
            Value::from(true)
        );
        assert_eq!(
            eval(
                &mut e,
                "io.jwt.verify_es256(input.r, input.jwks)",
                input.clone()
            ),
            Value::from(false)
        );
        let other = jwks(&[&TestKey::generate("r", Algorithm::RS256).unwrap()]).to_string();
        let input2 = serde_json::json!({"r": rsa.sign(&claims).unwrap(), "jwks": other});
        assert_eq!(
            eval(&mut e, "io.jwt.verify_rs256(input.r, input.jwks)", input2),
            Value::from(false)
        );

        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        let input = serde_json::json!({"t": hs});
        assert_eq!(
            eval(
                &mut e,
                "io.jwt.verify_hs256(input.t, \"secret\")",
                input.clone()
            ),
            Value::from(true)
        );
        assert_eq!(
            eval(&mut e, "io.jwt.verify_hs256(input.t, \"wrong\")", input),
            Value::from(false)
        );
    }

    #[test]
    fn decode_verify_checks_time_issuer_and_audience() {
        let key = TestKey::generate("k", Algorithm::ES256).unwrap();
        let keys = jwks(&[&key]).to_string();
        let token = key
            .sign(&serde_json::json!({"iss": "idp", "aud": "api", "exp": 2_000_000_000u64, "nbf": 1_000_000_000u64}))
            .unwrap();
        let mut e = engine();
        let at = |t: u64| serde_json::json!({"t": token, "c": {"cert": keys, "iss": "idp", "aud": "api", "time": t * 1_000_000_000}});
        let valid =
            |e: &mut Engine, input| eval(e, "io.jwt.decode_verify(input.t, input.c)[0]", input);
        assert_eq!(valid(&mut e, at(1_500_000_000)), Value::from(true));
        assert_eq!(
            valid(&mut e, at(2_100_000_000)),
            Value::from(false),
            "expired"
        );
        assert_eq!(
            valid(&mut e, at(900_000_000)),
            Value::from(false),
            "not yet valid"
        );
        let mut wrong_aud = at(1_500_000_000);
        wrong_aud["c"]["aud"] = "other".into();
        assert_eq!(valid(&mut e, wrong_aud), Value::from(false));
        let mut no_aud = at(1_500_000_000);
        no_aud["c"].as_object_mut().unwrap().remove("aud");
        assert_eq!(
            valid(&mut e, no_aud),
            Value::from(false),
            "a token with aud needs the aud constraint"
        );
        let mut wrong_alg = at(1_500_000_000);
        wrong_alg["c"]["alg"] = "RS256".into();
        assert_eq!(valid(&mut e, wrong_alg), Value::from(false));
        let decoded = eval(
            &mut e,
            "io.jwt.decode_verify(input.t, input.c)",
            at(1_500_000_000),
        );
        assert_eq!(decoded[2]["iss"], Value::from("idp"));
    }

    #[test]
    fn hmac_token_against_a_public_key_does_not_verify() {
        let rsa = TestKey::generate("r", Algorithm::RS256).unwrap();
        let keys = jwks(&[&rsa]).to_string();
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "root"}),
            &jsonwebtoken::EncodingKey::from_secret(keys.as_bytes()),
        )
        .unwrap();
        let mut e = engine();
        let input = serde_json::json!({"t": forged, "c": {"cert": keys}});
        assert_eq!(
            eval(&mut e, "io.jwt.decode_verify(input.t, input.c)[0]", input),
            Value::from(false)
        );
    }
}
