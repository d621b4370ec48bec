//! Our own DNS load generator, the cross-check of dnsperf's figures: a few
//! threads pinned to one CPU, each keeping a fixed number of UDP queries
//! outstanding to one server (closed loop), timing every answer. It builds
//! and reads only the DNS header and question it needs; it checks that every
//! answer is NOERROR with at least one record.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One load run's outcome.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Answers received per second.
    pub qps: f64,
    /// Latency of every answer.
    pub latencies: Vec<Duration>,
    /// Answers that were not NOERROR with records.
    pub bad: u64,
    /// Queries never answered (given up after `LOST_AFTER`).
    pub lost: u64,
}

/// A query not answered within this long counts as lost and is replaced.
const LOST_AFTER: Duration = Duration::from_millis(200);

/// A DNS query (RD set, no EDNS) for `name`'s A record, with id 0.
pub fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; sched_setaffinity(0) affects only the calling thread and
    // reads the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Runs `threads` × `depth` outstanding queries over `names` (cycled) to
/// `server` for `duration`, every thread pinned to `cpu`. Call it from a
/// thread already in the server's network namespace: the threads it
/// starts inherit it.
pub fn run(
    server: SocketAddr,
    names: &[String],
    threads: usize,
    depth: usize,
    duration: Duration,
    cpu: usize,
) -> Result<Outcome> {
    let packets: Vec<Vec<u8>> = names.iter().map(|n| query(n)).collect();
    let start = Instant::now();
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let packets = &packets;
                s.spawn(move || {
                    pin_to(cpu)?;
                    one_client(server, packets, t, depth, start + duration)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("load thread panicked"))?
            })
            .collect::<Result<Vec<Outcome>>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Outcome::default();
    for p in parts {
        all.latencies.extend(p.latencies);
        all.bad += p.bad;
        all.lost += p.lost;
    }
    all.qps = all.latencies.len() as f64 / elapsed;
    Ok(all)
}

/// One socket keeping `depth` queries in flight until `until`.
fn one_client(
    server: SocketAddr,
    packets: &[Vec<u8>],
    offset: usize,
    depth: usize,
    until: Instant,
) -> Result<Outcome> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("bind the load socket")?;
    sock.connect(server)
        .with_context(|| format!("connect to {server}"))?;
    sock.set_read_timeout(Some(LOST_AFTER / 4))?;
    // Sent time per id; ids are slots 0..depth, reused as answers come.
    let mut sent: Vec<Option<Instant>> = vec![None; depth];
    let mut generation = vec![0u16; depth];
    let mut next = offset * 7919;
    let mut out = Outcome::default();
    let mut buf = [0u8; 4096];
    let mut send = |slot: usize, sent: &mut [Option<Instant>], gen: &mut [u16]| -> Result<()> {
        let mut p = packets[next % packets.len()].clone();
        next += 1;
        gen[slot] = gen[slot].wrapping_add(1);
        // id = generation (high 6 bits) and slot (low 10 bits).
        let id = (gen[slot] << 10) | slot as u16;
        p[..2].copy_from_slice(&id.to_be_bytes());
        sent[slot] = Some(Instant::now());
        sock.send(&p).context("send a query")?;
        Ok(())
    };
    assert!(depth <= 1024, "ids hold 10 bits of slot");
    for slot in 0..depth {
        send(slot, &mut sent, &mut generation)?;
    }
    while Instant::now() < until {
        match sock.recv(&mut buf) {
            Ok(n) if n >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let slot = usize::from(id & 0x3ff);
                let (Some(at), true) = (
                    sent.get(slot).copied().flatten(),
                    slot < depth && (generation[slot] << 10) | slot as u16 == id,
                ) else {
                    continue; // late answer to a query given up on
                };
                out.latencies.push(at.elapsed());
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                if rcode != 0 || answers == 0 {
                    out.bad += 1;
                }
                send(slot, &mut sent, &mut generation)?;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receive an answer"),
        }
        let now = Instant::now();
        for slot in 0..depth {
            if sent[slot].is_some_and(|at| now.duration_since(at) > LOST_AFTER) {
                out.lost += 1;
                send(slot, &mut sent, &mut generation)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_a_header_and_one_question() {
        let q = query("a.b.");
        assert_eq!(
            q,
            [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 1, b'b', 0, 0, 1, 0, 1]
        );
    }
}
