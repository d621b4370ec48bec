//! One worker of the udp data path: a TUN queue, a receiving socket on the
//! backend's port (shared by reuseport with the other workers) and a
//! sending socket of its own (its source port spreads peers' receive work
//! over their workers). It polls both and moves packets in batches:
//! - out: a read from the TUN gives a packet or a TCP super-packet (TSO);
//!   a super-packet is cut into MSS segments whose headers are written to
//!   a scratch area and whose payloads are pointed at in place, and goes
//!   out in one `sendmmsg` of UDP GSO messages (`UDP_SEGMENT`, one inner
//!   packet per datagram, as flannel's wire format has it);
//! - in: a `recvmsg` gives up to 64 datagrams coalesced by UDP GRO; runs
//!   of segments of one TCP flow go into the TUN as one super-packet with a
//!   partial checksum (one `writev`, payloads in place), the rest one by one.
//!
//! All buffers are allocated when the worker starts; none per packet.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::gso::{self, TcpGso, VnetHdr, MAX_HEADERS, VNET_HDR_LEN};
use super::{tun, Counters, Shared, Table};

/// Reads (or receives) per readiness before looking at the other direction.
const BATCH: usize = 32;
/// A virtio-net header and the largest IP packet.
const BUF: usize = VNET_HDR_LEN + 65_536;
/// The most segments one super-packet is cut into (64 KB at an MSS of 512).
const MAX_SEGS: usize = 128;
/// UDP GSO messages per super-packet (each at most 64 segments and 64 KB).
const MAX_MSGS: usize = 8;
/// Datagrams one GRO receive may hold (the kernel merges at most 64).
const MAX_RX: usize = 128;
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

/// A `cmsghdr` carrying one value, aligned as the kernel wants it.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 32]);

/// The sending side's buffers, allocated once: what a TUN read fills, and
/// what a send is built in.
struct Out {
    buf: Vec<u8>,
    tx: Tx,
}

/// Segment headers, iovecs and messages of one send.
struct Tx {
    headers: Vec<u8>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    cmsgs: Vec<Cmsg>,
    to: libc::sockaddr_in,
}

/// The receiving side's scratch, allocated once.
struct In {
    buf: Vec<u8>,
    cmsg: Cmsg,
    headers: [u8; MAX_HEADERS],
    iov: Vec<libc::iovec>,
}

fn iovec(p: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    }
}

impl Worker {
    pub(super) fn new(queue: OwnedFd, rx: OwnedFd, tx: OwnedFd) -> Worker {
        Worker { queue, rx, tx }
    }

