//! OPA bundles: a gzipped tar of `.rego` files, `data.json` / `data.yaml`
//! files and a `.manifest`, optionally signed with a `.signatures.json`.
//!
//! The format is OPA's, so the bundle servers and `opa build` / `opa sign`
//! pipelines that feed OPA fleets feed Arbiter unchanged. Not supported,
//! and refused with a clear error rather than half-loaded: Wasm modules,
//! delta bundles (`patch.json`) and compiled plans.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest;

use super::SourceFiles;
use crate::config::{BundleConfig, BundleLocation, BundleVerificationConfig};

/// Bundles with more files than this are refused.
const MAX_FILES: usize = 10_000;

/// A bundle that cannot be read, verified or accepted.
#[derive(Debug, thiserror::Error)]
#[error("bundle {bundle}: {message}")]
pub struct BundleError {
    pub bundle: String,
    pub message: String,
}

/// The `.manifest` of a bundle.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub revision: String,
    /// Data paths the bundle owns; `None` is everything.
    pub roots: Option<Vec<String>>,
    /// `0` for Rego v0 syntax, `1` for v1.
    pub rego_version: Option<u8>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A bundle read, verified and split into policies and data.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    pub(super) files: SourceFiles,
    /// SHA-256 of the archive as fetched.
    pub digest: [u8; 32],
    /// Whether a signature was checked.
    pub verified: bool,
}

impl Bundle {
    /// Reads a `.tar.gz` bundle. `name` (its path or URL) prefixes each
    /// file in errors. With a `verifier`, the bundle must carry a signature
    /// over exactly its files.
    ///
    /// # Errors
    /// Not a gzipped tar, larger than `max_bytes` uncompressed, a bad or
    /// missing signature, a file outside the manifest's roots, or an
    /// unsupported kind of bundle.
    pub fn read(
        name: &str,
        archive: &[u8],
        verifier: Option<&BundleVerifier>,
        max_bytes: u64,
    ) -> Result<Self, BundleError> {
        let fail = |message: String| BundleError {
            bundle: name.to_owned(),
            message,
        };
        let mut entries = unpack(archive, max_bytes).map_err(fail)?;
        let signatures = entries.remove(".signatures.json");
        let verified = match (verifier, signatures) {
            (Some(verifier), Some(signatures)) => {
                verifier.verify(&signatures, &entries).map_err(fail)?;
                true
            }
            (Some(_), None) => {
                return Err(fail(
                    "the bundle is not signed (no .signatures.json) but a verification key is configured".into(),
                ));
            }
            (None, Some(_)) => {
                tracing::warn!(
                    bundle = name,
                    "the bundle is signed but no verification key is configured; its signature is not checked"
                );
                false
            }
            (None, None) => false,
        };
        let manifest: Manifest = match entries.remove(".manifest") {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| fail(format!(".manifest: {e}")))?
            }
            None => Manifest::default(),
        };
        let roots = Roots::new(manifest.roots.as_deref()).map_err(fail)?;
        if let Some(version) = manifest.rego_version
            && version > 1
        {
            return Err(fail(format!(
                ".manifest: unknown rego_version {version} (0 or 1)"
            )));
        }

        let mut files = SourceFiles::default();
        for (path, bytes) in entries {
            let file_name = path.rsplit('/').next().unwrap_or_default();
            let dirs: Vec<String> = path
                .split('/')
                .collect::<Vec<_>>()
                .split_last()
                .map(|(_, dirs)| dirs.iter().map(|d| (*d).to_owned()).collect())
                .unwrap_or_default();
            let shown = PathBuf::from(format!("{name}/{path}"));
            if path.ends_with(".rego") {
                let text = String::from_utf8(bytes)
                    .map_err(|_| fail(format!("{path}: not UTF-8 text")))?;
                if let Some(package) = package_path(&text)
                    && !roots.contain(&package)
                {
                    return Err(fail(format!(
                        "manifest roots {} do not permit 'package {}' in {path}",
                        roots,
                        package.join(".")
                    )));
                }
                files.rego.push((shown, text));
            } else if super::DATA_FILE_NAMES.contains(&file_name) {
                let text = String::from_utf8(bytes)
                    .map_err(|_| fail(format!("{path}: not UTF-8 text")))?;
                let value =
                    structured(&path, text.as_bytes()).map_err(|e| fail(format!("{path}: {e}")))?;
                if !roots.contain_data(&dirs, &value) {
                    return Err(fail(format!(
                        "manifest roots {} do not permit data at /{}",
                        roots,
                        dirs.join("/")
                    )));
                }
                files.data.push((shown, dirs, text));
            } else if path.ends_with(".wasm")
                || file_name == "patch.json"
                || file_name == "plan.json"
            {
                return Err(fail(format!(
                    "{path}: Wasm modules, delta bundles and plans are not supported; build the bundle from Rego"
                )));
            }
        }
        Ok(Self {
            manifest,
            files,
            digest: sha2::Sha256::digest(archive).into(),
            verified,
        })
    }
}

