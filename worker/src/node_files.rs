//! The node's own persistent identity in its data dir.
//!
//! ```text
//! <data-dir>/node.json                 node ID, cluster ID, role, addresses, known managers
//! <data-dir>/certs/                    0700
//!     current -> pair.7                which set is in use: one rename switches all three
//!     pair.7/ca.pem                    the cluster CA (trust anchor)
//!     pair.7/node.pem                  this node's certificate
//!     pair.7/node-key.pem              its private key (0600; never leaves the node)
//!     ca.pem       -> current/ca.pem   fixed links: the paths the README and tools use
//!     node.pem     -> current/node.pem
//!     node-key.pem -> current/node-key.pem
//! ```
//!
//! `node.json` is replaced with [`weft_overlay::durable::write_atomic`].
//!
//! With autolock on, a manager's `node-key.pem` holds the key sealed under
//! the cluster's unlock key (`weft-sealed-1:…`, see [`weft_proto::seal`])
//! instead of a PEM: every save seals with the key the node's
//! [`KeyHolder`] holds, and a load without that key fails with
//! [`Error::Locked`] until `weft unlock`. [`NodeFiles::reseal`] brings the
//! file in step when the held key changes (autolock on or off, rotation).
//!
//! The certificate and its key must change together, and a rename replaces
//! one name: with one file each, a crash between the two renames left a
//! certificate and a key that do not belong together and a daemon that
//! would not start. So a new set is written whole into a fresh `pair.N`,
//! fsynced, and `current` is switched to it by renaming a new symlink over
//! it: one rename, atomic on every file system (`renameat2` with
//! `RENAME_EXCHANGE` would swap two directories without links, but not on
//! every file system, and a node would find out at its first renewal).
//!
//! Saving is decided, then done: [`plan_save`] turns what the directory
//! holds into a list of [`Op`]s, each one step a crash can fall after, and
//! the tests run every prefix of a plan. Nothing refers to a `pair.N`
//! before its files and its name are on disk, and the old set is removed
//! only once `current` no longer names it, so every prefix leaves the old
//! set or the new one under `current`; leftovers of an interrupted save are
//! removed by the next save (never by a load, which may run while a save
//! does).
//!
//! The first save into a data dir of the old layout (three regular files)
//! first moves their content into a pair and replaces each file by its link
//! to identical bytes, so every step of that migration still reads the old
//! set; then it saves the new set as above.
//!
//! [`NodeFiles::load`] refuses a certificate and key that do not belong
//! together, naming both files and what to do, and takes the role from the
//! certificate when `node.json` says otherwise (a crash between saving a
//! renewed certificate and the record).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_overlay::durable;
use weft_proto::identity::{PeerIdentity, Role};
use weft_proto::seal::{KeyHolder, PURPOSE_NODE_KEY, SealError, Sealed, UnlockKey};
use weft_proto::tls::ReloadableCert;

use crate::error::{Error, Result};

/// What the node remembers about its membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// This node's ID.
    pub node_id: String,
    /// The cluster's ID.
    pub cluster_id: String,
    /// Role of the current certificate (`worker` / `manager`).
    pub role: String,
    /// `IP:PORT` other nodes reach this node's manager port at.
    pub advertise_addr: String,
    /// Where the manager port listens, when this node is a manager.
    pub listen_addr: String,
    /// Underlay IP for VXLAN.
    pub data_path_addr: String,
    /// Managers last heard of, for reconnecting after a restart.
    pub manager_addrs: Vec<String>,
    /// Nodes removed from the cluster, as last heard: a manager certificate
    /// of one of them is refused (kept across restarts, so a stolen one
    /// cannot pose as a manager before the first session).
    #[serde(default)]
    pub removed_node_ids: Vec<String>,
    /// The managers' node IDs, as last heard: a manager certificate of any
    /// other node is refused (see `weft_proto::tls::ManagerTrust`). Empty
    /// until the join answer, and in a `node.json` of an older version.
    #[serde(default)]
    pub manager_node_ids: Vec<String>,
}

impl NodeRecord {
    /// The managers this node accepts, from what it last heard.
    pub fn manager_trust(&self) -> weft_proto::tls::ManagerTrust {
        weft_proto::tls::ManagerTrust::new(
            self.manager_node_ids.iter().cloned(),
            self.removed_node_ids.iter().cloned(),
        )
    }
}

/// Certificate material. `Debug` leaves the private key out.
#[derive(Clone, PartialEq, Eq)]
pub struct Certs {
    /// Cluster CA, PEM.
    pub ca_pem: String,
    /// Node certificate, PEM.
    pub cert_pem: String,
    /// Node private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

const CA: &str = "ca.pem";
const CERT: &str = "node.pem";
const KEY: &str = "node-key.pem";
/// The three names of a set, inside a pair and as fixed links.
const NAMES: [&str; 3] = [CA, CERT, KEY];
/// The link naming the set in use.
const CURRENT: &str = "current";
/// Prefix of the directories holding one set each.
const PAIR: &str = "pair.";

/// The files of one data dir.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    dir: PathBuf,
    /// The autolock unlock key, when this node (a manager) holds one: the
    /// TLS key file is sealed under it.
    unlock: KeyHolder,
}

