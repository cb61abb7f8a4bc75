//! Signing keys made at run time, for tests, benchmarks and policy
//! fixtures: tokens they sign go through the real verification path.
//! Nothing here is used on the decision path.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
};
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Why a test key could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("test key: {0}")]
pub struct TestKeyError(String);

/// A private key with its kid, algorithm and public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> TestKeyError {
    TestKeyError(e.to_string())
}

impl TestKey {
    /// A fresh key for `alg` (RS*/PS* get 2048-bit RSA).
    ///
    /// # Errors
    /// Key generation failed or `alg` is not asymmetric.
    pub fn generate(kid: &str, alg: Algorithm) -> Result<Self, TestKeyError> {
        let encoding = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(err)?;
                let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&pair)
                    .map_err(err)?;
                EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                    .map_err(err)?
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let curve = if alg == Algorithm::ES256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let doc =
                    EcdsaKeyPair::generate_pkcs8(curve, &aws_lc_rs::rand::SystemRandom::new())
                        .map_err(err)?;
                EncodingKey::from_ec_der(doc.as_ref())
            }
            Algorithm::EdDSA => {
                let doc = Ed25519KeyPair::generate_pkcs8v1(&aws_lc_rs::rand::SystemRandom::new())
                    .map_err(err)?;
                EncodingKey::from_ed_der(doc.as_ref())
            }
            other => {
                return Err(TestKeyError(format!(
                    "{other:?} is not an asymmetric algorithm"
                )));
            }
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(err)?;
        jwk.common.key_id = Some(kid.to_owned());
        let jwk = serde_json::to_value(&jwk).map_err(err)?;
        Ok(Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        })
    }

    /// The public key as a JWK (with `kid` and `alg`).
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// Signs `claims` with this key, `kid` and `alg` in the header.
    ///
    /// # Errors
    /// Signing failed.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, TestKeyError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs with a header of the caller's choosing (for hostile tokens).
    ///
    /// # Errors
    /// Signing failed.
    pub fn sign_with_header(
        &self,
        header: &Header,
        claims: &serde_json::Value,
    ) -> Result<String, TestKeyError> {
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(err)
    }
}

/// A JWKS document holding the given keys' public halves.
pub fn jwks(keys: &[&TestKey]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>() })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_signs_and_publishes_a_key() {
        for alg in [
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let key = TestKey::generate("k", alg).unwrap();
            let token = key.sign(&serde_json::json!({"sub": "x"})).unwrap();
            assert_eq!(token.split('.').count(), 3);
            assert_eq!(key.jwk()["kid"], "k");
            let set =
                super::super::KeySet::parse("t", jwks(&[&key]).to_string().as_bytes(), None, 1)
                    .unwrap();
            assert!(set.find("k").unwrap().accepts(alg), "{alg:?}");
        }
    }
}
