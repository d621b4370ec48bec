//! The CNI error type: every failure a plugin reports becomes the spec's
//! error JSON (`{"cniVersion","code","msg","details"}`) with a well-known code.
//! Codes below 100 are the spec's; 100 and above are ours (see `docs/cni.md`).

use std::fmt;

use serde::Serialize;

/// Spec and plugin-specific error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's cniVersion is not one we support, or forbids the command.
    IncompatibleVersion,
    /// 2: a field in the network config is not supported.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a required environment variable is missing or invalid.
    InvalidEnv,
    /// 5: an I/O failure.
    Io,
    /// 6: stdin could not be decoded.
    Decode,
    /// 7: the network config is invalid.
    InvalidConfig,
    /// 11: a transient failure; the runtime should try again later.
    TryAgainLater,
    /// 50: STATUS — the plugin cannot serve ADD now.
    NotAvailable,
    /// 51: STATUS — limited connectivity.
    LimitedConnectivity,
    /// 100: no free address is left in a range set.
    RangeExhausted,
    /// 101: a netlink request failed.
    Netlink,
    /// 102: programming iptables failed.
    Iptables,
    /// 103: the IPAM data store failed.
    Store,
    /// 104: a delegated IPAM plugin failed or could not be run.
    Ipam,
    /// 105: the state found does not match `prevResult` (CHECK).
    CheckFailed,
}

impl Code {
    /// The number put in the error JSON.
    pub fn as_u32(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnv => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::LimitedConnectivity => 51,
            Code::RangeExhausted => 100,
            Code::Netlink => 101,
            Code::Iptables => 102,
            Code::Store => 103,
            Code::Ipam => 104,
            Code::CheckFailed => 105,
        }
    }
}

/// A CNI error: a code, a message that says what failed, and optional details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

/// Result type of every plugin command.
pub type Result<T> = std::result::Result<T, CniError>;

impl CniError {
    /// An error with `code` and message `msg`.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the lower-level cause as details.
    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The spec's error JSON for this error, in config version `version`.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version,
            code: self.code.as_u32(),
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code.as_u32()))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Wraps a lower-level error with a code and a message saying what was done.
pub trait Context<T> {
    /// Maps the error to a `CniError` with `code` and `msg`, keeping the cause as details.
    fn cni(self, code: Code, msg: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn cni(self, code: Code, msg: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CniError::new(code, msg()).with_details(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_code_msg_and_details() {
        let e = CniError::new(Code::InvalidConfig, "bridge: mtu must be positive")
            .with_details("got -1");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["msg"], "bridge: mtu must be positive");
        assert_eq!(v["details"], "got -1");
    }
}