/// Reads the bundle file a config names, for commands that work offline
/// (`check`, `eval`, `test`). A bundle server is only polled by `serve`.
///
/// # Errors
/// The source is a URL, or the file cannot be read or is not a valid bundle.
pub fn read_configured_file(config: &BundleConfig) -> Result<Bundle, BundleError> {
    let source = config.location();
    let BundleLocation::File(path) = &source else {
        return Err(BundleError {
            bundle: source.to_string(),
            message: "is fetched by `arbiter serve` only; point policy.bundle.source at a file to use it here".into(),
        });
    };
    let bytes = read_limited_file(path, config.max_bytes).map_err(|message| BundleError {
        bundle: source.to_string(),
        message,
    })?;
    let verifier = config
        .verification
        .as_ref()
        .map(BundleVerifier::from_config)
        .transpose()?;
    Bundle::read(
        &source.to_string(),
        &bytes,
        verifier.as_ref(),
        config.max_bytes,
    )
}

/// A file's bytes, refusing one larger than `max_bytes`.
pub fn read_limited_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!("larger than {max_bytes} bytes"));
    }
    Ok(bytes)
}

/// Every regular file in the archive, by its path without a leading `/`.
fn unpack(archive: &[u8], max_bytes: u64) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let gunzip = flate2::read::GzDecoder::new(archive);
    // The limit counts decompressed bytes, so a small archive that inflates
    // to gigabytes stops at the limit.
    let mut limited = gunzip.take(max_bytes.saturating_add(1));
    let files = read_entries(&mut tar::Archive::new(&mut limited));
    if limited.limit() == 0 {
        return Err(format!("larger than {max_bytes} bytes uncompressed"));
    }
    files
}

fn read_entries<R: Read>(tar: &mut tar::Archive<R>) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut files = BTreeMap::new();
    let entries = tar
        .entries()
        .map_err(|e| format!("not a gzipped tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a gzipped tar archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry
            .path()
            .map_err(|e| format!("bad file name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let path = normalize(&raw).ok_or_else(|| format!("{raw}: file name leaves the bundle"))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{path}: {e}"))?;
        if files.insert(path.clone(), bytes).is_some() {
            return Err(format!("{path} appears twice"));
        }
        if files.len() > MAX_FILES {
            return Err(format!("more than {MAX_FILES} files"));
        }
    }
    Ok(files)
}

/// `/a/./b/c.rego` -> `a/b/c.rego`; `None` for a path with `..`.
fn normalize(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The segments of a module's `package` declaration, as far as plain
/// identifiers go (enough to check them against the manifest's roots).
fn package_path(text: &str) -> Option<Vec<String>> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let rest = line.strip_prefix("package")?.trim_start();
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    Some(name.split('.').map(str::to_owned).collect())
}

/// The manifest's `roots`: each a `/`-separated data path the bundle owns.
struct Roots(Option<Vec<Vec<String>>>);

