//! The Kubernetes-style REST API the agent serves on its unix socket, and
//! the client the CLI uses to talk to it: `/api/v1/namespaces/{ns}/pods`,
//! `/apis/coordination.k8s.io/v1/...`, list/watch with `resourceVersion`,
//! errors as `Status` objects. One path scheme for both ends lives here.

pub mod client;
pub mod server;

use serde_json::{json, Value};

use crate::api::{Error, ObjectRef, Scope};
use crate::kinds::Subresource;
use crate::objects::Kind;
use crate::validate::{FieldError, Invalid};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A list (or watch) of a kind.
    Collection(Scope),
    /// One object.
    Object(ObjectRef),
    /// One object's status subresource.
    Status(ObjectRef),
    /// One object's scale subresource (`autoscaling/v1` Scale).
    Scale(ObjectRef),
    /// A pod's binding subresource (POST a `Binding` to schedule it).
    Binding(ObjectRef),
}

/// `/api/v1` or `/apis/<group>/<version>` for a kind.
fn group_prefix(kind: Kind) -> String {
    match kind.api_version() {
        "v1" => "/api/v1".to_string(),
        gv => format!("/apis/{gv}"),
    }
}

/// The path of a collection: `/api/v1/namespaces/default/pods`, or
/// `/api/v1/pods` across namespaces.
pub fn collection_path(scope: &Scope) -> String {
    let g = group_prefix(scope.kind);
    match &scope.namespace {
        Some(ns) if scope.kind.namespaced() => {
            format!("{g}/namespaces/{}/{}", escape(ns), scope.kind.plural())
        }
        _ => format!("{g}/{}", scope.kind.plural()),
    }
}

/// The path of one object.
pub fn object_path(what: &ObjectRef) -> String {
    let scope = Scope::namespaced(what.kind, &what.namespace);
    format!("{}/{}", collection_path(&scope), escape(&what.name))
}

/// Names travel in paths; valid names never need escaping, but invalid
/// ones must reach validation intact rather than change the path.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A namespace or name from a path segment, unescaped; `None` for what
/// kube-apiserver refuses as a path segment name (`.`, `..`, or one
/// holding `/` or `%`), so no name from a URL can walk a file path.
fn segment(s: &str) -> Option<String> {
    let s = unescape(s)?;
    (s != "." && s != ".." && !s.contains(['/', '%'])).then_some(s)
}

/// Parses a request path (without the query).
pub fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // ["", "api", "v1", rest...] or ["", "apis", group, version, rest...]
    let (gv, rest) = match parts.get(1..)? {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let kind_of = |plural: &str| Kind::from_plural(&gv, plural);
    let sub = |k: Kind, s: &str, what: ObjectRef| match s {
        "status" if k.info().has(Subresource::Status) => Some(Target::Status(what)),
        "scale" if k.info().has(Subresource::Scale) => Some(Target::Scale(what)),
        "binding" if k.info().has(Subresource::Binding) => Some(Target::Binding(what)),
        _ => None,
    };
    let names = |xs: &[&str]| xs.iter().map(|x| segment(x)).collect::<Option<Vec<_>>>();
    match rest {
        ["namespaces", ns, plural, tail @ ..] if kind_of(plural).is_some_and(Kind::namespaced) => {
            let kind = kind_of(plural)?;
            let ns = segment(ns)?;
            match names(tail)?.as_slice() {
                [] => Some(Target::Collection(Scope::namespaced(kind, &ns))),
                [name] => Some(Target::Object(ObjectRef::new(kind, &ns, name))),
                [name, s] => sub(kind, s, ObjectRef::new(kind, &ns, name)),
                _ => None,
            }
        }
        [plural, tail @ ..] => {
            let kind = kind_of(plural)?;
            match names(tail)?.as_slice() {
                [] => Some(Target::Collection(Scope::all(kind))),
                [name] if !kind.namespaced() => {
                    Some(Target::Object(ObjectRef::new(kind, "", name)))
                }
                [name, s] if !kind.namespaced() => sub(kind, s, ObjectRef::new(kind, "", name)),
                _ => None,
            }
        }
        [] => None,
    }
}

