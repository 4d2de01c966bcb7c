//! The volumes' files on this node and the lock that keeps task starts
//! and removals apart (module docs of [`super`]).
//!
//! A volume appears whole: it is made as a hidden directory (`.new-…`,
//! with `_data` and `meta.json`) and renamed to its name; it is removed by
//! renaming it to a hidden `.trash-…` and deleting that afterwards, outside
//! the lock. Hidden entries are never volumes (a name starts with a letter
//! or digit), and leftovers of a crash are swept by the next removal.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Result, Volume, VolumeError, VolumeMeta};

/// A task's claim on volumes, in its task directory.
pub const CLAIM_FILE: &str = "volumes.json";

/// A volume's record beside its data.
pub const META_FILE: &str = "meta.json";

/// The directory tasks see.
pub const DATA_DIR: &str = "_data";

/// The volumes of this node. Cheap to clone; clones share the lock.
#[derive(Clone, Debug, Default)]
pub struct VolumeStore {
    root: PathBuf,
    claims: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl PartialEq for VolumeStore {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root && self.claims == other.claims
    }
}

impl Eq for VolumeStore {}

/// Proof that the store's lock is held: what checks and changes claims
/// and volumes takes one.
pub struct Held {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_owned();
    move |source| VolumeError::Io { op, path, source }
}

/// `t` as Docker's `CreatedAt`: RFC 3339, UTC, whole seconds.
pub fn created_at(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

impl VolumeStore {
    /// Volumes under `root` (`<data-dir>/volumes`); the tasks' claims in
    /// the task directories under `claims` (`<exec-root>/containers`).
    pub fn new(root: PathBuf, claims: PathBuf) -> Self {
        Self {
            root,
            claims,
            lock: Arc::default(),
        }
    }

    /// Where the volumes live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory tasks see of volume `name` (Docker's `Mountpoint`).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join(DATA_DIR)
    }

    /// Takes the lock that task starts and removals share.
    pub async fn lock(&self) -> Held {
        Held {
            _guard: self.lock.clone().lock_owned().await,
        }
    }

    /// Every volume, ordered by name. Entries that are not volumes are
    /// skipped; a volume without a readable record (made before records
    /// were kept) gets its directory's time and no labels.
    pub fn list(&self) -> Result<Vec<Volume>> {
        let mut out = Vec::new();
        for entry in entries(&self.root)? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if super::check_name(&name).is_ok()
                && entry.path().is_dir()
                && let Some(v) = self.get(&name)?
            {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Volume `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Volume>> {
        super::check_name(name)?;
        let dir = self.root.join(name);
        let dir_meta = match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("stat", &dir)(e)),
        };
        let meta = std::fs::read(dir.join(META_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<VolumeMeta>(&b).ok())
            .unwrap_or_else(|| VolumeMeta {
                created_at: created_at(dir_meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                ..Default::default()
            });
        Ok(Some(Volume {
            name: name.to_owned(),
            meta,
        }))
    }

    /// Makes volume `name` with `meta`, whole or not at all; an existing
    /// one is kept as it is (false).
    pub fn make(&self, _held: &Held, name: &str, meta: &VolumeMeta) -> Result<bool> {
        super::check_name(name)?;
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let dir = self.root.join(name);
        if dir.is_dir() {
            return Ok(false);
        }
        let tmp = self
            .root
            .join(format!(".new-{name}-{:08x}", rand::random::<u32>()));
        let made = (|| {
            std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
            let data = tmp.join(DATA_DIR);
            std::fs::create_dir(&data).map_err(io("create", &data))?;
            write_meta(&tmp, meta)?;
            std::fs::rename(&tmp, &dir).map_err(io("rename", &tmp))?;
            weft_overlay::durable::sync_dir(&self.root).map_err(io("sync", &self.root))
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        made.map(|()| true)
    }

    /// Makes volume `name` for a task that mounts it (no labels, created
    /// now) unless it exists; a volume made before records were kept gets
    /// its record and data directory here.
    pub fn ensure(&self, held: &Held, name: &str) -> Result<()> {
        let meta = VolumeMeta {
            created_at: created_at(SystemTime::now()),
            ..Default::default()
        };
        if self.make(held, name, &meta)? {
            return Ok(());
        }
        let dir = self.root.join(name);
        let data = dir.join(DATA_DIR);
        std::fs::create_dir_all(&data).map_err(io("create", &data))?;
        if !dir.join(META_FILE).exists() {
            let old = self.get(name)?.map(|v| v.meta).unwrap_or(meta);
            write_meta(&dir, &old)?;
        }
        Ok(())
    }

    /// Records that the container in `task_dir` mounts `names` (replacing
    /// an older claim of the same task); nothing for no volumes.
    pub fn claim(&self, _held: &Held, task_dir: &Path, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(task_dir).map_err(io("create", task_dir))?;
        let path = task_dir.join(CLAIM_FILE);
        let bytes = serde_json::to_vec(names).expect("a list of strings serializes");
        weft_overlay::durable::write_atomic(&path, &bytes, 0o600).map_err(|e| VolumeError::Io {
            op: e.step.as_str(),
            path: e.path,
            source: e.source,
        })
    }

    /// The claims of every container of this node: `(task, volumes)`.
    /// Unreadable claims are skipped with a warning (a container that
    /// claimed nothing readable cannot be protected).
    pub fn claims(&self, _held: &Held) -> Result<Vec<(String, Vec<String>)>> {
        let mut out = Vec::new();
        for entry in entries(&self.claims)? {
            let path = entry.path().join(CLAIM_FILE);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &path)(e)),
            };
            match serde_json::from_slice::<Vec<String>>(&bytes) {
                Ok(names) => out.push((entry.file_name().to_string_lossy().into_owned(), names)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable volume claim")
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Takes volume `name` out of the store (a rename: instant, whatever
    /// it holds) and returns where it went, for [`purge`](Self::purge)
    /// after the lock is released.
    pub fn take(&self, _held: &Held, name: &str) -> Result<PathBuf> {
        super::check_name(name)?;
        let dir = self.root.join(name);
        let trash = self
            .root
            .join(format!(".trash-{name}-{:08x}", rand::random::<u32>()));
        std::fs::rename(&dir, &trash).map_err(io("rename", &dir))?;
        Ok(trash)
    }

    /// Deletes what [`take`](Self::take) set aside; every path is tried,
    /// the first failure returned.
    pub fn purge(&self, taken: &[PathBuf]) -> Result<()> {
        let mut first_error = None;
        for p in taken {
            let removed = match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
                Ok(_) => std::fs::remove_file(p),
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "removing a volume's files");
                    first_error.get_or_insert(io("remove", p)(e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes what a crash left half made or half removed (hidden
    /// `.new-…` and `.trash-…` entries). Call at daemon start, before any
    /// request is served.
    pub fn sweep(&self) -> Result<()> {
        let leftovers: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".trash-") || n.starts_with(".new-"))
            })
            .collect();
        self.purge(&leftovers)
    }
}

/// The entries of `dir`; none when it does not exist (yet).
fn entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(e) => e.collect::<Result<_, _>>().map_err(io("read", dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", dir)(e)),
    }
}

fn write_meta(dir: &Path, meta: &VolumeMeta) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(meta).expect("a volume record serializes");
    weft_overlay::durable::write_atomic(&dir.join(META_FILE), &bytes, 0o600).map_err(|e| {
        VolumeError::Io {
            op: e.step.as_str(),
            path: e.path,
            source: e.source,
        }
    })
}

/// The bytes of the files under `dir` (each file once, links not
/// followed): what removing it frees, as Docker counts it.
pub fn size(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = entry.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}
