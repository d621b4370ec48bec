//! Container probes as kubelet runs them: liveness, readiness and startup,
//! with exec, httpGet (HTTP and HTTPS), tcpSocket and grpc handlers. This module owns the probe
//! description read from the pod spec and the pure threshold logic; the
//! one scheduler for every probe on the node is [`scheduler`], the network
//! and exec checks are [`handlers`]. It never stops a container itself: a
//! result change goes to the pod's worker, which decides.

mod grpc;
pub mod handlers;
mod http;
pub mod scheduler;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use scheduler::{Prober, Registration};

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        })
    }
}

/// How a probe checks the container.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// A command run in the container; exit 0 is success.
    Exec { command: Vec<String> },
    /// An HTTP GET; a status from 200 to 399 is success.
    Http {
        scheme: Scheme,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connect; an established connection is success.
    Tcp { host: Option<String>, port: u16 },
    /// `grpc.health.v1.Health/Check` for `service` on the pod IP; SERVING
    /// is success.
    Grpc { port: u16, service: String },
}

/// The scheme of an httpGet handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// TLS without certificate verification, as kubelet's prober.
    Https,
}

/// One probe, with kubelet's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub kind: Kind,
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe-level grace period for the kill a failure causes.
    pub termination_grace: Option<Duration>,
}

impl Spec {
    /// Reads `probe` of `container`, as kubelet defaults it: period 10 s,
    /// timeout 1 s, thresholds 1 and 3. A named port is resolved against
    /// the container's ports. The error is the reason the pod reports.
    pub fn from_k8s(kind: Kind, probe: &Probe, container: &Container) -> Result<Spec, String> {
        let field = match kind {
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Startup => "startupProbe",
        };
        let handler = match parse_handler(
            field,
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            probe.tcp_socket.as_ref(),
            container,
        )? {
            Some(h) => h,
            None => match &probe.grpc {
                Some(g) => Handler::Grpc {
                    port: u16::try_from(g.port)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| {
                            format!(
                                "{field}.grpc.port: Invalid value: {}: must be between 1 and 65535",
                                g.port
                            )
                        })?,
                    service: g.service.clone().unwrap_or_default(),
                },
                None => return Err(format!("{field}: must specify a handler type")),
            },
        };
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let at_least_one = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1) as u32;
        Ok(Spec {
            kind,
            handler,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            // Liveness and startup must succeed once (the API enforces 1).
            success_threshold: match kind {
                Kind::Readiness => at_least_one(probe.success_threshold, 1),
                _ => 1,
            },
            failure_threshold: at_least_one(probe.failure_threshold, 3),
            termination_grace: probe
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64)),
        })
    }

    /// The result a probe holds before its first run: readiness starts
    /// failed, liveness passed, startup unknown (so that its failures,
    /// too, are a change the worker hears of).
    pub fn initial(&self) -> Option<bool> {
        match self.kind {
            Kind::Liveness => Some(true),
            Kind::Readiness => Some(false),
            Kind::Startup => None,
        }
    }
}

/// Every probe `container` declares.
pub fn specs(container: &Container) -> Result<Vec<Spec>, String> {
    let mut out = Vec::new();
    for (kind, p) in [
        (Kind::Startup, &container.startup_probe),
        (Kind::Liveness, &container.liveness_probe),
        (Kind::Readiness, &container.readiness_probe),
    ] {
        if let Some(p) = p {
            out.push(Spec::from_k8s(kind, p, container)?);
        }
    }
    Ok(out)
}

/// The exec, httpGet or tcpSocket handler of a probe or lifecycle hook
/// (`field` names it in errors); `None` when none is set.
pub fn parse_handler(
    field: &str,
    exec: Option<&ExecAction>,
    http_get: Option<&HTTPGetAction>,
    tcp_socket: Option<&TCPSocketAction>,
    container: &Container,
) -> Result<Option<Handler>, String> {
    let handler = if let Some(e) = exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(format!("{field}.exec.command: Required value"));
        }
        Handler::Exec { command }
    } else if let Some(h) = http_get {
        // kubelet lower-cases the scheme before it reads it.
        let scheme = match h.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(_) => {
                let other = h.scheme.as_deref().unwrap_or_default();
                return Err(format!(
                    "{field}.httpGet.scheme: Unsupported value: {other:?}: supported values: \"HTTP\", \"HTTPS\""
                ));
            }
        };
        let path = match h.path.as_deref() {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(format!("{field}.httpGet.path: Invalid value: {path:?}"));
        }
        let mut headers = Vec::new();
        for (i, hd) in h.http_headers.iter().flatten().enumerate() {
            let bad = |s: &str| s.chars().any(|c| c == '\r' || c == '\n');
            if hd.name.is_empty() || bad(&hd.name) || hd.name.contains(':') || bad(&hd.value) {
                return Err(format!("{field}.httpGet.httpHeaders[{i}]: Invalid value"));
            }
            headers.push((hd.name.clone(), hd.value.clone()));
        }
        Handler::Http {
            scheme,
            host: h.host.clone().filter(|s| !s.is_empty()),
            port: port(&h.port, container, &format!("{field}.httpGet.port"))?,
            path,
            headers,
        }
    } else if let Some(t) = tcp_socket {
        Handler::Tcp {
            host: t.host.clone().filter(|s| !s.is_empty()),
            port: port(&t.port, container, &format!("{field}.tcpSocket.port"))?,
        }
    } else {
        return Ok(None);
    };
    Ok(Some(handler))
}

fn port(p: &IntOrString, c: &Container, field: &str) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .map(|cp| cp.container_port)
                .ok_or_else(|| {
                    format!("{field}: Invalid value: {s:?}: no container port has this name")
                })?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{field}: Invalid value: {n}: must be between 1 and 65535"))
}

/// The outcome of one run of a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Why it failed, as kubelet words it (`HTTP probe failed with
    /// statuscode: 500`, `dial tcp ...: connection refused`).
    Failure(String),
}

/// kubelet's threshold logic: a probe's result changes only after
/// `successThreshold` successes or `failureThreshold` failures in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    result: Option<bool>,
    last: Option<bool>,
    run: u32,
}

impl Counter {
    /// A counter holding `initial` (`None`: unknown) until the thresholds
    /// say otherwise.
    pub fn new(initial: Option<bool>) -> Counter {
        Counter {
            result: initial,
            last: None,
            run: 0,
        }
    }

    /// The current result (unknown counts as failed).
    pub fn result(&self) -> bool {
        self.result == Some(true)
    }

    /// Counts one run; returns the new result when it changed.
    pub fn observe(&mut self, ok: bool, spec: &Spec) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            spec.success_threshold
        } else {
            spec.failure_threshold
        };
        if self.run >= threshold && self.result != Some(ok) {
            self.result = Some(ok);
            return Some(ok);
        }
        None
    }
}

/// What `headers` a probe sends by default, overridable by the spec (a
/// header named in the spec replaces ours, as kubelet does).
pub fn http_headers(
    host: &str,
    port: u16,
    spec_headers: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        out.insert(k.to_ascii_lowercase(), (k.to_string(), v));
    };
    put("Host", format!("{host}:{port}"));
    put("User-Agent", "kube-probe/1.33".to_string());
    put("Accept", "*/*".to_string());
    for (k, v) in spec_headers {
        put(k, v.clone());
    }
    // We read one response and close.
    put("Connection", "close".to_string());
    out.into_values().collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
