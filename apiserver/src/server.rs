//! The HTTPS listener and the request router: authenticate, authorize,
//! then answer discovery or a resource verb through the control plane.
//! Errors are `Status` objects with kube-apiserver's reasons and codes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controlplane::api::revision_of;
use controlplane::fields::FieldValidation;
use controlplane::rest::server::{
    error_line, list_page_body, object_in, stream_response, Body, MAX_BODY,
};
use controlplane::rest::{parse_path, status_code, status_of, Target};
use controlplane::{
    ControlPlane, DeleteOptions, Error, Object, ObjectList, ObjectRef, Scope, WatchEvent,
};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::apply::Who;
use crate::auth::{Attributes, Authorizer, TokenFile, User};
use crate::pager::{Pager, Refused};
use crate::select::Selector;
use crate::table::{self, Columns};

/// What the API serves with.
pub struct Settings {
    pub cp: Arc<dyn ControlPlane>,
    pub tls: Arc<rustls::ServerConfig>,
    pub authorizer: Arc<dyn Authorizer>,
    pub tokens: TokenFile,
    pub columns: Arc<dyn Columns>,
    /// Where pods' logs are read (`pods/<name>/log`).
    pub logs: Arc<dyn crate::logs::PodLogs>,
    /// Where commands run in pods (`pods/<name>/exec`, `attach`).
    pub exec: Arc<dyn crate::exec::PodExec>,
    /// Where pods' ports are reached (`pods/<name>/portforward`).
    pub portforward: Arc<dyn crate::portforward::PodPortForward>,
    /// `host:port` clients reach the API at (discovery reports it).
    pub address: String,
    /// Where pods bound to other nodes are reached (their node API);
    /// `None`: every pod is served here (or refused by the handlers).
    pub proxy: Option<Arc<crate::nodeapi::Proxy>>,
    /// This listener is the node API (kubelet's port), not the API: it
    /// answers the kubelet paths of [`crate::nodeapi`] and nothing else.
    pub node_api: bool,
}

pub(crate) type Resp = Response<Body>;

/// kube-apiserver's message for a continue token past compaction.
const EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";

/// Binds `addr` (`127.0.0.1:6443`).
pub async fn bind(addr: &str) -> crate::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, settings: Settings) {
    let acceptor = tokio_rustls::TlsAcceptor::from(settings.tls.clone());
    let settings = Arc::new(settings);
    let pager = Arc::new(Pager::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the API port");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // As Go servers do: small writes (a stream's reply, then its
        // first data) must not wait for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY on an API connection");
        }
        let (acceptor, settings, pager) = (acceptor.clone(), settings.clone(), pager.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let cert_user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::x509::subject(c))
                .map(User::from_cert);
            let svc = hyper::service::service_fn(move |req| {
                let (settings, pager, cert_user) =
                    (settings.clone(), pager.clone(), cert_user.clone());
                async move { Ok::<_, Infallible>(handle(&settings, &pager, cert_user, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "API connection");
            }
        });
    }
}

pub(crate) fn json_response(code: u16, v: &Value) -> Resp {
    bytes_response(code, serde_json::to_vec(v).unwrap_or_default())
}

fn bytes_response(code: u16, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Body::Full(Some(Bytes::from(body))));
    *r.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &Error) -> Resp {
    json_response(status_code(e).0, &status_of(e))
}

fn status(code: u16, reason: &str, message: &str) -> Resp {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

/// Percent-decoding of a query value (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(x) => {
                    out.push(x);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            x => out.push(x),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(req: &Request<Incoming>) -> Query {
        let q = req.uri().query().unwrap_or_default();
        Query(
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn all(&self) -> &[(String, String)] {
        &self.0
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Error::BadRequest(format!("query parameter {key}: not a number: {v:?}"))
            }),
        }
    }
}

