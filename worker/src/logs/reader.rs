//! Reads a task's log: all of it or its last N lines, only lines since a
//! time, and optionally follows it (across rotation) until the writer is
//! done. Blocking (std files): callers run it on a blocking thread and give
//! it a sink that applies backpressure (a bounded channel's
//! `blocking_send`) and says when the reader is gone.
//!
//! ```text
//!  open task.log.K … task.log.1, task.log  (all at once: a rotation during
//!       │                                     the read renames, never loses)
//!  tail N: count N newlines back from the end, newest file first
//!       ▼
//!  read to the end ─ follow? ─ poll 100 ms: new bytes, or task.log replaced
//!                              (rotated: finish the old handle, then step to
//!                              each newer file by inode, up to task.log)
//!                              until `finished()` and nothing more to read
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::format::{self, Entry};
use super::writer::file_path;
use super::{MAX_MAX_FILE, Result, io};

/// What to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Only the last this many lines (`--tail N`); `None`: all.
    pub tail: Option<u64>,
    /// Only lines written at or after this time (`--since`).
    pub since: Option<SystemTime>,
    /// Keep reading new lines until the writer is done (`-f`).
    pub follow: bool,
}

/// Raw bytes handed to the sink at most per batch (well under gRPC's 4 MiB
/// message limit even after json escaping).
pub const BATCH_BYTES: usize = 256 * 1024;
/// How often a follower looks for new output.
const POLL: Duration = Duration::from_millis(100);

