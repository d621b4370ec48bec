//! Reading a container's log files back: which run's file to read (the
//! latest, or the one before for `--previous`), decoding CRI entries into
//! whole lines (partial entries joined), and following a file as it grows
//! and on to the next run's file. Plain files only; the CLI decides what to
//! print and when to stop.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::cri::{self, Stream, Tag};

/// The names in `dir`; a missing dir has none.
fn file_names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| Ok(e?.file_name())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The runs (attempts) that have a log file in a container's log dir,
/// ascending. A missing dir has none.
pub fn attempts(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for name in file_names(dir)? {
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// The run to read: the latest, or with `previous` the one before the
/// current one. The current run is the later of the latest file and the
/// pod status's `restartCount` (a run's number is its restart count): a
/// restart the status already reports may not have opened its file yet,
/// and then the previous run is the latest file, not the one before it.
pub fn pick(attempts: &[u32], previous: bool, restart_count: Option<u32>) -> Option<u32> {
    let latest = attempts.last().copied();
    if !previous {
        return latest;
    }
    let current = latest.max(restart_count)?;
    attempts.iter().rev().copied().find(|a| *a < current)
}

/// The log file of run `attempt` in a container's log dir.
pub fn file(dir: &Path, attempt: u32) -> PathBuf {
    dir.join(format!("{attempt}.log"))
}

/// The rotated files of the log file `live` (`N.log.<YYYYMMDD-hhmmss>`,
/// with `.<n>` when two rotations share a second), oldest first.
pub fn rotated(live: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for file in file_names(dir)? {
        let Some(rest) = file
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let (stamp, n) = match rest.split_once('.') {
            Some((stamp, n)) => match n.parse::<u32>() {
                Ok(n) => (stamp, n),
                Err(_) => continue,
            },
            None => (rest, 0),
        };
        let is_stamp = stamp.len() == 15
            && stamp.bytes().enumerate().all(|(i, b)| {
                if i == 8 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if is_stamp {
            out.push(((stamp.to_string(), n), dir.join(&file)));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Every file of run `attempt`, in the order it was written: the rotated
/// ones, then the live one.
pub fn run_files(dir: &Path, attempt: u32) -> io::Result<Vec<PathBuf>> {
    let live = file(dir, attempt);
    let mut files = rotated(&live)?;
    files.push(live);
    Ok(files)
}

/// One line of output: partial entries joined, the newline kept when the
/// line had one; the time is that of its first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub time: Timestamp,
    pub stream: Stream,
    pub content: Vec<u8>,
}

impl Message {
    /// The line as `knode logs` prints it.
    pub fn render(&self, timestamps: bool, out: &mut Vec<u8>) {
        if timestamps {
            out.extend_from_slice(cri::format_timestamp(self.time).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.content);
    }
}

/// Turns a log file's bytes, fed in any pieces, into messages.
#[derive(Debug, Default)]
pub struct Decoder {
    /// A file line not yet ended by `\n` (the writer may be mid-write).
    tail: Vec<u8>,
    /// Per stream: partial entries waiting for the entry that ends them.
    pending: [Option<Message>; 2],
    /// Lines that were not CRI entries (skipped).
    pub malformed: u64,
}

impl Decoder {
    /// Feeds bytes; calls `out` for every finished message.
    pub fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(Message)) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            if self.tail.is_empty() {
                self.line(&data[..i], out);
            } else {
                let mut line = std::mem::take(&mut self.tail);
                line.extend_from_slice(&data[..i]);
                self.line(&line, out);
            }
            data = &data[i + 1..];
        }
        self.tail.extend_from_slice(data);
    }

    /// Emits lines that are still partial (a stream that ended without a
    /// newline, or one that has been quiet for a while), without a newline.
    pub fn flush_partial(&mut self, out: &mut impl FnMut(Message)) {
        let mut ps: Vec<Message> = self.pending.iter_mut().filter_map(Option::take).collect();
        ps.sort_by_key(|m| m.time);
        ps.into_iter().for_each(out);
    }

    /// The file is complete: its last line counts even without a `\n`, and
    /// partial lines are emitted as they are.
    pub fn finish(&mut self, out: &mut impl FnMut(Message)) {
        if !self.tail.is_empty() {
            let line = std::mem::take(&mut self.tail);
            self.line(&line, out);
        }
        self.flush_partial(out);
    }

    fn line(&mut self, line: &[u8], out: &mut impl FnMut(Message)) {
        let e = match cri::parse(line) {
            Ok(e) => e,
            Err(_) => {
                self.malformed += 1;
                return;
            }
        };
        let slot = &mut self.pending[e.stream as usize];
        let msg = slot.get_or_insert_with(|| Message {
            time: e.time,
            stream: e.stream,
            content: Vec::new(),
        });
        msg.content.extend_from_slice(e.content);
        if e.tag == Tag::Full {
            let mut m = slot.take().expect("just filled");
            m.content.push(b'\n');
            out(m);
        }
    }
}

/// Follows a container's logs: reads what was appended to the current
/// run's file since the last poll and moves on to the next run's file once
/// one appears (after reading the current one to its end).
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    attempt: Option<u32>,
    /// Whether the current run's rotated files were read.
    backlog_read: bool,
    /// The live file being read (its inode: a rotation replaces it) and
    /// how far.
    ino: Option<u64>,
    offset: u64,
    decoder: Decoder,
}

impl Follower {
    /// Starts at the beginning of run `attempt`'s file, or with `None` at
    /// the first file that appears in `dir`.
    pub fn new(dir: &Path, attempt: Option<u32>) -> Follower {
        Follower {
            dir: dir.to_path_buf(),
            attempt,
            backlog_read: false,
            ino: None,
            offset: 0,
            decoder: Decoder::default(),
        }
    }

    /// Lines skipped because they were not CRI entries.
    pub fn malformed(&self) -> u64 {
        self.decoder.malformed
    }

    /// Reads what is new; returns whether anything was.
    pub fn poll(&mut self, out: &mut impl FnMut(Message)) -> io::Result<bool> {
        let mut grew = false;
        loop {
            let Some(current) = self.attempt else {
                match attempts(&self.dir)?.last() {
                    Some(&a) => self.attempt = Some(a),
                    None => return Ok(grew),
                }
                continue;
            };
            if !self.backlog_read {
                self.backlog_read = true;
                for p in rotated(&file(&self.dir, current))? {
                    grew |= read_from(&p, 0, &mut self.decoder, out)?.is_some();
                }
            }
            grew |= self.read_new(current, out)?;
            let next = attempts(&self.dir)?.into_iter().find(|&a| a > current);
            let Some(next) = next else {
                return Ok(grew);
            };
            // Anything written since the read above belongs before the
            // next run's output.
            grew |= self.read_new(current, out)?;
            self.decoder.finish(out);
            self.attempt = Some(next);
            self.backlog_read = false;
            self.ino = None;
            self.offset = 0;
        }
    }

    /// Stops following: the last line counts even without a newline.
    pub fn finish(&mut self, out: &mut impl FnMut(Message)) -> io::Result<()> {
        if let Some(a) = self.attempt {
            self.read_new(a, out)?;
        }
        self.decoder.finish(out);
        Ok(())
    }

    /// Emits partial lines that are still waiting for their end.
    pub fn flush_partial(&mut self, out: &mut impl FnMut(Message)) {
        self.decoder.flush_partial(out);
    }

    fn read_new(&mut self, attempt: u32, out: &mut impl FnMut(Message)) -> io::Result<bool> {
        let live = file(&self.dir, attempt);
        let ino = match std::fs::metadata(&live) {
            Ok(m) => m.ino(),
            // Removed (the pod's logs were cleaned up): nothing more here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut grew = false;
        if let Some(old) = self.ino.filter(|&old| old != ino) {
            // Rotated since the last read: the rest of the file that was
            // live, then any rotated after it, then the new live file.
            let files = rotated(&live)?;
            let at = files
                .iter()
                .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == old));
            if let Some(at) = at {
                grew |= read_from(&files[at], self.offset, &mut self.decoder, out)?.is_some();
                for p in &files[at + 1..] {
                    grew |= read_from(p, 0, &mut self.decoder, out)?.is_some();
                }
            }
            self.offset = 0;
        }
        self.ino = Some(ino);
        if let Some(end) = read_from(&live, self.offset, &mut self.decoder, out)? {
            self.offset = end;
            grew = true;
        }
        Ok(grew)
    }
}

/// Feeds `path` from byte `from` on to `decoder` (from 0 if the file is
/// shorter: truncated). Returns where it ended, or `None` if there was
/// nothing new (or no file).
fn read_from(
    path: &Path,
    from: u64,
    decoder: &mut Decoder,
    out: &mut impl FnMut(Message),
) -> io::Result<Option<u64>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut offset = if len < from { 0 } else { from };
    if len == offset {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        decoder.feed(&buf[..n], out);
    }
    Ok(Some(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> (Vec<(Stream, String)>, u64) {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        let mut out = |m: Message| got.push((m.stream, String::from_utf8_lossy(&m.content).into()));
        for c in chunks {
            d.feed(c, &mut out);
        }
        d.finish(&mut out);
        (got, d.malformed)
    }

    const T: &str = "2024-01-02T03:04:05.5Z";

    fn line(stream: &str, tag: &str, content: &str) -> String {
        format!("{T} {stream} {tag} {content}\n")
    }

    #[test]
    fn partial_entries_join_per_stream() {
        let text = [
            line("stdout", "P", "hel"),
            line("stderr", "F", "an error"),
            line("stdout", "P", "lo "),
            line("stdout", "F", "world"),
            line("stdout", "F", ""),
            line("stderr", "P", "no newline"),
        ]
        .concat();
        let (got, bad) = decode(&[text.as_bytes()]);
        assert_eq!(bad, 0);
        assert_eq!(
            got,
            [
                (Stream::Stderr, "an error\n".into()),
                (Stream::Stdout, "hello world\n".into()),
                (Stream::Stdout, "\n".into()),
                (Stream::Stderr, "no newline".into()),
            ]
        );
    }

    #[test]
    fn lines_split_across_reads_and_bad_lines_are_skipped() {
        let text = [
            line("stdout", "F", "a"),
            "not a log line\n".to_string(),
            line("stdout", "F", "b"),
        ]
        .concat();
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(3).collect();
        let (got, bad) = decode(&chunks);
        assert_eq!(bad, 1);
        assert_eq!(
            got,
            [
                (Stream::Stdout, "a\n".into()),
                (Stream::Stdout, "b\n".into())
            ]
        );
    }

    #[test]
    fn render_puts_the_first_entrys_time_first() {
        let m = Message {
            time: "2024-01-02T03:04:05.5Z".parse().unwrap(),
            stream: Stream::Stdout,
            content: b"x\n".to_vec(),
        };
        let mut out = Vec::new();
        m.render(true, &mut out);
        m.render(false, &mut out);
        assert_eq!(out, b"2024-01-02T03:04:05.5Z x\nx\n");
    }

    #[test]
    fn previous_is_the_run_before_the_latest() {
        assert_eq!(pick(&[], false, None), None);
        assert_eq!(pick(&[0], false, None), Some(0));
        assert_eq!(pick(&[0], true, None), None);
        assert_eq!(pick(&[0], true, Some(0)), None);
        assert_eq!(pick(&[0, 1, 2, 10], false, None), Some(10));
        assert_eq!(pick(&[0, 1, 2, 10], true, None), Some(2));
        assert_eq!(pick(&[0, 1, 2, 10], true, Some(10)), Some(2));
    }

    #[test]
    fn previous_follows_a_restart_whose_file_is_not_there_yet() {
        // Status says run 1 exists; its file does not yet.
        assert_eq!(pick(&[0], true, Some(1)), Some(0));
        assert_eq!(pick(&[0], false, Some(1)), Some(0));
        // A status behind the files changes nothing.
        assert_eq!(pick(&[0, 1, 2], true, Some(1)), Some(1));
        assert_eq!(pick(&[], true, Some(3)), None);
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("knode-logreader-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn attempts_are_numeric_log_files_in_order() {
        let d = temp("attempts");
        for f in ["0.log", "2.log", "10.log", "x.log", "3.log.tmp", "1.txt"] {
            std::fs::write(d.0.join(f), "").unwrap();
        }
        assert_eq!(attempts(&d.0).unwrap(), [0, 2, 10]);
        assert_eq!(attempts(&d.0.join("missing")).unwrap(), Vec::<u32>::new());
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn poll(f: &mut Follower, got: &mut Vec<String>) -> bool {
        f.poll(&mut |m| got.push(String::from_utf8_lossy(&m.content).into()))
            .unwrap()
    }

    #[test]
    fn following_reads_growth_and_moves_to_the_next_run() {
        let d = temp("follow");
        let mut f = Follower::new(&d.0, None);
        let mut got: Vec<String> = Vec::new();
        // Nothing yet: waits for the first file.
        assert!(!poll(&mut f, &mut got));
        append(&d.0.join("0.log"), &line("stdout", "F", "first"));
        assert!(poll(&mut f, &mut got));
        // A line written in two pieces is read once it is whole.
        let l = line("stdout", "F", "second");
        append(&d.0.join("0.log"), &l[..10]);
        poll(&mut f, &mut got);
        assert_eq!(got, ["first\n"]);
        append(&d.0.join("0.log"), &l[10..]);
        poll(&mut f, &mut got);
        assert!(!poll(&mut f, &mut got));
        // The run ends with a partial line; the next run starts.
        append(&d.0.join("0.log"), &line("stdout", "P", "last words"));
        append(&d.0.join("1.log"), &line("stderr", "F", "restarted"));
        assert!(poll(&mut f, &mut got));
        append(&d.0.join("1.log"), &line("stdout", "F", "more"));
        poll(&mut f, &mut got);
        assert_eq!(
            got,
            ["first\n", "second\n", "last words", "restarted\n", "more\n"]
        );
    }

    #[test]
    fn following_a_truncated_file_starts_over() {
        let d = temp("truncate");
        let p = d.0.join("0.log");
        append(&p, &line("stdout", "F", "aaaaaaaaaaaaaaaa"));
        let mut f = Follower::new(&d.0, Some(0));
        let mut got: Vec<String> = Vec::new();
        f.poll(&mut |m| got.push(String::from_utf8_lossy(&m.content).into()))
            .unwrap();
        std::fs::write(&p, line("stdout", "F", "b")).unwrap();
        f.poll(&mut |m| got.push(String::from_utf8_lossy(&m.content).into()))
            .unwrap();
        assert_eq!(got, ["aaaaaaaaaaaaaaaa\n", "b\n"]);
    }

    #[test]
    fn rotated_files_sort_by_time_then_counter() {
        let d = temp("rotated");
        for f in [
            "0.log",
            "0.log.20261207-120001",
            "0.log.20261207-120000.2",
            "0.log.20261207-120000",
            "0.log.20261207-120000.10",
            "0.log.tmp",
            "1.log.20261207-110000",
        ] {
            std::fs::write(d.0.join(f), "").unwrap();
        }
        let names: Vec<String> = run_files(&d.0, 0)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20261207-120000",
                "0.log.20261207-120000.2",
                "0.log.20261207-120000.10",
                "0.log.20261207-120001",
                "0.log"
            ]
        );
    }

    #[test]
    fn following_reads_rotated_files_and_across_a_rotation() {
        let d = temp("follow-rotate");
        let live = d.0.join("0.log");
        append(
            &d.0.join("0.log.20261207-120000"),
            &line("stdout", "F", "a"),
        );
        append(&live, &line("stdout", "F", "b"));
        let mut f = Follower::new(&d.0, Some(0));
        let mut got: Vec<String> = Vec::new();
        assert!(poll(&mut f, &mut got));
        assert_eq!(got, ["a\n", "b\n"], "the rotated backlog first");
        // Written, then rotated twice before the next poll.
        append(&live, &line("stdout", "F", "c"));
        std::fs::rename(&live, d.0.join("0.log.20261207-120001")).unwrap();
        append(&live, &line("stdout", "F", "d"));
        std::fs::rename(&live, d.0.join("0.log.20261207-120002")).unwrap();
        append(&live, &line("stdout", "F", "e"));
        assert!(poll(&mut f, &mut got));
        assert_eq!(got, ["a\n", "b\n", "c\n", "d\n", "e\n"]);
        assert!(!poll(&mut f, &mut got));
    }
}
