//! The data directory's format stamp, `<data-dir>/format.json`: which
//! layout of the data directory (its files and the encoding of the Raft log
//! and snapshots) the last weft to run on it wrote, and which weft that
//! was. A weft refuses, before it reads or writes anything else there, a
//! directory stamped with a newer format than it knows: an older binary
//! put back after an upgrade (a rollback, an old package) would otherwise
//! misread what the newer one wrote. A directory without a stamp (new, or
//! written before stamps) is taken as format 1 and stamped.
//!
//! [`DATA_FORMAT`] goes up with a release whose data an older release
//! cannot read; that release's notes say which version to roll back to.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The format this weft reads and writes. 2 (weft 0.2.0): dual-stack
/// networks, whose IPv6 side weft 0.1.0 would drop from its snapshots.
pub const DATA_FORMAT: u32 = 2;

/// The stamp's file name in the data directory.
pub const FILE: &str = "format.json";

/// The largest stamp read (it is a few dozen bytes).
const MAX_LEN: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    format: u32,
    written_by: String,
}

/// Why a data directory is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "the data directory {dir} was written by weft {written_by} (data format {found}); this is \
         weft {this}, which reads data format {known} at most. Run weft {written_by} or newer on \
         it, or give this weft another --data-dir (the node then joins as a new one)"
    )]
    Newer {
        dir: String,
        written_by: String,
        found: u32,
        known: u32,
        this: String,
    },
}

/// Checks `dir`'s stamp against this weft and stamps it with this weft's
/// format and version. Refuses (changing nothing) a newer format or an
/// unreadable stamp.
pub fn check_and_stamp(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(FILE);
    if let Some(found) = read(&path)? {
        check(dir, &found, DATA_FORMAT, weft_worker::VERSION)?;
        if found.format == DATA_FORMAT && found.written_by == weft_worker::VERSION {
            return Ok(());
        }
    }
    write(
        &path,
        &Stamp {
            format: DATA_FORMAT,
            written_by: weft_worker::VERSION.to_string(),
        },
    )
}

/// The stamp at `path`, if there is one.
fn read(path: &Path) -> anyhow::Result<Option<Stamp>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_LEN + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_LEN {
        bail!(
            "{} is larger than {MAX_LEN} bytes: it is not weft's data format stamp",
            path.display()
        );
    }
    let stamp = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a data format stamp (it says which weft wrote this data directory); \
             move it aside only if this directory was never used by a newer weft",
            path.display()
        )
    })?;
    Ok(Some(stamp))
}

/// Whether a weft of `known` format (version `this`) may use a directory
/// stamped `found`.
fn check(dir: &Path, found: &Stamp, known: u32, this: &str) -> Result<(), FormatError> {
    if found.format > known {
        return Err(FormatError::Newer {
            dir: dir.display().to_string(),
            written_by: found.written_by.clone(),
            found: found.format,
            known,
            this: this.to_string(),
        });
    }
    Ok(())
}

/// Writes the stamp durably: a temporary file, synced, renamed over.
fn write(path: &Path, stamp: &Stamp) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("json.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut text = serde_json::to_string(stamp).expect("a stamp serializes");
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(dir: &Path) -> Stamp {
        read(&dir.join(FILE)).unwrap().unwrap()
    }

    #[test]
    fn a_new_or_unstamped_directory_is_stamped_with_this_format() {
        let d = tempfile::tempdir().unwrap();
        check_and_stamp(d.path()).unwrap();
        assert_eq!(
            stamp_of(d.path()),
            Stamp {
                format: DATA_FORMAT,
                written_by: weft_worker::VERSION.into()
            }
        );
        // Again: unchanged.
        check_and_stamp(d.path()).unwrap();
        assert_eq!(stamp_of(d.path()).format, DATA_FORMAT);
    }

    #[test]
    fn a_newer_format_is_refused_saying_who_wrote_it_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let newer = r#"{"format":7,"written_by":"9.1.0"}"#;
        std::fs::write(d.path().join(FILE), newer).unwrap();
        let e = check_and_stamp(d.path()).unwrap_err().to_string();
        assert!(e.contains("written by weft 9.1.0 (data format 7)"), "{e}");
        assert!(
            e.contains(&format!("reads data format {DATA_FORMAT} at most")),
            "{e}"
        );
        assert!(e.contains("Run weft 9.1.0 or newer"), "{e}");
        assert_eq!(std::fs::read_to_string(d.path().join(FILE)).unwrap(), newer);
    }

    #[test]
    fn an_older_format_is_taken_and_restamped() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let older = Stamp {
            format: 0,
            written_by: "0.0.1".into(),
        };
        assert_eq!(check(dir, &older, 1, "0.2.0"), Ok(()));
        std::fs::write(dir.join(FILE), serde_json::to_string(&older).unwrap()).unwrap();
        check_and_stamp(dir).unwrap();
        assert_eq!(stamp_of(dir).format, DATA_FORMAT);
    }

    #[test]
    fn an_unreadable_stamp_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["not json", "{\"format\":-1}", &"x".repeat(5000)] {
            std::fs::write(d.path().join(FILE), bad).unwrap();
            let e = format!("{:#}", check_and_stamp(d.path()).unwrap_err());
            assert!(e.contains("format.json"), "{e}");
            assert_eq!(std::fs::read_to_string(d.path().join(FILE)).unwrap(), bad);
        }
    }
}
