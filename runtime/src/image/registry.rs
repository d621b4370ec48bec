//! A client of one repository on a Docker Registry HTTP API v2 server:
//! manifests and blobs by GET, with the registry's auth dance (a 401 with
//! `WWW-Authenticate: Bearer realm=...` → a token from the realm, with
//! Basic credentials when the node has some; or plain Basic), redirects
//! (blob storage often lives elsewhere) and registry errors turned into
//! one readable line: `manifest unknown (404)`.

use anyhow::{anyhow, bail, Context, Result};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::auth::{parse_challenges, Credential, Registries};
use super::http::{self, query_escape, Response, Url};
use super::media::{self, MANIFEST_ACCEPT};
use super::reference::{Reference, DOCKER_HUB, DOCKER_HUB_ENDPOINT};

/// Manifests and indexes larger than this are refused (containerd's
/// limit too).
pub const MAX_MANIFEST: usize = 4 << 20;
const MAX_TOKEN: usize = 1 << 20;
const MAX_REDIRECTS: usize = 5;

/// One repository's client; it keeps the token it earned for later
/// requests of the same pull.
pub struct Client<'a> {
    regs: &'a Registries,
    /// The registry as the reference names it (`docker.io`).
    host: String,
    /// Where it is served, with the scheme.
    base: Url,
    repo: String,
    auth: Mutex<Option<String>>,
    /// A pull secret's credential for this image, used before the node's.
    secret: Option<Credential>,
}

/// A manifest or index as fetched, with the digest of its bytes.
pub struct Fetched {
    pub body: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl<'a> Client<'a> {
    pub fn new(regs: &'a Registries, r: &Reference) -> Result<Client<'a>> {
        let endpoint = if r.domain == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            r.domain.as_str()
        };
        let scheme = if regs.is_insecure(&r.domain) {
            "http"
        } else {
            "https"
        };
        let base = Url::parse(&format!("{scheme}://{endpoint}/"))?;
        Ok(Client {
            regs,
            host: r.domain.clone(),
            base,
            repo: r.path.clone(),
            auth: Mutex::new(None),
            secret: None,
        })
    }

    /// Uses `cred` (from a pod's imagePullSecrets) instead of the node's
    /// credential for this registry.
    pub fn with_secret(mut self, cred: Option<Credential>) -> Client<'a> {
        self.secret = cred;
        self
    }

    /// The credential to answer a challenge with: the pull secret's, else
    /// the node's.
    fn credential(&self) -> Option<&Credential> {
        self.secret
            .as_ref()
            .or_else(|| self.regs.credential(&self.host))
    }

    /// The manifest or index `object` (a tag or digest). When `object` is
    /// a digest, the bytes must hash to it.
    pub async fn manifest(&self, object: &str) -> Result<Fetched> {
        let path = format!("/v2/{}/manifests/{object}", self.repo);
        let resp = self.get(&path, Some(&MANIFEST_ACCEPT.join(", "))).await?;
        let media_type = resp.header("content-type").unwrap_or("").to_string();
        let body = resp
            .bytes(MAX_MANIFEST)
            .await
            .with_context(|| format!("manifest {object}"))?;
        let digest = media::sha256(&body);
        if object.starts_with("sha256:") && digest != object {
            bail!("manifest {object}: the registry sent content whose digest is {digest}");
        }
        Ok(Fetched {
            body,
            media_type,
            digest,
        })
    }

    /// The blob `digest`, its body not yet read.
    pub async fn blob(&self, digest: &str) -> Result<Response> {
        self.get(&format!("/v2/{}/blobs/{digest}", self.repo), None)
            .await
            .with_context(|| format!("blob {digest}"))
    }

