//! A session's heartbeats, on a task of their own.

use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;
use weft_proto::v1 as pb;
use weft_proto::v1::dispatcher_client::DispatcherClient;

/// Why a session's heartbeats stopped.
pub enum Beat {
    /// The leader refused one (not the leader any more, removed, …).
    Refused(tonic::Status),
    /// One went unanswered for two periods.
    TimedOut,
}

/// The session's heartbeat task, aborted with the session.
pub(super) struct Beats(pub(super) tokio::task::JoinHandle<Beat>);

impl Drop for Beats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session's heartbeats, every period `period` says (a new period starts
/// with a heartbeat), on a task of their own: a slow call on the session
/// (a report a busy leader takes long to answer, a renewal) must not hold
/// them back, or the leader would take a live node for a dead one. They go
/// as messages of one `Heartbeats` stream, each answered; a manager
/// without it gets unary calls. Ends at the first heartbeat refused or
/// unanswered for two periods. `on_beat` runs for each one answered, with
/// the time it took to be answered.
pub async fn heartbeats(
    mut client: DispatcherClient<tonic::transport::Channel>,
    node_id: String,
    mut period: watch::Receiver<Duration>,
    on_beat: impl Fn(Duration),
) -> Beat {
    let mut every = *period.borrow_and_update();
    let (beat_tx, beat_rx) = tokio::sync::mpsc::channel::<pb::HeartbeatRequest>(1);
    let opened = client.heartbeats(tokio_stream::wrappers::ReceiverStream::new(beat_rx));
    let mut answers = match tokio::time::timeout(every * 2, opened).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        Ok(Err(st)) if st.code() == Code::Unimplemented => None,
        Ok(Err(st)) => return Beat::Refused(st),
        Err(_) => return Beat::TimedOut,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = period.changed() => {
                // The session is over (it aborts this task as it ends).
                if r.is_err() {
                    return Beat::TimedOut;
                }
                every = *period.borrow_and_update();
                tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                continue;
            }
        }
        let req = pb::HeartbeatRequest {
            node_id: node_id.clone(),
            stopping: false,
        };
        let sent = tokio::time::Instant::now();
        let answered = match answers.as_mut() {
            Some(answers) => {
                let beat = async {
                    beat_tx
                        .send(req)
                        .await
                        .map_err(|_| tonic::Status::unavailable("the heartbeat stream closed"))?;
                    match answers.message().await? {
                        Some(_) => Ok(()),
                        None => Err(tonic::Status::unavailable("the heartbeat stream ended")),
                    }
                };
                tokio::time::timeout(every * 2, beat).await
            }
            None => tokio::time::timeout(every * 2, client.heartbeat(req))
                .await
                .map(|r| r.map(drop)),
        };
        match answered {
            Ok(Ok(())) => on_beat(sent.elapsed()),
            Ok(Err(st)) => return Beat::Refused(st),
            Err(_) => return Beat::TimedOut,
        }
    }
}
