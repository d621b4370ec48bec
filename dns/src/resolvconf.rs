//! resolv.conf both ways: reading the host's (kubelet's `parseResolvConf`
//! rules) and composing a pod's from its `dnsPolicy` and `dnsConfig`
//! (kubelet's `GetPodDNS` and limits, containerd's file layout). Pure: no
//! file is read or written here.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};

/// Most nameservers a pod's file keeps (`MaxDNSNameservers`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains (`MaxDNSSearchPaths`).
pub const MAX_SEARCH_PATHS: usize = 32;
/// Longest `search` line, in characters (`MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;
/// Longest search domain kept (glibc aborts on longer ones).
const MAX_DOMAIN_LEN: usize = 253;

/// A parsed resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines that parse as IPs, in order.
    pub nameservers: Vec<IpAddr>,
    /// The last `search` line's domains, trailing dots and `.` dropped.
    pub searches: Vec<String>,
    /// `options`, merged by name (a later value wins), in first-seen order.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text as kubelet does; unknown lines and
    /// nameservers that are not IPs (e.g. with a `%scope`) are skipped.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => {
                    if let Some(Ok(ip)) = fields.next().map(str::parse) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    let opts: Vec<(String, Option<String>)> = fields.map(split_option).collect();
                    conf.options = merge_options(&conf.options, opts);
                }
                _ => {}
            }
        }
        conf
    }
}

/// A pod's resolv.conf, as kubelet hands it to the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodResolvConf {
    /// `nameserver` lines (at most [`MAX_NAMESERVERS`]).
    pub nameservers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

impl PodResolvConf {
    /// The file's text, laid out as containerd writes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out += &format!("search {}\n", self.searches.join(" "));
        }
        for ns in &self.nameservers {
            out += &format!("nameserver {ns}\n");
        }
        if !self.options.is_empty() {
            out += &format!("options {}\n", self.options.join(" "));
        }
        out
    }
}

/// What the node knows that goes into every pod's file.
#[derive(Debug, Clone)]
pub struct NodeDns<'a> {
    /// The host's resolv.conf (kubelet's `resolv-conf`), or `None` when that
    /// option is empty (host-DNS pods then get 127.0.0.1 and `search .`).
    pub host: Option<&'a ResolvConf>,
    /// `cluster-dns` addresses; empty means ClusterFirst falls back to host.
    pub cluster_dns: &'a [IpAddr],
    /// `cluster-domain`, e.g. `cluster.local` (empty: no cluster search).
    pub cluster_domain: &'a str,
}

/// The resolv.conf kubelet would give `pod` on this node.
pub fn pod_resolv_conf_for(pod: &Pod, node: &NodeDns<'_>) -> PodResolvConf {
    let spec = pod.spec.as_ref();
    pod_resolv_conf(
        spec.and_then(|s| s.dns_policy.as_deref()),
        spec.and_then(|s| s.dns_config.as_ref()),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        spec.and_then(|s| s.host_network).unwrap_or(false),
        node,
    )
}

/// The resolv.conf for a pod with `dns_policy` (unset means ClusterFirst),
/// `dns_config`, in `namespace`, on the host network or not.
///
/// ClusterFirst (off the host network) and ClusterFirstWithHostNet: the
/// cluster nameservers, search `<ns>.svc.<zone> svc.<zone> <zone>` then the
/// host's, `options ndots:5`. Default (and ClusterFirst on the host
/// network): the host's file. None: only `dns_config`. `dns_config` is then
/// merged in (nameservers and searches appended without duplicates, options
/// overriding by name) and the result cut to kubelet's limits.
pub fn pod_resolv_conf(
    dns_policy: Option<&str>,
    dns_config: Option<&PodDNSConfig>,
    namespace: &str,
    host_network: bool,
    node: &NodeDns<'_>,
) -> PodResolvConf {
    let host = node.host.cloned().unwrap_or_default();
    let base_host = || PodResolvConf {
        nameservers: host.nameservers.iter().map(IpAddr::to_string).collect(),
        searches: host.searches.clone(),
        options: host.options.clone(),
    };
    let policy = dns_policy.unwrap_or("ClusterFirst");
    let cluster = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!host_network),
        "Default" => Some(false),
        other => {
            tracing::warn!(dns_policy = other, "unknown dnsPolicy, using ClusterFirst");
            Some(true)
        }
    };
    let mut conf = match cluster {
        None => PodResolvConf::default(),
        Some(true) if !node.cluster_dns.is_empty() => {
            let mut searches = Vec::new();
            if !node.cluster_domain.is_empty() {
                let d = node.cluster_domain.trim_end_matches('.');
                searches = vec![
                    format!("{namespace}.svc.{d}"),
                    format!("svc.{d}"),
                    d.to_string(),
                ];
            }
            searches.extend(host.searches.iter().cloned());
            PodResolvConf {
                nameservers: node.cluster_dns.iter().map(IpAddr::to_string).collect(),
                searches: dedup(searches),
                options: vec!["ndots:5".to_string()],
            }
        }
        Some(_) if node.host.is_none() => PodResolvConf {
            nameservers: vec!["127.0.0.1".to_string()],
            searches: vec![".".to_string()],
            options: Vec::new(),
        },
        Some(_) => base_host(),
    };
    if let Some(extra) = dns_config {
        conf.nameservers
            .extend(extra.nameservers.iter().flatten().cloned());
        conf.nameservers = dedup(std::mem::take(&mut conf.nameservers));
        conf.searches
            .extend(extra.searches.iter().flatten().cloned());
        conf.searches = dedup(std::mem::take(&mut conf.searches));
        let opts = extra
            .options
            .iter()
            .flatten()
            .filter_map(|o| Some((o.name.clone()?, o.value.clone())));
        conf.options = merge_options(&conf.options, opts.collect());
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches = fit_search_limits(conf.searches);
    conf
}

/// kubelet's `formDNSSearchFitsLimits`: at most 32 domains, none longer
/// than 253, and the line within 2048 characters (dropping from the end).
fn fit_search_limits(mut searches: Vec<String>) -> Vec<String> {
    searches.truncate(MAX_SEARCH_PATHS);
    searches.retain(|s| s.len() <= MAX_DOMAIN_LEN);
    while !searches.is_empty() && searches.join(" ").len() > MAX_SEARCH_CHARS {
        searches.pop();
    }
    searches
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn split_option(opt: &str) -> (String, Option<String>) {
    match opt.split_once(':') {
        Some((name, value)) => (name.to_string(), Some(value.to_string())),
        None => (opt.to_string(), None),
    }
}

/// `existing` options with `overrides` applied by name (kubelet's
/// `mergeDNSOptions`; order is first-seen, where kubelet's is a map's).
fn merge_options(existing: &[String], overrides: Vec<(String, Option<String>)>) -> Vec<String> {
    let mut merged: Vec<(String, Option<String>)> =
        existing.iter().map(|o| split_option(o)).collect();
    for (name, value) in overrides {
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => merged.push((name, value)),
        }
    }
    merged
        .into_iter()
        .map(|(n, v)| match v {
            Some(v) if !v.is_empty() => format!("{n}:{v}"),
            _ => n,
        })
        .collect()
}

#[cfg(test)]
mod tests;
