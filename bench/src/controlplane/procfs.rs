//! What the benchmark reads from /proc about processes it started (and
//! itself): resident memory from `status`, CPU time from `stat`. Parsing
//! is pure and tested with plain text; reading touches nothing else.

use std::time::Duration;

use anyhow::{Context, Result};

/// The unit of CPU times in /proc (USER_HZ, 100 on every Linux port we run on).
const TICKS_PER_SEC: u64 = 100;

/// A process's resident memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    /// Resident now (VmRSS).
    pub rss_kib: u64,
    /// Resident at its peak so far (VmHWM).
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM from the text of /proc/PID/status.
pub fn parse_status(text: &str) -> Option<Mem> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let rest = line[name.len()..].trim_start().strip_prefix(':')?;
        let mut it = rest.split_whitespace();
        let n: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(n),
            Some(_) => None,
        }
    };
    Some(Mem {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
    })
}

/// The memory of a running process.
pub fn mem(pid: u32) -> Result<Mem> {
    let p = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&p).with_context(|| format!("read {p}"))?;
    parse_status(&text).with_context(|| format!("{p}: no VmRSS/VmHWM"))
}

/// CPU time (user + system) from the text of /proc/PID/stat: the
/// process's own, and that of the children it has waited for.
pub fn parse_stat(text: &str) -> Option<(Duration, Duration)> {
    // The command name may hold spaces and parentheses: fields are
    // counted from the last ')'. After it, field 3 (state) comes first.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    let ticks = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SEC);
    let own = num(14)? + num(15)?;
    let children = num(16)? + num(17)?;
    Some((ticks(own), ticks(children)))
}

/// (own, waited-for children's) CPU time of a process; `None` is this one.
pub fn cpu(pid: Option<u32>) -> Result<(Duration, Duration)> {
    let p = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&p).with_context(|| format!("read {p}"))?;
    parse_stat(&text).with_context(|| format!("{p}: cannot parse the CPU times"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tknode\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  812344 kB\nVmSize:\t  746808 kB\nVmHWM:\t   41236 kB\n\
        VmRSS:\t   39900 kB\nRssAnon:\t   20000 kB\nThreads:\t4\n";

    #[test]
    fn reads_rss_and_high_water_mark() {
        assert_eq!(
            parse_status(STATUS),
            Some(Mem {
                rss_kib: 39900,
                hwm_kib: 41236
            })
        );
    }

    #[test]
    fn missing_or_odd_memory_fields_are_none() {
        // A kernel thread has no Vm* lines.
        assert_eq!(parse_status("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_status("VmRSS:\t12 MB\nVmHWM:\t13 kB\n"), None);
        assert_eq!(parse_status("VmRSS:\tx kB\nVmHWM:\t13 kB\n"), None);
        // RssAnon must not be taken for VmRSS.
        assert_eq!(parse_status("RssAnon:\t5 kB\nVmHWM:\t13 kB\n"), None);
    }

    #[test]
    fn reads_cpu_times_after_the_command_name() {
        // utime 250, stime 50, cutime 7, cstime 3 (ticks); a name with ") (".
        let stat =
            "4242 (we) (ird) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 7 3 20 0 4 0 1000 0 0";
        assert_eq!(
            parse_stat(stat),
            Some((Duration::from_millis(3000), Duration::from_millis(100)))
        );
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }
}
