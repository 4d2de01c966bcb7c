//! The containerd runtime: each task a container, started from an image in
//! the node's containerd (its own namespace, `weft` by default), inside the
//! network namespace the data plane made for it (docs/plans/14-containerd.md
//! §2.4–2.7).
//!
//! ```text
//!  start:  images.get(ref) (one Images.Get: the store remembers what it parsed and unpacked)
//!          ‖ Leases.Create ─▶ Snapshots.Prepare(key = task id, parent = image top chain id;
//!          one left by an earlier attempt: Leases.AddResource, then its mounts;
//!          its parent gone: the store told, the image got again, once) ─▶ Containers.Create(spec
//!          JSON, runc options, labels weft.task/weft.image; one left by a start that died
//!          half-way: deleted, made again) ─▶ Leases.Delete
//!          ─▶ Tasks.Create(rootfs mounts, stdout/stderr = binary://<logger>?weft-task-logger=<task dir>)
//!          ─▶ Tasks.Start ─▶ a Tasks.Wait per task, in the background
//!  exit:   Tasks.Wait returns ─▶ write <task dir>/exit ─▶ Tasks.Delete (the shim closes the
//!          output pipes, the logger writes the rest and exits) ─▶ wait for the logger's
//!          lock (bounded) ─▶ report Exited: a reader after the exit sees all output
//!  stop:   Tasks.Kill(SIGTERM) ─ grace ─▶ Tasks.Kill(SIGKILL, all) ─▶ the waiter sees the exit
//!  remove: stop ─▶ Tasks.Delete ─▶ Containers.Delete ─▶ Snapshots.Remove ─▶ task dir
//!  adopt:  Containers.List(label weft.task) ─▶ Tasks.Get: running → tracked and waited on,
//!          stopped → reported exited, created or missing → cleaned up (never started)
//! ```
//!
//! The shim (containerd-shim-runc-v2) is the container's parent and keeps
//! its exit status until `Tasks.Delete`, and its child the logger (the
//! `weft` binary in logger mode, `crate::logs::logger`) writes the output
//! as json lines with rotation: a daemon restart loses nothing and stalls
//! nothing. The shim keeps the output pipes open until `Tasks.Delete`, so
//! the logger cannot see the end of a container's output before that: the
//! exit is therefore reported only after the delete and the logger's end
//! (`<task dir>/exit` keeps the code for a daemon restarted afterwards).
//!
//! An exit is marked OOM-killed when the container's memory cgroup counted
//! an OOM kill ([`oom_killed`]): runc removes the cgroup only at
//! `Tasks.Delete`, so it is still there when `Tasks.Wait` returns (and is
//! read before the exited task is deleted for its logger's sake).
//!
//! A command runs in a running container through `Tasks.Exec`
//! ([`exec`]): health checks use it; `weft exec` runs one with its
//! input and output streamed ([`session`]). A container's health check is
//! resolved when it is made (the task's `--health-*` over the image's
//! HEALTHCHECK) and kept in its task dir ([`HEALTH_FILE`]), so an adopted
//! container keeps its check.
//!
//! Not here yet (issue #14's later stages): seccomp.

mod exec;
pub mod mounts;
mod purge;
mod session;
pub mod spec;
mod stdio;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::broadcast;
use weft_containerd_api::Client;
use weft_containerd_api::containerd::runc::v1::Options as RuncOptions;
use weft_containerd_api::containerd::services::containers::v1 as containers;
use weft_containerd_api::containerd::services::snapshots::v1 as snapshots;
use weft_containerd_api::containerd::services::tasks::v1 as tasks;
use weft_containerd_api::containerd::types::Mount;
use weft_containerd_api::containerd::v1::types::Status as ProcStatus;

use super::{
    ContainerSpec, Error, NetworkReady, NotReady, Result, StopPolicy, TaskRuntime, TaskSpec,
    TaskState, TaskStatus, validate, validate_id,
};
use crate::image::content::Lease;
use crate::image::{Fetch, ImageSource, LocalImage};

/// The snapshotter every container's root filesystem comes from.
pub const SNAPSHOTTER: &str = "overlayfs";
/// containerd's runtime for runc, one shim per container.
const RUNTIME: &str = "io.containerd.runc.v2";
/// The label that marks a container as a weft task (its value: the task id).
pub const TASK_LABEL: &str = "weft.task";
/// The label naming the image digest a container runs (`image rm` looks
/// for it).
pub use crate::image::store::CONTAINER_IMAGE_LABEL as IMAGE_LABEL;
/// The label naming the daemon a container belongs to (its exec root):
/// two daemons sharing a containerd namespace (a `weft lab` on a host with
/// containerd) never adopt, or remove, each other's containers.
pub const OWNER_LABEL: &str = "weft.owner";
/// The labels keeping a container's stop policy (signal number, grace in
/// ms), so a restarted daemon stops an adopted container as asked.
const STOP_SIGNAL_LABEL: &str = "weft.stop-signal";
const STOP_GRACE_LABEL: &str = "weft.stop-grace-ms";
/// The file in a task dir keeping its container's resolved health check
/// (JSON of [`crate::health::HealthCheck`]; not a label: a long command
/// would pass containerd's 4 KiB label bound). Absent: none.
pub const HEALTH_FILE: &str = "health.json";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
/// How long the exit waits for a container's logger to write the rest of
/// its output (containerd kills a logger 12 s after the delete).
const LOGGER_WAIT: Duration = Duration::from_secs(5);
/// How long a task may take to exit after SIGKILL before stop gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether the kernel's OOM killer killed a process in the container's
/// cgroup (`cgroup`: the path runc was given): the `oom_kill` count of
/// cgroup v1's `memory.oom_control` or, without a v1 memory hierarchy,
/// cgroup v2's `memory.events`. A cgroup that is gone counts as no.
pub fn oom_killed(cgroup: &Path) -> bool {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let root = Path::new(CGROUP_ROOT);
    let file = if root.join("memory").is_dir() {
        root.join("memory").join(rel).join("memory.oom_control")
    } else {
        root.join(rel).join("memory.events")
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| oom_kills(&t))
        .is_some_and(|n| n > 0)
}

