//! The node API (kubelet's port, 10250) and the API's proxy to it, as
//! kube-apiserver reaches a kubelet for a pod on another node.
//!
//! Each agent serves, on `kubelet-port` over TLS, the paths a kubelet
//! serves for the API servers: `/containerLogs/{ns}/{pod}/{container}`,
//! `/exec/...` and `/attach/{ns}/{pod}/{container}`, and
//! `/portForward/{ns}/{pod}`. They are answered by the same handlers as
//! the API's pod subresources for local pods (the router maps one path
//! onto the other); only API servers may call them ([`ApiServers`]: in
//! knode every agent is one, so `system:node:*` and `system:masters`).
//!
//! The API, asked for a subresource of a pod bound to another node,
//! authorizes the user as usual and then [`Proxy::forward`]s the request
//! there: the node's address from its Node (`status.addresses`,
//! InternalIP first; `status.daemonEndpoints.kubeletEndpoint.Port`), TLS
//! verifying the node's serving certificate (issued by the cluster CA for
//! the node's name), this agent's node client certificate; then, after a
//! `101 Switching Protocols`, bytes spliced both ways (kube-apiserver's
//! UpgradeAwareHandler), or the body streamed (logs, follow included).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controlplane::{ControlPlane, Error, Kind, Object, ObjectRef};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::mpsc;

use crate::auth::{Attributes, Authorizer, User};
use crate::exec::Verb;
use crate::server::Resp;
use controlplane::rest::server::Body;

/// kubelet's port, when a Node does not report one.
pub const DEFAULT_PORT: u16 = 10250;
/// How long dialing a node (TCP and TLS) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A node API path.
#[derive(Debug, Clone, PartialEq)]
pub enum NodePath {
    /// `/containerLogs/{ns}/{pod}/{container}`
    Logs {
        ns: String,
        pod: String,
        container: String,
    },
    /// `/exec/{ns}/{pod}/{container}`, `/attach/{ns}/{pod}/{container}`
    Stream {
        ns: String,
        pod: String,
        container: String,
        verb: Verb,
    },
    /// `/portForward/{ns}/{pod}`
    PortForward { ns: String, pod: String },
}

/// A plain path segment (no escapes, no dot walks).
fn ok(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('%')
}

/// The node API path `path` names, or `None`.
pub fn parse(path: &str) -> Option<NodePath> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if !parts[1..].iter().all(|p| ok(p)) {
        return None;
    }
    let s = |x: &str| x.to_string();
    Some(match parts.as_slice() {
        ["containerLogs", ns, pod, c] => NodePath::Logs {
            ns: s(ns),
            pod: s(pod),
            container: s(c),
        },
        [v @ ("exec" | "attach"), ns, pod, c] => NodePath::Stream {
            ns: s(ns),
            pod: s(pod),
            container: s(c),
            verb: if *v == "exec" {
                Verb::Exec
            } else {
                Verb::Attach
            },
        },
        ["portForward", ns, pod] => NodePath::PortForward {
            ns: s(ns),
            pod: s(pod),
        },
        _ => return None,
    })
}

/// The node API's path for `pod`'s subresource `sub` (`log`, `exec`,
/// `attach`, `portforward`) with `container`, and the client's `query`
/// without its `container` (the path carries it).
pub fn path_for(sub: &str, ns: &str, pod: &str, container: &str, query: &str) -> String {
    let path = match sub {
        "log" => format!("/containerLogs/{ns}/{pod}/{container}"),
        "portforward" => format!("/portForward/{ns}/{pod}"),
        verb => format!("/{verb}/{ns}/{pod}/{container}"),
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("container"))
        .collect();
    if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

/// Whether `pod` has a container (app, init or ephemeral) named `name`.
pub fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

/// Who may call the node API: API servers only, which in knode are the
/// agents (`system:node:<name>` in `system:nodes`) and cluster admins
/// (`system:masters`); everyone else is refused (403).
pub struct ApiServers;

/// Whether `user` is an API server's identity.
pub fn is_api_server(user: &User) -> bool {
    let has = |g: &str| user.groups.iter().any(|x| x == g);
    has("system:masters") || (user.name.starts_with("system:node:") && has("system:nodes"))
}

#[async_trait::async_trait]
impl Authorizer for ApiServers {
    async fn authorize(&self, user: &User, _: &Attributes) -> std::result::Result<(), String> {
        if is_api_server(user) {
            Ok(())
        } else {
            Err("the node API answers API servers only (system:node:* and system:masters)".into())
        }
    }
}

/// The container a request without one means, by kube-apiserver's rule:
/// the `kubectl.kubernetes.io/default-container` annotation's, else the
/// only one; with several, an error that lists them.
pub fn default_container(pod: &Pod) -> Result<String, Error> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.as_str()))
        .collect();
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .filter(|c| names.contains(&c.as_str()));
    if let Some(c) = annotated {
        return Ok(c.clone());
    }
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::BadRequest(format!("pod {name} has no containers"))),
        many => Err(Error::BadRequest(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            many.join(" ")
        ))),
    }
}

