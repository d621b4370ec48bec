//! The reservation store, byte-compatible with the reference host-local
//! plugin: `<dataDir>/<network>/<ip>` holding `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.<N>`, and `flock(LOCK_EX)` on `<dir>/lock` for the life
//! of a [`DiskStore`]. It knows nothing about ranges or allocation order, and
//! never writes a reservation over an existing file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use crate::skel::{CniError, Code, Context, Result};

/// Prefix of the per-range-set "last handed out" files.
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// The lock file inside the network directory (the reference locks the same file).
pub const LOCK_FILE: &str = "lock";
/// Separates container ID and interface name in a reservation file.
const LINE_BREAK: &str = "\r\n";
/// Reservation files are tiny; anything longer is not ours to interpret.
const MAX_RESERVATION_BYTES: u64 = 4096;

/// Who holds a reservation, as read from its file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The container ID (surrounding whitespace trimmed, as the reference does).
    pub container_id: String,
    /// The interface name; `None` for files written by old reference
    /// versions, which hold only the container ID.
    pub ifname: Option<String>,
}

impl Owner {
    /// The owner of a reservation made now for `(container_id, ifname)`.
    pub fn new(container_id: &str, ifname: &str) -> Owner {
        Owner {
            container_id: container_id.trim().to_string(),
            ifname: Some(ifname.to_string()),
        }
    }

    /// Parses a reservation file's content (never fails: unknown content
    /// becomes an owner no attachment matches unless its ID is that text).
    pub fn parse(content: &[u8]) -> Owner {
        let text = String::from_utf8_lossy(content);
        let text = text.trim();
        match text.split_once(LINE_BREAK) {
            Some((id, ifname)) => Owner {
                container_id: id.to_string(),
                ifname: Some(ifname.to_string()),
            },
            None => Owner {
                container_id: text.to_string(),
                ifname: None,
            },
        }
    }

    /// The file content in the reference's current format.
    pub fn to_content(&self) -> String {
        match &self.ifname {
            Some(ifname) => format!("{}{LINE_BREAK}{ifname}", self.container_id),
            None => self.container_id.clone(),
        }
    }

    /// True when this reservation belongs to `(container_id, ifname)`; an
    /// old-format owner (no ifname) matches any interface of its container.
    pub fn matches(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id.trim()
            && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

/// The operations allocation needs from a store, so the policy can be
/// tested against a fake. Implementations are used under their own lock.
pub trait Store {
    /// Reserves `ip` for `owner` unless a file for it exists (`Ok(false)`),
    /// and records it as range set `set`'s last reserved address.
    fn reserve(&mut self, ip: IpAddr, owner: &Owner, set: usize) -> Result<bool>;
    /// Removes the reservation of `ip`; `Ok(false)` when there was none.
    fn release(&mut self, ip: IpAddr) -> Result<bool>;
    /// Who holds `ip`, if anyone.
    fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>>;
    /// The last address reserved from range set `set`, if recorded and readable.
    fn last_reserved(&mut self, set: usize) -> Option<IpAddr>;
    /// Every reservation with its owner (reads every reservation file).
    fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>>;
    /// Every reserved address, from file names only.
    fn reserved_ips(&mut self) -> Result<Vec<IpAddr>>;
}

/// The reference-format store of one network, locked while it lives.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    // Held for its flock; closing the file releases it.
    _lock: Flock<File>,
}

impl DiskStore {
    /// Creates `<data_dir>/<network>` if needed and locks it.
    pub fn open(data_dir: &Path, network: &str) -> Result<DiskStore> {
        let dir = data_dir.join(network);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .cni(Code::Store, || {
                format!("create IPAM data dir {}", dir.display())
            })?;
        Self::lock(dir)
    }

    /// Locks `<data_dir>/<network>` when it exists; `None` when it does not
    /// (nothing was ever reserved there).
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<DiskStore>> {
        let dir = data_dir.join(network);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Self::lock(dir).map(Some),
            Ok(_) => Err(CniError::new(
                Code::Store,
                format!("IPAM data dir {} is not a directory", dir.display()),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::new(
                Code::Store,
                format!("stat IPAM data dir {}", dir.display()),
            )
            .with_details(e)),
        }
    }

    /// The network directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(dir: PathBuf) -> Result<DiskStore> {
        let lock = crate::lockfile::lock_exclusive(&dir.join(LOCK_FILE), Code::Store)?;
        Ok(DiskStore { dir, _lock: lock })
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn read_owner(path: &Path) -> std::io::Result<Owner> {
        let mut buf = Vec::new();
        File::open(path)?
            .take(MAX_RESERVATION_BYTES)
            .read_to_end(&mut buf)?;
        Ok(Owner::parse(&buf))
    }

    /// The reservation files: regular files named by an address in its
    /// canonical text form (so `lock` and `last_reserved_ip.N` never count).
    fn entries(&self) -> Result<Vec<(IpAddr, PathBuf)>> {
        let read =
            fs::read_dir(&self.dir).cni(Code::Store, || format!("list {}", self.dir.display()))?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.cni(Code::Store, || format!("list {}", self.dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            if ip.to_string() != name || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            out.push((ip, entry.path()));
        }
        out.sort();
        Ok(out)
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, ip: IpAddr, owner: &Owner, set: usize) -> Result<bool> {
        let path = self.ip_path(ip);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(
                    CniError::new(Code::Store, format!("reserve {}", path.display()))
                        .with_details(e),
                )
            }
        };
        let written = file.write_all(owner.to_content().as_bytes());
        drop(file);
        let last = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        let recorded = written
            .map_err(|e| (format!("write {}", path.display()), e))
            .and_then(|_| {
                fs::write(&last, ip.to_string())
                    .map_err(|e| (format!("write {}", last.display()), e))
            });
        if let Err((what, e)) = recorded {
            // Do not leave a reservation the caller will not know about.
            let _ = fs::remove_file(&path);
            return Err(CniError::new(Code::Store, what).with_details(e));
        }
        Ok(true)
    }

