//! Connecting to the systems under test and issuing one write.
//!
//! Both systems get `channels` HTTP/2 connections (one `Channel` each, so
//! one TCP connection each) that the clients share round-robin. weft's go
//! over mutual TLS (its control API has no plaintext port); etcd's are
//! plain gRPC, as in the reference figures.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use weft_proto::v1 as pb;
use weft_proto::v1::control_client::ControlClient;

use crate::Target;
use crate::load::Shape;

/// Generated client for the hand-written etcd subset (`proto/etcd_kv.proto`).
#[allow(missing_docs, clippy::all)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

use etcdpb::kv_client::KvClient;
use etcdpb::maintenance_client::MaintenanceClient;

/// One client's connection and what it writes.
#[derive(Clone)]
pub enum Writer {
    /// `Control.UpdateNode` adding label `key` to `node`.
    Weft {
        /// Control client on a shared channel.
        client: ControlClient<Channel>,
        /// The node whose labels are written (the leader's own node).
        node: String,
        /// This client's label key.
        key: String,
        /// Read (`GetNode`) instead of write.
        read: bool,
    },
    /// `KV.Put` of `key`.
    Etcd {
        /// KV client on a shared channel.
        client: KvClient<Channel>,
        /// This client's key.
        key: Vec<u8>,
        /// A linearizable `KV.Range` of the key instead of a write.
        read: bool,
    },
}

impl Writer {
    /// Issues one committed write of value `seq`; returns once it is committed.
    pub async fn write(&mut self, seq: u64) -> Result<(), tonic::Status> {
        // The same small key/value for both systems: ~10-byte key, <=20-byte value.
        match self {
            Writer::Weft {
                client,
                node,
                read: true,
                ..
            } => {
                let req = pb::GetNodeRequest { node: node.clone() };
                client.get_node(req).await.map(drop)
            }
            Writer::Weft {
                client, node, key, ..
            } => {
                let req = pb::UpdateNodeRequest {
                    node: node.clone(),
                    label_add: [(key.clone(), seq.to_string())].into(),
                    ..Default::default()
                };
                client.update_node(req).await.map(drop)
            }
            Writer::Etcd {
                client,
                key,
                read: true,
            } => {
                let req = etcdpb::RangeRequest {
                    key: key.clone(),
                    serializable: false,
                };
                client.range(req).await.map(drop)
            }
            Writer::Etcd { client, key, .. } => {
                let req = etcdpb::PutRequest {
                    key: key.clone(),
                    value: seq.to_string().into_bytes(),
                };
                client.put(req).await.map(drop)
            }
        }
    }
}

fn client_key(i: usize) -> String {
    format!("bench/c{i}")
}

/// Which address each of `n` channels goes to.
fn channel_addrs(all: &[String], leader: &str, n: usize, target: Target) -> Vec<String> {
    (0..n)
        .map(|j| match target {
            Target::Leader => leader.to_string(),
            Target::All => all[j % all.len()].clone(),
        })
        .collect()
}

/// Retries `f` every 200 ms until it succeeds or `timeout` passes.
async fn until_ready<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what} not ready after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Connects `shape.channels` mTLS channels to the weft managers at `addrs`
/// (using the certificates in `certs`) and returns one writer per client.
/// The node written is the leader's own; one write is made first so a
/// misconfiguration fails here, not as errors in the results.
pub async fn weft(
    addrs: &[String],
    certs: &Path,
    shape: &Shape,
    op: crate::Op,
) -> Result<Vec<Writer>> {
    let read = |f: &str| {
        std::fs::read_to_string(certs.join(f))
            .with_context(|| format!("reading {}", certs.join(f).display()))
    };
    let (ca, cert, key) = (read("ca.pem")?, read("node.pem")?, read("node-key.pem")?);
    let connect = |addr: String| {
        let (ca, cert, key) = (ca.clone(), cert.clone(), key.clone());
        async move {
            weft_proto::tls::channel_to_manager(&addr, &ca, Some((&cert, &key)))
                .await
                .with_context(|| format!("connecting to weft manager {addr}"))
        }
    };
    let (leader_addr, leader_id) = until_ready("weft leader", shape.ready_timeout, || async {
        for addr in addrs {
            let Ok(ch) = connect(addr.clone()).await else {
                continue;
            };
            if let Ok(c) = ControlClient::new(ch)
                .get_cluster(pb::GetClusterRequest {})
                .await
            {
                let c = c.into_inner();
                if !c.leader_addr.is_empty() && !c.leader_id.is_empty() {
                    return Ok((c.leader_addr, c.leader_id));
                }
            }
        }
        bail!("no manager of {addrs:?} knows a leader")
    })
    .await?;
    let mut channels = Vec::new();
    for addr in channel_addrs(addrs, &leader_addr, shape.channels, shape.target) {
        channels.push(connect(addr).await?);
    }
    let probe = Writer::Weft {
        client: ControlClient::new(channels[0].clone()),
        node: leader_id.clone(),
        key: "bench/probe".into(),
        read: false,
    };
    until_ready("weft write path", shape.ready_timeout, || {
        let mut p = probe.clone();
        async move { p.write(0).await.map_err(|s| anyhow!("probe write: {s}")) }
    })
    .await?;
    Ok((0..shape.clients)
        .map(|i| Writer::Weft {
            client: ControlClient::new(channels[i % channels.len()].clone()),
            node: leader_id.clone(),
            key: client_key(i % shape.keys),
            read: op == crate::Op::Read,
        })
        .collect())
}

async fn etcd_channel(addr: &str) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connecting to etcd {addr}"))
}

/// Connects `shape.channels` plain gRPC channels to the etcd members at
/// `endpoints` and returns one writer per client. The leader is the member
/// whose own ID equals the leader ID in its `Maintenance.Status`.
pub async fn etcd(endpoints: &[String], shape: &Shape, op: crate::Op) -> Result<Vec<Writer>> {
    let leader = until_ready("etcd leader", shape.ready_timeout, || async {
        for ep in endpoints {
            let Ok(ch) = etcd_channel(ep).await else {
                continue;
            };
            if let Ok(s) = MaintenanceClient::new(ch)
                .status(etcdpb::StatusRequest {})
                .await
            {
                let s = s.into_inner();
                let me = s.header.map(|h| h.member_id);
                if s.leader != 0 && me == Some(s.leader) {
                    return Ok(ep.clone());
                }
            }
        }
        bail!("no member of {endpoints:?} is the leader")
    })
    .await?;
    let mut channels = Vec::new();
    for addr in channel_addrs(endpoints, &leader, shape.channels, shape.target) {
        channels.push(etcd_channel(&addr).await?);
    }
    let probe = Writer::Etcd {
        client: KvClient::new(channels[0].clone()),
        key: b"bench/probe".to_vec(),
        read: false,
    };
    until_ready("etcd write path", shape.ready_timeout, || {
        let mut p = probe.clone();
        async move { p.write(0).await.map_err(|s| anyhow!("probe write: {s}")) }
    })
    .await?;
    Ok((0..shape.clients)
        .map(|i| Writer::Etcd {
            client: KvClient::new(channels[i % channels.len()].clone()),
            key: client_key(i % shape.keys).into_bytes(),
            read: op == crate::Op::Read,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_the_target() {
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            channel_addrs(&all, "b", 4, Target::Leader),
            ["b", "b", "b", "b"]
        );
        assert_eq!(
            channel_addrs(&all, "b", 4, Target::All),
            ["a", "b", "c", "a"]
        );
    }
}
