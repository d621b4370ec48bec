//! A NETLINK_NETFILTER socket for the few requests the proxy makes by
//! hand (ctnetlink flows, nf_tables chain names): nlmsghdr + nfgenmsg +
//! attributes, one request at a time, replies handed to a callback until
//! the ACK or the end of the dump. The socket belongs to the network
//! namespace of the thread that opened it.

use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{Error, Result};

pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLM_F_REQUEST: u16 = 1;
/// Set on a dump message when the data changed while it was being dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Bytes read at once; more than the largest batch the kernel sends.
const RECV_BUFFER: usize = 64 * 1024;

/// One request: which subsystem and message, for which address family.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What the request is for, in errors ("dump flows").
    pub what: &'a str,
    /// `NFNL_SUBSYS_*`.
    pub subsys: u16,
    pub msg_type: u16,
    /// nfgenmsg family (`AF_INET`, `NFPROTO_IPV4`, ...).
    pub family: u8,
    /// `NLM_F_*` besides `NLM_F_REQUEST`.
    pub flags: u16,
}

/// The socket and the sequence number of the last request.
pub struct NfSocket {
    sock: Mutex<(Socket, u32)>,
}

impl NfSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<NfSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("open a netfilter socket"))?;
        sock.bind_auto().map_err(io("bind a netfilter socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io("connect a netfilter socket"))?;
        Ok(NfSocket {
            sock: Mutex::new((sock, 0)),
        })
    }

    /// Sends `req` with `attrs` and hands the attributes of every reply
    /// message (after nfgenmsg) to `each`, until the ACK or end of dump.
    /// A dump the kernel marks interrupted (the data changed meanwhile)
    /// is an `EINTR` error: the caller decides whether to ask again.
    pub fn exchange(
        &self,
        req: Request<'_>,
        attrs: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let (sock, seq) = &mut *guard;
        *seq = seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(20 + attrs.len());
        let len = (16 + 4 + attrs.len()) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&((req.subsys << 8) | req.msg_type).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | req.flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[req.family, 0, 0, 0]);
        msg.extend_from_slice(attrs);
        sock.send(&msg, 0).map_err(io(req.what))?;
        let mut interrupted = false;
        // A large receive buffer makes the kernel fill large dump batches:
        // it sizes them after the largest read so far (up to 32 KiB), and
        // nf_tables walks its chain list from the start for every batch,
        // so 4 KiB batches made a dump of 60k chains take 280 ms.
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        loop {
            buf.clear();
            sock.recv(&mut buf, 0).map_err(io(req.what))?;
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len = u32_at(&buf, off) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
                if len < 16 || off + len > buf.len() {
                    return Err(decode(req.what, "truncated message"));
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                let body = &buf[off + 16..off + len];
                match ty {
                    NLMSG_DONE if interrupted => {
                        return Err(io(req.what)(std::io::Error::from_raw_os_error(libc::EINTR)))
                    }
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| decode(req.what, "short error message"))?;
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io(req.what)(std::io::Error::from_raw_os_error(-code)))
                        };
                    }
                    _ if body.len() >= 4 => each(&body[4..])?,
                    _ => {}
                }
                off += align(len);
            }
        }
    }
}

/// The error of a failed request or socket call.
pub fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Netlink {
        what: what.to_string(),
        source,
    }
}

/// A reply that could not be decoded.
pub fn decode(what: &str, detail: &str) -> Error {
    Error::Decode {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Appends one attribute (header, payload, padding).
pub fn put(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align(buf.len()), 0);
}

/// The attributes in a buffer as (type without flags, payload): the
/// walker hostnet's nf_tables reads use.
pub use hostnet::nftables::attrs;

/// A NUL-terminated string attribute's text.
pub fn string(p: &[u8]) -> Option<&str> {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_stop_at_truncation() {
        let mut buf = Vec::new();
        put(&mut buf, 1, b"nat\0");
        put(&mut buf, 3 | NLA_F_NESTED, b"KUBE-SERVICES\0");
        let got: Vec<(u16, Option<&str>)> = attrs(&buf).map(|(t, p)| (t, string(p))).collect();
        assert_eq!(got, vec![(1, Some("nat")), (3, Some("KUBE-SERVICES"))]);
        assert_eq!(
            attrs(&buf[..10]).count(),
            1,
            "the cut second attribute is not read"
        );
    }
}
