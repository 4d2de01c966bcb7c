//! `weft exec`: run a command in a running container task of this node,
//! as `docker exec` does: output streamed (stdout and stderr apart without
//! a terminal), stdin forwarded with `-i`, a pseudo-terminal with `-t`
//! (the local terminal put in raw mode and its size followed), and the
//! command's exit code as weft's.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;
use weft_proto::v1 as pb;
use weft_proto::v1::exec_client_message::Msg as In;
use weft_proto::v1::exec_server_message::Msg as Out;

use super::{Client, Exit, rpc};

/// How much of stdin goes in one message (the daemon takes up to 64 KiB).
const STDIN_CHUNK: usize = 32 * 1024;

/// `weft exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal (its stdout and stderr both go
    /// to weft's stdout).
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable NAME=VALUE added to the container's
    /// (repeatable); a bare NAME takes this shell's value, if set.
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Run as this user: NAME|UID[:GROUP|GID] (default: the container's).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container (absolute).
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Task name or ID (a running container task of this node).
    pub task: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `-e NAME` as Docker takes it: this shell's value, or nothing if unset.
fn env_entries(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The size of the terminal on stdin or stdout, if either is one.
pub(super) fn terminal_size() -> Option<pb::TtySize> {
    use std::os::fd::AsRawFd;
    [std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd()]
        .into_iter()
        .find_map(|fd| {
            let mut ws = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives for
            // the call; an fd that is not a terminal gives ENOTTY.
            let ok = unsafe { tiocgwinsz(fd, &mut ws) }.is_ok();
            (ok && ws.ws_col > 0 && ws.ws_row > 0).then(|| pb::TtySize {
                width: ws.ws_col.into(),
                height: ws.ws_row.into(),
            })
        })
}

/// The local terminal in raw mode while it lives (keys go to the
/// container's terminal as typed); restored when dropped.
pub(super) struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    /// Puts the terminal on stdin in raw mode.
    pub(super) fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("setting the terminal raw")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// Writes a chunk of output at once (a prompt has no newline).
pub(super) fn write_out(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b)?;
    w.flush()
}

fn msg(m: In) -> pb::ExecClientMessage {
    pb::ExecClientMessage { msg: Some(m) }
}

/// Forwards stdin on a thread of its own (a read of a terminal or pipe
/// cannot be cancelled; the process ends without waiting for it), then
/// says EOF.
fn forward_stdin(tx: mpsc::Sender<pb::ExecClientMessage>) {
    forward_stdin_as(
        tx,
        |b| Some(msg(In::Stdin(b))),
        Some(msg(In::CloseStdin(true))),
    );
}

/// Forwards stdin as messages made by `chunk` (`None`: stop reading, as a
/// detach), then sends `eof` (if any) at its end.
pub(super) fn forward_stdin_as<M: Send + 'static>(
    tx: mpsc::Sender<M>,
    mut chunk: impl FnMut(Vec<u8>) -> Option<M> + Send + 'static,
    eof: Option<M>,
) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let Some(m) = chunk(buf[..n].to_vec()) else {
                        return;
                    };
                    if tx.blocking_send(m).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(m) = eof {
            let _ = tx.blocking_send(m);
        }
    });
}

/// Sends the terminal's new size on every SIGWINCH.
fn follow_resizes(tx: mpsc::Sender<pb::ExecClientMessage>) -> anyhow::Result<()> {
    follow_resizes_as(tx, |z| msg(In::Resize(z)))
}

/// Sends the terminal's new size, as made by `resize`, on every SIGWINCH.
pub(super) fn follow_resizes_as<M: Send + 'static>(
    tx: mpsc::Sender<M>,
    resize: fn(pb::TtySize) -> M,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change())?;
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(size) = terminal_size()
                && tx.send(resize(size)).await.is_err()
            {
                return;
            }
        }
    });
    Ok(())
}

/// Runs `weft exec`; a non-zero exit of the command becomes [`Exit`].
pub async fn exec(c: &Client, a: ExecArgs) -> anyhow::Result<()> {
    let size = if a.tty { terminal_size() } else { None };
    let start = pb::ExecStart {
        task: a.task.clone(),
        args: a.command,
        env: env_entries(&a.env),
        user: a.user.unwrap_or_default(),
        workdir: a.workdir.unwrap_or_default(),
        stdin: a.interactive,
        tty: a.tty,
        size,
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(msg(In::Start(start))).await?;
    let mut stream = c
        .daemon()
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(rpc)
        .map_err(|e| e.context(format!("exec in {}", a.task)))?
        .into_inner();
    let _raw = if a.tty && a.interactive && std::io::stdin().is_terminal() {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if a.tty {
        follow_resizes(tx.clone())?;
    }
    if a.interactive {
        forward_stdin(tx.clone());
    }
    // Our own sender stays open until the end: the daemon reads a closed
    // stream as "no more input", not as the client leaving.
    let _tx = tx;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        let m = stream
            .message()
            .await
            .map_err(rpc)
            .map_err(|e| e.context(format!("exec in {}", a.task)))?;
        match m.and_then(|m| m.msg) {
            Some(Out::Stdout(b)) => write_out(&mut stdout, &b)?,
            Some(Out::Stderr(b)) => write_out(&mut stderr, &b)?,
            Some(Out::ExitCode(0)) => return Ok(()),
            Some(Out::ExitCode(code)) => {
                return Err(Exit(u8::try_from(code & 0xff).unwrap_or(1)).into());
            }
            None => anyhow::bail!("the daemon ended the exec without its exit status"),
        }
    }
}
