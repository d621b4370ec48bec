//! The checks themselves: a command in the container through containerd,
//! an HTTP GET and a TCP connect from the node to the pod. Network probes
//! close with an RST (SO_LINGER 0) so that a probe every second for every
//! pod leaves no socket in TIME_WAIT (kubelet's conntrack exhaustion,
//! kubernetes#89898). Each check is bounded by the probe's timeout.

use std::path::PathBuf;
use std::time::Duration;

use runtime::exec::{self, ExecIo, INTERRUPTED};
use runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{http_headers, Handler, Outcome};

/// At most this much of a response is read (kubelet reads 10 KiB).
const MAX_RESPONSE: usize = 10 * 1024;
/// Same-host redirects followed, as Go's client does.
const MAX_REDIRECTS: usize = 10;

/// Where a probe is aimed.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP, the default host of network probes.
    pub pod_ip: Option<String>,
    /// The running container (for exec).
    pub container_id: String,
    pub rt: Runtime,
    /// Where exec FIFOs are made.
    pub fifo_parent: PathBuf,
}

/// Runs `handler` once against `target`, within `timeout`.
pub async fn run(handler: &Handler, target: &Target, timeout: Duration) -> Outcome {
    match handler {
        Handler::Exec { command } => run_exec(command, target, timeout).await,
        Handler::Http {
            host,
            port,
            path,
            headers,
        } => {
            let Some(host) = host.clone().or_else(|| target.pod_ip.clone()) else {
                return Outcome::Failure("the pod has no IP yet".into());
            };
            match tokio::time::timeout(timeout, http_get(&host, *port, path, headers)).await {
                Ok(o) => o,
                Err(_) => Outcome::Failure(format!(
                    "Get \"http://{}{path}\": context deadline exceeded",
                    join_host_port(&host, *port)
                )),
            }
        }
        Handler::Tcp { host, port } => {
            let Some(host) = host.clone().or_else(|| target.pod_ip.clone()) else {
                return Outcome::Failure("the pod has no IP yet".into());
            };
            let addr = join_host_port(&host, *port);
            match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => {
                    close_now(s);
                    Outcome::Success
                }
                Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
                Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
            }
        }
    }
}

async fn run_exec(command: &[String], target: &Target, timeout: Duration) -> Outcome {
    let io = ExecIo {
        fifo_parent: &target.fifo_parent,
        stdin: None,
        stdout: Box::new(tokio::io::sink()),
        stderr: Box::new(tokio::io::sink()),
    };
    let expired = tokio::time::sleep(timeout);
    match exec::exec(&target.rt, &target.container_id, command, io, expired).await {
        Ok(0) => Outcome::Success,
        Ok(INTERRUPTED) => Outcome::Failure(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
        Ok(code) => Outcome::Failure(format!("command {command:?} exited with {code}")),
        Err(e) => Outcome::Failure(format!("exec {command:?}: {e:#}")),
    }
}

/// GET `path` on `host:port`, following same-host redirects; 200-399 is
/// success, and so is a redirect to another host (kubelet does not follow
/// it and takes the 3xx as the answer).
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Outcome {
    let mut path = path.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let url = format!("http://{}{path}", join_host_port(host, port));
        let resp = match request(host, port, &path, headers).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failure(format!("Get \"{url}\": {e}")),
        };
        if (300..400).contains(&resp.status) {
            match resp
                .location
                .as_deref()
                .and_then(|l| same_host_path(l, host, port))
            {
                Some(next) => {
                    path = next;
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
    Outcome::Failure(format!(
        "Get {path:?}: stopped after {MAX_REDIRECTS} redirects"
    ))
}

struct Response {
    status: u16,
    location: Option<String>,
}

async fn request(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<Response, String> {
    let addr = join_host_port(host, port);
    let mut s = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in http_headers(&addr_host(host), port, headers) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let written = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 2048];
        while buf.len() < MAX_RESPONSE && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    let result = match written {
        Ok(()) => read.await.map_err(|e| format!("read: {e}")),
        Err(e) => Err(format!("write: {e}")),
    };
    close_now(s);
    result?;
    parse_head(&buf).ok_or_else(|| "malformed HTTP response".to_string())
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

/// The path to follow when `location` stays on `host:port`; `None` when it
/// leaves (or cannot be read).
fn same_host_path(location: &str, host: &str, port: u16) -> Option<String> {
    if location.starts_with('/') {
        return Some(location.to_string());
    }
    let rest = location.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let same =
        authority == join_host_port(host, port) || (port == 80 && authority == addr_host(host));
    same.then(|| path.to_string())
}

/// `host:port`, with brackets for an IPv6 host.
fn join_host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", addr_host(host))
}

fn addr_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Closes with an RST: no TIME_WAIT left behind on the node.
fn close_now(s: TcpStream) {
    // Deprecated because a non-zero linger blocks the thread on drop; a
    // zero linger never does: the kernel sends the RST and frees at once.
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_gives_status_and_location() {
        let r = parse_head(b"HTTP/1.1 302 Found\r\nLocation: /healthz\r\nX: y\r\n\r\n").unwrap();
        assert_eq!((r.status, r.location.as_deref()), (302, Some("/healthz")));
        let r = parse_head(b"HTTP/1.0 200 OK\r\n\r\nbody").unwrap();
        assert_eq!((r.status, r.location), (200, None));
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n").is_none());
        assert!(parse_head(b"").is_none());
    }

    #[test]
    fn redirects_are_followed_only_on_the_same_host() {
        assert_eq!(same_host_path("/a", "10.0.0.1", 80).as_deref(), Some("/a"));
        assert_eq!(
            same_host_path("http://10.0.0.1:8080/b", "10.0.0.1", 8080).as_deref(),
            Some("/b")
        );
        assert_eq!(
            same_host_path("http://10.0.0.1/c", "10.0.0.1", 80).as_deref(),
            Some("/c")
        );
        assert_eq!(same_host_path("http://example.com/", "10.0.0.1", 80), None);
        assert_eq!(same_host_path("https://10.0.0.1/", "10.0.0.1", 443), None);
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
    }

    /// A tiny HTTP server on loopback answering each connection from a
    /// script of responses.
    async fn serve(responses: Vec<&'static str>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for r in responses {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(r.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_follow_same_host_redirects_and_judge_the_status() {
        let port = serve(vec![
            "HTTP/1.1 301 Moved\r\nLocation: /ok\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        ])
        .await;
        assert_eq!(
            http_get("127.0.0.1", port, "/", &[]).await,
            Outcome::Success
        );
        let port = serve(vec!["HTTP/1.1 500 Internal Server Error\r\n\r\n"]).await;
        assert_eq!(
            http_get("127.0.0.1", port, "/", &[]).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        let port = serve(vec![
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/\r\n\r\n",
        ])
        .await;
        assert_eq!(
            http_get("127.0.0.1", port, "/", &[]).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_failure_that_names_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        match http_get("127.0.0.1", port, "/", &[]).await {
            Outcome::Failure(m) => assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}"),
            o => panic!("{o:?}"),
        }
    }
}
