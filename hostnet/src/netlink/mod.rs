//! A synchronous rtnetlink client in rtnetlink's builder style: one
//! [`Netlink`] per namespace (a socket stays bound to the namespace it was
//! opened in), with sub-handles per object kind. It sends one request and
//! reads until the ACK or the end of the dump; it keeps no cache. A
//! [`Monitor`] is a separate socket that listens for others' changes.

mod addr;
mod fdb;
mod link;
mod monitor;
mod neigh;
mod route;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use addr::AddrHandle;
pub use fdb::{FdbEntry, FdbHandle};
pub use link::{Link, LinkHandle, VethRequest, VxlanInfo, VxlanRequest};
pub use monitor::{Change, Monitor};
pub use neigh::{NeighEntry, NeighHandle};
pub use route::{RouteEntry, RouteHandle, RouteRequest};

use crate::{Error, NetNs, Result};

/// How many times an interrupted dump (NLM_F_DUMP_INTR) is retried.
const DUMP_RETRIES: usize = 5;

/// An rtnetlink connection bound to one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace.
    pub fn new() -> Result<Netlink> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("bind netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect netlink socket", e))?;
        // Lets the kernel filter dumps (addresses by ifindex, routes by table).
        let _ = socket.set_netlink_get_strict_chk(true);
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Opens a connection in namespace `ns` (the calling thread returns to its own).
    pub fn new_in(ns: &NetNs) -> Result<Netlink> {
        ns.run(Netlink::new)?
    }

    /// Links: get, list, create, change, delete.
    pub fn link(&mut self) -> LinkHandle<'_> {
        LinkHandle::new(self)
    }

    /// Addresses: list, add, delete.
    pub fn addr(&mut self) -> AddrHandle<'_> {
        AddrHandle::new(self)
    }

    /// Routes: list, add, delete.
    pub fn route(&mut self) -> RouteHandle<'_> {
        RouteHandle::new(self)
    }

    /// Neighbours (ARP/NDP): list, replace, delete.
    pub fn neigh(&mut self) -> NeighHandle<'_> {
        NeighHandle::new(self)
    }

    /// A device's own forwarding entries (VXLAN FDB): list, replace, delete.
    pub fn fdb(&mut self) -> FdbHandle<'_> {
        FdbHandle::new(self)
    }

    /// Sends a request that changes state and waits for its ACK.
    pub(crate) fn execute(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.exchange(op, msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map(|_| ())
    }

    /// Sends a request whose replies are messages (a get or a dump) and
    /// collects them. Interrupted dumps are retried here, in one place.
    pub(crate) fn query(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        let mut tries = 0;
        loop {
            match self.exchange(op, msg.clone(), flags) {
                Err(Error::Netlink { source, .. })
                    if source.raw_os_error() == Some(libc::EINTR) && tries < DUMP_RETRIES =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn exchange(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|e| Error::io(format!("{op}: send"), e))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::io(format!("{op}: recv"), e))?;
            let mut off = 0;
            while off < n {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[off..n]).map_err(|e| Error::Decode {
                        op: op.to_string(),
                        msg: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += len;
                if reply.header.sequence_number != seq {
                    continue; // a late reply to an earlier request
                }
                if reply.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(_) => {
                            return Err(Error::Netlink {
                                op: op.to_string(),
                                source: e.to_io(),
                            })
                        }
                    },
                    NetlinkPayload::Done(_) => {
                        if interrupted {
                            return Err(Error::Netlink {
                                op: op.to_string(),
                                source: std::io::Error::from_raw_os_error(libc::EINTR),
                            });
                        }
                        return Ok(replies);
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Serializes `msg` as the kernel would receive it, and parses those bytes
/// back: unit tests check both the wire bytes and what a reader decodes.
#[cfg(test)]
pub(crate) fn wire_roundtrip(msg: RouteNetlinkMessage) -> (Vec<u8>, RouteNetlinkMessage) {
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&out).expect("parse own bytes");
    let NetlinkPayload::InnerMessage(m) = back.payload else {
        panic!("not an inner message: {:?}", back.payload);
    };
    (out, m)
}
