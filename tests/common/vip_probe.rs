//! Probes run from inside a task's network namespace, on threads of the
//! test process (setns), so a probe costs a syscall and not a fork: which
//! replicas answer HTTP through a service VIP, and when each was first seen.
//! Shared by the benchmarks of process tasks and of containers.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the convergence pollers probe (the brief asks for ≤ 20 ms).
pub const PROBE_EVERY: Duration = Duration::from_millis(2);
/// One HTTP attempt through the VIP gives up after this long.
pub const HTTP_ATTEMPT: Duration = Duration::from_millis(1000);

/// Runs `f` on a new thread inside the namespace pinned at `pin`. Sockets
/// it opens, and processes it forks, live in that namespace.
pub fn in_netns<T, F>(pin: &Path, f: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = File::open(pin).expect("open netns pin");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// `GET /` from `vip`; the first line of the body (the replica's name).
async fn http_name(vip: Ipv4Addr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((vip, 80)).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|body| body.lines().next())
        .unwrap_or("")
        .trim()
        .to_string())
}

/// From inside `pin`, opens a new HTTP connection to `vip` every
/// [`PROBE_EVERY`] (each may take up to [`HTTP_ATTEMPT`]) until `want`
/// different replica names answered, or `timeout` after `t0`. Returns when
/// each name was first seen, relative to `t0`.
pub fn vip_names(
    pin: &Path,
    vip: Ipv4Addr,
    t0: Instant,
    want: usize,
    timeout: Duration,
) -> JoinHandle<BTreeMap<String, Duration>> {
    in_netns(pin, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
            let mut seen = BTreeMap::new();
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let deadline = t0 + timeout;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() > deadline {
                            break;
                        }
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            if let Ok(Ok(name)) = tokio::time::timeout(HTTP_ATTEMPT, http_name(vip)).await
                                && !name.is_empty()
                            {
                                let _ = tx.send((name, Instant::now()));
                            }
                        });
                    }
                    Some((name, at)) = rx.recv() => {
                        seen.entry(name).or_insert(at.duration_since(t0));
                        if seen.len() >= want {
                            break;
                        }
                    }
                }
            }
            seen
        })
    })
}
