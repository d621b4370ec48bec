//! A cheap fingerprint of a legacy (x_tables) table: its entry count, size
//! and hook offsets from `IPT_SO_GET_INFO`, which copies 84 bytes where
//! any listing copies the whole table out of the kernel (0.35-0.47 s for
//! nat at 10k Services). Any flush or rule change by anyone changes it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// `IPT_SO_GET_INFO` (IPT_BASE_CTL + 0).
const IPT_SO_GET_INFO: libc::c_int = 64;
const NF_INET_NUMHOOKS: usize = 5;
const XT_TABLE_MAXNAMELEN: usize = 32;

/// `struct ipt_getinfo`.
#[repr(C)]
struct GetInfo {
    name: [u8; XT_TABLE_MAXNAMELEN],
    valid_hooks: u32,
    hook_entry: [u32; NF_INET_NUMHOOKS],
    underflow: [u32; NF_INET_NUMHOOKS],
    num_entries: u32,
    size: u32,
}

/// The fingerprint of `table` in the calling thread's network namespace,
/// or `None` when the kernel does not give one (no such table yet, no
/// x_tables, no permission).
pub fn stamp(table: &str) -> Option<u64> {
    if table.len() >= XT_TABLE_MAXNAMELEN {
        return None;
    }
    let mut info = GetInfo {
        name: [0; XT_TABLE_MAXNAMELEN],
        valid_hooks: 0,
        hook_entry: [0; NF_INET_NUMHOOKS],
        underflow: [0; NF_INET_NUMHOOKS],
        num_entries: 0,
        size: 0,
    };
    info.name[..table.len()].copy_from_slice(table.as_bytes());
    // SAFETY: plain socket(2); the descriptor is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return None;
    }
    let mut len = std::mem::size_of::<GetInfo>() as libc::socklen_t;
    // SAFETY: `info` is a live, writable `struct ipt_getinfo` of `len`
    // bytes, which is what the kernel reads the name from and writes into.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_IP,
            IPT_SO_GET_INFO,
            (&mut info as *mut GetInfo).cast(),
            &mut len,
        )
    };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let mut h = DefaultHasher::new();
    (
        info.valid_hooks,
        info.hook_entry,
        info.underflow,
        info.num_entries,
        info.size,
    )
        .hash(&mut h);
    Some(h.finish())
}
