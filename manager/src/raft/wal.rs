//! The Raft log on disk: one append-only file of checksummed records.
//!
//! Why not redb for the log: a redb commit rewrites a dozen scattered 4 KiB
//! pages (B-tree path, table roots, allocator state, header) before its
//! fsync; appending one record and `fdatasync` writes a few hundred bytes
//! sequentially, which costs far less CPU and is flushed sooner. redb keeps
//! the snapshots (see `state_machine`).
//!
//! # Format
//!
//! ```text
//! file:    [header][record][record]...
//! header:  [0xFE "weftlog": 8 bytes][version = 1: u32 LE][salt: u32 LE, never 0]
//! record:  [0xFE "rec": 4 bytes][len: u32 LE][crc: u32 LE][body: len bytes]
//!          crc = CRC-32 (IEEE) of len ‖ body, started from the file's salt
//! ```
//!
//! A body is serde_json of a [`RecOut`]; replaying the records in order
//! rebuilds the log, the vote, the committed id and the purge point.
//!
//! Why the magic and the salt: nothing but a record written to this very
//! file reads as one. Zeros (what ext4 or XFS can leave after a power loss)
//! and garbage fail the magic; a record of another log file (an earlier one
//! whose blocks were reused) fails the checksum, which every file seeds with
//! its own random salt. 0xFE never occurs in UTF-8, so no JSON body holds a
//! record magic: a search for the next record never stops inside a body.
//!
//! # Torn tail or damage
//!
//! Replay stops at the first bad record: fewer bytes left than a record
//! header, wrong magic, a length beyond the end of the file or above
//! [`MAX_RECORD`], or a checksum mismatch. Then the rest of the file is
//! searched for a valid record (magic, length and checksum) starting at any
//! later byte:
//!
//! - None: the bad record is a *torn tail*, the last write cut short by a
//!   crash (an incomplete record, zeros, garbage). Each write is fsynced
//!   before the next one starts and nothing is acknowledged before the
//!   write holding it is fsynced (see `log_store`), so only the last write
//!   can tear, and it was not acknowledged: it is cut off, the file
//!   fsynced, and a warning says how many bytes were cut.
//! - One, at some offset: a record written after the bad bytes made it to
//!   disk, so they are *damage* to acknowledged records (a vote among
//!   them, perhaps; forgetting it could make this node vote twice in a
//!   term). Opening is refused with [`WalError::Damaged`], naming the offset
//!   of the damage, and the file is left untouched.
//!
//! A record whose checksum is right but whose body does not decode is
//! refused too ([`WalError::Decode`]): that is a format mismatch, not a
//! torn write. Two cases this rule cannot tell apart, and how they fall: a
//! flipped bit in the last record looks like a torn write and is cut; and
//! should a power loss persist a later page of the last (unacknowledged)
//! write but not an earlier one, opening is refused although nothing
//! acknowledged was lost, the safe side to err on.
//!
//! # The file as a whole
//!
//! A missing file is created (a header and an empty state); whether a
//! missing log is fine is for the caller to say (the log store refuses it
//! when its database holds a snapshot). A file of the header-less format of
//! earlier builds (`[len][crc32(body)][body]`) is read once, its torn tail
//! cut as before, and rewritten in this format.
//!
//! The file only grows; once it is both larger than [`COMPACT_AT`] and
//! twice its size after the last compaction (or whatever its size, when
//! [`Wal::compact_at_next_purge`] asked: autolock turned on, so that the
//! secrets in the clear leave the file), it is rewritten with just the
//! current state at the next purge (when that state is smallest: the log
//! kept behind a fresh snapshot): write a temporary file, fsync, rename,
//! fsync the directory, so a crash at any point leaves either the old or
//! the new file whole. Compaction is skipped, with a warning, when the
//! file system lacks room for the copy plus [`COMPACT_HEADROOM`], or when
//! writing the copy fails; the temporary file never stays behind (one left
//! by a crash is removed at open).
//!
//! A write or fsync that fails is retried once on a file rewritten from
//! memory, from what earlier writes fsynced (see [`Wal::write`] for why not
//! on the file as it is); only a failure that survives that is an error.
//!
//! Must not: be used by more than one writer at a time (the log writer
//! thread owns it; the redb file lock in the same directory keeps a second
//! process out).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::wal_failpoint::HoldBeforeFsync;
use crate::store::NodeId;

/// File name of the log inside the manager's raft directory.
pub const WAL_FILE: &str = "raft-log.wal";
const WAL_TMP: &str = "raft-log.wal.tmp";

