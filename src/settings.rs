//! The daemon's node-local settings: the default bridge's subnet and the
//! proxy variables handed to tasks. They come from a JSON file shaped like
//! Docker's `daemon.json` and from flags; flags win. Everything is checked
//! here, before the daemon starts, so a bad setting stops it with a message
//! instead of surfacing later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::cli::DaemonArgs;

/// The settings file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/weft/daemon.json";

/// The default bridge's subnet when neither flag nor file sets one
/// (Docker's docker0 default).
pub const DEFAULT_BRIDGE_SUBNET: &str = "172.17.0.0/16";

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    bridge_subnet: Option<String>,
    proxies: Option<Proxies>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Proxies {
    http_proxy: Option<String>,
    https_proxy: Option<String>,
    ftp_proxy: Option<String>,
    no_proxy: Option<String>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The default bridge's subnet.
    pub bridge_subnet: IpNetwork,
    /// Proxy variables by their upper-case name (`HTTP_PROXY` …).
    pub proxy: BTreeMap<String, String>,
}

/// Reads the file (`--config`, or [`DEFAULT_CONFIG`] if present) and
/// applies the flags over it.
pub fn resolve(args: &DaemonArgs) -> anyhow::Result<Settings> {
    let path: Option<PathBuf> = match &args.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let file = match &path {
        Some(p) => read(p)?,
        None => File::default(),
    };
    let proxies = file.proxies.unwrap_or_default();
    let mut proxy = BTreeMap::new();
    for (name, flag, from_file) in [
        ("HTTP_PROXY", &args.http_proxy, proxies.http_proxy),
        ("HTTPS_PROXY", &args.https_proxy, proxies.https_proxy),
        ("FTP_PROXY", &args.ftp_proxy, proxies.ftp_proxy),
        ("NO_PROXY", &args.no_proxy, proxies.no_proxy),
    ] {
        if let Some(v) = flag.clone().or(from_file) {
            if v.chars().any(|c| c.is_control()) {
                bail!(
                    "invalid {} value {v:?}: control characters are not allowed",
                    name.to_ascii_lowercase().replace('_', "-")
                );
            }
            if !v.is_empty() {
                proxy.insert(name.to_string(), v);
            }
        }
    }
    let subnet = args
        .bridge_subnet
        .clone()
        .or(file.bridge_subnet)
        .unwrap_or_else(|| DEFAULT_BRIDGE_SUBNET.into());
    Ok(Settings {
        bridge_subnet: parse_bridge_subnet(&subnet)?,
        proxy,
    })
}

fn read(p: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read the settings file {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "invalid settings file {}: expected JSON with \"bridge-subnet\" and/or \"proxies\": {{\"http-proxy\", \"https-proxy\", \"ftp-proxy\", \"no-proxy\"}}",
            p.display()
        )
    })
}

/// An IPv4 CIDR without host bits, /8 to /30.
pub fn parse_bridge_subnet(s: &str) -> anyhow::Result<IpNetwork> {
    let n: IpNetwork = s.parse().map_err(|_| {
        anyhow::anyhow!("invalid bridge subnet {s:?}: give a CIDR such as 172.17.0.0/16")
    })?;
    if !n.is_ipv4() {
        bail!("invalid bridge subnet {s}: IPv6 bridges are not supported yet");
    }
    if n.network() != n.ip() {
        bail!(
            "bridge subnet {s} has host bits set; did you mean {}/{}?",
            n.network(),
            n.prefix()
        );
    }
    if !(8..=30).contains(&n.prefix()) {
        bail!("bridge subnet {s} must be between /8 and /30");
    }
    Ok(n)
}

/// The first route of the host that overlaps `subnet`, ignoring the
/// default route and weft's own devices.
pub fn colliding_route<'a>(
    subnet: &IpNetwork,
    routes: &'a [weft_overlay::plan::HostRoute],
) -> Option<&'a weft_overlay::plan::HostRoute> {
    weft_overlay::plan::colliding_route(*subnet, routes, |d| {
        d.starts_with(weft_overlay::model::names::WEFT_PREFIX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> DaemonArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            d: DaemonArgs,
        }
        let mut v = vec!["t"];
        v.extend_from_slice(extra);
        T::parse_from(v).d
    }

    #[test]
    fn flags_override_the_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.json");
        std::fs::write(
            &f,
            r#"{"bridge-subnet":"10.99.0.0/16","proxies":{"http-proxy":"http://file:3128","no-proxy":"localhost"}}"#,
        )
        .unwrap();
        let p = f.to_str().unwrap();
        let s = resolve(&args(&["--config", p, "--http-proxy", "http://flag:3128"])).unwrap();
        assert_eq!(s.bridge_subnet.to_string(), "10.99.0.0/16");
        assert_eq!(s.proxy["HTTP_PROXY"], "http://flag:3128");
        assert_eq!(s.proxy["NO_PROXY"], "localhost");
        assert!(!s.proxy.contains_key("HTTPS_PROXY"));
        let s = resolve(&args(&["--config", p, "--bridge-subnet", "10.98.0.0/24"])).unwrap();
        assert_eq!(s.bridge_subnet.to_string(), "10.98.0.0/24");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.json");
        std::fs::write(&f, r#"{"bridge_subnet":"x"}"#).unwrap();
        let e = resolve(&args(&["--config", f.to_str().unwrap()])).unwrap_err();
        assert!(format!("{e:#}").contains("invalid settings file"), "{e:#}");
        for (bad, want) in [
            ("nope", "give a CIDR"),
            ("172.17.0.1/16", "host bits"),
            ("fd00::/64", "IPv6"),
            ("10.0.0.0/31", "/30"),
        ] {
            let e = parse_bridge_subnet(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let missing = dir.path().join("missing.json");
        let e = resolve(&args(&["--config", missing.to_str().unwrap()])).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read"), "{e:#}");
    }

    #[test]
    fn route_collisions_ignore_default_and_weft_routes() {
        use weft_overlay::plan::HostRoute;
        let r = |d: &str, dev: &str| HostRoute {
            dest: d.parse().unwrap(),
            dev: Some(dev.into()),
        };
        let routes = vec![
            r("0.0.0.0/0", "eth0"),
            r("172.18.0.0/16", "weft_gwbridge"),
            r("192.168.1.0/24", "eth0"),
        ];
        let s = |x: &str| x.parse::<IpNetwork>().unwrap();
        assert!(colliding_route(&s("172.17.0.0/16"), &routes).is_none());
        assert!(colliding_route(&s("172.18.0.0/24"), &routes).is_none());
        assert_eq!(
            colliding_route(&s("192.168.0.0/16"), &routes).unwrap().dest,
            s("192.168.1.0/24")
        );
    }
}
