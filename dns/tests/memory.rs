//! The zone's memory for 10k Services and 50k pods (the goal is at
//! most 20 MiB for DNS), measured with a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use controlplane::endpoints::{Endpoint, EndpointPort, Endpoints};
use dns::{Zone, ZoneConfig};
use k8s_openapi::api::core::v1::{
    Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged and only
// counts the bytes; the layout contract is the caller's, as for `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

#[test]
fn zone_for_10k_services_and_50k_pods_fits_in_20_mib() {
    const SERVICES: usize = 10_000;
    const PODS_PER_SERVICE: usize = 5;
    let before = LIVE.load(Ordering::Relaxed);
    let mut zone = Zone::new(&ZoneConfig::default()).unwrap();
    for s in 0..SERVICES {
        let ns = format!("team-{}", s % 100);
        let name = format!("service-{s}");
        let headless = s.is_multiple_of(10);
        let ip = if headless {
            "None".to_string()
        } else {
            format!("10.96.{}.{}", s / 250, s % 250 + 1)
        };
        let svc = Service {
            metadata: meta(&ns, &name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.clone()),
                cluster_ips: Some(vec![ip]),
                selector: Some(BTreeMap::from([("app".to_string(), name.clone())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        zone.upsert_service(&svc);
        let mut addrs = Vec::new();
        for p in 0..PODS_PER_SERVICE {
            let n = s * PODS_PER_SERVICE + p;
            let ip = format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256);
            let pod_name = format!("{name}-{p}-abcde");
            let pod = Pod {
                metadata: meta(&ns, &pod_name),
                spec: Some(PodSpec {
                    hostname: headless.then(|| format!("{name}-{p}")),
                    subdomain: headless.then(|| name.clone()),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    pod_ip: Some(ip.clone()),
                    pod_ips: Some(vec![PodIP { ip: ip.clone() }]),
                    ..Default::default()
                }),
            };
            zone.upsert_pod(&pod);
            addrs.push(Endpoint {
                ip: ip.parse().unwrap(),
                node: Some("node-1".into()),
                pod: format!("{ns}/{pod_name}"),
                ready: true,
                serving: true,
                terminating: false,
            });
        }
        let ports = vec![EndpointPort {
            name: Some("http".into()),
            port: 8080,
            protocol: "TCP".into(),
        }];
        zone.set_endpoints(
            &ns,
            &name,
            &[Endpoints {
                namespace: ns.clone(),
                service: name.clone(),
                addresses: addrs,
                ports,
            }],
        );
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "zone: {} services, {} pods, {mib:.1} MiB live heap",
        zone.service_count(),
        zone.pod_count()
    );
    assert_eq!(
        (zone.service_count(), zone.pod_count()),
        (SERVICES, SERVICES * PODS_PER_SERVICE)
    );
    assert!(mib <= 20.0, "zone takes {mib:.1} MiB");
}
