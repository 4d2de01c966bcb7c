//! Probes run from inside a task's network namespace, on threads of the
//! test process (setns), so a probe costs a syscall and not a fork: which
//! replicas answer HTTP through a service VIP, and when each was first seen.
//! Shared by the benchmarks of process tasks and of containers, and (with
//! [`dnsrr_names`], for a service without a VIP) by the Docker Swarm
//! reference.

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

/// `GET /` from `addr` (a VIP or a replica's own address); the first line
/// of the body (the replica's name).
async fn http_name(addr: Ipv4Addr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((addr, 80)).await?;
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
/// [`PROBE_EVERY`] (each may take up to [`HTTP_ATTEMPT`]) until the replica
/// names that answered meet `want` (a count of names, or see [`Want`]), or
/// `timeout` after `t0`. Returns when
/// each name was first seen, relative to `t0`.
pub fn vip_names(
    pin: &Path,
    vip: Ipv4Addr,
    t0: Instant,
    want: impl Into<Want>,
    timeout: Duration,
) -> JoinHandle<BTreeMap<String, Duration>> {
    vip_poll(pin, vip, t0, want.into(), timeout, |w| w.seen)
}

/// As [`vip_names`], with the service's silence and unanswered attempts.
pub fn vip_watch(
    pin: &Path,
    vip: Ipv4Addr,
    t0: Instant,
    want: impl Into<Want>,
    timeout: Duration,
) -> JoinHandle<Watch> {
    vip_poll(pin, vip, t0, want.into(), timeout, |w| w)
}

fn vip_poll<T: Send + 'static>(
    pin: &Path,
    vip: Ipv4Addr,
    t0: Instant,
    want: Want,
    timeout: Duration,
    finish: fn(Watch) -> T,
) -> JoinHandle<T> {
    first_seen(
        pin,
        t0,
        want,
        timeout,
        move |_, seen| sight(vip, seen),
        finish,
    )
}

/// What a poller saw: when each replica name first answered (from its
/// `t0`); the longest time from `t0` on in which no probe got an answer
/// from any replica (how long the service was out, give or take a probe's
/// period and an HTTP exchange; until the deadline if the wanted names
/// never all answered); and the attempts that got no answer (refused,
/// reset, none within [`HTTP_ATTEMPT`], or, for dnsrr, a lookup that gave
/// no address), out of all started until the poller stopped, those still
/// out then included once they end.
pub struct Watch {
    pub seen: BTreeMap<String, Duration>,
    pub silence: Duration,
    pub failed: u64,
    pub attempts: u64,
}

/// When a poller stops: after this many different replica names answered,
/// or after this many names outside a known set did (the replicas that
/// replaced those of a lost node, while the lost ones may still answer).
pub enum Want {
    Names(usize),
    New {
        known: std::collections::BTreeSet<String>,
        count: usize,
    },
}

impl From<usize> for Want {
    fn from(n: usize) -> Want {
        Want::Names(n)
    }
}

impl Want {
    fn met(&self, seen: &BTreeMap<String, Duration>) -> bool {
        match self {
            Want::Names(n) => seen.len() >= *n,
            Want::New { known, count } => {
                seen.keys().filter(|n| !known.contains(*n)).count() >= *count
            }
        }
    }
}

/// One HTTP attempt at `addr` (up to [`HTTP_ATTEMPT`]); reports the replica
/// that answered, or that none did.
async fn sight(addr: Ipv4Addr, seen: Sightings) {
    let name = match tokio::time::timeout(HTTP_ATTEMPT, http_name(addr)).await {
        Ok(Ok(name)) if !name.is_empty() => Some(name),
        _ => None,
    };
    let _ = seen.send((name, Instant::now()));
}

/// Where a probe reports the replica that answered (none: the attempt
/// failed) and when.
type Sightings = tokio::sync::mpsc::UnboundedSender<(Option<String>, Instant)>;

/// The poller behind [`vip_names`] and [`dnsrr_names`]: from inside `pin`,
/// starts `probe(n, sightings)` (n = 1, 2, …) every [`PROBE_EVERY`] without
/// waiting for the earlier ones, until the names reported meet `want` or
/// `timeout` after `t0`; returns `finish` of what it saw ([`Watch`]).
fn first_seen<P, F, T>(
    pin: &Path,
    t0: Instant,
    want: Want,
    timeout: Duration,
    probe: P,
    finish: fn(Watch) -> T,
) -> JoinHandle<T>
where
    P: Fn(u16, Sightings) -> F + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
    T: Send + 'static,
{
    in_netns(pin, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Option<String>, Instant)>();
            let mut seen = BTreeMap::new();
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let deadline = t0 + timeout;
            let mut n: u16 = 0;
            let (mut failed, mut attempts) = (0u64, 0u64);
            // Answers arrive in the order they finish, which is close to
            // the order of their times: the silence is between the latest
            // answer so far and the next later one.
            let (mut last, mut silence) = (t0, Duration::ZERO);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if Instant::now() > deadline {
                            // Silent until the end counts too.
                            silence = silence.max(Instant::now().saturating_duration_since(last));
                            break;
                        }
                        n = n.wrapping_add(1);
                        tokio::spawn(probe(n, tx.clone()));
                    }
                    Some((name, at)) = rx.recv() => {
                        attempts += 1;
                        let Some(name) = name else {
                            failed += 1;
                            continue;
                        };
                        silence = silence.max(at.saturating_duration_since(last));
                        last = last.max(at);
                        seen.entry(name).or_insert(at.duration_since(t0));
                        if want.met(&seen) {
                            break;
                        }
                    }
                }
            }
            // Attempts still out when the poller stopped count once they
            // end: one that hangs reports only after its time limit (a
            // lookup and then a connection, for dnsrr), and the channel
            // closes once every probe has reported.
            drop(tx);
            let drain = tokio::time::Instant::now() + HTTP_ATTEMPT * 2 + Duration::from_millis(200);
            while let Ok(Some((name, _))) = tokio::time::timeout_at(drain, rx.recv()).await {
                attempts += 1;
                failed += u64::from(name.is_none());
            }
            finish(Watch {
                seen,
                silence,
                failed,
                attempts,
            })
        })
    })
}