/// The `oom_kill` count of a `memory.oom_control` (v1) or `memory.events`
/// (v2) text.
fn oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// How the runtime reaches containerd and lays out its files.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// `<exec-root>/tasks`: per-task files (log, hosts, hostname).
    pub tasks_dir: PathBuf,
    /// runc's state directory (`None`: containerd's default,
    /// `/run/containerd/runc`).
    pub runc_root: Option<PathBuf>,
    /// The cgroup parent of every container (`/weft` by default).
    pub cgroup_parent: PathBuf,
    /// This daemon's mark on its containers ([`OWNER_LABEL`]): its exec root.
    pub owner: String,
    /// The logger program the shim starts for each container's output
    /// (`<exec-root>/bin/weft-task-logger`, a link to the `weft` binary; it
    /// must understand `weft-task-logger <task dir>`).
    pub logger: PathBuf,
    /// What the node lets containers mount (`--mount`).
    pub mounts: mounts::MountPolicy,
}

/// Tasks as containers in containerd. Cheap to clone.
#[derive(Clone)]
pub struct ContainerdRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    images: Arc<dyn ImageSource>,
    cfg: ContainerdConfig,
    tasks: Mutex<BTreeMap<String, Tracked>>,
    /// Tasks whose start waits on a pull of their image from its registry.
    pulling: Mutex<BTreeSet<String>>,
    events: broadcast::Sender<TaskStatus>,
    /// The stdio of tasks run with `-i`/`-t` ([`stdio`]).
    stdio: stdio::CopiedMap,
}

/// A container made up to `Tasks.Create`, its process not yet started;
/// when each phase of the start ended, for the debug log.
struct Created {
    health: Option<crate::health::HealthCheck>,
    t0: std::time::Instant,
    t_image: std::time::Instant,
    t_container: std::time::Instant,
    t_task: std::time::Instant,
}

struct Tracked {
    spec: Option<TaskSpec>,
    status: TaskStatus,
    stop: StopPolicy,
    health: Option<crate::health::HealthCheck>,
}

