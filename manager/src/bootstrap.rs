//! `weft init`: validating its input and creating a cluster's first state.
//!
//! Everything random (cluster ID, node ID, token secrets, CA key) is made
//! here, before anything is proposed, so the state machine stays
//! deterministic.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use weft_proto::identity::NodeKey;
use weft_proto::token::random_secret;
use weft_proto::v1 as pb;

use crate::ca::ClusterCa;
use crate::core::{now_ms, rfc3339};
use crate::error::{Error, Result};
use crate::join::{DEFAULT_PORT, parse_host_port};
use crate::limits;
use crate::store::ipam::overlaps;
use crate::store::{Cluster, ClusterSettings, Node, NodeId, NodeState, Role};

/// Validated `init` parameters.
#[derive(Debug, Clone)]
pub struct InitParams {
    /// Where other nodes reach this manager.
    pub advertise_addr: SocketAddr,
    /// Where the manager port listens.
    pub listen_addr: SocketAddr,
    /// Underlay IP for VXLAN.
    pub data_path_addr: IpAddr,
    /// Cluster settings.
    pub settings: ClusterSettings,
    /// Seal the secrets under a new unlock key (`--autolock`).
    pub autolock: bool,
}

/// Checks an `InitRequest`; every error says what to fix.
pub fn validate_init(r: &pb::InitRequest) -> Result<InitParams> {
    let bad = |m: String| Error::InvalidInput(m);
    if r.advertise_addr.is_empty() {
        return Err(bad(
            "--advertise-addr is required: the IP other nodes reach this manager at".into(),
        ));
    }
    let advertise_addr = parse_host_port(&r.advertise_addr, DEFAULT_PORT)?;
    if advertise_addr.ip().is_unspecified() || advertise_addr.ip().is_multicast() {
        return Err(bad(format!(
            "--advertise-addr {} is not an address other nodes can reach",
            r.advertise_addr
        )));
    }
    let listen_addr = if r.listen_addr.is_empty() {
        crate::join::default_listen(Some(advertise_addr), advertise_addr.port())
    } else {
        parse_host_port(&r.listen_addr, advertise_addr.port())?
    };
    let data_path_addr = if r.data_path_addr.is_empty() {
        advertise_addr.ip()
    } else {
        r.data_path_addr.parse().map_err(|_| {
            bad(format!(
                "invalid --data-path-addr {:?}: give an IP address",
                r.data_path_addr
            ))
        })?
    };
    let mut settings = ClusterSettings::default();
    if r.data_path_port != 0 {
        if !(1024..=49151).contains(&r.data_path_port) {
            return Err(bad(format!(
                "--data-path-port {} is out of range: use 1024-49151 (default 4789)",
                r.data_path_port
            )));
        }
        if r.data_path_port == u32::from(advertise_addr.port()) {
            return Err(bad(
                "--data-path-port must differ from the manager port".into()
            ));
        }
        settings.data_path_port = r.data_path_port as u16;
    }
    addr_pools(r, &mut settings)?;
    if r.cert_expiry_secs != 0 {
        limits::cert_expiry(r.cert_expiry_secs)?;
        settings.cert_expiry_secs = r.cert_expiry_secs;
    }
    if r.heartbeat_period_ms != 0 {
        limits::heartbeat_ms(r.heartbeat_period_ms)?;
        settings.heartbeat_period_ms = r.heartbeat_period_ms;
    }
    if r.disconnect_grace_ms != 0 {
        limits::disconnect_grace_ms(r.disconnect_grace_ms)?;
        settings.disconnect_grace_ms = Some(r.disconnect_grace_ms);
    }
    if r.wg_key_rotation_secs != 0 {
        limits::wg_key_rotation(r.wg_key_rotation_secs)?;
        settings.wg_key_rotation_secs = r.wg_key_rotation_secs;
    }
    if r.wg_port != 0 {
        let p = u16::try_from(r.wg_port)
            .ok()
            .filter(|p| *p >= 1024)
            .ok_or_else(|| {
                bad(format!(
                    "--wg-port {} is out of range: use 1024-65535",
                    r.wg_port
                ))
            })?;
        if p == settings.data_path_port || p == advertise_addr.port() {
            return Err(bad(format!(
                "--wg-port {p} is already used by the data path or the manager port"
            )));
        }
        settings.wg_port = p;
    }
    let (v4, v6) =
        crate::store::parse_ingress_subnets(&r.ingress_subnet, &r.ingress_subnet6, &settings)
            .map_err(bad)?;
    if let Some(net) = v4 {
        settings.ingress_subnet = Some(net);
    }
    settings.ingress_subnet6 = v6;
    if let Some(v6) = v6
        && let Some(p) = (settings.default_addr_pools6.iter())
            .find(|p| p.prefix() >= v6.prefix() && v6.contains(p.network()))
    {
        return Err(bad(format!(
            "--default-addr-pool {p} lies inside the ingress subnet {v6}, which is kept free \
             for published ports; choose another pool or --ingress-subnet"
        )));
    }
    // The ingress subnet is kept free, so a pool inside it has nothing to give.
    let ingress = settings.ingress_subnet();
    if let Some(p) = settings
        .default_addr_pools
        .iter()
        .find(|p| p.prefix() >= ingress.prefix() && ingress.contains(p.network()))
    {
        return Err(bad(format!(
            "--default-addr-pool {p} lies inside the ingress subnet {ingress}, which is kept free \
             for published ports; choose another pool or --ingress-subnet"
        )));
    }
    Ok(InitParams {
        advertise_addr,
        listen_addr,
        data_path_addr,
        settings,
        autolock: r.autolock,
    })
}

