//! `knode log-writer PATH`: the logging binary containerd's shim starts for
//! every container task (binary logging URI). The shim passes the
//! container's stdout on fd 3 and stderr on fd 4, and waits until fd 5 is
//! closed before it starts the container. We append both streams to PATH in
//! the CRI format, interleaved as they arrive, and exit once both end (the
//! shim closes them when the task is deleted, then sends SIGTERM). Runs
//! outside the agent, so output survives an agent restart; it reads no
//! config and starts no async runtime, so it cannot fail for their sake.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use jiff::Timestamp;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::cri::{self, Splitter, Stream};

/// The descriptors the shim hands over (containerd `pkg/process/io.go`,
/// `NewBinaryIO`: `cmd.ExtraFiles = [stdout, stderr, ready]`).
const STDOUT_FD: i32 = 3;
const STDERR_FD: i32 = 4;
const READY_FD: i32 = 5;

/// When a log file is rotated (kubelet's `containerLogMaxSize` and
/// `containerLogMaxFiles`): before a write would take it past `max_size`
/// bytes it becomes `N.log.<YYYYMMDD-hhmmss>` and a new `N.log` starts;
/// at most `max_files` files of the run are kept, the live one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

/// The query keys of the writer's URI (see [`super::stdio_uri`]).
pub const ARG_PATH: &str = "log-writer";
pub const ARG_MAX_SIZE: &str = "max-size";
pub const ARG_MAX_FILES: &str = "max-files";

/// What the shim starts the writer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub path: PathBuf,
    pub rotation: Option<Rotation>,
}

impl Args {
    /// The writer's arguments from argv (without the program): the URI's
    /// query as `key value` pairs, in any order (the shim walks a Go map).
    /// `None` when argv is not a writer invocation; an error when it is
    /// one with a bad value.
    pub fn from_argv(argv: &[OsString]) -> Option<Result<Args, String>> {
        if argv.is_empty() || !argv.len().is_multiple_of(2) {
            return None;
        }
        let known = [ARG_PATH, ARG_MAX_SIZE, ARG_MAX_FILES];
        let pairs: Vec<(&str, &OsString)> = argv
            .chunks(2)
            .map(|kv| Some((kv[0].to_str().filter(|k| known.contains(k))?, &kv[1])))
            .collect::<Option<_>>()?;
        let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let path = PathBuf::from(get(ARG_PATH)?);
        let number = |key: &str| -> Result<Option<u64>, String> {
            get(key)
                .map(|v| {
                    v.to_str()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| format!("{key} {v:?} is not a number"))
                })
                .transpose()
        };
        let parsed = (|| {
            let rotation = match (number(ARG_MAX_SIZE)?, number(ARG_MAX_FILES)?) {
                (Some(size), Some(files)) if size > 0 && files >= 1 => Some(Rotation {
                    max_size: size,
                    max_files: u32::try_from(files).unwrap_or(u32::MAX),
                }),
                (None, None) => None,
                _ => {
                    return Err(format!(
                        "{ARG_MAX_SIZE} and {ARG_MAX_FILES} go together, both above 0"
                    ))
                }
            };
            Ok(Args { path, rotation })
        })();
        Some(parsed)
    }
}

/// Runs the writer.
pub fn run(args: &Args) -> ExitCode {
    let path = args.path.as_path();
    for fd in [STDOUT_FD, STDERR_FD, READY_FD] {
        // SAFETY: F_GETFD only reads the descriptor's flags; it is valid to
        // call on any number and fails with EBADF when nothing is open there.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            eprintln!(
                "knode log-writer: fd {fd} is not open: this command is started by containerd's \
                 shim with the container's stdout on fd 3, stderr on fd 4 and a ready pipe on fd 5"
            );
            return ExitCode::from(2);
        }
    }
    // SAFETY: the three descriptors were checked to be open above; the shim
    // handed them to this process and nothing else in it uses them, so each
    // gets exactly one owner here.
    let (stdout, stderr, ready) = unsafe {
        (
            File::from(OwnedFd::from_raw_fd(STDOUT_FD)),
            File::from(OwnedFd::from_raw_fd(STDERR_FD)),
            OwnedFd::from_raw_fd(READY_FD),
        )
    };
    let mut sink = Sink::open(path);
    sink.rotation = args.rotation;
    // SIGTERM (sent by the shim when the task is deleted) is read from a
    // signalfd instead of killing us, so that buffered output is written.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    let stop = mask
        .thread_block()
        .and_then(|_| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let stop = match stop {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("knode log-writer: signalfd: {e}; SIGTERM ends the writer at once");
            None
        }
    };
    // Ready: the shim may start the container now.
    drop(ready);
    pump(
        [(stdout, Stream::Stdout), (stderr, Stream::Stderr)],
        stop.as_ref().map(|s| s.as_fd()),
        &mut sink,
    );
    if sink.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The log file. Without one (it could not be opened), output is still
