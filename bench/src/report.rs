//! Output shared by every benchmark: facts about the machine a result was
//! measured on, writing result files, and a hand-written grouped-bar SVG
//! chart. It formats what it is given; it measures nothing itself.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Date (UTC), kernel and iptables version, as a JSON object to merge into a result.
pub fn host_facts() -> Value {
    json!({
        "date": first_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "kernel": first_line(&["uname", "-r"]),
        "iptables": first_line(&["iptables", "--version"]),
    })
}

/// The first line a read-only command prints, or "unknown".
pub fn first_line(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes `text` to `dir/name`, creating `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    eprintln!("wrote {}", p.display());
    Ok(())
}

/// `doc` with its `targets` and `met` (every target met).
pub fn with_targets(mut doc: Value, targets: Vec<Value>) -> Value {
    doc["met"] = Value::Bool(targets.iter().all(|t| t["met"] == true));
    doc["targets"] = Value::Array(targets);
    doc
}

/// Prints `table`, then writes `<name>.json` (pretty) and `<name>.svg` to `dir`.
pub fn emit(dir: &Path, name: &str, table: &str, doc: &Value, svg: &str) -> Result<()> {
    print!("{table}");
    write_file(
        dir,
        &format!("{name}.json"),
        &format!("{}\n", serde_json::to_string_pretty(doc)?),
    )?;
    write_file(dir, &format!("{name}.svg"), svg)
}

/// One series of a bar chart: its legend label and colour.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
}

/// One group of bars: its label under the axis and one value per series.
pub struct Group {
    pub label: String,
    pub values: Vec<f64>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 100.0;
const BOTTOM: f64 = 50.0;

/// A grouped bar chart (linear y axis from 0, each bar labelled with its
/// value) under a title, up to two subtitle lines and a one-row legend.
pub fn grouped_bars(
    title: &str,
    subtitles: &[String],
    unit: &str,
    series: &[Series],
    groups: &[Group],
) -> String {
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().copied())
        .fold(0.0_f64, f64::max);
    let (step, ticks) = axis(max);
    let top = step * ticks as f64;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let y = |v: f64| TOP + ph - v / top * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"##,
        esc(title)
    );
    for (i, line) in subtitles.iter().take(2).enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" font-size="12" fill="#555">{}</text>"##,
            44 + 16 * i,
            esc(line)
        );
    }
    for t in 0..=ticks {
        let v = step * t as f64;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            fmt_tick(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="16" y="{:.1}" font-size="12" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"##,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(unit)
    );
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.7 / series.len().max(1) as f64;
    for (gi, g) in groups.iter().enumerate() {
        let gx = LEFT + gw * gi as f64 + gw * 0.15;
        for (si, (v, ser)) in g.values.iter().zip(series).enumerate() {
            let x = gx + bw * si as f64;
            let yy = y(*v);
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"##,
                bw - 2.0,
                TOP + ph - yy,
                ser.color,
                esc(ser.label)
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{v:.3}</text>"##,
                x + (bw - 2.0) / 2.0,
                yy - 4.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
            LEFT + gw * (gi as f64 + 0.5),
            TOP + ph + 20.0,
            esc(&g.label)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + ph,
        W - RIGHT,
        TOP + ph
    );
    let mut lx = LEFT;
    for ser in series {
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{}" font-size="12">{}</text>"##,
            TOP - 24.0,
            ser.color,
            lx + 18.0,
            TOP - 14.0,
            esc(ser.label)
        );
        // About 7 px per character at this size, plus the swatch and a gap.
        lx += 18.0 + 7.0 * ser.label.chars().count() as f64 + 24.0;
    }
    s.push_str("</svg>\n");
    s
}

/// A tick step of 1, 2 or 5 × 10^k and how many ticks cover `max` (about five).
fn axis(max: f64) -> (f64, u32) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 1);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil().max(1.0) as u32)
}

fn fmt_tick(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_covers_the_maximum_with_round_steps() {
        assert_eq!(axis(73.0), (20.0, 4));
        assert_eq!(axis(10.0), (2.0, 5));
        assert_eq!(axis(0.0), (1.0, 1));
        let (step, n) = axis(0.37);
        assert!(step * f64::from(n) >= 0.37);
    }

    #[test]
    fn chart_has_a_bar_and_label_per_value() {
        let svg = grouped_bars(
            "t <1>",
            &["s".into()],
            "ms",
            &[
                Series {
                    label: "a",
                    color: "#000",
                },
                Series {
                    label: "b",
                    color: "#fff",
                },
            ],
            &[Group {
                label: "ADD p50".into(),
                values: vec![1.5, 30.25],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains(">1.500</text>") && svg.contains(">30.250</text>"));
        assert_eq!(svg.matches("<title>").count(), 2);
    }
}