impl Roots {
    fn new(roots: Option<&[String]>) -> Result<Self, String> {
        let Some(roots) = roots else {
            return Ok(Self(None));
        };
        let split: Vec<Vec<String>> = roots
            .iter()
            .map(|r| {
                r.split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        for (i, a) in split.iter().enumerate() {
            for b in split.iter().skip(i + 1) {
                if a.starts_with(b) || b.starts_with(a) {
                    return Err(format!(
                        "manifest has overlapped roots: '{}' and '{}'",
                        a.join("/"),
                        b.join("/")
                    ));
                }
            }
        }
        Ok(Self(Some(split)))
    }

    fn contain(&self, path: &[String]) -> bool {
        match &self.0 {
            None => true,
            Some(roots) => roots.iter().any(|root| path.starts_with(root)),
        }
    }

    /// Whether data placed at `path` stays within the roots: wholly under
    /// one, or an object whose members each do.
    fn contain_data(&self, path: &[String], value: &serde_json::Value) -> bool {
        if self.contain(path) {
            return true;
        }
        let Some(roots) = &self.0 else {
            return true;
        };
        let deeper = roots
            .iter()
            .any(|r| r.len() > path.len() && r.starts_with(path));
        match value {
            serde_json::Value::Object(members) if deeper => members.iter().all(|(key, child)| {
                let mut child_path = path.to_vec();
                child_path.push(key.clone());
                self.contain_data(&child_path, child)
            }),
            _ => false,
        }
    }
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listed: Vec<String> = self.0.iter().flatten().map(|r| r.join("/")).collect();
        write!(f, "[{}]", listed.join(" "))
    }
}

/// A JSON or YAML file's value.
fn structured(path: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    if path.ends_with(".yaml") || path.ends_with(".yml") {
        yaml_serde::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Checks a bundle's `.signatures.json` against a configured key.
pub struct BundleVerifier {
    key: jsonwebtoken::DecodingKey,
    algorithm: jsonwebtoken::Algorithm,
    scope: String,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleVerifier")
            .field("algorithm", &self.algorithm)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SignaturesFile {
    signatures: Vec<String>,
}

#[derive(Deserialize)]
struct SignedFiles {
    files: Vec<SignedFile>,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct SignedFile {
    name: String,
    hash: String,
    #[serde(default)]
    algorithm: String,
}

impl BundleVerifier {
    /// Reads the verification key: a PEM public key (or certificate-free
    /// PEM key) for RSA and ECDSA algorithms, the secret itself for HMAC.
    ///
    /// # Errors
    /// The key file cannot be read or does not hold a key for the algorithm.
    pub fn from_config(config: &BundleVerificationConfig) -> Result<Self, BundleError> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        let fail = |message: String| BundleError {
            bundle: "verification key".into(),
            message: format!("{}: {message}", config.key_file.display()),
        };
        let bytes = std::fs::read(&config.key_file).map_err(|e| fail(e.to_string()))?;
        let algorithm: Algorithm = config
            .algorithm
            .parse()
            .map_err(|_| fail(format!("unknown signing algorithm {}", config.algorithm)))?;
        let key = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                DecodingKey::from_secret(trim_newline(&bytes))
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                DecodingKey::from_rsa_pem(&bytes).map_err(|e| fail(e.to_string()))?
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                DecodingKey::from_ec_pem(&bytes).map_err(|e| fail(e.to_string()))?
            }
            Algorithm::EdDSA => {
                DecodingKey::from_ed_pem(&bytes).map_err(|e| fail(e.to_string()))?
            }
            other => {
                return Err(fail(format!(
                    "{other:?} is not supported for bundle signatures"
                )));
            }
        };
        Ok(Self {
            key,
            algorithm,
            scope: config.scope.clone().unwrap_or_default(),
        })
    }

    /// Checks the one signature, then that it lists exactly the bundle's
    /// files with matching digests.
    fn verify(&self, signatures: &[u8], files: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
        let parsed: SignaturesFile =
            serde_json::from_slice(signatures).map_err(|e| format!(".signatures.json: {e}"))?;
        let [token] = parsed.signatures.as_slice() else {
            return Err(format!(
                ".signatures.json: expected exactly one signature, found {}",
                parsed.signatures.len()
            ));
        };
        let mut validation = jsonwebtoken::Validation::new(self.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let signed = jsonwebtoken::decode::<SignedFiles>(token, &self.key, &validation)
            .map_err(|e| format!(".signatures.json: the signature does not verify: {e}"))?
            .claims;
        if signed.scope != self.scope {
            return Err(format!(
                ".signatures.json: scope mismatch (signed for {:?}, expected {:?})",
                signed.scope, self.scope
            ));
        }
        let mut expected: HashMap<String, SignedFile> = signed
            .files
            .into_iter()
            .filter_map(|f| normalize(&f.name).map(|name| (name, f)))
            .collect();
        for (path, bytes) in files {
            let Some(signed) = expected.remove(path) else {
                return Err(format!("{path} is not covered by the bundle signature"));
            };
            let actual = file_digest(path, bytes, &signed.algorithm)?;
            if !actual.eq_ignore_ascii_case(&signed.hash) {
                return Err(format!(
                    "{path}: digest mismatch (signed {}, got {actual})",
                    signed.hash
                ));
            }
        }
        if !expected.is_empty() {
            let mut missing: Vec<&str> = expected.keys().map(String::as_str).collect();
            missing.sort_unstable();
            return Err(format!(
                "the signature lists files the bundle does not have: {}",
                missing.join(", ")
            ));
        }
        Ok(())
    }
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    bytes
        .strip_suffix(b"\n")
        .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
        .unwrap_or(bytes)
}

/// A file's digest as OPA signs it: data and manifest files by their
/// canonical JSON form (so whitespace and key order don't matter), all
/// other files by their bytes.
fn file_digest(path: &str, bytes: &[u8], algorithm: &str) -> Result<String, String> {
    let file_name = path.rsplit('/').next().unwrap_or_default();
    let canonical;
    let hashed: &[u8] = if super::DATA_FILE_NAMES.contains(&file_name) || file_name == ".manifest" {
        let value = structured(path, bytes).map_err(|e| format!("{path}: {e}"))?;
        let mut out = Vec::with_capacity(bytes.len());
        canonical_json(&value, &mut out);
        canonical = out;
        &canonical
    } else {
        bytes
    };
    let digest: Vec<u8> = match algorithm {
        "SHA-256" => sha2::Sha256::digest(hashed).to_vec(),
        "SHA-224" => sha2::Sha224::digest(hashed).to_vec(),
        "SHA-384" => sha2::Sha384::digest(hashed).to_vec(),
        "SHA-512" => sha2::Sha512::digest(hashed).to_vec(),
        "SHA-512-224" => sha2::Sha512_224::digest(hashed).to_vec(),
        "SHA-512-256" => sha2::Sha512_256::digest(hashed).to_vec(),
        "MD5" | "SHA-1" => {
            return Err(format!(
                "{path}: signed with {algorithm}, which is too weak to trust; sign with SHA-256"
            ));
        }
        other => return Err(format!("{path}: unknown hashing algorithm {other:?}")),
    };
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// OPA's canonical form: objects with their keys sorted, no whitespace,
/// strings escaped as Go's encoder does without HTML escaping.
fn canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(members) => {
            out.push(b'{');
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort_unstable();
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                go_string(key, out);
                out.push(b':');
                if let Some(member) = members.get(key) {
                    canonical_json(member, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => go_string(s, out),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

fn go_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    // Digests from OPA's own bundle tests (SHA-512 of the canonical form).
    #[test]
    fn digests_match_opa() {
        assert_eq!(
            file_digest("a/b/c/data.json", b"[1,2,3]", "SHA-512").unwrap(),
            "60f7b5dc86ded48785436192a08dbfd04894d7f1b417c4f8d3714679a7f78cb3c833f16a8559a1cf1f32968747dc1d95ef34826263dacf125ded8f5c374be4c0"
        );
        assert_eq!(
            file_digest("a/b/y/data.yaml", b"foo: 1", "SHA-512").unwrap(),
            "20f27a640a233e6524fe7d138898583cd43475724806feb26be7f214e1d10b29edf6a0d3cb08f82107a45686b61b8fdabab6406cf4e70efe134f42238dbd70ab"
        );
        assert_eq!(
            file_digest("policy.wasm", b"modules-compiled-as-wasm-binary", "SHA-512").unwrap(),
            "4f73765168fd8b5c294b739436da312cc5e979faf09f67bf576d36ea79a4f79c70cbb3c33d06ff65f531a9f42abd0a8f4daacc554cb521837e876dc28f56ce89"
        );
        assert!(file_digest("x.rego", b"package x", "MD5").is_err());
    }

    #[test]
    fn canonical_form_ignores_whitespace_and_key_order() {
        let mut a = Vec::new();
        canonical_json(
            &serde_json::from_str(r#"{ "b": [1, {"y": "\u2028<>&", "x": null}], "a": true }"#)
                .unwrap(),
            &mut a,
        );
        assert_eq!(
            String::from_utf8(a).unwrap(),
            r#"{"a":true,"b":[1,{"x":null,"y":"\u2028<>&"}]}"#
        );
    }

    #[test]
    fn roots() {
        let roots = Roots::new(Some(&["a/b".into(), "foo".into()])).unwrap();
        let path = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert!(roots.contain(&path("foo/bar")));
        assert!(!roots.contain(&path("fo")));
        assert!(roots.contain_data(&[], &serde_json::json!({"a": {"b": 1}})));
        assert!(!roots.contain_data(&[], &serde_json::json!({"a": {"c": 1}})));
        assert!(Roots::new(Some(&["a/b".into(), "a".into()])).is_err());
        assert!(Roots::new(Some(&["a".into(), "another".into()])).is_ok());
        assert_eq!(
            package_path("# c\npackage foo.bar\n"),
            Some(path("foo/bar"))
        );
    }

    #[test]
    fn paths_are_normalized_and_escapes_refused() {
        assert_eq!(normalize("/a/./b.rego").as_deref(), Some("a/b.rego"));
        assert_eq!(normalize("a/../../etc/passwd"), None);
    }
}
