//! One [`TaskRuntime`] for the worker over two: tasks with an image run as
//! containers ([`ContainerdRuntime`], connected on first use), tasks
//! without one as host processes (the process runtime, unisolated).
//!
//! ```text
//!  start(spec) ── spec.container? ──yes──▶ containerd (connect once; if it cannot be
//!       │                                  reached the task fails with why, naming the socket)
//!       └──no──▶ process runtime
//!  stop / remove / wait / status / log_path ──▶ whichever runtime knows the id
//!  subscribe ──▶ both runtimes' status changes, forwarded into one channel
//! ```
//!
//! containerd is optional for a node that runs no containers: the daemon
//! starts without it, and adoption skips it when its socket is absent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OnceCell, broadcast};

use super::containerd::ContainerdRuntime;
use super::external::ExternalRuntime;
use super::{NetworkReady, Result, TaskRuntime, TaskSpec, TaskState, TaskStatus, validate};

/// Connects the containerd runtime (and checks containerd's version and
/// namespace); the error is shown to the user as the task's failure.
pub type Connect = Arc<
    dyn Fn() -> BoxFuture<'static, std::result::Result<ContainerdRuntime, String>> + Send + Sync,
>;

/// Routes each task to the runtime that runs its kind.
pub struct RoutedRuntime {
    process: Arc<dyn TaskRuntime>,
    external: Arc<ExternalRuntime>,
    containers: OnceCell<ContainerdRuntime>,
    connect: Connect,
    /// containerd's socket: adoption looks for it before connecting.
    socket: PathBuf,
    /// Container tasks that failed because containerd could not be
    /// reached: kept (as the runtimes keep theirs) until removed.
    unreached: Mutex<BTreeMap<String, TaskStatus>>,
    events: broadcast::Sender<TaskStatus>,
}

impl RoutedRuntime {
    /// Routes between `process` and a containerd runtime made by `connect`
    /// on first use.
    pub fn new(
        process: Arc<dyn TaskRuntime>,
        external: Arc<ExternalRuntime>,
        socket: PathBuf,
        connect: Connect,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        forward(process.subscribe(), events.clone());
        forward(external.subscribe(), events.clone());
        Arc::new(Self {
            process,
            external,
            containers: OnceCell::new(),
            connect,
            socket,
            unreached: Mutex::new(BTreeMap::new()),
            events,
        })
    }

    async fn containers(&self) -> std::result::Result<&ContainerdRuntime, String> {
        self.containers
            .get_or_try_init(|| async {
                let rt = (self.connect)().await?;
                forward(rt.subscribe(), self.events.clone());
                Ok(rt)
            })
            .await
    }

    /// The runtime that knows `id` (containers first: the process runtime
    /// is the fallback for unknown ids).
    fn owner(&self, id: &str) -> &dyn TaskRuntime {
        if self.external.status(id).is_some() {
            return self.external.as_ref();
        }
        match self.containers.get() {
            Some(c) if c.status(id).is_some() => c,
            _ => self.process.as_ref(),
        }
    }
}

