//! The readiness benchmark's report: percentiles of toggle -> probe run,
//! toggle -> traffic and probe run -> traffic, each way; the issue's
//! target; the stdout table, `readiness.json` and `readiness.svg`. Pure
//! formatting of measured values.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{Dir, Flip, Results, AFTER, FLIPS, PERIOD, POLL};
use crate::report::{emit, grouped_bars, host_facts, with_targets, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Target: probe run passed -> first connection through, p99, in ms.
pub const MAX_BEYOND_P99_MS: f64 = 100.0;

/// The three series of one direction: (toggle -> probe run, toggle ->
/// traffic, probe run -> traffic).
fn series(r: &Results, dir: Dir) -> [Option<Summary>; 3] {
    let of = |f: &dyn Fn(&Flip) -> Duration| {
        Summary::of(
            &r.flips
                .iter()
                .filter(|x| x.dir == dir)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    [of(&|f| f.probe), of(&|f| f.traffic), of(&|f| f.beyond())]
}

const NAMES: [&str; 3] = [
    "toggle_to_probe_run",
    "toggle_to_traffic",
    "probe_run_to_traffic",
];

fn summary_json(s: &Option<Summary>) -> Value {
    match s {
        Some(s) => json!({
            "n": s.n, "p50_ms": round3(s.p50), "p99_ms": round3(s.p99),
            "mean_ms": round3(s.mean), "min_ms": round3(s.min), "max_ms": round3(s.max),
        }),
        None => Value::Null,
    }
}

fn through_after(r: &Results) -> usize {
    r.flips.iter().map(|f| f.through_after).sum()
}

/// Builds the JSON document of a run.
pub fn document(r: &Results) -> Value {
    let mut doc = host_facts();
    doc["benchmark"] = json!("readiness");
    doc["load_average"] = json!({"before": r.load_before, "after": r.load_after});
    doc["method"] = json!(format!(
        "one node (private containerd, a host network namespace, `knode agent` with the nftables \
         proxy, the default); a ClusterIP Service (port 80 -> 8080) over one busybox `httpd` pod \
         whose exec readiness probe (period {} s, timeout {} s, thresholds 1) passes while /tmp/ready exists and \
         appends a byte to /tmp/passes or /tmp/fails on each run. The toggle makes or removes \
         /tmp/ready through /proc/PID/root (an exact instant); the bench then stats the run \
         files and connects from a client network namespace (a veth into the node's, a route to \
         the ClusterIP only; the node namespace's icmp_ratelimit 0, so every refusal arrives) to ClusterIP:80 every {} ms (50 ms connect timeout; a connection made \
         is reset at once). Up: toggle -> first connection through; down: toggle -> first \
         refused (a connect that timed out ends nothing), then {} ms more of connects, any that get through counted. 'probe run -> \
         traffic' starts when the run that saw the toggle was seen (its byte, polled every {} ms, \
         written at the end of the probe's command), so it is everything after the probe: the \
         exec's exit through containerd, the status write, the EndpointSlice, the proxy. Going \
         down, connects are tried every 10 ms until the failed run is seen. {} flips each way, \
         alternating, toggles spread over the probe's phase",
        PERIOD.as_secs(),
        super::PROBE_TIMEOUT_S,
        POLL.as_millis(),
        AFTER.as_millis(),
        POLL.as_millis(),
        FLIPS
    ));
    doc["parameters"] = json!({
        "flips_per_direction": FLIPS, "probe_period_s": PERIOD.as_secs(),
        "poll_ms": POLL.as_millis() as u64, "connect_attempts": r.attempts,
    });
    for (dir, key) in [(Dir::Up, "ready"), (Dir::Down, "not_ready")] {
        let s = series(r, dir);
        let mut v = json!({});
        for (name, x) in NAMES.iter().zip(s.iter()) {
            v[*name] = summary_json(x);
        }
        doc[key] = v;
    }
    doc["not_ready"]["connections_through_after_first_refusal"] = json!(through_after(r));
    let beyond = series(r, Dir::Up)[2].map(|s| s.p99);
    with_targets(
        doc,
        vec![
            json!({
                "what": format!(
                    "readiness probe passed -> first connection through the ClusterIP, p99 <= \
                     {MAX_BEYOND_P99_MS} ms beyond the probe"
                ),
                "max_ms": MAX_BEYOND_P99_MS, "p99_ms": beyond.map(round3),
                "met": beyond.is_some_and(|x| x <= MAX_BEYOND_P99_MS),
            }),
            json!({
                "what": "no new connection gets through once one was refused (not ready)",
                "through": through_after(r), "met": through_after(r) == 0,
            }),
        ],
    )
}

/// Prints the table, writes `readiness.json` and `readiness.svg`.
pub fn write(opts: &Opts, r: &Results) -> Result<()> {
    let doc = document(r);
    emit(
        &opts.out,
        "readiness",
        &table(r, &doc),
        &doc,
        &chart(r, &doc),
    )
}

fn table(r: &Results, doc: &Value) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nReadiness -> ClusterIP traffic (ms), probe period {} s, load {} -> {}",
        PERIOD.as_secs(),
        r.load_before,
        r.load_after
    );
    let _ = writeln!(
        t,
        "{:<34}{:>5}{:>9}{:>9}{:>9}{:>9}",
        "", "n", "p50", "p99", "min", "max"
    );
    for (dir, label) in [(Dir::Up, "ready"), (Dir::Down, "not ready")] {
        for (name, s) in NAMES.iter().zip(series(r, dir)) {
            if let Some(s) = s {
                let _ = writeln!(
                    t,
                    "{:<34}{:>5}{:>9.1}{:>9.1}{:>9.1}{:>9.1}",
                    format!("{label}: {}", name.replace('_', " ")),
                    s.n,
                    s.p50,
                    s.p99,
                    s.min,
                    s.max
                );
            }
        }
    }
    let _ = writeln!(
        t,
        "connections through after the first refusal: {}",
        through_after(r)
    );
    for tg in doc["targets"].as_array().into_iter().flatten() {
        let met = if tg["met"] == true { "MET" } else { "NOT MET" };
        let _ = writeln!(
            t,
            "target: {}: {met}",
            tg["what"].as_str().unwrap_or_default()
        );
    }
    t
}

fn chart(r: &Results, doc: &Value) -> String {
    let mut groups = Vec::new();
    for (dir, label) in [(Dir::Up, "ready"), (Dir::Down, "not ready")] {
        let [_, raw, beyond] = series(r, dir);
        for (what, s) in [("toggle -> traffic", raw), ("probe run -> traffic", beyond)] {
            if let Some(s) = s {
                groups.push(Group {
                    label: format!("{label}: {what}"),
                    values: vec![round3(s.p50), round3(s.p99)],
                });
            }
        }
    }
    grouped_bars(
        "Readiness -> ClusterIP traffic (nftables proxy)",
        &[
            format!(
                "{FLIPS} flips each way, probe period {} s; probe run -> traffic p99 target <= \
                 {MAX_BEYOND_P99_MS} ms ({})",
                PERIOD.as_secs(),
                if doc["targets"][0]["met"] == true {
                    "met"
                } else {
                    "not met"
                }
            ),
            format!(
                "{}; kernel {}; load {} -> {}",
                doc["date"].as_str().unwrap_or_default(),
                doc["kernel"].as_str().unwrap_or_default(),
                r.load_before,
                r.load_after
            ),
        ],
        "milliseconds (lower is better)",
        &[
            Series {
                label: "p50",
                color: "#2a7ab9",
            },
            Series {
                label: "p99",
                color: "#c0504d",
            },
        ],
        &groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_the_ready_direction_and_leaks() {
        let ms = Duration::from_millis;
        let f = |dir, probe, traffic, through_after| Flip {
            dir,
            probe: ms(probe),
            traffic: ms(traffic),
            through_after,
        };
        let r = Results {
            flips: vec![f(Dir::Up, 500, 540, 0), f(Dir::Down, 300, 900, 0)],
            load_before: "1.0 1.0 1.0".into(),
            load_after: "1.0 1.0 1.0".into(),
            attempts: 10,
        };
        let d = document(&r);
        assert_eq!(d["targets"][0]["p99_ms"], 40.0);
        assert_eq!(d["met"], true);
        assert_eq!(d["not_ready"]["probe_run_to_traffic"]["p50_ms"], 600.0);
        let mut bad = r;
        bad.flips[1].through_after = 2;
        assert_eq!(document(&bad)["met"], false);
    }
}
