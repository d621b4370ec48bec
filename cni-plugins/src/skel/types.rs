//! CNI spec types shared by the plugins: the common network config fields,
//! the ADD result (`interfaces`, `ips`, `routes`, `dns`) and its rendering in
//! each supported cniVersion. Parsing is lenient about unknown keys, strict
//! about the shape of known ones.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{CniError, Code, Result};

/// Every cniVersion the plugins accept, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The versions VERSION reports (0.3.0 is accepted silently as 0.3.1's twin).
pub const REPORTED_VERSIONS: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Parses "a.b.c" into a comparable tuple.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    if it.next().is_some() {
        return None;
    }
    Some(t)
}

/// True when `v` is at least `min` (both "a.b.c").
pub fn version_at_least(v: &str, min: &str) -> bool {
    matches!((parse_version(v), parse_version(min)), (Some(a), Some(b)) if a >= b)
}

/// The fields every network config has. Plugin-specific fields are parsed by
/// each plugin from the same bytes.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The previous plugin's result (chained ADD, DEL and CHECK).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    /// `cni.dev/valid-attachments` (GC only).
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One attachment the runtime still uses (GC input).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parses the common fields and checks name and cniVersion.
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(Code::Decode, "decode network config from stdin").with_details(e)
        })?;
        super::validate_network_name(&conf.name)?;
        if conf.cni_version.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "cniVersion: required"));
        }
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion: {:?} is not supported (supported: {})",
                    conf.cni_version,
                    REPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        Ok(conf)
    }

    /// The previous result, parsed, when there is one.
    pub fn prev(&self) -> Result<Option<CniResult>> {
        match &self.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v.clone()).map(Some),
        }
    }
}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An IP configuration in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix, e.g. `10.244.1.5/24`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result or IPAM config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A plain route to `dst`, optionally via `gw`.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings in a result or IPAM config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The result of ADD (and the `prevResult` of later calls).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result of any supported version (0.3.x/0.4.0 `version` keys are ignored).
    pub fn from_value(v: Value) -> Result<CniResult> {
        serde_json::from_value(v)
            .map_err(|e| CniError::new(Code::Decode, "decode prevResult").with_details(e))
    }

    /// Renders the result as JSON in cniVersion `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = !version_at_least(version, "1.0.0");
        let v11 = version_at_least(version, "1.1.0");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if legacy {
                    let fam = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), fam.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if !v11 {
                    (r.mtu, r.advmss, r.priority, r.table, r.scope) =
                        (None, None, None, None, None);
                }
                serde_json::to_value(r).unwrap_or(Value::Null)
            })
            .collect();
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if !v11 {
                    i.mtu = None;
                }
                serde_json::to_value(i).unwrap_or(Value::Null)
            })
            .collect();
        let mut o = serde_json::Map::new();
        o.insert("cniVersion".into(), version.into());
        if !interfaces.is_empty() {
            o.insert("interfaces".into(), interfaces.into());
        }
        o.insert("ips".into(), ips.into());
        if !routes.is_empty() {
            o.insert("routes".into(), routes.into());
        }
        if !self.dns.is_empty() {
            o.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).unwrap_or(Value::Null),
            );
        }
        Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(!version_at_least("garbage", "0.4.0"));
        assert_eq!(parse_version("1.0"), Some((1, 0, 0)));
        assert_eq!(parse_version("1.0.0.0"), None);
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let e = NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion);
        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, Code::Decode);
    }

    #[test]
    fn result_renders_per_version() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: "10.1.0.5/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1450),
                ..Default::default()
            }],
            ..Default::default()
        };
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new = r.to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1450);
        // And it parses back.
        let back = CniResult::from_value(old).unwrap();
        assert_eq!(back.ips, r.ips);
    }
}