/// The HTTP status code and `reason` of an error.
pub fn status_code(e: &Error) -> (u16, &'static str) {
    match e {
        Error::NotFound { .. } => (404, "NotFound"),
        Error::AlreadyExists { .. } => (409, "AlreadyExists"),
        Error::Conflict { .. } => (409, "Conflict"),
        Error::Invalid(_) => (422, "Invalid"),
        Error::Compacted { .. } => (410, "Expired"),
        Error::BadRequest(_) => (400, "BadRequest"),
        Error::UnsupportedMediaType(_) => (415, "UnsupportedMediaType"),
        Error::Unavailable(_) => (503, "ServiceUnavailable"),
        Error::Internal(_) => (500, "InternalError"),
    }
}

/// An error as a Kubernetes `Status` object. The details carry what is
/// needed to rebuild the same [`Error`] on the client side.
pub fn status_of(e: &Error) -> Value {
    let (code, reason) = status_code(e);
    let details = match e {
        Error::NotFound { kind, name } | Error::AlreadyExists { kind, name } => {
            json!({"kind": kind.plural(), "name": name})
        }
        Error::Conflict {
            kind,
            name,
            reason: why,
        } => json!({"kind": kind.plural(), "name": name, "why": why}),
        Error::Invalid(inv) => json!({
            "name": inv.object,
            "causes": inv.errors.iter().map(|f| json!({
                "reason": "FieldValueInvalid", "field": f.path, "message": f.reason,
            })).collect::<Vec<_>>(),
        }),
        Error::Compacted { requested, oldest } => {
            json!({"requested": requested, "oldest": oldest})
        }
        Error::BadRequest(why)
        | Error::UnsupportedMediaType(why)
        | Error::Unavailable(why)
        | Error::Internal(why) => {
            json!({"why": why})
        }
    };
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": e.to_string(), "reason": reason,
        "details": details, "code": code,
    })
}

/// Rebuilds an error from a `Status` object.
pub fn error_of(status: &Value) -> Error {
    let message = status["message"].as_str().unwrap_or_default().to_string();
    let d = &status["details"];
    let kind = || {
        d["kind"]
            .as_str()
            .and_then(|p| Kind::ALL.into_iter().find(|k| k.plural() == p))
    };
    let name = || d["name"].as_str().unwrap_or_default().to_string();
    let why = || {
        d["why"]
            .as_str()
            .map_or_else(|| message.clone(), str::to_string)
    };
    match status["reason"].as_str().unwrap_or_default() {
        "NotFound" => match kind() {
            Some(kind) => Error::NotFound { kind, name: name() },
            None => Error::BadRequest(message),
        },
        "AlreadyExists" => match kind() {
            Some(kind) => Error::AlreadyExists { kind, name: name() },
            None => Error::BadRequest(message),
        },
        "Conflict" => match kind() {
            Some(kind) => Error::Conflict {
                kind,
                name: name(),
                reason: d["why"].as_str().unwrap_or_default().to_string(),
            },
            None => Error::BadRequest(message),
        },
        "Invalid" => Error::Invalid(Invalid {
            object: name(),
            errors: d["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| FieldError {
                    path: c["field"].as_str().unwrap_or_default().to_string(),
                    reason: c["message"].as_str().unwrap_or_default().to_string(),
                })
                .collect(),
        }),
        "Expired" | "Gone" => Error::Compacted {
            requested: d["requested"].as_u64().unwrap_or_default(),
            oldest: d["oldest"].as_u64().unwrap_or_default(),
        },
        "ServiceUnavailable" => Error::Unavailable(why()),
        "UnsupportedMediaType" => Error::UnsupportedMediaType(why()),
        "InternalError" => Error::Internal(why()),
        _ => Error::BadRequest(why()),
    }
}