impl ContainerdRuntime {
    /// A runtime on `client` (already in its namespace).
    pub fn new(client: Client, images: Arc<dyn ImageSource>, cfg: ContainerdConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                client,
                images,
                cfg,
                tasks: Mutex::new(BTreeMap::new()),
                pulling: Mutex::new(BTreeSet::new()),
                events,
                stdio: Mutex::default(),
            }),
        }
    }

    /// The task's cgroup path (under the cgroup parent), as the spec
    /// gives it to runc.
    fn cgroup(&self, id: &str) -> PathBuf {
        self.inner.cfg.cgroup_parent.join(id)
    }

    fn task_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.tasks_dir.join(id)
    }

    fn tasks(&self) -> tasks::tasks_client::TasksClient<weft_containerd_api::ApiChannel> {
        tasks::tasks_client::TasksClient::new(self.inner.client.channel())
    }

    fn containers(
        &self,
    ) -> containers::containers_client::ContainersClient<weft_containerd_api::ApiChannel> {
        containers::containers_client::ContainersClient::new(self.inner.client.channel())
    }

    fn snapshots(
        &self,
    ) -> snapshots::snapshots_client::SnapshotsClient<weft_containerd_api::ApiChannel> {
        snapshots::snapshots_client::SnapshotsClient::new(self.inner.client.channel())
    }

    /// The mounts of task `id`'s prepared root filesystem snapshot.
    async fn snapshot_mounts(&self, id: &str) -> Result<Vec<Mount>> {
        Ok(self
            .snapshots()
            .mounts(snapshots::MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_owned(),
            })
            .await
            .map_err(|s| self.err("Snapshots.Mounts", s))?
            .into_inner()
            .mounts)
    }

    fn err(&self, call: &'static str, status: tonic::Status) -> Error {
        Error::Containerd(self.inner.client.error(call, status))
    }

    /// Records `status` (and the spec or stop policy when given) and tells
    /// subscribers.
    fn set(&self, status: TaskStatus, spec: Option<TaskSpec>, stop: Option<StopPolicy>) {
        let mut tasks = self.inner.tasks.lock().expect("tasks");
        let entry = tasks.entry(status.id.clone()).or_insert(Tracked {
            spec: None,
            status: status.clone(),
            stop: StopPolicy::default(),
            health: None,
        });
        if let Some(stop) = stop.or(spec.as_ref().map(|s| s.stop)) {
            entry.stop = stop;
        }
        if spec.is_some() {
            entry.spec = spec;
        }
        entry.status = status.clone();
        drop(tasks);
        let _ = self.inner.events.send(status);
    }

    /// The health check an adopted container keeps in its task dir; a
    /// file that does not parse is logged and means none.
    fn health_of(&self, id: &str) -> Option<crate::health::HealthCheck> {
        super::files::read_json(&self.task_dir(id).join(HEALTH_FILE))
            .inspect_err(|e| tracing::warn!(task = %id, error = %e, "unreadable health check"))
            .ok()
            .flatten()
    }

    /// Records the task's resolved health check.
    fn set_health(&self, id: &str, health: Option<crate::health::HealthCheck>) {
        if let Some(t) = self.inner.tasks.lock().expect("tasks").get_mut(id) {
            t.health = health;
        }
    }

    fn runc_options(&self) -> prost_types::Any {
        let opts = RuncOptions {
            root: self
                .inner
                .cfg
                .runc_root
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            systemd_cgroup: false,
            ..Default::default()
        };
        prost_types::Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: opts.encode_to_vec(),
        }
    }

    /// Waits, in the background, for the task's exit and records it. The
    /// shim keeps the exit status until the task is deleted, so this also
    /// works for a task that exited while the daemon was down.
    fn watch(&self, id: &str, started_at: Option<SystemTime>) {
        let rt = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                if rt.status(&id).is_none() {
                    return;
                }
                let r = rt
                    .tasks()
                    .wait(tasks::WaitRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                    })
                    .await;
                let state = match r {
                    Ok(w) => {
                        let w = w.into_inner();
                        TaskState::Exited {
                            code: Some(w.exit_status as i32),
                            signal: None,
                            oom: oom_killed(&rt.cgroup(&id)),
                        }
                    }
                    // Deleted (removed) meanwhile: nothing to report.
                    Err(s) if s.code() == tonic::Code::NotFound => return,
                    Err(s) => {
                        tracing::warn!(task = %id, error = %s, "waiting for the container's exit failed; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                // Still ours (not removed while waiting)?
                if rt.status(&id).is_none() {
                    return;
                }
                let finished_at = SystemTime::now();
                if let TaskState::Exited { code, oom, .. } = &state {
                    rt.finish(&id, *code, *oom, finished_at).await;
                }
                if rt.status(&id).is_none() {
                    return;
                }
                rt.set(
                    TaskStatus {
                        id: id.clone(),
                        state,
                        started_at,
                        finished_at: Some(finished_at),
                    },
                    None,
                    None,
                );
                return;
            }
        });
    }

    /// After the container's exit: records the exit code in the task dir,
    /// deletes the task in containerd (so its shim closes the output pipes
    /// and stops the logger), and waits, bounded, for the logger to finish
    /// writing. Failures are logged: the exit is reported regardless.
    async fn finish(&self, id: &str, code: Option<i32>, oom: bool, finished_at: SystemTime) {
        let dir = self.task_dir(id);
        let exit = super::files::ExitFile {
            code,
            signal: None,
            error: None,
            finished_at,
            oom,
        };
        if dir.is_dir()
            && let Err(e) = super::files::write_json(&dir.join(super::files::EXIT), &exit)
        {
            tracing::warn!(task = %id, error = %e, "recording the container's exit");
        }
        self.stdio_exited(id);
        if let Err(s) = self.delete_task(id).await {
            tracing::warn!(task = %id, error = %s, "deleting the exited container's task; its log may still be written after the exit is reported");
            return;
        }
        self.stdio_deleted(id);
        if !crate::logs::wait_writer_done(&crate::logs::log_dir(&dir), LOGGER_WAIT).await {
            tracing::warn!(task = %id, "the container's logger did not finish within {LOGGER_WAIT:?}");
        }
        self.stdio_forget(id);
    }

    /// The image's rootfs snapshot for the task, under `lease`: prepared,
    /// or the one a previous attempt left. A snapshot left is put under the
    /// lease before its mounts are read: what references it (a container
    /// record left half made, deleted by `create_container`) may go before
    /// the new record does, and the garbage collector would take it in
    /// between. One collected before the lease held it is prepared again.
    async fn rootfs(
        &self,
        client: &Client,
        lease: &Lease,
        id: &str,
        image: &LocalImage,
    ) -> Result<Vec<Mount>> {
        let mut snapshots = snapshots::snapshots_client::SnapshotsClient::new(client.channel());
        let prepare = snapshots::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_owned(),
            parent: image.top_chain_id.clone(),
            labels: HashMap::from([(TASK_LABEL.to_owned(), id.to_owned())]),
        };
        let mut again = false;
        loop {
            match snapshots.prepare(prepare.clone()).await {
                Ok(r) => return Ok(r.into_inner().mounts),
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(self.err("Snapshots.Prepare", s)),
            }
            lease.add_snapshot(client, SNAPSHOTTER, id).await?;
            match self.snapshot_mounts(id).await {
                Err(Error::Containerd(weft_containerd_api::Error::NotFound { .. })) if !again => {
                    again = true;
                }
                r => return r,
            }
        }
    }

    /// Everything `start` needs before the process runs, up to the runc
    /// container made in the task's namespace (`Tasks.Create`); any failure
    /// here leaves nothing behind (`cleanup` runs on it).
    async fn create(&self, spec: &TaskSpec) -> Result<Created, String> {
        let c = spec.container.as_ref().ok_or("not a container task")?;
        // Where a start's time goes (debug log): the figures to work from
        // towards the create-to-VIP target (BENCHMARKS.md).
        let t0 = std::time::Instant::now();
        let inner = self.inner.clone();
        let id = spec.id.clone();
        let mark = move || {
            inner.pulling.lock().expect("pulling").insert(id.clone());
        };
        let fetch = Fetch {
            on_pull: Some(&mark),
            auth: c.registry_auth.as_ref(),
        };
        // The snapshot made below is referenced by nothing until the
        // container record exists: a lease keeps containerd's garbage
        // collector (set off by any removal meanwhile) from taking it in
        // between. It is asked for while the image is looked up.
        let (image, lease) = tokio::join!(
            self.inner.images.get(&c.image, fetch),
            Lease::create(&self.inner.client, "create")
        );
        let pulled = self.inner.pulling.lock().expect("pulling").remove(&spec.id);
        let image = match image {
            Ok(image) => image,
            Err(e) => {
                if let Ok(lease) = lease {
                    lease.delete(&self.inner.client).await;
                }
                return Err(e.to_string());
            }
        };
        let lease = match lease {
            // A pull can outlast the lease (it expires in an hour): after
            // one, the start takes a fresh lease.
            Ok(lease) if pulled => {
                lease.delete(&self.inner.client).await;
                Lease::create(&self.inner.client, "create").await
            }
            lease => lease,
        }
        .map_err(|e| e.to_string())?;
        let t_image = std::time::Instant::now();
        let made = async {
            let leased = lease
                .client(&self.inner.client)
                .map_err(|e| e.to_string())?;
            let (image, mounts) = self.rootfs_of(&leased, &lease, spec, image, fetch).await?;
            let health = self.record(&leased, spec, c, &image, &mounts).await?;
            Ok::<_, String>((health, mounts))
        }
        .await;
        // Deleted before `Tasks.Create`, not beside it: deleted in the
        // background, it made `Tasks.Create` 8–15 ms longer (medians of
        // 60 starts each, BENCHMARKS.md).
        lease.delete(&self.inner.client).await;
        let (health, mounts) = made?;
        let t_container = std::time::Instant::now();
        let dir = self.task_dir(&spec.id);
        let io = match self
            .stdio_create(&spec.id, &dir, c.stdio)
            .map_err(|e| e.to_string())?
        {
            Some(p) => p,
            None => {
                let log = logger_uri(&self.inner.cfg.logger, &dir)?;
                stdio::StdioPaths {
                    stdin: String::new(),
                    stdout: log.clone(),
                    stderr: log,
                }
            }
        };
        self.tasks()
            .create(tasks::CreateTaskRequest {
                container_id: spec.id.clone(),
                rootfs: mounts,
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
                terminal: c.stdio.tty,
                options: Some(self.runc_options()),
                ..Default::default()
            })
            .await
            .map_err(|s| self.err("Tasks.Create", s).to_string())?;
        Ok(Created {
            health,
            t0,
            t_image,
            t_container,
            t_task: std::time::Instant::now(),
        })
    }

    /// The task's rootfs snapshot, prepared through `client` (under
    /// `lease`) from `image`. The image store remembers which images are
    /// unpacked: if their top snapshot went behind its back, it is told,
    /// and the image is asked for (checked, unpacked) again once.
    async fn rootfs_of(
        &self,
        client: &Client,
        lease: &Lease,
        spec: &TaskSpec,
        image: LocalImage,
        fetch: Fetch<'_>,
    ) -> Result<(LocalImage, Vec<Mount>), String> {
        let c = spec.container.as_ref().ok_or("not a container task")?;
        match self.rootfs(client, lease, &spec.id, &image).await {
            Ok(mounts) => Ok((image, mounts)),
            // Not found: the parent, or something else (the lease). Only a
            // missing parent is the store's to mend.
            Err(e @ Error::Containerd(weft_containerd_api::Error::NotFound { .. })) => {
                let gone = crate::image::unpack::exists(client, SNAPSHOTTER, &image.top_chain_id)
                    .await
                    .is_ok_and(|there| !there);
                if !gone {
                    return Err(e.to_string());
                }
                tracing::info!(task = %spec.id, image = %image.name, "the image's snapshots are gone: unpacking it again");
                self.inner.images.stale(&image);
                let image = self.inner.images.get(&c.image, fetch).await;
                self.inner.pulling.lock().expect("pulling").remove(&spec.id);
                let image = image.map_err(|e| e.to_string())?;
                let mounts = self
                    .rootfs(client, lease, &spec.id, &image)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((image, mounts))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The task's files and container record, made through `client` (under
    /// a lease) over the prepared rootfs `mounts`: its health check.
    async fn record(
        &self,
        client: &Client,
        spec: &TaskSpec,
        c: &ContainerSpec,
        image: &LocalImage,
        mounts: &[Mount],
    ) -> Result<Option<crate::health::HealthCheck>, String> {
        if let Some(bad) = &c.bad_mounts {
            return Err(format!("the task's mounts cannot be used: {bad}"));
        }
        let dir = self.task_dir(&spec.id);
        // Claims the task's volumes in its directory, which `cleanup`
        // removes only once the container is gone.
        let host_mounts = self
            .inner
            .cfg
            .mounts
            .resolve(&dir, &c.mounts)
            .await
            .map_err(|e| e.to_string())?;
        let mut files = write_task_files(&dir, &spec::hostname(spec)).map_err(|e| e.to_string())?;
        files.mounts = host_mounts;
        spec.log
            .unwrap_or_default()
            .store(&dir)
            .map_err(|e| e.to_string())?;
        let health =
            crate::health::resolve(c.health.as_ref(), image.config.config.healthcheck.as_ref());
        let health_file = dir.join(HEALTH_FILE);
        match &health {
            Some(h) => super::files::write_json(&health_file, h).map_err(|e| e.to_string())?,
            None => {
                let _ = std::fs::remove_file(&health_file);
            }
        }
        self.create_container(client, spec, image, mounts, files)
            .await?;
        Ok(health)
    }

    /// Runs the process of the task [`create`](Self::create) made; a
    /// failure leaves the rest for `cleanup`.
    async fn run_created(
        &self,
        spec: &TaskSpec,
        made: &Created,
        t_ready: std::time::Instant,
    ) -> Result<u32, String> {
        let started = self
            .tasks()
            .start(tasks::StartRequest {
                container_id: spec.id.clone(),
                exec_id: String::new(),
            })
            .await
            .map_err(|s| self.err("Tasks.Start", s).to_string())?;
        let ms = |t: std::time::Instant| t.duration_since(made.t0).as_millis() as u64;
        tracing::debug!(
            task = %spec.id,
            image_ms = ms(made.t_image),
            container_ms = ms(made.t_container),
            task_created_ms = ms(made.t_task),
            network_ready_ms = ms(t_ready),
            started_ms = ms(std::time::Instant::now()),
            "container started (ms since the start began, at the end of each phase)"
        );
        Ok(started.into_inner().pid)
    }

    /// The task's container record, made through `client` (under a lease)
    /// over its prepared rootfs `mounts`.
    async fn create_container(
        &self,
        client: &Client,
        spec: &TaskSpec,
        image: &LocalImage,
        mounts: &[Mount],
        mut files: spec::TaskFiles,
    ) -> Result<(), String> {
        let labels = HashMap::from([
            (TASK_LABEL.to_owned(), spec.id.clone()),
            (IMAGE_LABEL.to_owned(), image.digest.clone()),
            (OWNER_LABEL.to_owned(), self.inner.cfg.owner.clone()),
            (STOP_SIGNAL_LABEL.to_owned(), spec.stop.signal.to_string()),
            (
                STOP_GRACE_LABEL.to_owned(),
                spec.stop.grace.as_millis().to_string(),
            ),
        ]);

        // `-u NAME` is looked up in the image's own files, as the
        // container will see them.
        let c = spec.container.as_ref().ok_or("not a container task")?;
        let user = spec::effective_user(c, &image.config);
        let passwd = rootfs_file(mounts, "etc/passwd");
        let group = rootfs_file(mounts, "etc/group");
        files.user = Some(spec::users::resolve(&user, &passwd, &group).map_err(|e| e.to_string())?);
        let oci = spec::build(spec, c, &image.config, &files, &self.cgroup(&spec.id))
            .map_err(|e| e.to_string())?;
        let json = serde_json::to_vec(&oci).map_err(|e| e.to_string())?;
        let record = containers::CreateContainerRequest {
            container: Some(containers::Container {
                id: spec.id.clone(),
                labels,
                image: image.name.clone(),
                runtime: Some(containers::container::Runtime {
                    name: RUNTIME.into(),
                    options: Some(self.runc_options()),
                }),
                spec: Some(prost_types::Any {
                    type_url: SPEC_TYPE_URL.into(),
                    value: json,
                }),
                snapshotter: SNAPSHOTTER.into(),
                snapshot_key: spec.id.clone(),
                ..Default::default()
            }),
        };
        let mut records = containers::containers_client::ContainersClient::new(client.channel());
        match records.create(record.clone()).await {
            Ok(_) => {}
            // A container left by an attempt that died half-way goes
            // first (its process too), then the record is made again.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                self.delete_container(&spec.id)
                    .await
                    .map_err(|e| e.to_string())?;
                records
                    .create(record)
                    .await
                    .map_err(|s| self.err("Containers.Create", s).to_string())?;
            }
            Err(s) => return Err(self.err("Containers.Create", s).to_string()),
        }
        Ok(())
    }

    /// Deletes the task's process; a missing one is fine.
    ///
    /// Two deletes can meet: the exit watcher deletes an exited task for
    /// its logger's sake while a removal deletes it too. The second then
    /// fails with an `Unknown` "ttrpc: closed" as the shim goes away; the
    /// task is asked for again, and gone is success.
    async fn delete_task(&self, id: &str) -> std::result::Result<(), tonic::Status> {
        let mut tries = 0;
        loop {
            let r = self
                .tasks()
                .delete(tasks::DeleteTaskRequest {
                    container_id: id.to_owned(),
                })
                .await;
            let status = match r {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
                Err(s) => s,
            };
            let gone = matches!(
                self.tasks()
                    .get(tasks::GetRequest {
                        container_id: id.to_owned(),
                        exec_id: String::new(),
                    })
                    .await,
                Err(ref s) if s.code() == tonic::Code::NotFound
            );
            if gone {
                return Ok(());
            }
            tries += 1;
            if tries == 3 {
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
        }
    }

    /// Whether the task's process exists and has not exited (created,
    /// running or paused).
    async fn process_alive(&self, id: &str) -> Result<bool> {
        let got = self
            .tasks()
            .get(tasks::GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            })
            .await;
        match got {
            Ok(r) => Ok(r
                .into_inner()
                .process
                .is_some_and(|p| p.status != ProcStatus::Stopped as i32)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(self.err("Tasks.Get", s)),
        }
    }

    /// Deletes the task's process (killing it first if it still runs) and
    /// its container record; missing ones are fine. containerd 1.6 refuses
    /// to delete a running process with an `Unknown` code, so the state is
    /// asked first rather than read from that error.
    async fn delete_container(&self, id: &str) -> Result<()> {
        if self.process_alive(id).await? {
            self.kill(id, libc::SIGKILL as u32, true).await?;
            if !self.wait_exit(id, KILL_WAIT).await? {
                return Err(Error::StopTimeout {
                    id: id.to_owned(),
                    waited: KILL_WAIT,
                });
            }
        }
        self.delete_task(id)
            .await
            .map_err(|s| self.err("Tasks.Delete", s))?;
        match self
            .containers()
            .delete(containers::DeleteContainerRequest { id: id.to_owned() })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(self.err("Containers.Delete", s)),
        }
    }

    /// Removes the task's process, container, snapshot and files.
    async fn cleanup(&self, id: &str) -> Result<()> {
        self.delete_container(id).await?;
        self.stdio_forget(id);
        match self
            .snapshots()
            .remove(snapshots::RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_owned(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(self.err("Snapshots.Remove", s)),
        }
        let dir = self.task_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                op: "remove",
                path: dir,
                source,
            }),
        }
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        match self
            .tasks()
            .kill(tasks::KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal,
                all,
            })
            .await
        {
            Ok(_) => Ok(()),
            // Gone, or already stopped.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                Ok(())
            }
            Err(s) => Err(self.err("Tasks.Kill", s)),
        }
    }

    /// Waits up to `limit` for the task's process to end; true if it did.
    /// A wait that fails because the process ended meanwhile and the
    /// background waiter deleted it (the shim then closes its connection:
    /// "ttrpc: closed") counts as ended: the process is asked for again.
    async fn wait_exit(&self, id: &str, limit: Duration) -> Result<bool> {
        let mut client = self.tasks();
        let wait = client.wait(tasks::WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        match tokio::time::timeout(limit, wait).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(true),
            Ok(Err(s)) => match self.process_alive(id).await {
                Ok(false) => Ok(true),
                _ => Err(self.err("Tasks.Wait", s)),
            },
        }
    }
}

