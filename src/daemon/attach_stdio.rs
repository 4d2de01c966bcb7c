//! `weft run -i/-t` and `weft attach`: the daemon's `AttachStdio`, an
//! `Attach` (see `attach`) with the task's stdin, live output and terminal.
//!
//! ```text
//!  client ──start──▶ resolve the task ─▶ Attach's flow (wait for it, --rm, final status)
//!                                          │ its output step:
//!    run with -i/-t:  runtime.stdio ─▶ live chunks ──────────────▶ stdout/stderr messages
//!                     client's stdin/close/resize ─▶ its input (stdin only with -i)
//!    any other task:  its log's lines (from the first, or from now) ─▶ stdout/stderr
//!                     (the client's input is read and dropped)
//!  client ◀── … , exit (the final status) last
//! ```
//!
//! Internally the output travels as `Attach`'s messages (a live chunk is
//! a log line without a time), turned into `AttachStdioResponse`s at the
//! edge. A client that goes away leaves the task running, as Docker's
//! detach does; its stdin is closed when it says so (`close_stdin`, what
//! `weft run -i` sends at its stdin's EOF), or when the client of an
//! attached `weft run -i` without `-t` goes away (Docker's StdinOnce).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::attach_stdio_request::Msg as In;
use weft_proto::v1::attach_stdio_response::Msg as Out;
use weft_worker::runtime::{ExecInput, RoutedRuntime, StdioChunk, TaskRuntime};

use super::NodeService;
use super::attach::{Client, Output};

/// The client's side of an `AttachStdio`, after its start.
pub(super) type Inbound = Streaming<pb::AttachStdioRequest>;

/// The stream `AttachStdio` answers with.
pub(super) type AttachStdioStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::AttachStdioResponse, Status>> + Send>,
>;

/// How long the exit may take to be recorded after the output's end.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// How long the client may take to send its first message.
const START_WAIT: Duration = Duration::from_secs(10);

/// A later client message as the task's input (`None`: nothing to do).
fn input_of(m: pb::AttachStdioRequest) -> Result<Option<ExecInput>, Status> {
    Ok(match m.msg {
        None | Some(In::CloseStdin(false)) => None,
        Some(In::Start(_)) => {
            return Err(Status::invalid_argument(
                "an attach is started once, by the first message",
            ));
        }
        Some(In::Stdin(b)) => Some(super::exec::stdin_input(b)?),
        Some(In::CloseStdin(true)) => Some(ExecInput::CloseStdin),
        Some(In::Resize(z)) => {
            let (w, h) = super::exec::tty_size(&z)?;
            Some(ExecInput::Resize(w, h))
        }
    })
}

/// Attach's messages as AttachStdio's: each line's bytes on its stream,
/// the final status last.
fn responses(m: pb::AttachMessage) -> Vec<pb::AttachStdioResponse> {
    let mut out: Vec<pb::AttachStdioResponse> = m
        .lines
        .into_iter()
        .map(|l| {
            let msg = match l.stream() {
                pb::LogStream::Stderr => Out::Stderr(l.line),
                _ => Out::Stdout(l.line),
            };
            pb::AttachStdioResponse { msg: Some(msg) }
        })
        .collect();
    if let Some(s) = m.exit {
        out.push(pb::AttachStdioResponse {
            msg: Some(Out::Exit(s)),
        });
    }
    out
}

/// A live chunk as a line of Attach's messages (no time: it is not read
/// from the log).
fn chunk_line(stream: pb::LogStream, bytes: Vec<u8>) -> pb::AttachMessage {
    let mut l = pb::LogLine {
        time_unix_nanos: 0,
        line: bytes,
        ..Default::default()
    };
    l.set_stream(stream);
    pb::AttachMessage {
        lines: vec![l],
        exit: None,
    }
}

/// Forwards the client's input to the task's until the client closes its
/// side or goes away (the task runs on either way). With `close_on_leave`
/// (an attached `weft run -i` without a terminal: Docker's StdinOnce), a
/// client that goes away closes the task's stdin as its EOF would.
fn forward_input(
    mut inbound: Inbound,
    input: Option<mpsc::Sender<ExecInput>>,
    close_on_leave: bool,
) {
    tokio::spawn(async move {
        // The CLI keeps its side open until it exits: an end, clean or
        // not, is the client leaving.
        while let Some(Ok(m)) = inbound.next().await {
            match input_of(m) {
                Ok(Some(i)) => {
                    if let Some(tx) = &input
                        && tx.send(i).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e.message(), "a bad attach message; its input is dropped");
                    break;
                }
            }
        }
        if let (true, Some(tx)) = (close_on_leave, &input) {
            let _ = tx.send(ExecInput::CloseStdin).await;
        }
    });
}

