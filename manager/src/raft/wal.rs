//! The Raft log on disk: one append-only file of checksummed records.
//!
//! Why not redb for the log: a redb commit rewrites a dozen scattered 4 KiB
//! pages (B-tree path, table roots, allocator state, header) before its
//! fsync; appending one record and `fdatasync` writes a few hundred bytes
//! sequentially, which costs far less CPU and is flushed sooner. redb keeps
//! the snapshots (see `state_machine`).
//!
//! Format: records `[len: u32 LE][crc32(body): u32 LE][body]`, the body
//! serde_json of a [`Rec`]. Replaying them in order rebuilds the log, the
//! vote, the committed id and the purge point. A torn tail (a record cut
//! short or with a bad checksum, as a crash mid-write leaves it) ends the
//! replay and is cut off; everything before it was fsynced as a whole.
//!
//! The file only grows; once it is both larger than [`COMPACT_AT`] and
//! twice its size after the last compaction, it is rewritten with just the
//! current state at the next purge (when that state is smallest: the log
//! kept behind a fresh snapshot) (write to a temporary file, fsync, rename, fsync the
//! directory), so a crash at any point leaves either the old or the new
//! file whole.
//!
//! Must not: be used by more than one writer at a time (the log writer
//! thread owns it; the redb file lock in the same directory keeps a second
//! process out).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::store::NodeId;

/// File name of the log inside the manager's raft directory.
pub const WAL_FILE: &str = "raft-log.wal";
const WAL_TMP: &str = "raft-log.wal.tmp";

/// Compact no earlier than this size.
const COMPACT_AT: u64 = 32 << 20;

/// Largest record accepted when replaying (a bigger length is a torn or
/// corrupt header).
const MAX_RECORD: u32 = 256 << 20;

/// What to do about a damaged or missing log, for the messages that refuse
/// to open one.
pub(super) const REMEDY: &str = "Leave the data directory as it is and restore it from a \
     backup, or rejoin this host as a fresh manager: on a healthy manager run `weft node \
     demote` and then `weft node rm` for this node, then empty this node's data directory \
     and `weft join` it again";

/// One record, as written: borrows what it stores.
#[derive(Serialize)]
#[serde(rename = "Rec")]
pub(super) enum RecOut<'a> {
    /// Entries appended (replacing any at the same indexes).
    Entries(&'a [Entry<TypeConfig>]),
    /// Entries from this index on removed.
    Truncate(u64),
    /// Entries up to and including this log id removed.
    Purge(LogId<NodeId>),
    /// The vote.
    Vote(Vote<NodeId>),
    /// The committed log id.
    Committed(Option<LogId<NodeId>>),
}

/// One record, as read back.
#[derive(Deserialize)]
#[serde(rename = "Rec")]
enum Rec {
    Entries(Vec<Entry<TypeConfig>>),
    Truncate(u64),
    Purge(LogId<NodeId>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
}

/// Everything the log file holds, as replayed.
#[derive(Default, Clone)]
pub(super) struct LogImage {
    /// Entries by index.
    pub(super) log: BTreeMap<u64, Entry<TypeConfig>>,
    /// The last purged log id.
    pub(super) last_purged: Option<LogId<NodeId>>,
    /// The vote.
    pub(super) vote: Option<Vote<NodeId>>,
    /// The committed log id.
    pub(super) committed: Option<LogId<NodeId>>,
}

impl LogImage {
    fn apply(&mut self, rec: Rec) {
        match rec {
            Rec::Entries(entries) => {
                for e in entries {
                    self.log.insert(e.log_id.index, e);
                }
            }
            Rec::Truncate(since) => drop(self.log.split_off(&since)),
            Rec::Purge(upto) => {
                self.log = self.log.split_off(&(upto.index + 1));
                self.last_purged = Some(upto);
            }
            Rec::Vote(v) => self.vote = Some(v),
            Rec::Committed(c) => self.committed = c,
        }
    }

    /// Applies a record as written (the writer keeps an image for compaction).
    pub(super) fn apply_out(&mut self, rec: &RecOut<'_>) {
        match rec {
            RecOut::Entries(entries) => {
                for e in entries.iter() {
                    self.log.insert(e.log_id.index, e.clone());
                }
            }
            RecOut::Truncate(since) => drop(self.log.split_off(since)),
            RecOut::Purge(upto) => {
                self.log = self.log.split_off(&(upto.index + 1));
                self.last_purged = Some(*upto);
            }
            RecOut::Vote(v) => self.vote = Some(*v),
            RecOut::Committed(c) => self.committed = *c,
        }
    }
}

/// Errors of the log file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading, writing or syncing the file failed.
    #[error("Raft log file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode a Raft log record: {0}")]
    Encode(serde_json::Error),
    /// A record larger than replay accepts ([`MAX_RECORD`]): written, it
    /// would read back as a torn tail and take every later record with it.
    #[error("Raft log record of {0} bytes is larger than the {MAX_RECORD}-byte limit")]
    TooLarge(usize),
    /// A record with a valid checksum did not decode: not a torn write but
    /// a format mismatch, so refuse rather than drop the rest of the log.
    #[error("Raft log file {path}: record at byte {offset} does not decode: {source}")]
    Decode {
        /// Which file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// Why.
        source: serde_json::Error,
    },
}

/// The open log file (owned by the log writer thread).
pub(super) struct Wal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    size: u64,
    /// Size right after the last compaction (or open).
    base: u64,
    /// The file's content, for compaction.
    image: LogImage,
    buf: Vec<u8>,
}