impl NodeFiles {
    /// The identity files under `data_dir`, with no unlock key.
    pub fn new(data_dir: &Path) -> Self {
        NodeFiles::with_unlock(data_dir, KeyHolder::default())
    }

    /// The identity files under `data_dir`; the TLS key file is sealed
    /// under whatever key `unlock` holds.
    pub fn with_unlock(data_dir: &Path, unlock: KeyHolder) -> Self {
        NodeFiles {
            dir: data_dir.to_path_buf(),
            unlock,
        }
    }

    /// The unlock key this node holds.
    pub fn unlock_holder(&self) -> &KeyHolder {
        &self.unlock
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the Raft log of a manager lives.
    pub fn raft_dir(&self) -> PathBuf {
        self.dir.join("raft")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Whether this data dir belongs to a cluster member.
    pub fn exists(&self) -> bool {
        self.record_path().exists()
    }

    /// Loads the record and certificates. Fails, naming both files, if the
    /// certificate and key do not belong together; the record's role is
    /// the certificate's.
    pub fn load(&self) -> Result<(NodeRecord, Certs)> {
        let keys: Vec<UnlockKey> = self.unlock.get().into_iter().collect();
        self.load_with(&keys)
    }

    /// Loads as [`NodeFiles::load`], opening a sealed TLS key with one of
    /// `keys` (`weft unlock` checks the key it was given this way).
    pub fn load_with(&self, keys: &[UnlockKey]) -> Result<(NodeRecord, Certs)> {
        let raw = read(&self.record_path())?;
        let mut record: NodeRecord =
            serde_json::from_str(&raw).map_err(|source| Error::Corrupt {
                path: self.record_path(),
                source,
            })?;
        let (certs, role) = self.load_certs(keys)?;
        if record.role != role.as_str() {
            tracing::warn!(
                record = %record.role,
                certificate = role.as_str(),
                "node.json names another role than the certificate (a crash between saving \
                 the two?): using the certificate's"
            );
            record.role = role.as_str().to_owned();
        }
        Ok((record, certs))
    }

    /// The set `current` names (or the three plain files of the old
    /// layout), checked to belong together, and the certificate's role.
    fn load_certs(&self, keys: &[UnlockKey]) -> Result<(Certs, Role)> {
        let dir = self.certs_dir();
        let mut tries = 0;
        loop {
            let set = current_set(&dir)?;
            let read_all = || -> Result<Certs> {
                Ok(Certs {
                    ca_pem: read(&set.join(CA))?,
                    cert_pem: read(&set.join(CERT))?,
                    key_pem: open_key(&set.join(KEY), read(&set.join(KEY))?, keys)?,
                })
            };
            match read_all() {
                // A save switched `current` and removed the set we were
                // reading: read the new one.
                Err(Error::Io { source, .. })
                    if source.kind() == ErrorKind::NotFound
                        && tries < 3
                        && current_set(&dir).is_ok_and(|now| now != set) =>
                {
                    tries += 1;
                }
                Err(e) => return Err(e),
                Ok(certs) => {
                    let bad = |source| Error::BadCertPair {
                        cert: set.join(CERT),
                        key: set.join(KEY),
                        source: Box::new(source),
                    };
                    ReloadableCert::from_pem(&certs.cert_pem, &certs.key_pem).map_err(bad)?;
                    let role = PeerIdentity::from_pem(&certs.cert_pem)
                        .map_err(|e| bad(e.into()))?
                        .role;
                    return Ok((certs, role));
                }
            }
        }
    }

    /// Re-writes the certificate set so that the TLS key file is sealed
    /// under the key held now (or in the clear when none is), opening it
    /// with that key or `previous`. Returns whether anything was written.
    pub fn reseal(&self, previous: Option<&UnlockKey>) -> Result<bool> {
        let held = self.unlock.get();
        let path = self.certs_dir().join(KEY);
        let text = read(&path)?;
        let sealed_under = Sealed::looks_sealed(&text)
            .then(|| text.parse::<Sealed>().ok().map(|s| s.key_id().to_owned()))
            .flatten();
        if sealed_under.as_deref() == held.as_ref().map(|k| k.id()) {
            return Ok(false);
        }
        let keys: Vec<UnlockKey> = held.into_iter().chain(previous.cloned()).collect();
        if keys.is_empty() {
            // Sealed, and no key at hand: a locked node waits for `weft
            // unlock`, which is not this function's to ask for.
            return Ok(false);
        }
        let (certs, _) = self.load_certs(&keys)?;
        self.save_certs(&certs)?;
        Ok(true)
    }

    /// Saves the record.
    pub fn save_record(&self, record: &NodeRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        durable::write_atomic(&self.record_path(), &json, 0o600)?;
        Ok(())
    }

    /// Saves certificate material: CA, certificate and key change in one
    /// step (module docs).
    pub fn save_certs(&self, certs: &Certs) -> Result<()> {
        let dir = self.certs_dir();
        let seen = CertsDir::read(&dir)?;
        if seen.exists {
            // An older version or an operator may have made it wider.
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        }
        let stored;
        let certs = match self.unlock.get() {
            None => certs,
            Some(k) => {
                let sealed =
                    k.seal(PURPOSE_NODE_KEY, certs.key_pem.as_bytes())
                        .map_err(|source| Error::Seal {
                            path: dir.join(KEY),
                            source,
                        })?;
                stored = Certs {
                    key_pem: format!("{sealed}\n"),
                    ..certs.clone()
                };
                &stored
            }
        };
        for op in plan_save(&dir, &seen, certs) {
            op.run()?;
        }
        Ok(())
    }

    /// Forgets the membership: record, certificates and Raft state.
    pub fn wipe(&self) -> Result<()> {
        let record = self.record_path();
        match fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: record,
                    source,
                });
            }
        }
        // The record goes first and for good: a crash after this point
        // leaves a data dir that is no member, never a member without its
        // certificate.
        durable::sync_dir(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        for d in [self.certs_dir(), self.raft_dir()] {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path: d, source }),
            }
        }
        Ok(())
    }
}

