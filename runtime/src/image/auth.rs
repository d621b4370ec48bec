//! What the node knows about registries: credentials from a docker-config
//! file (`{"auths": {"host:port": {"auth": "<base64 user:pass>"}}}`), which
//! registries are plain HTTP, the TLS roots; and the parser of a
//! registry's `WWW-Authenticate` challenge. No network I/O here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use super::reference::{DOCKER_HUB, DOCKER_HUB_ENDPOINT};

/// The system's CA bundle (Debian's ca-certificates).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

impl Credential {
    /// The `Authorization: Basic ...` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Registry credentials, plain-HTTP registries and TLS roots, loaded once
/// at start and shared by every pull.
pub struct Registries {
    auths: BTreeMap<String, Credential>,
    insecure: BTreeSet<String>,
    ca_file: PathBuf,
    tls: OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, String>>,
}

impl fmt::Debug for Registries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registries")
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Registries {
    /// Reads the docker-style credentials file `registry_config` (a missing
    /// file means no credentials) and takes the `insecure` registries.
    pub fn load(registry_config: &Path, insecure: &[String]) -> Result<Registries> {
        let auths = match std::fs::read_to_string(registry_config) {
            Ok(text) => parse_docker_config(&text)
                .with_context(|| format!("registry config {}", registry_config.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("read registry config {}", registry_config.display()))
            }
        };
        Registries::new(auths, insecure)
    }

    /// Registries from parts (the CLI and tests).
    pub fn new(auths: BTreeMap<String, Credential>, insecure: &[String]) -> Result<Registries> {
        let mut set = BTreeSet::new();
        for (i, h) in insecure.iter().enumerate() {
            let h = h.trim();
            if h.is_empty() || h.contains(['/', ' ']) {
                bail!("insecure-registries[{i}]: {h:?} is not `host` or `host:port`");
            }
            set.insert(canonical_host(h));
        }
        Ok(Registries {
            auths,
            insecure: set,
            ca_file: PathBuf::from(SYSTEM_CA_FILE),
            tls: OnceLock::new(),
        })
    }

    /// Uses `path` instead of the system CA bundle.
    #[cfg(test)]
    pub fn with_ca_file(mut self, path: &Path) -> Registries {
        self.ca_file = path.to_path_buf();
        self
    }

    /// The credential for registry `host` (as in the reference: `docker.io`,
    /// `127.0.0.1:5000`).
    pub fn credential(&self, host: &str) -> Option<&Credential> {
        self.auths.get(&canonical_host(host))
    }

    /// True when `host` (`host:port`, or a bare host) is reached over plain
    /// HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        let h = canonical_host(host);
        self.insecure.contains(&h)
    }

    /// The TLS client configuration: the CA bundle, read once.
    pub fn tls(&self) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
        self.tls
            .get_or_init(|| tls_config(&self.ca_file).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!(e))
    }
}

/// The host part of a docker-config key or reference domain, with
/// docker.io's aliases folded into `docker.io`.
pub(super) fn canonical_host(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | DOCKER_HUB_ENDPOINT => DOCKER_HUB.to_string(),
        _ => k,
    }
}

/// The `auths` of a docker config file. Each entry has `auth`
/// (base64 of `user:password`) or `username` and `password`.
pub fn parse_docker_config(text: &str) -> Result<BTreeMap<String, Credential>> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    let f: File = serde_json::from_str(text).context("parse the docker config JSON")?;
    Ok(credentials(f.auths)?
        .into_iter()
        .map(|(key, c)| (canonical_host(&key), c))
        .collect())
}

/// One entry of a docker config's `auths` (or of a `.dockercfg`).
#[derive(Deserialize)]
pub(super) struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The credentials of docker-config entries, by their keys as written.
pub(super) fn credentials(entries: BTreeMap<String, Entry>) -> Result<Vec<(String, Credential)>> {
    let mut out = Vec::new();
    for (key, e) in entries {
        let cred = match (
            e.auth.as_deref().filter(|a| !a.is_empty()),
            e.username,
            e.password,
        ) {
            (Some(a), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|err| anyhow!("auths.{key:?}.auth: not base64: {err}"))?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| anyhow!("auths.{key:?}.auth: not UTF-8 after base64 decoding"))?;
                let Some((u, p)) = raw.split_once(':') else {
                    bail!("auths.{key:?}.auth: must be base64 of `user:password`");
                };
                Credential {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            }
            (None, Some(u), Some(p)) => Credential {
                username: u,
                password: p,
            },
            (None, Some(_), None) => bail!("auths.{key:?}: username without password"),
            // An entry without a usable secret (e.g. only an identity
            // token for a credential helper) gives no credential.
            _ => continue,
        };
        out.push((key, cred));
    }
    Ok(out)
}