    /// GET with auth: a 401 earns a token (or Basic) and one retry.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response> {
        let url = Url {
            path: path.to_string(),
            ..self.base.clone()
        };
        let mut authenticated = false;
        loop {
            let auth = self.auth.lock().await.clone();
            let resp = self.follow(url.clone(), accept, auth).await?;
            if resp.status == StatusCode::UNAUTHORIZED && !authenticated {
                authenticated = true;
                let challenge = resp
                    .headers
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(", ");
                if challenge.is_empty() {
                    return Err(self.failure(resp).await);
                }
                let value = self.authenticate(&challenge).await?;
                *self.auth.lock().await = Some(value);
                continue;
            }
            if !resp.status.is_success() {
                return Err(self.failure(resp).await);
            }
            return Ok(resp);
        }
    }

    /// One GET, following redirects; credentials go only to the host they
    /// were meant for.
    async fn follow(
        &self,
        mut url: Url,
        accept: Option<&str>,
        mut auth: Option<String>,
    ) -> Result<Response> {
        for _ in 0..=MAX_REDIRECTS {
            let tls = if url.https {
                Some(self.regs.tls()?)
            } else {
                None
            };
            let mut headers = Vec::new();
            if let Some(a) = accept {
                headers.push(("accept", a.to_string()));
            }
            if let Some(a) = &auth {
                headers.push(("authorization", a.clone()));
            }
            let resp = http::send(tls, Method::GET, &url, &headers).await?;
            if !resp.status.is_redirection() || resp.status == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let Some(location) = resp.header("location") else {
                bail!("GET {url}: {} without a Location", resp.status);
            };
            let next = url.join(location)?;
            if next.authority() != url.authority() || next.https != url.https {
                auth = None;
            }
            url = next;
        }
        bail!("GET {url}: more than {MAX_REDIRECTS} redirects")
    }

    /// Answers a challenge: the `Authorization` value to retry with.
    async fn authenticate(&self, header: &str) -> Result<String> {
        let challenges = parse_challenges(header)?;
        let cred = self.credential();
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            let Some(realm) = b.params.get("realm") else {
                bail!("{}: Bearer challenge without a realm", self.host);
            };
            let mut url = Url::parse(realm).context("the token realm")?;
            let scope = b
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.repo));
            let mut query = Vec::new();
            if let Some(s) = b.params.get("service") {
                query.push(format!("service={}", query_escape(s)));
            }
            query.push(format!("scope={}", query_escape(&scope)));
            let sep = if url.path.contains('?') { '&' } else { '?' };
            url.path = format!("{}{sep}{}", url.path, query.join("&"));
            if cred.is_some() && !url.https && !self.regs.is_insecure(&url.authority()) {
                bail!(
                    "the token service of {} is plain http ({realm}); credentials are only sent there when it is listed with --insecure-registry",
                    self.host
                );
            }
            let resp = self
                .follow(url.clone(), None, cred.map(|c| c.basic()))
                .await
                .context("get a token")?;
            if !resp.status.is_success() {
                let e = self.failure(resp).await;
                return Err(e.context(format!("get a token from {realm}")));
            }
            #[derive(Deserialize)]
            struct Token {
                token: Option<String>,
                access_token: Option<String>,
            }
            let body = resp.bytes(MAX_TOKEN).await.context("read the token")?;
            let t: Token = serde_json::from_slice(&body)
                .with_context(|| format!("the token service {realm} sent no JSON"))?;
            let Some(token) = t.token.or(t.access_token).filter(|t| !t.is_empty()) else {
                bail!("the token service {realm} sent no token");
            };
            return Ok(format!("Bearer {token}"));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(c) = cred else {
                bail!(
                    "unauthorized (401): no credentials for {} in the registry config or the pod's imagePullSecrets",
                    self.host
                );
            };
            return Ok(c.basic());
        }
        let schemes: Vec<_> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        bail!(
            "{}: unsupported authentication {}",
            self.host,
            schemes.join(", ")
        )
    }

    /// A failed answer as one line: the registry's error message (or the
    /// status reason) and the code, e.g. `manifest unknown (404)`.
    async fn failure(&self, resp: Response) -> anyhow::Error {
        #[derive(Deserialize)]
        struct Errors {
            errors: Vec<RegistryError>,
        }
        #[derive(Deserialize)]
        struct RegistryError {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let status = resp.status;
        let body = resp.bytes(64 << 10).await.unwrap_or_default();
        let msg = serde_json::from_slice::<Errors>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| {
                if e.message.is_empty() {
                    e.code.to_ascii_lowercase().replace('_', " ")
                } else {
                    e.message
                }
            })
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
            });
        let hint = if status == StatusCode::UNAUTHORIZED {
            if self.credential().is_some() {
                format!(" (the credentials for {} were refused)", self.host)
            } else {
                format!(
                    " (no credentials for {} in the registry config or the pod's imagePullSecrets)",
                    self.host
                )
            }
        } else {
            String::new()
        };
        anyhow!("{msg} ({}){hint}", status.as_u16())
    }
}

