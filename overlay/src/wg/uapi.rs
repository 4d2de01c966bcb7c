//! The WireGuard cross-platform UAPI (`set=1` / `get=1`), as text: pure
//! builders for the requests and a parser for `get=1`'s answer, so the
//! device code only moves bytes.
//!
//! boringtun quirks handled here (crates.md §6): keys go as hex (a base64
//! `=` breaks its top-level parser); every request carries one peer at
//! most, with an explicit `remove=false` on adds (its parser carries
//! `remove=true` over into the next section); `get=1` is sent without the
//! blank line (boringtun does not read it, and a stray blank line would be
//! taken as a bad next request); `last_handshake_time_*` is a time *since*.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::keys::{PrivateKey, decode_public_key};
use super::{DeviceState, PeerConfig, PeerState, Result, WgError};

/// `set=1` with the private key.
pub fn set_private_key(key: &PrivateKey) -> String {
    format!("set=1\nprivate_key={}\n\n", hex::encode(key.to_bytes()))
}

/// `set=1` with the listen port.
pub fn set_listen_port(port: u16) -> String {
    format!("set=1\nlisten_port={port}\n\n")
}

/// `set=1` adding one peer.
pub fn add_peer(peer: &PeerConfig) -> Result<String> {
    let mut s = format!(
        "set=1\npublic_key={}\nremove=false\nendpoint={}\nreplace_allowed_ips=true\n",
        hex::encode(decode_public_key(&peer.public_key)?),
        peer.endpoint
    );
    if let Some(k) = peer.keepalive {
        s.push_str(&format!("persistent_keepalive_interval={k}\n"));
    }
    for ip in &peer.allowed_ips {
        s.push_str(&format!("allowed_ip={ip}\n"));
    }
    s.push('\n');
    Ok(s)
}

/// `set=1` removing one peer.
pub fn remove_peer(public_key: &str) -> Result<String> {
    Ok(format!(
        "set=1\npublic_key={}\nremove=true\n\n",
        hex::encode(decode_public_key(public_key)?)
    ))
}

/// The `get=1` request.
pub const GET: &str = "get=1\n";

/// The `errno=` of an answer's last line, if that is what `line` is.
pub fn errno_of(line: &str) -> Option<i32> {
    line.strip_prefix("errno=")?.trim().parse().ok()
}

