//! The node side of autolock: a manager restarted with its TLS key sealed
//! stays locked until `weft unlock`, and its key file follows the unlock
//! key the manager holds.
//!
//! ```text
//!  start: node-key.pem sealed, no key held ─▶ locked: only `unlock` and `info`
//!  weft unlock K ─▶ K opens node-key.pem? ─▶ hold K, start agent + manager
//!  held key changes (autolock on/off, rotation, learned from a peer)
//!    ─▶ reseal node-key.pem under the new key (or write it in the clear)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::Status;
use weft_worker::node_files::NodeFiles;

/// Whether this daemon waits for `weft unlock`.
#[derive(Clone, Default)]
pub struct Locked(Arc<AtomicBool>);

impl Locked {
    /// Whether it is locked now.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Locks or unlocks.
    pub fn set(&self, v: bool) {
        self.0.store(v, Ordering::SeqCst)
    }

    /// FAILED_PRECONDITION naming `weft unlock`, while locked.
    pub fn refuse(&self) -> Result<(), Status> {
        if self.get() {
            return Err(Status::failed_precondition(
                "this manager is locked (autolock is on and it restarted): unlock it with \
                 `weft unlock` and the cluster's unlock key; until then it serves only \
                 `weft unlock` and `weft info`",
            ));
        }
        Ok(())
    }

    /// A gRPC interceptor refusing every call while locked.
    pub fn gate(
        &self,
    ) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone + use<> {
        let me = self.clone();
        move |req| me.refuse().map(|()| req)
    }
}

/// Keeps the TLS key file sealed under the key `files` holds, for the
/// daemon's lifetime: on every change of the key, and every 30 s besides
/// (a reseal that failed, say racing a renewal's save, is tried again),
/// reseals it when it is not in step, opening it with the key held before
/// the last change.
pub async fn reseal_loop(files: NodeFiles) {
    let mut rx = files.unlock_holder().subscribe();
    let mut held = rx.borrow_and_update().clone();
    let mut previous = held.clone();
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                previous = held;
                held = rx.borrow_and_update().clone();
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
        if !files.exists() {
            continue;
        }
        let f = files.clone();
        let prev = previous.clone();
        match tokio::task::spawn_blocking(move || f.reseal(prev.as_ref())).await {
            Ok(Ok(true)) => match &held {
                Some(k) => {
                    tracing::info!(key_id = %k.id(), "TLS key file sealed under the unlock key")
                }
                None => tracing::info!("autolock off: TLS key file written in the clear"),
            },
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot reseal the TLS key file; retrying in 30 s")
            }
            Err(e) => tracing::error!(error = %e, "reseal task failed"),
        }
    }
}
