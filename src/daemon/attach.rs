//! `weft run` without `-d`: the daemon's `Attach`, which follows one local
//! task from its first line of output to its final status.
//!
//! ```text
//!  wait until the task is in this node's runtime ──▶ follow its log from the
//!  (or its node refused it: end with that status)     first line (ends when
//!                                                      the task has ended)
//!                                                         │
//!                   last message: the final status ◀──────┘
//! ```
//!
//! The final status is taken from the runtime's events as well as its
//! table: a task run with `--rm` may be removed (and forgotten by the
//! runtime) by the time its output has all been sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;
use weft_proto::v1 as pb;
use weft_worker::runtime::{RoutedRuntime, TaskRuntime, TaskStatus};

use super::{NodeService, not_member, read_task_log};

/// The stream `Attach` answers with.
pub(super) type AttachStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AttachMessage, Status>> + Send>>;

/// How long `Attach` waits for a task the managers have just made to reach
/// this node's config.
const CONFIG_WAIT: Duration = Duration::from_secs(30);

/// Whether `s` is a whole task ID (16 hex digits).
fn is_task_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How often the wait for a task's start looks again without a change.
const POLL: Duration = Duration::from_millis(100);

/// The last status the runtime gave of one task, kept from its events.
#[derive(Clone, Default)]
struct Last(Arc<Mutex<Option<TaskStatus>>>);

impl Last {
    fn note(&self, s: TaskStatus) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(s);
        }
    }

    fn get(&self) -> Option<TaskStatus> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// Keeps `last` up to date with the runtime's events for `id` until the
/// receiver of `alive` is dropped.
fn watch_events(
    runtime: &Arc<RoutedRuntime>,
    id: String,
    last: Last,
    alive: tokio::sync::mpsc::Sender<Result<pb::AttachMessage, Status>>,
) {
    let mut events = runtime.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(s) if s.id == id => last.note(s),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = alive.closed() => break,
            }
        }
    });
}

/// What the node last reported of task `id` to the managers, if that is a
/// refusal (the runtime never knew it: e.g. an image it could not pull).
fn refused(report: &Option<pb::StatusReport>, id: &str) -> Option<pb::TaskStatus> {
    report
        .as_ref()?
        .tasks
        .iter()
        .find(|t| t.task_id == id)
        .and_then(|t| t.status.clone())
        .filter(|s| matches!(s.state(), pb::TaskState::Failed | pb::TaskState::Rejected))
}

/// Sends to the client while it listens; once it has gone, sends nothing
/// more (the attach goes on to its end when the task is to be removed).
pub(super) struct Client {
    tx: tokio::sync::mpsc::Sender<Result<pb::AttachMessage, Status>>,
    gone: bool,
}

impl Client {
    /// Whether the client has gone.
    pub(super) fn gone(&self) -> bool {
        self.gone
    }

    pub(super) async fn send(&mut self, m: Result<pb::AttachMessage, Status>) {
        if !self.gone && self.tx.send(m).await.is_err() {
            self.gone = true;
        }
    }

    fn exit(s: pb::TaskStatus) -> Result<pb::AttachMessage, Status> {
        Ok(pb::AttachMessage {
            lines: Vec::new(),
            exit: Some(s),
        })
    }
}

/// Waits until the runtime has task `id` (its status in `last`); `Err`
/// ends the attach with that message (its node refused the task, or it
/// was removed before it started), `Ok(false)`: the client went away and
/// nothing waits for the end.
async fn until_known(
    runtime: &RoutedRuntime,
    id: &str,
    last: &Last,
    config: &mut tokio::sync::watch::Receiver<Option<Arc<pb::NodeConfig>>>,
    report: &mut tokio::sync::watch::Receiver<Option<pb::StatusReport>>,
    client: &Client,
    remove: bool,
) -> Result<bool, Result<pb::AttachMessage, Status>> {
    loop {
        if let Some(s) = runtime.status(id) {
            last.note(s);
        }
        if last.get().is_some() {
            return Ok(true);
        }
        if let Some(s) = refused(&report.borrow(), id) {
            return Err(Client::exit(s));
        }
        let assigned = config
            .borrow()
            .as_ref()
            .is_some_and(|c| c.tasks.iter().any(|t| t.id == id));
        if !assigned {
            return Err(Err(Status::not_found(format!(
                "task {id} was removed from this node before it started"
            ))));
        }
        tokio::select! {
            _ = report.changed() => {}
            _ = config.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = client.tx.closed(), if !remove => return Ok(false),
        }
    }
}

/// How long `weft run --rm` waits for its node to remove the ended task.
const REMOVE_WAIT: Duration = Duration::from_secs(60);

