//! Splits output into lines and appends them, as json lines, to
//! `task.log`, rotating it by size: `task.log` → `task.log.1` → … →
//! `task.log.<max-file − 1>`, the oldest dropped (Docker's json-file
//! driver does the same; `max-file` counts the current file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::format::{self, Entry, Stream};
use super::{LOG_FILE, LogOptions, Result, io};

/// Longest line kept whole: longer ones are cut into pieces of this size
/// (Docker cuts at 16 KiB too), so a task printing without newlines
/// cannot make the writer buffer without bound.
pub const MAX_LINE: usize = 16 * 1024;

/// The path of log file `n` in `dir` (0: the current one).
pub fn file_path(dir: &Path, n: u32) -> PathBuf {
    if n == 0 {
        dir.join(LOG_FILE)
    } else {
        dir.join(format!("{LOG_FILE}.{n}"))
    }
}

/// Cuts one stream's bytes into lines. Pure.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    partial: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for `stream`.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            partial: Vec::new(),
        }
    }

    /// Adds `data` read at `now`; returns the complete lines (and pieces of
    /// over-long ones) it finished.
    pub fn push(&mut self, data: &[u8], now: SystemTime, out: &mut Vec<Entry>) {
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &rest[..rest.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&window[..=i]);
                    rest = &rest[i + 1..];
                    self.emit(now, out);
                }
                None => {
                    self.partial.extend_from_slice(window);
                    rest = &rest[window.len()..];
                    if self.partial.len() >= MAX_LINE {
                        self.emit(now, out);
                    }
                }
            }
        }
    }

    /// The unfinished last line, if any (at the end of the stream).
    pub fn finish(&mut self, now: SystemTime, out: &mut Vec<Entry>) {
        if !self.partial.is_empty() {
            self.emit(now, out);
        }
    }

    fn emit(&mut self, now: SystemTime, out: &mut Vec<Entry>) {
        out.push(Entry {
            stream: self.stream,
            time: now,
            line: std::mem::take(&mut self.partial),
        });
    }
}

/// Appends entries to the log files of one task, rotating by size.
#[derive(Debug)]
pub struct RotatingWriter {
    dir: PathBuf,
    opts: LogOptions,
    file: std::fs::File,
    size: u64,
}

impl RotatingWriter {
    /// Opens (creating) the current log file in `dir`.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let path = file_path(dir, 0);
        let file = open_append(&path)?;
        let size = file.metadata().map_err(io("stat", &path))?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            opts,
            file,
            size,
        })
    }

    /// Writes `entries`, each whole in one file; rotates first whenever the
    /// next line would take the current file past `max-size`.
    pub fn write(&mut self, entries: &[Entry]) -> Result<()> {
        let mut pending = Vec::new();
        let mut line = Vec::new();
        for e in entries {
            line.clear();
            format::encode(e, &mut line);
            let used = self.size + pending.len() as u64;
            if used > 0 && used + line.len() as u64 > self.opts.max_size {
                self.append(&pending)?;
                pending.clear();
                self.rotate()?;
            }
            pending.extend_from_slice(&line);
        }
        self.append(&pending)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let path = file_path(&self.dir, 0);
        self.file.write_all(bytes).map_err(io("write", &path))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let current = file_path(&self.dir, 0);
        if self.opts.max_file <= 1 {
            self.file.set_len(0).map_err(io("truncate", &current))?;
            self.size = 0;
            return Ok(());
        }
        let last = file_path(&self.dir, self.opts.max_file - 1);
        match std::fs::remove_file(&last) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &last)(e)),
        }
        for n in (1..self.opts.max_file - 1).rev() {
            let from = file_path(&self.dir, n);
            match std::fs::rename(&from, file_path(&self.dir, n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("rename", &from)(e)),
            }
        }
        std::fs::rename(&current, file_path(&self.dir, 1)).map_err(io("rename", &current))?;
        self.file = open_append(&current)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("open", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    #[test]
    fn splits_lines_keeps_partials_and_cuts_long_ones() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(b"a\nb", t(), &mut out);
        assert_eq!(out.len(), 1);
        s.push(b"c\n\n", t(), &mut out);
        let lines: Vec<_> = out.iter().map(|e| e.line.clone()).collect();
        assert_eq!(
            lines,
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"\n".to_vec()]
        );
        out.clear();
        s.push(&vec![b'x'; MAX_LINE * 2 + 5], t(), &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|e| e.line.len() == MAX_LINE));
        out.clear();
        s.finish(t(), &mut out);
        assert_eq!(out[0].line, vec![b'x'; 5]);
        out.clear();
        s.finish(t(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn rotation_caps_files_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            max_size: 4096,
            max_file: 3,
        };
        let mut w = RotatingWriter::open(d.path(), opts).unwrap();
        for i in 0..2000 {
            w.write(&[Entry {
                stream: Stream::Stdout,
                time: t(),
                line: format!("line {i}\n").into_bytes(),
            }])
            .unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["task.log", "task.log.1", "task.log.2"]);
        for n in 0..3 {
            let len = std::fs::metadata(file_path(d.path(), n)).unwrap().len();
            assert!(len <= 4096, "file {n}: {len}");
        }
        // The newest line is last in task.log, and the files are in order.
        let text = std::fs::read_to_string(file_path(d.path(), 0)).unwrap();
        assert!(text.ends_with(
            "\"line 1999\\n\",\"stream\":\"stdout\",\"time\":\"1970-01-01T00:00:00Z\"}\n"
        ));
        let older = std::fs::read_to_string(file_path(d.path(), 1)).unwrap();
        let last_older = format::decode(older.lines().last().unwrap().as_bytes()).unwrap();
        let first_newer = format::decode(text.lines().next().unwrap().as_bytes()).unwrap();
        let num = |e: &Entry| {
            String::from_utf8_lossy(&e.line)
                .trim()
                .trim_start_matches("line ")
                .parse::<u32>()
                .unwrap()
        };
        assert_eq!(num(&last_older) + 1, num(&first_newer));
    }

    #[test]
    fn one_file_truncates() {
        let d = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            max_size: 4096,
            max_file: 1,
        };
        let mut w = RotatingWriter::open(d.path(), opts).unwrap();
        for _ in 0..500 {
            w.write(&[Entry {
                stream: Stream::Stderr,
                time: t(),
                line: b"0123456789\n".to_vec(),
            }])
            .unwrap();
        }
        assert!(std::fs::metadata(file_path(d.path(), 0)).unwrap().len() <= 4096);
        assert!(!file_path(d.path(), 1).exists());
    }
}
