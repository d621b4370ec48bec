//! The grpc check: `grpc.health.v1.Health/Check` over plain HTTP/2 to the
//! pod (kubelet uses no TLS for gRPC probes), with the probe's `service`.
//! SERVING is success; any other status, an error or the timeout is a
//! failure, worded as kubelet words it. The connection closes with an RST,
//! as every network probe's (see [`super::handlers`]).

use std::error::Error as StdError;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tonic::transport::{Endpoint, Uri};
use tonic::{Code, Request};
use tonic_prost::ProstCodec;

use super::handlers::{connect, join_host_port};
use super::Outcome;

/// The method every gRPC probe calls.
const CHECK: &str = "/grpc.health.v1.Health/Check";
/// Sent as kubelet's prober sends it (tonic appends its own).
const USER_AGENT: &str = "kube-probe/1.33";

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub(super) enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

/// The status as the protocol names it (a value it does not know, as
/// its number).
fn status_name(status: i32) -> String {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Unknown) => "UNKNOWN".into(),
        Ok(ServingStatus::Serving) => "SERVING".into(),
        Ok(ServingStatus::NotServing) => "NOT_SERVING".into(),
        Ok(ServingStatus::ServiceUnknown) => "SERVICE_UNKNOWN".into(),
        Err(_) => status.to_string(),
    }
}

/// Asks `host:port` for the health of `service`, all within `timeout`.
pub(super) async fn check(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    let deadline = Instant::now() + timeout;
    let within = format!("{}s", timeout.as_secs());
    let connect_failed = |e: &dyn StdError| {
        Outcome::Failure(format!(
            "error: failed to connect service at {addr:?}: {}",
            chain(e)
        ))
    };
    let endpoint = match Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(USER_AGENT))
    {
        Ok(e) => e,
        Err(e) => return connect_failed(&e),
    };
    // Our own dial, so that the socket closes with an RST.
    let dial = addr.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        async move {
            connect(&dial)
                .await
                .map(TokioIo::new)
                .map_err(std::io::Error::other)
        }
    });
    let channel =
        match tokio::time::timeout_at(deadline, endpoint.connect_with_connector(connector)).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return connect_failed(&e),
            Err(_) => {
                return Outcome::Failure(format!(
                    "timeout: failed to connect service {addr:?} within {within}: context deadline exceeded"
                ))
            }
        };
    let mut client = tonic::client::Grpc::new(channel);
    let mut req = Request::new(HealthCheckRequest {
        service: service.to_string(),
    });
    // The deadline goes to the server too (grpc-timeout), as grpc-go's.
    req.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let call = async {
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(chain(&e)))?;
        client
            .unary::<_, HealthCheckResponse, _>(
                req,
                PathAndQuery::from_static(CHECK),
                ProstCodec::default(),
            )
            .await
    };
    let timed_out = Outcome::Failure(format!(
        "timeout: health rpc did not complete within {within}"
    ));
    let status = match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(resp)) => resp.into_inner().status,
        Err(_) => return timed_out,
        // The server's end of the deadline, or ours crossed meanwhile.
        Ok(Err(s)) if s.code() == Code::DeadlineExceeded || Instant::now() >= deadline => {
            return timed_out
        }
        Ok(Err(s)) if s.code() == Code::Unimplemented => {
            return Outcome::Failure(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                s.message()
            ))
        }
        Ok(Err(s)) => {
            return Outcome::Failure(format!(
                "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
                s.code(),
                s.message()
            ))
        }
    };
    if status == ServingStatus::Serving as i32 {
        Outcome::Success
    } else {
        Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            status_name(status)
        ))
    }
}

/// An error and its causes, `a: b: c` (tonic's own message is only
/// "transport error").
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests;
