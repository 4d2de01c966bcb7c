//! The connection to one containerd daemon, in one namespace.
//!
//! One tonic [`Channel`] over the daemon's unix socket, shared by every
//! generated client (tonic multiplexes calls over HTTP/2 and reconnects
//! through the same connector when the daemon restarts). Every call goes
//! through [`CallMetadata`], so none can forget the namespace header.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, ListNamespacesRequest, Namespace, namespaces_client::NamespacesClient,
};
use crate::containerd::services::version::v1::version_client::VersionClient;
use crate::{CallMetadata, DaemonVersion, Error};

/// The containerd namespace weft works in unless told otherwise: weft never
/// touches objects of other containerd users (Docker's `moby`, Kubernetes'
/// `k8s.io`, `ctr`'s `default`).
pub const DEFAULT_NAMESPACE: &str = "weft";

/// How long the first connection may take. The socket is local: anything
/// slower is a daemon that is stuck, and saying so beats hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The transport every generated client is built on: the shared channel with
/// the namespace (and lease) headers added to each call. For example
/// `TasksClient::new(client.channel())`.
pub type ApiChannel = InterceptedService<Channel, CallMetadata>;

/// A connection to containerd at one socket, scoped to one namespace.
/// Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    channel: Channel,
    metadata: CallMetadata,
}

impl Client {
    /// Connects to the containerd socket at `socket`, in namespace
    /// [`DEFAULT_NAMESPACE`]. Fails with [`Error::NoDaemon`] when nothing
    /// listens there and [`Error::SocketPermission`] when this user may not
    /// open it. Makes no call: use [`Client::version`] to check the daemon.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, Error> {
        let socket = socket.as_ref().to_owned();
        let path = socket.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        });
        // The URI is required by the API but unused: the connector picks the
        // socket. containerd (grpc-go) ignores the authority.
        let channel = Endpoint::from_static("http://containerd.local")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|source| connect_error(&socket, source))?;
        Ok(Self {
            socket,
            channel,
            metadata: CallMetadata::new(DEFAULT_NAMESPACE)?,
        })
    }

    /// The same connection, scoped to `namespace` (checked with containerd's
    /// identifier rule; [`Error::InvalidIdentifier`] otherwise). Keeps the lease.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self, Error> {
        let scoped = CallMetadata::new(namespace)?;
        let metadata = match self.metadata.lease() {
            Some(lease) => scoped.with_lease(lease)?,
            None => scoped,
        };
        Ok(Self {
            metadata,
            ..self.clone()
        })
    }

    /// The same connection, with every call made under lease `lease`.
    pub fn with_lease(&self, lease: &str) -> Result<Self, Error> {
        Ok(Self {
            metadata: self.metadata.clone().with_lease(lease)?,
            ..self.clone()
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The namespace of every call.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace()
    }

    /// The transport for a generated client, with this client's metadata on
    /// every call.
    pub fn channel(&self) -> ApiChannel {
        InterceptedService::new(self.channel.clone(), self.metadata.clone())
    }

    /// Maps a failed call's status to an [`Error`] naming this client's socket.
    pub fn error(&self, call: &'static str, status: tonic::Status) -> Error {
        Error::from_status(&self.socket, call, status)
    }

    /// The daemon's version (`Version.Version`). Does not judge it: see
    /// [`DaemonVersion::ensure_supported`].
    pub async fn version(&self) -> Result<DaemonVersion, Error> {
        const CALL: &str = "Version.Version";
        let answer = VersionClient::new(self.channel())
            .version(())
            .await
            .map_err(|s| self.error(CALL, s))?
            .into_inner();
        DaemonVersion::parse(&answer.version, &answer.revision)
    }

    /// Creates this client's namespace if it does not exist
    /// (`Namespaces.Create`; "already exists" is success). Labels of an
    /// existing namespace are left as they are.
    pub async fn ensure_namespace(&self) -> Result<(), Error> {
        const CALL: &str = "Namespaces.Create";
        let request = CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: self.namespace().to_owned(),
                labels: Default::default(),
            }),
        };
        match NamespacesClient::new(self.channel())
            .create(request)
            .await
            .map_err(|s| self.error(CALL, s))
        {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names of all namespaces on the daemon (`Namespaces.List`), sorted.
    pub async fn namespaces(&self) -> Result<Vec<String>, Error> {
        const CALL: &str = "Namespaces.List";
        let answer = NamespacesClient::new(self.channel())
            .list(ListNamespacesRequest::default())
            .await
            .map_err(|s| self.error(CALL, s))?
            .into_inner();
        let mut names: Vec<String> = answer.namespaces.into_iter().map(|n| n.name).collect();
        names.sort();
        Ok(names)
    }
}

/// Gives the common connection failures their own variants. tonic wraps the
/// connector's `io::Error` a few sources deep.
fn connect_error(path: &Path, source: tonic::transport::Error) -> Error {
    let path = path.to_owned();
    match io_error_kind(&source) {
        Some(io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            Error::NoDaemon { path }
        }
        Some(io::ErrorKind::PermissionDenied) => Error::SocketPermission { path },
        _ => Error::Connect { path, source },
    }
}

/// The kind of the first `io::Error` in `error`'s source chain.
fn io_error_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_socket_is_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let err = Client::connect(&path).await.unwrap_err();
        assert!(
            matches!(&err, Error::NoDaemon { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        // Bound, then closed: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = Client::connect(&path).await.unwrap_err();
        assert!(matches!(err, Error::NoDaemon { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn scoping_keeps_the_connection_and_checks_the_name() {
        // A listener that accepts and never answers is enough: no call is made.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let client = Client::connect(&path).await.unwrap();
        assert_eq!(client.namespace(), DEFAULT_NAMESPACE);
        assert_eq!(client.socket(), path);

        let leased = client.with_lease("l1").unwrap();
        let scoped = leased.with_namespace("weft-test").unwrap();
        assert_eq!(scoped.namespace(), "weft-test");
        assert_eq!(scoped.metadata.lease(), Some("l1"), "the lease survives");
        assert_eq!(client.metadata.lease(), None, "the original is unchanged");

        let err = client.with_namespace("no/slashes").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidIdentifier {
                    what: "namespace",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