/// The user of a request: its client certificate, else its bearer token.
fn authenticate(s: &Settings, cert_user: Option<User>, req: &Request<Incoming>) -> Option<User> {
    cert_user.or_else(|| {
        let h = req
            .headers()
            .get(hyper::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let token = h.strip_prefix("Bearer ")?.trim();
        s.tokens.user(token).cloned()
    })
}

/// The user a request acts as: with `Impersonate-User` (and
/// `Impersonate-Group`) headers, that user, if the caller may
/// `impersonate` it and each group (kubectl's `--as`, `--as-group`);
/// otherwise the caller. Other impersonation headers are refused rather
/// than ignored.
async fn impersonate(s: &Settings, user: User, req: &Request<Incoming>) -> Result<User, Box<Resp>> {
    let h = req.headers();
    let values = |name: &str| -> Vec<String> {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let as_user = values("impersonate-user");
    let as_groups = values("impersonate-group");
    let extra = h.keys().any(|k| {
        k.as_str().starts_with("impersonate-")
            && !matches!(k.as_str(), "impersonate-user" | "impersonate-group")
    });
    if as_user.is_empty() && as_groups.is_empty() && !extra {
        return Ok(user);
    }
    let bad = |m: &str| Err(Box::new(status(400, "BadRequest", m)));
    if extra {
        return bad("impersonating a uid or user extras is not supported");
    }
    let [name] = as_user.as_slice() else {
        return bad("impersonation needs exactly one Impersonate-User");
    };
    let check = |resource: &str, name: &str| Attributes {
        verb: "impersonate".into(),
        group: String::new(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: String::new(),
        name: name.into(),
        path: req.uri().path().into(),
    };
    let mut wanted = vec![check("users", name)];
    wanted.extend(as_groups.iter().map(|g| check("groups", g)));
    for a in &wanted {
        if let Err(why) = s.authorizer.authorize(&user, a).await {
            return Err(Box::new(json_response(
                403,
                &crate::auth::forbidden(&user, a, &why),
            )));
        }
    }
    let mut groups = as_groups;
    groups.push("system:authenticated".into());
    Ok(User {
        name: name.clone(),
        uid: String::new(),
        groups,
    })
}

/// The authorizer's view of a request.
fn attributes(req: &Request<Incoming>, target: Option<&Target>, watching: bool) -> Attributes {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(t) = target else {
        return Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path,
        };
    };
    let (kind, namespace, name, sub) = match t {
        Target::Collection(s) => (
            s.kind,
            s.namespace.clone().unwrap_or_default(),
            String::new(),
            "",
        ),
        Target::Object(o) => (o.kind, o.namespace.clone(), o.name.clone(), ""),
        Target::Status(o) => (o.kind, o.namespace.clone(), o.name.clone(), "status"),
        Target::Scale(o) => (o.kind, o.namespace.clone(), o.name.clone(), "scale"),
        Target::Binding(o) => (o.kind, o.namespace.clone(), o.name.clone(), "binding"),
    };
    let collection = matches!(t, Target::Collection(_));
    let verb = match method {
        Method::GET if watching => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    Attributes {
        verb: verb.into(),
        group: kind.info().group().into(),
        resource: kind.plural().into(),
        subresource: sub.into(),
        namespace,
        name,
        path,
    }
}

async fn handle(
    s: &Settings,
    pager: &Pager,
    cert_user: Option<User>,
    req: Request<Incoming>,
) -> Resp {
    let Some(user) = authenticate(s, cert_user, &req) else {
        return json_response(401, &crate::auth::unauthorized());
    };
    if s.node_api {
        return node_api(s, &user, req).await.unwrap_or_else(|e| match e {
            Error::BadRequest(m) => status(400, "BadRequest", &m),
            e => error_response(&e),
        });
    }
    let user = match impersonate(s, user, &req).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let path = req.uri().path().to_string();
    let q = Query::of(&req);
    if let Some((ns, name)) = crate::logs::log_path(&path) {
        return pod_log(s, &user, req, &q, &ns, &name)
            .await
            .unwrap_or_else(|e| error_response(&e));
    }
    if let Some((ns, name, verb)) = crate::exec::stream_path(&path) {
        return pod_stream(s, &user, req, &q, &ns, &name, verb)
            .await
            .unwrap_or_else(|e| match e {
                // kube-apiserver's words, without our "bad request: ".
                Error::BadRequest(m) => status(400, "BadRequest", &m),
                e => error_response(&e),
            });
    }
    if let Some((ns, name, "portforward")) = crate::exec::pod_subresource(&path) {
        return pod_portforward(s, &user, req, &q, &ns, &name)
            .await
            .unwrap_or_else(|e| match e {
                Error::BadRequest(m) => status(400, "BadRequest", &m),
                e => error_response(&e),
            });
    }
    if path.trim_end_matches('/') == SSAR_PATH {
        return self_review(s, &user, req)
            .await
            .unwrap_or_else(|e| error_response(&e));
    }
    let watching = matches!(q.get("watch"), Some("true" | "1"));
    let target = parse_path(&path);
    let attrs = attributes(&req, target.as_ref(), watching);
    if let Err(why) = s.authorizer.authorize(&user, &attrs).await {
        tracing::debug!(user = %user.name, verb = %attrs.verb, %path, "forbidden");
        return json_response(403, &crate::auth::forbidden(&user, &attrs, &why));
    }
    let method = req.method().clone();
    let result = match target {
        Some(t) => resource(s, pager, req, t, &q, watching).await,
        None if method == Method::GET => Ok(non_resource(s, &path, &req)),
        None => Ok(None),
    };
    match result {
        Ok(Some(r)) => r,
        Ok(None) => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "API request failed");
            error_response(&e)
        }
    }
}

/// Whether `user` may `verb` the subresource `sub` of pod `ns/name`; the
/// 403 to answer when not.
async fn authorize_pod(
    s: &Settings,
    user: &User,
    path: &str,
    verb: &str,
    sub: &str,
    ns: &str,
    name: &str,
) -> Result<(), Box<Resp>> {
    let attrs = Attributes {
        verb: verb.into(),
        group: String::new(),
        resource: "pods".into(),
        subresource: sub.into(),
        namespace: ns.into(),
        name: name.into(),
        path: path.into(),
    };
    match s.authorizer.authorize(user, &attrs).await {
        Ok(()) => Ok(()),
        Err(why) => Err(Box::new(json_response(
            403,
            &crate::auth::forbidden(user, &attrs, &why),
        ))),
    }
}

/// The pod `ns/name`.
async fn get_pod(
    s: &Settings,
    ns: &str,
    name: &str,
) -> Result<Box<k8s_openapi::api::core::v1::Pod>, Error> {
    match s
        .cp
        .get(&ObjectRef::new(controlplane::Kind::Pod, ns, name))
        .await?
    {
        Object::Pod(p) => Ok(p),
        o => Err(Error::Internal(format!("{} is not a pod", o.describe()))),
    }
}

/// `pods/<name>/log`: authorized as `get` of that subresource, then
/// streamed as text from where the pod's logs are kept.
async fn pod_log(
    s: &Settings,
    user: &User,
    req: Request<Incoming>,
    q: &Query,
    ns: &str,
    name: &str,
) -> Result<Resp, Error> {
    let path = req.uri().path();
    if let Err(r) = authorize_pod(s, user, path, "get", "log", ns, name).await {
        return Ok(*r);
    }
    if req.method() != Method::GET {
        return Ok(status(405, "MethodNotAllowed", "pods/log answers GET only"));
    }
    let query = crate::logs::parse_query(|k| q.get(k).map(str::to_string))?;
    let pod = get_pod(s, ns, name).await?;
    if let Some(node) = s.proxy.as_ref().and_then(|p| p.remote(&pod)) {
        return proxy_to(s, node, &pod, "log", q, req).await;
    }
    let rx = s.logs.logs(&pod, &query).await?;
    Ok(stream_response(rx, "text/plain"))
}

/// A request for subresource `sub` of `pod` (already authorized), sent
/// to the node API of `node`, the other node the pod is bound to.
async fn proxy_to(
    s: &Settings,
    node: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
    sub: &str,
    q: &Query,
    req: Request<Incoming>,
) -> Result<Resp, Error> {
    let Some(proxy) = s.proxy.as_ref() else {
        return Err(Error::Internal("no proxy to other nodes".into()));
    };
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        // Only a container of the pod reaches the node's path.
        Some(c) if !crate::nodeapi::has_container(pod, c) => {
            return Err(Error::BadRequest(format!(
                "container {c} is not valid for pod {}",
                pod.metadata.name.as_deref().unwrap_or_default()
            )))
        }
        Some(c) => c.to_string(),
        None if sub == "portforward" => String::new(),
        None => crate::nodeapi::default_container(pod)?,
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let query = req.uri().query().unwrap_or_default();
    let path = crate::nodeapi::path_for(sub, ns, name, &container, query);
    tracing::debug!(pod = %format!("{ns}/{name}"), %node, %path, "to the pod's node");
    proxy.forward(node, req, &path).await
}

/// The node API (kubelet's port): its paths answered by the handlers of
/// the API's pod subresources, the container from the path; anything
/// else is not found. The caller is authorized by `s.authorizer`
/// ([`crate::nodeapi::ApiServers`]).
async fn node_api(s: &Settings, user: &User, req: Request<Incoming>) -> Result<Resp, Error> {
    use crate::nodeapi::NodePath;
    let Some(target) = crate::nodeapi::parse(req.uri().path()) else {
        return Ok(status(
            404,
            "NotFound",
            "the node API serves /containerLogs, /exec, /attach and /portForward only",
        ));
    };
    let mut q = Query::of(&req);
    let mut with_container = |c: String| {
        q.0.retain(|(k, _)| k != "container");
        q.0.insert(0, ("container".into(), c));
    };
    match target {
        NodePath::Logs { ns, pod, container } => {
            with_container(container);
            pod_log(s, user, req, &q, &ns, &pod).await
        }
        NodePath::Stream {
            ns,
            pod,
            container,
            verb,
        } => {
            with_container(container);
            pod_stream(s, user, req, &q, &ns, &pod, verb).await
        }
        NodePath::PortForward { ns, pod } => pod_portforward(s, user, req, &q, &ns, &pod).await,
    }
}

/// `pods/<name>/exec` and `attach`: authorized as `create` of that
/// subresource (for GET too, as kube-apiserver does for WebSocket
/// upgrades), checked (pod, phase, container, where it runs) while an
/// error can still be a Status, then upgraded to WebSocket (served by
/// [`crate::exec::serve`]) or SPDY/3.1 ([`crate::exec_spdy::serve`]).
async fn pod_stream(
    s: &Settings,
    user: &User,
    mut req: Request<Incoming>,
    q: &Query,
    ns: &str,
    name: &str,
    verb: crate::exec::Verb,
) -> Result<Resp, Error> {
    let path = req.uri().path();
    if let Err(r) = authorize_pod(s, user, path, "create", verb.name(), ns, name).await {
        return Ok(*r);
    }
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Ok(status(
            405,
            "MethodNotAllowed",
            &format!("pods/{} answers GET and POST only", verb.name()),
        ));
    }
    let query = crate::exec::parse_query(q.all(), verb)?;
    let pod = get_pod(s, ns, name).await?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if let Some(p @ ("Succeeded" | "Failed")) = phase {
        return Err(Error::BadRequest(format!(
            "cannot exec into or attach to a container in a completed pod; current phase is {p}"
        )));
    }
    if let Some(node) = s.proxy.as_ref().and_then(|p| p.remote(&pod)) {
        return proxy_to(s, node, &pod, verb.name(), q, req).await;
    }
    // The pod's own errors first: kubectl retries a failed WebSocket
    // upgrade over SPDY and prints what that attempt got.
    let session = s.exec.prepare(&pod, verb, &query).await?;
    let header = |n: &str| -> Vec<&str> {
        req.headers()
            .get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    let upgrade = header("upgrade").join(",").to_ascii_lowercase();
    if upgrade.contains("spdy/3.1") {
        let offered = header("x-stream-protocol-version");
        let Some(protocol) = crate::exec_spdy::negotiate(offered.iter().copied()) else {
            return Err(Error::BadRequest(format!(
                "X-Stream-Protocol-Version: none of {:?} is served over SPDY; want {}",
                offered.join(","),
                crate::exec::V4
            )));
        };
        let upgraded = hyper::upgrade::on(&mut req);
        let (pod_name, verb_name) = (format!("{ns}/{name}"), verb.name());
        tokio::spawn(async move {
            match upgraded.await {
                Ok(io) => crate::exec_spdy::serve(TokioIo::new(io), query, session).await,
                Err(e) => {
                    tracing::debug!(pod = %pod_name, verb = verb_name, error = %e, "SPDY upgrade")
                }
            }
        });
        return switching(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", protocol),
        ]);
    }
    let key = header("sec-websocket-key").first().map(|k| k.to_string());
    let (true, Some(key)) = (upgrade.contains("websocket"), key) else {
        return Err(Error::BadRequest(format!(
            "Upgrade request required: pods/{} is served over WebSocket ({}) and SPDY/3.1",
            verb.name(),
            crate::exec::V5
        )));
    };
    let Some(protocol) = crate::exec::negotiate(header("sec-websocket-protocol")) else {
        return Err(Error::BadRequest(format!(
            "Sec-WebSocket-Protocol: none of {:?} is served; want {} or {}",
            header("sec-websocket-protocol").join(","),
            crate::exec::V5,
            crate::exec::V4
        )));
    };
    let upgraded = hyper::upgrade::on(&mut req);
    let (pod_name, verb_name) = (format!("{ns}/{name}"), verb.name());
    tokio::spawn(async move {
        match upgraded.await {
            Ok(io) => crate::exec::serve(TokioIo::new(io), protocol, query, session).await,
            Err(e) => {
                tracing::debug!(pod = %pod_name, verb = verb_name, error = %e, "WebSocket upgrade")
            }
        }
    });
    switching(&[
        ("upgrade", "websocket"),
        ("sec-websocket-accept", &crate::websocket::accept_key(&key)),
        ("sec-websocket-protocol", protocol),
    ])
}

