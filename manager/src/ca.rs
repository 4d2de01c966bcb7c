//! Cluster CA: creating it, signing node CSRs under the manager's rules.
//!
//! The CA key lives on the managers only. A node sends a CSR; the manager
//! takes **only its public key** from it and decides everything else: the
//! subject (CN = node ID, OU = role, O = cluster ID), the SANs
//! (`<node id>.nodes.weft`, plus `manager.weft` for managers), key usage,
//! validity and a random serial. A CSR that asks for a CA bit or extra names
//! gets neither.

use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use weft_proto::identity::{
    self, IdentityError, MANAGER_SAN, NODE_SAN_SUFFIX, NodeKey, Role, validate_name,
};

/// Validity of a freshly generated cluster CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Default validity of a node certificate (as Docker swarm): 90 days.
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Backdating of `not_before`, to tolerate clock skew between nodes.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key generation, parsing or signing failed.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The CSR could not be parsed, its signature is wrong, or it asks for
    /// an extension weft does not understand.
    #[error("invalid certificate signing request: {source}; the node should generate a new one")]
    BadCsr {
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A node ID, cluster ID or certificate was unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The CA key does not belong to the CA certificate.
    #[error(
        "the CA key does not match the CA certificate; restore both files from the same backup"
    )]
    KeyMismatch,
    /// The requested validity cannot be represented.
    #[error("certificate validity of {0:?} is out of range")]
    BadValidity(Duration),
}

/// Result alias for this module.
pub type Result<T, E = CaError> = std::result::Result<T, E>;

/// A certificate issued to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// When it expires.
    pub not_after: OffsetDateTime,
}

