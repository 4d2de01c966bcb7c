//! Errors of talking to containerd. Messages name the socket, the call or the
//! value at fault and, where there is one, what the user can do.

use std::path::PathBuf;

use tonic::{Code, Status};

/// What can go wrong between weft and containerd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket: no file there, or a stale one.
    #[error(
        "containerd is not running: cannot connect to {} (`make deps` installs it; \
         start it with `containerd &` or `systemctl start containerd`)",
        path.display()
    )]
    NoDaemon {
        /// The socket tried.
        path: PathBuf,
    },
    /// The socket exists but this user may not open it.
    #[error("permission denied on the containerd socket {}: run as root", path.display())]
    SocketPermission {
        /// The socket tried.
        path: PathBuf,
    },
    /// The connection failed for another reason (the HTTP/2 handshake, a
    /// timeout, an unusual socket error).
    #[error("cannot connect to containerd at {}: {source}", path.display())]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// containerd went away after the connection was made, or did not answer.
    #[error("containerd at {} is unavailable ({call}): {message}", path.display())]
    Unavailable {
        /// The socket of the client.
        path: PathBuf,
        /// Which RPC, as `Service.Method`.
        call: &'static str,
        /// containerd's or tonic's message.
        message: String,
    },
    /// A namespace or lease name that containerd would refuse.
    #[error(
        "invalid containerd {what} {value:?}: use 1 to 76 ASCII letters and digits, \
         optionally joined by single '.', '_' or '-'"
    )]
    InvalidIdentifier {
        /// What the value names ("namespace", "lease").
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The object a call named does not exist.
    #[error("containerd {call}: not found: {message}")]
    NotFound {
        /// Which RPC, as `Service.Method`.
        call: &'static str,
        /// containerd's message (it names the object).
        message: String,
    },
    /// The object a call would create exists already.
    #[error("containerd {call}: already exists: {message}")]
    AlreadyExists {
        /// Which RPC, as `Service.Method`.
        call: &'static str,
        /// containerd's message (it names the object).
        message: String,
    },
    /// Any other refusal by containerd.
    #[error("containerd {call} failed: {status}")]
    Rpc {
        /// Which RPC, as `Service.Method`.
        call: &'static str,
        /// The status as received (boxed: it is large, and errors are moved
        /// around more often than they are read).
        #[source]
        status: Box<Status>,
    },
    /// The daemon's version text has no `major.minor` at its start.
    #[error("containerd reports version {version:?}, which weft cannot parse")]
    UnparsableVersion {
        /// The text received.
        version: String,
    },
    /// The daemon is older than weft supports.
    #[error("containerd {version} is too old: weft needs {minimum} or newer")]
    TooOld {
        /// The daemon's version text.
        version: String,
        /// The oldest supported, as `major.minor`.
        minimum: String,
    },
}

impl Error {
    /// Maps the status of RPC `call` on the client of socket `path` to its
    /// variant: the codes a caller branches on (not found, already exists,
    /// unavailable) get their own, everything else is [`Error::Rpc`].
    ///
    /// A status the client's own transport made is [`Error::Unavailable`]
    /// whatever its code: when containerd dies under an open connection,
    /// tonic reports the next call as `Unknown: transport error` (a broken
    /// pipe), not as `Unavailable` (seen with containerd 1.6 and tonic 0.14).
    pub fn from_status(path: impl Into<PathBuf>, call: &'static str, status: Status) -> Self {
        let message = status.message().to_owned();
        if status.code() == Code::Unavailable || made_by_transport(&status) {
            let detail = std::error::Error::source(&status)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return Self::Unavailable {
                path: path.into(),
                call,
                message: format!("{message}{detail}"),
            };
        }
        match status.code() {
            Code::NotFound => Self::NotFound { call, message },
            Code::AlreadyExists => Self::AlreadyExists { call, message },
            _ => Self::Rpc {
                call,
                status: Box::new(status),
            },
        }
    }
}

/// Whether `status` comes from the client side of the connection (tonic's
/// transport or the socket) rather than from containerd: a status received
/// from the daemon has no source error, one made locally carries it.
fn made_by_transport(status: &Status) -> bool {
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_variants_callers_branch_on() {
        let map = |status| Error::from_status("/s.sock", "Tasks.Get", status);
        assert!(matches!(
            map(Status::not_found("container \"a\": not found")),
            Error::NotFound { call: "Tasks.Get", message } if message.contains("\"a\"")
        ));
        assert!(matches!(
            map(Status::already_exists("namespace weft: already exists")),
            Error::AlreadyExists {
                call: "Tasks.Get",
                ..
            }
        ));
        let unavailable = map(Status::unavailable("transport error"));
        assert!(
            matches!(&unavailable, Error::Unavailable { path, .. } if path.to_str() == Some("/s.sock"))
        );
        assert!(unavailable.to_string().contains("/s.sock"), "{unavailable}");
        let mut broken = Status::unknown("transport error");
        broken.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        let broken = map(broken);
        assert!(
            matches!(&broken, Error::Unavailable { message, .. } if message.contains("broken pipe")),
            "{broken:?}"
        );
        let other = map(Status::invalid_argument("bad spec"));
        assert!(
            matches!(&other, Error::Rpc { call: "Tasks.Get", status } if status.code() == Code::InvalidArgument)
        );
        assert!(other.to_string().contains("bad spec"), "{other}");
    }

    #[test]
    fn a_missing_daemon_says_what_to_do() {
        let err = Error::NoDaemon {
            path: "/run/containerd/containerd.sock".into(),
        }
        .to_string();
        assert!(err.starts_with("containerd is not running"), "{err}");
        assert!(err.contains("/run/containerd/containerd.sock"), "{err}");
        assert!(err.contains("make deps"), "{err}");
    }
}
