//! One worker of the udp data path: a TUN queue, a receiving socket on the
//! backend's port (shared by reuseport with the other workers) and a
//! sending socket of its own (its source port spreads peers' receive work
//! over their workers). It polls both, moves packets in batches, and
//! allocates nothing after it starts: one buffer, reused.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{tun, Counters, Shared, Table};

/// Packets moved per readiness before looking at the other direction.
const BATCH: usize = 64;
/// The largest IP packet.
const BUF: usize = 65536;
/// How long a poll waits before checking for a stop.
const POLL_MS: libc::c_int = 100;

pub(super) struct Worker {
    queue: OwnedFd,
    rx: OwnedFd,
    tx: OwnedFd,
}

/// IPv4 source and destination of a packet, if it is one.
fn ipv4_addrs(p: &[u8]) -> Option<(u32, u32)> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    Some((src, dst))
}

impl Worker {
    pub(super) fn new(queue: OwnedFd, rx: OwnedFd, tx: OwnedFd) -> Worker {
        Worker { queue, rx, tx }
    }

    pub(super) fn run(self, shared: &Shared) {
        let mut buf = vec![0u8; BUF];
        let mut generation = 0;
        let mut table: Arc<Table> = Arc::default();
        let c = &shared.counters;
        while !shared.stop.load(Ordering::Relaxed) {
            let g = shared.generation.load(Ordering::Acquire);
            if g != generation {
                table = shared
                    .table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                generation = g;
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.queue.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.rx.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd for its whole length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "udp data path: poll failed; worker stops");
                    return;
                }
                continue;
            }
            if fds[0].revents != 0 {
                self.tun_to_peers(&mut buf, &table, shared.port, c);
            }
            if fds[1].revents != 0 {
                self.peers_to_tun(&mut buf, &table, c);
            }
        }
    }

    /// Reads up to a batch of packets from the TUN and sends each to its peer.
    fn tun_to_peers(&self, buf: &mut [u8], table: &Table, port: u16, c: &Counters) {
        for _ in 0..BATCH {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::read(
                    self.queue.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
            let p = &buf[..n as usize];
            let Some((_, dst)) = ipv4_addrs(p) else {
                Counters::add(&c.drop_malformed, 1);
                continue;
            };
            let Some(peer) = table.peer_of(dst) else {
                Counters::add(&c.drop_unknown_subnet, 1);
                continue;
            };
            let to = tun::sockaddr_in(SocketAddrV4::new(peer, port));
            // SAFETY: sends `p` (valid for its length) to a valid sockaddr_in.
            let sent = unsafe {
                libc::sendto(
                    self.tx.as_raw_fd(),
                    p.as_ptr() as *const libc::c_void,
                    p.len(),
                    0,
                    &to as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                Counters::add(&c.drop_io, 1);
            } else {
                Counters::add(&c.tx_packets, 1);
                Counters::add(&c.tx_bytes, p.len() as u64);
            }
        }
    }

    /// Receives up to a batch of datagrams and writes those from a known
    /// peer, for this node's subnet, into the TUN.
    fn peers_to_tun(&self, buf: &mut [u8], table: &Table, c: &Counters) {
        for _ in 0..BATCH {
            // SAFETY: an all-zero sockaddr_in is a valid value to be overwritten.
            let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: receives at most `buf.len()` bytes into `buf`; `from`
            // and `len` describe a sockaddr_in-sized buffer.
            let n = unsafe {
                libc::recvfrom(
                    self.rx.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_in as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                return;
            }
            let p = &buf[..n as usize];
            let Some((src, dst)) = ipv4_addrs(p) else {
                Counters::add(&c.drop_malformed, 1);
                continue;
            };
            let sender = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
            if table.peer_of(src) != Some(sender) || !table.is_own(dst) {
                Counters::add(&c.drop_bad_peer, 1);
                continue;
            }
            // SAFETY: writes `p`, valid for its length, to the TUN queue.
            let w = unsafe {
                libc::write(
                    self.queue.as_raw_fd(),
                    p.as_ptr() as *const libc::c_void,
                    p.len(),
                )
            };
            if w < 0 {
                Counters::add(&c.drop_io, 1);
            } else {
                Counters::add(&c.rx_packets, 1);
                Counters::add(&c.rx_bytes, p.len() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ipv4_addresses_and_refuses_the_rest() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 3]);
        assert_eq!(ipv4_addrs(&p), Some((0x0af4_0102, 0x0af4_0203)));
        p[0] = 0x60;
        assert_eq!(ipv4_addrs(&p), None);
        assert_eq!(ipv4_addrs(&p[..19]), None);
    }
}
