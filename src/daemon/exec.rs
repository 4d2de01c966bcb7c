//! `weft exec`: the daemon's `Exec`, a command run in a running container
//! task of this node with its input and output streamed both ways.
//!
//! ```text
//!  client ──start, stdin, close_stdin, resize──▶ inbound task ──ExecInput──▶ runtime's exec job
//!  client ◀──stdout, stderr…, exit_code──────── outbound task ◀──ExecEvent──┘
//! ```
//!
//! Input and output are forwarded by two tasks so that a command blocked
//! on a full stdout (the client not reading yet) never holds up its input
//! and the other way round. When the outbound side ends (the exit sent,
//! or the client gone) the inbound task drops the runtime's input, which
//! kills a command still running: a client that goes away leaves nothing
//! running behind it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::exec_client_message::Msg as In;
use weft_proto::v1::exec_server_message::Msg as Out;
use weft_worker::runtime::interactive::MAX_CHUNK;
use weft_worker::runtime::{
    Error as RuntimeError, ExecEvent, ExecInput, ExecSession, ExecSpec, TaskRuntime,
};

use super::NodeService;

/// The stream `Exec` answers with.
pub(super) type ExecStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::ExecServerMessage, Status>> + Send>,
>;

/// How long the client may take to send its first message (the spec).
const START_WAIT: Duration = Duration::from_secs(10);

fn out(m: Out) -> Result<pb::ExecServerMessage, Status> {
    Ok(pb::ExecServerMessage { msg: Some(m) })
}

/// The runtime's exec options from the wire's.
fn spec_of(s: &pb::ExecStart) -> Result<ExecSpec, Status> {
    let size = match &s.size {
        Some(z) => Some(tty_size(z)?),
        None => None,
    };
    let spec = ExecSpec {
        args: s.args.clone(),
        env: s.env.clone(),
        user: (!s.user.is_empty()).then(|| s.user.clone()),
        workdir: (!s.workdir.is_empty()).then(|| s.workdir.clone()),
        stdin: s.stdin,
        tty: s.tty,
        size: size.filter(|_| s.tty),
    };
    spec.validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

/// A terminal size off the wire, bounded.
pub(super) fn tty_size(z: &pb::TtySize) -> Result<(u16, u16), Status> {
    let w = u16::try_from(z.width);
    let h = u16::try_from(z.height);
    match (w, h) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(Status::invalid_argument(
            "a terminal size is at most 65535 columns and rows",
        )),
    }
}

/// A stdin chunk off the wire, bounded.
pub(super) fn stdin_input(b: Vec<u8>) -> Result<ExecInput, Status> {
    if b.len() > MAX_CHUNK {
        return Err(Status::invalid_argument(format!(
            "stdin chunks are at most {MAX_CHUNK} bytes"
        )));
    }
    Ok(ExecInput::Stdin(b))
}

/// A later client message as runtime input (`None`: nothing to do).
fn input_of(m: pb::ExecClientMessage) -> Result<Option<ExecInput>, Status> {
    Ok(match m.msg {
        None | Some(In::CloseStdin(false)) => None,
        Some(In::Start(_)) => {
            return Err(Status::invalid_argument(
                "an exec is started once, by the first message",
            ));
        }
        Some(In::Stdin(b)) => Some(stdin_input(b)?),
        Some(In::CloseStdin(true)) => Some(ExecInput::CloseStdin),
        Some(In::Resize(z)) => {
            let (w, h) = tty_size(&z)?;
            Some(ExecInput::Resize(w, h))
        }
    })
}

/// The gRPC status for a runtime's refusal, naming the task as the user
/// called it.
fn refusal(task: &str, e: RuntimeError) -> Status {
    match e {
        RuntimeError::NotFound { .. } | RuntimeError::NotRunning { .. } => {
            Status::failed_precondition(format!(
                "task {task} is not running; see `weft ps -a` (and `weft start {task}`)"
            ))
        }
        RuntimeError::Unsupported { .. } => Status::failed_precondition(format!(
            "task {task} runs as a host process, not in a container: it has nothing to exec into"
        )),
        RuntimeError::InvalidExec { source, .. } => Status::invalid_argument(source.to_string()),
        RuntimeError::ExecUser { source, .. } => Status::invalid_argument(source.to_string()),
        e => Status::internal(format!("running a command in task {task}: {e}")),
    }
}

