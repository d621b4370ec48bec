//! Zone tests with plain data: Services, endpoints and pods in, answers out.

use std::collections::BTreeMap;

use controlplane::endpoints::{Endpoint, EndpointPort, Endpoints};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{
    Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

pub(crate) fn service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, &str, i32)],
) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, port)| ServicePort {
                        name: Some(n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn endpoints(
    ns: &str,
    svc: &str,
    addrs: &[(&str, &str, bool)],
    ports: &[(&str, i32)],
) -> Endpoints {
    Endpoints {
        namespace: ns.into(),
        service: svc.into(),
        addresses: addrs
            .iter()
            .map(|(ip, pod, ready)| Endpoint {
                ip: ip.parse().unwrap(),
                node: None,
                pod: format!("{ns}/{pod}"),
                ready: *ready,
                serving: *ready,
                terminating: false,
            })
            .collect(),
        ports: ports
            .iter()
            .map(|(n, p)| EndpointPort {
                name: Some(n.to_string()),
                port: *p,
                protocol: "TCP".into(),
            })
            .collect(),
    }
}

pub(crate) fn pod(ns: &str, name: &str, ip: &str, host: Option<(&str, &str)>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            hostname: host.map(|h| h.0.to_string()),
            subdomain: host.map(|h| h.1.to_string()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

/// The sample cluster: a ClusterIP Service, a headless StatefulSet-style
/// Service with one pod not ready, an ExternalName, and pods.
pub(crate) fn sample() -> Zone {
    let mut z = Zone::new(&ZoneConfig::default()).unwrap();
    z.upsert_service(&service(
        "default",
        "redis-master",
        "10.96.0.20",
        &[("redis", "TCP", 6379)],
    ));
    z.upsert_service(&service("db", "nginx", "None", &[("web", "TCP", 80)]));
    z.set_endpoints(
        "db",
        "nginx",
        &[endpoints(
            "db",
            "nginx",
            &[
                ("10.244.1.5", "web-0", true),
                ("10.244.2.6", "web-1", true),
                ("10.244.3.7", "web-2", false),
            ],
            &[("web", 8080)],
        )],
    );
    z.upsert_pod(&pod("db", "web-0", "10.244.1.5", Some(("web-0", "nginx"))));
    z.upsert_pod(&pod("db", "web-1", "10.244.2.6", None));
    let mut ext = service("default", "search", "", &[]);
    let spec = ext.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("www.example.com".into());
    spec.cluster_ip = None;
    spec.cluster_ips = None;
    z.upsert_service(&ext);
    z
}

fn q(z: &Zone, name: &str, t: RecordType) -> Answer {
    z.lookup(&Name::from_ascii(name).unwrap(), t)
        .expect("in zone")
}

fn data(a: &Answer) -> Vec<String> {
    let mut v: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

#[test]
fn cluster_ip_service_has_an_a_record_case_insensitively() {
    let z = sample();
    let a = q(&z, "Redis-Master.DEFAULT.svc.cluster.local.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert_eq!(data(&a), ["10.96.0.20"]);
    assert_eq!(a.answers[0].ttl, DEFAULT_TTL);
}

#[test]
fn other_type_at_existing_name_is_nodata_with_soa() {
    let z = sample();
    let a = q(
        &z,
        "redis-master.default.svc.cluster.local.",
        RecordType::AAAA,
    );
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
    assert_eq!(a.authority[0].record_type(), RecordType::SOA);
}

#[test]
fn missing_names_are_nxdomain_with_soa() {
    let z = sample();
    for name in [
        "nope.default.svc.cluster.local.",
        "redis-master.nope.svc.cluster.local.",
        "x.y.z.cluster.local.",
        "_nope._tcp.redis-master.default.svc.cluster.local.",
        "web-9.nginx.db.svc.cluster.local.",
        "10-1-1-1.db.pod.cluster.local.",
    ] {
        let a = q(&z, name, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain, "{name}");
        assert_eq!(a.authority.len(), 1, "{name}");
        let RData::SOA(soa) = &a.authority[0].data else {
            panic!("soa")
        };
        assert_eq!(soa.minimum, DEFAULT_TTL);
    }
}

#[test]
fn empty_non_terminals_are_nodata() {
    let z = sample();
    for name in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "pod.cluster.local.",
    ] {
        assert_eq!(
            q(&z, name, RecordType::A).rcode,
            ResponseCode::NoError,
            "{name}"
        );
    }
    assert_eq!(q(&z, "cluster.local.", RecordType::SOA).answers.len(), 1);
}

#[test]
fn headless_service_returns_ready_endpoints_only() {
    let z = sample();
    let a = q(&z, "nginx.db.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["10.244.1.5", "10.244.2.6"]);
}

#[test]
fn headless_hostnames_use_pod_hostname_or_dashed_ip() {
    let z = sample();
    assert_eq!(
        data(&q(&z, "web-0.nginx.db.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5"]
    );
    assert_eq!(
        data(&q(
            &z,
            "10-244-2-6.nginx.db.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.2.6"]
    );
    // not ready: no name
    let a = q(&z, "10-244-3-7.nginx.db.svc.cluster.local.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
}

#[test]
fn srv_for_named_ports() {
    let z = sample();
    let a = q(
        &z,
        "_redis._tcp.redis-master.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        data(&a),
        ["0 100 6379 redis-master.default.svc.cluster.local."]
    );
    assert_eq!(a.additionals.len(), 1);
    let a = q(&z, "_web._tcp.nginx.db.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        data(&a),
        [
            "0 50 8080 10-244-2-6.nginx.db.svc.cluster.local.",
            "0 50 8080 web-0.nginx.db.svc.cluster.local."
        ]
    );
    assert_eq!(a.additionals.len(), 2);
    let a = q(&z, "_web._tcp.nginx.db.svc.cluster.local.", RecordType::A);
    assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
    let a = q(&z, "_tcp.nginx.db.svc.cluster.local.", RecordType::SRV);
    assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
}

#[test]
fn ptr_for_cluster_ips_and_headless_endpoints() {
    let z = sample();
    let a = q(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&a), ["redis-master.default.svc.cluster.local."]);
    let a = q(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&a), ["web-0.nginx.db.svc.cluster.local."]);
    // unknown IPs are not ours: forwarded
    assert!(z
        .lookup(
            &Name::from_ascii("9.9.9.9.in-addr.arpa.").unwrap(),
            RecordType::PTR
        )
        .is_none());
}

#[test]
fn external_name_is_a_cname() {
    let z = sample();
    let a = q(&z, "search.default.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["www.example.com."]);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
}

#[test]
fn dns_version_and_pod_records() {
    let z = sample();
    assert_eq!(
        data(&q(&z, "dns-version.cluster.local.", RecordType::TXT)),
        ["1.1.0"]
    );
    assert_eq!(
        data(&q(&z, "10-244-1-5.db.pod.cluster.local.", RecordType::A)),
        ["10.244.1.5"]
    );
    // a pod IP in another namespace is not this namespace's pod
    assert_eq!(
        q(&z, "10-244-1-5.default.pod.cluster.local.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
}

#[test]
fn names_outside_the_zone_are_not_answered() {
    let z = sample();
    assert!(z
        .lookup(&Name::from_ascii("example.com.").unwrap(), RecordType::A)
        .is_none());
}

#[test]
fn updates_touch_only_their_own_records() {
    let mut z = sample();
    let serial = z.serial();
    z.set_endpoints("db", "nginx", &[]);
    assert!(z.serial() != serial);
    let a = q(&z, "nginx.db.svc.cluster.local.", RecordType::A);
    assert!(a.answers.is_empty());
    assert!(z
        .lookup(
            &Name::from_ascii("5.1.244.10.in-addr.arpa.").unwrap(),
            RecordType::PTR
        )
        .is_none());
    assert_eq!(
        data(&q(
            &z,
            "redis-master.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.96.0.20"]
    );

    z.remove_service("default", "redis-master");
    assert_eq!(
        q(&z, "redis-master.default.svc.cluster.local.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    assert!(z
        .lookup(
            &Name::from_ascii("20.0.96.10.in-addr.arpa.").unwrap(),
            RecordType::PTR
        )
        .is_none());

    z.remove_pod("db", "web-1");
    assert_eq!(
        q(&z, "10-244-2-6.db.pod.cluster.local.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    assert_eq!(z.pod_count(), 1);
    assert_eq!(z.service_count(), 2);
}

#[test]
fn endpoints_before_service_are_invisible_until_it_arrives() {
    let mut z = Zone::new(&ZoneConfig::default()).unwrap();
    z.set_endpoints(
        "a",
        "s",
        &[endpoints("a", "s", &[("10.0.0.1", "p", true)], &[])],
    );
    assert_eq!(
        q(&z, "s.a.svc.cluster.local.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    z.upsert_service(&service("a", "s", "None", &[]));
    assert_eq!(
        data(&q(&z, "s.a.svc.cluster.local.", RecordType::A)),
        ["10.0.0.1"]
    );
}

#[test]
fn custom_domain_and_ttl_and_bad_domain() {
    let cfg = ZoneConfig {
        domain: "Corp.Example.".into(),
        ttl: 30,
    };
    let mut z = Zone::new(&cfg).unwrap();
    z.upsert_service(&service("x", "y", "fd00::10", &[]));
    let a = q(&z, "y.x.svc.corp.example.", RecordType::AAAA);
    assert_eq!(
        (data(&a), a.answers[0].ttl),
        (vec!["fd00::10".to_string()], 30)
    );
    let bad = ZoneConfig {
        domain: "".into(),
        ttl: 5,
    };
    assert!(matches!(
        Zone::new(&bad),
        Err(Error::Config {
            field: "cluster-domain",
            ..
        })
    ));
}

/// A zone with a headless Service `big.default` of `n` ready endpoints.
pub(crate) fn many_endpoints(n: usize) -> Zone {
    let mut z = Zone::new(&ZoneConfig::default()).unwrap();
    z.upsert_service(&service("default", "big", "None", &[("http", "TCP", 80)]));
    let ips: Vec<(String, String)> = (0..n)
        .map(|i| (format!("10.1.{}.{}", i / 250, i % 250 + 1), format!("p{i}")))
        .collect();
    let addrs: Vec<(&str, &str, bool)> = ips
        .iter()
        .map(|(ip, p)| (ip.as_str(), p.as_str(), true))
        .collect();
    z.set_endpoints(
        "default",
        "big",
        &[endpoints("default", "big", &addrs, &[("http", 80)])],
    );
    z
}

#[test]
fn a_stripped_pod_makes_the_same_entry() {
    let mut rich = pod("db", "web-0", "10.244.1.5", Some(("web-0", "nginx")));
    rich.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    if let Some(spec) = rich.spec.as_mut() {
        spec.node_name = Some("n1".into());
        spec.containers = vec![Default::default()];
    }
    if let Some(status) = rich.status.as_mut() {
        status.phase = Some("Running".into());
    }
    let mut o = controlplane::Object::from(rich.clone());
    strip_pod(&mut o);
    let controlplane::Object::Pod(stripped) = o else {
        panic!("a pod")
    };
    assert_eq!(pod_entry(&stripped), pod_entry(&rich));
    assert!(stripped.metadata.labels.is_none());
    assert!(stripped
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.is_empty()));
}

#[test]
fn dual_stack_services_answer_a_and_aaaa_from_their_cluster_ips_and_endpoints() {
    let mut z = Zone::new(&ZoneConfig::default()).unwrap();
    let mut dual = service("d", "web", "10.96.0.30", &[("http", "TCP", 80)]);
    dual.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.30".into(), "fd00:96::30".into()]);
    z.upsert_service(&dual);
    let name = "web.d.svc.cluster.local.";
    assert_eq!(data(&q(&z, name, RecordType::A)), ["10.96.0.30"]);
    assert_eq!(data(&q(&z, name, RecordType::AAAA)), ["fd00:96::30"]);
    // Headless: one slice per family, each address answered by its type.
    z.upsert_service(&service("d", "db", "None", &[("pg", "TCP", 5432)]));
    z.set_endpoints(
        "d",
        "db",
        &[
            endpoints("d", "db", &[("10.244.1.5", "db-0", true)], &[("pg", 5432)]),
            endpoints(
                "d",
                "db",
                &[("fd00:244:1::5", "db-0", true)],
                &[("pg", 5432)],
            ),
        ],
    );
    let name = "db.d.svc.cluster.local.";
    assert_eq!(data(&q(&z, name, RecordType::A)), ["10.244.1.5"]);
    assert_eq!(data(&q(&z, name, RecordType::AAAA)), ["fd00:244:1::5"]);
}
