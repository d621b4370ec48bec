//! The DNS server: UDP and TCP loops over sockets the caller binds (or
//! addresses it names), answering from the shared zone and handing the rest
//! to the forwarder, with a per-client rate limit and bounds on in-flight
//! forwards and TCP connections. Chooses no addresses itself: placement on
//! cluster-dns / 169.254.20.10 is the agent's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::forward::Forwarder;
use crate::mmsg::{RecvBatch, SendBatch};
use crate::wire::{self, Decision};
use crate::zone::Zone;
use crate::{Error, Result};

/// The zone as the server and the agent's watches share it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Queries per second allowed from one client IP (burst: twice that);
    /// `None` for no limit. Excess UDP queries are dropped.
    pub rate_limit: Option<u32>,
    /// Most forwarded queries in flight; more are answered SERVFAIL.
    pub max_forwards: usize,
    /// Most TCP connections at once; more wait to be accepted.
    pub max_tcp_connections: usize,
    /// How long an idle TCP connection is kept.
    pub tcp_idle: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            rate_limit: Some(2000),
            max_forwards: 1024,
            max_tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// Bound sockets to serve on.
#[derive(Debug, Default)]
pub struct Sockets {
    /// UDP sockets.
    pub udp: Vec<UdpSocket>,
    /// TCP listeners.
    pub tcp: Vec<TcpListener>,
}

impl Sockets {
    /// Binds UDP and TCP on each of `addrs`; with port 0, TCP takes the
    /// port UDP was given.
    pub async fn bind(addrs: &[SocketAddr]) -> Result<Self> {
        let mut sockets = Self::default();
        for addr in addrs {
            let udp = UdpSocket::bind(addr).await.map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
            let actual = udp.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
            let tcp = TcpListener::bind(actual)
                .await
                .map_err(|source| Error::Bind {
                    addr: actual,
                    source,
                })?;
            sockets.udp.push(udp);
            sockets.tcp.push(tcp);
        }
        Ok(sockets)
    }
}

/// Answers queries; cheap to share.
#[derive(Debug)]
pub struct Server {
    zone: SharedZone,
    forwarder: Option<Arc<Forwarder>>,
    config: ServerConfig,
    limiter: Mutex<Limiter>,
    forwards: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
    /// The zone's origin in wire form, lowercase: names under it (and
    /// under `arpa.`) never take the cache's fast path.
    origin: Box<[u8]>,
}