/// First bytes of a log file.
const FILE_MAGIC: [u8; 8] = *b"\xFEweftlog";
/// The format version after [`FILE_MAGIC`].
const VERSION: u32 = 1;
/// Magic, version, salt.
const HEADER_LEN: usize = 16;
/// First bytes of a record.
const RECORD_MAGIC: [u8; 4] = *b"\xFErec";
/// Magic, length, checksum.
const RECORD_HEADER: usize = 12;

/// Compact no earlier than this size.
const COMPACT_AT: u64 = 32 << 20;

/// Free space a compaction leaves besides its copy of the log: the copy
/// must not be what fills the disk under the appends that go on meanwhile
/// and under redb's next snapshot.
const COMPACT_HEADROOM: u64 = 16 << 20;

/// Largest record accepted when replaying (a bigger length is a torn or
/// corrupt header).
const MAX_RECORD: u32 = 256 << 20;

/// What to do about a damaged or missing log, for the messages that refuse
/// to open one.
pub(super) const REMEDY: &str = "`weft doctor raft --data-dir DIR` describes the damage \
     without changing anything. Leave the data directory as it is and restore it from a \
     backup, or rejoin this host as a fresh manager: on a healthy manager run `weft node \
     demote` and then `weft node rm` for this node, then empty this node's data directory \
     and `weft join` it again";

/// Bytes free for an unprivileged writer on the file system holding a path.
pub(super) type FreeSpace = fn(&Path) -> std::io::Result<u64>;

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
    /// would read back as a bad record and stop the replay.
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
    /// A bad record with a valid one after it: damage to acknowledged
    /// records, not a torn tail (see the module docs).
    #[error(
        "Raft log file {path} is damaged at byte {offset}, before a valid record at byte \
         {next}: records after the damage were acknowledged, so it cannot be cut off as a \
         torn write. {remedy}",
        remedy = REMEDY
    )]
    Damaged {
        /// Which file.
        path: PathBuf,
        /// Where the first bad record starts.
        offset: u64,
        /// Where the next valid record starts.
        next: u64,
    },
    /// The file starts with neither a log header nor a record of the
    /// earlier header-less format.
    #[error(
        "Raft log file {path} does not start with a weft Raft log header: it is damaged or \
         not a Raft log. {remedy}",
        remedy = REMEDY
    )]
    BadHeader {
        /// Which file.
        path: PathBuf,
    },
    /// The file is in a format version this build does not know.
    #[error(
        "Raft log file {path} is in format version {version}; this weft reads version \
         {VERSION}: run the weft that wrote it"
    )]
    Version {
        /// Which file.
        path: PathBuf,
        /// The version in its header.
        version: u32,
    },
}

/// Why writing a whole new log file failed.
enum ReplaceError {
    /// Before the rename: the file in place (if any) is untouched and the
    /// temporary copy is gone.
    Before(WalError),
    /// After the rename: the new file is in place, but whether the rename
    /// survives a crash is unknown.
    After(WalError),
}

impl ReplaceError {
    fn into_inner(self) -> WalError {
        match self {
            ReplaceError::Before(e) | ReplaceError::After(e) => e,
        }
    }
}

/// The open log file (owned by the log writer thread).
pub(super) struct Wal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Seeds the checksum of every record of this file.
    salt: u32,
    size: u64,
    /// Size right after the last compaction (or open).
    base: u64,
    /// The file's content, for compaction.
    image: LogImage,
    buf: Vec<u8>,
    /// Asked before a compaction; tests replace it to act out a full disk.
    free_space: FreeSpace,
    /// The end-to-end tests' stop between a write and its fsync.
    hold: Option<HoldBeforeFsync>,
    /// Compact at the next purge whatever the size (autolock turned on:
    /// the entries before it, secrets in the clear, must leave the file).
    compact_next_purge: bool,
}

