//! Join tokens: `WEFT-1-<CA fingerprint>-<secret>`.
//!
//! Owns the text form of a join token, its parsing (with errors a user can
//! act on), secret generation and the constant-time secret comparison.
//!
//! A token carries two things a joining node needs: the SHA-256 fingerprint
//! of the cluster CA certificate (so the node can tell the real cluster from
//! a man in the middle *before* sending anything secret) and the secret that
//! proves to the manager that the operator allowed this join.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Prefix and format version of every token this weft writes.
const PREFIX: &str = "WEFT";
/// The only token format version understood.
const VERSION: &str = "1";
/// Length of the secret part, in characters of `[a-z0-9]`.
pub const SECRET_LEN: usize = 25;
/// Alphabet of the secret part.
const SECRET_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// What the user should do about any bad token.
const REMEDY: &str =
    "get a fresh token with `weft join-token worker` (or `weft join-token manager`) on a manager";

/// Why a string is not a valid join token. Every message ends with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not start with `WEFT-`.
    #[error("this is not a weft join token (it should start with `WEFT-1-`); {REMEDY}")]
    WrongPrefix,
    /// The token is of a format version this weft does not know.
    #[error(
        "join token format version {version:?} is not supported (this weft understands version 1); {REMEDY}"
    )]
    UnsupportedVersion {
        /// The version field as found.
        version: String,
    },
    /// Wrong number of `-`-separated parts.
    #[error(
        "malformed join token: expected `WEFT-1-<64 hex digits>-<25 characters>`, found {parts} parts; the token may be truncated, {REMEDY}"
    )]
    WrongShape {
        /// Number of `-`-separated parts found.
        parts: usize,
    },
    /// The fingerprint part is not 64 lower-case hex digits.
    #[error(
        "malformed join token: the CA fingerprint must be 64 lower-case hex digits, found {len} characters{detail}; {REMEDY}"
    )]
    BadFingerprint {
        /// Length of the fingerprint part.
        len: usize,
        /// Extra detail (e.g. the offending character).
        detail: String,
    },
    /// The secret part has the wrong length.
    #[error(
        "malformed join token: the secret must be {SECRET_LEN} characters, found {len}; the token may be truncated, {REMEDY}"
    )]
    BadSecretLength {
        /// Length found.
        len: usize,
    },
    /// The secret part contains a character outside `[a-z0-9]`.
    #[error(
        "malformed join token: the secret may contain only a-z and 0-9, found {ch:?}; {REMEDY}"
    )]
    BadSecretChar {
        /// The offending character.
        ch: char,
    },
}

/// A parsed join token.
///
/// `Display` gives the full text form (including the secret); `Debug`
/// redacts the secret so tokens do not end up in logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: [u8; 32],
    /// The secret: [`SECRET_LEN`] characters of `[a-z0-9]`.
    pub secret: String,
}

impl JoinToken {
    /// A token for the CA with fingerprint `ca_fingerprint` and the given
    /// secret. The secret is not validated here; use [`random_secret`] to
    /// make one, or parse a token with `FromStr` to validate it.
    pub fn new(ca_fingerprint: [u8; 32], secret: impl Into<String>) -> Self {
        Self {
            ca_fingerprint,
            secret: secret.into(),
        }
    }

    /// A token for `ca_fingerprint` with a fresh random secret.
    pub fn generate(ca_fingerprint: [u8; 32]) -> Self {
        Self::new(ca_fingerprint, random_secret())
    }

    /// The fingerprint as 64 lower-case hex digits.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.ca_fingerprint)
    }

    /// Whether this token's secret equals `expected`, compared in constant
    /// time (for equal lengths) so the comparison leaks no prefix length.
    pub fn secret_matches(&self, expected: &str) -> bool {
        constant_time_eq(self.secret.as_bytes(), expected.as_bytes())
    }
}

/// A fresh random secret: [`SECRET_LEN`] characters of `[a-z0-9]` from the
/// OS random source (about 129 bits).
pub fn random_secret() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..SECRET_LEN)
        .map(|_| SECRET_ALPHABET[rng.gen_range(0..SECRET_ALPHABET.len())] as char)
        .collect()
}

