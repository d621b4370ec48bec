//! Batched UDP: `recvmmsg` takes every queued datagram (up to [`BATCH`])
//! in one system call and `sendmmsg` sends the answers to a batch in
//! another, instead of a `recvfrom` and a `sendto` per query. Under load a
//! query's share of the two calls is then a fraction of what it was; when
//! one query at a time arrives, it costs the same as before.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per call.
pub const BATCH: usize = 32;
/// The largest query kept whole; a longer one is seen truncated (and
/// answered FORMERR, as any query that does not parse).
pub const MAX_QUERY: usize = 2048;

/// Buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Box<[[u8; MAX_QUERY]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: [usize; BATCH],
    n: usize,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            addrs: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            n: 0,
        }
    }

    /// Receives what is queued on `fd` without waiting; `WouldBlock` when
    /// nothing is. Returns how many datagrams arrived.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec is plain data; all zeroes is valid.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: mmsghdr is plain data (null pointers, zero lengths).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            iov.iov_base = self.bufs[i].as_mut_ptr().cast();
            iov.iov_len = MAX_QUERY;
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a buffer and an address of this
        // batch, alive and exclusively borrowed for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        self.n = n as usize;
        for (len, hdr) in self.lens.iter_mut().zip(&hdrs).take(self.n) {
            *len = (hdr.msg_len as usize).min(MAX_QUERY);
        }
        Ok(self.n)
    }

    /// Datagram `i` of the last receive and who sent it (`None` for an
    /// address family other than IPv4 and IPv6).
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.n {
            return None;
        }
        Some((&self.bufs[i][..self.lens[i]], from_storage(&self.addrs[i])?))
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// Answers to send, in one buffer that keeps its capacity from batch to
/// batch: writing an answer allocates nothing once it has grown.
#[derive(Debug, Default)]
pub struct SendBatch {
    buf: Vec<u8>,
    msgs: Vec<(SocketAddr, usize, usize)>,
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch {
            buf: Vec::with_capacity(BATCH * 512),
            msgs: Vec::with_capacity(BATCH),
        }
    }

    /// The buffer to append an answer to; [`SendBatch::commit`] it after.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Marks what was appended to the buffer since the last commit as the
    /// answer for `to` (nothing when nothing was appended).
    pub fn commit(&mut self, to: SocketAddr) {
        let start = self.msgs.last().map_or(0, |m| m.2);
        if self.buf.len() > start {
            self.msgs.push((to, start, self.buf.len()));
        }
    }

    /// Drops what was appended since the last commit.
    pub fn rollback(&mut self) {
        let start = self.msgs.last().map_or(0, |m| m.2);
        self.buf.truncate(start);
    }

    /// Adds `bytes` as the answer for `to`.
    pub fn push(&mut self, to: SocketAddr, bytes: &[u8]) {
        self.rollback();
        self.buf.extend_from_slice(bytes);
        self.commit(to);
    }

    /// Answers waiting.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Answer `i` and where it goes.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (to, start, end) = self.msgs[i];
        (to, &self.buf[start..end])
    }

    /// Forgets every answer, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.msgs.clear();
    }

    /// Sends the answers from `from` on `fd` in one `sendmmsg` without
    /// waiting; returns how many went (the rest were refused by a full
    /// socket buffer or an error the caller retries one by one).
    pub fn send(&self, fd: RawFd, from: usize) -> io::Result<usize> {
        let msgs = &self.msgs[from..self.msgs.len().min(from + BATCH)];
        // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        // SAFETY: iovec is plain data; filled below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: mmsghdr is plain data; filled below.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, &(to, start, end)) in msgs.iter().enumerate() {
            let len = to_storage(to, &mut addrs[i]);
            iovs[i].iov_base = self.buf[start..end].as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = end - start;
            hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = len;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point at addresses and iovecs of this frame
        // and at this batch's buffer, all alive for the call; the kernel
        // only reads the buffer.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `s`; returns its length.
fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in and
            // suitably aligned for it.
            let out =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = a.port().to_be();
            out.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let out =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = a.port().to_be();
            out.sin6_addr.s6_addr = a.ip().octets();
            out.sin6_flowinfo = a.flowinfo();
            out.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_batch_goes_both_ways_over_ipv4_and_ipv6() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(server) = UdpSocket::bind(any) else {
                continue; // no IPv6 on this host
            };
            let client = UdpSocket::bind(any).unwrap();
            let to = server.local_addr().unwrap();
            for i in 0..40u8 {
                client.send_to(&[i; 5], to).unwrap();
            }
            let mut b = RecvBatch::new();
            let mut got = Vec::new();
            while got.len() < 40 {
                match b.recv(server.as_raw_fd()) {
                    Ok(n) => {
                        assert!(n <= BATCH);
                        for i in 0..n {
                            let (data, from) = b.get(i).unwrap();
                            assert_eq!(from, client.local_addr().unwrap());
                            got.push(data.to_vec());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got[39], vec![39; 5]);
            let mut replies = SendBatch::new();
            for i in 0..3u8 {
                replies.buf().extend_from_slice(&[i; 7]);
                replies.commit(client.local_addr().unwrap());
            }
            replies.buf().push(9);
            replies.rollback();
            replies.commit(client.local_addr().unwrap());
            assert_eq!(replies.len(), 3, "nothing appended, nothing sent");
            assert_eq!(replies.send(server.as_raw_fd(), 1).unwrap(), 2);
            assert_eq!(replies.send(server.as_raw_fd(), 0).unwrap(), 3);
            let mut buf = [0u8; 64];
            for i in [1u8, 2, 0, 1, 2] {
                let (n, from) = client.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], from), (&[i; 7][..], to));
            }
        }
    }

    #[test]
    fn a_query_longer_than_the_buffer_is_cut() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .send_to(&[7; MAX_QUERY + 100], server.local_addr().unwrap())
            .unwrap();
        let mut b = RecvBatch::new();
        let n = loop {
            match b.recv(server.as_raw_fd()) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(n, 1);
        assert_eq!(b.get(0).unwrap().0.len(), MAX_QUERY);
        assert!(b.get(1).is_none());
    }
}