/// Where the API reaches other nodes' APIs.
pub struct Proxy {
    cp: Arc<dyn ControlPlane>,
    /// This agent's node: its pods are served here, not proxied.
    node_name: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Proxy {
    pub fn new(cp: Arc<dyn ControlPlane>, node_name: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Proxy {
            cp,
            node_name: node_name.to_string(),
            tls,
        }
    }

    /// The node `pod` is bound to when that is another node's.
    pub fn remote<'a>(&self, pod: &'a Pod) -> Option<&'a str> {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty() && *n != self.node_name)
    }

    /// The addresses to dial node `name`'s API at: its InternalIPs first,
    /// then its other IP addresses, each with its kubelet port.
    async fn addresses(&self, name: &str) -> Result<Vec<SocketAddr>, Error> {
        let node = match self.cp.get(&ObjectRef::new(Kind::Node, "", name)).await {
            Ok(Object::Node(n)) => n,
            Ok(o) => return Err(Error::Internal(format!("{} is not a Node", o.describe()))),
            Err(e) if e.is_not_found() => {
                return Err(Error::Internal(format!(
                    "node {name} is not registered: its pods cannot be reached"
                )))
            }
            Err(e) => return Err(e),
        };
        let out = node_addresses(&node);
        if out.is_empty() {
            return Err(Error::Internal(format!(
                "node {name} reports no IP address (status.addresses): its pods cannot be reached"
            )));
        }
        Ok(out)
    }

    /// Sends `req` (already authorized) to node `node`'s API at
    /// `path_and_query`, and answers with what the node answers: an
    /// upgrade spliced both ways, or the body streamed.
    pub async fn forward(
        &self,
        node: &str,
        mut req: Request<Incoming>,
        path_and_query: &str,
    ) -> Result<Resp, Error> {
        let addrs = self.addresses(node).await?;
        let (io, addr) = self.dial(node, &addrs).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| backend(node, addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node API connection");
            }
        });
        let out = upstream_request(&req, path_and_query, addr)?;
        let mut resp = sender
            .send_request(out)
            .await
            .map_err(|e| backend(node, addr, e))?;
        if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
            let theirs = hyper::upgrade::on(&mut resp);
            let ours = hyper::upgrade::on(&mut req);
            let node = node.to_string();
            tokio::spawn(async move {
                match tokio::try_join!(ours, theirs) {
                    Ok((a, b)) => {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                            tracing::debug!(%node, error = %e, "node API stream ended");
                        }
                    }
                    Err(e) => tracing::debug!(%node, error = %e, "node API upgrade"),
                }
            });
            let mut r = Response::new(Body::Full(None));
            *r.status_mut() = resp.status();
            *r.headers_mut() = resp.headers().clone();
            return Ok(r);
        }
        let (parts, mut body) = resp.into_parts();
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Ok(data) = frame.into_data() {
                    if tx.send(data).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut r = Response::new(Body::Stream(rx));
        *r.status_mut() = parts.status;
        for h in [hyper::header::CONTENT_TYPE, hyper::header::WARNING] {
            for v in parts.headers.get_all(&h) {
                r.headers_mut().append(h.clone(), v.clone());
            }
        }
        Ok(r)
    }

    /// A TLS connection to the first of `addrs` that answers, the node's
    /// serving certificate verified for its name.
    async fn dial(
        &self,
        node: &str,
        addrs: &[SocketAddr],
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            SocketAddr,
        ),
        Error,
    > {
        let name = rustls::pki_types::ServerName::try_from(node.to_string()).map_err(|e| {
            Error::Internal(format!(
                "node {node}: not a name to verify a certificate for: {e}"
            ))
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut last = None;
        for &addr in addrs {
            let attempt = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                connector.connect(name.clone(), tcp).await
            };
            match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
                Ok(Ok(s)) => return Ok((s, addr)),
                Ok(Err(e)) => last = Some(backend(node, addr, e)),
                Err(_) => last = Some(backend(node, addr, "timed out")),
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal(format!("node {node}: no address"))))
    }
}

