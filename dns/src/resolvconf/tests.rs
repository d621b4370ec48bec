//! resolv.conf tests: host files parsed as kubelet does, pod files per
//! dnsPolicy with dnsConfig merged and limits applied.

use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption};

use super::*;

const HOST: &str = "# generated\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch old.example\nsearch corp.example. . lab.example\noptions timeout:2 ndots:1\noptions ndots:2 rotate\n";

fn host() -> ResolvConf {
    ResolvConf::parse(HOST)
}

fn node<'a>(host: Option<&'a ResolvConf>, dns: &'a [IpAddr]) -> NodeDns<'a> {
    NodeDns {
        host,
        cluster_dns: dns,
        cluster_domain: "cluster.local",
    }
}

#[test]
fn host_file_parses_like_kubelet() {
    let h = host();
    assert_eq!(h.nameservers, ["192.0.2.53".parse::<IpAddr>().unwrap()]);
    assert_eq!(h.searches, ["corp.example", "lab.example"]);
    assert_eq!(h.options, ["timeout:2", "ndots:2", "rotate"]);
}

#[test]
fn cluster_first_uses_cluster_dns_and_search_path() {
    let h = host();
    let dns = ["10.96.0.10".parse().unwrap()];
    let conf = pod_resolv_conf(None, None, "prod", false, &node(Some(&h), &dns));
    assert_eq!(
        conf.render(),
        "search prod.svc.cluster.local svc.cluster.local cluster.local corp.example lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
}

#[test]
fn host_network_needs_with_host_net_for_cluster_dns() {
    let h = host();
    let dns = ["10.96.0.10".parse().unwrap()];
    let n = node(Some(&h), &dns);
    let first = pod_resolv_conf(Some("ClusterFirst"), None, "a", true, &n);
    assert_eq!(first.nameservers, ["192.0.2.53"]);
    assert_eq!(first.options, ["timeout:2", "ndots:2", "rotate"]);
    let with = pod_resolv_conf(Some("ClusterFirstWithHostNet"), None, "a", true, &n);
    assert_eq!(with.nameservers, ["10.96.0.10"]);
    assert_eq!(with.searches[0], "a.svc.cluster.local");
}

#[test]
fn default_policy_copies_the_host_and_empty_resolv_conf_means_localhost() {
    let h = host();
    let dns = ["10.96.0.10".parse().unwrap()];
    let conf = pod_resolv_conf(Some("Default"), None, "a", false, &node(Some(&h), &dns));
    assert_eq!(conf.searches, ["corp.example", "lab.example"]);
    let conf = pod_resolv_conf(Some("Default"), None, "a", false, &node(None, &dns));
    assert_eq!(conf.render(), "search .\nnameserver 127.0.0.1\n");
    // ClusterFirst without cluster-dns falls back to the host
    let conf = pod_resolv_conf(None, None, "a", false, &node(Some(&h), &[]));
    assert_eq!(conf.nameservers, ["192.0.2.53"]);
}

#[test]
fn none_policy_takes_only_dns_config_and_merges_options() {
    let h = host();
    let dns = ["10.96.0.10".parse().unwrap()];
    let cfg = PodDNSConfig {
        nameservers: Some(vec!["1.1.1.1".into(), "1.1.1.1".into(), "8.8.8.8".into()]),
        searches: Some(vec!["my.dns.search.suffix".into()]),
        options: Some(vec![
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            },
            PodDNSConfigOption {
                name: Some("edns0".into()),
                value: None,
            },
        ]),
    };
    let conf = pod_resolv_conf(Some("None"), Some(&cfg), "a", false, &node(Some(&h), &dns));
    assert_eq!(
        conf.render(),
        "search my.dns.search.suffix\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:2 edns0\n"
    );
    // merged over ClusterFirst: ndots overridden in place
    let conf = pod_resolv_conf(None, Some(&cfg), "a", false, &node(Some(&h), &dns));
    assert_eq!(conf.options, ["ndots:2", "edns0"]);
    assert_eq!(conf.nameservers, ["10.96.0.10", "1.1.1.1", "8.8.8.8"]);
    assert_eq!(conf.searches.last().unwrap(), "my.dns.search.suffix");
}

#[test]
fn limits_are_applied() {
    let dns = ["10.96.0.10".parse().unwrap()];
    let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
    let cfg = PodDNSConfig {
        nameservers: Some(vec!["1.1.1.1".into(), "8.8.8.8".into(), "9.9.9.9".into()]),
        searches: Some(many),
        options: None,
    };
    let conf = pod_resolv_conf(None, Some(&cfg), "a", false, &node(None, &dns));
    assert_eq!(conf.nameservers.len(), MAX_NAMESERVERS);
    assert_eq!(conf.searches.len(), MAX_SEARCH_PATHS);
    let long = PodDNSConfig {
        searches: Some((0..20).map(|i| format!("{i}{}", "x".repeat(200))).collect()),
        ..Default::default()
    };
    let conf = pod_resolv_conf(Some("None"), Some(&long), "a", false, &node(None, &dns));
    assert!(conf.searches.join(" ").len() <= MAX_SEARCH_CHARS);
    let too_long = PodDNSConfig {
        searches: Some(vec!["y".repeat(254), "ok.example".into()]),
        ..Default::default()
    };
    let conf = pod_resolv_conf(Some("None"), Some(&too_long), "a", false, &node(None, &dns));
    assert_eq!(conf.searches, ["ok.example"]);
}

#[test]
fn from_a_pod_object() {
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let pod = Pod {
        metadata: ObjectMeta {
            namespace: Some("web".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let dns = ["10.96.0.10".parse().unwrap()];
    let conf = pod_resolv_conf_for(&pod, &node(None, &dns));
    assert_eq!(
        conf.searches,
        [
            "web.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
}
