//! Autolock on the manager: the cluster's secrets sealed in the store, the
//! unlock key held in memory only, and how a manager learns that key.
//!
//! ```text
//!  Cluster record in Raft          manager memory          peers (mTLS Control)
//!  ca_key_pem, secrets = ""        KeyHolder: Some(K)
//!  sealed = seal_K(secrets) ─open_K─▶ Secrets (per use, zeroed on drop)
//!
//!  keeper, every second: the record is sealed under K' and K' is not held
//!    ─▶ ask each other manager `Control.UnlockKey` ─▶ hold the first key that opens it
//!  the record is in the clear ─▶ hold nothing (the node then unseals its TLS key file)
//! ```
//!
//! The key never goes through Raft and never reaches the disk on a manager:
//! a manager that joined, or that was down during a rotation, learns it from
//! a manager that has it; the node's daemon watches the holder and (re)seals
//! its own TLS key file with it.

use std::time::Duration;

use tokio::sync::watch;
use weft_proto::seal::{KeyHolder, PURPOSE_CLUSTER, SealError, Sealed, UnlockKey};
use weft_proto::v1 as pb;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::{Cluster, NodeId, Secrets};

/// Seals the secrets under `key`.
pub fn seal_secrets(key: &UnlockKey, secrets: &Secrets) -> Result<Sealed> {
    let json = zeroize::Zeroizing::new(serde_json::to_vec(secrets).expect("secrets serialise"));
    key.seal(PURPOSE_CLUSTER, &json).map_err(seal_failed)
}

/// Opens sealed secrets.
pub fn open_secrets(key: &UnlockKey, sealed: &Sealed) -> Result<Secrets, SealError> {
    let json = key.open(PURPOSE_CLUSTER, sealed)?;
    serde_json::from_slice(&json).map_err(|_| SealError::Garbled("sealed secrets are not JSON"))
}

/// The cluster's secrets in the clear: as stored, or opened with `key`.
/// Pure.
pub fn secrets(cluster: &Cluster, key: Option<&UnlockKey>) -> Result<Secrets> {
    match (&cluster.sealed, key) {
        (None, _) => Ok(cluster.plain_secrets()),
        (Some(_), None) => Err(Error::NoUnlockKey),
        (Some(sealed), Some(k)) => open_secrets(k, sealed).map_err(|e| match e {
            // A key from before a rotation: the keeper fetches the new one.
            SealError::WrongKey { .. } => Error::NoUnlockKey,
            e => Error::FailedPrecondition(format!("cannot open the cluster's secrets: {e}")),
        }),
    }
}

fn seal_failed(e: SealError) -> Error {
    Error::FailedPrecondition(format!("cannot seal the cluster's secrets: {e}"))
}

/// What the keeper should do about the key it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperStep {
    /// The held key fits the record (or there is no record yet).
    Nothing,
    /// Autolock is off: drop the key.
    Forget,
    /// The record is sealed under this key id, which is not held.
    Fetch(String),
}

/// Decides the keeper's step. Pure.
pub fn plan(cluster: Option<&Cluster>, held: Option<&UnlockKey>) -> KeeperStep {
    match (cluster.and_then(|c| c.sealed.as_ref()), cluster, held) {
        (_, None, _) => KeeperStep::Nothing,
        (None, Some(_), None) => KeeperStep::Nothing,
        (None, Some(_), Some(_)) => KeeperStep::Forget,
        (Some(s), _, Some(k)) if s.key_id() == k.id() => KeeperStep::Nothing,
        (Some(s), _, _) => KeeperStep::Fetch(s.key_id().to_owned()),
    }
}

