//! Serves a [`ControlPlane`] over HTTP/1.1 on a unix socket, with
//! Kubernetes' paths, verbs, list/watch and `Status` errors. The socket is
//! created mode 0600: only root may talk to it.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use super::{collection_path, list_kind, parse_path, status_code, status_of, Target};
use crate::api::{ControlPlane, DeleteOptions, Error, ObjectRef, Result, Scope, WatchEvent};
use crate::objects::Object;

/// Largest request body accepted, as the API server's default.
pub const MAX_BODY: usize = 3 << 20;

/// A response body: all at once, or streamed (watches).
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// Binds the API socket at `path` (mode 0600, parent created 0755).
///
/// A socket left by a dead agent is replaced; one that still answers is
/// not: two agents must not share a run dir.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Unavailable(format!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(Error::Unavailable(format!(
                "another knode agent is serving {}; give each agent its own --run-dir",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| fail("remove the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| fail("listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("restrict", e))?;
    Ok(listener)
}

/// Serves `cp` on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, cp: Arc<dyn ControlPlane>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the API socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cp = cp.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let cp = cp.clone();
                async move { Ok::<_, Infallible>(handle(cp.as_ref(), req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "API connection");
            }
        });
    }
}

/// The socket path inside a run dir.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("knode.sock")
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    bytes_response(code, serde_json::to_vec(v).unwrap_or_default())
}

fn bytes_response(code: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(body))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A list's JSON, written item by item: only one item's JSON value exists
/// at a time, not a value tree of the whole list beside its text.
pub fn list_body(scope: &Scope, list: crate::api::ObjectList) -> Vec<u8> {
    list_page_body(scope, list, None, 0)
}

/// [`list_body`] for one page of a chunked list: `next` is the token of
/// the next page (`metadata.continue`) and `remaining` how many objects
/// follow (`metadata.remainingItemCount`).
pub fn list_page_body(
    scope: &Scope,
    list: crate::api::ObjectList,
    next: Option<&str>,
    remaining: usize,
) -> Vec<u8> {
    let mut meta = json!({"resourceVersion": list.revision.to_string()});
    if let Some(next) = next {
        meta["continue"] = next.into();
        meta["remainingItemCount"] = remaining.into();
    }
    let head = json!({
        "kind": list_kind(scope.kind), "apiVersion": scope.kind.api_version(),
        "metadata": meta,
    });
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    // Replace the closing brace with the items array.
    out.pop();
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in list.items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serializing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &item.to_value());
    }
    out.extend_from_slice(b"]}");
    out
}

fn error_response(e: &Error) -> Response<Body> {
    json_response(status_code(e).0, &status_of(e))
}

/// One query parameter's value.
fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Result<Option<u64>> {
    match query(req, key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::BadRequest(format!("query parameter {key}: not a number: {v:?}"))),
    }
}

async fn handle(cp: &dyn ControlPlane, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
    }
    let method = req.method().clone();
    match route(cp, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "API request failed");
            error_response(&e)
        }
    }
}

