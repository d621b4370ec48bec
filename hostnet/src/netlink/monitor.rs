//! A netlink socket subscribed to rtnetlink multicast groups (links, IPv4
//! routes, neighbours), for reacting when someone else deletes what we made.
//! It only reports; it never changes state, and after an overrun it says so
//! (as `Change::Other`) rather than guessing what was lost.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::neighbour::NeighbourAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use super::neigh::neighbour_ip;
use super::RouteEntry;
use crate::{Error, NetNs, Result};

/// The kernel's receive buffer we ask for: bursts (a link going away takes
/// its routes and neighbours with it) should not overrun it.
const RCVBUF: usize = 1 << 20;

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A link was deleted.
    LinkRemoved { index: u32, name: String },
    /// A link was created or changed (state, address, MTU, ...).
    LinkChanged { index: u32, name: String, up: bool },
    /// A unicast route was deleted (any table; `table` says which).
    RouteRemoved(RouteEntry),
    /// A neighbour entry was deleted; `ip` is `None` for bridge/VXLAN FDB
    /// entries, which are keyed by MAC.
    NeighRemoved { ifindex: u32, ip: Option<IpAddr> },
    /// Anything else (a new route or neighbour, an undecodable message), or
    /// an overrun (ENOBUFS) that lost messages: resync to be sure.
    Other,
}

/// A subscription to link, IPv4 route and neighbour changes in one namespace.
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribes in the calling thread's namespace.
    pub fn new() -> Result<Monitor> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open netlink monitor socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("bind netlink monitor socket", e))?;
        for (group, name) in [
            (libc::RTNLGRP_LINK, "link"),
            (libc::RTNLGRP_IPV4_ROUTE, "ipv4 route"),
            (libc::RTNLGRP_NEIGH, "neighbour"),
        ] {
            socket
                .add_membership(group)
                .map_err(|e| Error::io(format!("subscribe to rtnetlink {name} changes"), e))?;
        }
        // Best effort: without it the default buffer is used and overruns
        // are reported as they happen.
        let _ = socket.set_rx_buf_sz(RCVBUF);
        Ok(Monitor {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Subscribes in namespace `ns` (the calling thread returns to its own;
    /// the socket keeps reporting from `ns`).
    pub fn new_in(ns: &NetNs) -> Result<Monitor> {
        ns.run(Monitor::new)?
    }

    /// Asks for a kernel receive buffer of `bytes` (SO_RCVBUF; the kernel
    /// doubles it and caps it at net.core.rmem_max). The default is 1 MiB.
    pub fn set_recv_buffer(&mut self, bytes: usize) -> Result<()> {
        self.socket
            .set_rx_buf_sz(bytes)
            .map_err(|e| Error::io(format!("set netlink monitor receive buffer to {bytes}"), e))
    }

    /// Waits for the next datagram and returns the changes in it.
    pub fn recv(&mut self) -> Result<Vec<Change>> {
        loop {
            match self.read(0) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // A datagram with nothing in it (only NLMSG_DONE/NOOP): keep waiting.
                other => match changes(other, &self.buf)? {
                    c if c.is_empty() => continue,
                    c => return Ok(c),
                },
            }
        }
    }

    /// Like [`Monitor::recv`], but returns an empty list if nothing arrives within `t`.
    pub fn recv_timeout(&mut self, t: Duration) -> Result<Vec<Change>> {
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Rounded up, so a wait shorter than 1 ms still waits.
            let ms =
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            // SAFETY: pfd is a valid pollfd for the duration of the call and we pass a count of 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::io("wait for netlink changes", e));
            }
            if rc == 0 {
                return Ok(Vec::new());
            }
            match self.read(libc::MSG_DONTWAIT) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => {}
                other => {
                    let c = changes(other, &self.buf)?;
                    if !c.is_empty() {
                        return Ok(c);
                    }
                }
            }
            if left.is_zero() {
                return Ok(Vec::new());
            }
        }
    }

    fn read(&mut self, flags: libc::c_int) -> std::io::Result<usize> {
        self.socket.recv(&mut &mut self.buf[..], flags)
    }
}

/// What one read of the socket means: the changes in the datagram, or, for
/// an overrun (ENOBUFS: the kernel dropped messages for us), a request to resync.
fn changes(read: std::io::Result<usize>, buf: &[u8]) -> Result<Vec<Change>> {
    match read {
        Ok(n) => Ok(decode(&buf[..n.min(buf.len())])),
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(vec![Change::Other]),
        Err(e) => Err(Error::io("receive netlink changes", e)),
    }
}

