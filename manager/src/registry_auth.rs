//! `--with-registry-auth` on the manager: a service's registry credentials
//! sealed before they are proposed, and opened only into the config of a
//! node that runs one of the service's tasks.
//!
//! ```text
//!  CLI ─(mTLS Control, in the clear)─▶ control API: check, seal under D
//!        D = HKDF(CA private key, "registry-auth")   (derived, stored nowhere)
//!        purpose "registry-auth:<service id>"
//!  Raft log / snapshots: ServiceSpec.registry_auth = { registry, sealed }
//!  dispatcher, per node config: for each task of this node whose service
//!        has credentials ─ open with D ─▶ TaskConfig.registry_auth
//!        (mTLS session to that node only)
//! ```
//!
//! The CA private key is what the sealing key comes from because it is the
//! one secret every manager holds, that autolock seals under the unlock key,
//! and that is worth more than any registry password (who holds it can
//! mint node certificates and receive any node's config). So the
//! credentials are never more exposed than the CA key: not in the clear in
//! the Raft files, and with autolock on, not openable from them at all.
//! SECURITY.md, "Registry credentials", says the same for operators.

use weft_proto::credential::{Credential, check_registry, registry_of};
use weft_proto::seal::{PURPOSE_REGISTRY_AUTH, UnlockKey};
use weft_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::store::{RegistryAuth, Secrets, State};

/// The key service credentials are sealed under, from the cluster's
/// secrets (see the module docs).
pub fn data_key(secrets: &Secrets) -> UnlockKey {
    UnlockKey::derived(secrets.ca_key_pem.as_bytes(), PURPOSE_REGISTRY_AUTH)
}

fn purpose(service_id: &str) -> String {
    format!("{PURPOSE_REGISTRY_AUTH}:{service_id}")
}

/// Checks credentials a client sent for service `service_id`, whose image
/// is `image` (they must be for its registry), and seals them. Bad input
/// is refused with what was wrong; nothing is stored.
pub fn seal(
    key: &UnlockKey,
    service_id: &str,
    image: Option<&str>,
    auth: &pb::RegistryCredential,
) -> Result<RegistryAuth> {
    let bad = |e: weft_proto::credential::CredentialError| {
        Error::InvalidInput(format!("--with-registry-auth: {e}"))
    };
    let image = image.ok_or_else(|| {
        Error::InvalidInput(
            "--with-registry-auth: the service runs no image (not a container)".into(),
        )
    })?;
    check_registry(&auth.registry).map_err(bad)?;
    if registry_of(image) != auth.registry {
        return Err(bad(
            weft_proto::credential::CredentialError::OtherRegistry {
                given: auth.registry.clone(),
                image: registry_of(image).to_owned(),
            },
        ));
    }
    let c = Credential::new(&auth.username, &auth.password).map_err(bad)?;
    let plain = Zeroizing::new(format!("{}:{}", c.username(), c.password()));
    let sealed = key
        .seal(&purpose(service_id), plain.as_bytes())
        .map_err(|e| Error::FailedPrecondition(format!("cannot seal the credentials: {e}")))?;
    Ok(RegistryAuth {
        registry: auth.registry.clone(),
        sealed,
    })
}

/// Opens a service's credentials for a node's config; `None` (logged) if
/// they do not open (a CA key changed since they were sealed: the operator
/// runs `service update --with-registry-auth` again).
pub fn open(
    key: &UnlockKey,
    service_id: &str,
    auth: &RegistryAuth,
) -> Option<pb::RegistryCredential> {
    let plain = match key.open(&purpose(service_id), &auth.sealed) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(service = %service_id, error = %e, "a service's registry credentials do not open");
            return None;
        }
    };
    let text = std::str::from_utf8(&plain).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(pb::RegistryCredential {
        registry: auth.registry.clone(),
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Puts into `config` (one node's) the credentials of the services its
/// tasks belong to: only tasks of that node are in it, so no other node
/// gets them. Without `key` (the secrets cannot be read: a locked manager)
/// nothing is added, and pulls go without credentials.
///
/// `key` is asked for only when a task needs it (opening the secrets and
/// deriving the key, for each session on every store change, was most of
/// a node's share of the leader's work with 5,000 nodes and no credential).
pub fn fill(state: &State, config: &mut pb::NodeConfig, key: impl FnOnce() -> Option<UnlockKey>) {
    let mut key = Some(key);
    let mut opened: Option<UnlockKey> = None;
    for t in &mut config.tasks {
        let Some(svc) = state
            .tasks
            .get(&t.id)
            .and_then(|task| task.service.as_ref())
            .and_then(|r| state.services.get(&r.service))
        else {
            continue;
        };
        if let Some(auth) = &svc.spec.registry_auth {
            if let Some(k) = key.take() {
                opened = k();
            }
            let Some(key) = opened.as_ref() else { return };
            t.registry_auth = open(key, &svc.id, auth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(registry: &str, user: &str, password: &str) -> pb::RegistryCredential {
        pb::RegistryCredential {
            registry: registry.into(),
            username: user.into(),
            password: password.into(),
        }
    }

    fn key() -> UnlockKey {
        let mut secrets = Secrets::default();
        secrets.ca_key_pem = "-----BEGIN PRIVATE KEY-----test".into();
        data_key(&secrets)
    }

    #[test]
    fn sealed_credentials_round_trip_and_hide_the_password() {
        let k = key();
        let image = "127.0.0.1:5000/team/app:1";
        let auth = seal(
            &k,
            "svc1",
            Some(image),
            &wire("127.0.0.1:5000", "alice", "Sup3rSecret"),
        )
        .unwrap();
        assert_eq!(auth.registry, "127.0.0.1:5000");
        // What Raft stores: neither the password nor Basic auth's base64.
        let stored = serde_json::to_string(&auth).unwrap();
        assert!(!stored.contains("Sup3rSecret"), "{stored}");
        assert!(!stored.contains("YWxpY2U6U3VwM3JTZWNyZXQ"), "{stored}");
        assert!(!format!("{auth:?}").contains("Sup3rSecret"));
        let back = open(&k, "svc1", &auth).unwrap();
        assert_eq!(
            (back.username.as_str(), back.password.as_str()),
            ("alice", "Sup3rSecret")
        );
        // Another service's blob does not open as this one's.
        assert!(open(&k, "svc2", &auth).is_none());
    }

    #[test]
    fn bad_credentials_are_refused() {
        let k = key();
        let img = Some("127.0.0.1:5000/a:1");
        let err =
            |w: pb::RegistryCredential, image| seal(&k, "s", image, &w).unwrap_err().to_string();
        assert!(err(wire("127.0.0.1:5000", "", "p"), img).contains("user name is empty"));
        assert!(err(wire("https://x", "u", "p"), img).contains("not a registry name"));
        assert!(err(wire("docker.io", "u", "p"), img).contains("the image is from 127.0.0.1:5000"));
        assert!(
            err(wire("127.0.0.1:5000", "u", &"p".repeat(9000)), img).contains("over the limit")
        );
        assert!(err(wire("127.0.0.1:5000", "u", "p"), None).contains("no image"));
        // Docker Hub names.
        assert!(seal(&k, "s", Some("busybox"), &wire("docker.io", "u", "p")).is_ok());
    }
}
