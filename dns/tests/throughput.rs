//! A rough loopback throughput figure for cluster names (not a benchmark:
//! `make bench` owns side-by-side numbers). Ignored by default; run with
//! `cargo test -p dns --release --test throughput -- --ignored --nocapture`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dns::{Server, ServerConfig, Sockets, Zone, ZoneConfig};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::net::UdpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn udp_queries_per_second_for_10k_services() {
    let mut zone = Zone::new(&ZoneConfig::default()).unwrap();
    for s in 0..10_000u32 {
        let ip = format!("10.96.{}.{}", s / 250, s % 250 + 1);
        zone.upsert_service(&Service {
            metadata: ObjectMeta {
                namespace: Some(format!("ns-{}", s % 100)),
                name: Some(format!("svc-{s}")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let config = ServerConfig {
        rate_limit: None,
        ..Default::default()
    };
    let running = Server::new(Arc::new(RwLock::new(zone)), None, config).spawn(sockets);
    let server = running.udp_addrs[0];
    let clients = 16;
    let duration = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sock.connect(server).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let (mut done, mut latencies) = (0u64, Vec::new());
            let start = Instant::now();
            while start.elapsed() < duration {
                let s = (done * 16 + c) % 10_000;
                let name = format!("svc-{s}.ns-{}.svc.cluster.local.", s % 100);
                let mut m = Message::query();
                m.add_query(Query::query(
                    Name::from_ascii(&name).unwrap(),
                    RecordType::A,
                ));
                let t = Instant::now();
                sock.send(&m.to_vec().unwrap()).await.unwrap();
                let n = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await;
                if let Ok(Ok(n)) = n {
                    let r = Message::from_vec(&buf[..n]).unwrap();
                    assert_eq!(r.answers.len(), 1);
                    latencies.push(t.elapsed());
                    done += 1;
                }
            }
            (done, latencies)
        }));
    }
    let (mut total, mut all) = (0u64, Vec::new());
    for t in tasks {
        let (n, l) = t.await.unwrap();
        total += n;
        all.extend(l);
    }
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    eprintln!(
        "{total} answers in {duration:?}: {:.0} q/s, p50 {:?}, p99 {:?} ({clients} clients in the same process)",
        total as f64 / duration.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
}
