//! The object model: the Kubernetes kinds knode serves (from k8s-openapi)
//! and our SubnetLease, behind one `Object` enum (generated from the
//! table in [`crate::kinds`]) with kind, metadata and JSON conversion. It
//! knows nothing of storage or validation.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::kinds::{Kind, Object};

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
    /// The node's IPv6 pod subnet on a dual-stack network (flannel's
    /// `IPv6Subnet`); absent on single-stack leases.
    #[serde(
        rename = "IPv6Subnet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_subnet: Option<IpNet>,
    /// The node's IPv6 underlay address, when it has one (flannel's `PublicIPv6`).
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<IpAddr>,
    /// Backend specifics of the IPv6 path (flannel's `BackendV6Data`), e.g.
    /// the VTEP MAC of the IPv6 vxlan device.
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<Value>,
}

impl SubnetLease {
    /// The object name for `subnet`.
    pub fn name_for(subnet: &IpNet) -> String {
        subnet.to_string().replace('/', "-")
    }
}

/// A JSON value that is not an object we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("apiVersion and kind: required")]
    MissingKind,
    #[error("kind {kind:?} is not supported (supported: {})", supported_kinds())]
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

/// The kinds served, comma-separated, for messages.
fn supported_kinds() -> String {
    Kind::ALL.map(Kind::name).join(", ")
}

impl Object {
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
        Object::decode(kind, v).map_err(|e| DecodeError::Shape {
            kind,
            msg: e.to_string(),
        })
    }

    /// Encodes the object as JSON with its `apiVersion` and `kind`.
    pub fn to_value(&self) -> Value {
        let mut v = self.encode().unwrap_or(Value::Null);
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
        assert_eq!(Kind::from_cli("ingresses"), None);
        assert_eq!(Kind::from_cli("deploy"), Some(Kind::Deployment));
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
            Object::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress"}))
                .unwrap_err();
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
