//! `weft run -i/-t` and `weft attach`: the task's output (raw, as
//! written), stdin forwarded with `-i`, the local terminal raw and its
//! size followed with `-t`, Docker's detach keys, and the task's exit code
//! at the end (`AttachStdio`).

use anyhow::bail;
use clap::Args;
use tokio::sync::mpsc;
use weft_proto::v1 as pb;
use weft_proto::v1::attach_stdio_request::Msg as In;
use weft_proto::v1::attach_stdio_response::Msg as Out;

use super::{Client, Exit, rpc};

/// Docker's default detach keys: ctrl-p, ctrl-q.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// `weft attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Key sequence that detaches (leaving the task running), with a
    /// terminal: comma-separated `ctrl-<a-z, @, [, \, ], ^, _>` or single
    /// characters.
    #[arg(long, default_value = DEFAULT_DETACH_KEYS)]
    pub detach_keys: String,
    /// Do not forward stdin (output only).
    #[arg(long)]
    pub no_stdin: bool,
    /// Task name or ID (a running task of this node).
    pub task: String,
}

/// Parses Docker's `--detach-keys` (`ctrl-p,ctrl-q`, `a,ctrl-b`) into the
/// bytes that detach.
pub fn parse_detach_keys(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for k in s.split(',') {
        let b = k.as_bytes();
        match b {
            [c] => out.push(*c),
            _ => {
                let Some(rest) = k.strip_prefix("ctrl-") else {
                    bail!("invalid detach key {k:?}: give ctrl-X or a single character");
                };
                let c = match rest.as_bytes() {
                    [c @ b'a'..=b'z'] => c - b'a' + 1,
                    [b'@'] => 0,
                    [b'['] => 27,
                    [b'\\'] => 28,
                    [b']'] => 29,
                    [b'^'] => 30,
                    [b'_'] => 31,
                    _ => bail!("invalid detach key {k:?}: ctrl- takes a-z, @, [, \\, ], ^ or _"),
                };
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        bail!("no detach keys given");
    }
    Ok(out)
}

/// Finds the detach sequence in typed input: bytes that may begin it are
/// held until it is complete (detach) or broken (they are passed on).
#[derive(Debug)]
pub struct DetachScanner {
    keys: Vec<u8>,
    held: usize,
}

impl DetachScanner {
    /// A scanner for `keys` (not empty).
    pub fn new(keys: Vec<u8>) -> Self {
        Self { keys, held: 0 }
    }

    /// What of `input` goes to the task, and whether the sequence is now
    /// complete (the rest is then dropped).
    pub fn scan(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut pass = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    return (pass, true);
                }
                continue;
            }
            pass.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    return (pass, true);
                }
            } else {
                pass.push(b);
            }
        }
        (pass, false)
    }
}

/// How an attach is made.
pub struct AttachOpts {
    /// `weft run --rm`.
    pub remove: bool,
    /// `weft attach`: output from now on (else from the first byte).
    pub from_now: bool,
    /// Forward stdin.
    pub stdin: bool,
    /// Stdin's EOF closes the task's stdin (`weft run -i`; Docker's
    /// StdinOnce). Without, an EOF only stops the forwarding.
    pub close_at_eof: bool,
    /// The task has a terminal: raw mode, resizes, detach keys.
    pub tty: bool,
    /// The detach sequence (with `tty`).
    pub detach_keys: Vec<u8>,
}

fn req(m: In) -> pb::AttachStdioRequest {
    pb::AttachStdioRequest { msg: Some(m) }
}