impl Wal {
    /// Opens the log in `dir`, replaying it; creates an empty one if there
    /// is none. A torn tail is cut off; damage is refused (see the module
    /// docs).
    pub(super) fn open(dir: &Path) -> Result<(Wal, LogImage), WalError> {
        let path = dir.join(WAL_FILE);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| WalError::Io { path: p, source }
        };
        if remove_tmp(dir)? {
            tracing::info!(
                path = %dir.join(WAL_TMP).display(),
                "removed the copy of a Raft log compaction cut short"
            );
        }
        if !path.try_exists().map_err(io(&path))? {
            let (bytes, _) = encode_image(&LogImage::default())?;
            replace_file(dir, &bytes).map_err(ReplaceError::into_inner)?;
        }
        let mut bytes = std::fs::read(&path).map_err(io(&path))?;
        let salt = match read_header(&path, &bytes)? {
            Some(salt) => salt,
            None => {
                rewrite_v0(dir, &path, &bytes)?;
                bytes = std::fs::read(&path).map_err(io(&path))?;
                read_header(&path, &bytes)?
                    .ok_or_else(|| WalError::BadHeader { path: path.clone() })?
            }
        };
        let (image, valid) = replay(&path, &bytes, salt)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                at = valid,
                cut = bytes.len() - valid,
                "Raft log file ends in a torn write (nothing valid follows it); cutting off {} bytes",
                bytes.len() - valid
            );
            file.set_len(valid as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            path,
            file,
            salt,
            size: valid as u64,
            base: valid as u64,
            image: image.clone(),
            buf: Vec::new(),
            free_space: statvfs_free,
            hold: HoldBeforeFsync::from_env(dir),
            compact_next_purge: false,
        };
        Ok((wal, image))
    }

    /// Appends `recs` in one write, then `fdatasync`s if `sync`. Returns
    /// `Ok` only once they are written (and fsynced, if `sync`).
    ///
    /// A failed write or fsync leaves the file in an unknown state: perhaps
    /// a torn record, which a retry appended after it would turn into
    /// damage, and after a failed fsync the page cache may hold bytes that
    /// never reached the disk (so re-reading the file proves nothing). The
    /// file is therefore rewritten from memory, from what earlier writes
    /// fsynced, and `recs` are appended to that once more; only if that
    /// fails too is the error returned.
    pub(super) fn write(&mut self, recs: &[RecOut<'_>], sync: bool) -> Result<(), WalError> {
        if let Err(e) = self.append(recs, sync) {
            tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "Raft log write failed; rewriting the file from what was fsynced and retrying"
            );
            let (bytes, salt) = encode_image(&self.image)?;
            replace_file(&self.dir, &bytes).map_err(ReplaceError::into_inner)?;
            self.install(bytes.len(), salt)?;
            self.append(recs, sync)?;
        }
        for rec in recs {
            self.image.apply_out(rec);
        }
        // Right after a purge the live log is at its shortest (what is kept
        // behind a snapshot), so rewriting it stalls appends the least.
        let purged = recs.iter().any(|r| matches!(r, RecOut::Purge(_)));
        let grown = self.size > COMPACT_AT && self.size > 2 * self.base;
        if sync && purged && (grown || self.compact_next_purge) && self.compact()? {
            self.compact_next_purge = false;
        }
        Ok(())
    }

    /// Makes the next purge compact the file whatever its size, so that
    /// what the purge drops leaves the file (not only the live log).
    pub(super) fn compact_at_next_purge(&mut self) {
        self.compact_next_purge = true;
    }

    /// Appends `recs` to the file as it is.
    fn append(&mut self, recs: &[RecOut<'_>], sync: bool) -> Result<(), WalError> {
        self.buf.clear();
        for rec in recs {
            encode(&mut self.buf, rec, self.salt)?;
        }
        let io = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        let fsynced = self.size;
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf).map_err(io)?;
            self.size += self.buf.len() as u64;
        }
        if sync && let Some(hold) = &self.hold {
            hold.check(fsynced, self.size);
        }
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Switches to the file just put in place, of `size` bytes and `salt`.
    fn install(&mut self, size: usize, salt: u32) -> Result<(), WalError> {
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| WalError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.salt = salt;
        self.size = size as u64;
        self.base = self.size;
        Ok(())
    }

    /// Rewrites the file with only the current state; returns whether it
    /// did. Skipped (with a warning, the old file in place) when the disk
    /// lacks room or the copy cannot be written; an error only when the
    /// new file is in place but not known to be durable, or cannot be
    /// reopened: appending to the old, replaced file would lose records.
    fn compact(&mut self) -> Result<bool, WalError> {
        let skip = |why: &dyn std::fmt::Display| {
            tracing::warn!(
                path = %self.path.display(),
                size = self.size,
                "not compacting the Raft log file: {why}; it keeps growing until a later purge"
            );
        };
        let (bytes, salt) = match encode_image(&self.image) {
            Ok(encoded) => encoded,
            Err(e) => {
                skip(&e);
                return Ok(false);
            }
        };
        let need = bytes.len() as u64 + COMPACT_HEADROOM;
        match (self.free_space)(&self.dir) {
            Ok(free) if free >= need => {}
            Ok(free) => {
                skip(&format_args!("{free} bytes free, {need} needed"));
                return Ok(false);
            }
            Err(e) => {
                skip(&format_args!("cannot tell the free space: {e}"));
                return Ok(false);
            }
        }
        match replace_file(&self.dir, &bytes) {
            Ok(()) => {}
            Err(ReplaceError::Before(e)) => {
                skip(&e);
                return Ok(false);
            }
            Err(ReplaceError::After(e)) => return Err(e),
        }
        tracing::debug!(
            from = self.size,
            to = bytes.len(),
            "compacted the Raft log file"
        );
        self.install(bytes.len(), salt)?;
        Ok(true)
    }
}

