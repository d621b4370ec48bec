//! Reading and writing `/proc/sys` keys. Network keys apply to the network
//! namespace of the calling thread. Writes are skipped when the value is
//! already right, so callers can ensure a setting on every run cheaply.

use std::fs;

use crate::{Error, Result};

/// Reads `key` (e.g. `net/ipv4/ip_forward` or `net.ipv4.ip_forward`).
pub fn get(key: &str) -> Result<String> {
    let path = path(key);
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("read {path}"), e))
}

/// Sets `key` to `value` unless it already has that value.
pub fn ensure(key: &str, value: &str) -> Result<()> {
    if get(key).ok().as_deref() == Some(value) {
        return Ok(());
    }
    let path = path(key);
    fs::write(&path, value).map_err(|e| Error::io(format!("write {value} to {path}"), e))
}

fn path(key: &str) -> String {
    if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }
}
