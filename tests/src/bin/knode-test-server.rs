//! A server for probe tests, run inside a pod: `grpc.health.v1.Health`
//! on plain HTTP/2 and an HTTPS server with a self-signed certificate made
//! at start. It logs one line per request on stdout, so a test can see
//! through `knode logs` that a probe reached it. Test tooling only.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::Status;
use tonic_prost::ProstCodec;

/// The method the health service answers.
const CHECK: &str = "/grpc.health.v1.Health/Check";

#[derive(Parser)]
#[command(name = "knode-test-server")]
struct Args {
    /// Port of the gRPC health service (plain HTTP/2).
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Services the health service knows besides "" (the server as a
    /// whole); any other is answered NotFound, as grpc-go's.
    #[arg(long = "service")]
    services: Vec<String>,
    /// While this file exists, every known service is NOT_SERVING.
    #[arg(long, default_value = "/tmp/not-serving")]
    not_serving_file: PathBuf,
    /// Port of the HTTPS server, which answers 200 on `/healthz`, 404
    /// elsewhere.
    #[arg(long)]
    https_port: Option<u16>,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `ServingStatus`: SERVING and NOT_SERVING.
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(port) = args.grpc_port {
        let l = listen(port).await?;
        let mut known: Vec<String> = args.services.clone();
        known.push(String::new());
        tasks.spawn(serve_grpc(l, known, args.not_serving_file.clone()));
        println!("grpc health on :{port}");
    }
    if let Some(port) = args.https_port {
        let l = listen(port).await?;
        tasks.spawn(serve_https(l, acceptor()?));
        println!("https on :{port}");
    }
    // PID 1 of its container: without a handler SIGTERM would be ignored.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        Some(r) = tasks.join_next() => r?,
    }
}

async fn listen(port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))
}

/// Answers `Check` for the `known` services: SERVING, or NOT_SERVING while
/// `not_serving_file` exists; NotFound for any other.
async fn serve_grpc(l: TcpListener, known: Vec<String>, not_serving_file: PathBuf) -> Result<()> {
    let svc = tower::service_fn(move |req: Request<Body>| {
        let known = known.clone();
        let not_serving_file = not_serving_file.clone();
        async move {
            if req.uri().path() != CHECK {
                println!("grpc {}: unimplemented", req.uri().path());
                return Ok::<_, Infallible>(Status::unimplemented("unknown method").into_http());
            }
            let check = tower::service_fn(move |r: tonic::Request<HealthCheckRequest>| {
                let service = r.into_inner().service;
                let answer = if !known.contains(&service) {
                    Err(Status::not_found("unknown service"))
                } else if not_serving_file.exists() {
                    Ok(NOT_SERVING)
                } else {
                    Ok(SERVING)
                };
                println!("grpc Check {service:?}: {answer:?}");
                let answer =
                    answer.map(|status| tonic::Response::new(HealthCheckResponse { status }));
                async move { answer }
            });
            let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(check, req).await)
        }
    });
    tonic::transport::Server::builder()
        .serve_with_incoming(svc, TcpIncoming::from(l))
        .await
        .context("grpc server")
}

/// A TLS acceptor with a fresh self-signed certificate.
fn acceptor() -> Result<TlsAcceptor> {
    let c = rcgen::generate_simple_self_signed(vec!["knode-test-server".to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![c.cert.der().clone()], key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// HTTP/1.1 over TLS: 200 on `/healthz`, 404 elsewhere.
async fn serve_https(l: TcpListener, tls: TlsAcceptor) -> Result<()> {
    loop {
        let (tcp, peer) = l.accept().await.context("https accept")?;
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    println!("https {peer}: handshake: {e}");
                    return;
                }
            };
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let ua = req
                    .headers()
                    .get(hyper::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let status = if req.uri().path() == "/healthz" {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                println!(
                    "https {} {} ({ua}): {}",
                    req.method(),
                    req.uri().path(),
                    status.as_u16()
                );
                let mut resp = Response::new(format!("{}\n", status.as_u16()));
                *resp.status_mut() = status;
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
