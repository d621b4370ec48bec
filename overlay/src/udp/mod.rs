//! The udp backend's data path, flannel's Type "udp" run inside the agent:
//! IP packets read from the TUN device `knode0` go, each as one UDP
//! datagram, to the public IP of the peer whose subnet holds their
//! destination; datagrams from a known peer are written back into the TUN.
//! One worker thread per CPU owns one TUN queue and its own sockets, so
//! nothing is shared per packet; the peer table is swapped whole by the
//! controller and picked up by each worker between batches. It owns no
//! routes or addresses (the controller sets those up over netlink).

mod gso;
mod tun;
mod worker;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;

use crate::{Error, Result};

/// The TUN device's name (flannel's is `flannel0`).
pub const DEVICE: &str = "knode0";
/// At most this many workers (and TUN queues), whatever the CPU count.
const MAX_WORKERS: usize = 8;

/// Where remote subnets are: the table each worker looks packets up in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// This node's subnet: the only destination accepted from peers.
    pub own: Option<Ipv4Net>,
    /// The subnets' prefix length (every lease has the config's SubnetLen).
    pub subnet_len: u8,
    /// Subnet network address -> the peer's public IP.
    pub peers: HashMap<u32, Ipv4Addr>,
}

impl Table {
    /// A table for `own` with `peers` (subnet, public IP).
    pub fn new(own: Ipv4Net, peers: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>) -> Table {
        let subnet_len = own.prefix_len();
        Table {
            own: Some(own),
            subnet_len,
            peers: peers
                .into_iter()
                .filter(|(s, _)| s.prefix_len() == subnet_len)
                .map(|(s, ip)| (u32::from(s.network()), ip))
                .collect(),
        }
    }

    fn key(&self, ip: u32) -> u32 {
        match self.subnet_len {
            0 => 0,
            l => ip & (u32::MAX << (32 - u32::from(l.min(32)))),
        }
    }

    /// The public IP of the peer whose subnet holds `dst`.
    pub fn peer_of(&self, dst: u32) -> Option<Ipv4Addr> {
        self.peers.get(&self.key(dst)).copied()
    }

    /// Whether `dst` is in this node's own subnet.
    pub fn is_own(&self, dst: u32) -> bool {
        self.own
            .is_some_and(|o| self.key(dst) == u32::from(o.network()))
    }
}

/// What the data path counted since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Read from the TUN for a subnet no peer holds: dropped.
    pub drop_unknown_subnet: AtomicU64,
    /// Arrived from an address that is not the public IP of the inner
    /// source's subnet, or for a destination outside this node's subnet.
    pub drop_bad_peer: AtomicU64,
    /// Not IPv4, or too short to be a packet.
    pub drop_malformed: AtomicU64,
    /// The socket or TUN refused a packet (buffer full, no route): dropped.
    pub drop_io: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// (name, value) of every counter, for logs and metrics.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("tx_packets", g(&self.tx_packets)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("rx_packets", g(&self.rx_packets)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("drop_unknown_subnet", g(&self.drop_unknown_subnet)),
            ("drop_bad_peer", g(&self.drop_bad_peer)),
            ("drop_malformed", g(&self.drop_malformed)),
            ("drop_io", g(&self.drop_io)),
        ]
    }
}

/// State shared by the controller and the workers.
struct Shared {
    table: Mutex<Arc<Table>>,
    /// Bumped on every table change; workers compare it between batches.
    generation: AtomicU64,
    stop: AtomicBool,
    counters: Counters,
    /// The UDP port peers listen on.
    port: u16,
}

/// What the data path needs to start.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The TUN device's name.
    pub device: String,
    /// This node's public IP: the sockets' address.
    pub local: Ipv4Addr,
    /// The UDP port (the config's Backend.Port).
    pub port: u16,
    /// Worker threads (and TUN queues); 0 means one per CPU.
    pub workers: usize,
}

/// The running data path; stops its workers on drop (the TUN device stays,
/// persistent, so its address and route survive until the next start).
pub struct UdpPath {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl UdpPath {
    /// Opens the TUN queues (creating the device) and binds the sockets,
    /// then starts the workers with `table`. A port in use is a config
    /// error naming Backend.Port.
    pub fn start(setup: &Setup, table: Table) -> Result<UdpPath> {
        let n = match setup.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
        .clamp(1, MAX_WORKERS);
        let listen = SocketAddrV4::new(setup.local, setup.port);
        let mut ends: Vec<(OwnedFd, OwnedFd, OwnedFd)> = Vec::with_capacity(n);
        for i in 0..n {
            let queue = tun::open_queue(&setup.device).map_err(|e| {
                Error::io(
                    format!(
                        "open queue {i} of TUN device {} (/dev/net/tun)",
                        setup.device
                    ),
                    e,
                )
            })?;
            if i == 0 {
                tun::set_persist(&queue, true)
                    .map_err(|e| Error::io(format!("make {} persistent", setup.device), e))?;
            }
            let rx = tun::udp_socket(listen).map_err(|e| match e.raw_os_error() {
                Some(libc::EADDRINUSE) => Error::Config(format!(
                    "Backend.Port: UDP {listen} is already in use by another program; \
                     choose another port in net-conf.json (every node must use the same)"
                )),
                _ => Error::io(format!("bind UDP {listen}"), e),
            })?;
            let tx = tun::udp_socket(SocketAddrV4::new(setup.local, 0))
                .map_err(|e| Error::io(format!("bind a UDP socket on {}", setup.local), e))?;
            ends.push((queue, rx, tx));
        }
        let shared = Arc::new(Shared {
            table: Mutex::new(Arc::new(table)),
            generation: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            port: setup.port,
        });
        let mut workers = Vec::with_capacity(n);
        for (i, (queue, rx, tx)) in ends.into_iter().enumerate() {
            let shared = shared.clone();
            let w = worker::Worker::new(queue, rx, tx);
            let handle = std::thread::Builder::new()
                .name(format!("udp-path-{i}"))
                .spawn(move || w.run(&shared))
                .map_err(|e| Error::io("start a udp data path worker", e))?;
            workers.push(handle);
        }
        tracing::info!(device = %setup.device, %listen, workers = n, "udp data path running");
        Ok(UdpPath { shared, workers })
    }

    /// Replaces the peer table; workers use it from their next batch.
    pub fn set_table(&self, table: Table) {
        let mut t = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        if **t != table {
            *t = Arc::new(table);
            self.shared.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Whether every worker is still running.
    pub fn is_running(&self) -> bool {
        self.workers.iter().all(|w| !w.is_finished())
    }
}

impl Drop for UdpPath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_by_subnet() {
        let own: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let t = Table::new(
            own,
            [
                (
                    "10.244.7.0/24".parse().unwrap(),
                    Ipv4Addr::new(198, 18, 0, 12),
                ),
                // A subnet of another length cannot be a lease of this config.
                (
                    "10.244.8.0/25".parse().unwrap(),
                    Ipv4Addr::new(198, 18, 0, 13),
                ),
            ],
        );
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            t.peer_of(ip("10.244.7.200")),
            Some(Ipv4Addr::new(198, 18, 0, 12))
        );
        assert_eq!(t.peer_of(ip("10.244.8.1")), None);
        assert_eq!(t.peer_of(ip("10.244.9.1")), None);
        assert!(t.is_own(ip("10.244.3.9")));
        assert!(!t.is_own(ip("10.244.7.9")));
    }
}
