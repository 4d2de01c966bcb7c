//! Control calls that seal, unseal or re-seal the cluster's secrets
//! (see [`crate::autolock`]): `cluster update --autolock`, `unlock-key
//! [--rotate]`, and join-token rotation while the secrets are sealed.
//!
//! Every change proposes the secrets whole ([`Command::SetSecrets`]),
//! sealed here on the proposer; the new key is held in memory only once
//! this manager has applied the record it opens, so the keeper never sees
//! a held key that is newer than the record (and never trades it back for
//! the old one).

use weft_proto::seal::UnlockKey;
use weft_proto::v1 as pb;

use super::ControlService;
use crate::autolock::seal_secrets;
use crate::error::{Error, Result};
use crate::store::{Command, Role, Secrets};

fn new_key() -> Result<UnlockKey> {
    UnlockKey::generate()
        .map_err(|e| Error::FailedPrecondition(format!("cannot make an unlock key: {e}")))
}

fn autolock_off() -> Error {
    Error::FailedPrecondition(
        "autolock is off: turn it on with `weft cluster update --autolock=true`".into(),
    )
}

impl ControlService {
    /// The unlock key (`weft unlock-key`), or a new one the secrets are
    /// re-sealed under (`--rotate`).
    pub(super) async fn unlock_key(&self, rotate: bool) -> Result<pb::UnlockKeyResponse> {
        if !self.core.cluster()?.autolock() {
            return Err(autolock_off());
        }
        // Checks that the key held opens the record now.
        let read = self.core.secrets_at()?;
        let key = if rotate {
            let key = new_key()?;
            self.propose_sealed(read, Some(&key)).await?;
            key
        } else {
            self.core.unlock_holder().get().ok_or(Error::NoUnlockKey)?
        };
        Ok(pb::UnlockKeyResponse {
            unlock_key: key.reveal().to_string(),
            key_id: key.id().to_owned(),
        })
    }

    /// Turns autolock on (answering the new key) or off.
    pub(super) async fn set_autolock(&self, on: bool) -> Result<Option<UnlockKey>> {
        let was = self.core.cluster()?.autolock();
        match (was, on) {
            (true, true) => Err(Error::FailedPrecondition(
                "autolock is already on: `weft unlock-key` shows the key, \
                 `weft unlock-key --rotate` replaces it"
                    .into(),
            )),
            (false, false) => Err(Error::FailedPrecondition("autolock is already off".into())),
            (false, true) => {
                let key = new_key()?;
                self.propose_sealed(self.core.secrets_at()?, Some(&key))
                    .await?;
                Ok(Some(key))
            }
            (true, false) => {
                self.propose_sealed(self.core.secrets_at()?, None).await?;
                Ok(None)
            }
        }
    }

    /// Replaces one join secret while the secrets are sealed.
    pub(super) async fn rotate_sealed_secret(&self, role: Role, secret: &str) -> Result<()> {
        let (mut secrets, generation) = self.core.secrets_at()?;
        match role {
            Role::Worker => secrets.worker_secret = secret.to_owned(),
            Role::Manager => secrets.manager_secret = secret.to_owned(),
        }
        let key = self.core.unlock_holder().get().ok_or(Error::NoUnlockKey)?;
        self.propose_sealed((secrets, generation), Some(&key)).await
    }

    /// Proposes `secrets` (read at `generation`) sealed under `key` (or in
    /// the clear), waits until this manager has applied it, then holds
    /// `key`. Refused by the store if the secrets changed since the read.
    async fn propose_sealed(
        &self,
        (secrets, generation): (Secrets, u64),
        key: Option<&UnlockKey>,
    ) -> Result<()> {
        let cmd = match key {
            Some(k) => Command::SetSecrets {
                secrets: Secrets::default(),
                sealed: Some(seal_secrets(k, &secrets)?),
                generation,
            },
            None => Command::SetSecrets {
                secrets: secrets.clone(),
                sealed: None,
                generation,
            },
        };
        self.core.propose(cmd).await?;
        self.read_after_write(|s| {
            (s.cluster.as_ref()?.secrets_generation > generation).then_some(())
        })
        .await?;
        self.core.unlock_holder().set(key.cloned());
        Ok(())
    }
}