/// Compares two byte strings without an early exit on the first difference.
/// The length is not secret (it is fixed by the format), so a length
/// mismatch returns early. Also `weft ui`'s login token check.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{VERSION}-{}-{}",
            self.fingerprint_hex(),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.fingerprint_hex())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('-').collect();
        if parts[0] != PREFIX {
            return Err(TokenError::WrongPrefix);
        }
        if parts.len() < 2 || parts[1] != VERSION {
            return Err(TokenError::UnsupportedVersion {
                version: parts.get(1).copied().unwrap_or_default().to_owned(),
            });
        }
        if parts.len() != 4 {
            return Err(TokenError::WrongShape { parts: parts.len() });
        }
        let ca_fingerprint = parse_fingerprint(parts[2])?;
        let secret = parts[3];
        if let Some(ch) = secret
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(TokenError::BadSecretChar { ch });
        }
        if secret.len() != SECRET_LEN {
            return Err(TokenError::BadSecretLength { len: secret.len() });
        }
        Ok(Self::new(ca_fingerprint, secret))
    }
}

/// Parses 64 lower-case hex digits.
fn parse_fingerprint(s: &str) -> Result<[u8; 32], TokenError> {
    let len = s.chars().count();
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
    {
        return Err(TokenError::BadFingerprint {
            len,
            detail: format!(" including {ch:?}"),
        });
    }
    if len != 64 {
        return Err(TokenError::BadFingerprint {
            len,
            detail: String::new(),
        });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| TokenError::BadFingerprint {
        len,
        detail: format!(" ({e})"),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> [u8; 32] {
        let mut fp = [0u8; 32];
        for (i, b) in fp.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        fp
    }

    #[test]
    fn round_trip() {
        let t = JoinToken::generate(fp());
        let text = t.to_string();
        assert!(text.starts_with("WEFT-1-"));
        assert_eq!(text.len(), 7 + 64 + 1 + SECRET_LEN);
        let back: JoinToken = text.parse().unwrap();
        assert_eq!(back, t);
        // Surrounding whitespace (copy-paste) is tolerated.
        let back: JoinToken = format!("  {text}\n").parse().unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn random_secrets_are_well_formed_and_distinct() {
        let a = random_secret();
        let b = random_secret();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn secret_matches_is_exact() {
        let t = JoinToken::new(fp(), "abcdefghijklmnopqrstuvwxy");
        assert!(t.secret_matches("abcdefghijklmnopqrstuvwxy"));
        assert!(!t.secret_matches("abcdefghijklmnopqrstuvwxz"));
        assert!(!t.secret_matches("abcdefghijklmnopqrstuvwx"));
        assert!(!t.secret_matches(""));
    }

    #[test]
    fn debug_redacts_secret() {
        let t = JoinToken::new(fp(), "abcdefghijklmnopqrstuvwxy");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("abcdefghijklmnopqrstuvwxy"), "{dbg}");
    }

    fn err(s: &str) -> TokenError {
        s.parse::<JoinToken>().unwrap_err()
    }

    #[test]
    fn parse_errors() {
        let hex = hex::encode(fp());
        let secret = "abcdefghijklmnopqrstuvwxy";

        assert_eq!(err("SWMTKN-1-abc-def"), TokenError::WrongPrefix);
        assert_eq!(err(""), TokenError::WrongPrefix);
        assert_eq!(
            err(&format!("WEFT-2-{hex}-{secret}")),
            TokenError::UnsupportedVersion {
                version: "2".into()
            }
        );
        assert_eq!(
            err(&format!("WEFT-1-{hex}")),
            TokenError::WrongShape { parts: 3 }
        );
        assert_eq!(
            err(&format!("WEFT-1-{hex}-{secret}-x")),
            TokenError::WrongShape { parts: 5 }
        );
        assert!(matches!(
            err(&format!("WEFT-1-{}-{secret}", &hex[..63])),
            TokenError::BadFingerprint { len: 63, .. }
        ));
        assert!(matches!(
            err(&format!("WEFT-1-{}-{secret}", hex.to_uppercase())),
            TokenError::BadFingerprint { len: 64, .. }
        ));
        assert_eq!(
            err(&format!("WEFT-1-{hex}-{}", &secret[..24])),
            TokenError::BadSecretLength { len: 24 }
        );
        assert_eq!(
            err(&format!("WEFT-1-{hex}-abcdefghijklmnopqrstuvwX")),
            TokenError::BadSecretChar { ch: 'X' }
        );
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let hex = hex::encode(fp());
        for bad in [
            "nonsense".to_owned(),
            format!("WEFT-9-{hex}-abcdefghijklmnopqrstuvwxy"),
            format!("WEFT-1-{hex}"),
            "WEFT-1-zz-abcdefghijklmnopqrstuvwxy".to_owned(),
            format!("WEFT-1-{hex}-short"),
            format!("WEFT-1-{hex}-abcdefghijklmnopqrstuvwx!"),
        ] {
            let msg = err(&bad).to_string();
            assert!(msg.contains("weft join-token worker"), "{msg}");
        }
    }
}