    pub(super) fn run(self, shared: &Shared) {
        raise_priority();
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed_msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut out = Out {
            buf: vec![0u8; BUF],
            tx: Tx {
                headers: vec![0u8; MAX_SEGS * MAX_HEADERS],
                iov: Vec::with_capacity(2 * MAX_SEGS),
                msgs: vec![zeroed_msg; MAX_MSGS],
                cmsgs: vec![Cmsg([0; 32]); MAX_MSGS],
                to: tun::sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, shared.port)),
            },
        };
        let mut inb = In {
            buf: vec![0u8; 65_536],
            cmsg: Cmsg([0; 32]),
            headers: [0; MAX_HEADERS],
            iov: Vec::with_capacity(2 + MAX_RX),
        };
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
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                // The device went: the controller starts the path again.
                tracing::warn!("udp data path: the TUN queue closed; worker stops");
                return;
            }
            if fds[0].revents != 0 {
                for _ in 0..BATCH {
                    if !self.tun_to_peer(&mut out, &table, c) {
                        break;
                    }
                }
            }
            if fds[1].revents != 0 {
                for _ in 0..BATCH {
                    if !self.peer_to_tun(&mut inb, &table, c) {
                        break;
                    }
                }
            }
        }
    }

    /// Reads one (super-)packet from the TUN and sends it to its peer;
    /// false when there was nothing to read.
    fn tun_to_peer(&self, o: &mut Out, table: &Table, c: &Counters) -> bool {
        // SAFETY: reads at most `o.buf.len()` bytes into `o.buf`.
        let n = unsafe {
            libc::read(
                self.queue.as_raw_fd(),
                o.buf.as_mut_ptr() as *mut libc::c_void,
                o.buf.len(),
            )
        };
        if n <= 0 {
            return false;
        }
        let n = n as usize;
        let (Some(h), Some((_, dst))) = (
            VnetHdr::parse(&o.buf[..n]),
            ipv4_addrs(&o.buf[VNET_HDR_LEN.min(n)..n]),
        ) else {
            Counters::add(&c.drop_malformed, 1);
            return true;
        };
        let Some(peer) = table.peer_of(dst) else {
            Counters::add(&c.drop_unknown_subnet, 1);
            return true;
        };
        let t = &mut o.tx;
        t.to.sin_addr.s_addr = u32::from(peer).to_be();
        let pkt = &mut o.buf[VNET_HDR_LEN..n];
        let (msgs, packets) = match h.gso_type & !gso::GSO_ECN {
            gso::GSO_TCPV4 => {
                let Some(g) = TcpGso::of(pkt, h.gso_size) else {
                    Counters::add(&c.drop_malformed, 1);
                    return true;
                };
                match cut(g, pkt, t) {
                    Some(m) => m,
                    None => {
                        Counters::add(&c.drop_malformed, 1);
                        return true;
                    }
                }
            }
            gso::GSO_NONE => {
                if h.flags & gso::F_NEEDS_CSUM != 0
                    && !gso::complete_checksum(
                        pkt,
                        usize::from(h.csum_start),
                        usize::from(h.csum_offset),
                    )
                {
                    Counters::add(&c.drop_malformed, 1);
                    return true;
                }
                t.iov.clear();
                t.iov.push(iovec(pkt));
                set_msg(t, 0, 0, 1, 0);
                (1, 1)
            }
            _ => {
                Counters::add(&c.drop_malformed, 1);
                return true;
            }
        };
        // SAFETY: `msgs` mmsghdrs are set up by set_msg: each points at
        // iovecs in `t.iov` (into `o.buf` and `t.headers`), at `t.to` and
        // at its own cmsg buffer, all alive and unmoved during the call.
        let sent = unsafe {
            libc::sendmmsg(
                self.tx.as_raw_fd(),
                t.msgs.as_mut_ptr(),
                msgs as libc::c_uint,
                0,
            )
        };
        if sent == msgs as libc::c_int {
            Counters::add(&c.tx_packets, packets as u64);
            Counters::add(&c.tx_bytes, (n - VNET_HDR_LEN) as u64);
        } else {
            Counters::add(&c.drop_io, packets as u64);
        }
        true
    }

    /// Receives one (GRO-coalesced) datagram batch and writes the packets
    /// from a known peer, for this node's subnet, into the TUN; false when
    /// there was nothing to receive.
    fn peer_to_tun(&self, i: &mut In, table: &Table, c: &Counters) -> bool {
        // SAFETY: an all-zero sockaddr_in / msghdr is a valid value to fill in.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: i.buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: i.buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut from as *mut libc::sockaddr_in as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = i.cmsg.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = i.cmsg.0.len();
        // SAFETY: `msg` points at `from`, one iovec over `i.buf` and the
        // cmsg buffer, all alive for the call.
        let n = unsafe { libc::recvmsg(self.rx.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return false;
        }
        let n = n as usize;
        let seg = gro_size(&msg).unwrap_or(n).max(1);
        let sender = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
        let mut packets: [&[u8]; MAX_RX] = [&[]; MAX_RX];
        let mut count = 0;
        for p in i.buf[..n].chunks(seg) {
            let ok = ipv4_addrs(p)
                .is_some_and(|(src, dst)| table.peer_of(src) == Some(sender) && table.is_own(dst));
            if !ok {
                Counters::add(&c.drop_bad_peer, 1);
                continue;
            }
            if count == MAX_RX {
                Counters::add(&c.drop_io, 1);
                continue;
            }
            packets[count] = p;
            count += 1;
        }
        let mut k = 0;
        while k < count {
            let run = gso::run_len(&packets[k..count]).max(1);
            let ps = &packets[k..k + run];
            let mut vnet = [0u8; VNET_HDR_LEN];
            i.iov.clear();
            if run >= 2 {
                let h = gso::merge_headers(ps, &mut i.headers);
                h.write(&mut vnet);
                let hlen = usize::from(h.hdr_len);
                i.iov.push(iovec(&vnet));
                i.iov.push(iovec(&i.headers[..hlen]));
                for p in ps {
                    i.iov.push(iovec(&p[hlen..]));
                }
            } else {
                i.iov.push(iovec(&vnet));
                i.iov.push(iovec(ps[0]));
            }
            // SAFETY: the iovecs point at `vnet`, `i.headers` and slices of
            // `i.buf`, all alive and unchanged for the call.
            let w = unsafe {
                libc::writev(
                    self.queue.as_raw_fd(),
                    i.iov.as_ptr(),
                    i.iov.len() as libc::c_int,
                )
            };
            let bytes: usize = ps.iter().map(|p| p.len()).sum();
            if w < 0 {
                Counters::add(&c.drop_io, run as u64);
            } else {
                Counters::add(&c.rx_packets, run as u64);
                Counters::add(&c.rx_bytes, bytes as u64);
            }
            k += run;
        }
        true
    }
}