/// Free space via `statvfs`: the blocks available to unprivileged writers,
/// so the reserve kept for root is not counted on.
fn statvfs_free(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// A salt for a new file: random, so no two files share one, and never 0.
fn new_salt() -> u32 {
    rand::random::<u32>().max(1)
}

/// Encodes `image` as a whole log file with a fresh salt; returns the bytes
/// and the salt.
fn encode_image(image: &LogImage) -> Result<(Vec<u8>, u32), WalError> {
    let salt = new_salt();
    let mut buf = Vec::with_capacity(HEADER_LEN);
    buf.extend_from_slice(&FILE_MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&salt.to_le_bytes());
    if let Some(v) = image.vote {
        encode(&mut buf, &RecOut::Vote(v), salt)?;
    }
    if let Some(p) = image.last_purged {
        encode(&mut buf, &RecOut::Purge(p), salt)?;
    }
    let entries: Vec<Entry<TypeConfig>> = image.log.values().cloned().collect();
    for chunk in entries.chunks(256) {
        encode(&mut buf, &RecOut::Entries(chunk), salt)?;
    }
    encode(&mut buf, &RecOut::Committed(image.committed), salt)?;
    Ok((buf, salt))
}

/// Makes `bytes` the log file in `dir`: a temporary file, fsync, rename,
/// fsync of the directory.
fn replace_file(dir: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    let tmp = dir.join(WAL_TMP);
    let path = dir.join(WAL_FILE);
    let copied = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|source| WalError::Io {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            std::fs::rename(&tmp, &path).map_err(|source| WalError::Io {
                path: path.clone(),
                source,
            })
        });
    if let Err(e) = copied {
        // rename(2) is atomic: the old file stands, only the copy is left.
        if let Err(rm) = remove_tmp(dir) {
            tracing::warn!(error = %rm, "cannot remove the Raft log's temporary copy");
        }
        return Err(ReplaceError::Before(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| {
            ReplaceError::After(WalError::Io {
                path: dir.to_path_buf(),
                source,
            })
        })
}

/// Removes the temporary copy in `dir`; returns whether there was one.
fn remove_tmp(dir: &Path) -> Result<bool, WalError> {
    let tmp = dir.join(WAL_TMP);
    match std::fs::remove_file(&tmp) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(WalError::Io { path: tmp, source }),
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The checksum of a record: CRC-32 of its length and body, seeded with the
/// file's salt.
fn checksum(salt: u32, len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn encode(buf: &mut Vec<u8>, rec: &RecOut<'_>, salt: u32) -> Result<(), WalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    serde_json::to_writer(&mut *buf, rec).map_err(WalError::Encode)?;
    let body = &buf[start + RECORD_HEADER..];
    let len = match u32::try_from(body.len()) {
        Ok(len) if len <= MAX_RECORD => len,
        _ => {
            let size = body.len();
            buf.truncate(start);
            return Err(WalError::TooLarge(size));
        }
    };
    let crc = checksum(salt, len, body);
    buf[start..start + 4].copy_from_slice(&RECORD_MAGIC);
    buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The salt of a file in the current format, or `None` if `bytes` does not
/// start with [`FILE_MAGIC`].
fn read_header(path: &Path, bytes: &[u8]) -> Result<Option<u32>, WalError> {
    if !bytes.starts_with(&FILE_MAGIC) {
        return Ok(None);
    }
    let bad = || WalError::BadHeader {
        path: path.to_path_buf(),
    };
    let header = bytes.get(..HEADER_LEN).ok_or_else(bad)?;
    let version = le_u32(&header[8..12]);
    if version != VERSION {
        return Err(WalError::Version {
            path: path.to_path_buf(),
            version,
        });
    }
    match le_u32(&header[12..16]) {
        0 => Err(bad()),
        salt => Ok(Some(salt)),
    }
}

/// The whole valid record at `at`, if there is one: its body and where it
/// ends.
fn record_at(bytes: &[u8], at: usize, salt: u32) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at.checked_add(RECORD_HEADER)?)?;
    if header[..4] != RECORD_MAGIC {
        return None;
    }
    let len = le_u32(&header[4..8]);
    if len > MAX_RECORD {
        return None;
    }
    let end = at + RECORD_HEADER + len as usize;
    let body = bytes.get(at + RECORD_HEADER..end)?;
    (checksum(salt, len, body) == le_u32(&header[8..12])).then_some((body, end))
}

/// Where the first valid record at or after `from` starts.
fn next_record(bytes: &[u8], from: usize, salt: u32) -> Option<usize> {
    (from..bytes.len())
        .filter(|&at| bytes[at..].starts_with(&RECORD_MAGIC))
        .find(|&at| record_at(bytes, at, salt).is_some())
}

fn decode(path: &Path, at: usize, body: &[u8]) -> Result<Rec, WalError> {
    serde_json::from_slice(body).map_err(|source| WalError::Decode {
        path: path.to_path_buf(),
        offset: at as u64,
        source,
    })
}

/// Replays a file in the current format; returns the image and how many
/// bytes to keep (less than all: a torn tail to cut).
fn replay(path: &Path, bytes: &[u8], salt: u32) -> Result<(LogImage, usize), WalError> {
    let mut image = LogImage::default();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let Some((body, end)) = record_at(bytes, at, salt) else {
            return match next_record(bytes, at + 1, salt) {
                Some(next) => Err(WalError::Damaged {
                    path: path.to_path_buf(),
                    offset: at as u64,
                    next: next as u64,
                }),
                None => Ok((image, at)),
            };
        };
        image.apply(decode(path, at, body)?);
        at = end;
    }
    Ok((image, at))
}

/// Reads a log file's bytes as [`Wal::open`] would, changing nothing:
/// the image and how many bytes a start would keep (less than all: a torn
/// tail it would cut). A file of the header-less format of earlier builds
/// (which a start rewrites) is reported as having no header.
pub(super) fn inspect(path: &Path, bytes: &[u8]) -> Result<(LogImage, usize), WalError> {
    let salt = read_header(path, bytes)?.ok_or_else(|| WalError::BadHeader {
        path: path.to_path_buf(),
    })?;
    replay(path, bytes, salt)
}

/// Rewrites a file of the header-less format of earlier builds
/// (`[len: u32 LE][crc32(body): u32 LE][body]`) in the current format.
/// Replay ends at its first bad record, as it did in those builds.
fn rewrite_v0(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let mut image = LogImage::default();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = le_u32(&header[..4]);
        // No record has an empty body; a zero length is a zeroed tail (and
        // the CRC of nothing is 0, so its checksum would match).
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let Some(body) = bytes.get(at + 8..at + 8 + len as usize) else {
            break;
        };
        if crc32fast::hash(body) != le_u32(&header[4..8]) {
            break;
        }
        image.apply(decode(path, at, body)?);
        at += 8 + len as usize;
    }
    if at == 0 {
        return Err(WalError::BadHeader {
            path: path.to_path_buf(),
        });
    }
    let (new, _) = encode_image(&image)?;
    replace_file(dir, &new).map_err(ReplaceError::into_inner)?;
    tracing::info!(
        path = %path.display(),
        cut = bytes.len() - at,
        "rewrote the Raft log file in format version {VERSION} (it had the header-less format of earlier builds)"
    );
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use rand::{Rng, SeedableRng};

    /// A blank entry of `term` (leader node 1) at `index`.
    pub(in crate::raft) fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, NodeId(1)), index),
            payload: EntryPayload::Blank,
        }
    }

    fn vote() -> Vote<NodeId> {
        Vote::new(1, NodeId(1))
    }

    fn wal_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(WAL_FILE)
    }

    fn read(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(wal_path(dir)).expect("read")
    }

    fn append_bytes(dir: &tempfile::TempDir, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(wal_path(dir))
            .expect("open");
        f.write_all(bytes).expect("append");
    }

    /// A log holding a vote and entries 1..=3, written as three records in
    /// three writes; returns where each record starts and where the last
    /// ends.
    fn three_writes(dir: &tempfile::TempDir) -> [usize; 4] {
        let (mut wal, _) = Wal::open(dir.path()).expect("open");
        let mut ends = [wal.size as usize; 4];
        wal.write(&[RecOut::Vote(vote())], true).expect("write");
        ends[1] = wal.size as usize;
        wal.write(&[RecOut::Entries(&[entry(1, 1), entry(1, 2)])], true)
            .expect("write");
        ends[2] = wal.size as usize;
        wal.write(&[RecOut::Entries(&[entry(1, 3)])], true)
            .expect("write");
        ends[3] = wal.size as usize;
        ends
    }

    fn indexes(image: &LogImage) -> Vec<u64> {
        image.log.keys().copied().collect()
    }

    /// Opens `dir` and checks it holds all of [`three_writes`], that any
    /// tail was cut back to `ends[3]`, and that the log takes appends again.
    fn assert_reopens_whole(dir: &tempfile::TempDir, ends: [usize; 4]) {
        let (mut wal, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&image), vec![1, 2, 3]);
        assert_eq!(image.vote, Some(vote()));
        assert_eq!(read(dir).len(), ends[3], "the tail is cut off");
        wal.write(&[RecOut::Entries(&[entry(1, 4)])], true)
            .expect("write after the cut");
        drop(wal);
        let (_, image) = Wal::open(dir.path()).expect("reopen after the cut");
        assert_eq!(indexes(&image), vec![1, 2, 3, 4]);
    }

    #[test]
    fn replays_records_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, image) = Wal::open(dir.path()).expect("open");
        assert!(image.log.is_empty());
        let es = [entry(1, 1), entry(1, 2), entry(1, 3)];
        wal.write(&[RecOut::Vote(vote()), RecOut::Entries(&es)], true)
            .expect("write");
        wal.write(
            &[RecOut::Truncate(3), RecOut::Committed(Some(es[1].log_id))],
            true,
        )
        .expect("write");
        wal.write(&[RecOut::Purge(es[0].log_id)], true)
            .expect("write");
        let whole = wal.size as usize;
        drop(wal);
        // A crash mid-append: half a record at the end.
        append_bytes(
            &dir,
            &[0xFE, b'r', b'e', b'c', 200, 0, 0, 0, 1, 2, 3, 4, b'{'],
        );

        let (_wal, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&image), vec![2]);
        assert_eq!(image.vote, Some(vote()));
        assert_eq!(image.committed, Some(es[1].log_id));
        assert_eq!(image.last_purged, Some(es[0].log_id));
        assert_eq!(read(&dir).len(), whole, "the torn tail is cut off");
    }

    /// Appends a tail (made from the file's salt) to [`three_writes`] and
    /// checks that reopening cuts exactly that tail.
    fn assert_tail_is_cut(tail: impl FnOnce(u32) -> Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ends = three_writes(&dir);
        append_bytes(&dir, &tail(file_salt(&dir)));
        assert_reopens_whole(&dir, ends);
    }

    fn file_salt(dir: &tempfile::TempDir) -> u32 {
        read_header(&wal_path(dir), &read(dir))
            .expect("header")
            .expect("current format")
    }

    #[test]
    fn zero_tail_of_4_kib_is_cut() {
        assert_tail_is_cut(|_| vec![0; 4096]);
    }

    #[test]
    fn eight_zero_bytes_are_cut() {
        assert_tail_is_cut(|_| vec![0; 8]);
    }

    #[test]
    fn garbage_tail_is_cut() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut garbage = vec![0u8; 8192];
        rng.fill(&mut garbage[..]);
        assert_tail_is_cut(|_| garbage);
    }

    #[test]
    fn garbage_tail_with_a_record_of_another_log_file_is_cut() {
        // What a reused block of an earlier log file could leave: a whole
        // record, checksummed with that file's salt.
        assert_tail_is_cut(|salt| {
            let mut tail = vec![0; 512];
            encode(&mut tail, &RecOut::Vote(Vote::new(9, NodeId(9))), salt ^ 1).expect("encode");
            tail
        });
    }

    /// Opens `dir` and checks it holds [`three_writes`] but for its last
    /// record, which was cut off.
    fn assert_reopens_without_the_last_record(dir: &tempfile::TempDir, ends: [usize; 4]) {
        let (_, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&image), vec![1, 2]);
        assert_eq!(image.vote, Some(vote()));
        assert_eq!(read(dir).len(), ends[2]);
    }

    #[test]
    fn truncated_last_record_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ends = three_writes(&dir);
        // Cut inside the last record's body, then inside its header.
        for keep in [ends[3] - 5, ends[2] + 6] {
            let f = OpenOptions::new()
                .write(true)
                .open(wal_path(&dir))
                .expect("open");
            f.set_len(keep as u64).expect("truncate");
            drop(f);
            assert_reopens_without_the_last_record(&dir, ends);
        }
    }

    #[test]
    fn flipped_byte_in_the_last_record_is_cut_as_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ends = three_writes(&dir);
        let mut bytes = read(&dir);
        bytes[ends[2] + RECORD_HEADER + 3] ^= 0x01;
        std::fs::write(wal_path(&dir), &bytes).expect("write");
        assert_reopens_without_the_last_record(&dir, ends);
    }

    #[test]
    fn flipped_byte_before_a_valid_record_is_refused_naming_its_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ends = three_writes(&dir);
        let whole = read(&dir);
        // Every part of the middle record: magic, length, checksum, body.
        for at in [0, 5, 9, RECORD_HEADER + 3] {
            let mut bytes = whole.clone();
            bytes[ends[1] + at] ^= 0x01;
            std::fs::write(wal_path(&dir), &bytes).expect("write");
            let err = Wal::open(dir.path()).err().expect("damage is refused");
            match &err {
                WalError::Damaged { offset, next, .. } => {
                    assert_eq!((*offset, *next), (ends[1] as u64, ends[2] as u64));
                }
                other => panic!("flip at +{at}: expected Damaged, got {other}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&wal_path(&dir).display().to_string()), "{msg}");
            assert!(msg.contains(&format!("byte {}", ends[1])), "{msg}");
            assert!(msg.contains("weft node demote"), "{msg}");
            assert_eq!(read(&dir), bytes, "a refused file is left untouched");
        }
    }

    #[test]
    fn record_that_does_not_decode_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ends = three_writes(&dir);
        let salt = file_salt(&dir);
        let body = br#"{"NotARecord":1}"#;
        let len = body.len() as u32;
        let mut rec = RECORD_MAGIC.to_vec();
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&checksum(salt, len, body).to_le_bytes());
        rec.extend_from_slice(body);
        append_bytes(&dir, &rec);
        let before = read(&dir);
        match Wal::open(dir.path()) {
            Err(WalError::Decode { offset, .. }) => assert_eq!(offset, ends[3] as u64),
            Err(e) => panic!("expected Decode, got {e}"),
            Ok(_) => panic!("a record that does not decode was accepted"),
        }
        assert_eq!(read(&dir), before);
    }

    /// A record in the header-less format of earlier builds.
    fn v0_record(rec: &RecOut<'_>) -> Vec<u8> {
        let body = serde_json::to_vec(rec).expect("encode");
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn file_of_the_earlier_format_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let es = [entry(1, 1), entry(1, 2), entry(1, 3)];
        let mut old = Vec::new();
        old.extend(v0_record(&RecOut::Vote(vote())));
        old.extend(v0_record(&RecOut::Entries(&es)));
        old.extend(v0_record(&RecOut::Purge(es[0].log_id)));
        old.extend(v0_record(&RecOut::Committed(Some(es[2].log_id))));
        // A zeroed tail, which those builds refused to open.
        old.extend([0; 4096]);
        std::fs::write(wal_path(&dir), &old).expect("write");

        let (mut wal, image) = Wal::open(dir.path()).expect("open");
        assert_eq!(indexes(&image), vec![2, 3]);
        assert_eq!(image.vote, Some(vote()));
        assert_eq!(image.last_purged, Some(es[0].log_id));
        assert_eq!(image.committed, Some(es[2].log_id));
        assert!(read(&dir).starts_with(&FILE_MAGIC), "rewritten");
        assert!(!dir.path().join(WAL_TMP).exists());
        wal.write(&[RecOut::Entries(&[entry(1, 4)])], true)
            .expect("write");
        drop(wal);
        let (_, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&image), vec![2, 3, 4]);
        assert_eq!(image.vote, Some(vote()));
    }

    #[test]
    fn file_without_a_header_or_of_another_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (bytes, want) in [
            (
                b"not a log at all".to_vec(),
                "does not start with a weft Raft log header",
            ),
            (Vec::new(), "does not start with a weft Raft log header"),
            (vec![0; 4096], "does not start with a weft Raft log header"),
            (
                [&FILE_MAGIC[..], &2u32.to_le_bytes(), &7u32.to_le_bytes()].concat(),
                "format version 2",
            ),
        ] {
            std::fs::write(wal_path(&dir), &bytes).expect("write");
            let err = Wal::open(dir.path()).err().expect("refused");
            assert!(err.to_string().contains(want), "{err}");
            assert_eq!(read(&dir), bytes, "a refused file is left untouched");
        }
    }

    #[test]
    fn stale_temporary_copy_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join(WAL_TMP);
        // Beside no log (a first open cut short) and beside one.
        std::fs::write(&tmp, b"half a compaction").expect("write");
        drop(Wal::open(dir.path()).expect("open"));
        assert!(!tmp.exists());
        std::fs::write(&tmp, b"half a compaction").expect("write");
        drop(Wal::open(dir.path()).expect("reopen"));
        assert!(!tmp.exists());
    }

    /// A log of entries 1..=10 with 1..=5 purged, not yet compacted.
    fn purged_log(dir: &tempfile::TempDir) -> (Wal, Vec<Entry<TypeConfig>>) {
        let (mut wal, _) = Wal::open(dir.path()).expect("open");
        let es: Vec<_> = (1..=10).map(|i| entry(2, i)).collect();
        wal.write(&[RecOut::Entries(&es)], true).expect("write");
        wal.write(&[RecOut::Purge(es[4].log_id)], true)
            .expect("write");
        (wal, es)
    }

    /// Appends entry 11 to a [`purged_log`], closes it, and checks that it
    /// reopens with entries 6..=11; returns what it reopened with.
    fn assert_appends_and_reopens(
        mut wal: Wal,
        dir: &tempfile::TempDir,
        es: &[Entry<TypeConfig>],
    ) -> LogImage {
        wal.write(&[RecOut::Entries(&[entry(2, 11)])], true)
            .expect("write");
        drop(wal);
        let (_wal, image) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&image), (6..=11).collect::<Vec<_>>());
        assert_eq!(image.last_purged, Some(es[4].log_id));
        image
    }

    /// Puts a non-empty directory where the log file was, so that nothing
    /// can be renamed over it.
    fn block_the_log_name(dir: &tempfile::TempDir) {
        std::fs::remove_file(wal_path(dir)).expect("rm");
        std::fs::create_dir(wal_path(dir)).expect("mkdir");
        std::fs::write(wal_path(dir).join("x"), b"x").expect("write");
    }

    #[test]
    fn compaction_keeps_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, es) = purged_log(&dir);
        wal.free_space = |_| Ok(u64::MAX);
        let before = wal.size;
        assert!(wal.compact().expect("compact"), "compacted");
        assert!(wal.size < before);
        assert_eq!(read(&dir).len() as u64, wal.size);
        assert!(!dir.path().join(WAL_TMP).exists());
        assert_appends_and_reopens(wal, &dir, &es);
    }

    #[test]
    fn compaction_is_skipped_not_failed_when_space_is_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, es) = purged_log(&dir);
        let before = read(&dir);
        // Room for the copy but not the headroom; then no answer at all.
        wal.free_space = |_| Ok(1024);
        assert!(!wal.compact().expect("skipped, not failed"));
        wal.free_space = |_| Err(std::io::Error::other("statvfs failed"));
        assert!(!wal.compact().expect("skipped, not failed"));
        assert_eq!(read(&dir), before, "the file is untouched");
        assert!(!dir.path().join(WAL_TMP).exists());
        assert_appends_and_reopens(wal, &dir, &es);
    }

    #[test]
    fn compaction_that_cannot_rename_leaves_no_temporary_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = purged_log(&dir);
        wal.free_space = |_| Ok(u64::MAX);
        // The copy is written but cannot be renamed over the log.
        block_the_log_name(&dir);
        assert!(!wal.compact().expect("skipped, not failed"));
        assert!(!dir.path().join(WAL_TMP).exists());
    }

    /// Makes the log's handle refuse writes, as a failing disk would.
    fn break_handle(wal: &mut Wal) {
        wal.file = File::open(&wal.path).expect("read-only handle");
    }

    #[test]
    fn failed_write_is_retried_on_a_file_rewritten_from_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, es) = purged_log(&dir);
        // The failed write left a torn record: appending after it would
        // make it damage, refused at the next open.
        append_bytes(&dir, &RECORD_MAGIC);
        break_handle(&mut wal);
        wal.write(&[RecOut::Vote(vote())], true)
            .expect("healed by the rewrite");
        assert_eq!(read(&dir).len() as u64, wal.size, "the torn record is gone");
        assert!(!dir.path().join(WAL_TMP).exists());
        let image = assert_appends_and_reopens(wal, &dir, &es);
        assert_eq!(image.vote, Some(vote()));
    }

    #[test]
    fn write_that_fails_after_the_rewrite_too_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = purged_log(&dir);
        break_handle(&mut wal);
        // Nor can the log be replaced.
        block_the_log_name(&dir);
        assert!(wal.write(&[RecOut::Vote(vote())], true).is_err());
        assert_eq!(wal.image.vote, None, "what failed is not taken as written");
        assert!(!dir.path().join(WAL_TMP).exists());
    }
}
