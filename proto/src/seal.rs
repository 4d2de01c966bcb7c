//! Autolock: the unlock key and what is sealed under it.
//!
//! ```text
//! unlock key K (32 random bytes, shown once as WEFTKEY-1-<base64url>, never on disk)
//!   │ HKDF-SHA256(salt "weft-autolock-v1")
//!   ├─ info "seal"   → ChaCha20-Poly1305 key
//!   └─ info "key-id" → 8-byte key id (hex), stored next to every sealed blob
//!
//! sealed text: weft-sealed-1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>
//! associated data: "<purpose>:<key id>"
//! ```
//!
//! The key id lets a wrong key be told apart from a damaged blob: a key whose
//! id differs is "not the cluster's unlock key", a blob that fails to open
//! under the right id was altered. The purpose in the associated data stops
//! a blob sealed for one use (the cluster's secrets) from being accepted as
//! another (a node's TLS key). Keys and opened plaintext are zeroed on drop,
//! and `Debug` prints neither.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

/// Prefix of an unlock key's text form.
pub const KEY_PREFIX: &str = "WEFTKEY-1-";
/// Prefix of a sealed blob's text form.
pub const SEALED_PREFIX: &str = "weft-sealed-1:";
const SALT: &[u8] = b"weft-autolock-v1";
const DATA_KEY_SALT: &[u8] = b"weft-data-key-v1";
const NONCE_LEN: usize = 12;

/// What can go wrong with a key or a sealed blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The text is not an unlock key.
    #[error(
        "this is not an unlock key ({0}); it looks like WEFTKEY-1-… as printed by \
         `weft init --autolock` or `weft unlock-key`"
    )]
    MalformedKey(&'static str),
    /// The key is well formed but not the one the data was sealed with.
    #[error(
        "this is not the cluster's unlock key (its key id is {given}, the data was sealed \
         under {sealed_under}); after a rotation, a manager that was down is unlocked with \
         the previous key"
    )]
    WrongKey {
        /// Id of the key offered.
        given: String,
        /// Id of the key the data needs.
        sealed_under: String,
    },
    /// The sealed text is not in the sealed format.
    #[error("sealed data is garbled: {0}")]
    Garbled(&'static str),
    /// The right key, but the ciphertext, its key id or its purpose was altered.
    #[error("sealed data failed authentication: it was altered or sealed for another purpose")]
    Tampered,
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
}

/// The unlock key. Zeroed on drop; `Debug` shows only its id.
#[derive(Clone)]
pub struct UnlockKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
}

impl UnlockKey {
    /// A fresh random key.
    pub fn generate() -> Result<UnlockKey, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SealError::Random)?;
        Ok(UnlockKey::from_bytes(bytes))
    }

    fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> UnlockKey {
        let mut id = [0u8; 8];
        derive(&bytes, b"key-id", &mut id);
        UnlockKey {
            bytes,
            id: hex::encode(id),
        }
    }

    /// A data key derived from a cluster secret (HKDF-SHA256 of `secret`,
    /// salt `weft-data-key-v1`, info `info`): the same on every manager
    /// that holds the secret, and stored nowhere. What it seals is exactly
    /// as safe as `secret` (see SECURITY.md, "Registry credentials").
    pub fn derived(secret: &[u8], info: &str) -> UnlockKey {
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        let infos = [info.as_bytes()];
        hkdf::Salt::new(hkdf::HKDF_SHA256, DATA_KEY_SALT)
            .extract(secret)
            .expand(&infos, Len)
            .and_then(|okm| okm.fill(bytes.as_mut()))
            .expect("HKDF output of 32 bytes");
        UnlockKey::from_bytes(bytes)
    }

    /// The key's id: 16 hex digits, safe to show and to store.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text form, `WEFTKEY-1-<base64url>`: print it once, never log it.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{KEY_PREFIX}{}", B64.encode(self.bytes.as_ref())))
    }

    fn aead_key(&self) -> LessSafeKey {
        let mut k = Zeroizing::new([0u8; 32]);
        derive(&self.bytes, b"seal", k.as_mut());
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k.as_ref()).expect("32-byte key"))
    }

    /// Seals `plaintext` for `purpose`.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plaintext.to_vec();
        self.aead_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(purpose, &self.id)),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&data);
        data.zeroize();
        Ok(Sealed {
            key_id: self.id.clone(),
            body,
        })
    }

    /// Opens `sealed`, which must have been sealed for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.key_id != self.id {
            return Err(SealError::WrongKey {
                given: self.id.clone(),
                sealed_under: sealed.key_id.clone(),
            });
        }
        if sealed.body.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Garbled("too short"));
        }
        let (nonce, ct) = sealed.body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Tampered)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .aead_key()
            .open_in_place(nonce, Aad::from(aad(purpose, &sealed.key_id)), &mut buf)
            .map_err(|_| SealError::Tampered)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnlockKey(id {}, <redacted>)", self.id)
    }
}

