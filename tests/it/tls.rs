//! TLS and mutual TLS on the gRPC listener, with certificates made by rcgen
//! at test time: a good client certificate, none, and one from another CA.

use crate::common::*;
use arbiter::proto::auth::CheckRequest;
use arbiter::proto::auth::authorization_client::AuthorizationClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// (certificate PEM, key PEM) issued by `ca` for the given names.
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    (
        params.signed_by(&key, &ca.issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

const POLICY: &str = "package envoy.authz\nallow := true\n";

async fn tls_arbiter(mutual: bool) -> (TestArbiter, Ca) {
    let ca = new_ca("arbiter test CA");
    let (cert, key) = leaf(&ca, &["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let client_ca = if mutual {
        format!(
            "client_ca_file = \"{}\"\n",
            dir.path().join("ca.pem").display()
        )
    } else {
        String::new()
    };
    let toml = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{client_ca}",
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    std::mem::forget(dir);
    (arbiter, ca)
}

async fn connect(
    arbiter: &TestArbiter,
    ca: &Ca,
    client: Option<(String, String)>,
) -> Result<AuthorizationClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", arbiter.running.grpc_addr))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(AuthorizationClient::new(channel))
}

async fn check(
    client: Result<AuthorizationClient<Channel>, tonic::transport::Error>,
) -> Result<bool, String> {
    let mut client = client.map_err(|e| format!("connect: {e}"))?;
    let request: CheckRequest = serde_json::from_str(&http_request("GET", "/", &[], "")).unwrap();
    let response = client
        .check(request)
        .await
        .map_err(|e| format!("check: {e}"))?
        .into_inner();
    Ok(is_allowed(&response))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let (arbiter, ca) = tls_arbiter(true).await;
    let good = leaf(&ca, &["envoy.example"]);
    assert_eq!(
        check(connect(&arbiter, &ca, Some(good)).await).await,
        Ok(true)
    );

    assert!(
        check(connect(&arbiter, &ca, None).await).await.is_err(),
        "a client without a certificate was answered"
    );

    let stranger = new_ca("some other CA");
    let wrong = leaf(&stranger, &["envoy.example"]);
    assert!(
        check(connect(&arbiter, &ca, Some(wrong)).await)
            .await
            .is_err(),
        "a certificate from another CA was accepted"
    );

    // Plaintext gRPC to a TLS listener gets nowhere either.
    let plain = AuthorizationClient::connect(format!("http://{}", arbiter.running.grpc_addr)).await;
    assert!(check(plain).await.is_err());
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn tls_without_client_certificates() {
    let (arbiter, ca) = tls_arbiter(false).await;
    assert_eq!(check(connect(&arbiter, &ca, None).await).await, Ok(true));
    arbiter.running.shutdown().await;
}

#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let old_ca = new_ca("old CA");
    let new_ca_ = new_ca("new CA");
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("server.pem");
    let key_file = dir.path().join("server.key");
    let (cert, key) = leaf(&old_ca, &["localhost"]);
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let toml = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[policy]\nreload_interval = \"100ms\"\n",
        cert_file.display(),
        key_file.display()
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    assert_eq!(
        check(connect(&arbiter, &old_ca, None).await).await,
        Ok(true)
    );
    assert!(
        check(connect(&arbiter, &new_ca_, None).await)
            .await
            .is_err()
    );
    // A long-lived connection from before the change keeps working after it.
    let mut before = connect(&arbiter, &old_ca, None).await.unwrap();

    // A broken certificate is refused and the old one keeps serving.
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    wait_for_metric(
        &arbiter.running.admin_addr.to_string(),
        "arbiter_tls_reload_failures_total",
        1.0,
    )
    .await;
    assert_eq!(
        check(connect(&arbiter, &old_ca, None).await).await,
        Ok(true)
    );
    let readyz = arbiter.readyz().await;
    assert!(
        readyz["last_tls_reload_error"]
            .as_str()
            .unwrap()
            .contains("server.pem"),
        "{readyz}"
    );

    // The key is written before the certificate, as a rotation tool would
    // (a certificate that doesn't match its key is refused in between).
    let (cert, key) = leaf(&new_ca_, &["localhost"]);
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    assert!(
        poll_until(|| async { check(connect(&arbiter, &new_ca_, None).await).await == Ok(true) })
            .await,
        "new connections never got the new certificate"
    );
    assert!(check(connect(&arbiter, &old_ca, None).await).await.is_err());
    let request: CheckRequest = serde_json::from_str(&http_request("GET", "/", &[], "")).unwrap();
    assert!(is_allowed(
        &before.check(request).await.unwrap().into_inner()
    ));
    let metrics = arbiter.metrics().await;
    assert!(
        metric(&metrics, "arbiter_tls_reloads_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    arbiter.running.shutdown().await;
}

/// The HTTP front doors' listener takes the same TLS settings (`[http.tls]`):
/// with mutual TLS only a client with a certificate from the CA is answered.
#[tokio::test]
async fn the_http_front_doors_serve_mutual_tls_too() {
    let ca = new_ca("arbiter http CA");
    let (cert, key) = leaf(&ca, &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("server.pem"), cert).unwrap();
    std::fs::write(path("server.key"), key).unwrap();
    std::fs::write(path("ca.pem"), &ca.pem).unwrap();
    let toml = format!(
        "[http]\naddr = \"127.0.0.1:0\"\n[http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem")
    );
    let arbiter = TestArbiter::start(&[("p.rego", POLICY)], &toml).await;
    let port = arbiter.running.http_addr.unwrap().port();
    let url = format!("https://localhost:{port}/envoy/api");
    let client = |identity: Option<(String, String)>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .resolve("localhost", arbiter.running.http_addr.unwrap());
        if let Some((cert, key)) = identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let allowed = client(Some(leaf(&ca, &["app.example"])))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(
        client(None).get(&url).send().await.is_err(),
        "a client without a certificate was answered"
    );
    let stranger = new_ca("another CA");
    assert!(
        client(Some(leaf(&stranger, &["app.example"])))
            .get(&url)
            .send()
            .await
            .is_err(),
        "a certificate from another CA was accepted"
    );
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/envoy/api")).await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
        "plaintext HTTP to the TLS listener was answered"
    );
    arbiter.running.shutdown().await;
}
