//! `weft ui`: a read-only, live web view of the cluster, served on this
//! machine from what the control API answers (through the same `-H`
//! connection and TLS files as every other command: no port on managers).
//!
//! ```text
//!  browser ──HTTP──▶ server.rs ──▶ watch.rs ──gRPC (-H)──▶ daemon / manager
//!    GET / /app.js /app.css      (assets.rs, embedded)
//!    GET /api/state              newest snapshot (snapshot.rs: an allow-list of fields)
//!    GET /api/events             SSE: a new snapshot after each burst of cluster events
//! ```

mod assets;
mod server;
mod snapshot;
mod watch;

use std::net::SocketAddr;

use anyhow::{Context, bail};

use crate::cli::UiArgs;
use crate::commands::{Client, TlsFiles};

/// Refuses a `--listen` beyond loopback unless `--insecure-listen` says
/// so; returns the warning to print when it does.
fn check_listen(listen: SocketAddr, insecure: bool) -> anyhow::Result<Option<String>> {
    if listen.ip().is_loopback() {
        return Ok(None);
    }
    if !insecure {
        bail!(
            "--listen {listen} is not a loopback address: the page has no authentication, so \
             anyone who can reach it would see the cluster's nodes, networks and services. \
             Use 127.0.0.1:PORT (with an SSH tunnel from elsewhere: ssh -L 4390:127.0.0.1:4390 \
             HOST), or add --insecure-listen if that is what you want"
        );
    }
    Ok(Some(format!(
        "warning: serving on {listen} with --insecure-listen, over plain HTTP: the login token \
         in the address below is the page's only protection; anyone who has it and can reach \
         this address sees the cluster's nodes, networks and services"
    )))
}

/// `weft ui`.
pub async fn run(a: UiArgs, host: &str, tls: &TlsFiles) -> anyhow::Result<()> {
    let warning = check_listen(a.listen, a.insecure_listen)?;
    let c = Client::connect(host, tls).await?;
    let state = watch::start(c.control())
        .await
        .context("cannot read the cluster's state")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    // Beyond loopback, a login token: 256 random bits (rand's thread RNG,
    // a CSPRNG), in hex.
    let token = a.insecure_listen.then(|| {
        format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )
    });
    // Tests and scripts read the address (port 0 picks one) from this line.
    match &token {
        Some(t) => println!("weft ui: serving http://{addr}/?token={t} (Ctrl-C stops)"),
        None => println!("weft ui: serving http://{addr}/ (Ctrl-C stops)"),
    }
    let site = server::Site {
        state,
        any_host: a.insecure_listen,
        token,
    };
    tokio::select! {
        () = server::serve(listener, site) => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_only_when_asked_and_then_with_a_warning() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(check_listen(at("127.0.0.1:4390"), false).unwrap(), None);
        assert_eq!(check_listen(at("[::1]:0"), false).unwrap(), None);
        for s in ["0.0.0.0:4390", "192.0.2.1:80", "[::]:4390"] {
            let e = check_listen(at(s), false).unwrap_err().to_string();
            assert!(e.contains("--insecure-listen"), "{e}");
            let w = check_listen(at(s), true).unwrap().expect("a warning");
            assert!(w.contains("login token"), "{w}");
        }
    }
}
