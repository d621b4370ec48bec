//! The object model: the Kubernetes kinds knode serves (from k8s-openapi)
//! and our SubnetLease, behind one `Object` enum with kind, metadata and
//! JSON conversion. It knows nothing of storage or validation.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds knode stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    ConfigMap,
    Secret,
    Node,
    Lease,
    SubnetLease,
}

impl Kind {
    /// Every kind, in the order manifests are best applied.
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Service,
        Kind::Pod,
        Kind::Node,
        Kind::Lease,
        Kind::SubnetLease,
    ];

    /// The `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Node => "Node",
            Kind::Lease => "Lease",
            Kind::SubnetLease => "SubnetLease",
        }
    }

    /// The `apiVersion` field.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::SubnetLease => "knode.io/v1",
            _ => "v1",
        }
    }

    /// The plural resource name used in REST paths and storage keys.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::Node => "nodes",
            Kind::Lease => "leases",
            Kind::SubnetLease => "subnetleases",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::SubnetLease)
    }

    /// Parses a `kind` field exactly (`Pod`).
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// Parses what a CLI user types: kind, plural or short name, any case
    /// (`pod`, `pods`, `po`, `svc`, `cm`, `ns`, `no`, ...).
    pub fn from_cli(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        let short = match s.as_str() {
            "po" => Some(Kind::Pod),
            "svc" => Some(Kind::Service),
            "cm" => Some(Kind::ConfigMap),
            "ns" => Some(Kind::Namespace),
            "no" => Some(Kind::Node),
            _ => None,
        };
        short.or_else(|| {
            Kind::ALL
                .into_iter()
                .find(|k| k.name().to_ascii_lowercase() == s || k.plural() == s)
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A subnet of the cluster CIDR leased by one node, in flannel's shape
/// (`PublicIP`, `BackendType`, `BackendData`). Its name is the subnet with
/// `/` replaced by `-` (`10.244.3.0-24`), as flannel keys it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetLease {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SubnetLeaseSpec,
}

/// The leased subnet and what peers need to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetLeaseSpec {
    pub subnet: IpNet,
    #[serde(rename = "PublicIP")]
    pub public_ip: IpAddr,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    /// Backend specifics, e.g. `{"VNI": 1, "VtepMAC": "aa:bb:..."}` for vxlan.
    #[serde(rename = "BackendData", default)]
    pub backend_data: Value,
}

impl SubnetLease {
    /// The object name for `subnet`.
    pub fn name_for(subnet: &IpNet) -> String {
        subnet.to_string().replace('/', "-")
    }
}

/// One stored object of any kind. (Variants differ in size, Pod being the
/// largest; objects are built once and passed by reference, so boxing them
/// would buy nothing but noise in every match.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Node(Node),
    Lease(Lease),
    SubnetLease(SubnetLease),
}

