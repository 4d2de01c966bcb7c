//! Reading an image archive (a tar, already decompressed) without trusting
//! it: one pass builds an index of its files (offset, size, sha256), then
//! the format is detected and small JSON files are read by seeking into it.
//!
//! ```text
//!   OCI image layout                       docker save (legacy)
//!   ├── oci-layout   {"imageLayoutVersion"} ├── manifest.json  [{Config, RepoTags, Layers}]
//!   ├── index.json   {manifests: [desc…]}   ├── <hex>.json     the image config
//!   └── blobs/sha256/<hex>                  └── <id>/layer.tar (or a symlink to another's)
//! ```
//!
//! Refused here, before anything reaches containerd: absolute paths and
//! `..` components, links leaving the archive (or looping), more entries
//! than [`Limits::max_entries`], JSON files over [`Limits::max_json`],
//! truncated or malformed tars. Every file's digest is computed during the
//! pass, so the planner checks each blob against the digest its parent
//! names (containerd checks again when the blob is committed).
//!
//! Pure apart from reading the given reader: unit-tested with tars built in
//! memory.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// Bounds on what an archive may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Tar entries (files, directories, links).
    pub max_entries: usize,
    /// Size of any JSON file read into memory (index.json, manifest.json,
    /// manifests, configs).
    pub max_json: u64,
    /// Layers of one image.
    pub max_layers: usize,
}

impl Default for Limits {
    /// 100,000 entries, 4 MiB of JSON per file, 128 layers (Docker's own
    /// layer limit is 125–127 in practice).
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_json: 4 << 20,
            max_layers: 128,
        }
    }
}

/// Why an archive was refused. Each names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The bytes are not a tar, or it ends in the middle of an entry.
    #[error(
        "not a valid image archive (expected a tar or tar.gz from `docker save` or an OCI layout; \
         it may be truncated): {0}"
    )]
    Tar(#[source] io::Error),
    /// An entry name is absolute or climbs out with `..`.
    #[error("refusing archive: entry {name:?} points outside the archive")]
    UnsafePath {
        /// The name as stored.
        name: String,
    },
    /// A symlink or hard link points outside the archive, or links loop.
    #[error("refusing archive: link {name:?} -> {target:?} leaves the archive or loops")]
    UnsafeLink {
        /// The link.
        name: String,
        /// Where it points.
        target: String,
    },
    /// More entries than allowed.
    #[error("refusing archive: more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// A JSON file too large to read.
    #[error("refusing archive: {name} is {size} bytes, over the {max}-byte limit for JSON files")]
    JsonTooLarge {
        /// The entry.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Neither an OCI layout nor a docker-save archive.
    #[error(
        "not an image archive: it has neither index.json with oci-layout (OCI image layout) \
         nor manifest.json (docker save)"
    )]
    UnknownFormat,
    /// A file the format requires, or a blob a manifest names, is missing.
    #[error("refusing archive: {what} {name:?} is not in the archive")]
    Missing {
        /// What it is ("blob", "layer", "config").
        what: &'static str,
        /// The entry name looked for.
        name: String,
    },
    /// A JSON file does not parse as what it must be.
    #[error("refusing archive: {name} is not a valid {what}: {source}")]
    BadJson {
        /// The entry.
        name: String,
        /// What it should be.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A blob's content does not match the digest that names it.
    #[error(
        "refusing archive: {name} has digest {actual}, but {expected} was expected \
         (the archive is corrupt or was tampered with)"
    )]
    DigestMismatch {
        /// The entry.
        name: String,
        /// The digest its parent names.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// A blob's size does not match its descriptor.
    #[error("refusing archive: {name} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        /// The entry.
        name: String,
        /// The descriptor's size.
        expected: u64,
        /// The entry's size.
        actual: u64,
    },
    /// Anything else wrong with the content (unsupported digest algorithm,
    /// no image for this platform, too many layers, …).
    #[error("refusing archive: {0}")]
    Invalid(String),
    /// Reading the spooled archive failed.
    #[error("cannot read the archive: {0}")]
    Io(#[source] io::Error),
}

