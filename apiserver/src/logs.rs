//! `GET /api/v1/namespaces/<ns>/pods/<name>/log`: a container's output,
//! as kubectl logs asks for it (container, follow, previous, tailLines,
//! sinceSeconds, sinceTime, timestamps, limitBytes). The bytes come from
//! the node that runs the pod, through [`PodLogs`]; this module parses the
//! request and streams the answer as `text/plain`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use controlplane::Error;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

/// What `kubectl logs` asks for (kube's PodLogOptions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub limit_bytes: Option<usize>,
}

/// Reads pods' logs where they are kept.
#[async_trait]
pub trait PodLogs: Send + Sync {
    /// The log of `pod` as `q` asks: chunks of output; the stream ends
    /// when the output does (or, following, when the pod is gone).
    async fn logs(&self, pod: &Pod, q: &LogQuery) -> Result<mpsc::Receiver<Bytes>, Error>;
}

/// The `/api/v1/namespaces/<ns>/pods/<name>/log` path's namespace and
/// pod, or `None` for any other path.
pub fn log_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "pods", name, "log"] if ok(ns) && ok(name) => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

/// A plain path segment (no escapes, no dot walks).
fn ok(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('%')
}

/// The query of a log request; errors name the parameter.
pub fn parse_query(get: impl Fn(&str) -> Option<String>) -> Result<LogQuery, Error> {
    let flag = |k: &str| matches!(get(k).as_deref(), Some("true" | "1"));
    let number = |k: &str| -> Result<Option<i64>, Error> {
        match get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::BadRequest(format!("{k}: not a number: {v:?}"))),
        }
    };
    let positive = |k: &str| -> Result<Option<usize>, Error> {
        match number(k)? {
            Some(n) if n < 0 => Err(Error::BadRequest(format!("{k}: must be >= 0, got {n}"))),
            n => Ok(n.map(|n| n as usize)),
        }
    };
    let since_seconds = number("sinceSeconds")?;
    if since_seconds.is_some_and(|s| s < 1) {
        return Err(Error::BadRequest(
            "sinceSeconds: must be greater than 0".into(),
        ));
    }
    let since_time = match get("sinceTime").filter(|v| !v.is_empty()) {
        None => None,
        Some(t) => Some(t.parse::<jiff::Timestamp>().map_err(|e| {
            Error::BadRequest(format!("sinceTime: not an RFC 3339 time: {t:?}: {e}"))
        })?),
    };
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest(
                "sinceSeconds and sinceTime: at most one may be set".into(),
            ))
        }
        (Some(s), None) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)),
        (None, t) => t,
    };
    let limit_bytes = positive("limitBytes")?;
    if limit_bytes == Some(0) {
        return Err(Error::BadRequest(
            "limitBytes: must be greater than 0".into(),
        ));
    }
    Ok(LogQuery {
        container: get("container").filter(|c| !c.is_empty()),
        follow: flag("follow"),
        previous: flag("previous"),
        timestamps: flag("timestamps"),
        // kubectl's --tail=-1 means all: it sends no tailLines then.
        tail_lines: positive("tailLines")?,
        since,
        limit_bytes,
    })
}

/// No pod logs on this server (the API runs without a node).
pub struct NoLogs;

#[async_trait]
impl PodLogs for NoLogs {
    async fn logs(&self, _: &Pod, _: &LogQuery) -> Result<mpsc::Receiver<Bytes>, Error> {
        Err(Error::BadRequest("this server reads no pod logs".into()))
    }
}

/// The default [`PodLogs`].
pub fn none() -> Arc<dyn PodLogs> {
    Arc::new(NoLogs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<LogQuery, Error> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_query(|k| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn paths_and_queries_are_read_as_kubectl_sends_them() {
        assert_eq!(
            log_path("/api/v1/namespaces/default/pods/web/log"),
            Some(("default".into(), "web".into()))
        );
        assert_eq!(log_path("/api/v1/namespaces/default/pods/web"), None);
        assert_eq!(log_path("/api/v1/namespaces/../pods/web/log"), None);
        let got = q(&[
            ("container", "c"),
            ("follow", "true"),
            ("tailLines", "10"),
            ("timestamps", "true"),
        ])
        .unwrap();
        assert_eq!(got.container.as_deref(), Some("c"));
        assert!(got.follow && got.timestamps && !got.previous);
        assert_eq!(got.tail_lines, Some(10));
        assert!(q(&[("sinceSeconds", "60")]).unwrap().since.is_some());
        assert!(q(&[("sinceTime", "2026-01-01T00:00:00Z")])
            .unwrap()
            .since
            .is_some());
        for (k, v, want) in [
            ("tailLines", "x", "tailLines"),
            ("tailLines", "-2", "tailLines"),
            ("sinceSeconds", "0", "sinceSeconds"),
            ("sinceTime", "yesterday", "sinceTime"),
            ("limitBytes", "0", "limitBytes"),
        ] {
            let e = q(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(want), "{k}={v}: {e}");
        }
    }
}