/// The resolver a container asks: Docker's embedded DNS (and weft's).
pub const EMBEDDED_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// A DNS query (recursion desired) for the A records of `name`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The IPv4 addresses in the answer section of the DNS response `m`
/// (empty when it is malformed or answers something else).
fn a_answers(m: &[u8]) -> Vec<Ipv4Addr> {
    parse_a_answers(m).unwrap_or_default()
}

fn parse_a_answers(m: &[u8]) -> Option<Vec<Ipv4Addr>> {
    let u16_at = |at: usize| Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]));
    // A name at `i`: labels ending in a zero byte, or a 2-byte pointer.
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *m.get(i)? as usize;
            if len == 0 {
                return Some(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + len;
        }
    };
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        i = skip_name(i)?;
        let kind = u16_at(i)?;
        let len = u16_at(i + 8)? as usize;
        let data = m.get(i + 10..i + 10 + len)?;
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some(out)
}

/// The addresses `name` resolves to at the embedded resolver, asked once
/// over UDP from the current namespace.
async fn resolve_a(id: u16, name: &str) -> std::io::Result<Vec<Ipv4Addr>> {
    let s = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    s.connect((EMBEDDED_DNS, 53)).await?;
    s.send(&a_query(id, name)).await?;
    let mut buf = [0u8; 1500];
    loop {
        let n = s.recv(&mut buf).await?;
        if buf[..n].starts_with(&id.to_be_bytes()) {
            return Ok(a_answers(&buf[..n]));
        }
    }
}

/// As [`vip_names`], for a service without a VIP (DNS round robin, Docker
/// Swarm's `--endpoint-mode dnsrr`): every [`PROBE_EVERY`] the probe asks
/// the embedded resolver for `name` and opens a new HTTP connection to each
/// address it got (the lookup and each connection may take up to
/// [`HTTP_ATTEMPT`] apiece), until the names that answered meet `want` or
/// `timeout` after `t0`. Trying every address each time, rather than the
/// one a client would pick, sees a replica as soon as anything could reach
/// it: a lower bound for the service it probes.
pub fn dnsrr_names(
    pin: &Path,
    name: &str,
    t0: Instant,
    want: impl Into<Want>,
    timeout: Duration,
) -> JoinHandle<BTreeMap<String, Duration>> {
    dnsrr_poll(pin, name, t0, want.into(), timeout, |w| w.seen)
}

/// As [`dnsrr_names`], with the service's silence and unanswered attempts.
pub fn dnsrr_watch(
    pin: &Path,
    name: &str,
    t0: Instant,
    want: impl Into<Want>,
    timeout: Duration,
) -> JoinHandle<Watch> {
    dnsrr_poll(pin, name, t0, want.into(), timeout, |w| w)
}

fn dnsrr_poll<T: Send + 'static>(
    pin: &Path,
    name: &str,
    t0: Instant,
    want: Want,
    timeout: Duration,
    finish: fn(Watch) -> T,
) -> JoinHandle<T> {
    let name = std::sync::Arc::<str>::from(name);
    let probe = move |id, seen: Sightings| {
        let name = name.clone();
        async move {
            let addrs = match tokio::time::timeout(HTTP_ATTEMPT, resolve_a(id, &name)).await {
                Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
                // The name led nowhere: one attempt that got no answer.
                _ => {
                    let _ = seen.send((None, Instant::now()));
                    return;
                }
            };
            for addr in addrs {
                tokio::spawn(sight(addr, seen.clone()));
            }
        }
    };
    first_seen(pin, t0, want, timeout, probe, finish)
}

/// Seconds until the last of `seen`'s names was first seen (NaN if none).
pub fn all_seen(seen: &BTreeMap<String, Duration>) -> f64 {
    seen.values().max().map_or(f64::NAN, Duration::as_secs_f64)
}

/// Seconds until the last name of `now` that `before` lacks was first seen
/// (NaN if none): when the replicas a scale-up added all answered.
pub fn new_seen(now: &BTreeMap<String, Duration>, before: &BTreeMap<String, Duration>) -> f64 {
    unknown_seen(now, &before.keys().cloned().collect())
}

/// Seconds until the last name outside `known` was first seen (NaN if
/// none): when the replicas that replaced a lost node's all answered.
pub fn unknown_seen(
    seen: &BTreeMap<String, Duration>,
    known: &std::collections::BTreeSet<String>,
) -> f64 {
    seen.iter()
        .filter(|(n, _)| !known.contains(*n))
        .map(|(_, d)| d.as_secs_f64())
        .fold(f64::NAN, f64::max)
}
