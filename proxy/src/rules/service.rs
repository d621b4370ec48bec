//! The rules of one Service port, following kube-proxy's `syncProxyRules`
//! loop body: its own nat chains (KUBE-SVC, KUBE-SVL, KUBE-EXT, KUBE-SEP)
//! and the lines it adds to the shared chains (dispatch, NodePorts,
//! REJECT/DROP when it has no usable endpoints).

use super::names::{
    comment_arg, endpoint_chain, port_proto_hash, KUBE_EXTERNAL_SERVICES, KUBE_MARK_MASQ,
    KUBE_NODEPORTS, KUBE_SERVICES,
};
use super::{Chain, NodeConfig, Table};
use crate::view::{Endpoint, ServicePort};

/// One line for a chain shared by every Service (KUBE-SERVICES, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRule {
    pub table: Table,
    pub chain: &'static str,
    pub line: String,
}

/// Everything one Service port contributes to the ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRules {
    /// Its own nat chains.
    pub chains: Vec<Chain>,
    /// Its lines in the shared chains.
    pub shared: Vec<SharedRule>,
}

/// Builds chains and lines; names are fixed up front.
struct Writer<'a> {
    sp: &'a ServicePort,
    node: &'a NodeConfig,
    /// `ns/name:port`.
    name: String,
    proto: &'static str,
    svc: String,
    svl: String,
    ext: String,
    /// Comments on the per-endpoint rules (off in large-cluster mode).
    endpoint_comments: bool,
    out: ServiceRules,
}

/// The rules of `sp` on `node` (see the module doc). In `large_cluster`
/// mode (see [`super::large_cluster`]) the per-endpoint rules, in KUBE-SEP
/// chains and the KUBE-SVC/SVL jumps to them, carry no comment, as
/// kube-proxy's large-cluster mode does.
pub fn service_rules(sp: &ServicePort, node: &NodeConfig, large_cluster: bool) -> ServiceRules {
    let name = sp.name.to_string();
    let hash = port_proto_hash(&name, sp.protocol);
    let mut w = Writer {
        sp,
        node,
        proto: sp.protocol.lower(),
        svc: format!("KUBE-SVC-{hash}"),
        svl: format!("KUBE-SVL-{hash}"),
        ext: format!("KUBE-EXT-{hash}"),
        endpoint_comments: !large_cluster,
        name,
        out: ServiceRules::default(),
    };
    w.write();
    w.out
}

