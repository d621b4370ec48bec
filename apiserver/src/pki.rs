//! The cluster's identity on one node: a CA, the API's serving certificate
//! and the admin client certificate, kept as PEM files under
//! `<data-dir>/tls/` (keys 0600) and reused on restart, and the admin
//! kubeconfig built from them. It never logs key material.
//!
//! On a shared control plane the CA comes from the store
//! ([`crate::bootstrap`]) and is installed here first.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// The CA's common name.
const CA_NAME: &str = "knode-ca";

/// The PEM files of one node's identity.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate clients and the server trust.
    pub ca_cert: String,
    /// The API's serving certificate and key.
    pub serving_cert: String,
    pub serving_key: String,
    /// The admin client certificate (`system:admin` in `system:masters`).
    pub admin_cert: String,
    pub admin_key: String,
    /// This node's client certificate (`system:node:<name>` in
    /// `system:nodes`): what the Node authorizer lets a kubelet do.
    pub node_cert: String,
    pub node_key: String,
}

/// What the serving certificate must name.
#[derive(Debug, Clone, Default)]
pub struct ServingNames {
    /// DNS names (the node name, `localhost`, `kubernetes...`).
    pub dns: Vec<String>,
    /// Addresses (node IPs, 127.0.0.1, the `kubernetes` ClusterIP).
    pub ips: Vec<IpAddr>,
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Pki(format!("{what}: {e}"))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Pki(format!("{what} {}: {e}", path.display()))
}

/// The directory the identity lives in.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Writes `text` to `path` with `mode`, replacing it atomically.
pub fn write_private(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("write", &tmp, e))?;
    // The mode of a file that existed is not changed by open(2).
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("chmod", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("rename onto", path, e))
}