impl PartialEq for UnlockKey {
    fn eq(&self, other: &Self) -> bool {
        // Ids are derived from the bytes; comparing them leaks nothing.
        self.id == other.id
    }
}

impl FromStr for UnlockKey {
    type Err = SealError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or(SealError::MalformedKey("it does not start with WEFTKEY-1-"))?;
        let raw = Zeroizing::new(
            B64.decode(body)
                .map_err(|_| SealError::MalformedKey("its body is not base64url"))?,
        );
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| SealError::MalformedKey("its body is not 32 bytes"))?;
        Ok(UnlockKey::from_bytes(Zeroizing::new(arr)))
    }
}

/// Data sealed under an unlock key: its key id and nonce ‖ ciphertext ‖ tag.
/// Stored and sent as text (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    key_id: String,
    body: Vec<u8>,
}

impl Sealed {
    /// Id of the key it was sealed under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `text` is in the sealed format (as opposed to, e.g., a PEM).
    pub fn looks_sealed(text: &str) -> bool {
        text.trim_start().starts_with(SEALED_PREFIX)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(key id {}, {} bytes)",
            self.key_id,
            self.body.len()
        )
    }
}

impl fmt::Display for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SEALED_PREFIX}{}:{}",
            self.key_id,
            B64.encode(&self.body)
        )
    }
}

impl FromStr for Sealed {
    type Err = SealError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::Garbled("no weft-sealed-1 prefix"))?;
        let (key_id, body) = rest
            .split_once(':')
            .ok_or(SealError::Garbled("no key id"))?;
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SealError::Garbled("bad key id"));
        }
        let body = B64
            .decode(body)
            .map_err(|_| SealError::Garbled("body is not base64url"))?;
        Ok(Sealed {
            key_id: key_id.to_owned(),
            body,
        })
    }
}

impl serde::Serialize for Sealed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sealed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn aad(purpose: &str, key_id: &str) -> Vec<u8> {
    format!("{purpose}:{key_id}").into_bytes()
}

