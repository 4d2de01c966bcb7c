//! The daemon's version, as the startup check needs it.
//!
//! containerd answers `Version` with free text: `1.6.20~ds1` (Debian),
//! `v1.7.24`, `2.0.0-rc.1`, `1.7.0+unknown`. Only the leading
//! `major.minor[.patch]` is compared; the rest is kept for messages.

use std::fmt;

use crate::Error;

/// The oldest containerd weft supports, as (major, minor): Debian 12 ships
/// 1.6.20, and weft relies on no API that 1.6 lacks (no Transfer service).
pub const MIN_SUPPORTED: (u64, u64) = (1, 6);

/// A containerd daemon's version, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonVersion {
    /// The version text as the daemon sent it.
    pub version: String,
    /// The daemon's revision text (a commit or a distribution release).
    pub revision: String,
    /// Leading number.
    pub major: u64,
    /// Second number.
    pub minor: u64,
    /// Third number; 0 when the daemon sent only two.
    pub patch: u64,
}

impl DaemonVersion {
    /// Parses the two strings of a `Version` answer.
    pub fn parse(version: &str, revision: &str) -> Result<Self, Error> {
        let unparsable = || Error::UnparsableVersion {
            version: version.to_owned(),
        };
        let text = version.strip_prefix('v').unwrap_or(version);
        let end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let numbers = text[..end]
            .split('.')
            .map(|n| n.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unparsable())?;
        let (major, minor, patch) = match numbers[..] {
            [major, minor] => (major, minor, 0),
            [major, minor, patch] => (major, minor, patch),
            _ => return Err(unparsable()),
        };
        Ok(Self {
            version: version.to_owned(),
            revision: revision.to_owned(),
            major,
            minor,
            patch,
        })
    }

    /// Whether this is `major.minor` or newer.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// `self` if weft supports it ([`MIN_SUPPORTED`] or newer), else
    /// [`Error::TooOld`].
    pub fn ensure_supported(self) -> Result<Self, Error> {
        let (major, minor) = MIN_SUPPORTED;
        if self.at_least(major, minor) {
            Ok(self)
        } else {
            Err(Error::TooOld {
                version: self.version,
                minimum: format!("{major}.{minor}"),
            })
        }
    }
}

impl fmt::Display for DaemonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (revision {})", self.version, self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(text: &str) -> (u64, u64, u64) {
        let v = DaemonVersion::parse(text, "r").unwrap_or_else(|e| panic!("{text}: {e}"));
        (v.major, v.minor, v.patch)
    }

    #[test]
    fn parses_what_daemons_send() {
        assert_eq!(numbers("1.6.20~ds1"), (1, 6, 20));
        assert_eq!(numbers("v1.7.24"), (1, 7, 24));
        assert_eq!(numbers("2.0.0-rc.1"), (2, 0, 0));
        assert_eq!(numbers("1.7.0+unknown"), (1, 7, 0));
        assert_eq!(numbers("2.1"), (2, 1, 0));
    }

    #[test]
    fn refuses_what_is_not_a_version() {
        for bad in ["", "v", "dev", "1", "1.", ".6", "1..6", "1.6.20.1", "x1.6"] {
            let err = DaemonVersion::parse(bad, "r").unwrap_err();
            assert!(
                matches!(&err, Error::UnparsableVersion { version } if version == bad),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn the_minimum_is_1_6() {
        let supported = |t: &str| DaemonVersion::parse(t, "r").unwrap().ensure_supported();
        assert!(supported("1.6.0").is_ok());
        assert!(supported("1.6.20~ds1").is_ok());
        assert!(supported("1.7.1").is_ok());
        assert!(supported("2.0.0").is_ok());
        let err = supported("1.5.18").unwrap_err();
        assert!(
            matches!(&err, Error::TooOld { version, minimum } if version == "1.5.18" && minimum == "1.6"),
            "{err:?}"
        );
        assert!(err.to_string().contains("1.5.18"), "{err}");
        assert!(supported("0.9").is_err());
    }

    #[test]
    fn displays_version_and_revision() {
        let v = DaemonVersion::parse("1.6.20~ds1", "1.6.20~ds1-1+deb12u3").unwrap();
        assert_eq!(v.to_string(), "1.6.20~ds1 (revision 1.6.20~ds1-1+deb12u3)");
    }
}
