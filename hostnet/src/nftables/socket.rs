//! The real [`NfTables`]: one NETLINK_NETFILTER socket, bound to the
//! network namespace of the thread that opened it. A transaction is sent
//! in one `sendmsg` with every message asking for an ACK; the kernel
//! answers each (0 or an errno) and, when the commit itself fails, the
//! batch begin. Replies to earlier requests are skipped by sequence number.

use std::os::fd::AsFd;
use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};

use super::batch::Batch;
use super::model::{Elem, Table};
use super::read::{self, ChainInfo, RuleCounter, TableInfo};
use super::wire;
use super::{Error, NfTables, Result};

/// Bytes read at once: more than the largest message the kernel sends.
const RECV_BUFFER: usize = 256 * 1024;
/// How many times an interrupted dump (NLM_F_DUMP_INTR) is retried.
const DUMP_RETRIES: usize = 5;
/// A reply later than this means the socket lost it (it never should).
const RECV_TIMEOUT_SECS: i64 = 10;

/// An nf_tables netlink connection.
pub struct NfTablesSocket {
    inner: Mutex<Inner>,
}

struct Inner {
    sock: Socket,
    seq: u32,
    sndbuf: usize,
    rcvbuf: usize,
    buf: Vec<u8>,
}

/// What a reply handler wants next.
pub(super) enum Flow {
    More,
    Done,
}