/// Keeps `core`'s unlock key in step with the record until `stop`: drops it
/// when autolock goes off, fetches it from the other managers when the
/// record is sealed under a key it does not hold (backing off from 1 s to
/// 30 s while none can give it).
pub async fn keeper(core: Core, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    let mut compacted = false;
    loop {
        let cluster = core.read(|s| s.cluster.clone());
        match cluster.as_ref().map(Cluster::autolock) {
            // Once per start and per time autolock is turned on: the log
            // before it may hold the secrets in the clear (the check cannot
            // see the log's past, so it does not try to).
            Some(true) if !compacted => {
                // Beside the loop: a slow snapshot must not hold up
                // learning the key.
                tokio::spawn(compact_log(core.clone()));
                compacted = true;
            }
            Some(false) => compacted = false,
            _ => {}
        }
        let holder = core.unlock_holder();
        let wait = match plan(cluster.as_ref(), holder.get().as_ref()) {
            KeeperStep::Nothing => {
                backoff = Duration::from_secs(1);
                Duration::from_secs(1)
            }
            KeeperStep::Forget => {
                tracing::info!("autolock is off: dropping the unlock key");
                holder.set(None);
                Duration::from_secs(1)
            }
            KeeperStep::Fetch(kid) => {
                let sealed = cluster.and_then(|c| c.sealed).expect("plan saw it sealed");
                match fetch(&core, &sealed).await {
                    Some(key) => {
                        tracing::info!(key_id = %key.id(), "learned the cluster's unlock key from a manager");
                        holder.set(Some(key));
                        backoff = Duration::from_secs(1);
                        Duration::ZERO
                    }
                    None => {
                        tracing::warn!(key_id = %kid, retry_in = ?backoff,
                            "no other manager could give the cluster's unlock key yet");
                        let w = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        w
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Builds a snapshot now and purges the log behind it, compacting the log
/// file at that purge, so that entries from before autolock (the secrets in
/// the clear) leave this manager's live log, its log file and its stored
/// snapshot. Best effort: the bytes may stay in free database pages and in
/// the disk blocks the old log file used (see SECURITY.md).
async fn compact_log(core: Core) {
    let target = core.raft().metrics().applied_index;
    core.raft().compact_log_file_at_next_purge();
    let raft = core.raft().raft();
    if let Err(e) = raft.trigger().snapshot().await {
        tracing::warn!(error = %e, "autolock on: cannot build a snapshot");
        return;
    }
    let mut rx = core.raft().metrics_watch();
    let built = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let at = rx.borrow().snapshot.map(|l| l.index);
            if at.is_some() && at >= target {
                return at;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match built {
        Ok(Some(index)) => {
            if let Err(e) = raft.trigger().purge_log(index).await {
                tracing::warn!(error = %e, "autolock on: cannot purge the log");
            } else {
                tracing::info!(index, "autolock on: snapshot built, log purged behind it");
            }
        }
        _ => tracing::warn!("autolock on: no snapshot within 10 s; the log is not purged"),
    }
}

/// Asks every other manager for the unlock key; the first that opens
/// `sealed` wins.
async fn fetch(core: &Core, sealed: &Sealed) -> Option<UnlockKey> {
    let me = core.node_id();
    let peers: Vec<(NodeId, String)> = core.read(|s| {
        s.managers()
            .filter(|n| n.id != me && !n.addr.is_empty())
            .map(|n| (n.id, n.addr.clone()))
            .collect()
    });
    for (id, addr) in peers {
        let Some(channel) = core.channel_to(&addr) else {
            continue;
        };
        let mut client = pb::control_client::ControlClient::new(channel);
        let call = client.unlock_key(pb::UnlockKeyRequest { rotate: false });
        let answer = match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                tracing::debug!(peer = %id, error = %e.message(), "unlock key not given");
                continue;
            }
            Err(_) => continue,
        };
        let key: UnlockKey = match answer.unlock_key.parse() {
            Ok(k) => k,
            Err(_) => continue,
        };
        if open_secrets(&key, sealed).is_ok() {
            return Some(key);
        }
    }
    None
}

/// A fresh holder, for a manager started without one.
pub fn holder() -> KeyHolder {
    KeyHolder::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let mut c = crate::testing::cluster_record();
        c.ca_key_pem = "-----BEGIN PRIVATE KEY-----x".into();
        c.worker_secret = "w-secret".into();
        c.manager_secret = "m-secret".into();
        c
    }

    fn sealed(c: &Cluster, k: &UnlockKey) -> Cluster {
        let mut s = c.clone();
        s.sealed = Some(seal_secrets(k, &c.plain_secrets()).unwrap());
        s.ca_key_pem.clear();
        s.worker_secret.clear();
        s.manager_secret.clear();
        s
    }

    #[test]
    fn sealed_secrets_open_with_the_key_only() {
        let c = cluster();
        let k = UnlockKey::generate().unwrap();
        let s = sealed(&c, &k);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("PRIVATE KEY") && !json.contains("w-secret"));
        assert_eq!(secrets(&s, Some(&k)).unwrap(), c.plain_secrets());
        assert!(matches!(secrets(&s, None), Err(Error::NoUnlockKey)));
        let other = UnlockKey::generate().unwrap();
        assert!(matches!(secrets(&s, Some(&other)), Err(Error::NoUnlockKey)));
        // In the clear, any key (or none) reads them.
        assert_eq!(secrets(&c, None).unwrap(), c.plain_secrets());
        // The record survives the store's encoding.
        let back: Cluster = serde_json::from_str(&json).unwrap();
        assert_eq!(secrets(&back, Some(&k)).unwrap(), c.plain_secrets());
    }

    #[test]
    fn the_keeper_fetches_forgets_or_waits() {
        let c = cluster();
        let k = UnlockKey::generate().unwrap();
        let k2 = UnlockKey::generate().unwrap();
        let s = sealed(&c, &k);
        assert_eq!(plan(None, None), KeeperStep::Nothing);
        assert_eq!(plan(None, Some(&k)), KeeperStep::Nothing);
        assert_eq!(plan(Some(&c), None), KeeperStep::Nothing);
        assert_eq!(plan(Some(&c), Some(&k)), KeeperStep::Forget);
        assert_eq!(plan(Some(&s), Some(&k)), KeeperStep::Nothing);
        assert_eq!(plan(Some(&s), None), KeeperStep::Fetch(k.id().into()));
        assert_eq!(plan(Some(&s), Some(&k2)), KeeperStep::Fetch(k.id().into()));
    }

    #[test]
    fn debug_of_a_sealed_record_has_no_secret() {
        let k = UnlockKey::generate().unwrap();
        let s = sealed(&cluster(), &k);
        let d = format!("{s:?} {:?}", cluster().plain_secrets());
        assert!(!d.contains("PRIVATE") && !d.contains("w-secret") && !d.contains("m-secret"));
        assert!(!d.contains(&*k.reveal()));
    }
}
