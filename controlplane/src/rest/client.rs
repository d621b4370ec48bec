//! A [`ControlPlane`] that talks to an agent's API socket: what the CLI
//! uses with the embedded backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{collection_path, error_of, object_path};
use crate::api::{
    ControlPlane, DeleteOptions, Error, ObjectList, ObjectRef, Result, Scope, Watch, WatchEvent,
};
use crate::objects::Object;

/// The client of one agent socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        "the socket is root-only: run the CLI as root"
                    }
                    _ => "is `knode agent` running with this --run-dir?",
                };
                Error::Unavailable(format!(
                    "connect to {}: {e} ({hint})",
                    self.socket.display()
                ))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.broken("handshake", e))?;
        tokio::spawn(async move {
            // Ends when the response is read; errors surface on the request.
            let _ = conn.await;
        });
        let body = body
            .map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
            .unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "knode")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Error::BadRequest(format!("request {uri}: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.broken(uri, e))
    }

    fn broken(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("{what} on {}: {e}", self.socket.display()))
    }

    /// Sends a request and decodes the JSON answer (errors from `Status`).
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Result<Value> {
        let resp = self.send(method, uri, body).await?;
        let ok = resp.status().is_success();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(uri, e))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.broken(uri, format!("answer is not JSON: {e}")))?;
        if ok {
            Ok(v)
        } else {
            Err(error_of(&v))
        }
    }

    /// The `autoscaling/v1` Scale of `what` (its `/scale` subresource).
    pub async fn scale(&self, what: &ObjectRef) -> Result<Value> {
        let uri = format!("{}/scale", object_path(what));
        self.call(Method::GET, &uri, None).await
    }

    /// Sets `what`'s desired replicas through `/scale`; returns the new Scale.
    pub async fn set_scale(&self, what: &ObjectRef, replicas: i64) -> Result<Value> {
        let uri = format!("{}/scale", object_path(what));
        let body = serde_json::json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": what.name, "namespace": what.namespace},
            "spec": {"replicas": replicas},
        });
        self.call(Method::PUT, &uri, Some(body)).await
    }

    async fn object(&self, method: Method, uri: &str, body: Option<Value>) -> Result<Object> {
        let v = self.call(method, uri, body).await?;
        Object::from_value(v).map_err(|e| self.broken(uri, e))
    }
}

fn with_query(path: String, params: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
    if q.is_empty() {
        path
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

fn ttl_param(ttl: Option<Duration>) -> Option<String> {
    ttl.map(|t| crate::storage::ttl_secs(t).to_string())
}

#[async_trait]
impl ControlPlane for Client {
    async fn get(&self, what: &ObjectRef) -> Result<Object> {
        self.object(Method::GET, &object_path(what), None).await
    }

    async fn list(&self, scope: &Scope) -> Result<ObjectList> {
        let uri = collection_path(scope);
        let v = self.call(Method::GET, &uri, None).await?;
        let revision = v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let items = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| Object::from_value(i.clone()).map_err(|e| self.broken(&uri, e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ObjectList { items, revision })
    }

    async fn create(&self, obj: Object, ttl: Option<Duration>) -> Result<Object> {
        let scope = Scope::namespaced(obj.kind(), obj.namespace());
        let uri = with_query(collection_path(&scope), &[("ttlSeconds", ttl_param(ttl))]);
        self.object(Method::POST, &uri, Some(obj.to_value())).await
    }

    async fn update(&self, obj: Object, ttl: Option<Duration>) -> Result<Object> {
        let uri = with_query(
            object_path(&ObjectRef::of(&obj)),
            &[("ttlSeconds", ttl_param(ttl))],
        );
        self.object(Method::PUT, &uri, Some(obj.to_value())).await
    }

    async fn update_status(&self, obj: Object) -> Result<Object> {
        let uri = format!("{}/status", object_path(&ObjectRef::of(&obj)));
        self.object(Method::PUT, &uri, Some(obj.to_value())).await
    }

    async fn delete(&self, what: &ObjectRef, revision: Option<u64>) -> Result<Object> {
        let opts = DeleteOptions {
            revision,
            ..Default::default()
        };
        self.delete_with(what, &opts).await
    }

    async fn delete_with(&self, what: &ObjectRef, opts: &DeleteOptions) -> Result<Object> {
        let uri = with_query(
            object_path(what),
            &[
                ("resourceVersion", opts.revision.map(|r| r.to_string())),
                ("uid", opts.uid.clone()),
                (
                    "gracePeriodSeconds",
                    opts.grace_period_seconds.map(|g| g.to_string()),
                ),
            ],
        );
        self.object(Method::DELETE, &uri, None).await
    }

    async fn watch(&self, scope: &Scope, revision: u64) -> Result<Watch> {
        let uri = format!(
            "{}?watch=true&resourceVersion={revision}",
            collection_path(scope)
        );
        let resp = self.send(Method::GET, &uri, None).await?;
        if !resp.status().is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.broken(&uri, e))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(error_of(&v));
        }
        let (tx, watch) = Watch::channel(256);
        let me = self.clone();
        tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            loop {
                let frame = match body.frame().await {
                    None => return,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(me.broken(&uri, e))).await;
                        return;
                    }
                    Some(Ok(f)) => f,
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(nl + 1);
                    let ev = decode_event(line.chunk());
                    let end = ev.is_err();
                    if tx.send(ev).await.is_err() || end {
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }
}

/// One watch line: `{"type": "ADDED", "object": {...}}`.
fn decode_event(line: &[u8]) -> Result<WatchEvent> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| Error::Internal(format!("watch event is not JSON: {e}")))?;
    let obj = || {
        Object::from_value(v["object"].clone())
            .map_err(|e| Error::Internal(format!("watch event object: {e}")))
    };
    match v["type"].as_str().unwrap_or_default() {
        "ADDED" => Ok(WatchEvent::Added(obj()?)),
        "MODIFIED" => Ok(WatchEvent::Modified(obj()?)),
        "DELETED" => Ok(WatchEvent::Deleted(obj()?)),
        "ERROR" => Err(error_of(&v["object"])),
        other => Err(Error::Internal(format!(
            "unknown watch event type {other:?}"
        ))),
    }
}