/// A regular file in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Byte offset of its data in the tar.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
}

#[derive(Clone, Debug)]
enum Node {
    File(FileEntry),
    /// A symlink or hard link, with its target resolved to an archive path.
    Link(String),
}

/// The layout of the archive's files. Directories are not recorded; other
/// special files (devices, FIFOs) are ignored, as nothing can reference them.
#[derive(Debug, Default)]
pub struct ArchiveIndex {
    nodes: BTreeMap<String, Node>,
}

/// The two formats `docker save`, `skopeo` and `umoci` write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `index.json` + `oci-layout` + `blobs/` (also Docker ≥ 25, which adds
    /// a manifest.json that is then ignored).
    OciLayout,
    /// `manifest.json` naming configs and `layer.tar`s.
    DockerSave,
}

/// Hashes everything written to it.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveIndex {
    /// Reads the whole tar once, hashing every regular file.
    pub fn build(reader: impl Read, limits: &Limits) -> Result<Self, ArchiveError> {
        let mut archive = tar::Archive::new(reader);
        let mut nodes = BTreeMap::new();
        let mut count = 0usize;
        for entry in archive.entries().map_err(tar_error)? {
            let mut entry = entry.map_err(tar_error)?;
            count += 1;
            if count > limits.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    max: limits.max_entries,
                });
            }
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name =
                normalize(&raw, false).ok_or(ArchiveError::UnsafePath { name: raw.clone() })?;
            let kind = entry.header().entry_type();
            if name.is_empty() && !kind.is_dir() {
                return Err(ArchiveError::UnsafePath { name: raw });
            }
            if kind.is_file() {
                let offset = entry.raw_file_position();
                let size = entry.size();
                let mut hasher = HashWriter(Sha256::new());
                let copied = io::copy(&mut entry, &mut hasher).map_err(tar_error)?;
                if copied != size {
                    return Err(ArchiveError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{raw}: {copied} of {size} bytes"),
                    )));
                }
                let digest = format!("sha256:{}", hex::encode(hasher.0.finalize()));
                nodes.insert(
                    name,
                    Node::File(FileEntry {
                        offset,
                        size,
                        digest,
                    }),
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let bad = || ArchiveError::UnsafeLink {
                    name: raw.clone(),
                    target: target.clone(),
                };
                // A symlink is relative to its directory, a hard link to the
                // archive's root.
                let joined = if kind.is_symlink() {
                    if target.starts_with('/') {
                        return Err(bad());
                    }
                    match name.rsplit_once('/') {
                        Some((dir, _)) => format!("{dir}/{target}"),
                        None => target.clone(),
                    }
                } else {
                    target.clone()
                };
                let resolved = normalize(&joined, true).ok_or_else(bad)?;
                nodes.insert(name, Node::Link(resolved));
            }
            // Directories and special files: nothing to record.
        }
        Ok(Self { nodes })
    }

    /// The regular file at `name` (following links inside the archive), if any.
    pub fn file(&self, name: &str) -> Result<Option<&FileEntry>, ArchiveError> {
        let mut current = name.to_owned();
        for _ in 0..16 {
            match self.nodes.get(&current) {
                None => return Ok(None),
                Some(Node::File(f)) => return Ok(Some(f)),
                Some(Node::Link(target)) => current = target.clone(),
            }
        }
        Err(ArchiveError::UnsafeLink {
            name: name.to_owned(),
            target: current,
        })
    }

    /// Whether `name` exists (as a file or a link to one).
    pub fn contains(&self, name: &str) -> bool {
        matches!(self.file(name), Ok(Some(_)))
    }

    /// Which format the archive is in.
    pub fn format(&self) -> Result<Format, ArchiveError> {
        if self.contains("index.json") && self.contains("oci-layout") {
            Ok(Format::OciLayout)
        } else if self.contains("manifest.json") {
            Ok(Format::DockerSave)
        } else {
            Err(ArchiveError::UnknownFormat)
        }
    }

    /// Reads the JSON file `name` whole (at most `max` bytes).
    pub fn read_json<R: Read + Seek>(
        &self,
        src: &mut R,
        name: &str,
        max: u64,
    ) -> Result<(Vec<u8>, FileEntry), ArchiveError> {
        let file = self
            .file(name)?
            .ok_or_else(|| ArchiveError::Missing {
                what: "file",
                name: name.to_owned(),
            })?
            .clone();
        if file.size > max {
            return Err(ArchiveError::JsonTooLarge {
                name: name.to_owned(),
                size: file.size,
                max,
            });
        }
        src.seek(SeekFrom::Start(file.offset))
            .map_err(ArchiveError::Io)?;
        let mut bytes = vec![0; file.size as usize];
        src.read_exact(&mut bytes).map_err(ArchiveError::Io)?;
        Ok((bytes, file))
    }
}

