//! [`FakeRuntime`]: a recording [`TaskRuntime`] for tests of the worker.
//! Nothing runs; tasks are `Running` with made-up pids until the test ends
//! them with [`FakeRuntime::exit`] / [`FakeRuntime::fail`] or the worker
//! stops them (then they report `Exited { signal: SIGTERM }`).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch};

use super::{Error, Result, TaskRuntime, TaskSpec, TaskState, TaskStatus, validate, validate_id};

/// One call the worker made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    /// `adopt()`.
    Adopt,
    /// `start(spec)`.
    Start(TaskSpec),
    /// `stop(id, grace)`.
    Stop(String, Option<Duration>),
    /// `remove(id)`.
    Remove(String),
    /// `exec(id, req)`: the task and the command.
    Exec(String, Vec<String>),
}

/// A recording task runtime; see the module docs.
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    events: broadcast::Sender<TaskStatus>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<FakeCall>,
    tasks: BTreeMap<String, (TaskSpec, watch::Sender<TaskStatus>)>,
    /// Errors the next `start` calls report as `Failed`.
    start_failures: VecDeque<String>,
    /// What the next `exec` calls return (then: exit 0).
    exec_results: VecDeque<super::ExecOutput>,
    next_pid: i32,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// An empty runtime.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_pid: 1000,
                ..State::default()
            }),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The spec a task was started with.
    pub fn spec(&self, id: &str) -> Option<TaskSpec> {
        self.lock().tasks.get(id).map(|(s, _)| s.clone())
    }

    /// Makes the next `start` report `Failed { error }`.
    pub fn fail_next_start(&self, error: impl Into<String>) {
        self.lock().start_failures.push_back(error.into());
    }

    /// Pretends a task that "was running before the restart" exists, for
    /// adoption tests.
    pub fn insert(&self, spec: TaskSpec, state: TaskState) {
        let status = TaskStatus {
            id: spec.id.clone(),
            finished_at: state.is_terminal().then(SystemTime::now),
            state,
            started_at: Some(SystemTime::now()),
        };
        let id = spec.id.clone();
        self.lock()
            .tasks
            .insert(id, (spec, watch::channel(status).0));
    }

    /// Ends a running task with `code`, as if its process exited.
    pub fn exit(&self, id: &str, code: i32) {
        self.finish(
            id,
            TaskState::Exited {
                code: Some(code),
                signal: None,
                oom: false,
            },
        );
    }

    /// Ends a running task with a failure.
    pub fn fail(&self, id: &str, error: impl Into<String>) {
        self.finish(
            id,
            TaskState::Failed {
                error: error.into(),
            },
        );
    }

    fn finish(&self, id: &str, state: TaskState) {
        let status = {
            let st = self.lock();
            let Some((_, tx)) = st.tasks.get(id) else {
                return;
            };
            if tx.borrow().state.is_terminal() {
                return;
            }
            let mut s = tx.borrow().clone();
            s.state = state;
            s.finished_at = Some(SystemTime::now());
            tx.send_replace(s.clone());
            s
        };
        let _ = self.events.send(status);
    }
}

#[async_trait::async_trait]
impl TaskRuntime for FakeRuntime {
    async fn adopt(&self) -> Result<Vec<TaskStatus>> {
        self.lock().calls.push(FakeCall::Adopt);
        Ok(self.list())
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus> {
        validate(spec)?;
        let status = {
            let mut st = self.lock();
            st.calls.push(FakeCall::Start(spec.clone()));
            if let Some((old, tx)) = st.tasks.get(&spec.id) {
                let cur = tx.borrow().clone();
                if old == spec && !cur.state.is_terminal() {
                    return Ok(cur);
                }
                return Err(Error::AlreadyExists {
                    id: spec.id.clone(),
                });
            }
            let now = SystemTime::now();
            let state = match st.start_failures.pop_front() {
                Some(error) => TaskState::Failed { error },
                None => {
                    st.next_pid += 1;
                    TaskState::Running { pid: st.next_pid }
                }
            };
            let status = TaskStatus {
                id: spec.id.clone(),
                finished_at: state.is_terminal().then_some(now),
                state,
                started_at: Some(now),
            };
            st.tasks.insert(
                spec.id.clone(),
                (spec.clone(), watch::channel(status.clone()).0),
            );
            status
        };
        let _ = self.events.send(status.clone());
        Ok(status)
    }

    async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()> {
        {
            let mut st = self.lock();
            st.calls.push(FakeCall::Stop(id.to_owned(), grace));
            if !st.tasks.contains_key(id) {
                return Err(Error::NotFound { id: id.to_owned() });
            }
        }
        self.finish(
            id,
            TaskState::Exited {
                code: None,
                signal: Some(libc::SIGTERM),
                oom: false,
            },
        );
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let mut st = self.lock();
        st.calls.push(FakeCall::Remove(id.to_owned()));
        st.tasks.remove(id);
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<TaskStatus> {
        let mut rx = self
            .lock()
            .tasks
            .get(id)
            .map(|(_, tx)| tx.subscribe())
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if let Ok(s) = rx.wait_for(|s| s.state.is_terminal()).await {
            return Ok(s.clone());
        }
        // Removed while waiting: report the last status.
        let last = rx.borrow().clone();
        Ok(last)
    }

    fn status(&self, id: &str) -> Option<TaskStatus> {
        self.lock().tasks.get(id).map(|(_, tx)| tx.borrow().clone())
    }

    fn list(&self) -> Vec<TaskStatus> {
        self.lock()
            .tasks
            .values()
            .map(|(_, tx)| tx.borrow().clone())
            .collect()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        PathBuf::from("/nonexistent/weft-fake-runtime")
            .join(id)
            .join("log")
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskStatus> {
        self.events.subscribe()
    }

    /// The check of the task's spec, with no image to merge.
    fn health_check(&self, id: &str) -> Option<crate::health::HealthCheck> {
        let st = self.state.lock().expect("state");
        let (spec, _) = st.tasks.get(id)?;
        let c = spec.container.as_ref()?;
        crate::health::resolve(c.health.as_ref(), None)
    }

    async fn exec(&self, id: &str, req: &super::ExecRequest) -> Result<super::ExecOutput> {
        let mut st = self.state.lock().expect("state");
        st.calls
            .push(FakeCall::Exec(id.to_owned(), req.args.clone()));
        if !st.tasks.contains_key(id) {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        Ok(st.exec_results.pop_front().unwrap_or(super::ExecOutput {
            exit_code: Some(0),
            output: Vec::new(),
        }))
    }
}

impl FakeRuntime {
    /// Makes the next `exec` return `out`.
    pub fn push_exec_result(&self, out: super::ExecOutput) {
        self.state
            .lock()
            .expect("state")
            .exec_results
            .push_back(out);
    }
}
