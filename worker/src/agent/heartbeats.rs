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
    /// One went unanswered for two periods (longer when this process was
    /// seen starved: [`answered_within`]).
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
/// unanswered for two periods (or longer when this process is seen
/// starved at the wait's end: [`answered_within`]). `on_beat` runs for
/// each one answered, with the time it took to be answered.
pub async fn heartbeats(
    mut client: DispatcherClient<tonic::transport::Channel>,
    node_id: String,
    mut period: watch::Receiver<Duration>,
    on_beat: impl Fn(Duration),
) -> Beat {
    let mut every = *period.borrow_and_update();
    let (beat_tx, beat_rx) = tokio::sync::mpsc::channel::<pb::HeartbeatRequest>(1);
    let opened = client.heartbeats(tokio_stream::wrappers::ReceiverStream::new(beat_rx));
    let mut answers = match answered_within(every, opened).await {
        Some(Ok(r)) => Some(r.into_inner()),
        Some(Err(st)) if st.code() == Code::Unimplemented => None,
        Some(Err(st)) => return Beat::Refused(st),
        None => return Beat::TimedOut,
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
                answered_within(every, beat).await
            }
            None => answered_within(every, client.heartbeat(req))
                .await
                .map(|r| r.map(drop)),
        };
        match answered {
            Some(Ok(())) => on_beat(sent.elapsed()),
            Some(Err(st)) => return Beat::Refused(st),
            None => return Beat::TimedOut,
        }
    }
}

/// How many times a starved wait is given one more period.
const STARVED_EXTENSIONS: u32 = 3;

/// `answer`, if it comes within two heartbeat periods `every`; `None`
/// otherwise. A wait whose end this process sees over a quarter of a
/// period late was starved then (a machine out of CPU, the process
/// paused): an answer that came meanwhile may still be unread, on a
/// connection no task had the time to poll, so the wait goes on for
/// another period from the moment it is seen, at most three times. Only
/// the lateness seen at a wait's end counts: a process starved earlier in
/// the wait but on time at its end gives up at two periods. Without that,
/// a node starved for two periods took the leader for gone, dropped a live
/// session and asked for a whole config again, which costs the leader most
/// when many nodes starve at once. A leader really gone is given up on
/// after five periods of this process's own running at most (in wall
/// time, plus how late it was seen each time).
pub(super) async fn answered_within<T>(
    every: Duration,
    answer: impl std::future::Future<Output = T>,
) -> Option<T> {
    waited(every, answer).await.0
}

/// Whether a wait whose end was seen `late`, after `extended` extensions,
/// gives up: seen within a quarter period of its time, this process was
/// not starved then.
fn gives_up(late: Duration, every: Duration, extended: u32) -> bool {
    late <= every / 4 || extended >= STARVED_EXTENSIONS
}

/// [`answered_within`], and how many times the wait was extended.
async fn waited<T>(
    every: Duration,
    answer: impl std::future::Future<Output = T>,
) -> (Option<T>, u32) {
    tokio::pin!(answer);
    let mut deadline = tokio::time::Instant::now() + every * 2;
    let mut extended = 0;
    loop {
        tokio::select! {
            biased;
            r = &mut answer => return (Some(r), extended),
            () = tokio::time::sleep_until(deadline) => {
                let now = tokio::time::Instant::now();
                let late = now.saturating_duration_since(deadline);
                if gives_up(late, every, extended) {
                    return (None, extended);
                }
                extended += 1;
                tracing::debug!(late_ms = late.as_millis() as u64, "heartbeat wait starved: one more period");
                deadline = now + every;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks the runtime's only thread for `d` (a starved process).
    fn starve(d: Duration) {
        std::thread::sleep(d);
    }

    #[test]
    fn a_wait_seen_on_time_gives_up_and_a_starved_one_three_times_at_most() {
        let every = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert!(gives_up(ms(0), every, 0), "on time");
        assert!(gives_up(ms(250), every, 0), "a quarter late is on time");
        assert!(!gives_up(ms(251), every, 0), "starved");
        assert!(!gives_up(ms(5000), every, 2), "starved, third extension");
        assert!(gives_up(ms(5000), every, 3), "three extensions at most");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_read_late_because_the_process_starved_still_counts() {
        let every = Duration::from_millis(100);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The answer comes once the process runs again, one turn after the
        // wait's end is seen (late).
        tokio::spawn(async move {
            starve(every * 4);
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        let (answer, extended) = waited(every, rx).await;
        assert_eq!(answer, Some(Ok(())));
        assert!(extended >= 1, "answered without an extension");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_process_always_starved_still_gives_up() {
        let every = Duration::from_millis(100);
        // Every turn of the runtime takes a period and a half.
        tokio::spawn(async move {
            loop {
                starve(every * 3 / 2);
                tokio::task::yield_now().await;
            }
        });
        let never = std::future::pending::<()>();
        assert_eq!(waited(every, never).await, (None, STARVED_EXTENSIONS));
    }
}
