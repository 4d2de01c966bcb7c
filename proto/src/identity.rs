//! Node identity: key pair, CSR, certificate subject (node ID, role, cluster ID).
//!
//! Owns the node's private key (ECDSA P-256, PKCS#8 PEM), the CSR it sends
//! to a manager (only the public key in it matters: the manager decides
//! everything else), the CA fingerprint, and the reading of a node
//! certificate back into a [`PeerIdentity`].
//!
//! Certificate subject layout (written by `weft_manager::ca`):
//!
//! ```text
//! CN = <node id>      OU = manager | worker      O = <cluster id>
//! SAN DNS <node id>.nodes.weft  (+ DNS manager.weft for managers)
//! ```

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// How far the CA backdates a certificate's `not_before`, so that a node
/// whose clock is a little behind the issuer's accepts it at once. Not part
/// of the certificate's life: renewal counts from `not_before` plus this.
pub const CERT_BACKDATE: time::Duration = time::Duration::minutes(5);

/// The SAN every manager certificate carries; clients verify managers by it.
pub const MANAGER_SAN: &str = "manager.weft";
/// DNS suffix of the per-node SAN `<node id>.nodes.weft`.
pub const NODE_SAN_SUFFIX: &str = ".nodes.weft";

/// Errors about keys, CSRs and certificates.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// rcgen failed to generate, parse or serialise a key or CSR.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM input contained no certificate.
    #[error("no PEM certificate found in {what}")]
    NoCertificate {
        /// Which input.
        what: &'static str,
    },
    /// A PEM input could not be decoded.
    #[error("cannot decode PEM {what}: {source}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The decoder error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate is not valid X.509 DER.
    #[error("cannot parse certificate: {0}")]
    X509(String),
    /// The certificate lacks a subject field weft needs.
    #[error("certificate is not a weft node certificate: subject has no {field}")]
    MissingSubjectField {
        /// `CN (node ID)`, `OU (role)` or `O (cluster ID)`.
        field: &'static str,
    },
    /// The OU of a certificate is not a weft role.
    #[error(
        "certificate is not a weft node certificate: role (OU) {0:?} is neither `manager` nor `worker`"
    )]
    UnknownRole(String),
    /// A node or cluster ID is not usable in a DNS name.
    #[error(
        "invalid {what} {value:?}: must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    InvalidName {
        /// `node ID` or `cluster ID`.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// The role a certificate grants. The manager's store has its own role type
/// and converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs tasks; may speak only for itself.
    Worker,
    /// Member of the Raft group; may call the control API and Raft transport.
    Manager,
}

impl Role {
    /// The OU string: `manager` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            other => Err(IdentityError::UnknownRole(other.to_owned())),
        }
    }
}

impl From<Role> for crate::v1::NodeRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => crate::v1::NodeRole::Worker,
            Role::Manager => crate::v1::NodeRole::Manager,
        }
    }
}

/// Checks that `value` can be a DNS label (node IDs go into SANs, cluster
/// IDs into the CA's CN): 1-63 of `[a-z0-9-]`, no leading/trailing `-`.
pub fn validate_name(what: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && !value.starts_with('-')
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// A node's private key (ECDSA P-256). It never leaves the node: only
/// [`NodeKey::csr_pem`] is sent to a manager.
pub struct NodeKey {
    key: rcgen::KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh ECDSA P-256 key from the OS random source.
    pub fn generate() -> Result<Self> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
                IdentityError::Rcgen {
                    what: "cannot generate a node key",
                    source,
                }
            })?;
        Ok(Self { key })
    }

    /// Loads a key from PKCS#8 PEM (as written by [`NodeKey::to_pem`]).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(|source| IdentityError::Rcgen {
            what: "cannot read the node key (PKCS#8 PEM expected)",
            source,
        })?;
        Ok(Self { key })
    }

    /// The key as PKCS#8 PEM (accepted by tonic's `Identity::from_pem`).
    /// Store it readable by root only.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate signing request for this key. The subject is a
    /// placeholder: the manager ignores everything but the public key.
    pub fn csr_pem(&self) -> Result<String> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft-node");
        let what = "cannot create a certificate signing request";
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|source| IdentityError::Rcgen { what, source })
    }

    /// The underlying rcgen key pair (for the CA's own key and tests).
    pub fn key_pair(&self) -> &rcgen::KeyPair {
        &self.key
    }

    /// Wraps an rcgen key pair.
    pub fn from_key_pair(key: rcgen::KeyPair) -> Self {
        Self { key }
    }
}