/// A new cluster, ready to be proposed, and the first node's credentials.
pub struct NewCluster {
    /// The cluster record (CA, secrets, settings).
    pub cluster: Cluster,
    /// The first manager.
    pub node: Node,
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// The first manager's certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (stays on this node).
    pub key_pem: String,
    /// With `--autolock`: the unlock key the secrets are sealed under, to
    /// show once.
    pub unlock_key: Option<weft_proto::seal::UnlockKey>,
}

/// `--default-addr-pool` (both families) and the mask lengths of subnets
/// taken from them, into `settings`.
fn addr_pools(r: &pb::InitRequest, settings: &mut ClusterSettings) -> Result<()> {
    let bad = |m: String| Error::InvalidInput(m);
    if !r.default_addr_pools.is_empty() {
        limits::at_most(
            "--default-addr-pool",
            r.default_addr_pools.len(),
            limits::MAX_ADDR_POOLS,
            "pools",
        )?;
        let mut pools: Vec<IpNetwork> = Vec::new();
        for p in &r.default_addr_pools {
            let net: IpNetwork = p.parse().map_err(|_| {
                bad(format!(
                    "invalid --default-addr-pool {p:?}: give a CIDR such as 10.20.0.0/16"
                ))
            })?;
            if net.network() != net.ip() {
                return Err(bad(format!(
                    "--default-addr-pool {p} has host bits set; did you mean {}/{}?",
                    net.network(),
                    net.prefix()
                )));
            }
            if let Some(o) = pools.iter().find(|q| overlaps(q, &net)) {
                return Err(bad(format!("--default-addr-pool {p} overlaps {o}")));
            }
            pools.push(net);
        }
        // Each family's pools replace that family's default.
        let (v6, v4): (Vec<IpNetwork>, Vec<IpNetwork>) =
            pools.into_iter().partition(|p| p.is_ipv6());
        if !v4.is_empty() {
            settings.default_addr_pools = v4;
        }
        settings.default_addr_pools6 = v6;
    }
    if r.default_addr_pool_mask_length6 != 0 {
        let m = r.default_addr_pool_mask_length6;
        let widest = (settings.default_addr_pools6.iter())
            .map(|p| p.prefix())
            .max()
            .unwrap_or(48);
        if m > u32::from(crate::store::ipam::MAX_PREFIX6) || m < u32::from(widest) {
            return Err(bad(format!(
                "the IPv6 --default-addr-pool-mask-length {m} is out of range: use {widest}-{} \
                 for these pools",
                crate::store::ipam::MAX_PREFIX6
            )));
        }
        settings.default_addr_pool_mask_length6 = m as u8;
    }
    if r.default_addr_pool_mask_length != 0 {
        let m = r.default_addr_pool_mask_length;
        let widest = settings
            .default_addr_pools
            .iter()
            .map(|p| p.prefix())
            .max()
            .unwrap_or(8);
        if m > 29 || m < u32::from(widest) {
            return Err(bad(format!(
                "--default-addr-pool-mask-length {m} is out of range: use {widest}-29 for these pools"
            )));
        }
        settings.default_addr_pool_mask_length = m as u8;
    }
    Ok(())
}

