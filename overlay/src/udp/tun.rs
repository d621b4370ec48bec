//! The TUN device of the udp backend over raw ioctls on `/dev/net/tun`:
//! one file per queue (`IFF_MULTI_QUEUE`), the device made persistent so
//! its address and route outlive a restart of the agent, which attaches
//! its queues again by name. Each queue carries a virtio-net header
//! (`IFF_VNET_HDR`) and takes TCP segmentation and checksum offload, so
//! reads give up to 64 KB super-packets. Addresses, MTU and link state are
//! netlink's business (the controller's), not this module's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUN_PATH: &str = "/dev/net/tun";
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNSETOFFLOAD` flags: partial checksums and TCP/IPv4 segmentation.
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 203, int)`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens one queue of TUN device `name`, creating the device if it does
/// not exist. Every queue of a device must be opened with the same flags.
pub fn open_queue(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TUN name {name:?} must be 1 to 15 bytes"),
        ));
    }
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
    // matches in layout and size (40 bytes); the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes the offload flags by value; the fd is an
    // attached TUN queue.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Makes the device outlive its queues (or not).
pub fn set_persist(queue: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument by value; the fd is
    // an attached TUN queue.
    let rc = unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(on)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setsockopt(SOL_UDP)`: coalesce received datagrams (`linux/udp.h`).
pub const UDP_GRO: libc::c_int = 104;
/// `SOL_UDP` cmsg / option: the size of the segments of one send.
pub const UDP_SEGMENT: libc::c_int = 103;
/// Each socket's send and receive buffer.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A UDP socket bound to `addr` with `SO_REUSEPORT` (one per worker, so
/// the kernel spreads arriving datagrams over them by flow), non-blocking.
pub fn udp_socket(addr: std::net::SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Room for bursts of 64 KB super-packets; root may pass rmem_max.
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        setsockopt_int(&sock, libc::SOL_SOCKET, opt, SOCKET_BUFFER)?;
    }
    // Received datagrams of one flow come up coalesced (UDP_GRO).
    setsockopt_int(&sock, libc::SOL_UDP, UDP_GRO, 1)?;
    let sa = sockaddr_in(addr);
    // SAFETY: `sa` is a valid sockaddr_in and its size is passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Sets an integer socket option.
pub fn setsockopt_int(
    sock: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int whose address and size are passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `addr` as a `sockaddr_in`.
pub fn sockaddr_in(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn names_too_long_are_refused_before_any_syscall() {
        let e = open_queue("a-name-longer-than-15").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
