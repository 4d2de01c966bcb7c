//! `MacAddr`: a 48-bit Ethernet address with the usual `aa:bb:cc:dd:ee:ff`
//! text form (also its serde form), used for link addresses, FDB and
//! neighbour entries in both the desired-state model and the Linux code.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The all-zero address; as an FDB entry on a VXLAN device it is the
    /// default destination for broadcast, unknown unicast and multicast.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Parses the raw bytes of a netlink hardware address attribute; `None`
    /// unless it is exactly six bytes long.
    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }

    /// True for a locally administered unicast address (what we generate).
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x02 != 0 && self.0[0] & 0x01 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A string that is not six colon-separated hex octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?} (want aa:bb:cc:dd:ee:ff)")]
pub struct ParseMacError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_owned(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m: MacAddr = "02:42:0a:00:09:05".parse().unwrap();
        assert_eq!(m.0, [0x02, 0x42, 0x0a, 0x00, 0x09, 0x05]);
        assert_eq!(m.to_string(), "02:42:0a:00:09:05");
        assert!(m.is_local_unicast());
        assert!("02:42:0a:00:09".parse::<MacAddr>().is_err());
        assert!("02:42:0a:00:09:05:01".parse::<MacAddr>().is_err());
        assert!("02:42:0a:00:09:5".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn serde_is_the_text_form() {
        let m: MacAddr = "02:42:0a:00:09:05".parse().unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:42:0a:00:09:05\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
}
