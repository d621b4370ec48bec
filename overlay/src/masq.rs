//! Masquerade and forwarding for pod traffic, as flannel sets them up: pod
//! traffic leaving the cluster network is masqueraded (random-fully),
//! traffic inside it is not, and FORWARD accepts the cluster network even
//! when the chain's policy is DROP. Rules live in our own chains
//! (KNODE-POSTRTG in nat, KNODE-FWD in filter), jumped to from the top of
//! POSTROUTING and FORWARD; [`payload`] is pure and [`ensure`] applies it.
//! A dual-stack network gets the same rules for IPv6 from ip6tables.

use hostnet::iptables::{self, Family};
use ipnet::IpNet;

use crate::Result;

/// Our nat chain, jumped to from POSTROUTING.
pub const NAT_CHAIN: &str = "KNODE-POSTRTG";
/// Our filter chain, jumped to from FORWARD.
pub const FWD_CHAIN: &str = "KNODE-FWD";
const MASQ_COMMENT: &str = "\"knode masq\"";
const FWD_COMMENT: &str = "\"knode forward\"";

/// The rules of [`NAT_CHAIN`], in iptables-save's own spelling (so a
/// saved table can be compared line by line).
pub fn nat_rules(network: IpNet, subnet: IpNet, ipmasq: bool) -> Vec<String> {
    if !ipmasq {
        return Vec::new();
    }
    let c = MASQ_COMMENT;
    let multicast = match network {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    };
    vec![
        // kube-proxy marks what it masquerades itself.
        format!("-m mark --mark 0x4000/0x4000 -m comment --comment {c} -j RETURN"),
        // Pod to pod inside the cluster: keep the source.
        format!("-s {subnet} -d {network} -m comment --comment {c} -j RETURN"),
        format!("-s {network} -d {subnet} -m comment --comment {c} -j RETURN"),
        // Traffic from outside the cluster to our pods: keep the source.
        format!("! -s {network} -d {subnet} -m comment --comment {c} -j RETURN"),
        // Pods to the outside world (not multicast): the node's address.
        format!(
            "-s {network} ! -d {multicast} -m comment --comment {c} -j MASQUERADE --random-fully"
        ),
        // The host to remote pods: a source the overlay can route back.
        format!(
            "! -s {network} -d {network} -m comment --comment {c} -j MASQUERADE --random-fully"
        ),
    ]
}

/// The rules of [`FWD_CHAIN`].
pub fn fwd_rules(network: IpNet) -> Vec<String> {
    vec![
        format!("-s {network} -m comment --comment {FWD_COMMENT} -j ACCEPT"),
        format!("-d {network} -m comment --comment {FWD_COMMENT} -j ACCEPT"),
    ]
}

/// The `iptables-restore --noflush` payload that brings the saved `nat`
/// and `filter` tables to the wanted rules, or `None` when they hold them
/// already. Declaring a chain flushes it, so our chains are rewritten
/// whole; the jumps are inserted only when missing.
pub fn payload(
    network: IpNet,
    subnet: IpNet,
    ipmasq: bool,
    saved_nat: &str,
    saved_filter: &str,
) -> Option<String> {
    let nat = nat_rules(network, subnet, ipmasq);
    let fwd = fwd_rules(network);
    let nat_ok = in_place(saved_nat, "POSTROUTING", NAT_CHAIN, &nat);
    let fwd_ok = in_place(saved_filter, "FORWARD", FWD_CHAIN, &fwd);
    if nat_ok && fwd_ok {
        return None;
    }
    let mut p = String::new();
    for (table, parent, chain, rules, comment, saved) in [
        (
            "nat",
            "POSTROUTING",
            NAT_CHAIN,
            &nat,
            MASQ_COMMENT,
            saved_nat,
        ),
        (
            "filter",
            "FORWARD",
            FWD_CHAIN,
            &fwd,
            FWD_COMMENT,
            saved_filter,
        ),
    ] {
        p.push_str(&format!("*{table}\n:{chain} - [0:0]\n"));
        for r in rules {
            p.push_str(&format!("-A {chain} {r}\n"));
        }
        if !jumps_to(saved, parent, chain) {
            p.push_str(&format!(
                "-I {parent} 1 -m comment --comment {comment} -j {chain}\n"
            ));
        }
        p.push_str("COMMIT\n");
    }
    Some(p)
}

fn jumps_to(saved: &str, parent: &str, chain: &str) -> bool {
    let target = format!("-j {chain}");
    iptables::chain_rules(saved, parent)
        .iter()
        .any(|r| r.ends_with(&target))
}

fn in_place(saved: &str, parent: &str, chain: &str, want: &[String]) -> bool {
    iptables::has_chain(saved, chain)
        && jumps_to(saved, parent, chain)
        && iptables::chain_rules(saved, chain)
            == want.iter().map(String::as_str).collect::<Vec<_>>()
}