impl Wal {
    /// Opens the log in `dir`, replaying it; creates an empty one if there
    /// is none (whether that is fine is for the caller to say).
    pub(super) fn open(dir: &Path) -> Result<(Wal, LogImage), WalError> {
        let path = dir.join(WAL_FILE);
        let io = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        if !path.try_exists().map_err(io)? {
            write_image(dir, &LogImage::default())?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (image, valid) = replay(&path, &bytes)?;
        if valid < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                kept = valid,
                dropped = bytes.len() as u64 - valid,
                "Raft log file ends in a torn record; cutting it off"
            );
            file.set_len(valid).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            path,
            file,
            size: valid,
            base: valid,
            image: image.clone(),
            buf: Vec::new(),
        };
        Ok((wal, image))
    }

    /// Appends `recs` in one write, then `fdatasync`s if `sync`.
    pub(super) fn write(&mut self, recs: &[RecOut<'_>], sync: bool) -> Result<(), WalError> {
        self.buf.clear();
        for rec in recs {
            encode(&mut self.buf, rec)?;
        }
        let io = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf).map_err(io)?;
            self.size += self.buf.len() as u64;
        }
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        for rec in recs {
            self.image.apply_out(rec);
        }
        // Right after a purge the live log is at its shortest (what is kept
        // behind a snapshot), so rewriting it stalls appends the least.
        let purged = recs.iter().any(|r| matches!(r, RecOut::Purge(_)));
        if sync && purged && self.size > COMPACT_AT && self.size > 2 * self.base {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with only the current state.
    fn compact(&mut self) -> Result<(), WalError> {
        let size = write_image(&self.dir, &self.image)?;
        let io = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        tracing::debug!(from = self.size, to = size, "compacted the Raft log file");
        self.size = size;
        self.base = size;
        Ok(())
    }
}

/// Writes `image` as a fresh log file in `dir` (temporary file, fsync,
/// rename, fsync of the directory); returns its size.
fn write_image(dir: &Path, image: &LogImage) -> Result<u64, WalError> {
    let tmp = dir.join(WAL_TMP);
    let path = dir.join(WAL_FILE);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WalError::Io { path: p, source }
    };
    let mut buf = Vec::new();
    if let Some(v) = image.vote {
        encode(&mut buf, &RecOut::Vote(v))?;
    }
    if let Some(p) = image.last_purged {
        encode(&mut buf, &RecOut::Purge(p))?;
    }
    let entries: Vec<Entry<TypeConfig>> = image.log.values().cloned().collect();
    for chunk in entries.chunks(256) {
        encode(&mut buf, &RecOut::Entries(chunk))?;
    }
    encode(&mut buf, &RecOut::Committed(image.committed))?;
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&buf).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(buf.len() as u64)
}

fn encode(buf: &mut Vec<u8>, rec: &RecOut<'_>) -> Result<(), WalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut *buf, rec).map_err(WalError::Encode)?;
    let body = &buf[start + 8..];
    let len = match u32::try_from(body.len()) {
        Ok(len) if len <= MAX_RECORD => len,
        _ => {
            let size = body.len();
            buf.truncate(start);
            return Err(WalError::TooLarge(size));
        }
    };
    let crc = crc32(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Replays `bytes`; returns the image and how many bytes were whole records.
fn replay(path: &Path, bytes: &[u8]) -> Result<(LogImage, u64), WalError> {
    let mut image = LogImage::default();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if len > MAX_RECORD || bytes.len() - at - 8 < len as usize {
            break;
        }
        let body = &bytes[at + 8..at + 8 + len as usize];
        if crc32(body) != crc {
            break;
        }
        let rec: Rec = serde_json::from_slice(body).map_err(|source| WalError::Decode {
            path: path.to_path_buf(),
            offset: at as u64,
            source,
        })?;
        image.apply(rec);
        at += 8 + len as usize;
    }
    Ok((image, at as u64))
}

/// CRC-32 (IEEE), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, NodeId(1)), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn replays_records_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, image) = Wal::open(dir.path()).expect("open");
        assert!(image.log.is_empty());
        let es = [entry(1, 1), entry(1, 2), entry(1, 3)];
        let vote = Vote::new(1, NodeId(1));
        wal.write(&[RecOut::Vote(vote), RecOut::Entries(&es)], true)
            .expect("write");
        wal.write(
            &[RecOut::Truncate(3), RecOut::Committed(Some(es[1].log_id))],
            true,
        )
        .expect("write");
        wal.write(&[RecOut::Purge(es[0].log_id)], true)
            .expect("write");
        drop(wal);
        // A crash mid-append: half a record at the end.
        let path = dir.path().join(WAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{'])
            .expect("torn");
        drop(f);
        let len_with_tail = std::fs::metadata(&path).expect("meta").len();

        let (_wal, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(image.log.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(image.vote, Some(vote));
        assert_eq!(image.committed, Some(es[1].log_id));
        assert_eq!(image.last_purged, Some(es[0].log_id));
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            len_with_tail - 9,
            "the torn tail is cut off"
        );
    }

    #[test]
    fn compaction_keeps_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path()).expect("open");
        let es: Vec<_> = (1..=10).map(|i| entry(2, i)).collect();
        wal.write(&[RecOut::Entries(&es)], true).expect("write");
        wal.write(&[RecOut::Purge(es[4].log_id)], true)
            .expect("write");
        wal.compact().expect("compact");
        wal.write(&[RecOut::Entries(&[entry(2, 11)])], true)
            .expect("write");
        drop(wal);
        let (_wal, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(
            image.log.keys().copied().collect::<Vec<_>>(),
            (6..=11).collect::<Vec<_>>()
        );
        assert_eq!(image.last_purged, Some(es[4].log_id));
        assert!(!dir.path().join(WAL_TMP).exists());
    }
}