/// A `101 Switching Protocols` with `headers` (and `Connection: Upgrade`).
fn switching(headers: &[(&'static str, &str)]) -> Result<Resp, Error> {
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    for (k, v) in headers {
        let v = hyper::header::HeaderValue::from_str(v)
            .map_err(|e| Error::BadRequest(format!("{k}: {e}")))?;
        h.insert(*k, v);
    }
    Ok(r)
}

/// `pods/<name>/portforward`: authorized as `create` of that subresource
/// (as exec), checked (pod, phase, where it runs) while an error can
/// still be a Status, then upgraded to the transport the client asked
/// for (SPDY in WebSocket, plain SPDY, WebSocket channels) and served by
/// [`crate::portforward::serve`].
async fn pod_portforward(
    s: &Settings,
    user: &User,
    mut req: Request<Incoming>,
    q: &Query,
    ns: &str,
    name: &str,
) -> Result<Resp, Error> {
    use crate::portforward::{self as pf, Transport};
    let path = req.uri().path();
    if let Err(r) = authorize_pod(s, user, path, "create", "portforward", ns, name).await {
        return Ok(*r);
    }
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return Ok(status(
            405,
            "MethodNotAllowed",
            "pods/portforward answers GET and POST only",
        ));
    }
    let header = |n: &str| -> Vec<String> {
        req.headers()
            .get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let upgrade = header("upgrade").join(",").to_ascii_lowercase();
    let offered = header("sec-websocket-protocol");
    let chosen = if upgrade.contains("spdy/3.1") {
        Some((Transport::Spdy, pf::PROTOCOL_V1))
    } else if upgrade.contains("websocket") {
        match pf::negotiate(offered.iter().map(String::as_str)) {
            Some(pf::TUNNEL) => Some((Transport::Tunnel, pf::TUNNEL)),
            Some(p) => Some((Transport::Channels, p)),
            None => {
                return Err(Error::BadRequest(format!(
                    "Sec-WebSocket-Protocol: none of {:?} is served; want {} or {}",
                    offered.join(","),
                    pf::TUNNEL,
                    pf::V4
                )))
            }
        }
    } else {
        None
    };
    // The ports first: a request with bad ones is told so, upgrade or not.
    let channels = matches!(chosen, Some((Transport::Channels, _)));
    let ports = pf::parse_ports(q.all(), channels)?;
    let Some((transport, protocol)) = chosen else {
        return Err(Error::BadRequest(format!(
            "Upgrade request required: pods/portforward is served over WebSocket ({}, {}) and SPDY/3.1",
            pf::TUNNEL,
            pf::V4
        )));
    };
    let key = header("sec-websocket-key").into_iter().next();
    if transport != Transport::Spdy && key.is_none() {
        return Err(Error::BadRequest(
            "Sec-WebSocket-Key: a WebSocket upgrade needs one".into(),
        ));
    }
    let pod = get_pod(s, ns, name).await?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if let Some(p @ ("Succeeded" | "Failed")) = phase {
        return Err(Error::BadRequest(format!(
            "cannot port-forward to a completed pod; current phase is {p}"
        )));
    }
    if let Some(node) = s.proxy.as_ref().and_then(|p| p.remote(&pod)) {
        return proxy_to(s, node, &pod, "portforward", q, req).await;
    }
    let dial = s.portforward.prepare(&pod).await?;
    let target = pf::Target {
        pod: format!("{ns}/{name}"),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    };
    let upgraded = hyper::upgrade::on(&mut req);
    let pod_name = target.pod.clone();
    tokio::spawn(async move {
        match upgraded.await {
            Ok(io) => pf::serve(TokioIo::new(io), transport, ports, target, dial).await,
            Err(e) => tracing::debug!(pod = %pod_name, error = %e, "port-forward upgrade"),
        }
    });
    match key {
        Some(key) if transport != Transport::Spdy => switching(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", &crate::websocket::accept_key(&key)),
            ("sec-websocket-protocol", protocol),
        ]),
        _ => switching(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", protocol),
        ]),
    }
}