fn tls_config(ca_file: &Path) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("read CA certificates from {}", ca_file.display()))?;
    for c in certs {
        let c = c.with_context(|| format!("parse CA certificates in {}", ca_file.display()))?;
        // A certificate rustls cannot use is skipped, as every TLS
        // client does with a system bundle.
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        bail!("no CA certificate in {}", ca_file.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lower case: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names in lower case.
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://auth.example/token",service="x",scope="a:b:pull"`
/// (several challenges may share one header, separated by commas).
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut s = header.trim();
    while !s.is_empty() {
        s = s.trim_start_matches([',', ' ', '\t']);
        if s.is_empty() {
            break;
        }
        let tok_end = s.find(|c: char| !is_tchar(c)).unwrap_or(s.len());
        if tok_end == 0 {
            bail!("WWW-Authenticate {header:?}: expected a scheme or parameter at {s:?}");
        }
        let token = &s[..tok_end];
        let rest = s[tok_end..].trim_start_matches([' ', '\t']);
        if let Some(after_eq) = rest.strip_prefix('=') {
            // A parameter of the current challenge.
            let Some(ch) = out.last_mut() else {
                bail!("WWW-Authenticate {header:?}: parameter before any scheme");
            };
            let after_eq = after_eq.trim_start_matches([' ', '\t']);
            let (value, remaining) = if let Some(q) = after_eq.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                v.push(n);
                            }
                        }
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => v.push(c),
                    }
                }
                let Some(end) = end else {
                    bail!("WWW-Authenticate {header:?}: unterminated quoted string");
                };
                (v, &q[end..])
            } else {
                let end = after_eq.find([',', ' ', '\t']).unwrap_or(after_eq.len());
                (after_eq[..end].to_string(), &after_eq[end..])
            };
            ch.params.insert(token.to_ascii_lowercase(), value);
            s = remaining;
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            s = rest;
        }
    }
    if out.is_empty() {
        bail!("WWW-Authenticate {header:?}: no challenge");
    }
    Ok(out)
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auth_and_username_password() {
        let text = r#"{
            "auths": {
                "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
                "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
                "helper.example": {"identitytoken": "xyz"}
            },
            "credsStore": "desktop"
        }"#;
        let a = parse_docker_config(text).unwrap();
        let r = Registries::new(a, &[]).unwrap();
        let c = r.credential("127.0.0.1:5000").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(r.credential("docker.io").unwrap().username, "hub");
        assert!(r.credential("helper.example").is_none());
        assert!(r.credential("127.0.0.1:5001").is_none());
        assert_eq!(c.basic(), "Basic dXNlcjpwYTpzcw==");
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(parse_docker_config("{}").unwrap().is_empty());
    }

    #[test]
    fn docker_config_errors_name_the_entry() {
        for (text, want) in [
            (r#"{"auths": {"h": {"auth": "!!!"}}}"#, r#"auths."h".auth"#),
            (r#"{"auths": {"h": {"auth": "dXNlcg=="}}}"#, "user:password"),
            (r#"{"auths": {"h": {"username": "u"}}}"#, "without password"),
            (r#"{"auths": []}"#, "docker config"),
        ] {
            let e = format!("{:#}", parse_docker_config(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn insecure_registries_match_host_and_port() {
        let r = Registries::new(
            BTreeMap::new(),
            &["127.0.0.1:5000".into(), "Reg.local".into()],
        )
        .unwrap();
        assert!(r.is_insecure("127.0.0.1:5000"));
        assert!(!r.is_insecure("127.0.0.1:5001"));
        assert!(r.is_insecure("reg.local"));
        assert!(Registries::new(BTreeMap::new(), &["http://x/y".into()]).is_err());
    }

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");

        let c = parse_challenges(r#"Basic realm="Registry \"Realm\"""#).unwrap();
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], r#"Registry "Realm""#);

        let c = parse_challenges(r#"Basic realm=x, Bearer Realm="r", error="insufficient_scope""#)
            .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "x");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "r");
        assert_eq!(c[1].params["error"], "insufficient_scope");

        assert!(parse_challenges("").is_err());
        assert!(parse_challenges(r#"Bearer realm="open"#).is_err());
        let e = parse_challenges(r#"realm="x""#).unwrap_err().to_string();
        assert!(e.contains("before any scheme"), "{e}");
    }

    #[test]
    fn tls_roots_from_a_pem_bundle() {
        let r = Registries::new(BTreeMap::new(), &[]).unwrap();
        if Path::new(SYSTEM_CA_FILE).exists() {
            r.tls().expect("system CA bundle");
        }
        let missing = Registries::new(BTreeMap::new(), &[])
            .unwrap()
            .with_ca_file(Path::new("/nonexistent/ca.pem"));
        let e = missing.tls().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