#[cfg(test)]
mod tests {
    //! The auth dance against a tiny registry on loopback that answers from
    //! a script: each request is recorded, so a test asserts what was sent.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex as StdMutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::image::auth::Credential;

    /// A request as the server saw it: path and headers (lower-case names).
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        headers: BTreeMap<String, String>,
    }

    type Handler = dyn Fn(&Seen, u16) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync;

    async fn serve(handler: Arc<Handler>) -> (u16, Arc<StdMutex<Vec<Seen>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&b[..n]);
                    if buf[0] == 0x16 {
                        // A TLS ClientHello: answer as a plain HTTP server does.
                        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        break;
                    }
                }
                if buf.first() == Some(&0x16) {
                    continue;
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let mut lines = text.split("\r\n");
                let path = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("")
                    .to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let req = Seen { path, headers };
                log.lock().unwrap().push(req.clone());
                let (code, hdrs, body) = handler(&req, port);
                let mut out = format!(
                    "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in hdrs {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = s.write_all(out.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            }
        });
        (port, seen)
    }

    fn regs(port: u16, cred: Option<(&str, &str)>) -> Registries {
        let mut auths = BTreeMap::new();
        if let Some((u, p)) = cred {
            auths.insert(
                format!("127.0.0.1:{port}"),
                Credential {
                    username: u.into(),
                    password: p.into(),
                },
            );
        }
        Registries::new(auths, &[format!("127.0.0.1:{port}")]).unwrap()
    }

    fn reference(port: u16) -> Reference {
        Reference::parse(&format!("127.0.0.1:{port}/test/app:1")).unwrap()
    }

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;

    #[tokio::test]
    async fn bearer_token_flow_uses_basic_credentials_at_the_realm() {
        let h: Arc<Handler> = Arc::new(|req: &Seen, port| {
            if req.path.starts_with("/token") {
                let ok = req.headers.get("authorization").map(String::as_str)
                    == Some(
                        Credential {
                            username: "u".into(),
                            password: "p".into(),
                        }
                        .basic()
                        .as_str(),
                    );
                return if ok {
                    (200, vec![], br#"{"token":"T0K3N"}"#.to_vec())
                } else {
                    (
                        401,
                        vec![],
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad login"}]}"#.to_vec(),
                    )
                };
            }
            if req.headers.get("authorization").map(String::as_str) == Some("Bearer T0K3N") {
                return (
                    200,
                    vec![("content-type".into(), media::OCI_MANIFEST.into())],
                    MANIFEST.to_vec(),
                );
            }
            let challenge = format!(
                r#"Bearer realm="http://127.0.0.1:{port}/token",service="test registry",scope="repository:test/app:pull""#
            );
            (
                401,
                vec![("www-authenticate".into(), challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_vec(),
            )
        });
        let (port, log) = serve(h).await;
        let regs = regs(port, Some(("u", "p")));
        let c = Client::new(&regs, &reference(port)).unwrap();
        let m = c.manifest("1").await.unwrap();
        assert_eq!(m.body, MANIFEST);
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        assert_eq!(m.digest, media::sha256(MANIFEST));
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].path, "/v2/test/app/manifests/1");
        assert!(seen[0].headers["accept"].contains(media::OCI_INDEX));
        assert_eq!(
            seen[1].path,
            "/token?service=test%20registry&scope=repository%3Atest%2Fapp%3Apull"
        );
        assert_eq!(seen[2].headers["authorization"], "Bearer T0K3N");

        // The token is kept for the next request of the same client.
        let _ = c.manifest("1").await.unwrap();
        let again = log.lock().unwrap().clone();
        assert_eq!(again.len(), 4, "{again:?}");
        assert_eq!(again[3].headers["authorization"], "Bearer T0K3N");

        // Wrong credentials: the token service's refusal is the error.
        let bad = Registries::new(
            BTreeMap::from([(
                format!("127.0.0.1:{port}"),
                Credential {
                    username: "u".into(),
                    password: "wrong".into(),
                },
            )]),
            &[format!("127.0.0.1:{port}")],
        )
        .unwrap();
        let e = Client::new(&bad, &reference(port))
            .unwrap()
            .manifest("1")
            .await
            .err()
            .unwrap();
        let e = format!("{e:#}");
        assert!(
            e.contains("bad login (401)") && e.contains("refused"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn basic_auth_and_registry_errors() {
        let want = Credential {
            username: "alice".into(),
            password: "s3cret".into(),
        }
        .basic();
        let h: Arc<Handler> = Arc::new(move |req: &Seen, _| {
            if req.headers.get("authorization") != Some(&want) {
                return (
                    401,
                    vec![("www-authenticate".into(), r#"Basic realm="reg""#.into())],
                    vec![],
                );
            }
            if req.path.ends_with("/manifests/1") {
                return (
                    200,
                    vec![("content-type".into(), media::OCI_MANIFEST.into())],
                    MANIFEST.to_vec(),
                );
            }
            (404, vec![], br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#.to_vec())
        });
        let (port, _) = serve(h).await;

        let with = regs(port, Some(("alice", "s3cret")));
        let c = Client::new(&with, &reference(port)).unwrap();
        assert_eq!(c.manifest("1").await.unwrap().body, MANIFEST);
        let e = format!("{:#}", c.manifest("2").await.err().unwrap());
        assert_eq!(e, "manifest unknown (404)");

        let without = regs(port, None);
        let e = format!(
            "{:#}",
            Client::new(&without, &reference(port))
                .unwrap()
                .manifest("1")
                .await
                .err()
                .unwrap()
        );
        assert!(e.contains("no credentials for 127.0.0.1:"), "{e}");

        // A pod's pull secret answers where the node has no credential,
        // and wins over a wrong one the node has.
        let secret = Credential {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let c = Client::new(&without, &reference(port))
            .unwrap()
            .with_secret(Some(secret.clone()));
        assert_eq!(c.manifest("1").await.unwrap().body, MANIFEST);
        let wrong = regs(port, Some(("alice", "nope")));
        let c = Client::new(&wrong, &reference(port))
            .unwrap()
            .with_secret(Some(secret));
        assert_eq!(c.manifest("1").await.unwrap().body, MANIFEST);
    }

    #[tokio::test]
    async fn redirects_drop_credentials_for_other_hosts_and_digests_are_checked() {
        let (other, other_seen) =
            serve(Arc::new(|_: &Seen, _| (200, vec![], b"blob".to_vec()))).await;
        let h: Arc<Handler> = Arc::new(move |req: &Seen, _| {
            if req.path.contains("/blobs/") {
                return (
                    307,
                    vec![(
                        "location".into(),
                        format!("http://localhost:{other}/data?sig=1"),
                    )],
                    vec![],
                );
            }
            (200, vec![], MANIFEST.to_vec())
        });
        let (port, _) = serve(h).await;
        let regs = regs(port, Some(("u", "p")));
        let c = Client::new(&regs, &reference(port)).unwrap();
        *c.auth.lock().await = Some("Basic secret".into());
        let digest = media::sha256(b"blob");
        let body = c.blob(&digest).await.unwrap().bytes(100).await.unwrap();
        assert_eq!(body, b"blob");
        let seen = other_seen.lock().unwrap().clone();
        assert_eq!(seen[0].path, "/data?sig=1");
        assert!(!seen[0].headers.contains_key("authorization"), "{seen:?}");

        let wrong = format!("sha256:{}", "1".repeat(64));
        let e = format!("{:#}", c.manifest(&wrong).await.err().unwrap());
        assert!(e.contains("whose digest is"), "{e}");
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_names_tls() {
        let (port, _) = serve(Arc::new(|_: &Seen, _| (200, vec![], vec![]))).await;
        let secure = Registries::new(BTreeMap::new(), &[]).unwrap();
        if secure.tls().is_err() {
            eprintln!(
                "SKIP https_to_a_plain_http_server_names_tls: no CA bundle at {}",
                super::super::auth::SYSTEM_CA_FILE
            );
            return;
        }
        let e = Client::new(&secure, &reference(port))
            .unwrap()
            .manifest("1")
            .await
            .err()
            .unwrap();
        let e = format!("{e:#}");
        assert!(
            e.contains("TLS handshake") && e.contains("--insecure-registry"),
            "{e}"
        );
    }
}