/// Where `kubectl auth can-i` asks.
const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// `kubectl auth can-i`: a SelfSubjectAccessReview, answered by the
/// authorizer that answers the user's requests.
async fn self_review(s: &Settings, user: &User, req: Request<Incoming>) -> Result<Resp, Error> {
    if req.method() != Method::POST {
        return Ok(status(
            405,
            "MethodNotAllowed",
            "selfsubjectaccessreviews answer POST only",
        ));
    }
    let path = req.uri().path().to_string();
    let attrs = Attributes {
        verb: "create".into(),
        group: "authorization.k8s.io".into(),
        resource: "selfsubjectaccessreviews".into(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path,
    };
    if let Err(why) = s.authorizer.authorize(user, &attrs).await {
        return Ok(json_response(
            403,
            &crate::auth::forbidden(user, &attrs, &why),
        ));
    }
    let body = body_json(req).await?;
    let spec = body.get("spec").cloned().unwrap_or_default();
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let asked = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), _) => Attributes {
            verb: text(r, "verb"),
            group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
            path: String::new(),
        },
        (None, Some(n)) => Attributes {
            verb: text(n, "verb"),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: text(n, "path"),
        },
        (None, None) => {
            return Err(Error::BadRequest(
                "spec: one of resourceAttributes or nonResourceAttributes is required".into(),
            ))
        }
    };
    if asked.verb.is_empty() {
        return Err(Error::BadRequest("spec: the verb is required".into()));
    }
    let decision = s.authorizer.authorize(user, &asked).await;
    let mut status_v = json!({"allowed": decision.is_ok()});
    if let Err(why) = decision.as_ref().map_err(|w| w.as_str()) {
        if !why.is_empty() {
            status_v["reason"] = why.into();
        }
    }
    Ok(json_response(
        201,
        &json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": null}, "spec": spec, "status": status_v}),
    ))
}

