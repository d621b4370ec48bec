use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::pods::probe::testutil::sockets_left;

fn url(scheme: Scheme, port: u16, path: &str) -> Url {
    Url {
        scheme,
        host: "127.0.0.1".into(),
        port,
        path: path.into(),
    }
}

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
fn redirects_are_followed_only_on_the_same_hostname() {
    let from = Url {
        scheme: Scheme::Http,
        host: "10.0.0.1".into(),
        port: 8080,
        path: "/a/b?x=1".into(),
    };
    let to = |l: &str| follow(&from, l).map(|u| u.to_string());
    assert_eq!(to("/c").as_deref(), Some("http://10.0.0.1:8080/c"));
    assert_eq!(to("d").as_deref(), Some("http://10.0.0.1:8080/a/d"));
    assert_eq!(
        to("http://10.0.0.1:8080/b").as_deref(),
        Some("http://10.0.0.1:8080/b")
    );
    assert_eq!(
        to("http://10.0.0.1").as_deref(),
        Some("http://10.0.0.1:80/")
    );
    // kubelet compares hostnames only: another port or scheme is followed.
    assert_eq!(
        to("https://10.0.0.1/secure").as_deref(),
        Some("https://10.0.0.1:443/secure")
    );
    assert_eq!(
        to("//10.0.0.1:9090?q").as_deref(),
        Some("http://10.0.0.1:9090/?q")
    );
    assert_eq!(to("http://example.com/"), None);
    assert_eq!(to("http://10.0.0.2:8080/"), None);
    assert_eq!(to("ftp://10.0.0.1/"), None);
    let v6 = Url {
        host: "fd00::1".into(),
        ..from.clone()
    };
    assert_eq!(
        follow(&v6, "https://[fd00::1]:8443/h").map(|u| u.to_string()),
        Some("https://[fd00::1]:8443/h".into())
    );
}

/// What a scripted server does with one connection.
#[derive(Clone, Copy)]
enum Step {
    Answer(&'static str),
    /// Accepts and never answers.
    Hang,
}

/// A server on loopback answering each connection, in turn, from
/// `script`, over TLS with a fresh self-signed certificate when `tls`.
/// It records each request's first line.
async fn serve(tls: bool, script: Vec<Step>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tls.then(self_signed_acceptor);
    let log = seen.clone();
    tokio::spawn(async move {
        for step in script {
            let (s, _) = l.accept().await.unwrap();
            let log = log.clone();
            match &acceptor {
                Some(a) => match a.accept(s).await {
                    Ok(s) => {
                        tokio::spawn(answer(s, step, log));
                    }
                    Err(e) => log.lock().unwrap().push(format!("tls error: {e}")),
                },
                None => {
                    tokio::spawn(answer(s, step, log));
                }
            }
        }
    });
    (port, seen)
}

/// Reads the request head, answers, and keeps the connection until the
/// client closes it (so that the client is the one closing).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    step: Step,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    log.lock()
        .unwrap()
        .push(head.lines().next().unwrap_or_default().to_string());
    match step {
        Step::Answer(r) => {
            let _ = s.write_all(r.as_bytes()).await;
        }
        Step::Hang => {}
    }
    while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
}

fn self_signed_acceptor() -> TlsAcceptor {
    let c = rcgen::generate_simple_self_signed(vec!["probe.test".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![c.cert.der().clone()], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn http_probes_follow_same_host_redirects_and_judge_the_status() {
    let (port, seen) = serve(
        false,
        vec![
            Step::Answer("HTTP/1.1 301 Moved\r\nLocation: /ok\r\n\r\n"),
            Step::Answer("HTTP/1.1 200 OK\r\n\r\n"),
        ],
    )
    .await;
    assert_eq!(
        get(url(Scheme::Http, port, "/"), &[]).await,
        Outcome::Success
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET / HTTP/1.1", "GET /ok HTTP/1.1"]
    );
    let (port, _) = serve(
        false,
        vec![Step::Answer("HTTP/1.1 500 Internal Server Error\r\n\r\n")],
    )
    .await;
    assert_eq!(
        get(url(Scheme::Http, port, "/"), &[]).await,
        Outcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    let (port, _) = serve(
        false,
        vec![Step::Answer(
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.example/\r\n\r\n",
        )],
    )
    .await;
    assert_eq!(
        get(url(Scheme::Http, port, "/"), &[]).await,
        Outcome::Success
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_failure_that_names_the_address() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    match get(url(Scheme::Https, port, "/"), &[]).await {
        Outcome::Failure(m) => assert!(
            m.starts_with(&format!("Get \"https://127.0.0.1:{port}/\": dial tcp")),
            "{m}"
        ),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn https_probes_accept_a_self_signed_certificate_and_judge_the_status() {
    let (port, seen) = serve(true, vec![Step::Answer("HTTP/1.1 204 No Content\r\n\r\n")]).await;
    assert_eq!(
        get(url(Scheme::Https, port, "/healthz"), &[]).await,
        Outcome::Success
    );
    assert_eq!(*seen.lock().unwrap(), ["GET /healthz HTTP/1.1"]);
    // Closed with an RST: nothing of it waits in TIME_WAIT.
    assert_eq!(sockets_left(port).await, Vec::<String>::new());

    let (port, _) = serve(
        true,
        vec![Step::Answer("HTTP/1.1 500 Internal Server Error\r\n\r\n")],
    )
    .await;
    assert_eq!(
        get(url(Scheme::Https, port, "/"), &[]).await,
        Outcome::Failure("HTTP probe failed with statuscode: 500".into())
    );

    // Plain HTTP to a TLS server is not an answer.
    let (port, _) = serve(true, vec![Step::Hang]).await;
    assert!(matches!(
        tokio::time::timeout(
            Duration::from_secs(5),
            get(url(Scheme::Http, port, "/"), &[])
        )
        .await,
        Ok(Outcome::Failure(_))
    ));
}

#[tokio::test]
async fn https_probes_follow_redirects_on_the_same_hostname() {
    let (tls_port, seen) = serve(
        true,
        vec![
            Step::Answer("HTTP/1.1 302 Found\r\nLocation: /ready\r\n\r\n"),
            Step::Answer("HTTP/1.1 200 OK\r\n\r\n"),
            Step::Answer("HTTP/1.1 200 OK\r\n\r\n"),
        ],
    )
    .await;
    assert_eq!(
        get(url(Scheme::Https, tls_port, "/"), &[]).await,
        Outcome::Success
    );
    // From plain HTTP to HTTPS on another port of the same host, as
    // kubelet's redirect check allows.
    let location: &'static str = Box::leak(
        format!("HTTP/1.1 301 Moved\r\nLocation: https://127.0.0.1:{tls_port}/tls\r\n\r\n")
            .into_boxed_str(),
    );
    let (port, _) = serve(false, vec![Step::Answer(location)]).await;
    assert_eq!(
        get(url(Scheme::Http, port, "/"), &[]).await,
        Outcome::Success
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET / HTTP/1.1", "GET /ready HTTP/1.1", "GET /tls HTTP/1.1"]
    );
}

#[tokio::test]
async fn a_redirect_loop_stops_after_ten_requests() {
    let (port, seen) = serve(
        true,
        vec![Step::Answer("HTTP/1.1 302 Found\r\nLocation: /again\r\n\r\n"); 10],
    )
    .await;
    assert_eq!(
        get(url(Scheme::Https, port, "/"), &[]).await,
        Outcome::Failure(format!(
            "Get \"https://127.0.0.1:{port}/again\": stopped after 10 redirects"
        ))
    );
    assert_eq!(seen.lock().unwrap().len(), 10);
}