async fn route(cp: &dyn ControlPlane, req: Request<Incoming>) -> Result<Response<Body>> {
    let target = parse_path(req.uri().path())
        .ok_or_else(|| Error::BadRequest(format!("no such resource path {}", req.uri().path())))?;
    let ttl = query_u64(&req, "ttlSeconds")?.map(Duration::from_secs);
    let revision = query_u64(&req, "resourceVersion")?;
    let watching = matches!(query(&req, "watch"), Some("true" | "1"));
    let method = req.method().clone();
    match (method, target) {
        (Method::GET, Target::Collection(scope)) if watching => watch(cp, &scope, revision).await,
        (Method::GET, Target::Collection(scope)) => {
            let list = cp.list(&scope).await?;
            Ok(bytes_response(200, list_body(&scope, list)))
        }
        (Method::GET, Target::Object(what)) => {
            Ok(json_response(200, &cp.get(&what).await?.to_value()))
        }
        (Method::POST, Target::Collection(scope)) => {
            let obj = body_object(req, &scope, None).await?;
            Ok(json_response(201, &cp.create(obj, ttl).await?.to_value()))
        }
        (Method::PUT, Target::Object(what)) => {
            let obj = body_object(req, &scope_of(&what), Some(&what.name)).await?;
            Ok(json_response(200, &cp.update(obj, ttl).await?.to_value()))
        }
        (Method::PUT, Target::Status(what)) => {
            let obj = body_object(req, &scope_of(&what), Some(&what.name)).await?;
            Ok(json_response(200, &cp.update_status(obj).await?.to_value()))
        }
        (Method::GET, Target::Scale(what)) => Ok(json_response(
            200,
            &crate::scale::scale_of(&cp.get(&what).await?),
        )),
        (Method::PUT, Target::Scale(what)) => {
            let body = body_json(req).await?;
            let (replicas, revision) = crate::scale::parse_scale(&body)?;
            Ok(json_response(
                200,
                &crate::scale::set_replicas(cp, &what, replicas, revision).await?,
            ))
        }
        (Method::DELETE, Target::Object(what)) => {
            let grace = match query(&req, "gracePeriodSeconds") {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    Error::BadRequest(format!(
                        "query parameter gracePeriodSeconds: not a number: {v:?}"
                    ))
                })?),
            };
            let opts = DeleteOptions {
                revision,
                uid: query(&req, "uid").map(str::to_string),
                grace_period_seconds: grace,
            };
            Ok(json_response(
                200,
                &cp.delete_with(&what, &opts).await?.to_value(),
            ))
        }
        (m, t) => Err(Error::BadRequest(format!(
            "method {m} is not allowed on {}",
            match t {
                Target::Collection(s) => collection_path(&s),
                Target::Object(o) | Target::Status(o) | Target::Scale(o) | Target::Binding(o) => {
                    super::object_path(&o)
                }
            }
        ))),
    }
}

fn scope_of(what: &ObjectRef) -> Scope {
    Scope::namespaced(what.kind, &what.namespace)
}

/// Reads the request body as an object of the path's kind, in the path's
/// namespace (filled in when the body names none), named `name` if given.
async fn body_object(req: Request<Incoming>, scope: &Scope, name: Option<&str>) -> Result<Object> {
    object_in(body_json(req).await?, scope, name)
}

/// Decodes `v` as an object of the path's kind, in the path's namespace
/// (filled in when the body names none), named `name` if given.
pub fn object_in(v: Value, scope: &Scope, name: Option<&str>) -> Result<Object> {
    let mut obj = Object::from_value(v).map_err(|e| Error::BadRequest(e.to_string()))?;
    if obj.kind() != scope.kind {
        return Err(Error::BadRequest(format!(
            "the body is a {} but the path is for {}",
            obj.kind(),
            scope.kind.plural()
        )));
    }
    if let Some(ns) = &scope.namespace {
        match obj.meta().namespace.as_deref() {
            None | Some("") => obj.meta_mut().namespace = Some(ns.clone()),
            Some(got) if got != ns => {
                return Err(Error::BadRequest(format!(
                    "the namespace of the object ({got}) does not match the namespace of the request ({ns})"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(name) = name {
        if obj.name() != name {
            return Err(Error::BadRequest(format!(
                "the name of the object ({}) does not match the name of the request ({name})",
                obj.name()
            )));
        }
    }
    Ok(obj)
}

/// The request body as JSON (at most [`MAX_BODY`] bytes).
async fn body_json(req: Request<Incoming>) -> Result<Value> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| Error::BadRequest(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadRequest(format!("request body is not JSON: {e}")))
}

/// One watch event as a JSON line.
pub fn event_line(ev: &WatchEvent) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": ev.type_name(), "object": ev.object().to_value()}))
            .unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A watch-ending error as an ERROR event line.
pub fn error_line(e: &Error) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status_of(e)})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A watch as newline-delimited JSON events. Without a revision, the
/// current objects come first as ADDED, as the API server does.
async fn watch(
    cp: &dyn ControlPlane,
    scope: &Scope,
    revision: Option<u64>,
) -> Result<Response<Body>> {
    let (initial, from) = match revision {
        Some(r) => (Vec::new(), r),
        None => {
            let list = cp.list(scope).await?;
            (list.items, list.revision)
        }
    };
    let mut events = cp.watch(scope, from).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for o in initial {
            if tx.send(event_line(&WatchEvent::Added(o))).await.is_err() {
                return;
            }
        }
        while let Some(ev) = events.next().await {
            let line = match &ev {
                Ok(ev) => event_line(ev),
                Err(e) => error_line(e),
            };
            if tx.send(line).await.is_err() || ev.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(rx, "application/json"))
}

/// A response whose body is the chunks `rx` yields, of `content_type`
/// (watch streams, followed logs).
pub fn stream_response(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}
