//! The doctor's checks of this node itself: nftables usable and weft's
//! tables present, the gateway bridge's subnet against the host's routes,
//! this node's certificate. [`observe`] reads, [`decide`] judges (pure).

use std::sync::Arc;

use ipnetwork::IpNetwork;
use weft_overlay::linux::LinuxDataplane;
use weft_overlay::model::names::{NFT_GUARD_TABLE, NFT_PORTS_TABLE, NFT_TABLE, WEFT_PREFIX};
use weft_overlay::plan::HostRoute;
use weft_proto::identity::PeerIdentity;
use weft_proto::v1 as pb;

/// A node certificate with less than this share of its life left should
/// have been renewed (nodes renew at 50–80%).
const CERT_LEFT_WARN_PERCENT: i64 = 15;

/// What the local checks look at, as read.
#[derive(Debug, Clone)]
pub struct Observed {
    /// weft's tables in the host namespace, (family, name); `Err`: `nft`
    /// is missing or failed.
    pub tables: Result<Vec<(String, String)>, String>,
    /// The host's routes; `Err`: they could not be read.
    pub routes: Result<Vec<HostRoute>, String>,
    /// The node's certificate (PEM); empty: the node has none (not joined).
    pub cert_pem: String,
    /// The config this node holds (none before the first).
    pub config: Option<Arc<pb::NodeConfig>>,
}

/// Reads what [`decide`] judges.
pub async fn observe(
    linux: &LinuxDataplane,
    cert_pem: String,
    config: Option<Arc<pb::NodeConfig>>,
) -> Observed {
    Observed {
        tables: linux.host_tables().await.map_err(|e| e.to_string()),
        routes: linux.host_routes().await.map_err(|e| e.to_string()),
        cert_pem,
        config,
    }
}

fn row(check: &str, status: pb::DoctorStatus, detail: String, hint: &str) -> pb::DoctorCheck {
    pb::DoctorCheck {
        check: check.into(),
        subject: "this node".into(),
        status: status as i32,
        detail,
        hint: hint.into(),
    }
}

