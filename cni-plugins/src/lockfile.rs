//! Exclusive file locks (flock) shared by the plugins: the IPAM store and
//! the ipMasq setup both serialize concurrent plugin processes this way.
//! flock belongs to the open file description, so every caller opens the
//! file itself and threads of one process exclude each other too.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::skel::{CniError, Code, Context, Result};

/// An exclusive lock, released when dropped.
pub type FileLock = Flock<File>;

/// Opens (creating, mode 0644) and exclusively locks `path`, waiting for
/// other holders. Failures carry `code`.
pub fn lock_exclusive(path: &Path, code: Code) -> Result<FileLock> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .cni(code, || format!("open lock {}", path.display()))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => {
                return Err(CniError::new(code, format!("lock {}", path.display())).with_details(e))
            }
        }
    }
}
