//! Parsing of `-p`/`--publish` the way Docker users write it:
//! `weft run -p [HOSTPORT:]PORT[/PROTO]` and `weft service create --publish
//! published=P,target=T[,protocol=..][,mode=..]` (or the short
//! `P:T[/PROTO]`). Ranges are checked by the managers too; this only turns
//! text into the wire form, with errors that say what was wrong.

use anyhow::{Context, bail};
use weft_proto::v1 as pb;

fn port(what: &str, s: &str) -> anyhow::Result<u32> {
    let n: u32 = s
        .parse()
        .ok()
        .with_context(|| format!("invalid {what} port {s:?}: give a number 1-65535"))?;
    if !(1..=65535).contains(&n) {
        bail!("{what} port {n} is outside 1-65535");
    }
    Ok(n)
}

fn proto(s: &str) -> anyhow::Result<String> {
    match s {
        "tcp" | "udp" => Ok(s.to_string()),
        _ => bail!("invalid protocol {s:?}: use tcp or udp"),
    }
}

/// `[HOSTPORT:]PORT[/PROTO]` (host mode; HOSTPORT 0 = pick one).
pub fn run_publish(spec: &str) -> anyhow::Result<pb::PortMapping> {
    let (ports, protocol) = match spec.split_once('/') {
        Some((p, pr)) => (p, proto(pr)?),
        None => (spec, "tcp".to_string()),
    };
    let (published, target) = match ports.split_once(':') {
        Some((h, t)) => {
            if h.contains(':') || t.contains(':') {
                bail!(
                    "invalid -p {spec:?}: binding to one host address is not supported; use HOSTPORT:PORT"
                );
            }
            (port("published", h)?, port("target", t)?)
        }
        None => (0, port("target", ports)?),
    };
    Ok(pb::PortMapping {
        protocol,
        published,
        target,
        mode: "host".into(),
    })
}

/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`, or
/// `P:T[/PROTO]` (ingress).
pub fn service_publish(spec: &str) -> anyhow::Result<pb::PortMapping> {
    if !spec.contains('=') {
        let mut m = run_publish(spec).with_context(|| format!("invalid --publish {spec:?}"))?;
        m.mode = "ingress".into();
        return Ok(m);
    }
    let mut m = pb::PortMapping {
        protocol: "tcp".into(),
        mode: "ingress".into(),
        ..Default::default()
    };
    for kv in spec.split(',') {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("invalid --publish {spec:?}: {kv:?} is not key=value"))?;
        match k {
            "published" => m.published = port("published", v)?,
            "target" => m.target = port("target", v)?,
            "protocol" => m.protocol = proto(v)?,
            "mode" => match v {
                "ingress" | "host" => m.mode = v.to_string(),
                _ => bail!("invalid publish mode {v:?}: use ingress or host"),
            },
            _ => bail!("unknown --publish key {k:?}: use published, target, protocol and mode"),
        }
    }
    if m.target == 0 {
        bail!("invalid --publish {spec:?}: target= is required");
    }
    Ok(m)
}

/// How `weft port` prints a mapping: `80/tcp -> 0.0.0.0:8080`.
pub fn describe(m: &pb::PortMapping) -> String {
    format!("{}/{} -> 0.0.0.0:{}", m.target, m.protocol, m.published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_forms() {
        let m = run_publish("8080:80").unwrap();
        assert_eq!(
            (m.published, m.target, m.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let m = run_publish("53/udp").unwrap();
        assert_eq!((m.published, m.target, m.protocol.as_str()), (0, 53, "udp"));
        for (bad, want) in [
            ("70000:80", "outside 1-65535"),
            ("0:80", "outside 1-65535"),
            ("8080:x", "invalid target port"),
            ("8080:80/sctp", "invalid protocol"),
            ("127.0.0.1:8080:80", "not supported"),
            ("", "invalid target port"),
        ] {
            let e = format!("{:#}", run_publish(bad).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn service_forms() {
        let m = service_publish("published=8080,target=80,mode=host,protocol=udp").unwrap();
        assert_eq!(
            (m.published, m.target, m.protocol.as_str(), m.mode.as_str()),
            (8080, 80, "udp", "host")
        );
        let m = service_publish("8080:80").unwrap();
        assert_eq!(
            (m.published, m.target, m.mode.as_str()),
            (8080, 80, "ingress")
        );
        let m = service_publish("target=80").unwrap();
        assert_eq!(m.published, 0);
        for (bad, want) in [
            ("published=8080", "target= is required"),
            ("published=0,target=80", "outside"),
            ("target=80,mode=global", "invalid publish mode"),
            ("target=80,foo=1", "unknown --publish key"),
            ("target=80,x", "not key=value"),
        ] {
            let e = format!("{:#}", service_publish(bad).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