/// Discovery, version and health.
fn non_resource(s: &Settings, path: &str, req: &Request<Incoming>) -> Option<Resp> {
    let p = path.trim_end_matches('/');
    Some(match p {
        "/healthz" | "/livez" | "/readyz" => {
            let mut r = Response::new(Body::Full(Some(Bytes::from_static(b"ok"))));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        "/version" => json_response(200, &crate::discovery::version()),
        "/api" | "/apis" => {
            let accept = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let mut r = match crate::discovery::aggregated_wanted(&accept) {
                Some(v) => {
                    let doc = crate::discovery::aggregated(p == "/api", v);
                    let mut r = json_response(200, &doc);
                    let ct = crate::discovery::aggregated_content_type(v);
                    if let Ok(ct) = hyper::header::HeaderValue::from_str(&ct) {
                        r.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
                    }
                    r
                }
                None if p == "/api" => {
                    json_response(200, &crate::discovery::core_versions(&s.address))
                }
                None => json_response(200, &crate::discovery::groups()),
            };
            r.headers_mut().insert(
                hyper::header::VARY,
                hyper::header::HeaderValue::from_static("Accept"),
            );
            r
        }
        "/api/v1" => json_response(200, &crate::discovery::resources("v1")?),
        "/openapi/v3" => json_response(200, &crate::openapi::index()),
        _ if p.starts_with("/openapi/v3/") => json_response(
            200,
            &crate::openapi::group_version(&p["/openapi/v3/".len()..])?,
        ),
        _ => {
            let gv = p.strip_prefix("/apis/")?;
            json_response(200, &crate::discovery::resources(gv)?)
        }
    })
}

/// Whether a write is a dry run: `dryRun=All` (repeatable); any other
/// value is refused as kube-apiserver refuses it (422, naming `dryRun`).
fn dry_run(q: &Query, method: &Method) -> Result<bool, Error> {
    let values: Vec<&str> = q
        .all()
        .iter()
        .filter(|(k, _)| k == "dryRun")
        .map(|(_, v)| v.as_str())
        .collect();
    if values.iter().all(|v| *v == "All") {
        return Ok(!values.is_empty());
    }
    let options = match *method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::DELETE => "DeleteOptions",
        _ => "PatchOptions",
    };
    Err(Error::invalid(
        format!("{options}.meta.k8s.io \"\""),
        "dryRun",
        format!("Unsupported value: {values:?}: supported values: \"All\""),
    ))
}