/// Copies every status change of one runtime into the shared channel.
fn forward(mut rx: broadcast::Receiver<TaskStatus>, tx: broadcast::Sender<TaskStatus>) {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(s) => {
                    let _ = tx.send(s);
                }
                // Subscribers re-read `list` on a lag of their own; make
                // them see one.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

#[async_trait::async_trait]
impl TaskRuntime for RoutedRuntime {
    async fn adopt(&self) -> Result<Vec<TaskStatus>> {
        let mut out = self.process.adopt().await?;
        out.extend(self.external.adopt().await?);
        if self.socket.exists() {
            match self.containers().await {
                Ok(c) => out.extend(c.adopt().await?),
                Err(e) => tracing::warn!(error = %e, "containers cannot be adopted"),
            }
        } else {
            tracing::info!(socket = %self.socket.display(), "no containerd socket: no containers to adopt");
        }
        Ok(out)
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus> {
        self.start_when(spec, NetworkReady::now()).await
    }

    async fn start_when(&self, spec: &TaskSpec, network: NetworkReady) -> Result<TaskStatus> {
        if spec.external.is_some() {
            return self.external.start_when(spec, network).await;
        }
        if spec.container.is_none() {
            return self.process.start_when(spec, network).await;
        }
        match self.containers().await {
            Ok(c) => c.start_when(spec, network).await,
            Err(error) => {
                validate(spec)?;
                let status = TaskStatus {
                    id: spec.id.clone(),
                    state: TaskState::Failed { error },
                    started_at: None,
                    finished_at: Some(std::time::SystemTime::now()),
                };
                self.unreached
                    .lock()
                    .expect("unreached")
                    .insert(spec.id.clone(), status.clone());
                let _ = self.events.send(status.clone());
                Ok(status)
            }
        }
    }

    async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()> {
        self.owner(id).stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.unreached.lock().expect("unreached").remove(id);
        self.external.remove(id).await?;
        if let Some(c) = self.containers.get() {
            c.remove(id).await?;
        }
        self.process.remove(id).await
    }

    async fn wait(&self, id: &str) -> Result<TaskStatus> {
        if let Some(s) = self.unreached.lock().expect("unreached").get(id) {
            return Ok(s.clone());
        }
        self.owner(id).wait(id).await
    }

    fn status(&self, id: &str) -> Option<TaskStatus> {
        if let Some(s) = self.unreached.lock().expect("unreached").get(id) {
            return Some(s.clone());
        }
        self.owner(id).status(id)
    }

    fn list(&self) -> Vec<TaskStatus> {
        let mut all = self.process.list();
        all.extend(self.external.list());
        if let Some(c) = self.containers.get() {
            all.extend(c.list());
        }
        all.extend(self.unreached.lock().expect("unreached").values().cloned());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.owner(id).log_path(id)
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskStatus> {
        self.events.subscribe()
    }

    fn pulling(&self, id: &str) -> bool {
        self.containers.get().is_some_and(|c| c.pulling(id))
    }

    fn health_check(&self, id: &str) -> Option<crate::health::HealthCheck> {
        self.owner(id).health_check(id)
    }

    async fn exec(&self, id: &str, req: &super::ExecRequest) -> Result<super::ExecOutput> {
        self.owner(id).exec(id, req).await
    }

    async fn exec_session(&self, id: &str, spec: &super::ExecSpec) -> Result<super::ExecSession> {
        self.owner(id).exec_session(id, spec).await
    }

    fn stdio(&self, id: &str, from_start: bool) -> Option<super::TaskStdio> {
        self.owner(id).stdio(id, from_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerSpec, FakeCall, FakeRuntime};

    fn spec(id: &str, image: Option<&str>) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            name: format!("{id}.1"),
            command: vec!["sleep".into(), "1".into()],
            env: Default::default(),
            netns: "/run/weft/netns/x".into(),
            resolv_conf: None,
            hostname: None,
            container: image.map(|i| {
                Box::new(ContainerSpec {
                    image: i.into(),
                    ..ContainerSpec::default()
                })
            }),
            stop: Default::default(),
            log: None,
            external: None,
        }
    }

    fn unreachable() -> Connect {
        Arc::new(|| {
            Box::pin(async {
                Err("containerd is not running: cannot connect to /nowhere.sock".to_string())
            })
        })
    }

    #[tokio::test]
    async fn processes_go_to_the_process_runtime_and_containers_fail_clearly_without_containerd() {
        let fake = Arc::new(FakeRuntime::new());
        let records = tempfile::tempdir().expect("tempdir");
        let external = ExternalRuntime::new(records.path());
        let rt = RoutedRuntime::new(
            fake.clone(),
            external,
            "/nowhere.sock".into(),
            unreachable(),
        );
        let mut events = rt.subscribe();

        // No socket: adoption asks only the process runtime.
        assert!(rt.adopt().await.expect("adopt").is_empty());

        let p = rt.start(&spec("p1", None)).await.expect("process");
        assert!(matches!(p.state, TaskState::Running { .. }), "{p:?}");
        assert!(fake.calls().contains(&FakeCall::Start(spec("p1", None))));
        assert_eq!(events.recv().await.expect("event").id, "p1");

        let c = rt
            .start(&spec("c1", Some("busybox")))
            .await
            .expect("container");
        match &c.state {
            TaskState::Failed { error } => {
                assert!(error.contains("containerd is not running"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !fake
                .calls()
                .iter()
                .any(|c| matches!(c, FakeCall::Start(s) if s.id == "c1")),
            "a container never goes to the process runtime"
        );
        // Kept, so the worker reports it and does not start it again.
        assert_eq!(rt.status("c1"), Some(c.clone()));
        assert_eq!(
            rt.list().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["c1", "p1"]
        );
        assert_eq!(rt.wait("c1").await.expect("wait"), c);
        rt.remove("c1").await.expect("remove");
        assert_eq!(rt.status("c1"), None);
    }
}