/// The stop policy a container's labels keep (the defaults for what is
/// missing or does not parse: a container can always be stopped).
fn stop_policy_of(labels: &HashMap<String, String>) -> StopPolicy {
    let default = StopPolicy::default();
    StopPolicy {
        signal: labels
            .get(STOP_SIGNAL_LABEL)
            .and_then(|s| s.parse().ok())
            .filter(|s| weft_proto::signal::valid(*s))
            .unwrap_or(default.signal),
        grace: labels
            .get(STOP_GRACE_LABEL)
            .and_then(|s| s.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(default.grace),
    }
}

/// The `binary://` URI that makes the shim start `logger` for the task in
/// `task_dir`. Exactly one query parameter: the shim turns the query into
/// arguments in map order, so `weft-task-logger <task dir>` comes out
/// whole. Both are percent-encoded, as the shim's URL parser expects.
fn logger_uri(logger: &Path, task_dir: &Path) -> Result<String, String> {
    let enc = |p: &Path| {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        Ok::<_, String>(out)
    };
    Ok(format!(
        "binary://{}?{}={}",
        enc(logger)?,
        crate::logs::LOGGER_ARG,
        enc(task_dir)?
    ))
}

/// Writes `/etc/hosts` and `/etc/hostname` for the container, and makes
/// its log directory.
fn write_task_files(dir: &Path, hostname: &str) -> std::io::Result<spec::TaskFiles> {
    std::fs::create_dir_all(dir)?;
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
    )?;
    let name = dir.join("hostname");
    std::fs::write(&name, format!("{hostname}\n"))?;
    std::fs::create_dir_all(crate::logs::log_dir(dir))?;
    Ok(spec::TaskFiles {
        hosts: Some(hosts),
        hostname: Some(name),
        mounts: Vec::new(),
        user: None,
    })
}

