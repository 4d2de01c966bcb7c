//! Tasks that stand for another runtime's container (CNI, Docker): there is
//! no process to run. The data plane wires the runtime's namespace (pinned
//! as the task's); "starting" the task only says that the pass that wired
//! it went through, so a CNI ADD waiting on it returns once the interface
//! is in.
//!
//! ```text
//!  start(spec{external: source})  ── source still the namespace pinned as the task's?
//!        yes: Running (pid 0)                no: Failed ("namespace is gone")
//!  every SWEEP: a Running task whose source no longer names its pinned
//!        namespace (the container went, the runtime deleted its pin)
//!        ─▶ Exited(0): the managers then remove it (these tasks auto-remove)
//!  stop ─▶ Exited(0) · remove ─▶ forgotten (record deleted)
//! ```
//!
//! Records live under `<dir>/<task id>.json` so a restarted daemon knows
//! them again ([`TaskRuntime::adopt`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Error, Result, TaskRuntime, TaskSpec, TaskState, TaskStatus, validate_id};

/// How often running tasks' namespaces are checked.
pub const SWEEP: Duration = Duration::from_secs(2);

/// What the runtime keeps of one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    /// The runtime's path of the namespace.
    source: PathBuf,
    /// weft's pin of it.
    pin: PathBuf,
    status: TaskStatus,
}

/// The runtime of foreign containers' tasks.
pub struct ExternalRuntime {
    dir: PathBuf,
    tasks: Mutex<BTreeMap<String, Record>>,
    events: broadcast::Sender<TaskStatus>,
}

/// Whether `a` and `b` name the same network namespace (nsfs device and
/// inode); false when either is gone.
pub fn same_netns(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

impl ExternalRuntime {
    /// A runtime keeping its records in `dir`, with its sweep running on
    /// the current tokio runtime for as long as the returned value lives.
    pub fn new(dir: impl Into<PathBuf>) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let rt = Arc::new(Self {
            dir: dir.into(),
            tasks: Mutex::new(BTreeMap::new()),
            events,
        });
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(rt) = weak.upgrade() else { return };
                rt.sweep();
            }
        });
        rt
    }

    /// Ends every running task whose container's namespace is gone.
    pub fn sweep(&self) {
        let gone: Vec<String> = self
            .tasks
            .lock()
            .expect("external tasks")
            .iter()
            .filter(|(_, r)| !r.status.state.is_terminal() && !same_netns(&r.source, &r.pin))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracing::info!(task = %id, "the container's network namespace is gone: its task ends");
            self.end(&id);
        }
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn save(&self, id: &str, r: &Record) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            op: "create",
            path: self.dir.clone(),
            source,
        })?;
        let path = self.record_path(id);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(r).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::Io {
                op: "write",
                path,
                source,
            })
    }

    /// Marks task `id` exited (its interface stays until it is removed).
    fn end(&self, id: &str) {
        let mut tasks = self.tasks.lock().expect("external tasks");
        let Some(r) = tasks.get_mut(id) else { return };
        if r.status.state.is_terminal() {
            return;
        }
        r.status.state = TaskState::Exited {
            code: Some(0),
            signal: None,
            oom: false,
        };
        r.status.finished_at = Some(SystemTime::now());
        let (r, status) = (r.clone(), r.status.clone());
        drop(tasks);
        if let Err(e) = self.save(id, &r) {
            tracing::warn!(task = %id, error = %e, "cannot record the end of a foreign container's task");
        }
        let _ = self.events.send(status);
    }
}