/// A node's API addresses: InternalIPs, then its other IPs, with the port
/// of `status.daemonEndpoints.kubeletEndpoint` (10250 when unset).
pub fn node_addresses(node: &Node) -> Vec<SocketAddr> {
    let status = node.status.as_ref();
    let port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_PORT);
    let mut listed: Vec<(bool, IpAddr)> = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.type_ != "InternalIP", a.address.parse().ok()?)))
        .collect();
    listed.sort_by_key(|(later, _)| *later);
    let mut out: Vec<SocketAddr> = Vec::new();
    for (_, ip) in listed {
        let a = SocketAddr::new(ip, port);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The error of a node that cannot be reached (500, naming it).
fn backend(node: &str, addr: SocketAddr, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!(
        "error dialing backend: node {node}'s API at {addr}: {e}"
    ))
}

/// The request to send the node: `req`'s method and headers (not its
/// credentials or impersonation: the API authenticates as itself) at
/// `path_and_query`, without a body (logs, upgrades).
fn upstream_request<B>(
    req: &Request<B>,
    path_and_query: &str,
    addr: SocketAddr,
) -> Result<Request<Empty<Bytes>>, Error> {
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(path_and_query);
    for (k, v) in req.headers() {
        let n = k.as_str();
        if n == "authorization" || n == "host" || n.starts_with("impersonate-") {
            continue;
        }
        out = out.header(k, v);
    }
    out.header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| Error::Internal(format!("the request to the node: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_are_read_as_kubelet_serves_them() {
        assert_eq!(
            parse("/containerLogs/default/web/app"),
            Some(NodePath::Logs {
                ns: "default".into(),
                pod: "web".into(),
                container: "app".into()
            })
        );
        assert_eq!(
            parse("/exec/ns1/p/c"),
            Some(NodePath::Stream {
                ns: "ns1".into(),
                pod: "p".into(),
                container: "c".into(),
                verb: Verb::Exec
            })
        );
        assert!(matches!(
            parse("/attach/ns1/p/c"),
            Some(NodePath::Stream {
                verb: Verb::Attach,
                ..
            })
        ));
        assert_eq!(
            parse("/portForward/ns1/p"),
            Some(NodePath::PortForward {
                ns: "ns1".into(),
                pod: "p".into()
            })
        );
        for bad in [
            "/containerLogs/default/web",
            "/containerLogs/../web/app",
            "/exec/ns/p/%2e%2e",
            "/exec/ns/p",
            "/portForward/ns/p/x",
            "/api/v1/pods",
            "/runningpods/",
            "/exec//p/c",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_proxied_path_carries_the_container_and_the_rest_of_the_query() {
        assert_eq!(
            path_for(
                "log",
                "default",
                "web",
                "app",
                "container=app&follow=true&tailLines=3"
            ),
            "/containerLogs/default/web/app?follow=true&tailLines=3"
        );
        assert_eq!(
            path_for(
                "exec",
                "default",
                "web",
                "app",
                "command=sh&command=-c&command=exit%203&stdin=true&stdout=true"
            ),
            "/exec/default/web/app?command=sh&command=-c&command=exit%203&stdin=true&stdout=true"
        );
        assert_eq!(path_for("attach", "n", "p", "c", ""), "/attach/n/p/c");
        assert_eq!(
            path_for("portforward", "n", "p", "", "ports=8080"),
            "/portForward/n/p?ports=8080"
        );
        // Every proxied path is one the node API reads back.
        for sub in ["log", "exec", "attach", "portforward"] {
            let p = path_for(sub, "n", "p", "c", "");
            assert!(parse(&p).is_some(), "{p}");
        }
    }

    #[tokio::test]
    async fn only_api_servers_may_call_the_node_api() {
        let user = |name: &str, groups: &[&str]| User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let a = Attributes {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: "exec".into(),
            namespace: "default".into(),
            name: "web".into(),
            path: "/exec/default/web/app".into(),
        };
        for ok in [
            user(
                "system:node:node-0",
                &["system:nodes", "system:authenticated"],
            ),
            user("system:admin", &["system:masters", "system:authenticated"]),
        ] {
            assert!(ApiServers.authorize(&ok, &a).await.is_ok(), "{}", ok.name);
        }
        for refused in [
            user("alice", &["system:authenticated"]),
            user("system:node:x", &["system:authenticated"]),
            user("system:nodes", &["system:nodes"]),
            user(
                "system:serviceaccount:default:x",
                &["system:serviceaccounts"],
            ),
        ] {
            let why = ApiServers.authorize(&refused, &a).await.unwrap_err();
            assert!(why.contains("API servers only"), "{}: {why}", refused.name);
        }
    }

    #[test]
    fn the_node_gets_the_upgrade_headers_but_not_the_users_credentials() {
        let req = Request::builder()
            .method("POST")
            .uri("/api/v1/namespaces/default/pods/web/exec?command=sh")
            .header("authorization", "Bearer user-token")
            .header("impersonate-user", "bob")
            .header("impersonate-group", "admins")
            .header("host", "127.0.0.1:6443")
            .header("upgrade", "SPDY/3.1")
            .header("connection", "Upgrade")
            .header("x-stream-protocol-version", "v4.channel.k8s.io")
            .header("x-stream-protocol-version", "v3.channel.k8s.io")
            .body(())
            .unwrap();
        let addr: SocketAddr = "10.0.0.7:10250".parse().unwrap();
        let out = upstream_request(&req, "/exec/default/web/app?command=sh", addr).unwrap();
        assert_eq!(out.method(), "POST");
        assert_eq!(out.uri(), "/exec/default/web/app?command=sh");
        let h = out.headers();
        assert!(h.get("authorization").is_none());
        assert!(h.keys().all(|k| !k.as_str().starts_with("impersonate-")));
        assert_eq!(h["host"], "10.0.0.7:10250");
        assert_eq!(h["upgrade"], "SPDY/3.1");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h.get_all("x-stream-protocol-version").iter().count(), 2);
    }

    #[test]
    fn a_node_is_dialed_at_its_internal_ip_first_on_its_kubelet_port() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "ExternalIP", "address": "203.0.113.9"},
                    {"type": "InternalIP", "address": "10.0.0.7"}
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}}
            }
        }))
        .unwrap();
        assert_eq!(
            node_addresses(&node),
            vec![
                "10.0.0.7:10350".parse().unwrap(),
                "203.0.113.9:10350".parse().unwrap()
            ]
        );
        let mut bare = node.clone();
        bare.status.as_mut().unwrap().daemon_endpoints = None;
        assert_eq!(node_addresses(&bare)[0], "10.0.0.7:10250".parse().unwrap());
    }

    #[test]
    fn only_the_pods_own_containers_are_proxied() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]},
        }))
        .unwrap();
        assert!(has_container(&pod, "app") && has_container(&pod, "init"));
        for bad in ["nope", "app/../../exec/ns/p/app", "app?command=sh", ""] {
            assert!(!has_container(&pod, bad), "{bad}");
        }
    }

    #[test]
    fn the_default_container_follows_kube_apiserver() {
        let pod = |containers: &[&str], annotation: Option<&str>| -> Pod {
            let cs: Vec<_> = containers
                .iter()
                .map(|c| serde_json::json!({"name": c, "image": "busybox"}))
                .collect();
            let mut v =
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": cs}});
            if let Some(a) = annotation {
                v["metadata"]["annotations"] =
                    serde_json::json!({"kubectl.kubernetes.io/default-container": a});
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(default_container(&pod(&["app"], None)).unwrap(), "app");
        assert_eq!(
            default_container(&pod(&["app", "side"], Some("side"))).unwrap(),
            "side"
        );
        let e = default_container(&pod(&["app", "side"], None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one of: [app side]"), "{e}");
    }
}
