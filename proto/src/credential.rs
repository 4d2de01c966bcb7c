//! Registry credentials (`weft login`, `--with-registry-auth`): one user
//! name and password for one registry, checked for shape and size wherever
//! they enter (the CLI's file, a local RPC, the control API, a node's
//! config), and never printed: `Debug` shows the user name only, and the
//! password is zeroed on drop. Here, in the crate every side shares, so
//! that the manager and the node check them alike.

use std::fmt;

use zeroize::Zeroizing;

/// Longest user name accepted (Docker Hub's are at most 30 characters;
/// registries with e-mail user names need more).
pub const MAX_USERNAME: usize = 256;
/// Longest password or token accepted (registry access tokens, such as a
/// cloud provider's, run to a few kilobytes).
pub const MAX_PASSWORD: usize = 8192;

/// Longest registry name (`host[:port]`) accepted.
pub const MAX_REGISTRY: usize = 255;

/// Why a credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not a registry name (`host[:port]`).
    #[error("{0:?} is not a registry name: expected HOST[:PORT] (no scheme, no path)")]
    BadRegistry(String),
    /// The credentials are for another registry than the image's.
    #[error("the credentials are for registry {given}, the image is from {image}")]
    OtherRegistry {
        /// The credentials' registry.
        given: String,
        /// The image's.
        image: String,
    },
    /// The user name is empty.
    #[error("the registry user name is empty")]
    EmptyUsername,
    /// The password is empty.
    #[error("the registry password is empty")]
    EmptyPassword,
    /// Too long to be a credential.
    #[error("the registry {what} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// `user name` or `password`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A character HTTP Basic auth cannot carry.
    #[error("the registry {what} contains {why}")]
    BadCharacter {
        /// `user name` or `password`.
        what: &'static str,
        /// Which (control characters; `:` in a user name).
        why: &'static str,
    },
}

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    username: String,
    password: Zeroizing<String>,
}

impl Credential {
    /// Checks `username` and `password`: both non-empty, bounded, without
    /// control characters, and no `:` in the user name (Basic auth joins
    /// them with one).
    pub fn new(username: &str, password: &str) -> Result<Self, CredentialError> {
        if username.is_empty() {
            return Err(CredentialError::EmptyUsername);
        }
        if password.is_empty() {
            return Err(CredentialError::EmptyPassword);
        }
        for (what, value, max) in [
            ("user name", username, MAX_USERNAME),
            ("password", password, MAX_PASSWORD),
        ] {
            if value.len() > max {
                return Err(CredentialError::TooLong {
                    what,
                    len: value.len(),
                    max,
                });
            }
            if value.chars().any(char::is_control) {
                return Err(CredentialError::BadCharacter {
                    what,
                    why: "control characters",
                });
            }
        }
        if username.contains(':') {
            return Err(CredentialError::BadCharacter {
                what: "user name",
                why: "a ':'",
            });
        }
        Ok(Self {
            username: username.to_owned(),
            password: Zeroizing::new(password.to_owned()),
        })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password, for the one request (or seal) that needs it.
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// Checks a registry name's shape: `host[:port]`, bounded, no scheme or
/// path (the image reference parser on the node is the full check).
pub fn check_registry(registry: &str) -> Result<(), CredentialError> {
    let bad = || CredentialError::BadRegistry(registry.chars().take(MAX_REGISTRY).collect());
    if registry.is_empty() || registry.len() > MAX_REGISTRY {
        return Err(bad());
    }
    if !registry
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(bad());
    }
    Ok(())
}

/// The registry an image reference is pulled from, by Docker's rule: the
/// part before the first `/` when it looks like a host (has a `.` or a
/// `:`, or is `localhost`), else Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_credentials_pass_and_debug_hides_the_password() {
        let c = Credential::new("alice", "s3cret pass").unwrap();
        assert_eq!(c.username(), "alice");
        assert_eq!(c.password(), "s3cret pass");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn registries_of_images() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(
            registry_of("127.0.0.1:5000/a/b:c@sha256:00"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/r"), "ghcr.io");
        for good in ["docker.io", "127.0.0.1:5000", "[::1]:5000", "reg-1.example"] {
            assert!(check_registry(good).is_ok(), "{good}");
        }
        for bad in ["", "https://x", "x/y", "a b", &"r".repeat(MAX_REGISTRY + 1)] {
            assert!(check_registry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_credentials_are_refused() {
        assert_eq!(
            Credential::new("", "x").unwrap_err(),
            CredentialError::EmptyUsername
        );
        assert_eq!(
            Credential::new("a", "").unwrap_err(),
            CredentialError::EmptyPassword
        );
        assert!(matches!(
            Credential::new("a:b", "x").unwrap_err(),
            CredentialError::BadCharacter {
                what: "user name",
                ..
            }
        ));
        assert!(matches!(
            Credential::new("a", "x\ny").unwrap_err(),
            CredentialError::BadCharacter {
                what: "password",
                ..
            }
        ));
        let long = "u".repeat(MAX_USERNAME + 1);
        assert!(matches!(
            Credential::new(&long, "x").unwrap_err(),
            CredentialError::TooLong {
                what: "user name",
                ..
            }
        ));
        let long = "p".repeat(MAX_PASSWORD + 1);
        assert!(matches!(
            Credential::new("a", &long).unwrap_err(),
            CredentialError::TooLong {
                what: "password",
                ..
            }
        ));
        assert!(Credential::new("a", &"p".repeat(MAX_PASSWORD)).is_ok());
    }
}