/// A file of the container's root filesystem, read from the snapshot's
/// layer directories before anything is mounted: the upper directory, then
/// the lower ones top-down (overlayfs), or a bind's source; empty when no
/// layer has it (or it is over [`spec::users::MAX_DB_BYTES`]). Whiteouts are
/// not followed: a file deleted by an upper layer is still found below it;
/// a link on the way (`etc -> …`) reads as nothing, so that names then
/// fail to resolve rather than be looked up on the host.
fn rootfs_file(mounts: &[Mount], rel: &str) -> String {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            dirs.push(PathBuf::from(&m.source));
        }
        for o in &m.options {
            if let Some(d) = o.strip_prefix("upperdir=") {
                dirs.push(PathBuf::from(d));
            }
        }
        for o in &m.options {
            if let Some(l) = o.strip_prefix("lowerdir=") {
                dirs.extend(l.split(':').map(PathBuf::from));
            }
        }
    }
    for d in dirs {
        let p = d.join(rel);
        // No component may be a link: an image's `etc -> /…` would
        // otherwise resolve on the host.
        let linked = p
            .ancestors()
            .take_while(|a| *a != d.as_path())
            .skip(1)
            .any(|a| std::fs::symlink_metadata(a).is_ok_and(|m| !m.is_dir()));
        if linked {
            return String::new();
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !meta.is_file() || meta.len() > spec::users::MAX_DB_BYTES {
            return String::new();
        }
        return std::fs::read_to_string(&p).unwrap_or_default();
    }
    String::new()
}