/// The nice value of a worker: the data path is the network of every pod
/// on the node, as softirq work is for vxlan, so it runs ahead of the
/// node's ordinary processes when the CPUs are busy.
const NICE: libc::c_int = -10;

/// Gives the calling thread [`NICE`]; without the privilege it stays as it is.
fn raise_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on this thread's own id; it only reads its arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "udp data path: keep the default priority");
    }
}

/// The segment size of a UDP GRO receive, from its control message.
fn gro_size(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: `msg` was filled in by recvmsg; the CMSG macros walk its
    // control buffer within msg_controllen.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(msg);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == tun::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const libc::c_int);
                return usize::try_from(v).ok();
            }
            cm = libc::CMSG_NXTHDR(msg, cm);
        }
    }
    None
}

/// Cuts super-packet `pkt` into segments: headers into `o.headers`,
/// iovecs into `o.iov`, and UDP GSO messages (at most 64 segments and 64
/// KB each) into `o.msgs`. (messages, segments), or None if it has too many.
fn cut(g: TcpGso, pkt: &[u8], o: &mut Tx) -> Option<(usize, usize)> {
    let segs = g.segments(pkt);
    let size = g.hlen + g.mss;
    let per_msg = (gso::MAX_UDP_PAYLOAD / size).clamp(1, gso::MAX_SEGMENTS);
    if segs > MAX_SEGS || segs.div_ceil(per_msg) > MAX_MSGS {
        return None;
    }
    o.iov.clear();
    for i in 0..segs {
        let h = &mut o.headers[i * MAX_HEADERS..(i + 1) * MAX_HEADERS];
        let r = g.segment(pkt, i, h);
        o.iov.push(iovec(&h[..g.hlen]));
        o.iov.push(iovec(&pkt[r]));
    }
    let mut msgs = 0;
    let mut first = 0;
    while first < segs {
        let k = per_msg.min(segs - first);
        set_msg(o, msgs, 2 * first, 2 * k, if k > 1 { size } else { 0 });
        msgs += 1;
        first += k;
    }
    Some((msgs, segs))
}

/// Points message `m` at `len` iovecs from `first` in `o.iov`, to `o.to`,
/// with a UDP_SEGMENT control message of `segment` bytes unless 0.
fn set_msg(o: &mut Tx, m: usize, first: usize, len: usize, segment: usize) {
    let hdr = &mut o.msgs[m].msg_hdr;
    hdr.msg_name = &mut o.to as *mut libc::sockaddr_in as *mut libc::c_void;
    hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    hdr.msg_iov = o.iov[first..].as_mut_ptr();
    hdr.msg_iovlen = len;
    hdr.msg_flags = 0;
    if segment == 0 {
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        return;
    }
    let buf = &mut o.cmsgs[m].0;
    hdr.msg_control = buf.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE is arithmetic on a constant size.
    hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
    // SAFETY: the control buffer is 32 bytes, 8-aligned, and holds
    // CMSG_SPACE(2) (24) bytes; CMSG_FIRSTHDR returns its start.
    unsafe {
        let cm = libc::CMSG_FIRSTHDR(hdr);
        (*cm).cmsg_level = libc::SOL_UDP;
        (*cm).cmsg_type = tun::UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, segment as u16);
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
