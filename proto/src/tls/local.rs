//! The local API transport: gRPC over a unix socket readable by root only.
//!
//! Binding is careful about what is already at the path: a live daemon is
//! never displaced ([`TlsError::SocketInUse`]), a stale socket from a crashed
//! daemon is removed, anything that is not a socket is left alone.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Uri};

use super::TlsError;

/// Binds the local API socket at `path`: creates the parent directory (mode
/// 0700) if missing, removes a stale socket, refuses if a daemon answers
/// there, and restricts the socket to its owner (mode 0600).
///
/// Must be called inside a tokio runtime.
pub fn bind_unix(path: &Path) -> Result<UnixListener, TlsError> {
    let io_err = |what, source| TlsError::UnixIo {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io_err("cannot create the directory for", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(TlsError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(TlsError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            // Nobody listens: a leftover from a daemon that did not clean up.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| io_err("cannot remove stale socket", e))?;
            }
            Err(e) => return Err(io_err("cannot probe existing socket", e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err("cannot listen on", e))?;
    // The parent directory is 0700 when we created it; this also covers an
    // existing, more open directory.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("cannot restrict permissions of", e))?;
    Ok(listener)
}

/// The incoming-connection stream of a bound local socket, for
/// `serve_with_incoming[_shutdown]`. Requests served from it satisfy
/// [`super::is_local`].
pub fn unix_incoming(listener: UnixListener) -> UnixListenerStream {
    UnixListenerStream::new(listener)
}

/// Serves `router` on the local socket at `path` until `shutdown` resolves,
/// then removes the socket (if it is still the one this call created).
/// `bound` runs once the socket is listening: a client connecting from then
/// on is served.
pub async fn serve_unix<F>(
    path: &Path,
    router: Router,
    shutdown: F,
    bound: impl FnOnce(),
) -> Result<(), TlsError>
where
    F: Future<Output = ()>,
{
    let listener = bind_unix(path)?;
    bound();
    let ours = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let result = router
        .serve_with_incoming_shutdown(unix_incoming(listener), shutdown)
        .await
        .map_err(|source| TlsError::UnixTransport {
            path: path.to_owned(),
            source,
        });
    let still_ours = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())) == ours;
    if ours.is_some()
        && still_ours
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the local API socket");
    }
    result
}

/// Connects to the daemon's local socket at `path`.
///
/// [`TlsError::NoDaemon`] when nothing listens there (no socket, or a stale
/// one), [`TlsError::SocketPermission`] when this user may not open it.
pub async fn connect_unix(path: &Path) -> Result<Channel, TlsError> {
    // Connect once up front so the common failures get their own error;
    // the connector hands this stream to the channel's first connection.
    let first = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => TlsError::NoDaemon {
                path: path.to_owned(),
            },
            io::ErrorKind::PermissionDenied => TlsError::SocketPermission {
                path: path.to_owned(),
            },
            _ => TlsError::UnixIo {
                what: "cannot connect to",
                path: path.to_owned(),
                source: e,
            },
        })?;
    let first = Arc::new(Mutex::new(Some(first)));
    let socket: PathBuf = path.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let first = first.clone();
        let socket = socket.clone();
        async move {
            let ready = first.lock().unwrap_or_else(|p| p.into_inner()).take();
            let stream = match ready {
                Some(s) => s,
                None => UnixStream::connect(&socket).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by the API but unused: the connector picks the socket.
    Endpoint::from_static("http://weft.local")
        .connect_with_connector(connector)
        .await
        .map_err(|source| TlsError::UnixTransport {
            path: path.to_owned(),
            source,
        })
}
