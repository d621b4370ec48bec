//! The bridge plugin's network config: the reference bridge plugin's keys,
//! their defaults, and validation that names the field at fault. Unknown keys
//! are ignored, as the reference plugin does.

use serde::Deserialize;

use crate::delegate;
use crate::skel::{validate_ifname, validate_network_name, CniError, Code, Result};

/// `knode-bridge` config (the plugin's own keys; common keys live in `NetConf`).
#[derive(Debug, Clone, Deserialize)]
pub struct BridgeConf {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    #[serde(rename = "forceAddress", default)]
    pub force_address: bool,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    /// 0 or absent: the kernel default.
    #[serde(default)]
    pub mtu: Option<i64>,
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    #[serde(rename = "promiscMode", default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub ipam: Option<IpamRef>,
}

/// The part of `ipam` the bridge itself reads.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct IpamRef {
    #[serde(rename = "type", default)]
    pub plugin_type: String,
}

fn default_bridge() -> String {
    "cni0".into()
}

impl BridgeConf {
    /// Parses and validates the config on stdin.
    pub fn parse(stdin: &[u8]) -> Result<BridgeConf> {
        let mut c: BridgeConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(Code::Decode, "decode bridge network config").with_details(e)
        })?;
        validate_network_name(&c.name)?;
        validate_ifname(&c.bridge).map_err(|e| {
            CniError::new(
                Code::InvalidConfig,
                e.msg.replacen("CNI_IFNAME", "bridge", 1),
            )
        })?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if let Some(mtu) = c.mtu {
            if mtu != 0 && !(68..=65535).contains(&mtu) {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("mtu: {mtu} is outside 68-65535"),
                ));
            }
        }
        if let Some(ipam) = &c.ipam {
            if !ipam.plugin_type.is_empty() {
                delegate::validate_type(&ipam.plugin_type)?;
            }
        }
        Ok(c)
    }

    /// The MTU to set on new links, if configured.
    pub fn link_mtu(&self) -> Option<u32> {
        self.mtu
            .filter(|m| *m > 0)
            .and_then(|m| u32::try_from(m).ok())
    }

    /// The IPAM plugin, or `None` for an L2-only network.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()
            .map(|i| i.plugin_type.as_str())
            .filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_reference() {
        let c = BridgeConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"knode-bridge"}"#)
            .unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && !c.hairpin_mode);
        assert_eq!(c.link_mtu(), None);
        assert_eq!(c.ipam_type(), None);
        let c = BridgeConf::parse(br#"{"name":"n","isDefaultGateway":true,"mtu":1450}"#).unwrap();
        assert!(c.is_gateway);
        assert_eq!(c.link_mtu(), Some(1450));
    }

    #[test]
    fn errors_name_the_field() {
        let e = BridgeConf::parse(br#"{"name":"n","mtu":20}"#).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (Code::InvalidConfig, "mtu: 20 is outside 68-65535")
        );
        let e =
            BridgeConf::parse(br#"{"name":"n","bridge":"a-very-long-bridge-name"}"#).unwrap_err();
        assert!(e.msg.starts_with("bridge: "), "{}", e.msg);
        let e = BridgeConf::parse(br#"{"name":"n","ipam":{"type":"../../bin/sh"}}"#).unwrap_err();
        assert!(e.msg.starts_with("ipam.type: "), "{}", e.msg);
        let e = BridgeConf::parse(br#"{"name":"a b"}"#).unwrap_err();
        assert!(e.msg.starts_with("name: "), "{}", e.msg);
        let e = BridgeConf::parse(br#"{"name":"n","mtu":"big"}"#).unwrap_err();
        assert_eq!(e.code, Code::Decode);
    }
}
