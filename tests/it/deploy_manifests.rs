//! The deployment files in `deploy/` and the Dockerfile, parsed and checked
//! against each other and against Arbiter's own configuration; the Envoy
//! configurations validated by a real Envoy.

use crate::common;

use std::path::{Path, PathBuf};

use arbiter::Config;
use yaml_serde::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn kubernetes_config() -> Config {
    let docs = documents("deploy/kubernetes/arbiter.yaml");
    let toml = find(&docs, "ConfigMap")["data"]["arbiter.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    Config::from_toml(&toml, Path::new("arbiter-config"), Path::new("/")).unwrap()
}

#[test]
fn kubernetes_deployment_probes_ports_and_security() {
    let docs = documents("deploy/kubernetes/arbiter.yaml");
    let config = kubernetes_config();
    let pod = &find(&docs, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("grpc"), u64::from(config.server.grpc_addr.port()));
    assert_eq!(port("admin"), u64::from(config.admin.addr.port()));
    assert!(
        config.server.grpc_addr.ip().is_unspecified(),
        "in a pod Arbiter must listen on all interfaces"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let policy_mount = mounts.iter().find(|m| m["name"] == "policies").unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(config.policy.paths, vec![PathBuf::from(policy_mount)]);
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_mount = mounts.iter().find(|m| m["name"] == "config").unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(
        args,
        vec!["serve", "--config", &format!("{config_mount}/arbiter.toml")]
    );
    let service = find(&docs, "Service");
    assert_eq!(
        service["spec"]["ports"][0]["port"].as_u64().unwrap(),
        u64::from(config.server.grpc_addr.port())
    );
}

#[test]
fn istio_provider_points_at_the_service_and_fails_closed() {
    let k8s = documents("deploy/kubernetes/arbiter.yaml");
    let service = find(&k8s, "Service");
    let mesh = &documents("deploy/istio/mesh-config.yaml")[0];
    let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
    let grpc = &provider["envoyExtAuthzGrpc"];
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(grpc["service"].as_str().unwrap(), host);
    assert_eq!(grpc["port"], service["spec"]["ports"][0]["port"]);
    assert_eq!(grpc["failOpen"], false);
    let timeout = grpc["timeout"]
        .as_str()
        .expect("Istio's 600 s default timeout must be overridden");
    let timeout: std::time::Duration = humantime::parse_duration(timeout).unwrap();
    assert!(timeout <= std::time::Duration::from_secs(1));
    assert!(
        timeout > kubernetes_config().policy.eval_timeout,
        "Envoy must wait longer than Arbiter's own limit"
    );

    let policies = documents("deploy/istio/authorization-policy.yaml");
    let authz = find(&policies, "AuthorizationPolicy");
    assert_eq!(authz["spec"]["action"], "CUSTOM");
    assert_eq!(authz["spec"]["provider"]["name"], provider["name"]);
    assert_eq!(
        find(&policies, "PeerAuthentication")["spec"]["mtls"]["mode"],
        "STRICT"
    );
}

#[test]
fn dockerfile_is_multi_stage_small_and_non_root() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage");
    assert!(
        stages.last().unwrap().contains("distroless"),
        "small runtime image"
    );
    assert!(text.lines().any(|l| l.starts_with("USER nonroot")));
    let docker_config = std::fs::read_to_string(root().join("deploy/docker/arbiter.toml")).unwrap();
    let config = Config::from_toml(
        &docker_config,
        Path::new("arbiter.toml"),
        Path::new("/etc/arbiter"),
    )
    .unwrap();
    assert_eq!(
        config.policy.paths,
        vec![PathBuf::from("/etc/arbiter/policies")]
    );
    assert!(text.contains("COPY policies /etc/arbiter/policies"));
    // Cargo loads every workspace member's manifest before building one.
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    for member in members
        .iter()
        .filter_map(toml::Value::as_str)
        .filter(|m| *m != ".")
    {
        assert!(
            text.lines().any(|l| l == format!("COPY {member} {member}")),
            "the build stage needs workspace member {member}"
        );
    }
    // The build flags: without them the image's runtime keeps the LIFO slot.
    assert!(
        text.lines().any(|l| l == "COPY .cargo .cargo"),
        "the build stage needs .cargo/config.toml"
    );
}

const ENVOY_CONFIGS: [&str; 3] = [
    "deploy/envoy/envoy.yaml",
    "deploy/envoy/sidecar.yaml",
    "deploy/envoy/replicas.yaml",
];

/// Every `envoy.filters.http.ext_authz` filter's `typed_config` in a
/// parsed Envoy configuration, wherever it is nested.
fn ext_authz_filters(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Mapping(map) => {
            if map.get("name").and_then(Value::as_str) == Some("envoy.filters.http.ext_authz") {
                found.push(map.get("typed_config").cloned().unwrap_or(Value::Null));
            }
            for child in map.values() {
                ext_authz_filters(child, found);
            }
        }
        Value::Sequence(items) => {
            for child in items {
                ext_authz_filters(child, found);
            }
        }
        _ => {}
    }
}

/// An Envoy duration (`0.25s`) as a `Duration`.
fn envoy_duration(value: &Value) -> Option<std::time::Duration> {
    let seconds: f64 = value.as_str()?.strip_suffix('s')?.parse().ok()?;
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

/// Checked where the fields live: each ext_authz filter's own
/// `failure_mode_allow` (false, stated, not left to the default), the
/// `status_on_error` that tells a failed check from a deny, and its gRPC
/// call's `timeout`, above Arbiter's evaluation limit and below a second.
#[test]
fn envoy_configurations_never_fail_open() {
    let eval_timeout = Config::default().policy.eval_timeout;
    for path in ENVOY_CONFIGS {
        let mut filters = Vec::new();
        for doc in documents(path) {
            ext_authz_filters(&doc, &mut filters);
        }
        assert!(!filters.is_empty(), "{path}: no ext_authz filter");
        for filter in filters {
            assert_eq!(
                filter["failure_mode_allow"],
                Value::Bool(false),
                "{path}: failure_mode_allow must be stated false"
            );
            assert_eq!(
                filter["status_on_error"]["code"].as_str(),
                Some("ServiceUnavailable"),
                "{path}"
            );
            let timeout = envoy_duration(&filter["grpc_service"]["timeout"])
                .unwrap_or_else(|| panic!("{path}: the ext_authz gRPC call needs a timeout"));
            assert!(
                timeout > eval_timeout && timeout <= std::time::Duration::from_secs(1),
                "{path}: ext_authz timeout {timeout:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_real_envoy_accepts_every_envoy_configuration() {
    let Some(binary) = common::envoy::envoy_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The sidecar's certificates, made here so that validation can load them.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/orders"
            .try_into()
            .unwrap(),
    )];
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert-chain.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    for path in ENVOY_CONFIGS {
        let text = std::fs::read_to_string(root().join(path))
            .unwrap()
            .replace("/etc/certs", &dir.path().display().to_string());
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, text).unwrap();
        let out = tokio::process::Command::new(&binary)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&config)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
