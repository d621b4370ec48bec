//! `/run/flannel/subnet.env`: the node's lease for other tools (flannel's
//! CNI plugin reads it) and, at the next start, the subnet to ask for
//! first. Written aside and renamed, so a reader never sees half a file.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::{Error, Result};

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    /// The node's subnet.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
    /// The IPv6 network and the node's IPv6 subnet, on a dual-stack network.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

impl SubnetEnv {
    /// The file's text. FLANNEL_SUBNET is the subnet's first address with
    /// the subnet's length (`10.244.3.1/24`), as flannel writes it; so is
    /// FLANNEL_IPV6_SUBNET (`fd00:10:244:3::1/64`) on a dual-stack network.
    pub fn render(&self) -> String {
        let first = Ipv4Addr::from(u32::from(self.subnet.network()) + 1);
        // flannel's order: the IPv4 pair, then the IPv6 pair.
        let mut text = format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={first}/{}\n",
            self.network,
            self.subnet.prefix_len()
        );
        if let Some((network6, subnet6)) = self.ipv6 {
            let first6 = Ipv6Addr::from(u128::from(subnet6.network()) + 1);
            text.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={network6}\nFLANNEL_IPV6_SUBNET={first6}/{}\n",
                subnet6.prefix_len()
            ));
        }
        text.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        text
    }

    /// Writes it atomically, making the directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let tmp = path.with_extension("env.tmp");
        std::fs::write(&tmp, self.render())
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("write {}", path.display()), e))
    }
}

/// The subnet recorded in `path` by an earlier run, if the file is there
/// and readable. (A broken file only loses the preference; it is logged.)
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    let parsed = parse_subnet(&text);
    if parsed.is_none() {
        tracing::warn!(file = %path.display(), "no valid FLANNEL_SUBNET in the subnet file; ignoring it");
    }
    parsed
}

fn parse_subnet(text: &str) -> Option<Ipv4Net> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))?;
    let net: Ipv4Net = value.trim().trim_matches('"').parse().ok()?;
    Some(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_format_and_reads_it_back() {
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            mtu: 1450,
            ipmasq: true,
            ipv6: None,
        };
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(parse_subnet(&text), Some(env.subnet));
        assert_eq!(parse_subnet("FLANNEL_MTU=1450\n"), None);
        assert_eq!(parse_subnet("FLANNEL_SUBNET=garbage\n"), None);
        let dual = SubnetEnv {
            ipv6: Some((
                "fd00:10:244::/56".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            )),
            ..env
        };
        let text = dual.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(parse_subnet(&text), Some(env.subnet));
    }

    #[test]
    fn written_atomically() {
        let dir = std::env::temp_dir().join(format!("knode-subnet-env-{}", std::process::id()));
        let path = dir.join("flannel/subnet.env");
        let env = SubnetEnv {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.9.0/24".parse().unwrap(),
            mtu: 1500,
            ipmasq: false,
            ipv6: None,
        };
        env.write(&path).unwrap();
        assert_eq!(previous_subnet(&path), Some(env.subnet));
        assert!(!path.with_extension("env.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