/// The tar crate quotes the bytes of a bad header field in its messages:
/// for garbage input that is binary noise, so the message stops before it.
fn tar_error(e: io::Error) -> ArchiveError {
    let text = e.to_string();
    let end = text
        .find(|c: char| !(c.is_ascii_graphic() || c == ' '))
        .unwrap_or(text.len());
    let text = text[..end].trim_end_matches([':', ' ']);
    ArchiveError::Tar(io::Error::new(e.kind(), text.to_owned()))
}

/// `./a//b/` → `a/b` (`./` → the empty root); `None` for absolute paths and `..`:
/// in entry names always (no archive writer produces it), in link targets
/// when it climbs above the root (docker save links a shared layer as
/// `../<id>/layer.tar`).
fn normalize(path: &str, dotdot: bool) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if dotdot => {
                parts.pop()?;
            }
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar builder for tests: regular files, symlinks and raw names.
    pub(crate) struct TarBuilder {
        builder: tar::Builder<Vec<u8>>,
    }

    impl TarBuilder {
        pub(crate) fn new() -> Self {
            Self {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        pub(crate) fn file(mut self, name: &str, data: &[u8]) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            set_raw_name(&mut h, name);
            h.set_cksum();
            self.builder.append(&h, data).unwrap();
            self
        }

        pub(crate) fn symlink(mut self, name: &str, target: &str) -> Self {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Symlink);
            set_raw_name(&mut h, name);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            h.set_cksum();
            self.builder.append(&h, &[][..]).unwrap();
            self
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            self.builder.into_inner().unwrap()
        }
    }

    /// Writes the name bytes as they are: `Header::set_path` refuses `..`,
    /// which is exactly what the tests need to write.
    fn set_raw_name(h: &mut tar::Header, name: &str) {
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
    }

    pub(crate) fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn index(tar: &[u8]) -> Result<ArchiveIndex, ArchiveError> {
        ArchiveIndex::build(tar, &Limits::default())
    }

    #[test]
    fn files_are_indexed_with_offsets_and_digests() {
        let tar = TarBuilder::new()
            .file("./index.json", b"{}")
            .file("blobs/sha256/ab", b"hello")
            .finish();
        let idx = index(&tar).unwrap();
        let f = idx.file("blobs/sha256/ab").unwrap().unwrap();
        assert_eq!(f.size, 5);
        assert_eq!(f.digest, sha(b"hello"));
        assert_eq!(&tar[f.offset as usize..f.offset as usize + 5], b"hello");
        let (bytes, _) = idx
            .read_json(&mut io::Cursor::new(&tar), "index.json", 10)
            .unwrap();
        assert_eq!(bytes, b"{}");
    }

    #[test]
    fn traversal_and_absolute_names_are_refused() {
        for name in ["../evil", "a/../b", "/etc/passwd"] {
            let tar = TarBuilder::new().file(name, b"x").finish();
            let err = index(&tar).unwrap_err();
            assert!(
                matches!(&err, ArchiveError::UnsafePath { name: n } if n == name),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn links_may_not_leave_the_archive_or_loop() {
        let tar = TarBuilder::new().symlink("a/layer.tar", "../../x").finish();
        assert!(matches!(
            index(&tar).unwrap_err(),
            ArchiveError::UnsafeLink { .. }
        ));
        let tar = TarBuilder::new()
            .symlink("a/layer.tar", "/etc/shadow")
            .finish();
        assert!(matches!(
            index(&tar).unwrap_err(),
            ArchiveError::UnsafeLink { .. }
        ));
        let tar = TarBuilder::new()
            .symlink("a", "b")
            .symlink("b", "a")
            .finish();
        let idx = index(&tar).unwrap();
        assert!(matches!(
            idx.file("a").unwrap_err(),
            ArchiveError::UnsafeLink { .. }
        ));
    }

    #[test]
    fn a_symlinked_duplicate_layer_resolves_inside() {
        // docker save writes a layer shared by two images once and links it.
        let tar = TarBuilder::new()
            .file("aaa/layer.tar", b"layer")
            .symlink("bbb/layer.tar", "../aaa/layer.tar")
            .finish();
        let idx = index(&tar).unwrap();
        assert_eq!(
            idx.file("bbb/layer.tar").unwrap(),
            idx.file("aaa/layer.tar").unwrap()
        );
    }

    #[test]
    fn truncated_archives_are_refused() {
        let tar = TarBuilder::new()
            .file("index.json", &[b'x'; 3000])
            .file("oci-layout", b"{}")
            .finish();
        let cut = &tar[..1500];
        let err = index(cut).unwrap_err();
        assert!(matches!(err, ArchiveError::Tar(_)), "{err:?}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
        let err = index(&garbage).unwrap_err();
        assert!(matches!(err, ArchiveError::Tar(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "no binary noise in {text:?}"
        );
    }

    #[test]
    fn the_root_directory_entry_is_fine() {
        // `tar -C layout -cf x.tar .` starts with `./`.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "./", &[][..]).unwrap();
        let tar = b.into_inner().unwrap();
        index(&tar).unwrap();
        // A file may not be the root.
        let tar = TarBuilder::new().file("./", b"x").finish();
        assert!(matches!(
            index(&tar).unwrap_err(),
            ArchiveError::UnsafePath { .. }
        ));
    }

    #[test]
    fn entry_count_and_json_size_are_bounded() {
        let mut b = TarBuilder::new();
        for i in 0..5 {
            b = b.file(&format!("f{i}"), b"x");
        }
        let tar = b.finish();
        let limits = Limits {
            max_entries: 4,
            ..Limits::default()
        };
        assert!(matches!(
            ArchiveIndex::build(&tar[..], &limits).unwrap_err(),
            ArchiveError::TooManyEntries { max: 4 }
        ));
        let tar = TarBuilder::new()
            .file("manifest.json", &[b' '; 100])
            .finish();
        let idx = index(&tar).unwrap();
        assert!(matches!(
            idx.read_json(&mut io::Cursor::new(&tar), "manifest.json", 99)
                .unwrap_err(),
            ArchiveError::JsonTooLarge { size: 100, .. }
        ));
    }

    #[test]
    fn formats_are_told_apart() {
        let oci = TarBuilder::new()
            .file("oci-layout", b"{}")
            .file("index.json", b"{}")
            .file("manifest.json", b"[]")
            .finish();
        assert_eq!(index(&oci).unwrap().format().unwrap(), Format::OciLayout);
        let docker = TarBuilder::new().file("manifest.json", b"[]").finish();
        assert_eq!(
            index(&docker).unwrap().format().unwrap(),
            Format::DockerSave
        );
        let neither = TarBuilder::new().file("index.json", b"{}").finish();
        assert!(matches!(
            index(&neither).unwrap().format().unwrap_err(),
            ArchiveError::UnknownFormat
        ));
    }
}