/// The `Kind`List name of a collection (`PodList`).
pub fn list_kind(kind: Kind) -> String {
    format!("{}List", kind.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        let cases = [
            Target::Collection(Scope::all(Kind::Pod)),
            Target::Collection(Scope::namespaced(Kind::Pod, "team-a")),
            Target::Object(ObjectRef::new(Kind::Pod, "default", "web")),
            Target::Object(ObjectRef::new(Kind::Node, "", "n1")),
            Target::Object(ObjectRef::new(Kind::Lease, "kube-node-lease", "n1")),
            Target::Object(ObjectRef::new(Kind::SubnetLease, "", "10.244.3.0-24")),
            Target::Collection(Scope::all(Kind::Namespace)),
        ];
        for t in cases {
            let path = match &t {
                Target::Collection(s) => collection_path(s),
                Target::Object(o) | Target::Status(o) | Target::Scale(o) | Target::Binding(o) => {
                    object_path(o)
                }
            };
            assert_eq!(parse_path(&path), Some(t.clone()), "{path}");
        }
        assert_eq!(
            object_path(&ObjectRef::new(Kind::Pod, "default", "web")),
            "/api/v1/namespaces/default/pods/web"
        );
        assert_eq!(
            collection_path(&Scope::namespaced(Kind::Lease, "x")),
            "/apis/coordination.k8s.io/v1/namespaces/x/leases"
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/default/pods/web/status"),
            Some(Target::Status(ObjectRef::new(Kind::Pod, "default", "web")))
        );
        // A namespace object is not a namespaced collection.
        assert_eq!(
            parse_path("/api/v1/namespaces/team"),
            Some(Target::Object(ObjectRef::new(Kind::Namespace, "", "team")))
        );
    }

    #[test]
    fn odd_names_stay_in_one_segment() {
        let o = ObjectRef::new(Kind::Pod, "default", "a b");
        let p = object_path(&o);
        assert_eq!(p, "/api/v1/namespaces/default/pods/a%20b");
        assert_eq!(parse_path(&p), Some(Target::Object(o)));
        // No name or namespace from a URL can be a path walk.
        let walk = object_path(&ObjectRef::new(Kind::Pod, "default", "a/b"));
        assert_eq!(walk, "/api/v1/namespaces/default/pods/a%2Fb");
        assert_eq!(parse_path(&walk), None);
        assert_eq!(parse_path("/api/v1/namespaces/%2E%2E/pods"), None);
        assert_eq!(parse_path("/api/v1/namespaces/default/pods/.."), None);
        assert_eq!(parse_path("/api/v1/nodes/%252E"), None);
    }

    #[test]
    fn unknown_paths_are_refused() {
        assert_eq!(parse_path("/api/v1/deployments"), None);
        assert_eq!(parse_path("/apis/apps/v1/namespaces/x/ingresses"), None);
        assert_eq!(parse_path("/apis/apps/v2/namespaces/x/deployments"), None);

        assert_eq!(parse_path("/api/v1/leases"), None);
        assert_eq!(parse_path("/api/v1/namespaces/x/nodes"), None);
        assert_eq!(parse_path("/"), None);
    }

    #[test]
    fn errors_survive_the_wire() {
        let errs = [
            Error::NotFound {
                kind: Kind::Pod,
                name: "web".into(),
            },
            Error::AlreadyExists {
                kind: Kind::Service,
                name: "db".into(),
            },
            Error::Conflict {
                kind: Kind::Node,
                name: "n1".into(),
                reason: "changed".into(),
            },
            Error::invalid("Pod/default/web", "spec.containers[0].image", "required"),
            Error::Compacted {
                requested: 5,
                oldest: 9,
            },
            Error::Unavailable("down".into()),
        ];
        for e in errs {
            assert_eq!(error_of(&status_of(&e)), e);
        }
    }
}
