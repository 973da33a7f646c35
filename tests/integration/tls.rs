//! https served directly: a test CA signs the gateway's certificate; the TypeScript SDK (a
//! real MCP client, trusting that CA) completes the whole OAuth flow over it; a renewed
//! certificate is picked up without a restart; broken files are refused by name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mcp_oauth_gateway::config::Config;
use serde_json::Value;

use crate::support::TestGateway;

struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mcp-oauth-gateway test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A server certificate for localhost and 127.0.0.1 with `cn`, written to `dir`.
    fn issue(&self, dir: &Path, cn: &str) {
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(self.params.clone(), &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        // Key first, then the certificate: the gateway must not take a half-written pair.
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    }
}

/// The common name of the certificate the server at `port` presents now.
async fn served_cn(port: u16, ca: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    // The CN is printable text inside the DER; enough to tell two certificates apart.
    let text = String::from_utf8_lossy(&der).into_owned();
    ["first", "renewed"]
        .into_iter()
        .find(|n| text.contains(&format!("gateway-{n}")))
        .unwrap_or("?")
        .to_string()
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn the_gateway_serves_https_and_a_real_client_completes_the_flow() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "gateway-first");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (c2, k2) = (cert.clone(), key.clone());
    let gw = TestGateway::start_with(move |c| {
        let port = c.server.listen.port();
        c.server.public_url = Some(format!("https://localhost:{port}"));
        c.server.tls_cert = Some(c2);
        c.server.tls_key = Some(k2);
    })
    .await;
    let port: u16 = gw.direct.rsplit(':').next().unwrap().parse().unwrap();
    let base = format!("https://localhost:{port}");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let meta: Value = https
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], base.as_str());
    assert_eq!(meta["token_endpoint"], format!("{base}/token").as_str());
    // Plain http on the https port: no answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that does not trust the CA: refused at the handshake.
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());

    // The TypeScript SDK: discovery, registration, sign-in, consent, token, a tool call.
    if let Some(node) = crate::js::node() {
        let ca_path = ca_file.display().to_string();
        let mut run = crate::js::SdkRun::start_at(
            format!("{base}/mcp"),
            &node,
            None,
            false,
            &[("NODE_EXTRA_CA_CERTS", ca_path.as_str())],
        );
        let v = run.next().await;
        assert_eq!(v["who"]["user"], "alice", "{v}");
        assert_eq!(v["who"]["resource"], format!("{base}/mcp").as_str());
        run.finish().await;
    }

    // Renewed in place: new connections get the new certificate, no restart.
    assert_eq!(served_cn(port, &ca.pem).await, "first");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ca.issue(dir.path(), "gateway-renewed");
    let mut cn = String::new();
    for _ in 0..40 {
        cn = served_cn(port, &ca.pem).await;
        if cn == "renewed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(cn, "renewed");
    // A broken renewal keeps the last good pair serving.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served_cn(port, &ca.pem).await, "renewed");
}

#[test]
fn broken_certificate_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "gateway-first");
    let other = tempfile::tempdir().unwrap();
    ca.issue(other.path(), "gateway-other");
    let file = dir.path().join("gw.toml");
    let parse = |toml: &str| {
        std::fs::write(&file, toml).unwrap();
        Config::load(Some(file.as_path()), std::iter::empty())
    };
    let load = |toml: String| {
        parse(&toml)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let d = dir.path().display();
    let e = load(format!("[server]\ntls_cert = \"{d}/cert.pem\"\n"));
    assert!(e.contains("server.tls_key"), "{e}");
    let e = load(format!(
        "[server]\ntls_cert = \"{d}/missing.pem\"\ntls_key = \"{d}/key.pem\"\n"
    ));
    assert!(
        e.contains("server.tls_cert") && e.contains("missing.pem"),
        "{e}"
    );
    let e = load(format!(
        "[server]\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{}/key.pem\"\n",
        other.path().display()
    ));
    assert!(
        e.contains("server.tls_key") && e.contains("not the key"),
        "{e}"
    );
    let e = load(format!(
        "[server]\ntls_cert = \"{d}/key.pem\"\ntls_key = \"{d}/key.pem\"\n"
    ));
    assert!(e.contains("server.tls_cert"), "{e}");
    // The key's content is never in a message.
    let key = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
    let body: String = key.lines().nth(1).unwrap().to_string();
    let e = load(format!(
        "[server]\ntls_cert = \"{d}/key.pem\"\ntls_key = \"{d}/cert.pem\"\n"
    ));
    assert!(!e.contains(&body), "{e}");
    // Without TLS the default public URL stays http; with it, https.
    let ok = parse(&format!(
        "[server]\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n"
    ))
    .unwrap();
    assert!(ok.public_url().starts_with("https://"));
}
