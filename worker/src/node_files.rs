//! The node's own persistent identity in its data dir.
//!
//! ```text
//! <data-dir>/node.json            node ID, cluster ID, role, addresses, known managers
//! <data-dir>/certs/ca.pem         the cluster CA (trust anchor)
//! <data-dir>/certs/node.pem       this node's certificate
//! <data-dir>/certs/node-key.pem   its private key (0600; never leaves the node)
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename) so a
//! crash never leaves a half-written identity.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

/// Certificate material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certs {
    /// Cluster CA, PEM.
    pub ca_pem: String,
    /// Node certificate, PEM.
    pub cert_pem: String,
    /// Node private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// The files of one data dir.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    dir: PathBuf,
}

impl NodeFiles {
    /// The identity files under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        NodeFiles {
            dir: data_dir.to_path_buf(),
        }
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

    /// Loads the record and certificates.
    pub fn load(&self) -> Result<(NodeRecord, Certs)> {
        let raw = read(&self.record_path())?;
        let record: NodeRecord = serde_json::from_str(&raw).map_err(|source| Error::Corrupt {
            path: self.record_path(),
            source,
        })?;
        let d = self.certs_dir();
        let certs = Certs {
            ca_pem: read(&d.join("ca.pem"))?,
            cert_pem: read(&d.join("node.pem"))?,
            key_pem: read(&d.join("node-key.pem"))?,
        };
        Ok((record, certs))
    }

    /// Saves the record.
    pub fn save_record(&self, record: &NodeRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        write_atomic(&self.record_path(), &json, 0o600)
    }

    /// Saves certificate material.
    pub fn save_certs(&self, certs: &Certs) -> Result<()> {
        let d = self.certs_dir();
        fs::create_dir_all(&d).map_err(|source| Error::Io {
            path: d.clone(),
            source,
        })?;
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        write_atomic(&d.join("ca.pem"), certs.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&d.join("node-key.pem"), certs.key_pem.as_bytes(), 0o600)?;
        write_atomic(&d.join("node.pem"), certs.cert_pem.as_bytes(), 0o644)
    }

    /// Forgets the membership: record, certificates and Raft state.
    pub fn wipe(&self) -> Result<()> {
        for p in [self.record_path()] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path: p, source }),
            }
        }
        for d in [self.certs_dir(), self.raft_dir()] {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Io { path: d, source }),
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wipe() {
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        assert!(!files.exists());
        let rec = NodeRecord {
            node_id: "0123456789abcdef".into(),
            cluster_id: "c".into(),
            role: "worker".into(),
            advertise_addr: "198.18.0.2:4377".into(),
            listen_addr: "0.0.0.0:4377".into(),
            data_path_addr: "198.18.0.2".into(),
            manager_addrs: vec!["198.18.0.1:4377".into()],
        };
        let certs = Certs {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        };
        files.save_certs(&certs).unwrap();
        files.save_record(&rec).unwrap();
        assert!(files.exists());
        let (r, c) = files.load().unwrap();
        assert_eq!(r, rec);
        assert_eq!(c, certs);
        let mode = fs::metadata(dir.path().join("certs/node-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is root-only");
        files.wipe().unwrap();
        assert!(!files.exists());
        files.wipe().unwrap();
    }
}
