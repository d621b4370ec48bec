//! Helpers shared by the probe handlers' tests.

use std::time::{Duration, Instant};

/// Waits up to a second for every TCP socket (v4 or v6) to or from
/// `port`, but its listener, to be gone, and returns the states
/// (`/proc/net/tcp` codes) of those left: a connection closed with an RST
/// leaves none, one closed with a FIN leaves a TIME_WAIT (`06`) for a
/// minute.
pub async fn sockets_left(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let hex = format!(":{port:04X}");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 3 && f[3] != LISTEN && (f[1].ends_with(&hex) || f[2].ends_with(&hex)))
                    .then(|| f[3].to_string())
            })
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