#[async_trait::async_trait]
impl TaskRuntime for ContainerdRuntime {
    async fn adopt(&self) -> Result<Vec<TaskStatus>> {
        let mut out = Vec::new();
        for c in self.own_containers().await? {
            let id = c.id.clone();
            let got = self
                .tasks()
                .get(tasks::GetRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                })
                .await;
            let process = match got {
                Ok(r) => r.into_inner().process,
                Err(s) if s.code() == tonic::Code::NotFound => None,
                Err(s) => return Err(self.err("Tasks.Get", s)),
            };
            let recorded = super::files::read_json::<super::files::ExitFile>(
                &self.task_dir(&id).join(super::files::EXIT),
            )
            .ok()
            .flatten();
            if process.is_some() {
                self.stdio_adopt(&id, &self.task_dir(&id));
            }
            let status = match process.map(|p| (ProcStatus::try_from(p.status), p)) {
                Some((Ok(ProcStatus::Running | ProcStatus::Paused | ProcStatus::Pausing), p)) => {
                    TaskStatus {
                        id: id.clone(),
                        state: TaskState::Running { pid: p.pid as i32 },
                        started_at: None,
                        finished_at: None,
                    }
                }
                Some((Ok(ProcStatus::Stopped), p)) => {
                    let code = Some(p.exit_status as i32);
                    // Before `finish` deletes the task, and its cgroup.
                    let oom = oom_killed(&self.cgroup(&id));
                    let at = p
                        .exited_at
                        .and_then(|t| SystemTime::try_from(t).ok())
                        .unwrap_or_else(SystemTime::now);
                    self.finish(&id, code, oom, at).await;
                    TaskStatus {
                        id: id.clone(),
                        state: TaskState::Exited {
                            code,
                            signal: None,
                            oom,
                        },
                        started_at: None,
                        finished_at: Some(at),
                    }
                }
                // Exited and deleted by an earlier run of the daemon.
                None if recorded.is_some() => {
                    let exit: super::files::ExitFile = recorded.expect("checked");
                    TaskStatus {
                        id: id.clone(),
                        state: exit.state(),
                        started_at: None,
                        finished_at: Some(exit.finished_at),
                    }
                }
                // Created but never started (the daemon died between the
                // two), or no process at all: never start anything here.
                _ => {
                    tracing::info!(task = %id, "removing a container that never started");
                    self.cleanup(&id).await?;
                    continue;
                }
            };
            let running = !status.state.is_terminal();
            self.set(status.clone(), None, Some(stop_policy_of(&c.labels)));
            self.set_health(&id, self.health_of(&id));
            if running {
                self.watch(&id, None);
            }
            out.push(status);
        }
        Ok(out)
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus> {
        self.start_when(spec, NetworkReady::now()).await
    }