/// The tasks of a running server; dropping it stops them.
#[derive(Debug)]
pub struct Running {
    /// The addresses served over UDP.
    pub udp_addrs: Vec<SocketAddr>,
    /// The addresses served over TCP.
    pub tcp_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Server {
    /// A server over `zone`, forwarding with `forwarder` (names outside the
    /// zone are REFUSED without one, or while it has no upstream).
    pub fn new(
        zone: SharedZone,
        forwarder: Option<Arc<Forwarder>>,
        config: ServerConfig,
    ) -> Arc<Self> {
        let origin = {
            let zone = zone.read().unwrap_or_else(|e| e.into_inner());
            let mut wire = Vec::new();
            for label in zone.origin().to_lowercase().iter() {
                wire.push(label.len() as u8); // labels are at most 63 bytes
                wire.extend_from_slice(label);
            }
            wire.push(0);
            wire.into_boxed_slice()
        };
        Arc::new(Self {
            origin,
            zone,
            forwarder,
            forwards: Arc::new(Semaphore::new(config.max_forwards)),
            tcp_slots: Arc::new(Semaphore::new(config.max_tcp_connections)),
            limiter: Mutex::new(Limiter::default()),
            config,
        })
    }

    /// Starts serving on `sockets` (on the current tokio runtime).
    pub fn spawn(self: &Arc<Self>, sockets: Sockets) -> Running {
        let mut running = Running {
            udp_addrs: Vec::new(),
            tcp_addrs: Vec::new(),
            tasks: Vec::new(),
        };
        for udp in sockets.udp {
            running.udp_addrs.extend(udp.local_addr().ok());
            running
                .tasks
                .push(tokio::spawn(self.clone().serve_udp(Arc::new(udp))));
        }
        for tcp in sockets.tcp {
            running.tcp_addrs.extend(tcp.local_addr().ok());
            running
                .tasks
                .push(tokio::spawn(self.clone().serve_tcp(tcp)));
        }
        running
    }

    /// Answers one query `packet`; `udp` says whether the response must fit
    /// the client's UDP size. `None` means send nothing.
    pub async fn answer(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if self.write_cached(packet, udp, Instant::now(), &mut out) {
            return Some(out);
        }
        let (decision, limit) = {
            let zone = self.zone.read().unwrap_or_else(|e| e.into_inner());
            wire::decide_with_limit(&zone, packet, self.forwarding())
        };
        let response = match decision {
            Decision::Reply(m) => m,
            Decision::Forward { response, query } => self.forward(response, query).await,
            Decision::Drop => return None,
        };
        wire::encode(
            &response,
            udp.then_some(limit).or(Some(usize::from(u16::MAX))),
        )
    }

    async fn forward(&self, response: Message, query: hickory_proto::op::Query) -> Message {
        let (Some(forwarder), Ok(_permit)) = (&self.forwarder, self.forwards.try_acquire()) else {
            return wire::servfail(response);
        };
        match forwarder.resolve(&query).await {
            Ok(upstream) => wire::merge_upstream(response, &upstream),
            Err(e) => {
                tracing::debug!(name = %query.name(), error = %e, "forward failed");
                wire::servfail(response)
            }
        }
    }

    /// Appends to `out` the answer to `packet` from the forwarder's cache
    /// in wire form, without decoding anything (see
    /// [`crate::cache::Cache::write`]): only for a plain query of a name
    /// outside the zone and outside `arpa.` (which the zone may answer),
    /// while forwarding is on; false, `out` untouched, otherwise or on a
    /// miss.
    fn write_cached(&self, packet: &[u8], udp: bool, now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(forwarder) = &self.forwarder else {
            return false;
        };
        let Some(query) = wire::QueryView::parse(packet) else {
            return false;
        };
        if query.within(&self.origin) || query.within(b"\x04arpa\0") || !forwarder.can_forward() {
            return false;
        }
        let limit = if udp {
            query.udp_limit()
        } else {
            usize::from(u16::MAX)
        };
        forwarder.write_cached(&query, now, limit, out)
    }

    /// Completes `response` from the forwarder's cache; false on a miss.
    fn answer_cached(&self, query: &hickory_proto::op::Query, response: &mut Message) -> bool {
        self.forwarder
            .as_ref()
            .is_some_and(|f| f.answer_cached(query, response))
    }

    /// Whether names outside the zone can be forwarded now.
    fn forwarding(&self) -> bool {
        self.forwarder.as_ref().is_some_and(|f| f.can_forward())
    }

    fn allow(&self, client: IpAddr) -> bool {
        let Some(qps) = self.config.rate_limit else {
            return true;
        };
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.allow(client, qps, Instant::now())
    }

    /// Takes every queued query in one `recvmmsg`, answers those the
    /// forwarder's cache (in wire form) or the zone answers and sends the
    /// answers in one `sendmmsg`; cache misses are forwarded by their own
    /// tasks.
    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut batch = RecvBatch::new();
        let mut replies = SendBatch::new();
        let fd = socket.as_raw_fd();
        loop {
            let n = match socket.async_io(Interest::READABLE, || batch.recv(fd)).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "dns udp receive");
                    continue;
                }
            };
            let now = Instant::now();
            {
                let zone = self.zone.read().unwrap_or_else(|e| e.into_inner());
                for i in 0..n {
                    let Some((packet, peer)) = batch.get(i) else {
                        continue;
                    };
                    if !self.allow(peer.ip()) {
                        continue;
                    }
                    if self.write_cached(packet, true, now, replies.buf()) {
                        replies.commit(peer);
                        continue;
                    }
                    let (decision, limit) =
                        wire::decide_with_limit(&zone, packet, self.forwarding());
                    match decision {
                        Decision::Reply(m) => {
                            if let Some(bytes) = wire::encode(&m, Some(limit)) {
                                replies.push(peer, &bytes);
                            }
                        }
                        Decision::Forward {
                            mut response,
                            query,
                        } => {
                            // A cached answer to a chased CNAME (or a
                            // reverse name) goes out with the batch; only a
                            // miss waits for an upstream, in its own task.
                            if self.answer_cached(&query, &mut response) {
                                if let Some(bytes) = wire::encode(&response, Some(limit)) {
                                    replies.push(peer, &bytes);
                                }
                                continue;
                            }
                            let (this, socket) = (self.clone(), socket.clone());
                            tokio::spawn(async move {
                                let m = this.forward(response, query).await;
                                if let Some(bytes) = wire::encode(&m, Some(limit)) {
                                    let _ = socket.send_to(&bytes, peer).await;
                                }
                            });
                        }
                        Decision::Drop => {}
                    }
                }
            }
            send_all(&socket, &replies).await;
            replies.clear();
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok(permit) = self.tcp_slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dns tcp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.serve_connection(stream, peer.ip()).await;
                drop(permit);
            });
        }
    }

    async fn serve_connection(&self, mut stream: TcpStream, peer: IpAddr) {
        let idle = self.config.tcp_idle;
        loop {
            let Ok(Ok(len)) = timeout(idle, stream.read_u16()).await else {
                return;
            };
            let mut packet = vec![0u8; usize::from(len)];
            if !matches!(
                timeout(idle, stream.read_exact(&mut packet)).await,
                Ok(Ok(_))
            ) {
                return;
            }
            if !self.allow(peer) {
                return;
            }
            let Some(bytes) = self.answer(&packet, false).await else {
                continue;
            };
            let Ok(len) = u16::try_from(bytes.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(bytes.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&bytes);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

/// Token buckets per client IP.
#[derive(Debug, Default)]
struct Limiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// Clients tracked before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 65_536;

impl Limiter {
    fn allow(&mut self, client: IpAddr, qps: u32, now: Instant) -> bool {
        let burst = f64::from(qps) * 2.0;
        if self.buckets.len() >= MAX_TRACKED_CLIENTS && !self.buckets.contains_key(&client) {
            self.buckets
                .retain(|_, (_, last)| now.duration_since(*last) < Duration::from_secs(2));
        }
        let (tokens, last) = self.buckets.entry(client).or_insert((burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * f64::from(qps);
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Sends `replies` in `sendmmsg` batches while the socket takes them, the
/// rest one by one (waiting for room).
async fn send_all(socket: &UdpSocket, replies: &SendBatch) {
    let fd = socket.as_raw_fd();
    let mut sent = 0;
    while sent < replies.len() {
        match socket.try_io(Interest::WRITABLE, || replies.send(fd, sent)) {
            Ok(n) if n > 0 => sent += n,
            _ => {
                let (to, bytes) = replies.get(sent);
                let _ = socket.send_to(bytes, to).await;
                sent += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_refills() {
        let mut l = Limiter::default();
        let ip: IpAddr = "10.244.1.5".parse().unwrap();
        let other: IpAddr = "10.244.1.6".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| l.allow(ip, 10, t0)).count();
        assert_eq!(allowed, 20);
        assert!(l.allow(other, 10, t0), "other clients are not affected");
        assert!(l.allow(ip, 10, t0 + Duration::from_millis(200)));
    }
}