/// Attaches to task `task` and returns its exit code (0 after a detach).
pub async fn attach_stdio(c: &Client, task: &str, o: AttachOpts) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let (tx, rx) = mpsc::channel(16);
    tx.send(req(In::Start(pb::AttachRequest {
        task: task.to_string(),
        remove: o.remove,
        from_now: o.from_now,
    })))
    .await?;
    let mut stream = c
        .daemon()
        .attach_stdio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(rpc)?
        .into_inner();
    let raw = o.tty && o.stdin && std::io::stdin().is_terminal();
    let _raw = if raw {
        Some(super::exec::RawMode::enter()?)
    } else {
        None
    };
    if o.tty {
        if let Some(size) = super::exec::terminal_size() {
            tx.send(req(In::Resize(size))).await?;
        }
        super::exec::follow_resizes_as(tx.clone(), |z| req(In::Resize(z)))?;
    }
    let (detached_tx, mut detached) = mpsc::channel::<()>(1);
    if o.stdin {
        let mut scan = raw.then(|| DetachScanner::new(o.detach_keys.clone()));
        let eof = o.close_at_eof.then(|| req(In::CloseStdin(true)));
        super::exec::forward_stdin_as(
            tx.clone(),
            move |b| match scan.as_mut().map(|s| s.scan(&b)) {
                Some((_, true)) => {
                    let _ = detached_tx.try_send(());
                    None
                }
                Some((pass, false)) => Some(req(In::Stdin(pass))),
                None => Some(req(In::Stdin(b))),
            },
            eof,
        );
    }
    // Our own sender stays open until the end: a closed stream is "no
    // more input", not the client leaving.
    let _tx = tx;
    let mut signals = Signals::new(!raw)?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let m = tokio::select! {
            m = stream.message() => m.map_err(rpc)?,
            Some(()) = detached.recv() => {
                drop(_raw);
                eprintln!("\r\ndetached from task {task}: it keeps running (`weft attach {task}`)");
                return Ok(0);
            }
            code = signals.next() => {
                on_signal(c, task, o.from_now, &mut signals, code).await?;
                continue;
            }
        };
        match m.and_then(|m| m.msg) {
            Some(Out::Stdout(b)) => super::exec::write_out(&mut stdout, &b)?,
            Some(Out::Stderr(b)) => super::exec::write_out(&mut stderr, &b)?,
            Some(Out::Exit(s)) => {
                drop(_raw);
                if matches!(s.state(), pb::TaskState::Failed | pb::TaskState::Rejected) {
                    eprintln!("error: task {task} could not run: {}", s.message);
                }
                return Ok(super::attach::exit_code(&s));
            }
            None => bail!(
                "the daemon ended the attach without the task's final status; see `weft ps -a`"
            ),
        }
    }
}

/// SIGINT and SIGTERM while attached without a raw terminal (with one,
/// ctrl-c is a byte for the task's terminal).
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    stopping: bool,
}

impl Signals {
    fn new(on: bool) -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: on.then(|| signal(SignalKind::interrupt())).transpose()?,
            term: on.then(|| signal(SignalKind::terminate())).transpose()?,
            stopping: false,
        })
    }

    /// The exit code of the next signal (130, 143); never, without them.
    async fn next(&mut self) -> u8 {
        match (&mut self.int, &mut self.term) {
            (Some(i), Some(t)) => tokio::select! {
                _ = i.recv() => 130,
                _ = t.recv() => 143,
            },
            _ => std::future::pending().await,
        }
    }
}

/// `weft run -i`: the first signal stops the task (as `weft run` does),
/// the second leaves. `weft attach`: a signal detaches.
async fn on_signal(
    c: &Client,
    task: &str,
    detach: bool,
    s: &mut Signals,
    code: u8,
) -> anyhow::Result<()> {
    if detach {
        s.stopping = true;
    }
    super::attach::stop_on_signal(c, task, &mut s.stopping, code).await
}

/// `weft attach`.
pub async fn attach_cmd(c: &Client, a: AttachArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let detach_keys = parse_detach_keys(&a.detach_keys)?;
    let found = c
        .daemon()
        .inspect(pb::InspectRequest {
            task: a.task.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let container = found.config.and_then(|t| t.container).unwrap_or_default();
    // Stdin goes to a task run with -i only; raw mode and the detach keys
    // are for a task with a terminal, typed into from one.
    let stdin = container.open_stdin && !a.no_stdin;
    let o = AttachOpts {
        remove: false,
        from_now: true,
        stdin,
        close_at_eof: false,
        tty: container.tty && (!stdin || std::io::stdin().is_terminal()),
        detach_keys,
    };
    match attach_stdio(c, &a.task, o).await? {
        0 => Ok(()),
        code => Err(Exit(code).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_as_dockers() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(
            parse_detach_keys("a,ctrl-@,ctrl-_").unwrap(),
            vec![b'a', 0, 31]
        );
        for bad in ["", "ctrl-", "ctrl-1", "ab", "ctrl-pq"] {
            assert!(parse_detach_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_scanner_holds_a_prefix_and_passes_it_when_broken() {
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.scan(b"ab"), (b"ab".to_vec(), false));
        assert_eq!(s.scan(&[16]), (vec![], false));
        assert_eq!(s.scan(b"x"), (vec![16, b'x'], false));
        assert_eq!(s.scan(&[16, 16]), (vec![16], false));
        assert_eq!(s.scan(&[17, b'z']), (vec![], true));
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.scan(&[b'h', 16, 17, b'i']), (vec![b'h'], true));
        let mut one = DetachScanner::new(vec![3]);
        assert_eq!(one.scan(&[b'a', 3]), (vec![b'a'], true));
    }
}
