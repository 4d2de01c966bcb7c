//! [`BoringtunDevice`]: the [`WgDevice`] on boringtun's stock device
//! (`DeviceHandle`: a TUN interface, UDP sockets and its own epoll threads).
//!
//! It is configured over the UAPI on one end of a socket pair handed to
//! boringtun as `uapi_fd` (crates.md §6): no socket file, no
//! SIGINT/SIGTERM handling taken from the daemon, and the device exits
//! when our end closes. It is created on a thread that joined the daemon's
//! namespace, so the TUN, the UDP sockets and the worker threads all live
//! there. It does not set addresses, MTU or link state: the data plane does
//! that over netlink.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime};

use boringtun::device::{DeviceConfig, DeviceHandle};

use super::keys::PrivateKey;
use super::{DeviceState, PeerConfig, Result, WgDevice, WgError, uapi};
use crate::linux::Netns;

/// How long a UAPI request may take before the device counts as hung.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);

/// A running boringtun device.
pub struct BoringtunDevice {
    name: String,
    handle: Option<DeviceHandle>,
    ctl: UnixStream,
    answers: BufReader<UnixStream>,
}

impl std::fmt::Debug for BoringtunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoringtunDevice")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BoringtunDevice {
    /// Creates the TUN interface `name` in `ns` and starts the device with
    /// `threads` worker threads. The interface starts down, without
    /// address, key, port or peers.
    pub fn create(name: &str, ns: &Netns, threads: usize) -> Result<BoringtunDevice> {
        let create_err = |reason: String| WgError::Create {
            name: name.to_owned(),
            reason,
        };
        // boringtun takes a numeric name for an open TUN fd and rejects
        // names of 16 bytes or more.
        if name.is_empty() || name.len() >= 16 || name.parse::<i64>().is_ok() {
            return Err(create_err(
                "name must be 1 to 15 bytes, not a number".into(),
            ));
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| create_err(e.to_string()))?;
        let config = DeviceConfig {
            n_threads: threads.max(1),
            use_connected_socket: true,
            use_multi_queue: true,
            // boringtun owns this end from now on (it closes it when done).
            uapi_fd: theirs.into_raw_fd(),
        };
        let owned_name = name.to_owned();
        let handle = ns
            .run_in(move || DeviceHandle::new(&owned_name, config))
            .map_err(|e| create_err(e.to_string()))?
            .map_err(|e| create_err(format!("{e:?}")))?;
        ours.set_read_timeout(Some(UAPI_TIMEOUT))
            .and_then(|()| ours.set_write_timeout(Some(UAPI_TIMEOUT)))
            .map_err(|e| create_err(e.to_string()))?;
        let answers = BufReader::new(ours.try_clone().map_err(|e| create_err(e.to_string()))?);
        Ok(BoringtunDevice {
            name: name.to_owned(),
            handle: Some(handle),
            ctl: ours,
            answers,
        })
    }

    /// Sends one request and returns the answer's lines before `errno=`;
    /// `what` names the request in errors (never key material).
    fn request(&mut self, op: &'static str, req: &str, what: &str) -> Result<Vec<String>> {
        let uapi_err = |source| WgError::Uapi {
            name: self.name.clone(),
            op,
            source,
        };
        self.ctl.write_all(req.as_bytes()).map_err(uapi_err)?;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.answers.read_line(&mut line).map_err(uapi_err)?;
            if n == 0 {
                return Err(uapi_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let line = line.trim_end_matches('\n').to_owned();
            if let Some(errno) = uapi::errno_of(&line) {
                // The answer ends with a blank line after errno.
                let mut blank = String::new();
                self.answers.read_line(&mut blank).map_err(uapi_err)?;
                if errno != 0 {
                    return Err(WgError::Refused {
                        name: self.name.clone(),
                        request: what.to_owned(),
                        errno,
                    });
                }
                return Ok(lines);
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
    }
}

impl WgDevice for BoringtunDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_private_key(&mut self, key: &PrivateKey) -> Result<()> {
        self.request("set", &uapi::set_private_key(key), "set private key")
            .map(drop)
    }

    fn set_listen_port(&mut self, port: u16) -> Result<()> {
        self.request(
            "set",
            &uapi::set_listen_port(port),
            &format!("listen_port={port}"),
        )
        .map(drop)
    }

    fn add_peer(&mut self, peer: &PeerConfig) -> Result<()> {
        // boringtun panics on an update in place (crates.md §6.1).
        if self.state()?.peers.contains_key(&peer.public_key) {
            self.remove_peer(&peer.public_key)?;
        }
        self.request(
            "set",
            &uapi::add_peer(peer)?,
            &format!("add peer {}", peer.public_key),
        )
        .map(drop)
    }

    fn remove_peer(&mut self, public_key: &str) -> Result<()> {
        self.request(
            "set",
            &uapi::remove_peer(public_key)?,
            &format!("remove peer {public_key}"),
        )
        .map(drop)
    }

    fn state(&mut self) -> Result<DeviceState> {
        let lines = self.request("get", uapi::GET, "get")?;
        uapi::parse_get(&self.name, &lines, SystemTime::now())
    }
}

impl Drop for BoringtunDevice {
    fn drop(&mut self) {
        // Closing our end makes boringtun's threads exit (EOF on its
        // uapi_fd); joining them before dropping the handle means the TUN
        // fds are closed, and the interface gone, when we return.
        let _ = self.ctl.shutdown(std::net::Shutdown::Both);
        if let Some(mut h) = self.handle.take() {
            h.wait();
        }
    }
}
