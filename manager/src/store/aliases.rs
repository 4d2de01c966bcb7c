//! DNS names on a network beside task names: a service's name and its
//! aliases (`--network name=NET,alias=A`), and tasks' aliases
//! (`--network-alias`, `network connect --alias`).
//!
//! On one network a name belongs either to one service (its name or one of
//! its aliases) or to tasks, which may share an alias (DNS answers all of
//! their addresses, as Docker does). Names compare without case, as DNS
//! does. Task names are not part of this: they are unique in the cluster
//! and a service's DNS name answers first (see the node's resolver).

use super::types::{Attachment, ServiceSpec};
use super::{State, StoreError};

/// Who answers to a name on a network.
enum Holder {
    Service(String),
    Task(String),
}

impl Holder {
    fn describe(&self) -> String {
        match self {
            Holder::Service(name) => format!("service {name}"),
            Holder::Task(name) => format!("task {name}"),
        }
    }
}

impl State {
    /// Who answers to `name` on network `net`, leaving out service
    /// `except` (the one being updated).
    fn name_holder(&self, net: &str, name: &str, except: Option<&str>) -> Option<Holder> {
        let same = |a: &String| a.eq_ignore_ascii_case(name);
        let service = self
            .services
            .values()
            .filter(|s| Some(s.id.as_str()) != except && s.spec.networks.iter().any(|n| n == net))
            .find(|s| {
                same(&s.spec.name)
                    || s.spec
                        .network_aliases
                        .get(net)
                        .is_some_and(|v| v.iter().any(same))
            });
        if let Some(s) = service {
            return Some(Holder::Service(s.spec.name.clone()));
        }
        self.tasks
            .values()
            .find(|t| {
                t.attachments
                    .iter()
                    .any(|a| a.network == net && a.aliases.iter().any(same))
            })
            .map(|t| Holder::Task(t.name.clone()))
    }

    fn taken(&self, net: &str, name: &str, holder: &Holder) -> StoreError {
        StoreError::NameTaken {
            name: name.to_string(),
            network: self
                .networks
                .get(net)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| net.to_string()),
            holder: holder.describe(),
        }
    }

    /// Service `id`'s name and aliases are its own on each of its
    /// networks: no other service and no task answers to them there.
    pub(super) fn check_service_names(
        &self,
        id: &str,
        spec: &ServiceSpec,
    ) -> Result<(), StoreError> {
        for net in &spec.networks {
            let aliases = spec.network_aliases.get(net).into_iter().flatten();
            for name in std::iter::once(&spec.name).chain(aliases) {
                if let Some(h) = self.name_holder(net, name, Some(id)) {
                    return Err(self.taken(net, name, &h));
                }
            }
        }
        Ok(())
    }

    /// A task's aliases on `attachments` name no service there (other
    /// tasks may share them).
    pub(super) fn check_task_aliases(&self, attachments: &[Attachment]) -> Result<(), StoreError> {
        for a in attachments {
            for alias in &a.aliases {
                if let Some(h @ Holder::Service(_)) = self.name_holder(&a.network, alias, None) {
                    return Err(self.taken(&a.network, alias, &h));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Command, CommandResult, State, StoreError};
    use crate::testing::{cluster, network, spec};

    fn run(s: &mut State, id: &str, net: &str, aliases: &[&str]) -> CommandResult {
        s.apply(&Command::CreateTask {
            ip6: Default::default(),
            id: id.into(),
            name: id.into(),
            node: crate::store::NodeId(1),
            spec: spec("x", 1, &[]).task,
            networks: vec![(net.into(), None)],
            standalone: true,
            now_ms: 1,
            network_mode: Default::default(),
            ports: Vec::new(),
            aliases: BTreeMap::from([(
                net.to_string(),
                aliases.iter().map(|a| a.to_string()).collect(),
            )]),
        })
    }

    #[test]
    fn a_name_on_a_network_is_one_services_or_shared_by_tasks() {
        let mut s = cluster(1);
        s.apply(&network("n1", "appnet", false)).unwrap();
        s.apply(&network("n2", "other", false)).unwrap();
        let mut web = spec("web", 1, &["n1"]);
        web.network_aliases.insert("n1".into(), vec!["www".into()]);
        s.apply(&Command::CreateService {
            id: "s1".into(),
            spec: web.clone(),
            now_ms: 1,
        })
        .unwrap();

        // Tasks share an alias; one naming the service (any case) is refused.
        run(&mut s, "t1", "n1", &["db"]).unwrap();
        run(&mut s, "t2", "n1", &["DB"]).unwrap();
        let err = run(&mut s, "t3", "n1", &["WWW"]).unwrap_err();
        assert!(
            matches!(&err, StoreError::NameTaken { holder, network, .. } if holder == "service web" && network == "appnet"),
            "{err}"
        );
        assert!(!s.tasks.contains_key("t3"), "a refused task is not made");
        run(&mut s, "t4", "n1", &["web"]).unwrap_err();
        // On another network the same names are free.
        run(&mut s, "t5", "n2", &["www"]).unwrap();

        // A service may not take a task's alias, nor another service's.
        let mut db = spec("db", 1, &["n1"]);
        let err = s
            .apply(&Command::CreateService {
                id: "s2".into(),
                spec: db.clone(),
                now_ms: 1,
            })
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::NameTaken { holder, .. } if holder == "task t1"),
            "{err}"
        );
        db.name = "cache".into();
        db.network_aliases.insert("n1".into(), vec!["www".into()]);
        s.apply(&Command::CreateService {
            id: "s2".into(),
            spec: db.clone(),
            now_ms: 1,
        })
        .unwrap_err();
        db.network_aliases.insert("n1".into(), vec!["mem".into()]);
        s.apply(&Command::CreateService {
            id: "s2".into(),
            spec: db,
            now_ms: 1,
        })
        .unwrap();

        // An update keeps its own names; connect checks like run.
        web.network_aliases
            .insert("n1".into(), vec!["www".into(), "home".into()]);
        s.apply(&Command::UpdateService {
            id: "s1".into(),
            spec: web.clone(),
            force: false,
            now_ms: 2,
        })
        .unwrap();
        web.network_aliases.insert("n1".into(), vec!["mem".into()]);
        s.apply(&Command::UpdateService {
            id: "s1".into(),
            spec: web,
            force: false,
            now_ms: 3,
        })
        .unwrap_err();
        let err = s
            .apply(&Command::ConnectTask {
                ip6: Default::default(),
                task: "t5".into(),
                network: "n1".into(),
                ip: None,
                aliases: vec!["home".into()],
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
        assert_eq!(
            s.tasks["t5"].attachments.len(),
            1,
            "a refused connect changes nothing"
        );
    }
}