/// Whether the client asked for a server-side Table.
fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn resource(
    s: &Settings,
    pager: &Pager,
    req: Request<Incoming>,
    target: Target,
    q: &Query,
    watching: bool,
) -> Result<Option<Resp>, Error> {
    let cp = s.cp.as_ref();
    let table = wants_table(&req).then_some(q.get("includeObject") == Some("Object"));
    let one = |o: Object| match table {
        Some(full) => json_response(
            200,
            &table::table(s.columns.as_ref(), o.kind(), &[o], None, full),
        ),
        None => json_response(200, &o.to_value()),
    };
    let method = req.method().clone();
    let fv = FieldValidation::parse(q.get("fieldValidation"))?;
    // Writes go to the control plane, or to its dry-run twin when asked.
    let dry;
    let cp = if method != Method::GET && dry_run(q, &method)? {
        dry = s
            .cp
            .dry_run()
            .ok_or_else(|| Error::BadRequest("dryRun: this control plane cannot dry-run".into()))?;
        dry.as_ref()
    } else {
        cp
    };
    let agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|a| a.to_str().ok());
    let who = Who::of(q.get("fieldManager"), agent)?;
    let ctype = media_type(&req);
    if method == Method::PATCH && q.get("force").is_some() && ctype != crate::apply::APPLY {
        return Err(Error::invalid(
            "PatchOptions.meta.k8s.io \"\"",
            "force",
            "Forbidden: may not be specified for non-apply patch",
        ));
    }
    Ok(Some(match (method, target) {
        (Method::GET, Target::Collection(scope)) => {
            let sel = Selector::parse(q.get("labelSelector"), q.get("fieldSelector"))
                .map_err(Error::BadRequest)?;
            if watching {
                let timeout = q.number("timeoutSeconds")?.map(Duration::from_secs);
                let rv = q.number("resourceVersion")?.filter(|r| *r != 0);
                return watch(s, &scope, rv, sel, table, timeout).await.map(Some);
            }
            let limit = q.number::<usize>("limit")?;
            // The list a continue token belongs to.
            let request = format!(
                "{}?{}&{}",
                req.uri().path(),
                q.get("labelSelector").unwrap_or_default(),
                q.get("fieldSelector").unwrap_or_default()
            );
            let page = match q.get("continue").filter(|c| !c.is_empty()) {
                Some(token) => match pager.next(&request, token, limit) {
                    Ok(page) => page,
                    Err(Refused::Invalid) => {
                        return Err(Error::BadRequest(format!(
                            "continue: {token:?} is not a continue token of this list"
                        )))
                    }
                    Err(Refused::Expired) => return Ok(Some(status(410, "Expired", EXPIRED))),
                },
                None => {
                    let mut list = cp.list(&scope).await?;
                    list.items.retain(|o| sel.matches(o));
                    pager.first(&request, list.items, list.revision, limit)
                }
            };
            match table {
                Some(full) => {
                    let mut t = table::table(
                        s.columns.as_ref(),
                        scope.kind,
                        &page.items,
                        Some(page.revision),
                        full,
                    );
                    if let Some(next) = &page.next {
                        t["metadata"]["continue"] = next.as_str().into();
                        t["metadata"]["remainingItemCount"] = page.remaining.into();
                    }
                    json_response(200, &t)
                }
                None => {
                    let list = ObjectList {
                        items: page.items,
                        revision: page.revision,
                    };
                    bytes_response(
                        200,
                        list_page_body(&scope, list, page.next.as_deref(), page.remaining),
                    )
                }
            }
        }
        (Method::GET, Target::Object(what)) => one(cp.get(&what).await?),
        (Method::POST, Target::Collection(scope)) => {
            let (obj, warnings) = checked(body_json(req).await?, &scope, None, fv)?;
            let obj = who.created(obj)?;
            warn(
                json_response(201, &cp.create(obj, None).await?.to_value()),
                &warnings,
            )
        }
        (Method::PUT, Target::Object(what)) => put(cp, req, &what, Some(&who), fv).await?,
        (Method::PUT, Target::Status(what)) => put(cp, req, &what, None, fv).await?,
        (Method::GET, Target::Status(what)) => one(cp.get(&what).await?),
        (Method::PATCH, Target::Object(what)) if ctype == crate::apply::APPLY => {
            let Some(manager) = who.asked.as_deref() else {
                return Err(Error::invalid(
                    "PatchOptions.meta.k8s.io \"\"",
                    "fieldManager",
                    "Required value: is required for apply patch",
                ));
            };
            let config = crate::apply::configuration(&body_bytes(req).await?, &what)?;
            let opts = crate::apply::Options {
                manager,
                force: q.get("force") == Some("true"),
                fv,
            };
            crate::apply::apply(cp, &what, &config, &opts).await?
        }
        (Method::PATCH, Target::Object(what)) => patch(cp, req, &what, Some(&who), fv).await?,
        (Method::PATCH, Target::Status(what)) => patch(cp, req, &what, None, fv).await?,
        (Method::GET, Target::Scale(what)) => {
            json_response(200, &controlplane::scale::scale_of(&cp.get(&what).await?))
        }
        (Method::PUT, Target::Scale(what)) => {
            let (replicas, revision) = controlplane::scale::parse_scale(&body_json(req).await?)?;
            json_response(
                200,
                &controlplane::scale::set_replicas_with(
                    cp,
                    &what,
                    replicas,
                    revision,
                    &who.marker("scale"),
                )
                .await?,
            )
        }
        (Method::PATCH, Target::Scale(what)) => patch_scale(cp, req, &what, &who).await?,
        (Method::POST, Target::Binding(what)) => {
            let b = body_json(req).await?;
            let node = b["target"]["name"].as_str().unwrap_or_default();
            let uid = b["metadata"]["uid"].as_str();
            controlplane::api::bind(cp, &what, uid, node).await?;
            json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            )
        }
        (Method::DELETE, Target::Object(what)) => delete(cp, req, &what, q).await?,
        (m, _) => status(
            405,
            "MethodNotAllowed",
            &format!("the server does not allow this method on the requested resource ({m})"),
        ),
    }))
}