/// Reads the host's tables (iptables or ip6tables, by `network`'s
/// family) and applies what is missing; true when it changed anything.
pub fn ensure(network: IpNet, subnet: IpNet, ipmasq: bool) -> Result<bool> {
    let family = match network {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    };
    // Only the four chains involved: a whole-table read costs 33 s on
    // iptables-nft with 10k Services in nat, and this runs every resync.
    let nat = iptables::read_chains(family, "nat", &["POSTROUTING", NAT_CHAIN])?;
    let filter = iptables::read_chains(family, "filter", &["FORWARD", FWD_CHAIN])?;
    match payload(network, subnet, ipmasq, &nat, &filter) {
        None => Ok(false),
        Some(p) => {
            iptables::restore(family, &p, true)?;
            Ok(true)
        }
    }
}

/// Removes our chains and the jumps to them, both families (for `--cleanup`).
pub fn remove() -> Result<()> {
    iptables::remove_chains(Family::V4, "nat", |c| c == NAT_CHAIN)?;
    iptables::remove_chains(Family::V4, "filter", |c| c == FWD_CHAIN)?;
    // ip6tables holds rules only on a dual-stack node; a host without it
    // has none to remove.
    let v6 = iptables::remove_chains(Family::V6, "nat", |c| c == NAT_CHAIN)
        .and_then(|_| iptables::remove_chains(Family::V6, "filter", |c| c == FWD_CHAIN));
    if let Err(e) = v6 {
        tracing::warn!(error = %e, "remove the overlay's ip6tables rules");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> (IpNet, IpNet) {
        (
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        )
    }

    /// What iptables-save prints after `payload` was applied to empty tables.
    fn saved_after(
        table: &str,
        chain: &str,
        parent: &str,
        comment: &str,
        rules: &[String],
    ) -> String {
        let mut s = format!("*{table}\n:{parent} ACCEPT [0:0]\n:{chain} - [0:0]\n");
        s.push_str(&format!(
            "-A {parent} -m comment --comment {comment} -j {chain}\n"
        ));
        for r in rules {
            s.push_str(&format!("-A {chain} {r}\n"));
        }
        s + "COMMIT\n"
    }

    #[test]
    fn masquerades_only_what_leaves_the_cluster() {
        let (n, s) = net();
        let r = nat_rules(n, s, true);
        assert!(r.iter().any(
            |l| l.starts_with("-s 10.244.3.0/24 -d 10.244.0.0/16") && l.ends_with("-j RETURN")
        ));
        assert!(r
            .iter()
            .any(|l| l.starts_with("-s 10.244.0.0/16 ! -d 224.0.0.0/4")
                && l.ends_with("-j MASQUERADE --random-fully")));
        assert!(nat_rules(n, s, false).is_empty());
        assert_eq!(
            fwd_rules(n)[0],
            "-s 10.244.0.0/16 -m comment --comment \"knode forward\" -j ACCEPT"
        );
    }

    #[test]
    fn empty_tables_get_chains_and_jumps_then_nothing_more() {
        let (n, s) = net();
        let p = payload(n, s, true, "*nat\nCOMMIT\n", "*filter\nCOMMIT\n").unwrap();
        assert!(p.contains(":KNODE-POSTRTG - [0:0]\n"));
        assert!(
            p.contains("-I POSTROUTING 1 -m comment --comment \"knode masq\" -j KNODE-POSTRTG\n")
        );
        assert!(p.contains("-I FORWARD 1 -m comment --comment \"knode forward\" -j KNODE-FWD\n"));
        let nat = saved_after(
            "nat",
            NAT_CHAIN,
            "POSTROUTING",
            MASQ_COMMENT,
            &nat_rules(n, s, true),
        );
        let filter = saved_after("filter", FWD_CHAIN, "FORWARD", FWD_COMMENT, &fwd_rules(n));
        assert_eq!(payload(n, s, true, &nat, &filter), None);
        // Someone flushed POSTROUTING: the jump comes back, the chain is rewritten.
        let flushed = nat.replace(
            "-A POSTROUTING -m comment --comment \"knode masq\" -j KNODE-POSTRTG\n",
            "",
        );
        let p = payload(n, s, true, &flushed, &filter).unwrap();
        assert!(p.contains("-I POSTROUTING 1"));
        assert!(
            !p.contains("-I FORWARD 1"),
            "the FORWARD jump is still there"
        );
        // A new lease changes the rules.
        assert!(payload(n, "10.244.4.0/24".parse().unwrap(), true, &nat, &filter).is_some());
    }

    #[test]
    fn ipv6_gets_the_same_shape_with_ipv6_multicast() {
        let n: IpNet = "fd00:10:244::/56".parse().unwrap();
        let s: IpNet = "fd00:10:244:3::/64".parse().unwrap();
        let v6 = nat_rules(n, s, true);
        let v4 = {
            let (n, s) = net();
            nat_rules(n, s, true)
        };
        assert_eq!(v6.len(), v4.len());
        assert!(v6.contains(&format!(
            "-s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment {MASQ_COMMENT} -j MASQUERADE --random-fully"
        )));
        assert!(v6.contains(&format!(
            "-s fd00:10:244:3::/64 -d fd00:10:244::/56 -m comment --comment {MASQ_COMMENT} -j RETURN"
        )));
    }
}