    fn release(&mut self, ip: IpAddr) -> Result<bool> {
        let path = self.ip_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(
                CniError::new(Code::Store, format!("release {}", path.display())).with_details(e),
            ),
        }
    }

    fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>> {
        let path = self.ip_path(ip);
        match Self::read_owner(&path) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(CniError::new(Code::Store, format!("read {}", path.display())).with_details(e))
            }
        }
    }

    fn last_reserved(&mut self, set: usize) -> Option<IpAddr> {
        // Unreadable or garbled: lose round-robin once, as the reference does.
        let text =
            fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"))).ok()?;
        text.trim()
            .parse::<IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical())
    }

    fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>> {
        let mut out = Vec::new();
        for (ip, path) in self.entries()? {
            match Self::read_owner(&path) {
                Ok(o) => out.push((ip, o)),
                // Released between listing and reading: no longer a reservation.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(
                        CniError::new(Code::Store, format!("read {}", path.display()))
                            .with_details(e),
                    )
                }
            }
        }
        Ok(out)
    }

    fn reserved_ips(&mut self) -> Result<Vec<IpAddr>> {
        Ok(self.entries()?.into_iter().map(|(ip, _)| ip).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::errno::Errno;
    use nix::fcntl::FlockArg;

    use super::*;

    /// A fresh, unique directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let p =
                std::env::temp_dir().join(format!("knode-ipam-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn owner_formats_match_the_reference() {
        let o = Owner::new("abc", "eth0");
        assert_eq!(o.to_content(), "abc\r\neth0");
        assert_eq!(Owner::parse(b"abc\r\neth0"), o);
        assert_eq!(Owner::parse(b" abc\r\neth0\n"), o);
        let old = Owner::parse(b"abc\n");
        assert_eq!(
            old,
            Owner {
                container_id: "abc".into(),
                ifname: None
            }
        );
        assert!(
            old.matches("abc", "eth0") && old.matches("abc", "net1") && !old.matches("abd", "eth0")
        );
        assert!(o.matches("abc", "eth0") && !o.matches("abc", "eth1"));
    }

    #[test]
    fn disk_layout_is_the_reference_layout() {
        let tmp = TempDir::new("layout");
        let mut s = DiskStore::open(&tmp.0, "net").expect("open");
        assert!(s
            .reserve(ip("10.1.0.2"), &Owner::new("c1", "eth0"), 0)
            .expect("reserve"));
        assert!(s
            .reserve(ip("fd00::a"), &Owner::new("c1", "eth0"), 1)
            .expect("reserve"));
        assert!(!s
            .reserve(ip("10.1.0.2"), &Owner::new("c2", "eth0"), 0)
            .expect("taken"));
        let dir = tmp.0.join("net");
        assert_eq!(
            fs::read_to_string(dir.join("10.1.0.2")).expect("ip file"),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join("fd00::a")).expect("ip6 file"),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.0")).expect("last"),
            "10.1.0.2"
        );
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.1")).expect("last"),
            "fd00::a"
        );
        assert!(dir.join("lock").is_file());
        assert_eq!(s.last_reserved(0), Some(ip("10.1.0.2")));
        assert_eq!(s.last_reserved(7), None);
        fs::write(dir.join("not-an-ip"), "c1\r\neth0").expect("write");
        fs::write(dir.join("010.1.0.9"), "c1\r\neth0").expect("write");
        assert_eq!(
            s.reserved_ips().expect("ips"),
            vec![ip("10.1.0.2"), ip("fd00::a")]
        );
        assert_eq!(s.list().expect("list").len(), 2);
        assert_eq!(
            s.owner(ip("10.1.0.2")).expect("owner"),
            Some(Owner::new("c1", "eth0"))
        );
        assert!(s.release(ip("10.1.0.2")).expect("release"));
        assert!(!s.release(ip("10.1.0.2")).expect("release again"));
        assert_eq!(s.owner(ip("10.1.0.2")).expect("owner"), None);
        assert_eq!(s.dir(), dir.as_path());
    }

    #[test]
    fn lock_is_held_for_the_life_of_the_store() {
        let tmp = TempDir::new("lock");
        let store = DiskStore::open(&tmp.0, "net").expect("open");
        let try_lock = || {
            let f = File::open(tmp.0.join("net").join(LOCK_FILE)).expect("open lock");
            Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e)
        };
        assert_eq!(
            try_lock().err(),
            Some(Errno::EWOULDBLOCK),
            "a second open file description must wait"
        );
        drop(store);
        assert!(try_lock().is_ok());
    }

    #[test]
    fn open_existing_does_not_create() {
        let tmp = TempDir::new("existing");
        assert!(DiskStore::open_existing(&tmp.0, "nothing")
            .expect("ok")
            .is_none());
        assert!(!tmp.0.join("nothing").exists());
        fs::write(tmp.0.join("file"), "").expect("write");
        let e = DiskStore::open_existing(&tmp.0, "file").expect_err("not a dir");
        assert_eq!(e.code, Code::Store);
    }
}