/// Waits until this node's runtime has forgotten task `id` and deleted its
/// files (its container, snapshot and task directory go before those), so
/// that `weft run --rm` returns with nothing of the task left, as
/// `docker run --rm` does.
async fn until_removed(runtime: &RoutedRuntime, id: &str) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
    while runtime.status(id).is_some() || runtime.log_path(id).exists() {
        if tokio::time::Instant::now() > deadline {
            return Err(Status::deadline_exceeded(format!(
                "this node did not remove task {id} within {} s; see `weft ps -a` and the \
                 daemon's log",
                REMOVE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Where an attach takes the task's output from.
pub(super) enum Output {
    /// Its log, from the first line (`Attach`).
    Log,
    /// Its live stdio with its input (`AttachStdio`; see `attach_stdio`).
    Stdio(Box<super::attach_stdio::Inbound>, bool),
}

/// Sends task `id`'s output from its first line (or, with `from_now`, from
/// now on) until it has ended.
pub(super) async fn follow(
    runtime: &Arc<RoutedRuntime>,
    id: &str,
    client: &mut Client,
    from_now: bool,
) {
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel(4);
    let sink: weft_worker::logs::LogSink = Box::new(move |piece| match piece {
        Ok(lines) if lines.is_empty() => !lines_tx.is_closed(),
        piece => lines_tx.blocking_send(piece).is_ok(),
    });
    let opts = weft_worker::logs::reader::ReadOptions {
        tail: from_now.then_some(0),
        since: None,
        follow: true,
    };
    if let Err(e) = read_task_log(runtime, id, opts, sink) {
        // A host process that never started has no log: only the status
        // is left to tell.
        tracing::debug!(task = %id, error = %e.message(), "attach without a log");
        return;
    }
    while let Some(piece) = lines_rx.recv().await {
        if client.gone {
            // Nobody reads: dropping the receiver stops the reader at its
            // next batch.
            return;
        }
        let m = match piece {
            Ok(lines) => Ok(pb::AttachMessage { lines, exit: None }),
            Err(e) => Err(Status::internal(format!("reading the task's log: {e}"))),
        };
        client.send(m).await;
    }
}

impl NodeService {
    /// `Attach`: see the module header.
    pub(super) async fn attach_task(&self, r: pb::AttachRequest) -> Result<AttachStream, Status> {
        self.attach_with(r, Output::Log).await
    }

    /// `Attach` and `AttachStdio`, with the output (and input) of `how`.
    pub(super) async fn attach_with(
        &self,
        r: pb::AttachRequest,
        how: Output,
    ) -> Result<AttachStream, Status> {
        self.locked.refuse()?;
        let (mut config, mut report) = {
            let guard = self.active.lock().await;
            let a = guard.as_ref().ok_or_else(not_member)?;
            (a.agent.config(), a.agent.report_handle().subscribe())
        };
        let id = match self.local_task(&r.task).await {
            Ok(id) => id,
            // `weft run` attaches by ID as soon as the managers have the
            // task: its node's config may not have arrived yet.
            Err(e) if e.code() == tonic::Code::NotFound && is_task_id(&r.task) => {
                let arrived = tokio::time::timeout(
                    CONFIG_WAIT,
                    config.wait_for(|c| {
                        c.as_ref()
                            .is_some_and(|c| c.tasks.iter().any(|t| t.id == r.task))
                    }),
                )
                .await;
                if !matches!(arrived, Ok(Ok(_))) {
                    return Err(e);
                }
                r.task.clone()
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let last = Last::default();
        watch_events(&self.runtime, id.clone(), last.clone(), tx.clone());
        let runtime = self.runtime.clone();
        let active = self.active.clone();
        let remove = r.remove;
        tokio::spawn(async move {
            let mut client = Client { tx, gone: false };
            let known = until_known(
                &runtime,
                &id,
                &last,
                &mut config,
                &mut report,
                &client,
                remove,
            )
            .await;
            let end = match known {
                Ok(false) => return,
                Ok(true) => {
                    match how {
                        Output::Log => follow(&runtime, &id, &mut client, false).await,
                        Output::Stdio(inbound, from_now) => {
                            super::attach_stdio::follow_stdio(
                                &runtime,
                                &id,
                                &mut client,
                                inbound,
                                from_now,
                            )
                            .await
                        }
                    }
                    if client.gone {
                        if !remove {
                            return;
                        }
                        // --rm without a client: only the end matters.
                        let _ = runtime.wait(&id).await;
                    }
                    if let Some(s) = runtime.status(&id) {
                        last.note(s);
                    }
                    match last.get() {
                        Some(s) if s.state.is_terminal() => {
                            Client::exit(weft_worker::reconcile::task_status(&s.state))
                        }
                        _ => Err(Status::aborted(format!(
                            "task {id}'s output ended but this node has no final status for \
                             it (removed while it ran?); see `weft ps -a`"
                        ))),
                    }
                }
                Err(end) => end,
            };
            let removed = match remove {
                true => match super::tasks::remove_through_managers(&active, &id).await {
                    Ok(()) => until_removed(&runtime, &id).await,
                    Err(e) => Err(e),
                },
                false => Ok(()),
            };
            if let Err(e) = removed.or_else(|e| match e.code() {
                tonic::Code::NotFound => Ok(()),
                _ => Err(e),
            }) {
                tracing::warn!(task = %id, error = %e.message(), "could not remove a --rm task");
                client
                    .send(Err(Status::new(
                        e.code(),
                        format!("removing task {id} (--rm): {}", e.message()),
                    )))
                    .await;
                return;
            }
            client.send(end).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