fn read(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// The time `days` from now (negative: in the past).
fn days_from_now(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = days_from_now(-1);
    p.not_after = days_from_now(3650);
    p
}

fn leaf_params(cn: &str, orgs: &[&str], eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    for o in orgs {
        p.distinguished_name.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    p.not_before = days_from_now(-1);
    p.not_after = days_from_now(365);
    p
}

/// A leaf certificate and key signed by `ca`.
fn issue(params: CertificateParams, ca: &Issuer<'_, KeyPair>) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(|e| pki_err("generate a key", e))?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|e| pki_err("sign a certificate", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads the node's identity from `<data-dir>/tls`, creating what is
/// missing: the CA and admin certificate once, the node's client
/// certificate once per node name, the serving certificate on every start
/// (so a new node IP is in it).
pub fn ensure(data_dir: &Path, names: &ServingNames, node: &str) -> Result<Pki> {
    let d = dir(data_dir);
    let (ca_cert, key) = local_ca(data_dir)?;
    let key = KeyPair::from_pem(&key).map_err(|e| pki_err("load the CA key", e))?;
    // Signing needs the CA's name and key only: the same parameters give
    // the same issuer name and key identifier as the stored certificate.
    let ca = Issuer::new(ca_params(), key);

    let mut serving = leaf_params("kube-apiserver", &[], ExtendedKeyUsagePurpose::ServerAuth);
    for n in &names.dns {
        if let Ok(s) = n.clone().try_into() {
            serving.subject_alt_names.push(SanType::DnsName(s));
        }
    }
    serving
        .subject_alt_names
        .extend(names.ips.iter().copied().map(SanType::IpAddress));
    let (serving_cert, serving_key) = issue(serving, &ca)?;
    write_private(&d.join("serving.crt"), &serving_cert, 0o644)?;
    write_private(&d.join("serving.key"), &serving_key, 0o600)?;

    let (admin_cert, admin_key) = client(&d, "admin", "system:admin", "system:masters", &ca)?;
    let (node_cert, node_key) = client(
        &d,
        "node",
        &format!("system:node:{node}"),
        "system:nodes",
        &ca,
    )?;
    Ok(Pki {
        ca_cert,
        serving_cert,
        serving_key,
        admin_cert,
        admin_key,
        node_cert,
        node_key,
    })
}

/// The CA of `<data-dir>/tls` (certificate and key PEM), created when
/// missing.
pub fn local_ca(data_dir: &Path) -> Result<(String, String)> {
    let d = dir(data_dir);
    fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("chmod", &d, e))?;
    let (ca_crt, ca_key) = (d.join("ca.crt"), d.join("ca.key"));
    if let (Some(c), Some(k)) = (read(&ca_crt)?, read(&ca_key)?) {
        return Ok((c, k));
    }
    let key = KeyPair::generate().map_err(|e| pki_err("generate the CA key", e))?;
    let cert = ca_params()
        .self_signed(&key)
        .map_err(|e| pki_err("sign the CA", e))?;
    write_private(&ca_key, &key.serialize_pem(), 0o600)?;
    write_private(&ca_crt, &cert.pem(), 0o644)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes `cert`/`key` the CA of `<data-dir>/tls` (the cluster's, from the
/// store). When it replaces another CA, the client certificates that CA
/// issued go, so [`ensure`] issues new ones.
pub fn install_ca(data_dir: &Path, cert: &str, key: &str) -> Result<()> {
    KeyPair::from_pem(key).map_err(|e| pki_err("load the cluster CA key", e))?;
    let d = dir(data_dir);
    fs::create_dir_all(&d).map_err(|e| io_err("create", &d, e))?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("chmod", &d, e))?;
    let (ca_crt, ca_key) = (d.join("ca.crt"), d.join("ca.key"));
    if read(&ca_crt)?.as_deref() == Some(cert) && read(&ca_key)?.as_deref() == Some(key) {
        return Ok(());
    }
    for f in ["admin.crt", "admin.key", "node.crt", "node.key"] {
        match fs::remove_file(d.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &d.join(f), e)),
        }
    }
    write_private(&ca_key, key, 0o600)?;
    write_private(&ca_crt, cert, 0o644)
}

/// The client certificate `<file>.crt`/`.key` for `cn` in `org`: the
/// stored one when it names `cn`, else a new one.
fn client(
    d: &Path,
    file: &str,
    cn: &str,
    org: &str,
    ca: &Issuer<'_, KeyPair>,
) -> Result<(String, String)> {
    let (crt, key) = (d.join(format!("{file}.crt")), d.join(format!("{file}.key")));
    if let (Some(c), Some(k)) = (read(&crt)?, read(&key)?) {
        let names_cn = crate::tls::pem_certs(&c)
            .ok()
            .and_then(|der| crate::x509::subject(der.first()?))
            .is_some_and(|s| s.common_name == cn);
        if names_cn {
            return Ok((c, k));
        }
    }
    let params = leaf_params(cn, &[org], ExtendedKeyUsagePurpose::ClientAuth);
    let (c, k) = issue(params, ca)?;
    write_private(&key, &k, 0o600)?;
    write_private(&crt, &c, 0o644)?;
    Ok((c, k))
}

/// Base64 (standard alphabet, padded), for kubeconfig's `*-data` fields.
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The admin kubeconfig for a server at `server` (`https://127.0.0.1:6443`).
pub fn admin_kubeconfig(pki: &Pki, server: &str) -> String {
    kubeconfig(pki, server, "admin", &pki.admin_cert, &pki.admin_key)
}

/// This node's kubeconfig (its `system:node:<name>` identity).
pub fn node_kubeconfig(pki: &Pki, server: &str) -> String {
    kubeconfig(pki, server, "node", &pki.node_cert, &pki.node_key)
}

fn kubeconfig(pki: &Pki, server: &str, user: &str, cert: &str, key: &str) -> String {
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "knode", "cluster": {
            "server": server,
            "certificate-authority-data": base64(pki.ca_cert.as_bytes()),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": base64(cert.as_bytes()),
            "client-key-data": base64(key.as_bytes()),
        }}],
        "contexts": [{"name": "knode", "context": {"cluster": "knode", "user": user}}],
        "current-context": "knode",
        "preferences": {},
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("knode-pki-{}", std::process::id()));
        let names = ServingNames {
            dns: vec!["localhost".into(), "node-1".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "10.96.0.1".parse().unwrap()],
        };
        let a = ensure(&dir, &names, "node-1").unwrap();
        let b = ensure(&dir, &names, "node-1").unwrap();
        assert_eq!(a.ca_cert, b.ca_cert);
        assert_eq!(a.admin_cert, b.admin_cert);
        assert_eq!(a.node_cert, b.node_cert);
        let node = crate::x509::subject(&crate::tls::pem_certs(&a.node_cert).unwrap()[0]).unwrap();
        assert_eq!(node.common_name, "system:node:node-1");
        assert_eq!(node.organizations, ["system:nodes"]);
        // A renamed node gets a certificate of its new name.
        let c = ensure(&dir, &names, "node-2").unwrap();
        assert_ne!(a.node_cert, c.node_cert);
        let mode = |f: &str| {
            fs::metadata(dir.join("tls").join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("admin.key"), 0o600);
        assert_eq!(mode("serving.key"), 0o600);
        let der = crate::tls::pem_certs(&a.admin_cert).unwrap();
        let id = crate::x509::subject(&der[0]).unwrap();
        assert_eq!(id.common_name, "system:admin");
        assert_eq!(id.organizations, ["system:masters"]);
        let cfg = admin_kubeconfig(&a, "https://127.0.0.1:6443");
        assert!(cfg.contains("server: https://127.0.0.1:6443"), "{cfg}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_installed_ca_replaces_the_local_one_and_its_client_certificates() {
        let dir = std::env::temp_dir().join(format!("knode-pki-install-{}", std::process::id()));
        let other = std::env::temp_dir().join(format!("knode-pki-other-{}", std::process::id()));
        let names = ServingNames::default();
        let a = ensure(&dir, &names, "n1").unwrap();
        let (cert, key) = local_ca(&other).unwrap();
        assert_ne!(cert, a.ca_cert);
        install_ca(&dir, &cert, &key).unwrap();
        let b = ensure(&dir, &names, "n1").unwrap();
        assert_eq!(b.ca_cert, cert);
        assert_ne!(b.admin_cert, a.admin_cert, "issued again by the new CA");
        assert_ne!(b.node_cert, a.node_cert);
        // Installing the same CA again keeps what it issued.
        install_ca(&dir, &cert, &key).unwrap();
        assert_eq!(ensure(&dir, &names, "n1").unwrap().admin_cert, b.admin_cert);
        assert!(install_ca(&dir, &cert, "not a key").is_err());
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&other).unwrap();
    }
}
