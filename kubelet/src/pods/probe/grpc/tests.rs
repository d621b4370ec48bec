use std::collections::HashMap;
use std::convert::Infallible;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::{Response, Status};

use super::*;
use crate::pods::probe::testutil::sockets_left;

/// A real gRPC server on loopback with `grpc.health.v1.Health/Check`
/// (tonic's server with the probe's own messages): each service in
/// `statuses` answers its status after `delay`; any other is NotFound,
/// as grpc-go's health server answers.
async fn health_server(statuses: &[(&str, ServingStatus)], delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let statuses: HashMap<String, i32> = statuses
        .iter()
        .map(|(k, v)| (k.to_string(), *v as i32))
        .collect();
    let svc = tower::service_fn(move |req: http::Request<Body>| {
        let statuses = statuses.clone();
        async move {
            if req.uri().path() != CHECK {
                return Ok::<_, Infallible>(Status::unimplemented("unknown method").into_http());
            }
            let check = tower::service_fn(move |r: Request<HealthCheckRequest>| {
                let status = statuses.get(&r.get_ref().service).copied();
                async move {
                    tokio::time::sleep(delay).await;
                    match status {
                        Some(status) => Ok(Response::new(HealthCheckResponse { status })),
                        None => Err(Status::not_found("unknown service")),
                    }
                }
            });
            let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(check, req).await)
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(svc, TcpIncoming::from(l)),
    );
    port
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn serving_is_success_and_the_connection_leaves_no_time_wait() {
    let port = health_server(&[("", ServingStatus::Serving)], Duration::ZERO).await;
    assert_eq!(check("127.0.0.1", port, "", SECOND).await, Outcome::Success);
    assert_eq!(sockets_left(port).await, Vec::<String>::new());
}

#[tokio::test]
async fn not_serving_and_unknown_services_are_failures() {
    let port = health_server(
        &[
            ("", ServingStatus::Serving),
            ("db", ServingStatus::NotServing),
            ("cache", ServingStatus::ServiceUnknown),
        ],
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        check("127.0.0.1", port, "db", SECOND).await,
        Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    assert_eq!(
        check("127.0.0.1", port, "cache", SECOND).await,
        Outcome::Failure("service unhealthy (responded with \"SERVICE_UNKNOWN\")".into())
    );
    assert_eq!(
        check("127.0.0.1", port, "nope", SECOND).await,
        Outcome::Failure(
            "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
                .into()
        )
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let port = health_server(&[("", ServingStatus::Serving)], 3 * SECOND).await;
    let began = Instant::now();
    assert_eq!(
        check("127.0.0.1", port, "", SECOND).await,
        Outcome::Failure("timeout: health rpc did not complete within 1s".into())
    );
    assert!(began.elapsed() < 2 * SECOND, "{:?}", began.elapsed());
    // A listener that never speaks HTTP/2 times out as well.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    match check("127.0.0.1", port, "", SECOND).await {
        Outcome::Failure(m) => assert!(m.starts_with("timeout: "), "{m}"),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_names_the_address() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    match check("127.0.0.1", port, "", SECOND).await {
        Outcome::Failure(m) => assert!(
            m.starts_with(&format!(
                "error: failed to connect service at \"127.0.0.1:{port}\": "
            )) && m.contains("refused"),
            "{m}"
        ),
        o => panic!("{o:?}"),
    }
}

#[test]
fn statuses_are_named_as_the_protocol_names_them() {
    assert_eq!(status_name(1), "SERVING");
    assert_eq!(status_name(2), "NOT_SERVING");
    assert_eq!(status_name(7), "7");
}
