//! Choosing the underlay: the interface (and address) overlay traffic
//! leaves by, from `--iface` (a name or an address), `--public-ip`, or the
//! default route. An ambiguous or wrong choice is refused with what was
//! found, never guessed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostnet::{Link, Netlink};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{Error, Result};

/// The chosen underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The node's public IP (the lease's PublicIP and the VXLAN source).
    pub ip: Ipv4Addr,
    /// The connected network of that address: the L2 segment.
    pub net: Ipv4Net,
}

/// A link with its addresses, as read from the kernel.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub link: Link,
    pub addrs: Vec<IpNet>,
}

impl Candidate {
    fn v4(&self) -> Vec<Ipv4Net> {
        self.addrs
            .iter()
            .filter_map(|a| match a {
                IpNet::V4(n) if !n.addr().is_loopback() && !n.addr().is_link_local() => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn underlay(&self, addr: Ipv4Net) -> Underlay {
        Underlay {
            name: self.link.name.clone(),
            index: self.link.index,
            mtu: self.link.mtu,
            ip: addr.addr(),
            net: addr.trunc(),
        }
    }
}

/// Reads the links, addresses and default route of the calling thread's
/// namespace and chooses.
pub fn detect(iface: Option<&str>, public_ip: Option<Ipv4Addr>) -> Result<Underlay> {
    let mut nl = Netlink::new()?;
    let mut cands = Vec::new();
    for link in nl.link().list()? {
        let addrs = nl.addr().list(link.index)?;
        cands.push(Candidate { link, addrs });
    }
    let default_oif = nl
        .route()
        .list(true)?
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .and_then(|r| r.oif);
    choose(&cands, default_oif, iface, public_ip)
}

/// The choice, from plain data.
pub fn choose(
    cands: &[Candidate],
    default_oif: Option<u32>,
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay> {
    let err = |m: String| Err(Error::Interface(m));
    if let Some(want) = iface {
        let by_name = cands.iter().find(|c| c.link.name == want);
        let by_addr = || {
            let ip: IpAddr = want.parse().ok()?;
            cands
                .iter()
                .find(|c| c.addrs.iter().any(|a| a.addr() == ip))
        };
        let Some(c) = by_name.or_else(by_addr) else {
            let names: Vec<&str> = cands.iter().map(|c| c.link.name.as_str()).collect();
            return err(format!(
                "iface {want:?}: no interface has this name or address (interfaces: {})",
                names.join(", ")
            ));
        };
        let v4 = c.v4();
        let chosen = match public_ip {
            Some(ip) => match v4.iter().find(|a| a.addr() == ip) {
                Some(a) => *a,
                None => {
                    return err(format!(
                        "public-ip {ip} is not an address of iface {} (it has: {})",
                        c.link.name,
                        list(&v4)
                    ))
                }
            },
            None => match want.parse::<Ipv4Addr>() {
                Ok(ip) => *v4
                    .iter()
                    .find(|a| a.addr() == ip)
                    .expect("found by this address"),
                Err(_) => match v4.first() {
                    Some(a) => *a,
                    None => return err(format!("iface {}: has no IPv4 address", c.link.name)),
                },
            },
        };
        return Ok(c.underlay(chosen));
    }
    if let Some(ip) = public_ip {
        for c in cands {
            if let Some(a) = c.v4().into_iter().find(|a| a.addr() == ip) {
                return Ok(c.underlay(a));
            }
        }
        return err(format!(
            "public-ip {ip}: no interface on this node has this address; pass --iface with it"
        ));
    }
    let usable: Vec<(&Candidate, Ipv4Net)> = cands
        .iter()
        .filter(|c| c.link.name != "lo" && c.link.up)
        .filter_map(|c| c.v4().first().map(|a| (c, *a)))
        .collect();
    if let Some(oif) = default_oif {
        if let Some((c, a)) = usable.iter().find(|(c, _)| c.link.index == oif) {
            return Ok(c.underlay(*a));
        }
    }
    match usable.as_slice() {
        [(c, a)] => Ok(c.underlay(*a)),
        [] => err("cannot choose the underlay interface: no interface that is up has an IPv4 address; pass --iface".into()),
        many => {
            let names: Vec<&str> = many.iter().map(|(c, _)| c.link.name.as_str()).collect();
            err(format!(
                "cannot choose the underlay interface: no default route, and {} interfaces have IPv4 addresses ({}); pass --iface or --public-ip",
                many.len(),
                names.join(", ")
            ))
        }
    }
}

/// The IPv6 underlay address (with its connected network) on `underlay`:
/// `public_ipv6` when given (it must be there), else its first global
/// IPv6 address, else none (IPv6 pod traffic then rides the IPv4 underlay).
pub fn detect6(underlay: &Underlay, public_ipv6: Option<Ipv6Addr>) -> Result<Option<Ipv6Net>> {
    let mut nl = Netlink::new()?;
    let addrs = nl.addr().list(underlay.index)?;
    choose6(&underlay.name, &addrs, public_ipv6)
}

/// The choice of [`detect6`], from plain data.
pub fn choose6(
    iface: &str,
    addrs: &[IpNet],
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Option<Ipv6Net>> {
    let global: Vec<Ipv6Net> = addrs
        .iter()
        .filter_map(|a| match a {
            IpNet::V6(n)
                if !n.addr().is_loopback() && (n.addr().segments()[0] & 0xffc0) != 0xfe80 =>
            {
                Some(*n)
            }
            _ => None,
        })
        .collect();
    match public_ipv6 {
        None => Ok(global.first().copied()),
        Some(ip) => match global.iter().find(|a| a.addr() == ip) {
            Some(a) => Ok(Some(*a)),
            None => Err(Error::Interface(format!(
                "public-ipv6 {ip} is not an address of iface {iface} (it has: {})",
                if global.is_empty() {
                    "no global IPv6 address".to_string()
                } else {
                    global
                        .iter()
                        .map(|a| a.addr().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))),
        },
    }
}

fn list(v: &[Ipv4Net]) -> String {
    if v.is_empty() {
        return "no IPv4 address".into();
    }
    v.iter()
        .map(|a| a.addr().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: u32, name: &str, addrs: &[&str]) -> Candidate {
        Candidate {
            link: Link {
                index,
                name: name.into(),
                mtu: 1500,
                up: true,
                ..Default::default()
            },
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn hosts() -> Vec<Candidate> {
        vec![
            cand(1, "lo", &["127.0.0.1/8"]),
            cand(2, "eth0", &["198.18.0.11/24"]),
            cand(3, "eth1", &["192.0.2.5/24", "192.0.2.6/24"]),
            cand(4, "dummy0", &[]),
        ]
    }

    fn e(r: Result<Underlay>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn default_route_wins_when_nothing_is_said() {
        let u = choose(&hosts(), Some(3), None, None).unwrap();
        assert_eq!(
            (u.name.as_str(), u.ip.to_string()),
            ("eth1", "192.0.2.5".into())
        );
        assert_eq!(u.net.to_string(), "192.0.2.0/24");
    }

    #[test]
    fn iface_by_name_or_address_and_public_ip() {
        assert_eq!(
            choose(&hosts(), None, Some("eth0"), None)
                .unwrap()
                .ip
                .to_string(),
            "198.18.0.11"
        );
        assert_eq!(
            choose(&hosts(), None, Some("192.0.2.6"), None)
                .unwrap()
                .ip
                .to_string(),
            "192.0.2.6"
        );
        let u = choose(
            &hosts(),
            None,
            Some("eth1"),
            Some("192.0.2.6".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(u.ip.to_string(), "192.0.2.6");
        let u = choose(&hosts(), None, None, Some("198.18.0.11".parse().unwrap())).unwrap();
        assert_eq!(u.name, "eth0");
    }

    #[test]
    fn ipv6_underlay_is_the_first_global_address_or_the_one_asked_for() {
        let addrs: Vec<IpNet> = [
            "198.18.0.11/24",
            "fe80::1/64",
            "fd00:198:18::11/64",
            "2001:db8::11/64",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(
            choose6("eth0", &addrs, None).unwrap(),
            Some("fd00:198:18::11/64".parse().unwrap())
        );
        assert_eq!(
            choose6("eth0", &addrs, Some("2001:db8::11".parse().unwrap())).unwrap(),
            Some("2001:db8::11/64".parse().unwrap())
        );
        assert_eq!(choose6("eth0", &addrs[..2], None).unwrap(), None);
        let e = choose6("eth0", &addrs[..2], Some("fd00::9".parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("public-ipv6 fd00::9 is not an address of iface eth0 (it has: no global IPv6 address)"), "{e}");
    }

    #[test]
    fn wrong_or_ambiguous_choices_are_refused() {
        assert!(
            e(choose(&hosts(), None, Some("eth9"), None)).contains("iface \"eth9\": no interface")
        );
        assert!(e(choose(&hosts(), None, Some("dummy0"), None)).contains("has no IPv4 address"));
        assert!(e(choose(
            &hosts(),
            None,
            Some("eth0"),
            Some("192.0.2.5".parse().unwrap())
        ))
        .contains("public-ip 192.0.2.5 is not an address of iface eth0"));
        assert!(e(choose(
            &hosts(),
            None,
            None,
            Some("203.0.113.1".parse().unwrap())
        ))
        .contains("no interface on this node has this address"));
        let m = e(choose(&hosts(), None, None, None));
        assert!(
            m.contains("2 interfaces") && m.contains("eth0, eth1"),
            "{m}"
        );
        assert!(e(choose(&hosts()[..1], None, None, None)).contains("pass --iface"));
        assert_eq!(
            choose(&hosts()[..2], None, None, None).unwrap().name,
            "eth0"
        );
    }
}
