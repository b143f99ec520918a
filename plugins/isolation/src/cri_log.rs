//! CRI log files in kubelet's format: `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>\n`, one record per line
//! of output; a line longer than [`MAX_PIECE`] is cut into `P` pieces and ends with an `F` piece. The framing is
//! a pure function; [`CriLog`] adds the file, kept open in append mode and reopened on request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest piece of one line written as one record (containerd uses 16 KiB as well).
pub const MAX_PIECE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Formats Unix nanoseconds as `2016-10-06T00:17:09.669794202Z`.
pub fn rfc3339_nano(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn record(out: &mut Vec<u8>, ts: &str, stream: Stream, tag: u8, text: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Frames `data` (the next bytes of `stream`) into records appended to `out`. `pending` holds the start of an
/// unfinished line between calls; it never exceeds `max_piece`, and it is flushed as the final `F` piece at
/// `eof`. A piece is written as `P` only when more of its line is known to follow, so every line ends in `F`.
pub fn frame(
    out: &mut Vec<u8>,
    ts: &str,
    stream: Stream,
    pending: &mut Vec<u8>,
    data: &[u8],
    eof: bool,
    max_piece: usize,
) {
    let mut rest = data;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let (line, tail) = (&rest[..nl], &rest[nl + 1..]);
        pending.extend_from_slice(line);
        let mut start = 0;
        while pending.len() - start > max_piece {
            record(out, ts, stream, b'P', &pending[start..start + max_piece]);
            start += max_piece;
        }
        record(out, ts, stream, b'F', &pending[start..]);
        pending.clear();
        rest = tail;
    }
    pending.extend_from_slice(rest);
    let mut start = 0;
    while pending.len() - start > max_piece {
        record(out, ts, stream, b'P', &pending[start..start + max_piece]);
        start += max_piece;
    }
    pending.drain(..start);
    if eof && !pending.is_empty() {
        record(out, ts, stream, b'F', pending);
        *pending = Vec::new();
    }
    if pending.is_empty() && pending.capacity() > 0 {
        // Idle containers should not hold a line buffer each.
        *pending = Vec::new();
    }
}

/// One container's log file.
pub struct CriLog {
    path: PathBuf,
    file: Option<File>,
    pending: [Vec<u8>; 2],
    scratch: Vec<u8>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl CriLog {
    pub fn open(path: &Path) -> std::io::Result<CriLog> {
        Ok(CriLog {
            path: path.to_path_buf(),
            file: Some(open_append(path)?),
            pending: [Vec::new(), Vec::new()],
            scratch: Vec::new(),
        })
    }

    /// Reopens the file at the same path (after the kubelet rotated it).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = Some(open_append(&self.path)?);
        Ok(())
    }

    pub fn write(&mut self, stream: Stream, data: &[u8], eof: bool) -> std::io::Result<()> {
        let ts = rfc3339_nano(now_nanos());
        let slot = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        frame(&mut out, &ts, stream, &mut self.pending[slot], data, eof, MAX_PIECE);
        let result = match &mut self.file {
            Some(f) if !out.is_empty() => f.write_all(&out),
            _ => Ok(()),
        };
        out.clear();
        if out.capacity() <= 64 * 1024 {
            self.scratch = out;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: usize) -> String {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            frame(
                &mut out,
                "T",
                Stream::Stdout,
                &mut pending,
                c,
                i + 1 == chunks.len(),
                max,
            );
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(1_475_713_029_669_794_202),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(rfc3339_nano(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn lines_split_across_reads_are_one_f_record() {
        assert_eq!(
            run(&[b"hel", b"lo\nwor", b"ld\n"], 100),
            "T stdout F hello\nT stdout F world\n"
        );
    }

    #[test]
    fn unterminated_output_is_flushed_as_f_at_eof() {
        assert_eq!(run(&[b"a\nb"], 100), "T stdout F a\nT stdout F b\n");
        assert_eq!(run(&[b"\n"], 100), "T stdout F \n");
    }

    #[test]
    fn long_lines_become_p_pieces_and_end_with_f() {
        assert_eq!(
            run(&[b"abcdefgh\n"], 3),
            "T stdout P abc\nT stdout P def\nT stdout F gh\n"
        );
        // Exactly a multiple of the piece size, no newline: the last piece is still F.
        assert_eq!(run(&[b"abc", b"def"], 3), "T stdout P abc\nT stdout F def\n");
    }

    #[test]
    fn one_mib_without_newline() {
        let data = vec![b'x'; 1 << 20];
        let text = run(&[&data[..300_000], &data[300_000..]], MAX_PIECE);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 64);
        assert!(lines[..63].iter().all(|l| l.starts_with("T stdout P ")));
        assert!(lines[63].starts_with("T stdout F "));
        let total: usize = lines.iter().map(|l| l.len() - "T stdout P ".len()).sum();
        assert_eq!(total, 1 << 20);
    }
}