/// DELETE of one object, with kube's DeleteOptions from the body or the
/// query: gracePeriodSeconds, preconditions (uid, resourceVersion) and
/// propagationPolicy. Orphan (or orphanDependents) releases the object's
/// dependents first; Foreground is served as Background (with a warning):
/// the collector removes dependents after the owner, not before.
async fn delete(
    cp: &dyn ControlPlane,
    req: Request<Incoming>,
    what: &ObjectRef,
    q: &Query,
) -> Result<Resp, Error> {
    let has_body = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|l| l != "0")
        || req.headers().contains_key(hyper::header::TRANSFER_ENCODING);
    let body = if has_body {
        body_json(req).await?
    } else {
        Value::Null
    };
    let field = |key: &str| body.get(key).filter(|v| !v.is_null()).cloned();
    // kubectl sends dryRun in the DeleteOptions body.
    let dry;
    let cp = match field("dryRun") {
        Some(Value::Array(values)) if !values.is_empty() => {
            if !values.iter().all(|v| v == "All") {
                return Err(Error::invalid(
                    "DeleteOptions.meta.k8s.io \"\"",
                    "dryRun",
                    format!("Unsupported value: {values:?}: supported values: \"All\""),
                ));
            }
            dry = cp.dry_run().ok_or_else(|| {
                Error::BadRequest("dryRun: this control plane cannot dry-run".into())
            })?;
            dry.as_ref()
        }
        _ => cp,
    };
    let grace =
        match (
            field("gracePeriodSeconds"),
            q.number::<i64>("gracePeriodSeconds")?,
        ) {
            (_, Some(g)) => Some(g),
            (Some(v), None) => Some(v.as_i64().ok_or_else(|| {
                Error::BadRequest(format!("gracePeriodSeconds: not a number: {v}"))
            })?),
            (None, None) => None,
        };
    let policy = q
        .get("propagationPolicy")
        .map(str::to_string)
        .or_else(|| field("propagationPolicy").and_then(|v| v.as_str().map(str::to_string)));
    let orphan = match policy.as_deref() {
        None | Some("") => {
            field("orphanDependents").and_then(|v| v.as_bool()) == Some(true)
                || q.get("orphanDependents") == Some("true")
        }
        Some("Orphan") => true,
        Some("Background" | "Foreground") => false,
        Some(p) => {
            return Err(Error::BadRequest(format!(
                "propagationPolicy: unsupported value {p:?}: want Orphan, Background or Foreground"
            )))
        }
    };
    let pre = field("preconditions").unwrap_or_default();
    let revision = match pre.get("resourceVersion").and_then(Value::as_str) {
        None | Some("") => None,
        Some(r) => Some(r.parse().map_err(|_| {
            Error::BadRequest(format!(
                "preconditions.resourceVersion: not a version: {r:?}"
            ))
        })?),
    };
    let opts = DeleteOptions {
        revision,
        uid: pre
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        grace_period_seconds: grace,
    };
    if orphan {
        let owner = cp.get(what).await?;
        if opts
            .uid
            .as_ref()
            .is_some_and(|u| owner.meta().uid.as_ref() != Some(u))
        {
            return Err(Error::Conflict {
                kind: what.kind,
                name: what.name.clone(),
                reason: "the UID in the precondition does not match the object's".into(),
            });
        }
        controllers::gc::orphan_dependents(cp, &owner)
            .await
            .map_err(|e| Error::Internal(format!("orphaning the dependents: {e}")))?;
    }
    let deleted = cp.delete_with(what, &opts).await?;
    let warnings = match policy.as_deref() {
        Some("Foreground") => vec![
            "foreground deletion is served as background: dependents are removed after the owner"
                .to_string(),
        ],
        _ => Vec::new(),
    };
    Ok(warn(json_response(200, &deleted.to_value()), &warnings))
}

/// PUT of an object (`who` records it in managedFields) or its status
/// (`None`).
async fn put(
    cp: &dyn ControlPlane,
    req: Request<Incoming>,
    what: &ObjectRef,
    who: Option<&Who>,
    fv: FieldValidation,
) -> Result<Resp, Error> {
    let (obj, warnings) = checked(body_json(req).await?, &scope_of(what), Some(&what.name), fv)?;
    let written = match who {
        None => cp.update_status(obj).await?,
        Some(who) => {
            let live = cp.get(what).await?;
            cp.update(who.updated(&live, obj)?, None).await?
        }
    };
    Ok(warn(json_response(200, &written.to_value()), &warnings))
}

/// Decodes a request body for `scope` and checks its fields as `fv` asks:
/// the object and the warnings to send back.
pub(crate) fn checked(
    v: Value,
    scope: &Scope,
    name: Option<&str>,
    fv: FieldValidation,
) -> Result<(Object, Vec<String>), Error> {
    // As kube-apiserver does, a body without apiVersion or kind is of the
    // kind its path names (the Python client sends them so).
    let mut v = v;
    if let Value::Object(m) = &mut v {
        m.entry("apiVersion")
            .or_insert_with(|| scope.kind.api_version().into());
        m.entry("kind").or_insert_with(|| scope.kind.name().into());
    }
    let obj = object_in(v.clone(), scope, name)?;
    let warnings = fv.check(&v, &obj)?;
    Ok((obj, warnings))
}

/// `r` with one `Warning` header per warning (RFC 7234's shape, code 299,
/// as kube-apiserver sends them; kubectl prints each as `Warning: ...`).
pub(crate) fn warn(mut r: Resp, warnings: &[String]) -> Resp {
    for w in warnings {
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(h) = hyper::header::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            r.headers_mut().append(hyper::header::WARNING, h);
        }
    }
    r
}

pub(crate) fn scope_of(what: &ObjectRef) -> Scope {
    Scope::namespaced(what.kind, &what.namespace)
}

/// The request body (at most [`MAX_BODY`] bytes).
async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, Error> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            Error::BadRequest(format!(
                "reading the request body (at most {MAX_BODY} bytes): {e}"
            ))
        })
}

