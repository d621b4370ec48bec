//! A pod's `imagePullSecrets` as kubelet's credential keyring reads them:
//! `kubernetes.io/dockerconfigjson` (`.dockerconfigjson`, an `auths` map)
//! and `kubernetes.io/dockercfg` (`.dockercfg`, the bare map) Secrets,
//! whose keys match an image's `registry/path` by host (with `*` and `?`
//! globs per dot-separated part), port and path prefix. No network I/O.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::auth::{canonical_host, credentials, Credential, Entry};
use super::reference::Reference;

/// A docker-config key split as kubelet's `parseSchemelessURL` does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// Dot-separated host parts, each possibly a glob.
    host: Vec<String>,
    port: String,
    path: String,
    /// The key as written (the sort key of specificity).
    key: String,
}

impl Pattern {
    fn parse(key: &str) -> Pattern {
        let rest = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // As the docker client: `/v1/` and `/v2/` are API paths, not a
        // repository prefix.
        let path = match path.get(..4) {
            Some("/v1/" | "/v2/") => &path[3..],
            _ => path,
        };
        let authority = canonical_host(authority);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h.to_string(), p.to_string()),
            _ => (authority, String::new()),
        };
        Pattern {
            host: host.split('.').map(str::to_string).collect(),
            port,
            path: path.trim_end_matches('/').to_string(),
            key: key.to_string(),
        }
    }

    /// kubelet's URLsMatch: as many host parts, each matching its glob,
    /// the same port, and the image's path under the key's.
    fn matches(&self, target: &Pattern) -> bool {
        self.host.len() == target.host.len()
            && self.host.iter().zip(&target.host).all(|(g, t)| glob(g, t))
            && self.port == target.port
            && (self.path.is_empty()
                || target.path == self.path
                || target.path.starts_with(&format!("{}/", self.path)))
    }
}

/// `*` (any run of characters) and `?` (one character), as
/// `filepath.Match` has them within one host part.
fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

/// The credentials of a pod's pull secrets.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<(Pattern, Credential)>,
}

/// The Secret types that carry registry credentials.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

impl Keyring {
    /// Adds the credentials of one Secret (`type_` and `data`). Another
    /// type, or the type's key missing, is an error that says which.
    pub fn add_secret(&mut self, type_: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<()> {
        let (key, nested) = match type_ {
            DOCKER_CONFIG_JSON => (".dockerconfigjson", true),
            DOCKER_CFG => (".dockercfg", false),
            other => bail!("type {other:?} is not {DOCKER_CONFIG_JSON} or {DOCKER_CFG}"),
        };
        let Some(raw) = data.get(key) else {
            bail!("no {key} key");
        };
        let entries: BTreeMap<String, Entry> = if nested {
            #[derive(serde::Deserialize)]
            struct File {
                #[serde(default)]
                auths: BTreeMap<String, Entry>,
            }
            serde_json::from_slice::<File>(raw)
                .with_context(|| format!("{key}: parse the docker config JSON"))?
                .auths
        } else {
            serde_json::from_slice(raw).with_context(|| format!("{key}: parse the JSON"))?
        };
        for (k, c) in credentials(entries).with_context(|| key.to_string())? {
            self.entries.push((Pattern::parse(&k), c));
        }
        // Most specific first: kubelet sorts its index in reverse order.
        self.entries.sort_by(|a, b| b.0.key.cmp(&a.0.key));
        Ok(())
    }

    /// The credentials whose keys match `image`, most specific first.
    pub fn lookup(&self, image: &Reference) -> Vec<&Credential> {
        let target = Pattern::parse(&format!("{}/{}", image.domain, image.path));
        self.entries
            .iter()
            .filter(|(p, _)| p.matches(&target))
            .map(|(_, c)| c)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn auth(user: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"))
    }

    fn image(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn users(k: &Keyring, s: &str) -> Vec<String> {
        k.lookup(&image(s))
            .iter()
            .map(|c| c.username.clone())
            .collect()
    }

    #[test]
    fn keys_match_as_kubelets_keyring_matches_them() {
        let json = format!(
            r#"{{"auths": {{
                "registry.example.com": {{"auth": "{}"}},
                "registry.example.com/team": {{"auth": "{}"}},
                "*.example.org": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"username": "local", "password": "pw"}}
            }}}}"#,
            auth("host"),
            auth("team"),
            auth("glob"),
            auth("hub")
        );
        let mut k = Keyring::default();
        k.add_secret(
            DOCKER_CONFIG_JSON,
            &BTreeMap::from([(".dockerconfigjson".to_string(), json.into_bytes())]),
        )
        .unwrap();
        assert_eq!(
            users(&k, "registry.example.com/team/app:1"),
            ["team", "host"]
        );
        assert_eq!(users(&k, "registry.example.com/teamx/app"), ["host"]);
        assert_eq!(users(&k, "eu.example.org/app"), ["glob"]);
        assert!(
            users(&k, "a.eu.example.org/app").is_empty(),
            "a glob is one part"
        );
        assert_eq!(users(&k, "busybox"), ["hub"]);
        assert_eq!(users(&k, "127.0.0.1:5000/app"), ["local"]);
        assert!(
            users(&k, "127.0.0.1:5001/app").is_empty(),
            "ports must agree"
        );
        assert!(users(&k, "quay.io/app").is_empty());
    }

    #[test]
    fn dockercfg_secrets_and_bad_secrets() {
        let mut k = Keyring::default();
        let cfg = format!(r#"{{"quay.io": {{"auth": "{}"}}}}"#, auth("q"));
        k.add_secret(
            DOCKER_CFG,
            &BTreeMap::from([(".dockercfg".to_string(), cfg.into_bytes())]),
        )
        .unwrap();
        assert_eq!(users(&k, "quay.io/org/app"), ["q"]);
        let e = k
            .add_secret("Opaque", &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"Opaque\" is not kubernetes.io/dockerconfigjson"),
            "{e}"
        );
        let e = k
            .add_secret(DOCKER_CONFIG_JSON, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no .dockerconfigjson key");
        let bad = BTreeMap::from([(".dockerconfigjson".to_string(), b"{".to_vec())]);
        assert!(k.add_secret(DOCKER_CONFIG_JSON, &bad).is_err());
    }
}
