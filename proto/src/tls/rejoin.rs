//! Proof of a node's old identity, for rejoining after its certificate
//! expired while the node was offline.
//!
//! ```text
//!  node (state kept on disk)                       manager (Join, no client cert)
//!  new key K', CSR(K')
//!  proof = sign(old key K, "weft-rejoin-v1\0" ‖ CSR)
//!  Join{token, CSR, rejoin_cert = expired cert(K), proof} ─▶ verify():
//!                  one certificate, chains to the cluster CA (checked at
//!                  a moment inside its own validity: only expiry ignored),
//!                  names a weft node, proof verifies under its key K
//!                                                     then the manager's store
//!                                                     checks (node exists, not
//!                                                     removed, token's role)
//! ```
//!
//! Why sign the new CSR: the proof is bound to this join's fresh key, so a
//! replayed proof only ever yields a certificate for K', which is useless
//! without K' (it never leaves the node). The node's key is rotated on
//! rejoin, as on every renewal.

use std::time::Duration;

use rustls::SignatureScheme;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::UnixTime;

use super::{TlsError, provider, server::cluster_roots};
use crate::identity::{IdentityError, NodeKey, PeerIdentity, certs_from_pem};

/// Domain separation: a rejoin proof is never a valid signature for
/// anything else the node's key signs (TLS handshakes, CSRs).
pub const PROOF_CONTEXT: &[u8] = b"weft-rejoin-v1\0";
/// Largest expired certificate a rejoin may carry (a weft node certificate
/// is under 1 KiB).
pub const MAX_REJOIN_CERT_BYTES: usize = 16 * 1024;
/// Largest proof (an ECDSA P-256 signature is at most 72 bytes).
pub const MAX_PROOF_BYTES: usize = 512;

/// Why a rejoin proof was refused. Messages say what was wrong and what to
/// do.
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    /// An input is over its size bound.
    #[error("the rejoin {what} is {len} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// The certificate is not one PEM certificate.
    #[error("the rejoin certificate is not one PEM certificate: {0}")]
    NotACertificate(String),
    /// The certificate was not issued by this cluster's CA.
    #[error(
        "the rejoin certificate was not issued by this cluster's CA ({0}); a node of another \
         cluster joins this one with `weft leave --force` and a fresh `weft join`"
    )]
    NotThisCluster(rustls::Error),
    /// The certificate chains but names no weft node.
    #[error("the rejoin certificate is not a weft node certificate: {0}")]
    NotANode(IdentityError),
    /// The proof does not verify under the certificate's key.
    #[error(
        "the rejoin proof does not verify under the key of the certificate of node {0}: \
         only the holder of that node's private key can rejoin as it"
    )]
    BadProof(String),
    /// The verifier could not be built from the cluster CA.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The bytes a rejoin proof signs for `csr_pem`.
pub fn proof_message(csr_pem: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_CONTEXT.len() + csr_pem.len());
    m.extend_from_slice(PROOF_CONTEXT);
    m.extend_from_slice(csr_pem.as_bytes());
    m
}

/// Signs the proof for `csr_pem` with the node's old key.
pub fn sign_proof(old_key: &NodeKey, csr_pem: &str) -> Result<Vec<u8>, IdentityError> {
    use rcgen::SigningKey;
    old_key
        .key_pair()
        .sign(&proof_message(csr_pem))
        .map_err(|source| IdentityError::Rcgen {
            what: "cannot sign the rejoin proof",
            source,
        })
}

