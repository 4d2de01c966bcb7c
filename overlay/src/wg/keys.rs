//! The node's WireGuard key pair. The private key is generated on the node
//! ([`generate`]), written once to a 0600 file ([`write_private_key`],
//! atomically: a crash leaves the old file or the new one, never half a
//! key) and read back by the data plane ([`load_private_key`]); only its
//! public key ([`PrivateKey::public_key`], base64 as `wg` prints it) goes
//! to the managers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519::{PublicKey, StaticSecret};

use super::{Result, WgError};
use crate::durable;

/// A WireGuard private key (x25519). Zeroed when dropped; `Debug` does not
/// print it.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

impl PrivateKey {
    /// The public key, canonical base64.
    pub fn public_key(&self) -> String {
        STANDARD.encode(PublicKey::from(&self.0).as_bytes())
    }

    /// The raw key bytes (for the device's UAPI, which wants hex).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key from its base64 text (as `wg genkey` writes it).
    pub fn from_base64(text: &str) -> Result<PrivateKey> {
        Ok(PrivateKey(StaticSecret::from(decode32("private", text)?)))
    }

    fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }
}

/// A fresh private key from the OS's random source.
pub fn generate() -> PrivateKey {
    PrivateKey(StaticSecret::random_from_rng(rand::rngs::OsRng))
}

fn decode32(what: &'static str, text: &str) -> Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| WgError::InvalidKey {
            what,
            reason: "not base64",
        })?;
    bytes.try_into().map_err(|_| WgError::InvalidKey {
        what,
        reason: "not 32 bytes",
    })
}

/// The raw bytes of a base64 public key.
pub fn decode_public_key(text: &str) -> Result<[u8; 32]> {
    decode32("public", text)
}

/// The canonical base64 form of a public key (so keys compare as strings).
pub fn normalize_public_key(text: &str) -> Result<String> {
    Ok(STANDARD.encode(decode_public_key(text)?))
}

/// Writes `key` to `path` (base64 and a newline, like `wg genkey`) with
/// mode 0600, crash-safe ([`crate::durable::write_atomic`]: a crash leaves
/// the old key or the new one, never half a key).
pub fn write_private_key(path: &Path, key: &PrivateKey) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| WgError::KeyIo {
        op: "create directory of",
        path: path.to_owned(),
        source,
    })?;
    durable::write_atomic(path, format!("{}\n", key.to_base64()).as_bytes(), 0o600).map_err(|e| {
        WgError::KeyIo {
            op: e.step.as_str(),
            path: e.path,
            source: e.source,
        }
    })
}

/// Reads the private key at `path`; refuses a file that group or others
/// may read.
pub fn load_private_key(path: &Path) -> Result<PrivateKey> {
    let io = |op, source| WgError::KeyIo {
        op,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| io("stat", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(WgError::KeyMode {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
    PrivateKey::from_base64(&text)
}

/// The key at `path`, generated and written first if there is none (the
/// worker calls this at start; the public key it returns is what it
/// reports to the managers).
pub fn load_or_generate(path: &Path) -> Result<PrivateKey> {
    match load_private_key(path) {
        Err(WgError::KeyIo { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            write_private_key(path, &key)?;
            Ok(key)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wg.key");
        let key = load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_generate(&path).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(STANDARD.decode(key.public_key()).unwrap().len(), 32);
        assert!(!format!("{key:?}").contains(&key.to_base64()));
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn rotation_replaces_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = load_or_generate(&path).unwrap();
        let b = generate();
        write_private_key(&path, &b).unwrap();
        let loaded = load_private_key(&path).unwrap();
        assert_eq!(loaded.public_key(), b.public_key());
        assert_ne!(a.public_key(), b.public_key());
    }

    /// What a crash in the middle of a rotation leaves: the old key stays
    /// the one in use, and the next write replaces the half-written one.
    #[test]
    fn a_half_written_rotation_leaves_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let old = load_or_generate(&path).unwrap();
        let tmp = durable::temp_path(&path);
        std::fs::write(&tmp, &generate().to_base64()[..10]).unwrap();
        assert_eq!(
            load_or_generate(&path).unwrap().public_key(),
            old.public_key()
        );
        let new = generate();
        write_private_key(&path, &new).unwrap();
        assert_eq!(
            load_private_key(&path).unwrap().public_key(),
            new.public_key()
        );
        assert!(!tmp.exists());
    }

    #[test]
    fn refuses_readable_or_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        write_private_key(&path, &generate()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_private_key(&path),
            Err(WgError::KeyMode { mode: 0o644, .. })
        ));
        assert!(PrivateKey::from_base64("abc").is_err());
        assert!(normalize_public_key(&STANDARD.encode([1u8; 31])).is_err());
        let k = STANDARD.encode([7u8; 32]);
        assert_eq!(normalize_public_key(&format!(" {k}\n")).unwrap(), k);
    }

    #[test]
    fn public_key_matches_the_wireguard_derivation() {
        // RFC 7748 §6.1 test vector (Alice).
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let k = PrivateKey::from_base64(&STANDARD.encode(&sk)).unwrap();
        assert_eq!(
            hex::encode(STANDARD.decode(k.public_key()).unwrap()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