    /// The container is made (record, rootfs, `Tasks.Create` in the task's
    /// namespace) while `network` is not yet ready; its process starts once
    /// it is.
    async fn start_when(&self, spec: &TaskSpec, mut network: NetworkReady) -> Result<TaskStatus> {
        validate(spec)?;
        if spec.container.is_none() {
            return Err(Error::InvalidSpec {
                id: spec.id.clone(),
                reason: "the containerd runtime runs containers only (the task has no image)",
            });
        }
        if let Some((known, status)) = self
            .inner
            .tasks
            .lock()
            .expect("tasks")
            .get(&spec.id)
            .map(|t| (t.spec.clone(), t.status.clone()))
        {
            let same = known.as_ref().is_none_or(|k| k == spec);
            if !status.state.is_terminal() && same {
                return Ok(status);
            }
            return Err(Error::AlreadyExists {
                id: spec.id.clone(),
            });
        }
        let mut health = None;
        let made = match self.create(spec).await {
            Ok(made) => match network.wait().await {
                Ok(()) => {
                    let t_ready = std::time::Instant::now();
                    self.run_created(spec, &made, t_ready)
                        .await
                        .map(|pid| (pid, made.health))
                }
                Err(NotReady) => {
                    if let Err(e) = self.cleanup(&spec.id).await {
                        tracing::warn!(task = %spec.id, error = %e, "cleaning up a start the daemon's stop cut short");
                    }
                    return Err(Error::NotStarted {
                        id: spec.id.clone(),
                    });
                }
            },
            Err(e) => Err(e),
        };
        let status = match made {
            Ok((pid, check)) => {
                health = check;
                TaskStatus {
                    id: spec.id.clone(),
                    state: TaskState::Running { pid: pid as i32 },
                    started_at: Some(SystemTime::now()),
                    finished_at: None,
                }
            }
            Err(error) => {
                if let Err(e) = self.cleanup(&spec.id).await {
                    tracing::warn!(task = %spec.id, error = %e, "cleaning up after a failed start");
                }
                TaskStatus {
                    id: spec.id.clone(),
                    state: TaskState::Failed { error },
                    started_at: None,
                    finished_at: Some(SystemTime::now()),
                }
            }
        };
        let running = !status.state.is_terminal();
        self.set(status.clone(), Some(spec.clone()), None);
        self.set_health(&spec.id, health);
        if running {
            self.watch(&spec.id, status.started_at);
        }
        Ok(status)
    }