/// Checks a rejoin: `cert_pem` is one node certificate issued by the CA of
/// `ca_pem` (at any time: its expiry is the one thing not checked), and
/// `proof` is its key's signature over [`proof_message`] of `csr_pem`.
/// Returns the identity the certificate names; whether that node may
/// rejoin is the store's to say.
pub fn verify_proof(
    ca_pem: &str,
    cert_pem: &str,
    csr_pem: &str,
    proof: &[u8],
) -> Result<PeerIdentity, RejoinError> {
    for (what, len, limit) in [
        ("certificate", cert_pem.len(), MAX_REJOIN_CERT_BYTES),
        ("proof", proof.len(), MAX_PROOF_BYTES),
    ] {
        if len > limit {
            return Err(RejoinError::TooLarge { what, len, limit });
        }
    }
    let certs = certs_from_pem(cert_pem, "the rejoin certificate")
        .map_err(|e| RejoinError::NotACertificate(e.to_string()))?;
    let [leaf] = &certs[..] else {
        return Err(RejoinError::NotACertificate(format!(
            "{} certificates given, one expected",
            certs.len()
        )));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| RejoinError::NotACertificate(e.to_string()))?;
    // The chain, signature, CA constraints and usages as the TLS layer
    // checks them, at the middle of the certificate's own validity.
    let from = parsed.validity().not_before.timestamp();
    let to = parsed.validity().not_after.timestamp();
    let mid = u64::try_from(from / 2 + to / 2).unwrap_or(0);
    let verifier = WebPkiClientVerifier::builder_with_provider(cluster_roots(ca_pem)?, provider())
        .build()
        .map_err(TlsError::from)?;
    verifier
        .verify_client_cert(
            leaf,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(mid)),
        )
        .map_err(RejoinError::NotThisCluster)?;
    let id = PeerIdentity::from_der(leaf).map_err(RejoinError::NotANode)?;
    let spki = parsed.public_key().subject_public_key.data.as_ref();
    let message = proof_message(csr_pem);
    let verified = provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(scheme, _)| *scheme == SignatureScheme::ECDSA_NISTP256_SHA256)
        .flat_map(|(_, algs)| algs.iter())
        .any(|alg| alg.verify_signature(spki, &message, proof).is_ok());
    if !verified {
        return Err(RejoinError::BadProof(id.node_id));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::{CLUSTER, TestCa};

    #[test]
    fn a_proof_by_the_certificates_key_verifies() {
        let ca = TestCa::new(CLUSTER);
        let (cert, key) = ca.worker("w1", CLUSTER);
        let key = NodeKey::from_pem(&key).unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        let proof = sign_proof(&key, &csr).unwrap();
        let id = verify_proof(&ca.pem, &cert, &csr, &proof).unwrap();
        assert_eq!(id.node_id, "w1");

        // Another CSR (a replay for another key): refused.
        let other = NodeKey::generate().unwrap().csr_pem().unwrap();
        let e = verify_proof(&ca.pem, &cert, &other, &proof).unwrap_err();
        assert!(
            matches!(e, RejoinError::BadProof(ref n) if n == "w1"),
            "{e}"
        );
        // Signed by another key: refused.
        let thief = NodeKey::generate().unwrap();
        let e = verify_proof(&ca.pem, &cert, &csr, &sign_proof(&thief, &csr).unwrap());
        assert!(matches!(e, Err(RejoinError::BadProof(_))), "{e:?}");
        // A bare signature over the CSR, without the context: refused.
        use rcgen::SigningKey;
        let bare = key.key_pair().sign(csr.as_bytes()).unwrap();
        assert!(matches!(
            verify_proof(&ca.pem, &cert, &csr, &bare),
            Err(RejoinError::BadProof(_))
        ));
    }

    #[test]
    fn only_expiry_is_ignored() {
        let ca = TestCa::new(CLUSTER);
        let (cert, key) = ca.issue_expired("w1", crate::identity::Role::Worker, CLUSTER);
        let key = NodeKey::from_pem(&key).unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        let proof = sign_proof(&key, &csr).unwrap();
        let id = verify_proof(&ca.pem, &cert, &csr, &proof).expect("expired is fine");
        assert!(id.not_after < time::OffsetDateTime::now_utc());

        // Another CA's certificate, even for the same node and cluster ID.
        let forger = TestCa::new(CLUSTER);
        let (forged, fkey) = forger.worker("w1", CLUSTER);
        let fproof = sign_proof(&NodeKey::from_pem(&fkey).unwrap(), &csr).unwrap();
        let e = verify_proof(&ca.pem, &forged, &csr, &fproof).unwrap_err();
        assert!(matches!(e, RejoinError::NotThisCluster(_)), "{e}");
        // The CA certificate itself is no node certificate.
        assert!(verify_proof(&ca.pem, &ca.pem, &csr, &proof).is_err());
    }

    #[test]
    fn garbage_and_oversized_inputs() {
        let ca = TestCa::new(CLUSTER);
        let (cert, _) = ca.worker("w1", CLUSTER);
        for bad in [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let e = verify_proof(&ca.pem, bad, "csr", b"x").unwrap_err();
            assert!(matches!(e, RejoinError::NotACertificate(_)), "{bad:?}: {e}");
        }
        let two = format!("{cert}{cert}");
        assert!(matches!(
            verify_proof(&ca.pem, &two, "csr", b"x"),
            Err(RejoinError::NotACertificate(_))
        ));
        let big = "x".repeat(MAX_REJOIN_CERT_BYTES + 1);
        assert!(matches!(
            verify_proof(&ca.pem, &big, "csr", b"x"),
            Err(RejoinError::TooLarge {
                what: "certificate",
                ..
            })
        ));
        assert!(matches!(
            verify_proof(&ca.pem, &cert, "csr", &[0; MAX_PROOF_BYTES + 1]),
            Err(RejoinError::TooLarge { what: "proof", .. })
        ));
    }
}