fn hex_key_to_base64(device: &str, line: &str, hex_key: &str) -> Result<String> {
    use base64::Engine;
    let bad = || WgError::BadAnswer {
        name: device.to_owned(),
        line: line.to_owned(),
    };
    let bytes = hex::decode(hex_key).map_err(|_| bad())?;
    if bytes.len() != 32 {
        return Err(bad());
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Parses the lines of a `get=1` answer (without the final `errno=` line)
/// into a [`DeviceState`]; `now` turns "time since handshake" into a wall
/// clock time.
pub fn parse_get(device: &str, lines: &[String], now: SystemTime) -> Result<DeviceState> {
    let mut st = DeviceState::default();
    let mut current: Option<(String, PeerState, Option<Duration>)> = None;
    let finish = |st: &mut DeviceState, cur: Option<(String, PeerState, Option<Duration>)>| {
        if let Some((k, mut p, since)) = cur {
            p.last_handshake = since.and_then(|d| now.checked_sub(d));
            st.peers.insert(k, p);
        }
    };
    for line in lines {
        let bad = || WgError::BadAnswer {
            name: device.to_owned(),
            line: line.clone(),
        };
        let Some((key, val)) = line.split_once('=') else {
            return Err(bad());
        };
        if key == "public_key" {
            finish(&mut st, current.take());
            current = Some((
                hex_key_to_base64(device, line, val)?,
                PeerState::default(),
                None,
            ));
            continue;
        }
        match (&mut current, key) {
            (None, "own_public_key") => st.public_key = Some(hex_key_to_base64(device, line, val)?),
            (None, "listen_port") => st.listen_port = val.parse().map_err(|_| bad())?,
            (None, _) => {}
            (Some((_, p, _)), "endpoint") => {
                p.endpoint = Some(val.parse::<SocketAddr>().map_err(|_| bad())?)
            }
            (Some((_, p, _)), "allowed_ip") => {
                p.allowed_ips.insert(val.parse().map_err(|_| bad())?);
            }
            (Some((_, p, _)), "persistent_keepalive_interval") => {
                p.keepalive = Some(val.parse().map_err(|_| bad())?)
            }
            (Some((_, p, _)), "rx_bytes") => p.rx_bytes = val.parse().map_err(|_| bad())?,
            (Some((_, p, _)), "tx_bytes") => p.tx_bytes = val.parse().map_err(|_| bad())?,
            (Some((_, _, since)), "last_handshake_time_sec") => {
                let s: u64 = val.parse().map_err(|_| bad())?;
                *since = Some(since.unwrap_or_default() + Duration::from_secs(s));
            }
            (Some((_, _, since)), "last_handshake_time_nsec") => {
                let n: u64 = val.parse().map_err(|_| bad())?;
                *since = Some(since.unwrap_or_default() + Duration::from_nanos(n));
            }
            (Some(_), _) => {}
        }
    }
    finish(&mut st, current.take());
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn requests_use_hex_keys_and_one_peer_each() {
        let key = PrivateKey::from_base64(&STANDARD.encode([3u8; 32])).unwrap();
        let s = set_private_key(&key);
        assert_eq!(s, format!("set=1\nprivate_key={}\n\n", "03".repeat(32)));
        let peer = PeerConfig {
            public_key: STANDARD.encode([0xabu8; 32]),
            endpoint: "198.18.0.2:51820".parse().unwrap(),
            allowed_ips: vec!["10.255.0.2/32".parse().unwrap()],
            keepalive: Some(25),
        };
        let s = add_peer(&peer).unwrap();
        assert_eq!(
            s,
            format!(
                "set=1\npublic_key={}\nremove=false\nendpoint=198.18.0.2:51820\n\
                 replace_allowed_ips=true\npersistent_keepalive_interval=25\n\
                 allowed_ip=10.255.0.2/32\n\n",
                "ab".repeat(32)
            )
        );
        // boringtun splits top-level lines on every '=': one per line.
        assert!(s.lines().all(|l| l.matches('=').count() <= 1));
        assert_eq!(
            remove_peer(&peer.public_key).unwrap(),
            format!("set=1\npublic_key={}\nremove=true\n\n", "ab".repeat(32))
        );
        assert!(remove_peer("nope").is_err());
    }

    #[test]
    fn parses_get() {
        let lines: Vec<String> = [
            format!("own_public_key={}", "01".repeat(32)),
            "listen_port=51820".into(),
            format!("public_key={}", "02".repeat(32)),
            "persistent_keepalive_interval=25".into(),
            "endpoint=198.18.0.2:51820".into(),
            "allowed_ip=10.255.0.2/32".into(),
            "last_handshake_time_sec=3".into(),
            "last_handshake_time_nsec=500".into(),
            "rx_bytes=10".into(),
            "tx_bytes=20".into(),
            format!("public_key={}", "03".repeat(32)),
            "endpoint=[2001:db8::1]:51820".into(),
            "rx_bytes=0".into(),
            "tx_bytes=0".into(),
        ]
        .into();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let st = parse_get("weft-wg0", &lines, now).unwrap();
        assert_eq!(st.public_key, Some(STANDARD.encode([1u8; 32])));
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.peers.len(), 2);
        let p = &st.peers[&STANDARD.encode([2u8; 32])];
        assert_eq!(p.keepalive, Some(25));
        assert_eq!(p.rx_bytes, 10);
        assert_eq!(p.tx_bytes, 20);
        assert_eq!(
            p.last_handshake,
            Some(now - Duration::from_secs(3) - Duration::from_nanos(500))
        );
        assert!(p.allowed_ips.contains(&"10.255.0.2/32".parse().unwrap()));
        let q = &st.peers[&STANDARD.encode([3u8; 32])];
        assert_eq!(q.last_handshake, None);
        assert_eq!(q.endpoint, Some("[2001:db8::1]:51820".parse().unwrap()));
        assert_eq!(errno_of("errno=0"), Some(0));
        assert_eq!(errno_of("errno=71"), Some(71));
        assert_eq!(errno_of("rx_bytes=1"), None);
        assert!(parse_get("d", &["garbage".into()], now).is_err());
    }
}
