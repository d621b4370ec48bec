//! Container lifecycle hooks as kubelet runs them: postStart right after a
//! container's start, preStop before its SIGTERM, inside the grace period.
//! Handlers are exec, httpGet (the probes' checks, see
//! [`super::probe::handlers`]) and sleep. This module runs a hook and says
//! whether it failed; what a failure does (a kill, an event) is the
//! worker's.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};

use super::probe::handlers::{self, Target};
use super::probe::{parse_handler, Handler, Outcome};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    PostStart,
    PreStop,
}

impl Point {
    fn field(self) -> &'static str {
        match self {
            Point::PostStart => "lifecycle.postStart",
            Point::PreStop => "lifecycle.preStop",
        }
    }
}

/// One hook's action.
#[derive(Debug, Clone, PartialEq)]
pub enum Hook {
    Run(Handler),
    Sleep(Duration),
}

/// The hook `point` of container `c`, if it has one; the error names the
/// field (a hook the node cannot run is refused before the start).
pub fn of(c: &Container, point: Point) -> Result<Option<Hook>, String> {
    let Some(l) = &c.lifecycle else {
        return Ok(None);
    };
    let h: Option<&LifecycleHandler> = match point {
        Point::PostStart => l.post_start.as_ref(),
        Point::PreStop => l.pre_stop.as_ref(),
    };
    let Some(h) = h else {
        return Ok(None);
    };
    let field = point.field();
    if h.tcp_socket.is_some() && h.exec.is_none() && h.http_get.is_none() && h.sleep.is_none() {
        return Err(format!(
            "{field}.tcpSocket: Unsupported value: tcpSocket is not supported as a lifecycle handler"
        ));
    }
    if let Some(s) = &h.sleep {
        if s.seconds < 0 {
            return Err(format!(
                "{field}.sleep.seconds: Invalid value: {}: must be greater than or equal to 0",
                s.seconds
            ));
        }
        return Ok(Some(Hook::Sleep(Duration::from_secs(s.seconds as u64))));
    }
    match parse_handler(field, h.exec.as_ref(), h.http_get.as_ref(), None, c)? {
        Some(handler) => Ok(Some(Hook::Run(handler))),
        None => Err(format!("{field}: must specify a handler type")),
    }
}

/// Every hook of `c`, checked (for the start's configuration check).
pub fn check(c: &Container) -> Result<(), String> {
    of(c, Point::PostStart)?;
    of(c, Point::PreStop)?;
    Ok(())
}

/// Runs `hook` against `target`, for at most `limit`. The error is
/// kubelet's message for the failed hook.
pub async fn run(hook: &Hook, target: &Target, limit: Duration) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep((*d).min(limit)).await;
            Ok(())
        }
        Hook::Run(h) => match handlers::run(h, target, limit).await {
            Outcome::Success => Ok(()),
            Outcome::Failure(m) => Err(m),
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ExecAction, Lifecycle, SleepAction, TCPSocketAction};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    fn with(pre_stop: LifecycleHandler) -> Container {
        Container {
            name: "c".into(),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(pre_stop),
                post_start: None,
                stop_signal: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn hooks_are_read_with_their_field_names() {
        let c = with(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sh".into(), "-c".into(), "true".into()]),
            }),
            ..Default::default()
        });
        assert!(matches!(
            of(&c, Point::PreStop),
            Ok(Some(Hook::Run(Handler::Exec { .. })))
        ));
        assert_eq!(of(&c, Point::PostStart), Ok(None));
        let c = with(LifecycleHandler {
            sleep: Some(SleepAction { seconds: 3 }),
            ..Default::default()
        });
        assert_eq!(
            of(&c, Point::PreStop),
            Ok(Some(Hook::Sleep(Duration::from_secs(3))))
        );
        let c = with(LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(of(&c, Point::PreStop)
            .unwrap_err()
            .starts_with("lifecycle.preStop.tcpSocket: Unsupported value"));
        let c = with(LifecycleHandler {
            exec: Some(ExecAction { command: None }),
            ..Default::default()
        });
        assert_eq!(
            check(&c),
            Err("lifecycle.preStop.exec.command: Required value".into())
        );
    }
}
