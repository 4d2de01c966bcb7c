//! Where Docker put the containers whose endpoints are weft tasks.
//!
//! Docker asks for a container's address before the container's namespace
//! (its sandbox) exists, so the task that stands for a Docker endpoint is
//! made with no namespace, and the node learns it at the plugin's `Join`.
//! The namespace path and the interface name are node-local facts: they
//! are kept here, under `<dir>/<task id>.json` (so a restarted daemon knows
//! them), and laid over the pushed config before the node wires it
//! ([`Sandboxes::fill`]).
//!
//! ```text
//!  pushed config ──▶ fill ──▶ Docker task joined, its interface found in the
//!                                  sandbox: external.netns = sandbox, interface
//!                                  name on the attachment (wired, then run)
//!                             joined, interface not found yet: no name, no
//!                                  namespace (handed over: the veth is made
//!                                  for dockerd to move; not run yet)
//!                             not joined (or left): out of the config (not
//!                                  wired, not started; unwired and forgotten
//!                                  if it was)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use weft_proto::v1 as pb;

/// The runtime name of Docker endpoints' tasks on the wire.
pub const DOCKER: &str = "docker";

/// One joined Docker endpoint's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Docker's path of the container's network namespace (its
    /// `SandboxKey`).
    pub netns: PathBuf,
    /// The name dockerd gave the interface it moved in (found by its MAC);
    /// `None` while it is being handed over.
    pub ifname: Option<String>,
}

/// The joined Docker endpoints of this node, by task ID.
#[derive(Debug)]
pub struct Sandboxes {
    dir: PathBuf,
    map: Mutex<BTreeMap<String, Sandbox>>,
}

impl Sandboxes {
    /// The records under `dir` (none if it does not exist; unreadable ones
    /// are skipped with a warning).
    pub fn load(dir: impl Into<PathBuf>) -> Arc<Sandboxes> {
        let dir = dir.into();
        let mut map = BTreeMap::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let (Some(id), Some("json")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Sandbox>(&b).ok())
            {
                Some(s) => {
                    map.insert(id.to_owned(), s);
                }
                None => {
                    tracing::warn!(path = %path.display(), "unreadable Docker sandbox record: skipped")
                }
            }
        }
        Arc::new(Sandboxes {
            dir,
            map: Mutex::new(map),
        })
    }

    fn path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.json"))
    }

    /// Task `task`'s sandbox, if it joined one.
    pub fn get(&self, task: &str) -> Option<Sandbox> {
        self.lock().get(task).cloned()
    }

    /// Every joined endpoint's task and sandbox.
    pub fn all(&self) -> BTreeMap<String, Sandbox> {
        self.lock().clone()
    }

    /// Records that task `task` joined `s` (on disk first).
    pub fn set(&self, task: &str, s: Sandbox) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec(&s).map_err(std::io::Error::other)?;
        weft_overlay::durable::write_atomic(&self.path(task), &bytes, 0o600)
            .map_err(std::io::Error::other)?;
        self.lock().insert(task.to_owned(), s);
        Ok(())
    }

    /// Forgets task `task`'s sandbox; absent is fine.
    pub fn clear(&self, task: &str) -> std::io::Result<()> {
        self.lock().remove(task);
        match std::fs::remove_file(self.path(task)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Sandbox>> {
        self.map.lock().expect("sandboxes")
    }

    /// The config as this node wires it: see the module doc. Returns `c`
    /// itself when it has no Docker task.
    pub fn fill(&self, c: &Arc<pb::NodeConfig>) -> Arc<pb::NodeConfig> {
        let docker = |t: &pb::TaskConfig| t.external.as_ref().is_some_and(|e| e.runtime == DOCKER);
        if !c.tasks.iter().any(docker) {
            return c.clone();
        }
        let map = self.lock();
        let mut out = (**c).clone();
        out.tasks.retain_mut(|t| {
            if !docker(t) {
                return true;
            }
            let Some(s) = map.get(&t.id) else {
                return false;
            };
            let ifname = s.ifname.clone().unwrap_or_default();
            if let Some(e) = t.external.as_mut() {
                e.netns = if ifname.is_empty() {
                    String::new()
                } else {
                    s.netns.display().to_string()
                };
                e.ifname = ifname.clone();
            }
            for a in &mut t.attachments {
                a.ifname = ifname.clone();
            }
            true
        });
        Arc::new(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, runtime: Option<&str>) -> pb::TaskConfig {
        pb::TaskConfig {
            id: id.into(),
            gateway_ip: "172.18.0.5/16".into(),
            attachments: vec![pb::TaskAttachment {
                network_id: "n".into(),
                ifname: "eth0".into(),
                ..Default::default()
            }],
            external: runtime.map(|r| pb::ExternalEndpoint {
                runtime: r.into(),
                container_id: format!("c-{id}"),
                ifname: "eth0".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn docker_tasks_are_wired_only_once_joined_and_the_record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sandboxes::load(dir.path().join("sb"));
        let c = Arc::new(pb::NodeConfig {
            tasks: vec![
                task("own", None),
                task("cni", Some("cni")),
                task("joined", Some(DOCKER)),
                task("waiting", Some(DOCKER)),
            ],
            ..Default::default()
        });
        let none = Arc::new(pb::NodeConfig {
            tasks: vec![task("own", None)],
            ..Default::default()
        });
        assert!(Arc::ptr_eq(&s.fill(&none), &none));
        let handing = Sandbox {
            netns: "/var/run/docker/netns/abc".into(),
            ifname: None,
        };
        s.set("joined", handing).unwrap();
        let f = s.fill(&c);
        let ids: Vec<&str> = f.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["own", "cni", "joined"]);
        let j = &f.tasks[2];
        assert_eq!(j.external.as_ref().unwrap().netns, "");
        assert_eq!(j.external.as_ref().unwrap().ifname, "");

        let sb = Sandbox {
            netns: "/var/run/docker/netns/abc".into(),
            ifname: Some("eth1".into()),
        };
        s.set("joined", sb.clone()).unwrap();
        let f = s.fill(&c);
        let j = &f.tasks[2];
        assert_eq!(
            j.external.as_ref().unwrap().netns,
            "/var/run/docker/netns/abc"
        );
        assert_eq!(j.external.as_ref().unwrap().ifname, "eth1");
        assert_eq!(j.attachments[0].ifname, "eth1");

        let again = Sandboxes::load(dir.path().join("sb"));
        assert_eq!(again.get("joined"), Some(sb));
        again.clear("joined").unwrap();
        again.clear("joined").unwrap();
        assert_eq!(again.fill(&c).tasks.len(), 2);
        assert!(Sandboxes::load(dir.path().join("sb")).all().is_empty());
    }
}
