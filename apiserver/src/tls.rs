//! The TLS side of the API: rustls (ring) with the serving certificate,
//! client certificates verified against the cluster CA (one from another CA
//! fails the handshake; none at all is let through, to be answered 401),
//! and HTTP/1.1 offered by ALPN.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::pki::Pki;
use crate::{Error, Result};

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

/// The certificates in a PEM text.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err("read PEM certificates", e))
}

/// The server's TLS configuration for `pki`.
pub fn server_config(pki: &Pki) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in pem_certs(&pki.ca_cert)? {
        roots
            .add(c)
            .map_err(|e| tls_err("trust the cluster CA", e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err("build the client verifier", e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key.as_bytes())
        .map_err(|e| tls_err("read the serving key", e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem_certs(&pki.serving_cert)?, key)
        .map_err(|e| tls_err("use the serving certificate", e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS configuration the API dials a node's API (kubelet port) with:
/// the node's serving certificate verified against the cluster CA, and
/// this agent's `system:node:<name>` client certificate presented.
pub fn node_client_config(pki: &Pki) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in pem_certs(&pki.ca_cert)? {
        roots
            .add(c)
            .map_err(|e| tls_err("trust the cluster CA", e))?;
    }
    let key = PrivateKeyDer::from_pem_slice(pki.node_key.as_bytes())
        .map_err(|e| tls_err("read the node client key", e))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(pem_certs(&pki.node_cert)?, key)
        .map_err(|e| tls_err("use the node client certificate", e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