/// Creates the CA and the first manager's identity.
pub fn new_cluster(p: &InitParams, hostname: &str, underlay_mtu: u32) -> Result<NewCluster> {
    let cluster_id = format!("{:016x}", rand::random::<u64>());
    let ca = ClusterCa::generate(&cluster_id)?;
    let id = NodeId::random();
    let key = NodeKey::generate().map_err(crate::ca::CaError::from)?;
    let issued = ca.sign_csr(
        &key.csr_pem().map_err(crate::ca::CaError::from)?,
        &id.to_string(),
        weft_proto::identity::Role::Manager,
        &cluster_id,
        limits::cert_validity(p.settings.cert_expiry_secs),
    )?;
    let now = now_ms();
    let node = Node {
        id,
        hostname: hostname.to_string(),
        role: Role::Manager,
        state: NodeState::Unknown,
        addr: p.advertise_addr.to_string(),
        data_path_addr: p.data_path_addr.to_string(),
        underlay_mtu,
        created_at_ms: now,
        updated_at_ms: now,
        cert_expiry: rfc3339(issued.not_after),
        cert_role: Role::Manager,
        // Known at once: the version gate need not wait for this node's
        // session to report it.
        version: weft_proto::VERSION.into(),
        ..Default::default()
    };
    let mut cluster = Cluster {
        id: cluster_id,
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_pem: ca.key_pem().to_string(),
        worker_secret: random_secret(),
        manager_secret: random_secret(),
        settings: p.settings.clone(),
        sealed: None,
        secrets_generation: 0,
    };
    let unlock_key = if p.autolock {
        let key = weft_proto::seal::UnlockKey::generate()
            .map_err(|e| Error::FailedPrecondition(format!("cannot make an unlock key: {e}")))?;
        cluster.sealed = Some(crate::autolock::seal_secrets(
            &key,
            &cluster.plain_secrets(),
        )?);
        cluster.ca_key_pem.clear();
        cluster.worker_secret.clear();
        cluster.manager_secret.clear();
        Some(key)
    } else {
        None
    };
    Ok(NewCluster {
        ca_pem: cluster.ca_cert_pem.clone(),
        cluster,
        node,
        cert_pem: issued.cert_pem,
        key_pem: key.to_pem(),
        unlock_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(adv: &str) -> pb::InitRequest {
        pb::InitRequest {
            advertise_addr: adv.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let p = validate_init(&req("198.18.0.1")).unwrap();
        assert_eq!(p.advertise_addr, "198.18.0.1:4377".parse().unwrap());
        assert_eq!(p.listen_addr, "0.0.0.0:4377".parse().unwrap());
        assert_eq!(p.data_path_addr.to_string(), "198.18.0.1");
        assert_eq!(p.settings, ClusterSettings::default());
    }

    #[test]
    fn bad_inputs_say_what_to_fix() {
        let cases: Vec<(pb::InitRequest, &str)> = vec![
            (req(""), "required"),
            (req("eth0"), "expected IP"),
            (req("0.0.0.0"), "not an address"),
            (
                pb::InitRequest {
                    data_path_port: 80,
                    ..req("198.18.0.1")
                },
                "1024-49151",
            ),
            (
                pb::InitRequest {
                    default_addr_pools: vec!["10.0.0.0/8".into(), "10.1.0.0/16".into()],
                    ..req("198.18.0.1")
                },
                "overlaps",
            ),
            (
                pb::InitRequest {
                    default_addr_pools: vec!["10.0.0.1/8".into()],
                    ..req("198.18.0.1")
                },
                "host bits",
            ),
            (
                pb::InitRequest {
                    default_addr_pool_mask_length: 4,
                    ..req("198.18.0.1")
                },
                "out of range",
            ),
            (
                pb::InitRequest {
                    heartbeat_period_ms: 5,
                    ..req("198.18.0.1")
                },
                "heartbeat",
            ),
            (
                pb::InitRequest {
                    cert_expiry_secs: 60,
                    ..req("198.18.0.1")
                },
                "cert-expiry",
            ),
            (
                pb::InitRequest {
                    cert_expiry_secs: u64::MAX,
                    ..req("198.18.0.1")
                },
                "--cert-expiry 18446744073709551615s is over the limit of 3650d",
            ),
            (
                pb::InitRequest {
                    heartbeat_period_ms: 60_001,
                    ..req("198.18.0.1")
                },
                "--heartbeat-period 60001ms is outside the limits of 100ms to 60s",
            ),
            (
                pb::InitRequest {
                    wg_key_rotation_secs: 366 * 86_400,
                    ..req("198.18.0.1")
                },
                "--wg-key-rotation 366d is over the limit of 365d",
            ),
            (
                pb::InitRequest {
                    default_addr_pools: (0..17).map(|i| format!("10.{i}.0.0/16")).collect(),
                    ..req("198.18.0.1")
                },
                "--default-addr-pool: 17 pools is over the limit of 16 pools",
            ),
            (
                pb::InitRequest {
                    ingress_subnet: "10.255/sixteen".into(),
                    ..req("198.18.0.1")
                },
                "invalid --ingress-subnet",
            ),
            (
                pb::InitRequest {
                    ingress_subnet: "10.255.0.1/16".into(),
                    ..req("198.18.0.1")
                },
                "host bits",
            ),
            (
                pb::InitRequest {
                    ingress_subnet: "10.9.0.0/26".into(),
                    ..req("198.18.0.1")
                },
                "/8 to /24",
            ),
            (
                pb::InitRequest {
                    ingress_subnet: "172.18.0.0/24".into(),
                    ..req("198.18.0.1")
                },
                "gateway bridge",
            ),
            (
                pb::InitRequest {
                    default_addr_pools: vec!["10.255.8.0/21".into()],
                    ..req("198.18.0.1")
                },
                "inside the ingress subnet 10.255.0.0/16",
            ),
        ];
        for (r, want) in cases {
            let e = validate_init(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{r:?}: {e}");
        }
    }

    #[test]
    fn ingress_subnet_is_taken_from_init() {
        let default = validate_init(&req("198.18.0.1")).unwrap();
        assert_eq!(
            default.settings.ingress_subnet(),
            "10.255.0.0/16".parse().unwrap()
        );
        let p = validate_init(&pb::InitRequest {
            ingress_subnet: "10.11.0.0/24".into(),
            ..req("198.18.0.1")
        })
        .unwrap();
        assert_eq!(
            p.settings.ingress_subnet,
            Some("10.11.0.0/24".parse().unwrap())
        );
    }

    #[test]
    fn new_cluster_issues_a_manager_certificate() {
        let p = validate_init(&req("198.18.0.1")).unwrap();
        let c = new_cluster(&p, "m1", 1500).unwrap();
        let peer = weft_proto::identity::PeerIdentity::from_pem(&c.cert_pem).unwrap();
        assert_eq!(peer.node_id, c.node.id.to_string());
        assert_eq!(peer.cluster_id, c.cluster.id);
        assert_eq!(peer.role, weft_proto::identity::Role::Manager);
        assert_ne!(c.cluster.worker_secret, c.cluster.manager_secret);
    }
}