/// Where in a file its last `n` complete lines start: `(offset, lines)`,
/// `lines < n` if the file holds fewer. A last line without its newline
/// (being written) is not counted. Reads backwards in blocks.
pub fn tail_start<R: Read + Seek>(r: &mut R, len: u64, n: u64) -> std::io::Result<(u64, u64)> {
    if n == 0 {
        return Ok((len, 0));
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = len;
    let mut newlines = 0u64;
    let mut seen_complete_end = false;
    while pos > 0 {
        let size = (buf.len() as u64).min(pos) as usize;
        pos -= size as u64;
        r.seek(SeekFrom::Start(pos))?;
        r.read_exact(&mut buf[..size])?;
        for i in (0..size).rev() {
            if buf[i] != b'\n' {
                continue;
            }
            if !seen_complete_end {
                // The end of the last complete line.
                seen_complete_end = true;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok((pos + i as u64 + 1, n));
            }
        }
    }
    Ok((0, if seen_complete_end { newlines + 1 } else { 0 }))
}

struct Source {
    file: File,
    /// Bytes read but not yet a whole line.
    partial: Vec<u8>,
}

/// Streams the log in `dir` to `sink`, in batches. `finished` says whether
/// the writer is done (consulted only when following); `sink` returns false
/// when nobody reads any more, which ends the read. A follow with nothing
/// new calls `sink` with an empty batch every poll: only a question.
pub fn read(
    dir: &Path,
    opts: &ReadOptions,
    finished: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(Vec<Entry>) -> bool,
) -> Result<()> {
    // Every file now, oldest first, opened at once.
    let mut files = Vec::new();
    for n in (0..MAX_MAX_FILE).rev() {
        let path = file_path(dir, n);
        match File::open(&path) {
            Ok(f) => files.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("open", &path)(e)),
        }
    }
    // Where to start: the first file and offset holding the last N lines.
    let mut first = 0;
    if let Some(n) = opts.tail {
        let mut left = n;
        first = files.len();
        let mut offset = 0;
        for (i, f) in files.iter_mut().enumerate().rev() {
            let len = f.metadata().map_err(io("stat", dir))?.len();
            let (at, found) = tail_start(f, len, left).map_err(io("read", dir))?;
            first = i;
            offset = at;
            left -= found;
            if left == 0 {
                break;
            }
        }
        if first < files.len() {
            files[first]
                .seek(SeekFrom::Start(offset))
                .map_err(io("seek", dir))?;
            for f in &mut files[first + 1..] {
                f.rewind().map_err(io("seek", dir))?;
            }
        } else if !opts.follow {
            return Ok(());
        }
    } else {
        for f in &mut files {
            f.rewind().map_err(io("seek", dir))?;
        }
    }
    let mut batch = Batch::new(opts.since);
    let mut current: Option<Source> = None;
    let mut older = files.split_off(first.min(files.len()));
    // `older` now holds the files to read, oldest first; the last one
    // (task.log, if it existed) is the one to follow.
    let following = if older.is_empty() { None } else { older.pop() };
    for f in older {
        let mut src = Source {
            file: f,
            partial: Vec::new(),
        };
        if !drain(&mut src, &mut batch, sink, true)? {
            return Ok(());
        }
    }
    if let Some(f) = following {
        current = Some(Source {
            file: f,
            partial: Vec::new(),
        });
    }
    if let Some(src) = current.as_mut()
        && !drain(src, &mut batch, sink, !opts.follow)?
    {
        return Ok(());
    }
    if !opts.follow {
        flush(&mut batch, sink);
        return Ok(());
    }
    loop {
        let done = finished();
        // Rotated (or first created) since we opened it?
        let path = file_path(dir, 0);
        let replaced = match (std::fs::metadata(&path), current.as_ref()) {
            (Ok(now), Some(src)) => {
                let ours = src.file.metadata().map_err(io("stat", &path))?;
                now.ino() != ours.ino() || now.dev() != ours.dev()
            }
            (Ok(_), None) => true,
            (Err(_), _) => false,
        };
        if let Some(src) = current.as_mut() {
            // max-file=1 truncates in place: start over.
            let len = src.file.metadata().map_err(io("stat", &path))?.len();
            let pos = src.file.stream_position().map_err(io("seek", &path))?;
            if len < pos {
                src.file.rewind().map_err(io("seek", &path))?;
                src.partial.clear();
            }
            if !drain(src, &mut batch, sink, replaced)? {
                return Ok(());
            }
        }
        if replaced {
            match current.as_ref().and_then(|c| c.file.metadata().ok()) {
                // Step from our (rotated, fully read) file to the next newer
                // one until we hold task.log: no file is skipped however many
                // rotations happened since the last look.
                Some(mut ours) => {
                    while let Some((f, is_current)) = next_file(dir, &ours) {
                        let mut src = Source {
                            file: f,
                            partial: Vec::new(),
                        };
                        if is_current {
                            current = Some(src);
                            break;
                        }
                        if !drain(&mut src, &mut batch, sink, true)? {
                            return Ok(());
                        }
                        ours = src.file.metadata().map_err(io("stat", &path))?;
                    }
                }
                // The log began after the follow did: all of it is new.
                None => {
                    for f in rotated_oldest_first(dir) {
                        let mut src = Source {
                            file: f,
                            partial: Vec::new(),
                        };
                        if !drain(&mut src, &mut batch, sink, true)? {
                            return Ok(());
                        }
                    }
                    if let Ok(f) = File::open(&path) {
                        current = Some(Source {
                            file: f,
                            partial: Vec::new(),
                        });
                    }
                }
            }
            continue;
        }
        if !flush(&mut batch, sink) {
            return Ok(());
        }
        if done {
            return Ok(());
        }
        // Nothing new: ask whether anybody still reads (an empty batch is
        // that question), so a quiet follow ends with its client too.
        if !sink(Vec::new()) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.ino() == b.ino() && a.dev() == b.dev()
}

/// Where file `ours` is now in the rotation (1 = task.log.1), if it is
/// still there.
fn position(dir: &Path, ours: &std::fs::Metadata) -> Option<u32> {
    // Ascending, as rotation moves files: a file moving up while we look
    // is found at its new place.
    (1..MAX_MAX_FILE)
        .find(|&n| std::fs::metadata(file_path(dir, n)).is_ok_and(|m| same_file(&m, ours)))
}

/// The file just newer than `ours` (rotated and read to its end), and
/// whether it is the current task.log; `None` if `ours` is still task.log.
/// Checked after opening: a rotation in between moves `ours`, and then we
/// look again (renames go oldest first, so `ours` still in place means the
/// file opened was its successor).
fn next_file(dir: &Path, ours: &std::fs::Metadata) -> Option<(File, bool)> {
    for _ in 0..100 {
        if std::fs::metadata(file_path(dir, 0)).is_ok_and(|m| same_file(&m, ours)) {
            return None;
        }
        match position(dir, ours) {
            Some(k) => {
                let Ok(f) = File::open(file_path(dir, k - 1)) else {
                    continue;
                };
                if position(dir, ours) == Some(k) {
                    return Some((f, k == 1));
                }
            }
            // Ours was dropped (the oldest beyond max-file): every file
            // left is newer; the oldest of them comes next.
            None => {
                let oldest = (1..MAX_MAX_FILE)
                    .take_while(|&n| file_path(dir, n).exists())
                    .last()
                    .unwrap_or(0);
                let f = File::open(file_path(dir, oldest)).ok()?;
                return Some((f, oldest == 0));
            }
        }
    }
    None
}

/// Every rotated file, oldest first.
fn rotated_oldest_first(dir: &Path) -> Vec<File> {
    let mut files: Vec<File> = (1..MAX_MAX_FILE)
        .map_while(|n| File::open(file_path(dir, n)).ok())
        .collect();
    files.reverse();
    files
}

/// Reads `src` to its end into `batch`, handing full batches to `sink`;
/// false when the sink is gone. `last`: a trailing partial line is final.
fn drain(
    src: &mut Source,
    batch: &mut Batch,
    sink: &mut dyn FnMut(Vec<Entry>) -> bool,
    last: bool,
) -> Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(super::Error::Io {
                    op: "read",
                    path: "task.log".into(),
                    source: e,
                });
            }
        };
        if n == 0 {
            break;
        }
        src.partial.extend_from_slice(&buf[..n]);
        let end = match src.partial.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => continue,
        };
        for line in src.partial[..end].split(|&b| b == b'\n') {
            if !line.is_empty() {
                batch.push(line);
            }
            if batch.full() && !flush(batch, sink) {
                return Ok(false);
            }
        }
        src.partial.drain(..end);
    }
    if last && !src.partial.is_empty() {
        let rest = std::mem::take(&mut src.partial);
        batch.push(&rest);
    }
    Ok(true)
}

