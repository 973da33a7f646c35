//! https served directly (rustls), for deployments without a reverse proxy. The certificate
//! and key are files; the gateway re-reads them when either changes (a renewal by certbot,
//! cert-manager or a hand copy), so new connections get the new certificate without a
//! restart. A pair that does not load is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates larger than this are refused (a chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(format!("`{}` is larger than 1 MiB", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// Loads a certificate chain and its key; the error names which file (`tls_cert` or
/// `tls_key`) and why, without the key's content.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, (&'static str, String)> {
    let pem = read(cert).map_err(|e| ("tls_cert", e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "tls_cert",
                format!("`{}` is not PEM certificates: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "tls_cert",
            format!("`{}` holds no certificate", cert.display()),
        ));
    }
    let pem = read(key).map_err(|e| ("tls_key", e))?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        (
            "tls_key",
            format!(
                "`{}` holds no private key in PEM (PKCS#8, PKCS#1 or SEC1)",
                key.display()
            ),
        )
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&private).map_err(|e| {
        (
            "tls_key",
            format!("`{}` is not a usable key: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        (
            "tls_key",
            format!("`{}` is not the key of the certificate: {e}", key.display()),
        )
    })?;
    Ok(certified)
}

/// The certificate in use, swapped when its files change.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Certificates {
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let stamps = (modified(cert), modified(key));
        let certified = load(cert, key).map_err(|(which, why)| format!("server.{which}: {why}"))?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(stamps),
        }))
    }

    /// Re-reads the files if either changed since last read; `true` when a new certificate
    /// is in use.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = (modified(&self.cert), modified(&self.key));
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if *seen == stamps {
            return false;
        }
        match load(&self.cert, &self.key) {
            Ok(c) => {
                *seen = stamps;
                if let Ok(mut cur) = self.current.write() {
                    *cur = Arc::new(c);
                }
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            // Half-written (the certificate replaced, the key not yet): tried again at the
            // next look, the old pair serving meanwhile.
            Err((which, why)) => {
                tracing::warn!(file = which, reason = %why, "TLS certificate not reloaded; the previous one stays");
                false
            }
        }
    }

    /// The acceptor for the listener: TLS 1.2 and 1.3, HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}