/// The local rows.
pub fn decide(o: &Observed, now: time::OffsetDateTime) -> Vec<pb::DoctorCheck> {
    use pb::DoctorStatus::{Fail, Ok as Good, Warn};
    let mut out = Vec::new();
    match &o.tables {
        Err(e) => out.push(row(
            "nftables",
            Fail,
            format!("nft cannot list tables: {e}"),
            "install nftables (the `nft` command) and run the daemon as root; weft's VIPs, \
             NAT, published ports and VXLAN guard need it",
        )),
        Ok(tables) => {
            out.push(row(
                "nftables",
                Good,
                "nft lists the host's tables".into(),
                "",
            ));
            out.push(tables_row(o.config.as_deref(), tables));
        }
    }
    if let Some(r) = bridge_row(o) {
        out.push(r);
    }
    out.push(match PeerIdentity::from_pem(&o.cert_pem) {
        _ if o.cert_pem.is_empty() => row(
            "node-cert",
            Warn,
            "not checked: this node has no certificate (not in a cluster)".into(),
            "`weft init` or `weft join`",
        ),
        Err(e) => row(
            "node-cert",
            Fail,
            format!("the node's certificate cannot be read: {e}"),
            "rejoin the cluster: `weft leave --force`, then `weft join --token ...`",
        ),
        Ok(p) => {
            let life = (p.not_after - p.not_before).whole_seconds().max(1);
            let left = (p.not_after - now).whole_seconds();
            if left <= 0 {
                row(
                    "node-cert",
                    Fail,
                    format!("expired at {}", rfc3339(p.not_after)),
                    "rejoin the cluster: `weft leave --force`, then `weft join --token ...`",
                )
            } else if left * 100 < life * CERT_LEFT_WARN_PERCENT {
                row(
                    "node-cert",
                    Warn,
                    format!("expires at {} and was not renewed", rfc3339(p.not_after)),
                    "renewal runs at 50-80% of the life: see the daemon log for why it fails",
                )
            } else {
                row(
                    "node-cert",
                    Good,
                    format!("valid until {}", rfc3339(p.not_after)),
                    "",
                )
            }
        }
    });
    out
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The tables this node's config needs in the host namespace, against
/// those there.
fn tables_row(config: Option<&pb::NodeConfig>, tables: &[(String, String)]) -> pb::DoctorCheck {
    let Some(c) = config else {
        return row(
            "weft-tables",
            pb::DoctorStatus::Warn,
            "not checked: this node holds no config yet".into(),
            "join a cluster; the tables follow the config",
        );
    };
    let mut want: Vec<(&str, &str)> = Vec::new();
    // The NAT tables come with the gateway bridge: once a task egresses
    // through it or a port is published (as the reconciler decides).
    let gateway = c.tasks.iter().any(|t| !t.gateway_ip.is_empty()) || !c.ports.is_empty();
    if gateway && !c.gateway_subnet.is_empty() {
        want.extend([("inet", NFT_TABLE), ("bridge", NFT_TABLE)]);
    }
    if !c.vxlan_allowed_sources.is_empty() {
        want.push(("inet", NFT_GUARD_TABLE));
    }
    if !c.ports.is_empty() {
        want.push(("inet", NFT_PORTS_TABLE));
    }
    let missing: Vec<String> = want
        .iter()
        .filter(|(f, n)| !tables.iter().any(|(tf, tn)| tf == f && tn == n))
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    if want.is_empty() {
        row(
            "weft-tables",
            pb::DoctorStatus::Ok,
            "this node's config needs none of weft's host tables yet".into(),
            "",
        )
    } else if missing.is_empty() {
        row(
            "weft-tables",
            pb::DoctorStatus::Ok,
            format!(
                "present: {}",
                want.iter()
                    .map(|(f, n)| format!("{f} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "",
        )
    } else {
        row(
            "weft-tables",
            pb::DoctorStatus::Fail,
            format!("missing: {}", missing.join(", ")),
            "something removed weft's tables (`nft flush ruleset`, a firewall service): the \
             daemon puts them back within seconds; if they keep going, stop whatever flushes \
             the ruleset",
        )
    }
}

/// The gateway bridge's subnet against the host's other routes.
fn bridge_row(o: &Observed) -> Option<pb::DoctorCheck> {
    let c = o.config.as_deref()?;
    if c.gateway_subnet.is_empty() {
        return None;
    }
    let Ok(subnet) = c.gateway_subnet.parse::<IpNetwork>() else {
        return Some(row(
            "gateway-bridge",
            pb::DoctorStatus::Fail,
            format!("the gateway subnet {:?} is not a CIDR", c.gateway_subnet),
            "report this: the managers sent a bad gateway subnet",
        ));
    };
    Some(match &o.routes {
        Err(e) => row(
            "gateway-bridge",
            pb::DoctorStatus::Warn,
            format!("not checked: cannot read the host's routes: {e}"),
            "run the doctor as root",
        ),
        Ok(routes) => {
            match weft_overlay::plan::colliding_route(subnet, routes, |d| {
                d.starts_with(WEFT_PREFIX)
            }) {
                Some(r) => row(
                    "gateway-bridge",
                    pb::DoctorStatus::Fail,
                    format!(
                        "{subnet} overlaps the host route {} (dev {}): task egress and that \
                         network collide",
                        r.dest,
                        r.dev.as_deref().unwrap_or("?")
                    ),
                    "the gateway subnet is the cluster's (fixed at init): move the host's \
                     network off it, or tasks on this node cannot reach that network",
                ),
                None => row(
                    "gateway-bridge",
                    pb::DoctorStatus::Ok,
                    format!("{subnet} overlaps no host route"),
                    "",
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> pb::NodeConfig {
        pb::NodeConfig {
            gateway_subnet: "172.18.0.0/16".into(),
            tasks: vec![pb::TaskConfig {
                gateway_ip: "172.18.0.2/16".into(),
                ..Default::default()
            }],
            vxlan_allowed_sources: vec!["198.18.0.2".into()],
            ..Default::default()
        }
    }

    fn status(rows: &[pb::DoctorCheck], check: &str) -> pb::DoctorStatus {
        let r = rows.iter().find(|r| r.check == check).expect(check);
        pb::DoctorStatus::try_from(r.status).unwrap()
    }

    fn tables(names: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        Ok(names
            .iter()
            .map(|(f, n)| (f.to_string(), n.to_string()))
            .collect())
    }

    #[test]
    fn tables_present_route_free_is_ok_and_missing_or_colliding_fails() {
        let now = time::OffsetDateTime::now_utc();
        let mut o = Observed {
            tables: tables(&[("inet", "weft"), ("bridge", "weft"), ("inet", "weft_guard")]),
            routes: Ok(vec![HostRoute {
                dest: "198.18.0.0/24".parse().unwrap(),
                dev: Some("eth0".into()),
            }]),
            cert_pem: String::new(),
            config: Some(Arc::new(config())),
        };
        let rows = decide(&o, now);
        assert_eq!(status(&rows, "nftables"), pb::DoctorStatus::Ok);
        assert_eq!(status(&rows, "weft-tables"), pb::DoctorStatus::Ok);
        assert_eq!(status(&rows, "gateway-bridge"), pb::DoctorStatus::Ok);
        assert_eq!(status(&rows, "node-cert"), pb::DoctorStatus::Warn);

        o.tables = tables(&[("inet", "weft"), ("bridge", "weft")]);
        o.routes = Ok(vec![
            HostRoute {
                dest: "172.18.5.0/24".parse().unwrap(),
                dev: Some("ens3".into()),
            },
            HostRoute {
                dest: "172.18.0.0/16".parse().unwrap(),
                dev: Some("weft_gwbridge".into()),
            },
        ]);
        let rows = decide(&o, now);
        let t = rows.iter().find(|r| r.check == "weft-tables").unwrap();
        assert_eq!(t.status, pb::DoctorStatus::Fail as i32);
        assert!(t.detail.contains("inet weft_guard"), "{}", t.detail);
        let g = rows.iter().find(|r| r.check == "gateway-bridge").unwrap();
        assert_eq!(g.status, pb::DoctorStatus::Fail as i32);
        assert!(g.detail.contains("ens3"), "{}", g.detail);

        o.tables = Err("nft: not found".into());
        let rows = decide(&o, now);
        assert_eq!(status(&rows, "nftables"), pb::DoctorStatus::Fail);
        assert!(rows.iter().all(|r| r.check != "weft-tables"));
    }
}
