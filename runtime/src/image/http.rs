//! The HTTP/1.1 client registries are spoken to with: one connection per
//! request (hyper), TLS by rustls with the node's CA bundle, plain TCP only
//! when the caller passes no TLS config, and a timeout on connecting, on
//! the answer and on every read of the body. Auth and redirects are the
//! registry client's business, not this module's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// A body that sends nothing for this long is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// An absolute `http(s)://` URL, cut into what a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url> {
        let uri: Uri = s.parse().with_context(|| format!("URL {s:?}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("URL {s:?}: only http and https are supported"),
        };
        let Some(host) = uri.host() else {
            bail!("URL {s:?}: no host");
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Url {
            https,
            host,
            port,
            path,
        })
    }

    /// `host:port` as the Host header and error messages want it.
    pub fn authority(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    /// `Location` of a redirect, relative to this URL.
    pub fn join(&self, location: &str) -> Result<Url> {
        if location.starts_with("http://") || location.starts_with("https://") {
            return Url::parse(location);
        }
        if location.starts_with("//") {
            let scheme = if self.https { "https:" } else { "http:" };
            return Url::parse(&format!("{scheme}{location}"));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Ok(Url {
            path,
            ..self.clone()
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// An answer whose body has not been read yet.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

impl Response {
    /// A header as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| anyhow!("no data for {}s", READ_TIMEOUT.as_secs()))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(anyhow!("read the body: {e}")),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, refused when longer than `limit`.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > limit {
                bail!("the answer is larger than {limit} bytes");
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }
}

/// Sends one request with an empty body. `tls` must be given for an
/// `https` URL and is refused for an `http` one, so a caller cannot fall
/// back to plain text by mistake.
pub async fn send(
    tls: Option<Arc<ClientConfig>>,
    method: Method,
    url: &Url,
    headers: &[(&str, String)],
) -> Result<Response> {
    let mut req = Request::builder()
        .method(method)
        .uri(url.path.as_str())
        .header("host", url.authority())
        .header("user-agent", concat!("knode/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        let v = HeaderValue::from_str(v).with_context(|| format!("header {k}"))?;
        req = req.header(*k, v);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("build the request for {url}"))?;
    let addr = (url.host.as_str(), url.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {}: timed out", url.authority()))?
        .with_context(|| format!("connect to {}", url.authority()))?;
    let _ = tcp.set_nodelay(true);
    let answer = match (url.https, tls) {
        (true, Some(cfg)) => {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| anyhow!("{}: not a TLS server name: {e}", url.host))?;
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TlsConnector::from(cfg).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "TLS handshake with {} (https): timed out (a registry that serves plain HTTP must be listed in insecure-registries, --insecure-registry)",
                    url.authority()
                )
            })?
            .map_err(|e| {
                anyhow!(
                    "TLS handshake with {} (https): {e} (a registry that serves plain HTTP must be listed in insecure-registries, --insecure-registry)",
                    url.authority()
                )
            })?;
            exchange(TokioIo::new(stream), req).await
        }
        (false, None) => exchange(TokioIo::new(tcp), req).await,
        (true, None) => bail!("{url}: https without a TLS configuration"),
        (false, Some(_)) => bail!("{url}: plain http where TLS was required"),
    };
    answer.with_context(|| format!("GET {url}"))
}

async fn exchange<T>(io: TokioIo<T>, req: Request<Empty<Bytes>>) -> Result<Response>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection is driven until the body is read (or dropped).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| anyhow!("no answer in {}s", ANSWER_TIMEOUT.as_secs()))??;
    let (parts, body) = resp.into_parts();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `application/x-www-form-urlencoded` escaping for query values.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redirects() {
        let u = Url::parse("https://registry-1.docker.io/v2/library/busybox/manifests/1").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port),
            (true, "registry-1.docker.io", 443)
        );
        assert_eq!(u.authority(), "registry-1.docker.io");
        assert_eq!(u.path, "/v2/library/busybox/manifests/1");
        let v6 = Url::parse("http://[::1]:5000/v2/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5000));
        assert_eq!(v6.to_string(), "http://[::1]:5000/v2/");
        assert_eq!(u.join("/v2/x?y=1").unwrap().path, "/v2/x?y=1");
        assert_eq!(
            u.join("blobs/sha256:a").unwrap().path,
            "/v2/library/busybox/manifests/blobs/sha256:a"
        );
        let cdn = u.join("https://cdn.example:8443/blob?sig=x").unwrap();
        assert_eq!(cdn.authority(), "cdn.example:8443");
        assert_eq!(
            u.join("//other.example/x").unwrap().to_string(),
            "https://other.example/x"
        );
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("/relative").is_err());
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
