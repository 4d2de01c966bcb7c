//! The gRPC metadata containerd reads on every call.
//!
//! containerd scopes every object (images, content, snapshots, containers,
//! tasks, leases) by the namespace named in the `containerd-namespace`
//! header; without it most calls fail with "namespace is required". An
//! optional `containerd-lease` header puts whatever the call creates under a
//! lease, so the garbage collector keeps it until the lease is deleted (an
//! import writes blobs, then the image record that references them; without
//! a lease the blobs can be collected in between).
//!
//! Both values are containerd identifiers, checked here with containerd's own
//! rule before any call is made: a bad namespace is a configuration error that
//! should be reported once, at startup, not on every call.

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::Error;

/// The header naming the containerd namespace of a call.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The header naming the lease that protects what a call creates.
pub const LEASE_HEADER: &str = "containerd-lease";
/// containerd's limit on an identifier's length (`pkg/identifiers`).
const MAX_IDENTIFIER_LEN: usize = 76;

/// Checks `value` against containerd's identifier rule (`pkg/identifiers`):
/// 1 to 76 characters, runs of ASCII letters and digits joined by single
/// `.`, `_` or `-`. Such a name is also safe as a path component, which is
/// why containerd insists on it. `what` names the value in the error.
pub fn validate_identifier(what: &'static str, value: &str) -> Result<(), Error> {
    let runs_ok = value
        .split(['.', '_', '-'])
        .all(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()));
    if value.is_empty() || value.len() > MAX_IDENTIFIER_LEN || !runs_ok {
        return Err(Error::InvalidIdentifier {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// The metadata every call of one client carries: its namespace, and a lease
/// when one is set. Used as a tonic [`Interceptor`], so each generated client
/// built on [`crate::Client::channel`] sends it without the caller thinking
/// about it.
#[derive(Clone, Debug)]
pub struct CallMetadata {
    namespace: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
}

impl CallMetadata {
    /// Metadata for calls in `namespace`, without a lease.
    pub fn new(namespace: &str) -> Result<Self, Error> {
        Ok(Self {
            namespace: identifier_value("namespace", namespace)?,
            lease: None,
        })
    }

    /// The same, with every call made under lease `lease`.
    pub fn with_lease(self, lease: &str) -> Result<Self, Error> {
        Ok(Self {
            lease: Some(identifier_value("lease", lease)?),
            ..self
        })
    }

    /// The same, without a lease.
    pub fn without_lease(self) -> Self {
        Self {
            lease: None,
            ..self
        }
    }

    /// The namespace of every call.
    pub fn namespace(&self) -> &str {
        ascii(&self.namespace)
    }

    /// The lease of every call, if set.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_ref().map(ascii)
    }

    /// Writes the headers into `metadata`. The namespace replaces any the
    /// caller set: one client talks to one namespace, and a second value
    /// would make containerd's choice the deciding one. A lease set here
    /// replaces the caller's too; without one, a lease the caller put on a
    /// single request (for one import, say) is left alone.
    pub fn apply(&self, metadata: &mut MetadataMap) {
        metadata.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            metadata.insert(LEASE_HEADER, lease.clone());
        }
    }
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.apply(request.metadata_mut());
        Ok(request)
    }
}

/// Validates `value` and makes it a header value.
fn identifier_value(what: &'static str, value: &str) -> Result<MetadataValue<Ascii>, Error> {
    validate_identifier(what, value)?;
    // A valid identifier is plain ASCII, which every header value may hold.
    MetadataValue::try_from(value).map_err(|_| Error::InvalidIdentifier {
        what,
        value: value.to_owned(),
    })
}

/// The text of a value built by [`identifier_value`] (always ASCII).
fn ascii(value: &MetadataValue<Ascii>) -> &str {
    value.to_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(metadata: &'a MetadataMap, key: &str) -> Vec<&'a str> {
        metadata
            .get_all(key)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn identifiers_follow_containerds_rule() {
        for ok in [
            "weft",
            "weft-test",
            "a.b_c-d",
            "A1",
            "k8s.io",
            &"x".repeat(76),
        ] {
            validate_identifier("namespace", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            "",
            "-weft",
            "weft-",
            "we--ft",
            "we.-ft",
            "we ft",
            "we/ft",
            "../etc",
            "wéft",
            "weft\n",
            &"x".repeat(77),
        ] {
            let err = validate_identifier("namespace", bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidIdentifier { what: "namespace", value } if value == bad),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn the_error_names_the_value_and_the_rule() {
        let err = CallMetadata::new("we/ft").unwrap_err().to_string();
        assert!(err.contains("namespace \"we/ft\""), "{err}");
        assert!(err.contains("letters and digits"), "{err}");
        let err = CallMetadata::new("weft")
            .unwrap()
            .with_lease("")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lease \"\""), "{err}");
    }

    #[test]
    fn every_request_gets_the_namespace() {
        let mut md = CallMetadata::new("weft").unwrap();
        let request = md.call(Request::new(())).unwrap();
        assert_eq!(header(request.metadata(), NAMESPACE_HEADER), ["weft"]);
        assert!(request.metadata().get(LEASE_HEADER).is_none());
        assert_eq!(md.namespace(), "weft");
        assert_eq!(md.lease(), None);
    }

    #[test]
    fn the_clients_namespace_replaces_the_callers() {
        let md = CallMetadata::new("weft").unwrap();
        let mut request = Request::new(());
        let map = request.metadata_mut();
        map.insert(NAMESPACE_HEADER, "default".parse().unwrap());
        map.append(NAMESPACE_HEADER, "other".parse().unwrap());
        md.apply(map);
        assert_eq!(header(map, NAMESPACE_HEADER), ["weft"]);
    }

    #[test]
    fn a_lease_is_sent_when_set_and_replaces_the_callers() {
        let md = CallMetadata::new("weft")
            .unwrap()
            .with_lease("import-1")
            .unwrap();
        assert_eq!(md.lease(), Some("import-1"));
        let mut map = MetadataMap::new();
        map.insert(LEASE_HEADER, "stale".parse().unwrap());
        md.apply(&mut map);
        assert_eq!(header(&map, LEASE_HEADER), ["import-1"]);
        assert_eq!(header(&map, NAMESPACE_HEADER), ["weft"]);
    }

    #[test]
    fn without_a_lease_the_callers_own_lease_is_kept() {
        let md = CallMetadata::new("weft")
            .unwrap()
            .with_lease("import-1")
            .unwrap()
            .without_lease();
        assert_eq!(md.lease(), None);
        let mut map = MetadataMap::new();
        map.insert(LEASE_HEADER, "per-call".parse().unwrap());
        md.apply(&mut map);
        assert_eq!(header(&map, LEASE_HEADER), ["per-call"]);
    }

    #[test]
    fn other_headers_are_left_alone() {
        let md = CallMetadata::new("weft").unwrap();
        let mut map = MetadataMap::new();
        map.insert("x-trace", "abc".parse().unwrap());
        md.apply(&mut map);
        assert_eq!(header(&map, "x-trace"), ["abc"]);
        assert_eq!(map.len(), 2);
    }
}