/// The output step of an `AttachStdio`: the task's live output (and its
/// input) when it was run with `-i`/`-t`, else its log.
pub(super) async fn follow_stdio(
    runtime: &Arc<RoutedRuntime>,
    id: &str,
    client: &mut Client,
    inbound: Box<Inbound>,
    from_now: bool,
) {
    let (input, output, tty) = match runtime.stdio(id, !from_now) {
        Some(s) => (Some(s.input), s.output, s.tty),
        None => (None, None, false),
    };
    forward_input(*inbound, input, !from_now && !tty);
    let Some(mut output) = output else {
        super::attach::follow(runtime, id, client, from_now).await;
        return;
    };
    loop {
        let m = match output.recv().await {
            Ok(StdioChunk::Stdout(b)) => chunk_line(pb::LogStream::Stdout, b),
            Ok(StdioChunk::Stderr(b)) => chunk_line(pb::LogStream::Stderr, b),
            Ok(StdioChunk::End) | Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                // The output ends just before the runtime records the exit
                // (it is reported once all output is in the log).
                if tokio::time::timeout(EXIT_WAIT, runtime.wait(id))
                    .await
                    .is_err()
                {
                    tracing::warn!(task = %id, "no exit within {EXIT_WAIT:?} of the output's end");
                }
                return;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(task = %id, chunks = n, "an attach fell behind; some output was not sent to it (it is in the log)");
                continue;
            }
        };
        client.send(Ok(m)).await;
        if client.gone() {
            return;
        }
    }
}

impl NodeService {
    /// `AttachStdio`: see the module header.
    pub(super) async fn attach_stdio_task(
        &self,
        mut inbound: Inbound,
    ) -> Result<AttachStdioStream, Status> {
        self.locked.refuse()?;
        let first = tokio::time::timeout(START_WAIT, inbound.message())
            .await
            .map_err(|_| Status::invalid_argument("no attach request arrived"))??;
        let Some(pb::AttachStdioRequest {
            msg: Some(In::Start(start)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of an attach must be its start",
            ));
        };
        if start.from_now {
            let id = self.local_task(&start.task).await?;
            if self
                .runtime
                .status(&id)
                .is_none_or(|s| s.state.is_terminal())
            {
                return Err(Status::failed_precondition(format!(
                    "task {} is not running: you cannot attach to it; see `weft logs {}` \
                     (and `weft start`)",
                    start.task, start.task
                )));
            }
        }
        let from_now = start.from_now;
        let mut inner = self
            .attach_with(start, Output::Stdio(Box::new(inbound), from_now))
            .await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(m) = inner.next().await {
                let batch = match m {
                    Ok(m) => responses(m).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                for r in batch {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_worker::runtime::interactive::MAX_CHUNK;

    #[test]
    fn input_is_bounded_and_start_comes_once() {
        let m = |msg| pb::AttachStdioRequest { msg: Some(msg) };
        assert_eq!(
            input_of(m(In::Stdin(b"hi".to_vec()))).unwrap(),
            Some(ExecInput::Stdin(b"hi".to_vec()))
        );
        assert!(input_of(m(In::Stdin(vec![0; MAX_CHUNK + 1]))).is_err());
        assert_eq!(input_of(m(In::CloseStdin(false))).unwrap(), None);
        assert!(input_of(m(In::Start(Default::default()))).is_err());
        let big = pb::TtySize {
            width: 70_000,
            height: 1,
        };
        assert!(input_of(m(In::Resize(big))).is_err());
    }

    #[test]
    fn lines_become_output_on_their_stream_and_the_status_comes_last() {
        let mut err = chunk_line(pb::LogStream::Stderr, b"e".to_vec());
        err.lines
            .extend(chunk_line(pb::LogStream::Stdout, b"o".to_vec()).lines);
        err.exit = Some(pb::TaskStatus::default());
        let r: Vec<_> = responses(err).into_iter().map(|r| r.msg.unwrap()).collect();
        assert_eq!(r[0], Out::Stderr(b"e".to_vec()));
        assert_eq!(r[1], Out::Stdout(b"o".to_vec()));
        assert!(matches!(r[2], Out::Exit(_)));
    }
}
