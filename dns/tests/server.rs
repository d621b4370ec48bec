//! The server over real loopback sockets: cluster names over UDP and TCP,
//! truncation then TCP, malformed packets, and forwarding to a fake
//! upstream started here (cache hits, TCP fallback, stub domains, an
//! ExternalName chased upstream). Traffic stays on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use controlplane::endpoints::{Endpoint, EndpointPort, Endpoints};
use dns::{ForwardConfig, Forwarder, Server, ServerConfig, Sockets, Zone, ZoneConfig};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn service(ns: &str, name: &str, ip: &str, port: Option<(&str, i32)>) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            ports: port.map(|(n, p)| {
                vec![ServicePort {
                    name: Some(n.into()),
                    port: p,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn zone() -> Zone {
    let mut z = Zone::new(&ZoneConfig::default()).unwrap();
    z.upsert_service(&service(
        "default",
        "redis-master",
        "10.96.0.20",
        Some(("redis", 6379)),
    ));
    z.upsert_service(&service("default", "big", "None", Some(("http", 80))));
    let addresses = (0..100)
        .map(|i| Endpoint {
            ip: format!("10.1.0.{}", i + 1).parse().unwrap(),
            node: None,
            pod: format!("default/p{i}"),
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    let ports = vec![EndpointPort {
        name: Some("http".into()),
        port: 8080,
        protocol: "TCP".into(),
    }];
    z.set_endpoints(
        "default",
        "big",
        &[Endpoints {
            namespace: "default".into(),
            service: "big".into(),
            addresses,
            ports,
        }],
    );
    let mut ext = service("default", "search", "", None);
    let spec = ext.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("www.example.com".into());
    z.upsert_service(&ext);
    z
}

fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp_ask(server: SocketAddr, packet: &[u8]) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("answer within 5 s")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn tcp_ask(server: SocketAddr, packet: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    s.write_all(&framed).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

async fn start(forwarder: Option<Arc<Forwarder>>) -> (dns::Running, SocketAddr, SocketAddr) {
    let sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let server = Server::new(
        Arc::new(RwLock::new(zone())),
        forwarder,
        ServerConfig::default(),
    );
    let running = server.spawn(sockets);
    let (udp, tcp) = (running.udp_addrs[0], running.tcp_addrs[0]);
    assert_eq!(udp.port(), tcp.port());
    (running, udp, tcp)
}

#[tokio::test]
async fn cluster_names_over_udp_and_tcp() {
    let (_running, udp, tcp) = start(None).await;
    let m = udp_ask(
        udp,
        &query(
            "redis-master.default.svc.cluster.local.",
            RecordType::A,
            false,
        ),
    )
    .await;
    assert_eq!(m.answers[0].data, RData::A(A::new(10, 96, 0, 20)));
    assert!(m.metadata.authoritative);

    let m = tcp_ask(
        tcp,
        &query(
            "_redis._tcp.redis-master.default.svc.cluster.local.",
            RecordType::SRV,
            false,
        ),
    )
    .await;
    assert_eq!(
        m.answers[0].data.to_string(),
        "0 100 6379 redis-master.default.svc.cluster.local."
    );

    let m = udp_ask(
        udp,
        &query("20.0.96.10.in-addr.arpa.", RecordType::PTR, false),
    )
    .await;
    assert_eq!(
        m.answers[0].data.to_string(),
        "redis-master.default.svc.cluster.local."
    );

    let m = udp_ask(
        udp,
        &query("nope.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
    assert!(m.edns.is_some());

    // no forwarder: outside names are refused, not timed out
    let m = udp_ask(udp, &query("example.com.", RecordType::A, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn oversized_udp_answer_is_truncated_and_tcp_gets_it_all() {
    let (_running, udp, tcp) = start(None).await;
    let q = query("big.default.svc.cluster.local.", RecordType::A, false);
    let m = udp_ask(udp, &q).await;
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let m = tcp_ask(tcp, &q).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    // with EDNS 4096 the same answer fits in UDP
    let m = udp_ask(
        udp,
        &query("big.default.svc.cluster.local.", RecordType::A, true),
    )
    .await;
    assert_eq!((m.metadata.truncation, m.answers.len()), (false, 100));
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let (_running, udp, tcp) = start(None).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [0usize, 1, 11, 12, 13, 300, 4000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        sock.send_to(&junk, udp).await.unwrap();
    }
    let mut bad_tcp = TcpStream::connect(tcp).await.unwrap();
    bad_tcp.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    let m = udp_ask(
        udp,
        &query(
            "redis-master.default.svc.cluster.local.",
            RecordType::A,
            false,
        ),
    )
    .await;
    assert_eq!(m.answers.len(), 1);
}

/// A fake upstream on loopback (UDP and TCP on one port) that counts the
/// queries it sees. `big.example.` is truncated over UDP; `missing.example.`
/// is NXDOMAIN with an SOA; anything else gets one A record, TTL 60.
async fn fake_upstream(address: [u8; 4]) -> (SocketAddr, Arc<AtomicUsize>) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let reply = upstream_reply(&buf[..n], address, true);
            let _ = udp.send_to(&reply, peer).await;
        }
    });
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let len = s.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.unwrap();
            let reply = upstream_reply(&buf, address, false);
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            s.write_all(&framed).await.unwrap();
        }
    });
    (addr, seen)
}

fn upstream_reply(packet: &[u8], address: [u8; 4], udp: bool) -> Vec<u8> {
    let q = Message::from_vec(packet).unwrap();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.queries = q.queries.clone();
    let name = q.queries[0].name().clone();
    match name.to_ascii().as_str() {
        "big.example." if udp => m.metadata.truncation = true,
        "big.example." => {
            for i in 0..60 {
                m.answers.push(Record::from_rdata(
                    name.clone(),
                    60,
                    RData::A(A::new(192, 0, 2, i)),
                ));
            }
        }
        "missing.example." => {
            m.metadata.response_code = ResponseCode::NXDomain;
            let root = Name::from_ascii("example.").unwrap();
            let soa = SOA::new(root.clone(), root.clone(), 1, 1, 1, 1, 30);
            m.authorities
                .push(Record::from_rdata(root, 300, RData::SOA(soa)));
        }
        _ => {
            let [a, b, c, d] = address;
            m.answers
                .push(Record::from_rdata(name, 60, RData::A(A::new(a, b, c, d))));
        }
    }
    m.to_vec().unwrap()
}

#[tokio::test]
async fn forwarding_caches_answers_and_falls_back_to_tcp() {
    let (upstream, seen) = fake_upstream([192, 0, 2, 1]).await;
    let (stub, stub_seen) = fake_upstream([198, 51, 100, 7]).await;
    let mut cfg = ForwardConfig::new(vec![upstream]);
    cfg.stub_domains = vec![(Name::from_ascii("corp.internal.").unwrap(), vec![stub])];
    let (_running, udp, tcp) = start(Some(Arc::new(Forwarder::new(cfg)))).await;

    // two identical queries: the upstream sees one
    let q = query("www.example.org.", RecordType::A, false);
    let first = udp_ask(udp, &q).await;
    let second = udp_ask(udp, &q).await;
    assert_eq!(first.answers[0].data, RData::A(A::new(192, 0, 2, 1)));
    assert_eq!(second.answers, first.answers);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "second query is a cache hit"
    );
    assert!(!second.metadata.authoritative);
    // a hit answers the query as asked, over UDP and TCP: its id, its
    // question's case (0x20), its EDNS
    let mut asked = query("WwW.ExaMple.ORG.", RecordType::A, true);
    asked[..2].copy_from_slice(&[0xab, 0xcd]);
    for m in [udp_ask(udp, &asked).await, tcp_ask(tcp, &asked).await] {
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.queries[0].name().to_string(), "WwW.ExaMple.ORG.");
        assert_eq!(m.answers, first.answers);
        assert!(m.edns.is_some() && m.metadata.recursion_desired);
    }
    assert_eq!(seen.load(Ordering::SeqCst), 1, "still one upstream query");

    // negative answers are cached too
    let q = query("missing.example.", RecordType::A, false);
    assert_eq!(
        udp_ask(udp, &q).await.metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        tcp_ask(tcp, &q).await.metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    // truncated upstream answer: retried over TCP, then truncated again
    // towards our UDP client, who retries over TCP
    let q = query("big.example.", RecordType::A, false);
    assert!(udp_ask(udp, &q).await.metadata.truncation);
    assert_eq!(tcp_ask(tcp, &q).await.answers.len(), 60);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        4,
        "one UDP and one TCP upstream query"
    );

    // stub domain goes to its own upstream
    let m = udp_ask(udp, &query("db.corp.internal.", RecordType::A, false)).await;
    assert_eq!(m.answers[0].data, RData::A(A::new(198, 51, 100, 7)));
    assert_eq!(stub_seen.load(Ordering::SeqCst), 1);

    // ExternalName: the CNAME from the zone, then the target's address
    let m = udp_ask(
        udp,
        &query("search.default.svc.cluster.local.", RecordType::A, false),
    )
    .await;
    assert_eq!(m.answers.len(), 2);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(m.answers[1].data, RData::A(A::new(192, 0, 2, 1)));
}

#[tokio::test]
async fn dead_upstream_gives_servfail_not_silence() {
    // a bound socket that never answers
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = ForwardConfig::new(vec![silent.local_addr().unwrap()]);
    cfg.timeout = Duration::from_millis(200);
    let (_running, udp, _) = start(Some(Arc::new(Forwarder::new(cfg)))).await;
    let m = udp_ask(udp, &query("www.example.org.", RecordType::A, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

/// Asks like a stub resolver: up to five tries, one second each, from
/// `from`; the answer, or `None` if every try went unanswered.
async fn resolve_from(from: &str, server: SocketAddr, packet: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind(from).await.unwrap();
    let mut buf = vec![0u8; 65535];
    for _ in 0..5 {
        sock.send_to(packet, server).await.unwrap();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            return Some(Message::from_vec(&buf[..n]).unwrap());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_is_limited_and_others_keep_resolving() {
    let (_running, udp, _) = start(None).await;
    let packet = query(
        "redis-master.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    // 127.0.0.1 floods for a second without waiting for answers.
    let flooder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    flooder.set_nonblocking(true).unwrap();
    let flood = {
        let packet = packet.clone();
        std::thread::spawn(move || {
            let (start, mut sent, mut answered) = (std::time::Instant::now(), 0u64, 0u64);
            let mut buf = vec![0u8; 4096];
            while start.elapsed() < Duration::from_secs(1) {
                if flooder.send_to(&packet, udp).is_ok() {
                    sent += 1;
                }
                while flooder.recv(&mut buf).is_ok() {
                    answered += 1;
                }
            }
            // Answers still on their way.
            std::thread::sleep(Duration::from_millis(200));
            while flooder.recv(&mut buf).is_ok() {
                answered += 1;
            }
            (sent, answered, start.elapsed())
        })
    };
    // Meanwhile 127.0.0.2 looks names up one after another.
    let mut answered = 0;
    for i in 0..50 {
        let name = if i % 2 == 0 {
            "redis-master.default.svc.cluster.local."
        } else {
            "big.default.svc.cluster.local."
        };
        let m = resolve_from("127.0.0.2:0", udp, &query(name, RecordType::A, true))
            .await
            .unwrap_or_else(|| panic!("lookup {i} of {name} unanswered during the flood"));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        answered += 1;
    }
    let (sent, flood_answered, took) = flood.join().unwrap();
    assert_eq!(answered, 50);
    // The default limit: 2000 q/s with a burst of 4000.
    let allowed = 4000.0 + 2000.0 * took.as_secs_f64();
    assert!(
        (flood_answered as f64) <= allowed + 100.0,
        "the flooder got {flood_answered} answers of {sent} in {took:?}"
    );
    let m = resolve_from("127.0.0.3:0", udp, &packet).await.unwrap();
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn oversized_and_truncated_queries_are_survived() {
    let sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let config = ServerConfig {
        max_tcp_connections: 4,
        tcp_idle: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let running = Server::new(Arc::new(RwLock::new(zone())), None, config).spawn(sockets);
    let (udp, tcp) = (running.udp_addrs[0], running.tcp_addrs[0]);
    let good = query(
        "redis-master.default.svc.cluster.local.",
        RecordType::A,
        true,
    );
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The largest UDP datagram: a real query with 65,000 bytes after it.
    let mut huge = good.clone();
    huge.resize(65_507, 0xab);
    sock.send_to(&huge, udp).await.unwrap();
    // A question name longer than 255 bytes (labels of 63).
    let mut long = good[..12].to_vec();
    for _ in 0..6 {
        long.push(63);
        long.extend_from_slice(&[b'a'; 63]);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&long, udp).await.unwrap();
    // A query cut in the middle of its question.
    sock.send_to(&good[..good.len() - 7], udp).await.unwrap();
    // Over TCP: the largest length with junk, a length promising more than
    // comes before the client closes, and clients that stall mid-message,
    // more of them than the server has TCP slots.
    let mut s = TcpStream::connect(tcp).await.unwrap();
    let mut framed = vec![0xff, 0xff];
    framed.extend((0..65_535u32).map(|i| (i * 31) as u8));
    let _ = s.write_all(&framed).await;
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.write_all(&[0, 200, 1, 2, 3]).await.unwrap();
    drop(s);
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(tcp).await.unwrap();
        s.write_all(&[0, 40, 0, 7]).await.unwrap();
        stalled.push(s);
    }
    // UDP answers at once; TCP as soon as idle stalled clients are cut.
    let m = udp_ask(udp, &good).await;
    assert_eq!(m.answers.len(), 1);
    let m = tokio::time::timeout(Duration::from_secs(10), tcp_ask(tcp, &good))
        .await
        .expect("a TCP answer once stalled connections time out");
    assert_eq!(m.answers.len(), 1);
}
