//! Stale UDP conntrack entries: which flows to a Service's ClusterIP or
//! NodePort no longer lead to one of its endpoints (a pure choice), and
//! the boundary that lists and deletes flows ([`Conntrack`], netlink in
//! [`netlink`]). UDP has no connection to close, so without this a client
//! keeps sending on its 5-tuple to an endpoint that is gone.

pub mod netlink;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::Result;

/// One conntrack entry, as far as cleanup needs it (IPv4 or IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number (17 for UDP).
    pub proto: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    /// Where replies come from: the DNAT target when the flow was NATed.
    pub reply_src: IpAddr,
    pub reply_sport: u16,
    /// The kernel's id for the entry, so a delete hits only this one.
    pub id: Option<u32>,
    /// The conntrack zone, when not the default.
    pub zone: Option<u16>,
}

/// Where a UDP Service port is reached and where it may lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpTarget {
    pub dest: Dest,
    /// `ip:port` of the current endpoints (empty: none, or deleted).
    pub endpoints: BTreeSet<(IpAddr, u16)>,
}

/// How a flow reaches a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// ClusterIP and port.
    ClusterIp(IpAddr, u16),
    /// A NodePort on one of `node_ips` (any address when empty).
    NodePort(u16),
}

/// The UDP flows among `flows` that were sent to one of `targets` and do
/// not lead to one of its current endpoints (replies would come from an
/// endpoint that is gone, or the flow was never NATed at all). NodePort
/// flows count when sent to one of `node_ips`, or to any address when
/// that list is empty.
pub fn stale<'a>(flows: &'a [Flow], targets: &[UdpTarget], node_ips: &[IpAddr]) -> Vec<&'a Flow> {
    flows
        .iter()
        .filter(|f| f.proto == 17)
        .filter(|f| {
            targets.iter().any(|t| {
                let sent_here = match t.dest {
                    Dest::ClusterIp(ip, port) => f.orig_dst == ip && f.orig_dport == port,
                    Dest::NodePort(port) => {
                        f.orig_dport == port
                            && (node_ips.is_empty()
                                || node_ips.contains(&f.orig_dst)
                                || f.orig_dst.is_loopback())
                    }
                };
                sent_here && !t.endpoints.contains(&(f.reply_src, f.reply_sport))
            })
        })
        .collect()
}

/// The conntrack table of the calling thread's namespace.
pub trait Conntrack: Send + Sync {
    /// Every IPv4 flow of IP protocol `proto`.
    fn flows(&self, proto: u8) -> Result<Vec<Flow>>;
    /// Deletes one flow; `false` when it was already gone.
    fn delete(&self, flow: &Flow) -> Result<bool>;
}

/// Deletes the [`stale`] flows for `targets`; returns how many went.
pub fn clean(ct: &dyn Conntrack, targets: &[UdpTarget], node_ips: &[IpAddr]) -> Result<usize> {
    if targets.is_empty() {
        return Ok(0);
    }
    let flows = ct.flows(17)?;
    let mut n = 0;
    for f in stale(&flows, targets, node_ips) {
        if ct.delete(f)? {
            n += 1;
        }
    }
    Ok(n)
}

/// A recording fake: flows the test puts in, deletions it can read back.
#[derive(Debug, Default)]
pub struct FakeConntrack {
    state: Mutex<(Vec<Flow>, Vec<Flow>)>,
}

impl FakeConntrack {
    /// A table holding `flows`.
    pub fn with(flows: Vec<Flow>) -> FakeConntrack {
        FakeConntrack {
            state: Mutex::new((flows, Vec::new())),
        }
    }

    /// The flows deleted so far.
    pub fn deleted(&self) -> Vec<Flow> {
        self.state.lock().map(|s| s.1.clone()).unwrap_or_default()
    }
}

impl Conntrack for FakeConntrack {
    fn flows(&self, proto: u8) -> Result<Vec<Flow>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.0.iter().filter(|f| f.proto == proto).cloned().collect())
    }

    fn delete(&self, flow: &Flow) -> Result<bool> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.0.len();
        s.0.retain(|f| f != flow);
        let gone = s.0.len() < before;
        if gone {
            s.1.push(flow.clone());
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(dst: &str, dport: u16, reply: &str, rport: u16) -> Flow {
        Flow {
            proto: 17,
            orig_src: "10.244.1.2".parse().expect("ip"),
            orig_dst: dst.parse().expect("ip"),
            orig_sport: 40000,
            orig_dport: dport,
            reply_src: reply.parse().expect("ip"),
            reply_sport: rport,
            id: None,
            zone: None,
        }
    }

    #[test]
    fn only_flows_to_the_service_that_miss_its_endpoints_are_stale() {
        let flows = vec![
            flow("10.96.0.10", 53, "10.244.1.3", 5353), // to the old endpoint
            flow("10.96.0.10", 53, "10.244.1.4", 5353), // to the current one
            flow("10.96.0.10", 53, "10.96.0.10", 53),   // never NATed
            flow("10.96.0.11", 53, "10.244.1.3", 5353), // another service
            flow("192.0.2.1", 30053, "10.244.1.3", 5353), // NodePort, old endpoint
            flow("192.0.2.9", 30053, "10.244.1.3", 5353), // not a node address
        ];
        let targets = vec![
            UdpTarget {
                dest: Dest::ClusterIp("10.96.0.10".parse().expect("ip"), 53),
                endpoints: [("10.244.1.4".parse().expect("ip"), 5353)].into(),
            },
            UdpTarget {
                dest: Dest::NodePort(30053),
                endpoints: [("10.244.1.4".parse().expect("ip"), 5353)].into(),
            },
        ];
        let node_ips = ["192.0.2.1".parse().expect("ip")];
        let got: Vec<usize> = stale(&flows, &targets, &node_ips)
            .into_iter()
            .map(|f| flows.iter().position(|x| x == f).expect("in flows"))
            .collect();
        assert_eq!(got, vec![0, 2, 4]);

        let ct = FakeConntrack::with(flows.clone());
        assert_eq!(clean(&ct, &targets, &node_ips).expect("clean"), 3);
        assert_eq!(ct.deleted().len(), 3);
        assert_eq!(clean(&ct, &[], &node_ips).expect("clean"), 0);
    }
}
