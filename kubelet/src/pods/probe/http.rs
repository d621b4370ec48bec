//! The httpGet check, over HTTP or HTTPS, as kubelet's prober sends it: one
//! GET per connection, redirects followed while they stay on the same
//! hostname (at most 10), 200-399 is success. HTTPS does not verify the
//! certificate (kubelet sets InsecureSkipVerify). It reads only the
//! response head and closes with an RST (see [`super::handlers`]).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::handlers::{addr_host, connect, join_host_port};
use super::{http_headers, Outcome, Scheme};

/// At most this much of a response is read (kubelet reads 10 KiB).
const MAX_RESPONSE: usize = 10 * 1024;
/// Same-hostname redirects followed, as Go's client does.
const MAX_REDIRECTS: usize = 10;

/// Where one request of a probe goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Url {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(
            f,
            "{scheme}://{}{}",
            join_host_port(&self.host, self.port),
            self.path
        )
    }
}

/// GETs `url`, following redirects that stay on its hostname (to another
/// port or scheme too, as kubelet's redirect check compares hostnames
/// only); 200-399 is success, and so is a redirect elsewhere (kubelet does
/// not follow it and takes the 3xx as the answer).
pub(super) async fn get(url: Url, headers: &[(String, String)]) -> Outcome {
    let mut url = url;
    let mut sent = 0;
    loop {
        let resp = match request(&url, headers).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failure(format!("Get \"{url}\": {e}")),
        };
        sent += 1;
        if (300..400).contains(&resp.status) {
            match resp.location.as_deref().and_then(|l| follow(&url, l)) {
                // Go's client sends at most 10 requests in all.
                Some(next) if sent >= MAX_REDIRECTS => {
                    return Outcome::Failure(format!(
                        "Get \"{next}\": stopped after {MAX_REDIRECTS} redirects"
                    ))
                }
                Some(next) => {
                    url = next;
                    continue;
                }
                None => return Outcome::Success,
            }
        }
        return if (200..400).contains(&resp.status) {
            Outcome::Success
        } else {
            Outcome::Failure(format!(
                "HTTP probe failed with statuscode: {}",
                resp.status
            ))
        };
    }
}

struct Response {
    status: u16,
    location: Option<String>,
}

async fn request(url: &Url, headers: &[(String, String)]) -> Result<Response, String> {
    let addr = join_host_port(&url.host, url.port);
    let mut req = format!("GET {} HTTP/1.1\r\n", url.path);
    for (k, v) in http_headers(&addr_host(&url.host), url.port, headers) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // The socket closes with an RST whichever way this returns.
    let tcp = connect(&addr).await?;
    let head = match url.scheme {
        Scheme::Http => exchange(tcp, &req).await?,
        Scheme::Https => {
            // An IP address is sent as no SNI, as Go's client does.
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| format!("tls: server name {:?}: {e}", url.host))?;
            let tls = TlsConnector::from(insecure_config())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            exchange(tls, &req).await?
        }
    };
    parse_head(&head).ok_or_else(|| "malformed HTTP response".to_string())
}

/// Writes `req` and reads up to the end of the response head.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
) -> Result<Vec<u8>, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while buf.len() < MAX_RESPONSE && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// The status code and Location of a response head.
fn parse_head(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let location = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string());
    Some(Response { status, location })
}

/// Where a redirect from `from` to `location` goes, when it stays on the
/// same hostname; `None` when it leaves (or cannot be read).
fn follow(from: &Url, location: &str) -> Option<Url> {
    let (scheme, rest) = if let Some(r) = location.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = location.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = location.strip_prefix("//") {
        (from.scheme, r)
    } else if location.starts_with('/') {
        return Some(Url {
            path: location.to_string(),
            ..from.clone()
        });
    } else if location.contains(':') {
        // Another scheme (ftp:, ...).
        return None;
    } else {
        // Relative to the current path's directory.
        let base = from.path.split(['?', '#']).next().unwrap_or("/");
        let dir = &base[..=base.rfind('/').unwrap_or(0)];
        return Some(Url {
            path: format!("{dir}{location}"),
            ..from.clone()
        });
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let (host, port) = split_authority(authority, default_port)?;
    host.eq_ignore_ascii_case(&from.host).then_some(Url {
        scheme,
        host,
        port,
        path,
    })
}

/// `host[:port]` or `[v6][:port]`, brackets removed.
fn split_authority(a: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(r) = a.strip_prefix('[') {
        let (h, rest) = r.split_once(']')?;
        (h, rest.strip_prefix(':'))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The client configuration of HTTPS probes: any certificate is accepted
/// (its signature over the handshake is still checked), no ALPN, so the
/// server speaks HTTP/1.1 as to kubelet.
fn insecure_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports TLS 1.2 and 1.3")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// kubelet's `InsecureSkipVerify`: the chain and the name are not checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
