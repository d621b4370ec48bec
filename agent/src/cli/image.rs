//! `knode image import|pull|ls|rm`: images in the node's containerd
//! namespace. The CLI runs as root on the node and talks to containerd
//! directly (`--containerd-socket`, `--containerd-namespace`), so images
//! can be prepared before the agent starts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::Config;
use runtime::image::{self, Progress, Registries};
use runtime::Runtime;

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import OCI layout tars or docker archives (`docker save`) and unpack them.
    Import {
        #[arg(required = true, value_name = "FILE.tar")]
        files: Vec<PathBuf>,
    },
    /// Pull an image from its registry and unpack it.
    Pull {
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// List images.
    Ls {
        /// Names only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (containerd then frees what no other image uses).
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

pub async fn run(config: &Config, args: ImageArgs) -> Result<ExitCode> {
    let rt = Runtime::connect(&config.containerd_socket, &config.containerd_namespace).await?;
    match args.command {
        ImageCommand::Import { files } => {
            for f in files {
                let bar = Bar::new(format!("import {}", f.display()));
                let result = image::import_archive(&rt, &f, &bar).await;
                bar.finish();
                for img in result? {
                    println!("imported {} ({})", img.name, img.digest);
                }
            }
        }
        ImageCommand::Pull { reference } => {
            let regs = Registries::load(&config.registry_config, &config.insecure_registries)?;
            let bar = Bar::new(format!("pull {reference}"));
            let result =
                image::pull(&rt, &reference, &regs, &image::Keyring::default(), &bar).await;
            bar.finish();
            let img = result?;
            println!("pulled {} ({})", img.name, img.digest);
        }
        ImageCommand::Ls { quiet } => {
            let images = image::list(&rt).await?;
            if quiet {
                for i in images {
                    println!("{}", i.name);
                }
            } else {
                let rows = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            short_digest(&i.digest).to_string(),
                            i.size.map_or("-".into(), human),
                        ]
                    })
                    .collect();
                print!("{}", table(&["NAME", "DIGEST", "SIZE"], rows));
            }
        }
        ImageCommand::Rm { names } => {
            let mut missing = false;
            for n in names {
                if image::remove(&rt, &n).await? {
                    println!("removed {}", image::normalize(&n)?);
                } else {
                    eprintln!("error: image {n}: not found");
                    missing = true;
                }
            }
            if missing {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The first 12 hex digits, as docker shows image IDs.
fn short_digest(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

/// `1.5 MiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Columns padded to the widest cell plus three spaces, like kubectl.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Progress on stderr: on a terminal one line redrawn in place (layers
/// done, bytes done of total); otherwise one line per finished layer.
struct Bar {
    label: String,
    tty: bool,
    state: Mutex<BarState>,
}

#[derive(Default)]
struct BarState {
    layers: BTreeMap<String, (u64, u64)>,
    reported: Vec<String>,
    last_draw: Option<Instant>,
    drawn_width: usize,
}

impl Bar {
    fn new(label: String) -> Bar {
        Bar {
            label,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(BarState::default()),
        }
    }

    /// Ends the redrawn line.
    fn finish(&self) {
        let Ok(s) = self.state.lock() else { return };
        if self.tty && s.drawn_width > 0 {
            eprintln!();
        }
    }
}

impl Progress for Bar {
    fn layer(&self, digest: &str, done: u64, total: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.layers.insert(digest.to_string(), (done, total));
        let complete = done >= total;
        if !self.tty {
            if complete && !s.reported.iter().any(|d| d == digest) {
                s.reported.push(digest.to_string());
                eprintln!(
                    "{}: layer {} {} done",
                    self.label,
                    short_digest(digest),
                    human(total)
                );
            }
            return;
        }
        let now = Instant::now();
        if !complete
            && s.last_draw
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        s.last_draw = Some(now);
        let n = s.layers.len();
        let finished = s.layers.values().filter(|(d, t)| d >= t).count();
        let (d, t) = s
            .layers
            .values()
            .fold((0, 0), |(a, b), (d, t)| (a + d, b + t));
        let line = format!(
            "{}: {finished}/{n} layers, {} / {}",
            self.label,
            human(d),
            human(t)
        );
        let pad = s.drawn_width.saturating_sub(line.len());
        s.drawn_width = line.len();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{}", " ".repeat(pad));
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_digests_and_tables() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 20), "5.0 MiB");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest(""), "");
        let t = table(
            &["NAME", "DIGEST", "SIZE"],
            vec![vec![
                "docker.io/library/busybox:1".into(),
                "0123456789ab".into(),
                "1.0 MiB".into(),
            ]],
        );
        assert_eq!(
            t,
            "NAME                          DIGEST         SIZE\n\
             docker.io/library/busybox:1   0123456789ab   1.0 MiB\n"
        );
    }
}