/// read and dropped, so the container never blocks on a full pipe or dies
/// of SIGPIPE because its log cannot be written.
pub struct Sink {
    file: Option<File>,
    path: PathBuf,
    /// Bytes in the live file.
    size: u64,
    pub rotation: Option<Rotation>,
    failed: bool,
    clock: Clock,
}

impl Sink {
    /// Opens (creates, appends to) the log file, mode 0640, creating its
    /// directories. A failure is reported on stderr and leaves no file.
    pub fn open(path: &Path) -> Sink {
        let file = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)
            });
        let failed = file.is_err();
        if let Err(e) = &file {
            eprintln!(
                "knode log-writer: open {}: {e}; container output is dropped",
                path.display()
            );
        }
        let size = file
            .as_ref()
            .ok()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Sink {
            file: file.ok(),
            path: path.to_path_buf(),
            size,
            rotation: None,
            failed,
            clock: Clock::default(),
        }
    }

    /// Writes whole CRI entries (lines); with rotation, the file is
    /// rotated at an entry boundary before it would pass the size, so
    /// only an entry larger than the limit makes a file larger.
    fn write(&mut self, mut bytes: &[u8]) {
        let Some(r) = self.rotation else {
            return self.append(bytes);
        };
        while !bytes.is_empty() {
            let room = r.max_size.saturating_sub(self.size) as usize;
            let fit = if room >= bytes.len() {
                bytes.len()
            } else {
                bytes[..room]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            if fit > 0 {
                self.append(&bytes[..fit]);
                bytes = &bytes[fit..];
            } else if self.size > 0 && self.rotate(r) {
                continue;
            } else {
                // One entry larger than the limit (or no rotation
                // possible): it goes whole.
                let end = bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| i + 1);
                self.append(&bytes[..end]);
                bytes = &bytes[end..];
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let Some(f) = self.file.as_mut() else { return };
        match f.write_all(bytes) {
            Ok(()) => self.size += bytes.len() as u64,
            Err(e) => {
                if !self.failed {
                    eprintln!("knode log-writer: write: {e}; later output may be lost");
                }
                // Keep trying: a full disk may have room again later.
                self.failed = true;
            }
        }
    }

    /// The live file becomes a rotated one and a new one starts; the
    /// oldest rotated files go so that `max_files` remain. On a failure
    /// output keeps going to the file at hand.
    fn rotate(&mut self, r: Rotation) -> bool {
        let Some(name) = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return false;
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let stamp = Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
        // Two rotations in one second: a counter after the stamp, above
        // any earlier one's (pruned names must not be reused out of order).
        let existing = super::reader::rotated(&self.path).unwrap_or_default();
        let prefix = format!("{name}.{stamp}");
        let last = existing
            .iter()
            .filter_map(|p| {
                let f = p.file_name()?.to_str()?.strip_prefix(&prefix)?.to_string();
                match f.strip_prefix('.') {
                    Some(n) => n.parse::<u32>().ok(),
                    None => f.is_empty().then_some(0),
                }
            })
            .max();
        let rotated = match last {
            None => dir.join(&prefix),
            Some(n) => dir.join(format!("{prefix}.{}", n + 1)),
        };
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            eprintln!("knode log-writer: rotate {}: {e}", self.path.display());
            return false;
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
        {
            Ok(f) => {
                self.file = Some(f);
                self.size = 0;
            }
            Err(e) => {
                eprintln!("knode log-writer: reopen {}: {e}", self.path.display());
                return false;
            }
        }
        let keep = r.max_files.saturating_sub(1) as usize;
        if let Ok(old) = super::reader::rotated(&self.path) {
            for p in old.iter().take(old.len().saturating_sub(keep)) {
                let _ = std::fs::remove_file(p);
            }
        }
        true
    }
}

/// Entry times that never go backwards, even if the wall clock does, so
/// the file's order and its timestamps agree.
#[derive(Default)]
struct Clock {
    last: Option<Timestamp>,
}

impl Clock {
    fn now(&mut self) -> Timestamp {
        let now = Timestamp::now();
        let t = match self.last {
            Some(last) if last > now => last,
            _ => now,
        };
        self.last = Some(t);
        t
    }
}

/// One input stream and its line assembly.
struct Source {
    file: Option<File>,
    stream: Stream,
    splitter: Splitter,
}

/// Copies both streams into `sink` until both end, or until `stop` becomes
/// readable; then what is already in the pipes is still written, and each
/// stream's unfinished line ends as a partial entry.
pub fn pump(inputs: [(File, Stream); 2], stop: Option<BorrowedFd<'_>>, sink: &mut Sink) {
    let mut sources = inputs.map(|(file, stream)| Source {
        file: Some(file),
        stream,
        splitter: Splitter::default(),
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() + 256);
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(2);
        for (i, s) in sources.iter().enumerate() {
            if let Some(f) = &s.file {
                fds.push(pollfd(f.as_raw_fd()));
                which.push(i);
            }
        }
        if which.is_empty() {
            return;
        }
        if let Some(s) = stop {
            fds.push(pollfd(s.as_raw_fd()));
        }
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd
        // structs that poll may write `revents` into.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for (k, &i) in which.iter().enumerate() {
            if fds[k].revents != 0 {
                read_once(&mut sources[i], &mut buf, &mut out, sink);
            }
        }
        if stop.is_some() && fds[which.len()].revents != 0 {
            break;
        }
    }
    // Stopping: take what the pipes still hold, without waiting for more.
    for s in sources.iter_mut() {
        if let Some(f) = &s.file {
            let _ = nix::fcntl::fcntl(
                f,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
        }
        while s.file.is_some() {
            if !read_once(s, &mut buf, &mut out, sink) {
                break;
            }
        }
        finish(s, &mut out, sink);
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reads once from `s` and writes the entries it completes. Returns false
/// when there was nothing to read right now.
fn read_once(s: &mut Source, buf: &mut [u8], out: &mut Vec<u8>, sink: &mut Sink) -> bool {
    let Some(f) = s.file.as_mut() else {
        return false;
    };
    match f.read(buf) {
        Ok(0) => {
            finish(s, out, sink);
            false
        }
        Ok(n) => {
            out.clear();
            let stream = s.stream;
            let clock = &mut sink.clock;
            s.splitter.push(&buf[..n], &mut |tag, content| {
                let t = cri::format_timestamp(clock.now());
                cri::encode(out, &t, stream, tag, content);
            });
            sink.write(out);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => {
            finish(s, out, sink);
            false
        }
    }
}

/// The stream ended: writes its unfinished line and closes it.
fn finish(s: &mut Source, out: &mut Vec<u8>, sink: &mut Sink) {
    if s.file.take().is_none() {
        return;
    }
    out.clear();
    let stream = s.stream;
    let clock = &mut sink.clock;
    s.splitter.finish(&mut |tag, content| {
        let t = cri::format_timestamp(clock.now());
        cri::encode(out, &t, stream, tag, content);
    });
    sink.write(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::cri::{parse, Tag};

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Dir(std::env::temp_dir().join(format!("knode-logwriter-{tag}-{}-{n}", std::process::id())))
    }

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    fn entries(path: &Path) -> Vec<(Timestamp, Stream, Tag, String)> {
        let text = std::fs::read(path).unwrap();
        assert!(text.is_empty() || text.ends_with(b"\n"));
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let e = parse(l).unwrap();
                (
                    e.time,
                    e.stream,
                    e.tag,
                    String::from_utf8_lossy(e.content).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn both_streams_are_written_until_both_end() {
        let dir = temp("both");
        let path = dir.0.join("ns_p_u/c/0.log");
        let (out_r, mut out_w) = pipe();
        let (err_r, mut err_w) = pipe();
        let writer = std::thread::spawn(move || {
            out_w.write_all(b"one\n").unwrap();
            err_w.write_all(b"oops\n").unwrap();
            out_w.write_all(&vec![b'x'; 20_000]).unwrap();
            out_w.write_all(b"\ntwo\r\nno newline").unwrap();
            drop(out_w);
            err_w.write_all(b"late\n").unwrap();
        });
        let mut sink = Sink::open(&path);
        pump(
            [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            None,
            &mut sink,
        );
        writer.join().unwrap();
        assert!(!sink.failed);
        let got = entries(&path);
        let stream = |s: Stream| -> Vec<(Tag, String)> {
            got.iter()
                .filter(|e| e.1 == s)
                .map(|e| (e.2, e.3.clone()))
                .collect()
        };
        assert_eq!(
            stream(Stream::Stdout),
            [
                (Tag::Full, "one".into()),
                (Tag::Partial, "x".repeat(16384)),
                (Tag::Full, "x".repeat(20_000 - 16384)),
                (Tag::Full, "two".into()),
                (Tag::Partial, "no newline".into()),
            ]
        );
        assert_eq!(
            stream(Stream::Stderr),
            [(Tag::Full, "oops".into()), (Tag::Full, "late".into())]
        );
        // Times never go backwards through the file.
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "{got:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn a_stop_request_writes_what_is_buffered_and_returns() {
        let dir = temp("stop");
        let path = dir.0.join("0.log");
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        let (stop_r, mut stop_w) = pipe();
        out_w.write_all(b"done\nhalf a line").unwrap();
        stop_w.write_all(b"x").unwrap();
        // The write ends stay open: only the stop request ends the pump.
        let mut sink = Sink::open(&path);
        pump(
            [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            Some(stop_r.as_fd()),
            &mut sink,
        );
        drop((out_w, err_w));
        let got: Vec<(Tag, String)> = entries(&path).into_iter().map(|e| (e.2, e.3)).collect();
        assert_eq!(
            got,
            [
                (Tag::Full, "done".into()),
                (Tag::Partial, "half a line".into())
            ]
        );
    }

    #[test]
    fn output_is_drained_when_the_file_cannot_be_opened() {
        let dir = temp("noopen");
        std::fs::create_dir_all(&dir.0).unwrap();
        // A directory where the file should be: open fails.
        let path = dir.0.join("0.log");
        std::fs::create_dir_all(&path).unwrap();
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        let writer = std::thread::spawn(move || {
            // More than a pipe holds: blocks forever unless drained.
            out_w.write_all(&vec![b'y'; 1 << 20]).unwrap();
        });
        drop(err_w);
        let mut sink = Sink::open(&path);
        assert!(sink.failed);
        pump(
            [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            None,
            &mut sink,
        );
        writer.join().unwrap();
    }

    #[test]
    fn appends_to_an_existing_file() {
        let dir = temp("append");
        let path = dir.0.join("0.log");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(&path, "2016-10-06T00:17:09Z stdout F before\n").unwrap();
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        out_w.write_all(b"after\n").unwrap();
        drop((out_w, err_w));
        let mut sink = Sink::open(&path);
        pump(
            [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            None,
            &mut sink,
        );
        let got: Vec<String> = entries(&path).into_iter().map(|e| e.3).collect();
        assert_eq!(got, ["before", "after"]);
    }

    /// Lines `0..n` written through a rotating sink, one write each.
    fn write_lines(sink: &mut Sink, n: usize) {
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        drop(err_w);
        let writer = std::thread::spawn(move || {
            for i in 0..n {
                out_w
                    .write_all(format!("line {i:04}\n").as_bytes())
                    .unwrap();
            }
        });
        pump(
            [(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            None,
            sink,
        );
        writer.join().unwrap();
    }

    #[test]
    fn rotation_keeps_at_most_max_files_and_every_file_under_the_size() {
        let dir = temp("rotate");
        let path = dir.0.join("c/0.log");
        let mut sink = Sink::open(&path);
        sink.rotation = Some(Rotation {
            max_size: 400,
            max_files: 3,
        });
        write_lines(&mut sink, 200);
        let rotated = crate::logs::reader::rotated(&path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        let names: Vec<String> = std::fs::read_dir(dir.0.join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for p in rotated.iter().chain([&path]) {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(len <= 400, "{} has {len} bytes", p.display());
        }
        // The newest lines survive, in order across the files.
        let mut lines = Vec::new();
        for p in rotated.iter().chain([&path]) {
            lines.extend(entries(p).into_iter().map(|e| e.3));
        }
        assert_eq!(lines.last().map(String::as_str), Some("line 0199"));
        let numbers: Vec<u32> = lines.iter().map(|l| l[5..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    #[test]
    fn arguments_come_as_pairs_in_any_order() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let want = Args {
            path: "/l/0.log".into(),
            rotation: Some(Rotation {
                max_size: 1024,
                max_files: 5,
            }),
        };
        for order in [
            [
                "log-writer",
                "/l/0.log",
                "max-size",
                "1024",
                "max-files",
                "5",
            ],
            [
                "max-files",
                "5",
                "log-writer",
                "/l/0.log",
                "max-size",
                "1024",
            ],
        ] {
            assert_eq!(Args::from_argv(&argv(&order)), Some(Ok(want.clone())));
        }
        assert_eq!(
            Args::from_argv(&argv(&["log-writer", "/l/0.log"])),
            Some(Ok(Args {
                path: "/l/0.log".into(),
                rotation: None
            }))
        );
        assert_eq!(Args::from_argv(&argv(&["logs", "web"])), None);
        assert_eq!(Args::from_argv(&argv(&["agent"])), None);
        assert_eq!(
            Args::from_argv(&argv(&["max-size", "5", "max-files", "2"])),
            None
        );
        assert!(matches!(
            Args::from_argv(&argv(&["log-writer", "/l", "max-size", "ten"])),
            Some(Err(e)) if e.contains("max-size")
        ));
    }
}