/// The changes in one datagram of rtnetlink notifications.
pub(super) fn decode(mut buf: &[u8]) -> Vec<Change> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            out.push(Change::Other);
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(m) => out.push(classify(m)),
                NetlinkPayload::Done(_) | NetlinkPayload::Noop => {}
                _ => out.push(Change::Other),
            },
            Err(_) => out.push(Change::Other),
        }
        // Messages are 4-byte aligned within a datagram.
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    out
}

fn classify(m: RouteNetlinkMessage) -> Change {
    match m {
        RouteNetlinkMessage::DelLink(m) => Change::LinkRemoved {
            index: m.header.index,
            name: link_name(&m.attributes),
        },
        RouteNetlinkMessage::NewLink(m) => Change::LinkChanged {
            index: m.header.index,
            name: link_name(&m.attributes),
            up: m.header.flags.contains(LinkFlags::Up),
        },
        RouteNetlinkMessage::DelRoute(m) => RouteEntry::from_message(&m)
            .map(Change::RouteRemoved)
            .unwrap_or(Change::Other),
        RouteNetlinkMessage::DelNeighbour(m) => Change::NeighRemoved {
            ifindex: m.header.ifindex,
            ip: if m.header.family == AddressFamily::Bridge {
                None
            } else {
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(d) => neighbour_ip(d),
                    _ => None,
                })
            },
        },
        _ => Change::Other,
    }
}

fn link_name(attrs: &[LinkAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourMessage};

    use super::*;
    use crate::netlink::RouteRequest;

    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for msg in msgs {
            let mut p = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
            p.finalize();
            let mut b = vec![0; p.buffer_len()];
            p.serialize(&mut b);
            b.resize((b.len() + 3) & !3, 0);
            out.extend(b);
        }
        out
    }

    #[test]
    fn a_datagram_of_notifications_decodes_to_changes() {
        let mut gone = LinkMessage::default();
        gone.header.index = 5;
        gone.attributes
            .push(LinkAttribute::IfName("knode.1".into()));
        let mut up = gone.clone();
        up.header.flags = LinkFlags::Up;
        let mut route = RouteRequest::new(
            "10.244.2.0/24".parse().unwrap(),
            Some("10.244.2.0".parse().unwrap()),
            Some(5),
        );
        route.onlink = true;
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        neigh.header.ifindex = 5;
        neigh
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                "10.244.2.0".parse::<IpAddr>().unwrap(),
            )));
        let mut fdb = neigh.clone();
        fdb.header.family = AddressFamily::Bridge;
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(up),
            RouteNetlinkMessage::DelLink(gone),
            RouteNetlinkMessage::DelRoute(route.message()),
            RouteNetlinkMessage::NewRoute(route.message()),
            RouteNetlinkMessage::DelNeighbour(neigh),
            RouteNetlinkMessage::DelNeighbour(fdb),
        ]);
        assert_eq!(
            decode(&bytes),
            vec![
                Change::LinkChanged {
                    index: 5,
                    name: "knode.1".into(),
                    up: true
                },
                Change::LinkRemoved {
                    index: 5,
                    name: "knode.1".into()
                },
                Change::RouteRemoved(RouteEntry {
                    dst: "10.244.2.0/24".parse().unwrap(),
                    gateway: Some("10.244.2.0".parse().unwrap()),
                    oif: Some(5),
                    table: 254,
                    onlink: true,
                }),
                Change::Other,
                Change::NeighRemoved {
                    ifindex: 5,
                    ip: Some("10.244.2.0".parse().unwrap())
                },
                Change::NeighRemoved {
                    ifindex: 5,
                    ip: None
                },
            ]
        );
    }

    #[test]
    fn an_overrun_is_a_resync_and_other_errors_are_errors() {
        let enobufs = std::io::Error::from_raw_os_error(libc::ENOBUFS);
        assert_eq!(changes(Err(enobufs), &[]).unwrap(), vec![Change::Other]);
        let ebadf = std::io::Error::from_raw_os_error(libc::EBADF);
        let err = changes(Err(ebadf), &[]).unwrap_err();
        assert!(
            err.to_string().starts_with("receive netlink changes: "),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_datagram_asks_for_a_resync_instead_of_failing() {
        let mut bytes = datagram(vec![RouteNetlinkMessage::DelLink(LinkMessage::default())]);
        bytes[0] = 200; // claims more bytes than there are
        assert_eq!(decode(&bytes), vec![Change::Other]);
    }
}