/// HKDF-SHA256 of the key bytes, for `info`, into `out`.
fn derive(key: &[u8; 32], info: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let infos = [info];
    hkdf::Salt::new(hkdf::HKDF_SHA256, SALT)
        .extract(key)
        .expand(&infos, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output of at most 32 bytes");
}

/// The unlock key a node holds in memory, shared by the parts that seal and
/// open with it (the manager's secrets, the node's TLS key file); `None`
/// while autolock is off or the key is not known. Watchable, so the node can
/// reseal its key file when the key changes.
#[derive(Clone, Debug)]
pub struct KeyHolder {
    tx: tokio::sync::watch::Sender<Option<UnlockKey>>,
}

impl Default for KeyHolder {
    fn default() -> Self {
        KeyHolder {
            tx: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl KeyHolder {
    /// The key now held.
    pub fn get(&self) -> Option<UnlockKey> {
        self.tx.borrow().clone()
    }

    /// Holds `key` (or none); watchers are told only of a change.
    pub fn set(&self, key: Option<UnlockKey>) {
        self.tx.send_if_modified(|cur| {
            if *cur == key {
                false
            } else {
                *cur = key;
                true
            }
        });
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<UnlockKey>> {
        self.tx.subscribe()
    }
}

/// Purpose of the cluster record's sealed secrets.
pub const PURPOSE_CLUSTER: &str = "cluster-secrets";
/// Purpose of a node's sealed TLS private key.
pub const PURPOSE_NODE_KEY: &str = "node-key";
/// Purpose of a service's sealed registry credentials; the service's ID
/// follows (`registry-auth:<id>`), so one service's blob does not open as
/// another's.
pub const PURPOSE_REGISTRY_AUTH: &str = "registry-auth";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_and_apart() {
        let a = UnlockKey::derived(b"ca key pem", "registry-auth");
        let b = UnlockKey::derived(b"ca key pem", "registry-auth");
        let c = UnlockKey::derived(b"ca key pem", "other");
        let d = UnlockKey::derived(b"another ca key", "registry-auth");
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_ne!(a.id(), d.id());
        let sealed = a.seal("registry-auth:s1", b"alice:pw").unwrap();
        assert_eq!(
            b.open("registry-auth:s1", &sealed).unwrap().as_slice(),
            b"alice:pw"
        );
        assert_eq!(
            b.open("registry-auth:s2", &sealed).unwrap_err(),
            SealError::Tampered
        );
        assert!(matches!(
            d.open("registry-auth:s1", &sealed).unwrap_err(),
            SealError::WrongKey { .. }
        ));
        // The text form holds neither the plaintext nor its base64.
        let text = sealed.to_string();
        assert!(
            !text.contains("alice") && !text.contains("YWxpY2U6cHc"),
            "{text}"
        );
    }

    #[test]
    fn round_trip_through_text() {
        let k = UnlockKey::generate().unwrap();
        let text = k.reveal();
        assert!(text.starts_with(KEY_PREFIX));
        let k2: UnlockKey = text.parse().unwrap();
        assert_eq!(k2.id(), k.id());
        let sealed = k.seal(PURPOSE_CLUSTER, b"secret CA key").unwrap();
        let stored = sealed.to_string();
        assert!(Sealed::looks_sealed(&stored));
        assert!(!stored.contains("secret"));
        let back: Sealed = stored.parse().unwrap();
        assert_eq!(back.key_id(), k.id());
        assert_eq!(
            k2.open(PURPOSE_CLUSTER, &back).unwrap().as_slice(),
            b"secret CA key"
        );
    }

    #[test]
    fn a_wrong_key_is_named_as_such() {
        let k = UnlockKey::generate().unwrap();
        let other = UnlockKey::generate().unwrap();
        assert_ne!(k.id(), other.id());
        let sealed = k.seal(PURPOSE_CLUSTER, b"x").unwrap();
        let e = other.open(PURPOSE_CLUSTER, &sealed).unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e:?}");
        assert!(e.to_string().contains("not the cluster's unlock key"));
    }

    #[test]
    fn tampering_is_detected() {
        let k = UnlockKey::generate().unwrap();
        let sealed = k.seal(PURPOSE_CLUSTER, b"join secret").unwrap();
        for i in 0..sealed.body.len() {
            let mut bad = sealed.clone();
            bad.body[i] ^= 1;
            assert_eq!(
                k.open(PURPOSE_CLUSTER, &bad).unwrap_err(),
                SealError::Tampered,
                "byte {i}"
            );
        }
        // Sealed for another purpose.
        assert_eq!(
            k.open(PURPOSE_NODE_KEY, &sealed).unwrap_err(),
            SealError::Tampered
        );
        // Truncated.
        let mut short = sealed.clone();
        short.body.truncate(10);
        assert!(matches!(
            k.open(PURPOSE_CLUSTER, &short),
            Err(SealError::Garbled(_))
        ));
    }

    #[test]
    fn the_key_id_is_bound_to_the_ciphertext() {
        // Relabelling a blob with the id of the key at hand does not open it.
        let k = UnlockKey::generate().unwrap();
        let other = UnlockKey::generate().unwrap();
        let mut sealed = other.seal(PURPOSE_CLUSTER, b"x").unwrap();
        sealed.key_id = k.id().to_owned();
        assert_eq!(
            k.open(PURPOSE_CLUSTER, &sealed).unwrap_err(),
            SealError::Tampered
        );
        // The id is a function of the key.
        let again: UnlockKey = k.reveal().parse().unwrap();
        assert_eq!(again.id(), k.id());
    }

    #[test]
    fn garbled_keys_and_blobs_are_refused_clearly() {
        for bad in [
            "",
            "WEFTKEY-1-",
            "WEFTKEY-2-AAAA",
            "WEFTKEY-1-!!!",
            "WEFTKEY-1-AAAA",
            "SWMKEY-1-abc",
        ] {
            let e = bad.parse::<UnlockKey>().unwrap_err();
            assert!(matches!(e, SealError::MalformedKey(_)), "{bad}: {e:?}");
        }
        for bad in [
            "",
            "-----BEGIN PRIVATE KEY-----",
            "weft-sealed-1:zz:AA",
            "weft-sealed-1:0011223344556677",
            "weft-sealed-1:0011223344556677:***",
        ] {
            assert!(bad.parse::<Sealed>().is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_prints_no_secret() {
        let k = UnlockKey::generate().unwrap();
        let text = k.reveal();
        let body = text.strip_prefix(KEY_PREFIX).unwrap();
        let dbg = format!("{k:?} {:?}", KeyHolder::default());
        assert!(!dbg.contains(body));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn the_holder_reports_changes_only() {
        let h = KeyHolder::default();
        let mut rx = h.subscribe();
        let k = UnlockKey::generate().unwrap();
        h.set(Some(k.clone()));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        h.set(Some(k.clone()));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(h.get().unwrap().id(), k.id());
    }
}