impl NodeService {
    /// `weft exec`: see the module header.
    pub(super) async fn exec_task(
        &self,
        mut inbound: Streaming<pb::ExecClientMessage>,
    ) -> Result<ExecStream, Status> {
        self.locked.refuse()?;
        let first = tokio::time::timeout(START_WAIT, inbound.message())
            .await
            .map_err(|_| Status::invalid_argument("no exec spec arrived"))??;
        let Some(pb::ExecClientMessage {
            msg: Some(In::Start(start)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of an exec must be its start",
            ));
        };
        let spec = spec_of(&start)?;
        let t = self.local_task_config(&start.task).await?;
        if t.container.is_none() {
            return Err(refusal(
                &start.task,
                RuntimeError::Unsupported {
                    id: t.id,
                    what: "exec",
                },
            ));
        }
        let (tx, rx) = mpsc::channel(16);
        match self.runtime.exec_session(&t.id, &spec).await {
            Ok(session) => forward(inbound, session, tx),
            // Docker's convention: the program could not be found (127)
            // or run (126), said on stderr.
            Err(RuntimeError::ExecStart {
                program,
                missing,
                reason,
                ..
            }) => {
                let line = format!("weft exec: cannot run {program:?}: {reason}\n");
                let _ = tx.try_send(out(Out::Stderr(line.into_bytes())));
                let _ = tx.try_send(out(Out::ExitCode(if missing { 127 } else { 126 })));
            }
            Err(e) => return Err(refusal(&start.task, e)),
        }
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Starts the two forwarding tasks of a running exec.
fn forward(
    mut inbound: Streaming<pb::ExecClientMessage>,
    session: ExecSession,
    tx: mpsc::Sender<Result<pb::ExecServerMessage, Status>>,
) {
    let ExecSession { input, mut events } = session;
    let (ended, mut ended_rx) = oneshot::channel::<()>();
    let errors = tx.clone();
    tokio::spawn(async move {
        // Dropped when this task ends: the inbound task then lets go.
        let _ended = ended;
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let (m, last) = match ev {
                        Some(ExecEvent::Stdout(b)) => (Out::Stdout(b), false),
                        Some(ExecEvent::Stderr(b)) => (Out::Stderr(b), false),
                        Some(ExecEvent::Exit(c)) => (Out::ExitCode(c), true),
                        None => return,
                    };
                    if tx.send(out(m)).await.is_err() || last {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    tokio::spawn(async move {
        let mut open = true;
        loop {
            let m = tokio::select! {
                _ = &mut ended_rx => break,
                m = inbound.message(), if open => m,
            };
            match m.map(|m| m.map(input_of)) {
                Ok(Some(Ok(Some(i)))) => {
                    tokio::select! {
                        _ = &mut ended_rx => break,
                        _ = input.send(i) => {}
                    }
                }
                Ok(Some(Ok(None))) => {}
                Ok(Some(Err(status))) => {
                    let _ = errors.send(Err(status)).await;
                    break;
                }
                // The client closed its side: its command runs on.
                Ok(None) => open = false,
                // The client went away.
                Err(_) => break,
            }
        }
        // Dropping the input kills a command still running.
        drop(input);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(args: &[&str]) -> pb::ExecStart {
        pb::ExecStart {
            task: "box".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn specs_are_checked_at_the_edge() {
        let s = pb::ExecStart {
            env: vec!["A=b".into()],
            user: "nobody".into(),
            tty: true,
            size: Some(pb::TtySize {
                width: 80,
                height: 24,
            }),
            ..start(&["sh"])
        };
        let spec = spec_of(&s).unwrap();
        assert_eq!(spec.user.as_deref(), Some("nobody"));
        assert_eq!(spec.workdir, None);
        assert_eq!(spec.size, Some((80, 24)));
        // A size without a terminal means nothing.
        let s = pb::ExecStart { tty: false, ..s };
        assert_eq!(spec_of(&s).unwrap().size, None);
        let code = |s: &pb::ExecStart| spec_of(s).unwrap_err().code();
        assert_eq!(code(&start(&[])), tonic::Code::InvalidArgument);
        let bad_env = pb::ExecStart {
            env: vec!["NOVALUE".into()],
            ..start(&["sh"])
        };
        assert_eq!(code(&bad_env), tonic::Code::InvalidArgument);
        let huge = pb::ExecStart {
            tty: true,
            size: Some(pb::TtySize {
                width: 70_000,
                height: 24,
            }),
            ..start(&["sh"])
        };
        assert_eq!(code(&huge), tonic::Code::InvalidArgument);
    }

    #[test]
    fn later_messages_are_bounded_input() {
        let m = |msg| pb::ExecClientMessage { msg: Some(msg) };
        assert_eq!(
            input_of(m(In::Stdin(b"hi".to_vec()))).unwrap(),
            Some(ExecInput::Stdin(b"hi".to_vec()))
        );
        assert_eq!(
            input_of(m(In::Stdin(vec![0; MAX_CHUNK + 1])))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            input_of(m(In::CloseStdin(true))).unwrap(),
            Some(ExecInput::CloseStdin)
        );
        assert_eq!(input_of(m(In::CloseStdin(false))).unwrap(), None);
        assert_eq!(
            input_of(m(In::Resize(pb::TtySize {
                width: 100,
                height: 30
            })))
            .unwrap(),
            Some(ExecInput::Resize(100, 30))
        );
        assert_eq!(
            input_of(m(In::Start(start(&["sh"])))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