impl NfTablesSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<NfTablesSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("open a netfilter socket"))?;
        sock.bind_auto().map_err(io("bind a netfilter socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io("connect a netfilter socket"))?;
        // Errors carry only the failed message's header, not its payload
        // (an element message can be 60 KiB), plus the kernel's reason.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        setsockopt(
            &sock.as_fd(),
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(RECV_TIMEOUT_SECS, 0),
        )
        .map_err(|e| Error::Io {
            what: "set a netfilter socket's receive timeout".into(),
            source: e.into(),
        })?;
        Ok(NfTablesSocket {
            inner: Mutex::new(Inner {
                sock,
                seq: 0,
                sndbuf: 0,
                rcvbuf: 0,
                buf: Vec::with_capacity(RECV_BUFFER),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one request (a get, or a dump with `NLM_F_DUMP`) and hands
    /// each reply message's type and attributes (after nfgenmsg) to `each`.
    /// Interrupted dumps are retried here, in one place.
    pub(super) fn request(
        &self,
        what: &str,
        msg: u16,
        family: u8,
        flags: u16,
        attrs: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut inner = self.lock();
        for _ in 0..DUMP_RETRIES {
            let mut replies = Vec::new();
            match inner.request(what, msg, family, flags, attrs, &mut replies) {
                Err(e) if e.errno() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(()) => return replies.iter().try_for_each(|r| each(r)),
            }
        }
        Err(Error::Io {
            what: what.into(),
            source: std::io::Error::from_raw_os_error(libc::EINTR),
        })
    }
}

impl Inner {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, what: &str, bytes: &[u8]) -> Result<()> {
        // netlink refuses a message larger than the send buffer.
        if bytes.len() + 4096 > self.sndbuf {
            let want = (bytes.len() + 64 * 1024).max(256 * 1024);
            let fd = self.sock.as_fd();
            if setsockopt(&fd, sockopt::SndBufForce, &want).is_err() {
                let _ = setsockopt(&fd, sockopt::SndBuf, &want);
            }
            self.sndbuf = want;
        }
        self.sock.send(bytes, 0).map_err(io(what))?;
        Ok(())
    }

    fn request(
        &mut self,
        what: &str,
        msg: u16,
        family: u8,
        flags: u16,
        attrs: &[u8],
        replies: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let seq = self.next_seq();
        let mut out = Vec::with_capacity(wire::HEADER_LEN + attrs.len());
        wire::message(&mut out, wire::nft_type(msg), flags, seq, family, 0, attrs);
        self.send(what, &out)?;
        let dump = flags & wire::NLM_F_DUMP == wire::NLM_F_DUMP;
        let mut interrupted = false;
        self.receive(what, |m| {
            if m.seq != seq {
                return Ok(Flow::More); // a late reply to an earlier request
            }
            interrupted |= m.flags & wire::NLM_F_DUMP_INTR != 0;
            match m.ty {
                wire::NLMSG_DONE if interrupted => Err(Error::Io {
                    what: what.into(),
                    source: std::io::Error::from_raw_os_error(libc::EINTR),
                }),
                wire::NLMSG_DONE => Ok(Flow::Done),
                wire::NLMSG_ERROR => match m.error {
                    Some(0) | None => Ok(Flow::Done),
                    Some(code) => Err(refused(what, code)),
                },
                _ => {
                    replies.push(m.body.get(4..).unwrap_or_default().to_vec());
                    Ok(if dump { Flow::More } else { Flow::Done })
                }
            }
        })
    }

    /// Reads messages and hands them to `f` until it says done.
    fn receive(&mut self, what: &str, mut f: impl FnMut(Reply<'_>) -> Result<Flow>) -> Result<()> {
        loop {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0).map_err(io(what))?;
            let buf = &self.buf;
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default());
                let len = len as usize;
                if len < 16 || off + len > buf.len() {
                    return Err(Error::Decode {
                        what: what.into(),
                        detail: "truncated message".into(),
                    });
                }
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                let body = &buf[off + 16..off + len];
                let error = (ty == wire::NLMSG_ERROR)
                    .then(|| body.get(..4))
                    .flatten()
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if let Flow::Done = f(Reply {
                    ty,
                    flags,
                    seq,
                    body,
                    error,
                })? {
                    return Ok(());
                }
                off += wire::align(len);
            }
        }
    }

    /// The generation, read with a `GETGEN` request.
    fn generation(&mut self) -> Result<u32> {
        let mut replies = Vec::new();
        self.request(
            "read the ruleset generation",
            wire::GETGEN,
            0,
            0,
            &[],
            &mut replies,
        )?;
        replies
            .first()
            .and_then(|r| wire::attrs(r).find(|(t, _)| *t == 1).map(|(_, p)| p))
            .and_then(wire::be32)
            .ok_or_else(|| Error::Decode {
                what: "read the ruleset generation".into(),
                detail: "no NFTA_GEN_ID".into(),
            })
    }

    fn apply(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let what = "apply an nf_tables transaction";
        let begin = self.next_seq();
        let encoded = batch.encode(begin)?;
        let n = encoded.messages.len();
        self.seq = begin.wrapping_add(n as u32 + 1);
        // Every message is acknowledged: make room for the ACKs.
        let want = n * 1024 + 256 * 1024;
        if want > self.rcvbuf {
            let fd = self.sock.as_fd();
            if setsockopt(&fd, sockopt::RcvBufForce, &want).is_err() {
                let _ = setsockopt(&fd, sockopt::RcvBuf, &want);
            }
            self.rcvbuf = want;
        }
        self.send(what, &encoded.bytes)?;
        let mut acked = 0;
        let mut first: Option<Error> = None;
        self.receive(what, |m| {
            let index = m.seq.wrapping_sub(begin.wrapping_add(1)) as usize;
            match (m.ty, m.error) {
                // The commit itself failed: the kernel answers the batch
                // begin (its acks for the messages may follow).
                (wire::NLMSG_ERROR, Some(code)) if m.seq == begin && code != 0 => {
                    first.get_or_insert(refused("commit the nf_tables transaction", code));
                    return Ok(Flow::Done);
                }
                (wire::NLMSG_ERROR, Some(code)) if index < n => {
                    acked += 1;
                    if code != 0 && first.is_none() {
                        let op = &batch.ops()[encoded.messages[index].1];
                        first = Some(refused(&op.describe(), code));
                    }
                }
                _ => {} // a late reply to an earlier request
            }
            Ok(if acked == n { Flow::Done } else { Flow::More })
        })?;
        first.map_or(Ok(()), Err)
    }
}

/// One reply message.
struct Reply<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
    /// The error code of an `NLMSG_ERROR` (0 is an ACK).
    error: Option<i32>,
}

fn refused(what: &str, code: i32) -> Error {
    Error::Refused {
        what: what.into(),
        source: std::io::Error::from_raw_os_error(-code),
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.to_string(),
        source,
    }
}

impl NfTables for NfTablesSocket {
    fn apply(&self, batch: &Batch) -> Result<()> {
        self.lock().apply(batch)
    }

    fn table(&self, table: &Table) -> Result<Option<TableInfo>> {
        read::table(self, table)
    }

    fn generation(&self) -> Result<u32> {
        self.lock().generation()
    }

    fn chains(&self, table: &Table) -> Result<Vec<ChainInfo>> {
        read::chains(self, table)
    }

    fn elements(&self, table: &Table, set: &str) -> Result<Vec<Elem>> {
        read::elements(self, table, set)
    }

    fn rule_counters(&self, table: &Table, chain: &str) -> Result<Vec<RuleCounter>> {
        read::rule_counters(self, table, chain)
    }
}
