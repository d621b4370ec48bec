//! The CRI log format, as containerd's CRI plugin writes it and kubelet
//! reads it: one entry per line, `<RFC3339Nano time> <stdout|stderr> <F|P>
//! <content>`. A line longer than 16 KiB is cut into `P` (partial) entries
//! ended by an `F` (full) one; output left without a newline at the end is
//! one last `P`. Pure byte handling: no I/O here.

use std::fmt;

use jiff::Timestamp;

/// The longest content of one entry (containerd's default
/// `max_container_log_line_size`); longer lines are cut.
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's output streams an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `F`: the entry ends a line. `P`: the line goes on in the next entry of
/// the same stream (or the stream ended without a newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Full,
    Partial,
}

/// A timestamp in Go's RFC3339Nano layout (UTC, `Z`, fraction without
/// trailing zeros, none at all on a whole second), which is what kubelet
/// and every CRI log shipper parse.
pub fn format_timestamp(t: Timestamp) -> String {
    let secs = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.subsec_nanosecond();
    if nanos == 0 {
        return format!("{secs}Z");
    }
    let frac = format!("{nanos:09}");
    format!("{secs}.{}Z", frac.trim_end_matches('0'))
}

/// Appends one entry, newline included, to `out`.
pub fn encode(out: &mut Vec<u8>, time: &str, stream: Stream, tag: Tag, content: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.push(match tag {
        Tag::Full => b'F',
        Tag::Partial => b'P',
    });
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Cuts one stream's bytes into entries, following containerd's CRI
/// logger: a line's `\n` (and a `\r` just before it) is dropped, a line of
/// more than `max` bytes becomes `P` entries of exactly `max` bytes and a
/// last `F` one, and what is left at the end of the stream is a `P`.
#[derive(Debug)]
pub struct Splitter {
    pending: Vec<u8>,
    max: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(MAX_LINE)
    }
}

impl Splitter {
    /// A splitter cutting lines at `max` bytes (at least 1).
    pub fn new(max: usize) -> Splitter {
        Splitter {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes as they were read; calls `emit` for every finished entry.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&data[..i]);
            data = &data[i + 1..];
            let mut line = &self.pending[..];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            while line.len() > self.max {
                emit(Tag::Partial, &line[..self.max]);
                line = &line[self.max..];
            }
            emit(Tag::Full, line);
            self.pending.clear();
        }
        self.pending.extend_from_slice(data);
        // Cut a long unfinished line now, so memory stays bounded. A `\r`
        // at the very end may be half of a `\r\n` and does not count.
        let cr = usize::from(self.pending.ends_with(b"\r"));
        let mut start = 0;
        while self.pending.len() - start - cr > self.max {
            emit(Tag::Partial, &self.pending[start..start + self.max]);
            start += self.max;
        }
        self.pending.drain(..start);
    }

    /// The stream ended: what is left (a line without a newline) is a `P`.
    pub fn finish(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        if !self.pending.is_empty() {
            emit(Tag::Partial, &self.pending);
            self.pending.clear();
        }
    }
}

/// One parsed entry (its line without the trailing newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: Timestamp,
    pub stream: Stream,
    pub tag: Tag,
    pub content: &'a [u8],
}

/// Why a line is not a CRI log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    MissingField(&'static str),
    Timestamp(String),
    Stream(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::MissingField(what) => write!(f, "{what} is missing"),
            ParseError::Timestamp(t) => write!(f, "timestamp {t:?} is not RFC 3339"),
            ParseError::Stream(s) => write!(f, "stream {s:?} is neither stdout nor stderr"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one line (without its `\n`) as kubelet does: the tag field may
/// carry more `:`-separated tags after the first, which are ignored.
pub fn parse(line: &[u8]) -> Result<Entry<'_>, ParseError> {
    let (time, rest) = split_field(line).ok_or(ParseError::MissingField("timestamp"))?;
    let time_text = String::from_utf8_lossy(time);
    let time: Timestamp = time_text
        .parse()
        .map_err(|_| ParseError::Timestamp(time_text.into_owned()))?;
    let (stream, rest) = split_field(rest).ok_or(ParseError::MissingField("stream"))?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        other => return Err(ParseError::Stream(String::from_utf8_lossy(other).into())),
    };
    let (tags, content) = split_field(rest).ok_or(ParseError::MissingField("tag"))?;
    let first = tags.split(|&b| b == b':').next().unwrap_or_default();
    let tag = if first == b"P" {
        Tag::Partial
    } else {
        Tag::Full
    };
    Ok(Entry {
        time,
        stream,
        tag,
        content,
    })
}

