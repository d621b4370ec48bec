//! Network namespaces: open one by path and run the current thread inside it
//! for a scope. Namespaces are per thread, so callers that move between them
//! keep that work on one thread; this module never spawns threads itself.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::{Error, Result};

/// An open network namespace (a file such as `/run/netns/NAME` or `/proc/PID/ns/net`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)
            .map_err(|e| Error::io(format!("open netns {}", path.display()), e))?;
        Ok(NetNs { file, path })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its file descriptor (valid while `self` lives).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Its raw file descriptor, for netlink attributes such as IFLA_NET_NS_FD.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<NsGuard> {
        let back = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(format!("enter netns {}", self.path.display()), e.into()))?;
        Ok(NsGuard { back })
    }

    /// Runs `f` with the calling thread inside this namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _guard = self.enter()?;
        Ok(f())
    }
}

/// Returns the thread to its previous namespace when dropped.
#[derive(Debug)]
pub struct NsGuard {
    back: NetNs,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.back.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in the wrong namespace would silently program the
            // wrong stack; stopping is the only safe outcome.
            eprintln!("fatal: return to netns {}: {e}", self.back.path.display());
            std::process::abort();
        }
    }
}

/// SO_NETNS_COOKIE (asm-generic value, x86_64 and aarch64).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A number naming the calling thread's network namespace, unique for the
/// life of the boot and never reused (unlike the nsfs inode). Useful to key
/// state that belongs to one namespace, such as "rules already installed".
pub fn current_cookie() -> Result<u64> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io(
            "open socket for netns cookie",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "read netns cookie",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// Creates a new network namespace and pins it at `path` (a bind mount of
/// the namespace file), the way `ip netns add` does, so it outlives every
/// process in it and `ip netns list` shows it when `path` is in
/// `/run/netns`. The namespace is made on a short-lived thread: unshare
/// moves only that thread, and the caller's thread never changes namespace.
/// An already pinned `path` is left as it is (idempotent).
pub fn pin_new(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::io("netns path", std::io::ErrorKind::InvalidInput.into()))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    make_shared_mount(dir)?;
    if is_pinned(path) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let target = path.to_path_buf();
    let pinned = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("unshare the network namespace", e.into()))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::io(format!("pin netns at {}", target.display()), e.into()))
    })
    .join()
    .unwrap_or_else(|_| Err(Error::io("pin netns", std::io::ErrorKind::Other.into())));
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// Unpins and removes a namespace made by [`pin_new`]. The namespace itself
/// goes away once no process and no other mount holds it. A missing path
/// is not an error.
pub fn unpin(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(Error::io(format!("unmount {}", path.display()), e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// True when `path` is a pinned network namespace (an nsfs mount).
pub fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Makes `dir` a shared mount point (a bind mount of itself if it is not a
/// mount point yet), as `ip netns` does, so pins made here propagate to
/// mount namespaces created later (containerd's shims, `ip netns exec`).
fn make_shared_mount(dir: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let share = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if is_mount_point(dir) {
        return share().map_err(|e| Error::io(format!("share {}", dir.display()), e.into()));
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::io(format!("bind {}", dir.display()), e.into()))?;
    share().map_err(|e| Error::io(format!("share {}", dir.display()), e.into()))
}

/// True when `dir` is itself a mount point in this mount namespace.
fn is_mount_point(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|p| Path::new(p) == canon)
        })
        .unwrap_or(false)
}
