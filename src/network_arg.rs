//! `--network` values: a network's name or ID, or Docker's long form
//! `name=NET,alias=A[,alias=B][,ip=ADDR][,ip6=ADDR]` (`target=` for
//! `name=`).

use anyhow::{Context, bail};
use weft_proto::v1 as pb;

/// One `--network` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkArg {
    /// Network name or ID.
    pub name: String,
    /// `alias=`: more DNS names on that network.
    pub aliases: Vec<String>,
    /// `ip=`: the address asked for (`weft run` only).
    pub ip: Option<String>,
    /// `ip6=`: the IPv6 address asked for (`weft run` only).
    pub ip6: Option<String>,
}

impl NetworkArg {
    /// Parses `v` (`flag` names it in errors).
    pub fn parse(flag: &str, v: &str) -> anyhow::Result<NetworkArg> {
        if !v.contains('=') {
            return Ok(NetworkArg {
                name: v.to_string(),
                aliases: Vec::new(),
                ip: None,
                ip6: None,
            });
        }
        let mut name = None;
        let mut aliases = Vec::new();
        let mut ip = None;
        let mut ip6 = None;
        for field in v.split(',') {
            let (k, val) = field
                .split_once('=')
                .with_context(|| format!("{flag} {v:?}: {field:?} is not KEY=VALUE"))?;
            if val.is_empty() {
                bail!("{flag} {v:?}: {k} has no value");
            }
            match k {
                "name" | "target" => {
                    if name.replace(val.to_string()).is_some() {
                        bail!("{flag} {v:?}: the network is given twice");
                    }
                }
                "alias" => aliases.push(val.to_string()),
                "ip" | "ip6" => {
                    let slot = if k == "ip" { &mut ip } else { &mut ip6 };
                    if slot.replace(val.to_string()).is_some() {
                        bail!("{flag} {v:?}: {k} is given twice");
                    }
                }
                other => {
                    bail!(
                        "{flag} {v:?}: unknown option {other:?} (known: name, target, alias, ip, ip6)"
                    )
                }
            }
        }
        let name = name.with_context(|| format!("{flag} {v:?}: no name=NETWORK"))?;
        Ok(NetworkArg {
            name,
            aliases,
            ip,
            ip6,
        })
    }

    /// Every `values` of `flag`, for a service (no `ip=`): the networks
    /// and their aliases.
    pub fn for_service(
        flag: &str,
        values: &[String],
    ) -> anyhow::Result<(Vec<String>, Vec<pb::NetworkAliases>)> {
        let mut names = Vec::new();
        let mut aliases = Vec::new();
        for v in values {
            let n = NetworkArg::parse(flag, v)?;
            if n.ip.is_some() || n.ip6.is_some() {
                bail!(
                    "{flag} {v:?}: a service's tasks get their addresses from the network; ip= and ip6= are for `weft run`"
                );
            }
            if !n.aliases.is_empty() {
                aliases.push(pb::NetworkAliases {
                    network: n.name.clone(),
                    aliases: n.aliases,
                });
            }
            names.push(n.name);
        }
        Ok((names, aliases))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        let n = NetworkArg::parse("--network", "appnet").unwrap();
        assert_eq!(
            (n.name.as_str(), n.aliases.len(), n.ip),
            ("appnet", 0, None)
        );
        let n =
            NetworkArg::parse("--network", "name=appnet,alias=db,alias=pg,ip=10.0.0.9").unwrap();
        assert_eq!(n.name, "appnet");
        assert_eq!(n.aliases, ["db", "pg"]);
        assert_eq!(n.ip.as_deref(), Some("10.0.0.9"));
        let n = NetworkArg::parse("--network", "name=appnet,ip6=fd00:1::9").unwrap();
        assert_eq!((n.ip, n.ip6.as_deref()), (None, Some("fd00:1::9")));
        assert_eq!(
            NetworkArg::parse("--network", "target=x,alias=a")
                .unwrap()
                .name,
            "x"
        );
        for bad in [
            "alias=db",
            "name=a,name=b",
            "name=a,alias=",
            "name=a,driver-opt=x",
            "name=a,alias",
            "name=a,ip6=fd00::1,ip6=fd00::2",
        ] {
            let e = NetworkArg::parse("--network", bad).unwrap_err().to_string();
            assert!(e.starts_with("--network"), "{bad}: {e}");
        }
        let e = NetworkArg::for_service("--network", &["name=a,ip=10.0.0.1".into()]).unwrap_err();
        assert!(
            e.to_string().contains("ip= and ip6= are for `weft run`"),
            "{e}"
        );
    }
}