/// The cluster certificate authority (certificate and private key).
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    fingerprint: [u8; 32],
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &hex_fp(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

fn hex_fp(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // Positive and without a leading zero byte, so DER keeps all 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

impl ClusterCa {
    /// Creates a new self-signed CA for `cluster_id` (CN `weft-ca-<cluster>`,
    /// valid for [`CA_VALIDITY`], may sign end-entity certificates only).
    pub fn generate(cluster_id: &str) -> Result<Self> {
        validate_name("cluster ID", cluster_id)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("cannot generate the CA key"))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("weft-ca-{cluster_id}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        // Path length 0: the CA signs node certificates, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after(now, CA_VALIDITY)?;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("cannot self-sign the CA certificate"))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            fingerprint: identity::fingerprint_der(cert.der()),
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key (as written by
    /// [`cert_pem`](Self::cert_pem) / [`key_pem`](Self::key_pem)).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("cannot read the CA key"))?;
        let der = identity::certs_from_pem(cert_pem, "the CA certificate")?
            .into_iter()
            .next()
            .ok_or(IdentityError::NoCertificate {
                what: "the CA certificate",
            })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| IdentityError::X509(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(rcgen_err("cannot use the CA certificate for signing"))?;
        Ok(Self {
            fingerprint: identity::fingerprint_der(&der),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM (public; sent to every node).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM (secret; managers only).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate DER (what join tokens carry).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Signs `csr_pem` for node `node_id` with `role` in `cluster_id`, valid
    /// for `validity` from now. Only the CSR's public key is used (its
    /// signature is checked); subject, SANs, CA bit, key usages and validity
    /// are the manager's.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<IssuedCert> {
        validate_name("node ID", node_id)?;
        validate_name("cluster ID", cluster_id)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|source| CaError::BadCsr { source })?;

        // Fresh parameters: nothing the CSR asked for carries over.
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        let mut sans = vec![format!("{node_id}{NODE_SAN_SUFFIX}")];
        if role == Role::Manager {
            sans.push(MANAGER_SAN.to_owned());
        }
        params.subject_alt_names = sans
            .into_iter()
            .map(|s| s.try_into().map(SanType::DnsName))
            .collect::<Result<_, _>>()
            .map_err(rcgen_err("invalid subject alternative name"))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after(now, validity)?;
        params.serial_number = Some(random_serial());

        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rcgen_err("cannot sign the node certificate"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            // Re-read from the certificate: DER time has second precision.
            not_after: identity::cert_not_after(&cert.pem())?,
        })
    }

    /// For `init` and local renewal: generates a key for this node, makes a
    /// CSR and signs it. The key never leaves the node.
    pub fn issue_for_self(
        &self,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<(NodeKey, IssuedCert)> {
        let key = NodeKey::generate()?;
        let issued = self.sign_csr(&key.csr_pem()?, node_id, role, cluster_id, validity)?;
        Ok((key, issued))
    }
}

/// `now + validity`, refused instead of overflowing: `OffsetDateTime +
/// Duration` panics past the year 9999, which a lifetime of a few hundred
/// billion seconds reaches.
fn not_after(now: OffsetDateTime, validity: Duration) -> Result<OffsetDateTime> {
    time::Duration::try_from(validity)
        .ok()
        .and_then(|d| now.checked_add(d))
        .ok_or(CaError::BadValidity(validity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::X509Certificate;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn der(pem: &str) -> Vec<u8> {
        identity::certs_from_pem(pem, "test").unwrap()[0].to_vec()
    }

    fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let Some(san) = cert.subject_alternative_name().unwrap() else {
            return vec![];
        };
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                other => format!("non-dns:{other:?}"),
            })
            .collect()
    }

    fn is_ca(cert: &X509Certificate<'_>) -> bool {
        cert.basic_constraints()
            .unwrap()
            .is_some_and(|bc| bc.value.ca)
    }

    /// A CSR asking for everything a node must not get.
    fn greedy_csr(key: &NodeKey) -> String {
        let mut p =
            CertificateParams::new(vec!["evil.example".to_owned(), "manager.weft".to_owned()])
                .unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "root");
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, "manager");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        p.serialize_request(key.key_pair()).unwrap().pem().unwrap()
    }

    #[test]
    fn generated_ca_is_a_ca_and_reloads() {
        let ca = ClusterCa::generate("c0ffee").unwrap();
        let d = der(ca.cert_pem());
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();
        assert!(is_ca(&cert));
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "weft-ca-c0ffee"
        );
        let years = (cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc())
            .whole_days()
            / 365;
        assert!(years >= 19, "{years}");
        assert_eq!(
            ca.fingerprint(),
            identity::ca_fingerprint(ca.cert_pem()).unwrap()
        );

        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        // A reloaded CA signs certificates that chain to the same CA.
        let (_, issued) = again
            .issue_for_self("n1", Role::Worker, "c0ffee", DAY)
            .unwrap();
        let leaf = der(&issued.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        leaf.verify_signature(Some(cert.public_key())).unwrap();

        let other = ClusterCa::generate("other").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(CaError::KeyMismatch)
        ));
    }

    #[test]
    fn csr_gets_only_what_the_manager_decides() {
        let ca = ClusterCa::generate("c1").unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .sign_csr(
                &greedy_csr(&key),
                "0123456789abcdef",
                Role::Worker,
                "c1",
                90 * DAY,
            )
            .unwrap();
        let d = der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&d).unwrap();

        assert!(!is_ca(&cert), "a node certificate must never be a CA");
        assert_eq!(dns_sans(&cert), vec!["0123456789abcdef.nodes.weft"]);
        let id = identity::PeerIdentity::from_der(&d).unwrap();
        assert_eq!(id.node_id, "0123456789abcdef");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "c1");
        assert_eq!(id.not_after, issued.not_after);

        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.code_signing);

        // The public key is the node's.
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.key_pair().public_key_raw()
        );
        // Validity: backdated a little, about 90 days ahead.
        let now = OffsetDateTime::now_utc();
        let nb = cert.validity().not_before.to_datetime();
        assert!(nb < now && nb > now - time::Duration::minutes(10));
        let days = (issued.not_after - now).whole_days();
        assert!((89..=90).contains(&days), "{days}");
    }

    #[test]
    fn manager_cert_has_manager_san_worker_does_not() {
        let ca = ClusterCa::generate("c1").unwrap();
        let (_, m) = ca.issue_for_self("m1", Role::Manager, "c1", DAY).unwrap();
        let (_, w) = ca.issue_for_self("w1", Role::Worker, "c1", DAY).unwrap();
        let md = der(&m.cert_pem);
        let wd = der(&w.cert_pem);
        let (_, mc) = x509_parser::parse_x509_certificate(&md).unwrap();
        let (_, wc) = x509_parser::parse_x509_certificate(&wd).unwrap();
        assert_eq!(dns_sans(&mc), vec!["m1.nodes.weft", "manager.weft"]);
        assert_eq!(dns_sans(&wc), vec!["w1.nodes.weft"]);
        assert_eq!(
            identity::PeerIdentity::from_der(&md).unwrap().role,
            Role::Manager
        );
    }

    #[test]
    fn serials_are_random_even_for_the_same_key() {
        let ca = ClusterCa::generate("c1").unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem().unwrap();
        let a = ca.sign_csr(&csr, "n1", Role::Worker, "c1", DAY).unwrap();
        let b = ca.sign_csr(&csr, "n1", Role::Worker, "c1", DAY).unwrap();
        let (ad, bd) = (der(&a.cert_pem), der(&b.cert_pem));
        let (_, ac) = x509_parser::parse_x509_certificate(&ad).unwrap();
        let (_, bc) = x509_parser::parse_x509_certificate(&bd).unwrap();
        assert_ne!(ac.raw_serial(), bc.raw_serial());
    }

    #[test]
    fn lifetimes_past_the_year_9999_are_refused_without_a_panic() {
        let ca = ClusterCa::generate("c1").unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        // `now + validity` used to panic for these (join and renewal).
        for secs in [u64::MAX, i64::MAX as u64, 1 << 40, 8000 * 365 * 86_400] {
            let r = ca.sign_csr(&csr, "n1", Role::Worker, "c1", Duration::from_secs(secs));
            assert!(matches!(r, Err(CaError::BadValidity(_))), "{secs}: {r:?}");
        }
        // What the limits let through is issued as asked.
        let longest = crate::limits::cert_validity(u64::MAX);
        let issued = ca
            .sign_csr(&csr, "n1", Role::Worker, "c1", longest)
            .unwrap();
        let days = (issued.not_after - OffsetDateTime::now_utc()).whole_days();
        assert!((3649..=3650).contains(&days), "{days}");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ca = ClusterCa::generate("c1").unwrap();
        assert!(matches!(
            ca.sign_csr("garbage", "n1", Role::Worker, "c1", DAY),
            Err(CaError::BadCsr { .. })
        ));
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, "N1.evil", Role::Worker, "c1", DAY),
            Err(CaError::Identity(IdentityError::InvalidName { .. }))
        ));
        // A CSR whose signature does not match its key is refused.
        let mut tampered = csr.clone();
        let mid = tampered.len() / 2;
        let c = tampered.as_bytes()[mid];
        let swap = if c == b'A' { "B" } else { "A" };
        tampered.replace_range(mid..mid + 1, swap);
        assert!(
            ca.sign_csr(&tampered, "n1", Role::Worker, "c1", DAY)
                .is_err()
        );
        assert!(ClusterCa::generate("Bad Cluster").is_err());
    }
}
