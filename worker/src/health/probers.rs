//! One prober per running task with a health check: runs the check through
//! the runtime's exec every interval, feeds the results to its
//! [`Machine`], and keeps the verdict for the node's status reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::{Health, HealthCheck, Machine, OUTPUT_LIMIT, Outcome};
use crate::runtime::{ExecRequest, TaskRuntime};

/// The running probers and their verdicts. Cheap to clone.
#[derive(Clone, Default)]
pub struct Probers {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    probers: Mutex<BTreeMap<String, Prober>>,
    changed: Notify,
}

struct Prober {
    check: HealthCheck,
    health: Health,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probers {
    /// No probers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the probers match `running`: the tasks that run now, each
    /// with its check. A new task (or a changed check) gets a prober
    /// starting from `starting`; a task no longer listed loses its prober.
    pub fn sync(&self, runtime: &Arc<dyn TaskRuntime>, running: Vec<(String, HealthCheck)>) {
        let wanted: BTreeMap<String, HealthCheck> = running.into_iter().collect();
        let mut probers = self.inner.probers.lock().expect("probers");
        probers.retain(|id, p| wanted.get(id) == Some(&p.check));
        for (id, check) in wanted {
            if probers.contains_key(&id) {
                continue;
            }
            let task = tokio::spawn(probe(
                Arc::downgrade(&self.inner),
                runtime.clone(),
                id.clone(),
                check.clone(),
            ));
            probers.insert(
                id,
                Prober {
                    check,
                    health: Health::Starting,
                    task,
                },
            );
        }
    }

    /// The task's verdict; `None`: it has no prober (no check).
    pub fn health(&self, id: &str) -> Option<Health> {
        self.inner
            .probers
            .lock()
            .expect("probers")
            .get(id)
            .map(|p| p.health)
    }

    /// Returns once a verdict changed since the last call.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }
}

/// Checks `id` every interval until aborted; records each new verdict.
async fn probe(
    shared: std::sync::Weak<Shared>,
    runtime: Arc<dyn TaskRuntime>,
    id: String,
    check: HealthCheck,
) {
    let start = Instant::now();
    let mut machine = Machine::new(check.retries, check.start_period);
    let req = ExecRequest {
        args: check.argv.clone(),
        timeout: check.timeout,
        output_limit: OUTPUT_LIMIT,
    };
    loop {
        tokio::time::sleep(check.interval).await;
        let at = start.elapsed();
        let (outcome, said) = match runtime.exec(&id, &req).await {
            Ok(out) if out.exit_code == Some(0) => (Outcome::Pass, out.output),
            Ok(out) => {
                let why = match out.exit_code {
                    Some(c) => format!("exit {c}: "),
                    None => format!("timed out after {:?}: ", check.timeout),
                };
                (Outcome::Fail, [why.as_bytes(), &out.output].concat())
            }
            Err(e) => (Outcome::Fail, e.to_string().into_bytes()),
        };
        let Some(health) = machine.observe(outcome, at) else {
            continue;
        };
        tracing::info!(
            task = %id,
            ?health,
            output = %String::from_utf8_lossy(&said).trim_end(),
            "health check verdict changed"
        );
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(p) = shared.probers.lock().expect("probers").get_mut(&id) {
            p.health = health;
        }
        shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::{ContainerSpec, ExecOutput, FakeCall, FakeRuntime, TaskSpec};

    fn spec() -> TaskSpec {
        TaskSpec {
            id: "t1".into(),
            name: "web.1".into(),
            command: vec![],
            env: Default::default(),
            netns: "/run/weft/netns/x".into(),
            resolv_conf: None,
            hostname: None,
            container: Some(Box::new(ContainerSpec {
                image: "busybox".into(),
                health: Some(crate::health::HealthOpts {
                    cmd: Some("test -e /tmp/ok".into()),
                    interval: Some(Duration::from_millis(10)),
                    retries: Some(2),
                    ..Default::default()
                }),
                ..ContainerSpec::default()
            })),
            stop: Default::default(),
            log: None,
            external: None,
        }
    }

    async fn until(probers: &Probers, want: Health) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while probers.health("t1") != Some(want) {
                probers.changed().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never {want:?}"));
    }

    #[tokio::test]
    async fn verdicts_follow_the_exec_results_and_stop_with_the_task() {
        let fake = Arc::new(FakeRuntime::new());
        let rt: Arc<dyn TaskRuntime> = fake.clone();
        rt.start(&spec()).await.unwrap();
        let check = rt.health_check("t1").expect("a check");
        assert_eq!(check.argv, ["/bin/sh", "-c", "test -e /tmp/ok"]);
        let fail = ExecOutput {
            exit_code: Some(1),
            output: b"no".to_vec(),
        };
        fake.push_exec_result(fail.clone());
        fake.push_exec_result(fail.clone());
        let probers = Probers::new();
        probers.sync(&rt, vec![("t1".into(), check.clone())]);
        assert_eq!(probers.health("t1"), Some(Health::Starting));
        until(&probers, Health::Unhealthy).await;
        // Then the fake's default: exit 0.
        until(&probers, Health::Healthy).await;
        assert!(
            fake.calls().iter().any(
                |c| matches!(c, FakeCall::Exec(id, args) if id == "t1" && args[0] == "/bin/sh")
            )
        );
        // A task no longer running loses its prober: no more execs.
        probers.sync(&rt, Vec::new());
        assert_eq!(probers.health("t1"), None);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = fake.calls().len();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.calls().len(), n, "probing stopped");
    }
}