/// The media type of the request body (`application/json`), without
/// parameters.
fn media_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The body of a create, update or delete, in JSON, YAML or Kubernetes
/// protobuf (client-go's typed clients send built-in kinds that way).
async fn body_json(req: Request<Incoming>) -> Result<Value, Error> {
    let media = media_type(&req);
    let b = body_bytes(req).await?;
    match media.as_str() {
        "" | "application/json" => serde_json::from_slice(&b)
            .map_err(|e| Error::BadRequest(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" => serde_yaml::from_slice(&b)
            .map_err(|e| Error::BadRequest(format!("the request body is not valid YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(&b)
            .map_err(|e| Error::BadRequest(format!("the request body: {e}"))),
        _ => Err(Error::UnsupportedMediaType(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf".into(),
        )),
    }
}

/// Applies a patch of media type `ctype` to `v`.
fn apply_patch(ctype: &str, v: &mut Value, body: &Value) -> Result<(), Error> {
    match ctype {
        "application/merge-patch+json" => crate::patch::merge(v, body),
        "application/strategic-merge-patch+json" => {
            crate::patch::strategic(v, body).map_err(|e| Error::BadRequest(e.to_string()))?
        }
        "application/json-patch+json" => {
            *v = crate::patch::json_patch(v, body).map_err(|e| Error::BadRequest(e.to_string()))?
        }
        _ => {
            return Err(Error::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json".into(),
            ))
        }
    }
    Ok(())
}

/// PATCH of a scale subresource (kubectl scale): the Scale patched, then
/// its replicas written to the object.
async fn patch_scale(
    cp: &dyn ControlPlane,
    req: Request<Incoming>,
    what: &ObjectRef,
    who: &Who,
) -> Result<Resp, Error> {
    let ctype = media_type(&req);
    let body = serde_json::from_slice(&body_bytes(req).await?)
        .map_err(|e| Error::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    let mut scale = controlplane::scale::scale_of(&cp.get(what).await?);
    apply_patch(&ctype, &mut scale, &body)?;
    let (replicas, revision) = controlplane::scale::parse_scale(&scale)?;
    let pinned = body.pointer("/metadata/resourceVersion").is_some();
    let revision = revision.filter(|_| pinned);
    Ok(json_response(
        200,
        &controlplane::scale::set_replicas_with(cp, what, replicas, revision, &who.marker("scale"))
            .await?,
    ))
}

/// PATCH of an object or its status: read, patch, write with the read's
/// resourceVersion; a concurrent write makes it start over.
async fn patch(
    cp: &dyn ControlPlane,
    req: Request<Incoming>,
    what: &ObjectRef,
    who: Option<&Who>,
    fv: FieldValidation,
) -> Result<Resp, Error> {
    let ctype = media_type(&req);
    let body = serde_json::from_slice(&body_bytes(req).await?)
        .map_err(|e| Error::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    for _ in 0..5 {
        let current = cp.get(what).await?;
        let mut v = current.to_value();
        apply_patch(&ctype, &mut v, &body)?;
        let (obj, warnings) = checked(v, &scope_of(what), Some(&what.name), fv)?;
        let mut obj = match who {
            Some(who) => who.updated(&current, obj)?,
            None => obj,
        };
        // A patch that names a resourceVersion is a precondition; one that
        // does not is applied to what was read.
        if revision_of(&obj)?.is_none() {
            obj.meta_mut().resource_version = current.meta().resource_version.clone();
        }
        let pinned = body.pointer("/metadata/resourceVersion").is_some();
        let written = match who {
            None => cp.update_status(obj).await,
            Some(_) => cp.update(obj, None).await,
        };
        match written {
            Ok(o) => return Ok(warn(json_response(200, &o.to_value()), &warnings)),
            Err(e) if e.is_conflict() && !pinned => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict {
        kind: what.kind,
        name: what.name.clone(),
        reason: "the object kept changing; tried 5 times".into(),
    })
}

/// A watch as chunked JSON events, filtered by `sel`; each object a
/// one-row Table when the client asked for tables.
async fn watch(
    s: &Settings,
    scope: &Scope,
    revision: Option<u64>,
    sel: Selector,
    table: Option<bool>,
    timeout: Option<Duration>,
) -> Result<Resp, Error> {
    let (initial, from) = match revision {
        Some(r) => (Vec::new(), r),
        None => {
            let list = s.cp.list(scope).await?;
            (list.items, list.revision)
        }
    };
    let mut events = s.cp.watch(scope, from).await?;
    let (tx, rx) = mpsc::channel(64);
    let columns = s.columns.clone();
    let kind = scope.kind;
    let line = move |ev: &WatchEvent| -> Bytes {
        let object = match table {
            Some(full) => table::table(
                columns.as_ref(),
                kind,
                std::slice::from_ref(ev.object()),
                None,
                full,
            ),
            None => ev.object().to_value(),
        };
        let mut v = serde_json::to_vec(&json!({"type": ev.type_name(), "object": object}))
            .unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    };
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        for o in initial.into_iter().filter(|o| sel.matches(o)) {
            if tx.send(line(&WatchEvent::Added(o))).await.is_err() {
                return;
            }
        }
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, events.next()).await {
                    Ok(n) => n,
                    Err(_) => return,
                },
                None => events.next().await,
            };
            let Some(ev) = next else { return };
            let bytes = match &ev {
                Ok(ev) if !sel.matches(ev.object()) => continue,
                Ok(ev) => line(ev),
                Err(e) => error_line(e),
            };
            if tx.send(bytes).await.is_err() || ev.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(rx, "application/json"))
}