/// All certificates (DER) in a PEM string, in order.
pub fn certs_from_pem(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IdentityError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate { what });
    }
    Ok(certs)
}

/// SHA-256 of the first certificate's DER in `ca_pem`: the value a join
/// token carries.
pub fn ca_fingerprint(ca_pem: &str) -> Result<[u8; 32]> {
    let certs = certs_from_pem(ca_pem, "the CA certificate")?;
    Ok(fingerprint_der(&certs[0]))
}

/// SHA-256 of a DER certificate.
pub fn fingerprint_der(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Expiry time of the first certificate in `pem`.
pub fn cert_not_after(pem: &str) -> Result<OffsetDateTime> {
    let certs = certs_from_pem(pem, "the certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| IdentityError::X509(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Who is on the other end of a connection, as read from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// CN: the node ID.
    pub node_id: String,
    /// OU: the role the certificate grants.
    pub role: Role,
    /// O: the cluster ID.
    pub cluster_id: String,
    /// When the certificate became valid.
    pub not_before: OffsetDateTime,
    /// When the certificate expires.
    pub not_after: OffsetDateTime,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. Does not verify the
    /// chain: that is the TLS layer's job.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::X509(e.to_string()))?;
        let subject = cert.subject();
        let first =
            |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>,
             field: &'static str| {
                it.next()
                    .and_then(|a| a.as_str().ok())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or(IdentityError::MissingSubjectField { field })
            };
        let node_id = first(&mut subject.iter_common_name(), "CN (node ID)")?;
        let role = first(&mut subject.iter_organizational_unit(), "OU (role)")?.parse()?;
        let cluster_id = first(&mut subject.iter_organization(), "O (cluster ID)")?;
        Ok(Self {
            node_id,
            role,
            cluster_id,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// Whether the certificate's validity has ended, by this machine's clock.
    pub fn expired(&self) -> bool {
        self.not_after <= OffsetDateTime::now_utc()
    }

    /// Reads the identity from the first certificate in a PEM string.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let certs = certs_from_pem(pem, "the node certificate")?;
        Self::from_der(&certs[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pem_round_trip_and_csr() {
        let k = NodeKey::generate().unwrap();
        let pem = k.to_pem();
        assert!(pem.contains("BEGIN PRIVATE KEY"), "PKCS#8 expected: {pem}");
        let k2 = NodeKey::from_pem(&pem).unwrap();
        assert_eq!(
            k.key_pair().public_key_raw(),
            k2.key_pair().public_key_raw()
        );
        let csr = k2.csr_pem().unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(parsed.public_key.der_bytes(), k.key_pair().public_key_raw());
        assert!(format!("{k:?}").len() < 20, "Debug must not print the key");
    }

    #[test]
    fn bad_key_pem_is_an_error() {
        assert!(NodeKey::from_pem("nope").is_err());
    }

    #[test]
    fn fingerprint_and_identity_from_self_signed() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n1.nodes.weft".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "n1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "manager");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "c1");
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        let fp = ca_fingerprint(&pem).unwrap();
        assert_eq!(fp, fingerprint_der(cert.der()));
        let id = PeerIdentity::from_pem(&pem).unwrap();
        assert_eq!(id.node_id, "n1");
        assert_eq!(id.role, Role::Manager);
        assert_eq!(id.cluster_id, "c1");
        assert_eq!(id.not_after, cert_not_after(&pem).unwrap());
    }

    #[test]
    fn identity_without_role_is_rejected() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = PeerIdentity::from_der(cert.der()).unwrap_err();
        assert!(
            matches!(err, IdentityError::MissingSubjectField { .. }),
            "{err}"
        );
        assert!(matches!(
            ca_fingerprint("no pem here"),
            Err(IdentityError::NoCertificate { .. })
        ));
    }

    #[test]
    fn names() {
        validate_name("node ID", "0123456789abcdef").unwrap();
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
            assert!(validate_name("node ID", bad).is_err(), "{bad:?}");
        }
        assert_eq!("worker".parse::<Role>().unwrap(), Role::Worker);
        assert!("admin".parse::<Role>().is_err());
    }
}
