//! Fuzzes the DNS query path: any bytes as a client's packet through
//! `wire::decide` against a zone with every kind of record and `encode`
//! at the UDP and TCP limits; and the same bytes as an upstream's answer
//! through `merge_upstream` and the forwarder's cache, and read in place
//! as a query answered from that cache in wire form. Any panic is a bug.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use controlplane::endpoints::{Endpoint, EndpointPort, Endpoints};
use dns::cache::Cache;
use dns::wire::{self, Decision};
use dns::{Zone, ZoneConfig};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{
    Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libfuzzer_sys::fuzz_target;

fn service(name: &str, ip: &str, external: Option<&str>) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            type_: external.map(|_| "ExternalName".into()),
            external_name: external.map(str::to_string),
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ClusterIP, headless with endpoints and hostnames, ExternalName, pods.
fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut z = Zone::new(&ZoneConfig::default()).expect("zone");
        z.upsert_service(&service("web", "10.96.0.20", None));
        z.upsert_service(&service("db", "None", None));
        z.upsert_service(&service("search", "", Some("www.example.com")));
        let mut addresses = Vec::new();
        for i in 0..40u8 {
            let ip = format!("10.244.1.{i}");
            z.upsert_pod(&Pod {
                metadata: ObjectMeta {
                    namespace: Some("default".into()),
                    name: Some(format!("db-{i}")),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    hostname: Some(format!("db-{i}")),
                    subdomain: Some("db".into()),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    pod_ip: Some(ip.clone()),
                    pod_ips: Some(vec![PodIP { ip: ip.clone() }]),
                    ..Default::default()
                }),
            });
            addresses.push(Endpoint {
                ip: ip.parse().expect("ip"),
                node: None,
                pod: format!("default/db-{i}"),
                ready: i % 5 != 0,
            });
        }
        let ports = vec![EndpointPort {
            name: Some("http".into()),
            port: 8080,
            protocol: "TCP".into(),
        }];
        z.set_endpoints(
            "default",
            "db",
            &[Endpoints {
                namespace: "default".into(),
                service: "db".into(),
                addresses,
                ports,
            }],
        );
        z
    })
}

fuzz_target!(|data: &[u8]| {
    let z = zone();
    for forwarding in [true, false] {
        let (decision, limit) = wire::decide_with_limit(z, data, forwarding);
        match decision {
            Decision::Reply(m) => {
                let _ = wire::encode(&m, Some(limit));
                let _ = wire::encode(&m, None);
            }
            Decision::Forward { response, query } => {
                // The same bytes as the upstream's answer to that question.
                if let Ok(upstream) = Message::from_vec(data) {
                    let merged = wire::merge_upstream(response, &upstream);
                    let _ = wire::encode(&merged, Some(limit));
                    let mut cache = Cache::new(8, 3600);
                    let now = Instant::now();
                    cache.insert(&query, &upstream, now);
                    let _ = cache.get(&query, now + Duration::from_secs(1));
                    // The same bytes as a query answered from the cache in
                    // wire form, at its UDP size and at one too small.
                    if let Some(view) = wire::QueryView::parse(data) {
                        let mut out = Vec::new();
                        let later = now + Duration::from_secs(1);
                        let _ = cache.write(&view, later, view.udp_limit(), &mut out);
                        let _ = cache.write(&view, later, 12, &mut out);
                    }
                } else {
                    let _ = wire::encode(&wire::servfail(response), Some(limit));
                }
            }
            Decision::Drop => {}
        }
    }
    // Any upstream answer cached for a fixed question.
    if let Ok(upstream) = Message::from_vec(data) {
        let q = Query::query(
            Name::from_ascii("www.example.com.").expect("name"),
            RecordType::A,
        );
        let mut cache = Cache::new(8, 3600);
        cache.insert(&q, &upstream, Instant::now());
        let _ = cache.get(&q, Instant::now());
    }
});