impl Writer<'_> {
    fn write(&mut self) {
        let sp = self.sp;
        let cluster_eps: Vec<&Endpoint> = if sp.uses_cluster_endpoints() {
            sp.endpoints.iter().collect()
        } else {
            Vec::new()
        };
        let local = sp.local_endpoints();
        let local_eps: Vec<&Endpoint> = if sp.uses_local_endpoints() {
            local.iter().collect()
        } else {
            Vec::new()
        };
        let has_endpoints = !sp.endpoints.is_empty();
        let (internal_chain, has_internal) = if sp.internal_local {
            (self.svl.clone(), !local_eps.is_empty())
        } else {
            (self.svc.clone(), has_endpoints)
        };
        let (external_chain, has_external) = if sp.external_policy_local() {
            (self.svl.clone(), !local_eps.is_empty())
        } else {
            (self.svc.clone(), has_endpoints)
        };
        // What the filter table does with traffic that has nowhere to go:
        // REJECT when the Service has no endpoints at all, DROP when only
        // the Local policy leaves none.
        let blocked = if has_endpoints {
            (
                "DROP",
                comment_arg(&format!("{} has no local endpoints", self.name)),
            )
        } else {
            (
                "REJECT",
                comment_arg(&format!("{} has no endpoints", self.name)),
            )
        };
        let blocked_internal = (!has_internal).then(|| blocked.clone());
        let blocked_external = (!has_external).then_some(blocked);

        let vip = self.vip_match();
        let cluster_ip_comment = comment_arg(&format!("{} cluster IP", self.name));
        // Capture the ClusterIP.
        match &blocked_internal {
            None => self.shared(
                Table::Nat,
                KUBE_SERVICES,
                format!("-m comment --comment {cluster_ip_comment} {vip} -j {internal_chain}"),
            ),
            Some((target, comment)) => self.shared(
                Table::Filter,
                KUBE_SERVICES,
                format!("-m comment --comment {comment} {vip} -j {target}"),
            ),
        }
        // Capture the NodePort.
        if let Some(np) = sp.node_port {
            let proto = self.proto;
            if has_endpoints {
                let comment = comment_arg(&self.name);
                let ext = self.ext.clone();
                self.shared(
                    Table::Nat,
                    KUBE_NODEPORTS,
                    format!("-m comment --comment {comment} -m {proto} -p {proto} --dport {np} -j {ext}"),
                );
            }
            if let Some((target, comment)) = &blocked_external {
                self.shared(
                    Table::Filter,
                    KUBE_EXTERNAL_SERVICES,
                    format!("-m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j {target}"),
                );
            }
        }

        // Capture the external IPs and load-balancer IPs, as the NodePort.
        let ips = sp.external_ips.iter().map(|ip| (ip, "external IP"));
        let lbs = sp
            .load_balancer_ips
            .iter()
            .map(|ip| (ip, "loadbalancer IP"));
        for (ip, what) in ips.chain(lbs) {
            let p = self.proto;
            let dest = format!("-m {p} -p {p} -d {ip} --dport {}", sp.port);
            if has_endpoints {
                let comment = comment_arg(&format!("{} {what}", self.name));
                let ext = self.ext.clone();
                self.shared(
                    Table::Nat,
                    KUBE_SERVICES,
                    format!("-m comment --comment {comment} {dest} -j {ext}"),
                );
            }
            if let Some((target, comment)) = &blocked_external {
                self.shared(
                    Table::Filter,
                    KUBE_EXTERNAL_SERVICES,
                    format!("-m comment --comment {comment} {dest} -j {target}"),
                );
            }
        }

        // Masquerade off-cluster traffic to the ClusterIP.
        let mut internal_rules = Vec::new();
        if has_internal {
            let masq = if self.node.masquerade_all {
                Some(String::new())
            } else {
                self.node.cluster_cidr.map(|c| format!(" ! -s {c}"))
            };
            if let Some(cond) = masq {
                internal_rules.push(format!(
                    "-A {internal_chain} -m comment --comment {cluster_ip_comment} {vip}{cond} -j {KUBE_MARK_MASQ}"
                ));
            }
        }

        if has_endpoints && sp.externally_accessible() {
            self.external_chain(&external_chain, has_external);
        }
        for (chain, eps) in [
            (self.svc.clone(), &cluster_eps),
            (self.svl.clone(), &local_eps),
        ] {
            if eps.is_empty() {
                continue;
            }
            let mut rules = if chain == internal_chain {
                std::mem::take(&mut internal_rules)
            } else {
                Vec::new()
            };
            rules.extend(self.balance(&chain, eps));
            self.chain(chain, rules);
        }
        let mut reachable: Vec<&Endpoint> = cluster_eps.iter().chain(&local_eps).copied().collect();
        reachable.sort();
        reachable.dedup();
        for ep in reachable {
            self.endpoint_chain(ep);
        }
    }

    /// `-m tcp -p tcp -d VIP --dport PORT`.
    fn vip_match(&self) -> String {
        let p = self.proto;
        format!(
            "-m {p} -p {p} -d {} --dport {}",
            self.sp.cluster_ip, self.sp.port
        )
    }

    fn shared(&mut self, table: Table, chain: &'static str, args: String) {
        self.out.shared.push(SharedRule {
            table,
            chain,
            line: format!("-A {chain} {args}"),
        });
    }

    fn chain(&mut self, name: String, rules: Vec<String>) {
        self.out.chains.push(Chain {
            table: Table::Nat,
            name,
            rules,
        });
    }

    /// KUBE-EXT: masquerade (policy Cluster) or keep the client's address
    /// (policy Local, short-circuiting pod and host traffic to KUBE-SVC).
    fn external_chain(&mut self, policy_chain: &str, has_external: bool) {
        let (ext, svc, name) = (&self.ext, &self.svc, &self.name);
        let mut rules = Vec::new();
        if !self.sp.external_policy_local() {
            let c = comment_arg(&format!(
                "masquerade traffic for {name} external destinations"
            ));
            rules.push(format!(
                "-A {ext} -m comment --comment {c} -j {KUBE_MARK_MASQ}"
            ));
        } else {
            if let Some(cidr) = self.node.cluster_cidr {
                let c = comment_arg(&format!("pod traffic for {name} external destinations"));
                rules.push(format!(
                    "-A {ext} -m comment --comment {c} -s {cidr} -j {svc}"
                ));
            }
            let c = comment_arg(&format!(
                "masquerade LOCAL traffic for {name} external destinations"
            ));
            rules.push(format!(
                "-A {ext} -m comment --comment {c} -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            ));
            let c = comment_arg(&format!(
                "route LOCAL traffic for {name} external destinations"
            ));
            rules.push(format!(
                "-A {ext} -m comment --comment {c} -m addrtype --src-type LOCAL -j {svc}"
            ));
        }
        if has_external {
            rules.push(format!("-A {ext} -j {policy_chain}"));
        }
        self.chain(ext.clone(), rules);
    }

    /// Affinity checks, then one random jump per endpoint with probability
    /// 1/(n-i), the last unconditional (kube-proxy's
    /// `writeServiceToEndpointRules`).
    fn balance(&self, chain: &str, eps: &[&Endpoint]) -> Vec<String> {
        let mut rules = Vec::new();
        let target = |ep: &Endpoint| endpoint_chain(&self.name, self.sp.protocol, &ep.addr());
        let comment =
            |ep: &Endpoint| self.endpoint_comment(&format!("{} -> {}", self.name, ep.addr()));
        if let Some(secs) = self.sp.affinity_seconds {
            for ep in eps {
                let sep = target(ep);
                rules.push(format!(
                    "-A {chain}{} -m recent --name {sep} --rcheck --seconds {secs} --reap -j {sep}",
                    comment(ep)
                ));
            }
        }
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let stat = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {}",
                    probability(n - i)
                )
            } else {
                String::new()
            };
            rules.push(format!("-A {chain}{}{stat} -j {}", comment(ep), target(ep)));
        }
        rules
    }

    /// ` -m comment --comment TEXT` for a per-endpoint rule, or nothing in
    /// large-cluster mode.
    fn endpoint_comment(&self, text: &str) -> String {
        if self.endpoint_comments {
            format!(" -m comment --comment {}", comment_arg(text))
        } else {
            String::new()
        }
    }

    /// KUBE-SEP: hairpin masquerade, affinity record, DNAT.
    fn endpoint_chain(&mut self, ep: &Endpoint) {
        let sep = endpoint_chain(&self.name, self.sp.protocol, &ep.addr());
        let c = self.endpoint_comment(&self.name);
        let p = self.proto;
        let recent = if self.sp.affinity_seconds.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        let rules = vec![
            format!("-A {sep}{c} -s {} -j {KUBE_MARK_MASQ}", ep.ip),
            format!(
                "-A {sep}{c}{recent} -m {p} -p {p} -j DNAT --to-destination {}",
                ep.addr()
            ),
        ];
        self.chain(sep, rules);
    }
}

/// 1/n as kube-proxy prints it (`%0.10f`).
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}
