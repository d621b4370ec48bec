//! Image references as docker spells them (`busybox`, `host:5000/a/b:1`,
//! `name@sha256:...`), parsed by the distribution grammar and normalized
//! the way docker does, so that `busybox` and
//! `docker.io/library/busybox:latest` name one image. Pure: no I/O.

use std::fmt;

use anyhow::{bail, Result};

/// The registry of names without a domain.
pub const DOCKER_HUB: &str = "docker.io";
/// Where `docker.io` is actually served.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
const MAX_NAME: usize = 255;

/// A parsed, normalized reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `quay.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// The repository path inside the registry: `library/busybox`.
    pub path: String,
    /// `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `sha256:...`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `s` and fills in docker's defaults (domain, `library/`,
    /// `:latest`). The error names what is wrong.
    pub fn parse(s: &str) -> Result<Reference> {
        let r = Raw::split(s)?;
        let (domain, path) = split_domain(r.name);
        validate_domain(s, &domain)?;
        validate_path(s, &path)?;
        if domain.len() + 1 + path.len() > MAX_NAME {
            bail!("invalid image reference {s:?}: the name is longer than {MAX_NAME} characters");
        }
        let tag = match (r.tag, r.digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest: r.digest.map(str::to_string),
        })
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// there is one (it pins the content), else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `busybox` → `docker.io/library/busybox:latest`; an error for a
/// reference docker would refuse.
pub fn normalize(reference: &str) -> Result<String> {
    Ok(Reference::parse(reference)?.to_string())
}

/// True when the reference, as the user wrote it, names no tag other than
/// `latest` and no digest: Kubernetes pulls such images every time.
pub fn is_latest(reference: &str) -> bool {
    match Raw::split(reference) {
        Ok(r) => r.digest.is_none() && r.tag.is_none_or(|t| t == "latest"),
        Err(_) => false,
    }
}

/// A reference cut into its parts, before any defaults.
struct Raw<'a> {
    name: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> Raw<'a> {
    fn split(s: &'a str) -> Result<Raw<'a>> {
        if s.is_empty() {
            bail!("invalid image reference: empty");
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            bail!("invalid image reference {s:?}: contains {c:?}");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d)
                    .map_err(|e| anyhow::anyhow!("invalid image reference {s:?}: {e}"))?;
                (n, Some(d))
            }
            None => (s, None),
        };
        // A tag follows the last `:` that comes after the last `/`
        // (an earlier `:` is the registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                bail!(
                    "invalid image reference {s:?}: tag {t:?} must be 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
                );
            }
        }
        if name.is_empty() {
            bail!("invalid image reference {s:?}: the repository name is empty");
        }
        Ok(Raw { name, tag, digest })
    }
}

/// docker's rule: the first component is a registry when it has a `.` or a
/// `:`, is `localhost`, or has upper case (which no repository may have).
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    (domain, path)
}

fn validate_domain(s: &str, domain: &str) -> Result<()> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // [IPv6]:port
        let Some((ip, after)) = rest.split_once(']') else {
            bail!("invalid image reference {s:?}: registry {domain:?} has an unclosed `[`");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            bail!("invalid image reference {s:?}: registry {domain:?} is not a valid IPv6 address");
        }
        (None, after.strip_prefix(':'))
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            bail!("invalid image reference {s:?}: registry host {h:?} is not a valid host name");
        }
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.chars().all(|c| c.is_ascii_digit()) {
            bail!("invalid image reference {s:?}: registry port {p:?} is not a number");
        }
    }
    Ok(())
}

/// Path components: lower-case letters and digits, joined by `.`, `_`,
/// `__` or runs of `-`.
fn validate_path(s: &str, path: &str) -> Result<()> {
    for comp in path.split('/') {
        if comp.is_empty() {
            bail!("invalid image reference {s:?}: empty path component");
        }
        if comp.chars().any(|c| c.is_ascii_uppercase()) {
            bail!("invalid image reference {s:?}: repository name must be lowercase");
        }
        if !valid_component(comp) {
            bail!(
                "invalid image reference {s:?}: path component {comp:?} must be lower-case letters and digits separated by `.`, `_`, `__` or `-`"
            );
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or a run of `-`.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    !t.is_empty()
        && t.len() <= 128
        && t.starts_with(word)
        && t.chars().all(|c| word(c) || c == '.' || c == '-')
}

/// `sha256:` and 64 lower-case hex digits: the only digest this node
/// stores, and safe to put in paths and URLs.
pub fn validate_digest(d: &str) -> Result<()> {
    let Some((alg, hex)) = d.split_once(':') else {
        bail!("digest {d:?} is not `algorithm:hex`");
    };
    if alg != "sha256" {
        bail!("digest {d:?}: only sha256 is supported");
    }
    if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        bail!("digest {d:?}: sha256 needs 64 lower-case hex digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("user/app:v2", "docker.io/user/app:v2"),
            ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
            ("localhost/app", "localhost/app:latest"),
            (
                "127.0.0.1:5000/test/busybox:1",
                "127.0.0.1:5000/test/busybox:1",
            ),
            ("registry:5000/a", "registry:5000/a:latest"),
            ("knode.io/pause:0.1.0-abc", "knode.io/pause:0.1.0-abc"),
            ("a__b/c-d/e.f_g", "docker.io/a__b/c-d/e.f_g:latest"),
            ("a---b", "docker.io/library/a---b:latest"),
            ("[::1]:5000/x:1", "[::1]:5000/x:1"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
        let with_digest = format!("busybox@{D}");
        assert_eq!(
            normalize(&with_digest).unwrap(),
            format!("docker.io/library/busybox@{D}")
        );
        let both = format!("h.io/a:1@{D}");
        let r = Reference::parse(&both).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), both);
    }

    #[test]
    fn bad_references_say_why() {
        let cases = [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("a b", "contains"),
            ("a//b", "empty path component"),
            ("a/b/", "empty path component"),
            ("-a", "path component"),
            ("a_", "path component"),
            ("a...b", "path component"),
            ("a___b", "path component"),
            ("busybox@sha256:abc", "64"),
            ("busybox@md5:abc", "sha256"),
            ("h:x/a", "port"),
            ("h-.io/a", "host"),
            (":1", "empty"),
        ];
        for (input, want) in cases {
            let e = normalize(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e}");
        }
        let long = format!("h.io/{}", "a".repeat(260));
        assert!(normalize(&long).unwrap_err().to_string().contains("longer"));
    }

    #[test]
    fn latest_is_what_the_user_wrote() {
        assert!(is_latest("busybox"));
        assert!(is_latest("busybox:latest"));
        assert!(is_latest("127.0.0.1:5000/busybox"));
        assert!(!is_latest("127.0.0.1:5000/busybox:1"));
        assert!(!is_latest(&format!("busybox@{D}")));
        assert!(!is_latest("Bad Name"));
    }
}