/// The directory whose `ca.pem`, `node.pem` and `node-key.pem` are the set
/// in use: the pair `current` names, or `dir` itself in the old layout.
fn current_set(dir: &Path) -> Result<PathBuf> {
    match fs::read_link(dir.join(CURRENT)) {
        Ok(target) => Ok(dir.join(target)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(source) => Err(Error::Io {
            path: dir.join(CURRENT),
            source,
        }),
    }
}

/// The PEM of a TLS key file: as read, or opened with one of `keys` when
/// sealed.
fn open_key(path: &Path, text: String, keys: &[UnlockKey]) -> Result<String> {
    if !Sealed::looks_sealed(&text) {
        return Ok(text);
    }
    let seal_err = |source| Error::Seal {
        path: path.to_path_buf(),
        source,
    };
    let sealed: Sealed = text.parse().map_err(seal_err)?;
    let Some(first) = keys.first() else {
        return Err(Error::Locked {
            path: path.to_path_buf(),
            key_id: sealed.key_id().to_owned(),
        });
    };
    let key = keys
        .iter()
        .find(|k| k.id() == sealed.key_id())
        .unwrap_or(first);
    let pem = key.open(PURPOSE_NODE_KEY, &sealed).map_err(seal_err)?;
    String::from_utf8(pem.to_vec()).map_err(|_| seal_err(SealError::Garbled("not UTF-8")))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// What the certificate directory holds, as far as saving cares.
#[derive(Debug, Default)]
struct CertsDir {
    /// Whether the directory exists.
    exists: bool,
    /// The set as read through the three fixed names, when at least one of
    /// them is still a regular file (the old layout, or a migration a crash
    /// interrupted): what the migration preserves.
    legacy: Option<Vec<(&'static str, Vec<u8>)>>,
    /// Whether all three fixed names are links already.
    linked: bool,
    /// The numbers of the `pair.N` directories, in use or left over.
    pairs: Vec<u64>,
    /// Other leftovers of an interrupted save (temporary links, the old
    /// layout's temporary files).
    stale: Vec<PathBuf>,
}

impl CertsDir {
    fn read(dir: &Path) -> Result<CertsDir> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(CertsDir::default()),
            Err(e) => return Err(io(dir)(e)),
        };
        let mut seen = CertsDir {
            exists: true,
            ..CertsDir::default()
        };
        for entry in entries {
            let name = entry.map_err(io(dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_prefix(PAIR).and_then(|n| n.parse().ok()) {
                seen.pairs.push(n);
            } else if name.ends_with(".tmp") {
                seen.stale.push(dir.join(&*name));
            }
        }
        seen.pairs.sort_unstable();
        let mut regular = false;
        let mut linked = true;
        for name in NAMES {
            match fs::symlink_metadata(dir.join(name)) {
                Ok(m) if m.file_type().is_symlink() => {}
                Ok(_) => {
                    regular = true;
                    linked = false;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => linked = false,
                Err(e) => return Err(io(&dir.join(name))(e)),
            }
        }
        seen.linked = linked;
        if regular {
            let mut set = Vec::new();
            for name in NAMES {
                // Through a link, if a migration got that far: the same
                // bytes as the regular files.
                match fs::read(dir.join(name)) {
                    Ok(bytes) => set.push((name, bytes)),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&dir.join(name))(e)),
                }
            }
            seen.legacy = Some(set);
        }
        Ok(seen)
    }
}

/// One step of a save; a crash can fall between any two.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Create a directory, mode 0700.
    CreateDir(PathBuf),
    /// Create a file that does not exist yet and fsync it.
    WriteNew {
        path: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
    /// Create the symlink `path` -> `target`, replacing a leftover.
    Symlink { path: PathBuf, target: PathBuf },
    /// Rename `from` over `to`.
    Rename { from: PathBuf, to: PathBuf },
    /// Fsync a directory.
    SyncDir(PathBuf),
    /// Remove a file or link; gone already is fine.
    RemoveFile(PathBuf),
    /// Remove a directory tree; gone already is fine.
    RemoveDir(PathBuf),
}

impl Op {
    fn run(&self) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let gone_is_fine = |r: std::io::Result<()>, path: &Path| match r {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map_err(io(path)),
        };
        match self {
            Op::CreateDir(d) => fs::DirBuilder::new().mode(0o700).create(d).map_err(io(d)),
            Op::WriteNew { path, data, mode } => Ok(durable::write_new(path, data, *mode)?),
            Op::Symlink { path, target } => {
                gone_is_fine(fs::remove_file(path), path)?;
                std::os::unix::fs::symlink(target, path).map_err(io(path))
            }
            Op::Rename { from, to } => fs::rename(from, to).map_err(io(to)),
            Op::SyncDir(d) => durable::sync_dir(d).map_err(io(d)),
            Op::RemoveFile(p) => gone_is_fine(fs::remove_file(p), p),
            Op::RemoveDir(d) => gone_is_fine(fs::remove_dir_all(d), d),
        }
    }
}

/// The steps that replace the set in `dir` (seen as `seen`) with `new`.
/// Pure.
fn plan_save(dir: &Path, seen: &CertsDir, new: &Certs) -> Vec<Op> {
    let mut ops = Vec::new();
    if !seen.exists {
        ops.push(Op::CreateDir(dir.to_path_buf()));
        if let Some(parent) = dir.parent() {
            ops.push(Op::SyncDir(parent.to_path_buf()));
        }
    }
    ops.extend(seen.stale.iter().cloned().map(Op::RemoveFile));
    let mut next = seen.pairs.last().map_or(1, |n| n + 1);
    let mut earlier = seen.pairs.clone();
    if let Some(old) = &seen.legacy {
        install(&mut ops, dir, next, old);
        link(&mut ops, dir);
        earlier.push(next);
        next += 1;
    }
    let set = [
        (CA, new.ca_pem.as_bytes().to_vec()),
        (CERT, new.cert_pem.as_bytes().to_vec()),
        (KEY, new.key_pem.as_bytes().to_vec()),
    ];
    install(&mut ops, dir, next, &set);
    if !seen.linked && seen.legacy.is_none() {
        link(&mut ops, dir);
    }
    // Only now does nothing name the earlier sets.
    ops.extend(
        earlier
            .into_iter()
            .map(|n| Op::RemoveDir(dir.join(format!("{PAIR}{n}")))),
    );
    ops
}

/// Writes `set` into a fresh `pair.<n>` and points `current` at it.
fn install(ops: &mut Vec<Op>, dir: &Path, n: u64, set: &[(&'static str, Vec<u8>)]) {
    let name = format!("{PAIR}{n}");
    let pair = dir.join(&name);
    ops.push(Op::CreateDir(pair.clone()));
    for (file, data) in set {
        ops.push(Op::WriteNew {
            path: pair.join(file),
            data: data.clone(),
            mode: 0o600,
        });
    }
    ops.push(Op::SyncDir(pair));
    // The pair's name on disk before a link to it can be.
    ops.push(Op::SyncDir(dir.to_path_buf()));
    let tmp = durable::temp_path(&dir.join(CURRENT));
    ops.push(Op::Symlink {
        path: tmp.clone(),
        target: PathBuf::from(name),
    });
    ops.push(Op::Rename {
        from: tmp,
        to: dir.join(CURRENT),
    });
    ops.push(Op::SyncDir(dir.to_path_buf()));
}

/// Makes the three fixed names links into `current`.
fn link(ops: &mut Vec<Op>, dir: &Path) {
    for file in NAMES {
        let tmp = durable::temp_path(&dir.join(file));
        ops.push(Op::Symlink {
            path: tmp.clone(),
            target: Path::new(CURRENT).join(file),
        });
        ops.push(Op::Rename {
            from: tmp,
            to: dir.join(file),
        });
    }
    ops.push(Op::SyncDir(dir.to_path_buf()));
}

#[cfg(test)]
mod tests;