fn split_field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b' ')?;
    Some((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]], finish: bool) -> Vec<(Tag, String)> {
        let mut s = Splitter::new(max);
        let mut out = Vec::new();
        let mut emit = |t: Tag, c: &[u8]| out.push((t, String::from_utf8_lossy(c).into_owned()));
        for c in chunks {
            s.push(c, &mut emit);
        }
        if finish {
            s.finish(&mut emit);
        }
        out
    }

    use Tag::{Full as F, Partial as P};

    #[test]
    fn full_lines_drop_their_newline_and_a_carriage_return_before_it() {
        assert_eq!(
            split(100, &[b"one\ntwo\r\n\nthr", b"ee\n"], true),
            [
                (F, "one".into()),
                (F, "two".into()),
                (F, "".into()),
                (F, "three".into())
            ]
        );
    }

    #[test]
    fn output_without_a_final_newline_is_partial_at_the_end() {
        assert_eq!(split(100, &[b"a\nno newline"], false), [(F, "a".into())]);
        assert_eq!(
            split(100, &[b"a\nno newline"], true),
            [(F, "a".into()), (P, "no newline".into())]
        );
        // A lone \r is content, not a line end.
        assert_eq!(split(100, &[b"x\r"], true), [(P, "x\r".into())]);
    }

    #[test]
    fn long_lines_are_cut_at_the_limit_like_containerd() {
        // Exactly the limit: one full entry.
        assert_eq!(split(4, &[b"abcd\n"], true), [(F, "abcd".into())]);
        // One byte more: a partial of the limit, then the rest.
        assert_eq!(
            split(4, &[b"abcde\n"], true),
            [(P, "abcd".into()), (F, "e".into())]
        );
        // Twice the limit: no empty full entry at the end.
        assert_eq!(
            split(4, &[b"abcdefgh\n"], true),
            [(P, "abcd".into()), (F, "efgh".into())]
        );
        // The same, arriving a byte at a time.
        let bytes: Vec<&[u8]> = b"abcdefghij\n".chunks(1).collect();
        assert_eq!(
            split(4, &bytes, true),
            [(P, "abcd".into()), (P, "efgh".into()), (F, "ij".into())]
        );
        // A \r\n straddling the cut: the \r is not content.
        assert_eq!(split(4, &[b"abcd\r", b"\n"], true), [(F, "abcd".into())]);
    }

    #[test]
    fn the_default_limit_is_16_kib() {
        let line = vec![b'a'; 40_000];
        let mut s = Splitter::default();
        let mut lens = Vec::new();
        let mut emit = |t: Tag, c: &[u8]| lens.push((t, c.len()));
        for chunk in line.chunks(4096) {
            s.push(chunk, &mut emit);
        }
        s.push(b"\n", &mut emit);
        assert_eq!(lens, [(P, 16384), (P, 16384), (F, 40_000 - 32768)]);
    }

    #[test]
    fn timestamps_use_gos_rfc3339nano() {
        let t = |s: i64, n: i32| format_timestamp(Timestamp::new(s, n).unwrap());
        assert_eq!(
            t(1_475_713_029, 669_794_202),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(t(1_475_713_029, 669_000_000), "2016-10-06T00:17:09.669Z");
        assert_eq!(t(1_475_713_029, 0), "2016-10-06T00:17:09Z");
        assert_eq!(t(1_475_713_029, 1), "2016-10-06T00:17:09.000000001Z");
    }

    #[test]
    fn entries_round_trip() {
        let mut out = Vec::new();
        encode(
            &mut out,
            "2016-10-06T00:17:09.669794202Z",
            Stream::Stderr,
            Tag::Partial,
            b"log content 1",
        );
        assert_eq!(
            out,
            b"2016-10-06T00:17:09.669794202Z stderr P log content 1\n"
        );
        let e = parse(&out[..out.len() - 1]).unwrap();
        assert_eq!(e.stream, Stream::Stderr);
        assert_eq!(e.tag, Tag::Partial);
        assert_eq!(e.content, b"log content 1");
        assert_eq!(e.time, Timestamp::new(1_475_713_029, 669_794_202).unwrap());
    }

    #[test]
    fn parsing_accepts_what_kubelet_accepts() {
        // Offsets other than Z, extra tags, empty content.
        let e = parse(b"2016-10-06T02:17:09.5+02:00 stdout F:x ").unwrap();
        assert_eq!(e.time, Timestamp::new(1_475_713_029, 500_000_000).unwrap());
        assert_eq!(e.tag, Tag::Full);
        assert_eq!(e.content, b"");
        // Content keeps its spaces.
        let e = parse(b"2016-10-06T00:17:09Z stdout F  two  spaces ").unwrap();
        assert_eq!(e.content, b" two  spaces ");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert_eq!(
            parse(b"garbage").unwrap_err(),
            ParseError::MissingField("timestamp")
        );
        assert!(matches!(
            parse(b"yesterday stdout F x").unwrap_err(),
            ParseError::Timestamp(_)
        ));
        assert_eq!(
            parse(b"2016-10-06T00:17:09Z stdin F x").unwrap_err(),
            ParseError::Stream("stdin".into())
        );
        assert_eq!(
            parse(b"2016-10-06T00:17:09Z stdout").unwrap_err(),
            ParseError::MissingField("stream")
        );
        assert_eq!(
            parse(b"2016-10-06T00:17:09Z stdout F").unwrap_err(),
            ParseError::MissingField("tag")
        );
    }
}