/// A JSON value that is not an object we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("apiVersion and kind: required")]
    MissingKind,
    #[error("kind {kind:?} is not supported (supported: Namespace, Pod, Service, ConfigMap, Secret, Node, Lease, SubnetLease)")]
    UnknownKind { kind: String },
    #[error("apiVersion {found:?} does not serve kind {kind} (want {want:?})")]
    WrongApiVersion {
        kind: Kind,
        found: String,
        want: &'static str,
    },
    #[error("{kind}: {msg}")]
    Shape { kind: Kind, msg: String },
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::Secret(_) => Kind::Secret,
            Object::Node(_) => Kind::Node,
            Object::Lease(_) => Kind::Lease,
            Object::SubnetLease(_) => Kind::SubnetLease,
        }
    }

    /// Its metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Lease(o) => &o.metadata,
            Object::SubnetLease(o) => &o.metadata,
        }
    }

    /// Its metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Lease(o) => &mut o.metadata,
            Object::SubnetLease(o) => &mut o.metadata,
        }
    }

    /// `metadata.name`, or "" when unset.
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`, or "" when unset (or cluster-scoped).
    pub fn namespace(&self) -> &str {
        self.meta().namespace.as_deref().unwrap_or_default()
    }

    /// `Kind/namespace/name` (or `Kind/name`), for messages.
    pub fn describe(&self) -> String {
        if self.kind().namespaced() {
            format!("{}/{}/{}", self.kind(), self.namespace(), self.name())
        } else {
            format!("{}/{}", self.kind(), self.name())
        }
    }

    /// Decodes a JSON object by its `apiVersion` and `kind`.
    pub fn from_value(v: Value) -> Result<Object, DecodeError> {
        let kind_s = v
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(DecodeError::MissingKind)?;
        let kind = Kind::from_kind(kind_s).ok_or_else(|| DecodeError::UnknownKind {
            kind: kind_s.to_string(),
        })?;
        let api = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or(DecodeError::MissingKind)?;
        if api != kind.api_version() {
            return Err(DecodeError::WrongApiVersion {
                kind,
                found: api.to_string(),
                want: kind.api_version(),
            });
        }
        fn de<T: serde::de::DeserializeOwned>(kind: Kind, v: Value) -> Result<T, DecodeError> {
            serde_json::from_value(v).map_err(|e| DecodeError::Shape {
                kind,
                msg: e.to_string(),
            })
        }
        Ok(match kind {
            Kind::Namespace => Object::Namespace(de(kind, v)?),
            Kind::Pod => Object::Pod(de(kind, v)?),
            Kind::Service => Object::Service(de(kind, v)?),
            Kind::ConfigMap => Object::ConfigMap(de(kind, v)?),
            Kind::Secret => Object::Secret(de(kind, v)?),
            Kind::Node => Object::Node(de(kind, v)?),
            Kind::Lease => Object::Lease(de(kind, v)?),
            Kind::SubnetLease => Object::SubnetLease(de(kind, v)?),
        })
    }

    /// Encodes the object as JSON with its `apiVersion` and `kind`.
    pub fn to_value(&self) -> Value {
        let mut v = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::ConfigMap(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::Lease(o) => serde_json::to_value(o),
            Object::SubnetLease(o) => serde_json::to_value(o),
        }
        .unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("apiVersion".into(), self.kind().api_version().into());
            m.insert("kind".into(), self.kind().name().into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_parse_from_cli_names() {
        assert_eq!(Kind::from_cli("po"), Some(Kind::Pod));
        assert_eq!(Kind::from_cli("Services"), Some(Kind::Service));
        assert_eq!(Kind::from_cli("svc"), Some(Kind::Service));
        assert_eq!(Kind::from_cli("subnetleases"), Some(Kind::SubnetLease));
        assert_eq!(Kind::from_cli("deployments"), None);
        assert!(!Kind::Node.namespaced() && Kind::Pod.namespaced());
    }

    #[test]
    fn objects_round_trip_through_json() {
        let v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let o = Object::from_value(v).unwrap();
        assert_eq!(o.kind(), Kind::Pod);
        assert_eq!(o.name(), "web");
        let back = o.to_value();
        assert_eq!(back["kind"], "Pod");
        assert_eq!(back["spec"]["containers"][0]["image"], "busybox");
    }

    #[test]
    fn subnet_lease_has_flannels_shape() {
        let v = json!({"apiVersion": "knode.io/v1", "kind": "SubnetLease",
                       "metadata": {"name": "10.244.3.0-24"},
                       "spec": {"subnet": "10.244.3.0/24", "PublicIP": "192.0.2.7", "BackendType": "vxlan",
                                "BackendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}}});
        let o = Object::from_value(v.clone()).unwrap();
        assert_eq!(o.to_value(), v);
        assert_eq!(
            SubnetLease::name_for(&"10.244.3.0/24".parse().unwrap()),
            "10.244.3.0-24"
        );
    }

    #[test]
    fn unknown_kinds_and_versions_are_refused() {
        let e =
            Object::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment"})).unwrap_err();
        assert!(matches!(e, DecodeError::UnknownKind { .. }));
        let e = Object::from_value(json!({"apiVersion": "v2", "kind": "Pod"})).unwrap_err();
        assert!(e.to_string().contains("apiVersion \"v2\""), "{e}");
        let e = Object::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": 5}}),
        )
        .unwrap_err();
        assert!(matches!(e, DecodeError::Shape { .. }));
    }
}