    async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()> {
        let Some((status, policy)) = self
            .inner
            .tasks
            .lock()
            .expect("tasks")
            .get(id)
            .map(|t| (t.status.clone(), t.stop))
        else {
            return Ok(());
        };
        if status.state.is_terminal() {
            return Ok(());
        }
        let grace = grace.unwrap_or(policy.grace);
        // The stop signal goes to the container's first process, as
        // Docker's does; SIGKILL then goes to every process in it.
        self.kill(id, policy.signal as u32, false).await?;
        if self.wait_exit(id, grace).await? {
            return Ok(());
        }
        self.kill(id, libc::SIGKILL as u32, true).await?;
        if self.wait_exit(id, KILL_WAIT).await? {
            Ok(())
        } else {
            Err(Error::StopTimeout {
                id: id.to_owned(),
                waited: KILL_WAIT,
            })
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        self.stop(id, None).await?;
        // The record (a terminal status) goes only once the files are
        // gone: a reconcile pass that saw no record meanwhile would start
        // the task again into the directory being removed.
        self.cleanup(id).await?;
        self.inner.tasks.lock().expect("tasks").remove(id);
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<TaskStatus> {
        super::wait_until_ended(self.inner.events.subscribe(), id, || self.status(id)).await
    }

    fn status(&self, id: &str) -> Option<TaskStatus> {
        self.inner
            .tasks
            .lock()
            .expect("tasks")
            .get(id)
            .map(|t| t.status.clone())
    }

    fn list(&self) -> Vec<TaskStatus> {
        self.inner
            .tasks
            .lock()
            .expect("tasks")
            .values()
            .map(|t| t.status.clone())
            .collect()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        crate::logs::log_dir(&self.task_dir(id))
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskStatus> {
        self.inner.events.subscribe()
    }

    fn pulling(&self, id: &str) -> bool {
        self.inner.pulling.lock().expect("pulling").contains(id)
    }

    fn health_check(&self, id: &str) -> Option<crate::health::HealthCheck> {
        self.inner
            .tasks
            .lock()
            .expect("tasks")
            .get(id)
            .and_then(|t| t.health.clone())
    }

    async fn exec(&self, id: &str, req: &super::ExecRequest) -> Result<super::ExecOutput> {
        // The exec runs to its end even when the caller goes away (a
        // prober aborted because its task is being removed): one dropped
        // half way is left created or running in the shim, never deleted,
        // and its FIFO without a reader; `runc kill --all` then took 20 s
        // to stop the container (measured under load).
        let (this, id, req) = (self.clone(), id.to_owned(), req.clone());
        let job = tokio::spawn({
            let id = id.clone();
            async move { this.exec_in(&id, &req).await }
        });
        match job.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => Err(Error::NotFound { id }),
        }
    }

    async fn exec_session(&self, id: &str, spec: &super::ExecSpec) -> Result<super::ExecSession> {
        self.start_session(id, spec).await
    }

    fn stdio(&self, id: &str, from_start: bool) -> Option<super::TaskStdio> {
        self.stdio_of(id, from_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counts_of_v1_and_v2() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 14\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(v1), Some(2));
        assert_eq!(oom_kills(v2), Some(1));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert!(!oom_killed(Path::new("/weft-no-such-cgroup/none")));
    }

    #[test]
    fn rootfs_files_come_from_the_top_layer_and_never_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let layer = |name: &str, passwd: Option<&str>| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(d.join("etc")).unwrap();
            if let Some(p) = passwd {
                std::fs::write(d.join("etc/passwd"), p).unwrap();
            }
            d.display().to_string()
        };
        let (upper, top, bottom) = (
            layer("u", None),
            layer("l1", Some("top")),
            layer("l2", Some("bottom")),
        );
        let overlay = |lower: String| Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("upperdir={upper}"), format!("lowerdir={lower}")],
            ..Default::default()
        };
        assert_eq!(
            rootfs_file(&[overlay(format!("{top}:{bottom}"))], "etc/passwd"),
            "top"
        );
        assert_eq!(
            rootfs_file(&[overlay(bottom.clone())], "etc/passwd"),
            "bottom"
        );
        let linked = dir.path().join("l0");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink("/etc", linked.join("etc")).unwrap();
        let linked = linked.display().to_string();
        assert_eq!(
            rootfs_file(&[overlay(format!("{linked}:{top}"))], "etc/passwd"),
            ""
        );
        let bind = Mount {
            r#type: "bind".into(),
            source: bottom,
            ..Default::default()
        };
        assert_eq!(rootfs_file(&[bind], "etc/passwd"), "bottom");
    }
}