#[async_trait::async_trait]
impl TaskRuntime for ExternalRuntime {
    async fn adopt(&self) -> Result<Vec<TaskStatus>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "read",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let r: Record = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::warn!(path = %path.display(), "unreadable foreign task record: skipped");
                    continue;
                }
            };
            out.push(r.status.clone());
            self.tasks
                .lock()
                .expect("external tasks")
                .insert(r.status.id.clone(), r);
        }
        self.sweep();
        Ok(out)
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus> {
        validate_id(&spec.id)?;
        let Some(source) = spec.external.clone() else {
            return Err(Error::InvalidSpec {
                id: spec.id.clone(),
                reason: "not a foreign container's task",
            });
        };
        if let Some(r) = self.tasks.lock().expect("external tasks").get(&spec.id)
            && r.source == source
        {
            return Ok(r.status.clone());
        }
        let now = SystemTime::now();
        let state = if same_netns(&source, &spec.netns) {
            TaskState::Running { pid: 0 }
        } else {
            TaskState::Failed {
                error: format!(
                    "the container's network namespace {} is gone or is not the one weft wired",
                    source.display()
                ),
            }
        };
        let status = TaskStatus {
            id: spec.id.clone(),
            finished_at: state.is_terminal().then_some(now),
            started_at: Some(now),
            state,
        };
        let r = Record {
            source,
            pin: spec.netns.clone(),
            status: status.clone(),
        };
        self.save(&spec.id, &r)?;
        self.tasks
            .lock()
            .expect("external tasks")
            .insert(spec.id.clone(), r);
        let _ = self.events.send(status.clone());
        Ok(status)
    }

    async fn stop(&self, id: &str, _grace: Option<Duration>) -> Result<()> {
        self.end(id);
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let known = self.tasks.lock().expect("external tasks").remove(id);
        if known.is_some() {
            let path = self.record_path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        op: "remove",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<TaskStatus> {
        super::wait_until_ended(self.events.subscribe(), id, || self.status(id)).await
    }

    fn status(&self, id: &str) -> Option<TaskStatus> {
        self.tasks
            .lock()
            .expect("external tasks")
            .get(id)
            .map(|r| r.status.clone())
    }

    fn list(&self) -> Vec<TaskStatus> {
        self.tasks
            .lock()
            .expect("external tasks")
            .values()
            .map(|r| r.status.clone())
            .collect()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        // No process, no log: a path that never exists.
        self.dir.join(format!("{id}.nolog"))
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskStatus> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, source: &Path, pin: &Path) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            name: id.into(),
            command: Vec::new(),
            env: BTreeMap::new(),
            netns: pin.to_owned(),
            resolv_conf: None,
            hostname: None,
            container: None,
            stop: Default::default(),
            log: None,
            external: Some(source.to_owned()),
        }
    }

    /// A file stands in for a namespace: what matters is that the source
    /// and the pin are the same inode (a hard link), and when not.
    #[tokio::test]
    async fn a_foreign_task_runs_while_its_namespace_is_the_pinned_one_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (source, pin) = (dir.path().join("src"), dir.path().join("pin"));
        std::fs::write(&source, b"").unwrap();
        std::fs::hard_link(&source, &pin).unwrap();
        let rt = ExternalRuntime::new(dir.path().join("records"));
        let s = rt.start(&spec("t1", &source, &pin)).await.unwrap();
        assert_eq!(s.state, TaskState::Running { pid: 0 });
        // Again: the same status, nothing new.
        assert_eq!(rt.start(&spec("t1", &source, &pin)).await.unwrap(), s);
        // A source that is not the pinned namespace fails at once.
        let other = dir.path().join("other");
        std::fs::write(&other, b"").unwrap();
        let f = rt.start(&spec("t2", &other, &pin)).await.unwrap();
        assert!(matches!(f.state, TaskState::Failed { .. }), "{f:?}");

        // A restarted daemon knows t1 again, still running.
        let again = ExternalRuntime::new(dir.path().join("records"));
        let adopted = again.adopt().await.unwrap();
        assert!(
            adopted
                .iter()
                .any(|s| s.id == "t1" && !s.state.is_terminal())
        );

        // The container goes: the sweep ends its task.
        std::fs::remove_file(&source).unwrap();
        let mut rx = again.subscribe();
        again.sweep();
        let ended = rx.recv().await.unwrap();
        assert_eq!(ended.id, "t1");
        assert!(matches!(
            ended.state,
            TaskState::Exited { code: Some(0), .. }
        ));
        assert!(again.wait("t1").await.unwrap().state.is_terminal());

        again.remove("t1").await.unwrap();
        again.remove("t1").await.unwrap();
        assert!(again.status("t1").is_none());
        assert!(!dir.path().join("records/t1.json").exists());
    }
}