fn flush(batch: &mut Batch, sink: &mut dyn FnMut(Vec<Entry>) -> bool) -> bool {
    if batch.entries.is_empty() {
        return true;
    }
    batch.bytes = 0;
    sink(std::mem::take(&mut batch.entries))
}

struct Batch {
    since: Option<SystemTime>,
    entries: Vec<Entry>,
    bytes: usize,
}

impl Batch {
    fn new(since: Option<SystemTime>) -> Self {
        Self {
            since,
            entries: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, line: &[u8]) {
        let Some(e) = format::decode(line) else {
            return;
        };
        if self.since.is_some_and(|s| e.time < s) {
            return;
        }
        self.bytes += e.line.len();
        self.entries.push(e);
    }

    fn full(&self) -> bool {
        self.bytes >= BATCH_BYTES || self.entries.len() >= 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogOptions;
    use crate::logs::format::Stream;
    use crate::logs::writer::RotatingWriter;
    use std::io::Cursor;

    #[test]
    fn tail_start_counts_lines_from_the_end() {
        let data = b"a\nbb\nccc\n";
        let mut c = Cursor::new(&data[..]);
        assert_eq!(tail_start(&mut c, 9, 1).unwrap(), (5, 1));
        assert_eq!(tail_start(&mut c, 9, 2).unwrap(), (2, 2));
        assert_eq!(tail_start(&mut c, 9, 3).unwrap(), (0, 3));
        assert_eq!(tail_start(&mut c, 9, 10).unwrap(), (0, 3));
        assert_eq!(tail_start(&mut c, 9, 0).unwrap(), (9, 0));
        // A torn last line does not count.
        let torn = b"a\nbb\ncc";
        assert_eq!(
            tail_start(&mut Cursor::new(&torn[..]), 7, 1).unwrap(),
            (2, 1)
        );
        assert_eq!(
            tail_start(&mut Cursor::new(&b""[..]), 0, 5).unwrap(),
            (0, 0)
        );
        // Across block boundaries.
        let big: Vec<u8> = (0..100_000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let (at, n) = tail_start(&mut Cursor::new(&big[..]), big.len() as u64, 5).unwrap();
        assert_eq!(n, 5);
        assert_eq!(&big[at as usize..], b"99995\n99996\n99997\n99998\n99999\n");
    }

    fn write(dir: &Path, opts: LogOptions, lines: u32, t0: u64) {
        let mut w = RotatingWriter::open(dir, opts).unwrap();
        for i in 0..lines {
            w.write(&[Entry {
                stream: if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                time: SystemTime::UNIX_EPOCH + Duration::from_secs(t0 + u64::from(i)),
                line: format!("{i}\n").into_bytes(),
            }])
            .unwrap();
        }
    }

    fn collect(dir: &Path, opts: &ReadOptions) -> Vec<String> {
        let mut out = Vec::new();
        read(dir, opts, &|| true, &mut |b| {
            out.extend(b.into_iter().map(|e| String::from_utf8(e.line).unwrap()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn tail_and_since_across_rotated_files() {
        let d = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            max_size: 4096,
            max_file: 5,
        };
        write(d.path(), opts, 200, 1000);
        assert!(file_path(d.path(), 1).exists());
        let all = collect(d.path(), &ReadOptions::default());
        assert_eq!(all.len(), 200);
        assert_eq!(all[0], "0\n");
        let tail = collect(
            d.path(),
            &ReadOptions {
                tail: Some(5),
                ..Default::default()
            },
        );
        assert_eq!(tail, ["195\n", "196\n", "197\n", "198\n", "199\n"]);
        // More than the current file holds: reaches into task.log.1.
        let newest = std::fs::read_to_string(file_path(d.path(), 0))
            .unwrap()
            .lines()
            .count();
        let many = collect(
            d.path(),
            &ReadOptions {
                tail: Some(newest as u64 + 3),
                ..Default::default()
            },
        );
        assert_eq!(many.len(), newest + 3);
        assert_eq!(many.last().unwrap(), "199\n");
        let since = collect(
            d.path(),
            &ReadOptions {
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1190)),
                ..Default::default()
            },
        );
        assert_eq!(since.len(), 10);
        assert_eq!(since[0], "190\n");
        assert!(
            collect(
                d.path(),
                &ReadOptions {
                    tail: Some(0),
                    ..Default::default()
                }
            )
            .is_empty()
        );
    }

    /// Follows the log in a fresh directory while a writer thread adds
    /// lines `3..total` to the 3 already there: it starts after `first`,
    /// and pauses `pause` after every tenth line when given. Returns every
    /// line the follower read, until the writer was done.
    fn follow_while_writing(
        opts: LogOptions,
        total: u32,
        first: Duration,
        pause: Option<Duration>,
    ) -> Vec<String> {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        write(&dir, opts, 3, 0);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let dir = dir.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                std::thread::sleep(first);
                let mut w = RotatingWriter::open(&dir, opts).unwrap();
                for i in 3..total {
                    w.write(&[Entry {
                        stream: Stream::Stdout,
                        time: SystemTime::UNIX_EPOCH,
                        line: format!("{i}\n").into_bytes(),
                    }])
                    .unwrap();
                    if let Some(p) = pause.filter(|_| i % 10 == 0) {
                        std::thread::sleep(p);
                    }
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut got = Vec::new();
        read(
            &dir,
            &ReadOptions {
                follow: true,
                ..Default::default()
            },
            &|| done.load(std::sync::atomic::Ordering::SeqCst),
            &mut |b| {
                got.extend(b.into_iter().map(|e| String::from_utf8(e.line).unwrap()));
                true
            },
        )
        .unwrap();
        writer.join().unwrap();
        got
    }

    #[test]
    fn follow_sees_lines_written_later_and_across_rotation() {
        let opts = LogOptions {
            max_size: 4096,
            max_file: 2,
        };
        let got = follow_while_writing(opts, 300, Duration::ZERO, Some(Duration::from_millis(30)));
        let want: Vec<String> = (0..300).map(|i| format!("{i}\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn follow_reads_every_file_when_it_rotates_many_times_between_looks() {
        let opts = LogOptions {
            max_size: 4096,
            max_file: 60,
        };
        // Let the follower reach the end of what is there first, then
        // ~40 rotations in one burst, far faster than the 100 ms poll.
        let got = follow_while_writing(opts, 3000, Duration::from_millis(50), None);
        let want: Vec<String> = (0..3000).map(|i| format!("{i}\n")).collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
    }

    #[test]
    fn a_gone_sink_ends_a_follow() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), LogOptions::default(), 3, 0);
        let mut calls = 0;
        read(
            d.path(),
            &ReadOptions {
                follow: true,
                ..Default::default()
            },
            &|| false,
            &mut |_| {
                calls += 1;
                false
            },
        )
        .unwrap();
        assert_eq!(calls, 1);
    }
}
