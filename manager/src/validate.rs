//! Input checks shared by the API edges. Each error says what to fix.

use crate::error::{Error, Result};

/// Names of networks, tasks and services: 1-63 characters
/// ([`crate::limits::MAX_NAME_BYTES`]), starting with a
/// letter or digit, then letters, digits, `_`, `.` or `-` (DNS-friendly).
pub fn object_name(kind: &str, name: &str) -> Result<()> {
    crate::limits::name(kind, name)?;
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid {kind} name {name:?}: use 1-{} letters, digits, '_', '.' or '-', starting with a letter or digit",
            crate::limits::MAX_NAME_BYTES
        )))
    }
}

/// A random 16-hex-digit object ID.
pub fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "app-net", "a.b_c", "x1", &"x".repeat(63)] {
            assert!(object_name("network", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b"] {
            let e = object_name("network", bad).unwrap_err().to_string();
            assert!(e.contains("invalid network name"), "{e}");
        }
        let e = object_name("network", &"x".repeat(64))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e, "network name: 64 bytes is over the limit of 63 bytes",
            "{e}"
        );
    }
}
