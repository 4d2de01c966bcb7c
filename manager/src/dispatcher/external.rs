//! Containers of foreign runtimes (CNI, Docker) on a weft network: a node
//! asks for one with `RunTask{external}`, and the task that stands for it
//! is made here, addressed by the same allocator as any task.
//!
//! ```text
//!  RunTask{external: runtime, container id, ifname, netns}
//!     ├─ bounds (external_from_wire) ── bad: INVALID_ARGUMENT, nothing written
//!     ├─ same (runtime, container, ifname) on this node?
//!     │     same netns: that task (an ADD retried; a Docker endpoint's ports,
//!     │     told after its address, published once: SetTaskPorts)
//!     │     other: ALREADY_EXISTS
//!     └─ CreateTask{standalone, auto_remove, one network} ── one Raft write
//! ```

use weft_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::store::{
    Command, ExternalEndpoint, ExternalRuntime, NetworkMode, Node, State, Task, TaskSpec,
};

/// The longest container ID taken (Docker's are 64 hex digits; CNI's are
/// the runtime's choice).
pub const MAX_CONTAINER_ID: usize = 256;
/// The longest namespace path taken.
pub const MAX_NETNS_PATH: usize = 4096;
/// The longest container name kept.
pub const MAX_CONTAINER_NAME: usize = 255;

/// A foreign endpoint from the wire, within bounds. The container ID
/// follows CNI's rule (an alphanumeric, then alphanumerics, `_`, `-`,
/// `.`); the interface name the kernel's (1..15 bytes, no `/`, `:` or
/// whitespace), and neither `lo` nor weft's own `gw0`; the namespace path
/// is absolute (or, for Docker, empty: its sandbox is known only later, to
/// the node).
pub fn external_from_wire(e: &pb::ExternalEndpoint) -> Result<ExternalEndpoint> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    let runtime = match e.runtime.as_str() {
        "" | "cni" => ExternalRuntime::Cni,
        "docker" => ExternalRuntime::Docker,
        other => return bad(format!("unknown runtime {other:?}: cni or docker")),
    };
    let id = &e.container_id;
    let id_ok = !id.is_empty()
        && id.len() <= MAX_CONTAINER_ID
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !id_ok {
        return bad(format!(
            "invalid container ID {:?}: 1..{MAX_CONTAINER_ID} characters, letters, digits, \
             '_', '-' and '.', starting with a letter or digit",
            trunc(id)
        ));
    }
    let ifname = &e.ifname;
    let if_ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':'));
    if !if_ok {
        return bad(format!(
            "invalid interface name {:?}: 1..15 printable characters without '/' or ':'",
            trunc(ifname)
        ));
    }
    if ifname == "lo" || ifname == "gw0" {
        return bad(format!(
            "interface name {ifname:?} is taken (lo is the loopback, gw0 weft's way out)"
        ));
    }
    let ns = &e.netns;
    // A Docker endpoint is made before its sandbox (the address comes
    // first): the node learns the namespace at Join and keeps it locally.
    let later = runtime == ExternalRuntime::Docker && ns.is_empty();
    if !later && (!ns.starts_with('/') || ns.len() > MAX_NETNS_PATH || ns.contains('\0')) {
        return bad(format!(
            "invalid network namespace path {:?}: an absolute path of at most {MAX_NETNS_PATH} bytes",
            trunc(ns)
        ));
    }
    let name = &e.container_name;
    if name.len() > MAX_CONTAINER_NAME || name.chars().any(char::is_control) {
        return bad(format!(
            "invalid container name {:?}: at most {MAX_CONTAINER_NAME} bytes, no control characters",
            trunc(name)
        ));
    }
    Ok(ExternalEndpoint {
        runtime,
        container_id: id.clone(),
        ifname: ifname.clone(),
        netns: ns.clone(),
        container_name: (!name.is_empty()).then(|| name.clone()),
    })
}

/// The wire form.
pub fn external_to_wire(e: &ExternalEndpoint) -> pb::ExternalEndpoint {
    pb::ExternalEndpoint {
        runtime: e.runtime.as_str().into(),
        container_id: e.container_id.clone(),
        ifname: e.ifname.clone(),
        netns: e.netns.clone(),
        container_name: e.container_name.clone().unwrap_or_default(),
    }
}

/// At most 64 characters of something refused, for the message.
fn trunc(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The task standing for the container: `cni-<first 12 of its ID>`, with
/// `-<ifname>` for any interface but `eth0` (a container on two networks
/// has one task per interface).
pub fn task_name(e: &ExternalEndpoint) -> String {
    let short: String = e
        .container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let mut name = format!("{}-{short}", e.runtime.as_str());
    if e.ifname != "eth0" {
        let tail: String = e
            .ifname
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        name.push('-');
        name.push_str(&tail);
    }
    name
}

/// The task already standing for this (runtime, container, interface) on
/// `node`, if any.
pub fn existing<'a>(s: &'a State, node: &Node, e: &ExternalEndpoint) -> Option<&'a Task> {
    s.tasks.values().find(|t| {
        t.node == node.id
            && t.spec.external.as_ref().is_some_and(|x| {
                x.runtime == e.runtime && x.container_id == e.container_id && x.ifname == e.ifname
            })
    })
}

impl super::DispatcherService {
    /// `RunTask` for a foreign runtime's container: see the module doc.
    pub(super) async fn run_external(
        &self,
        node: &Node,
        r: pb::RunTaskRequest,
        e: &pb::ExternalEndpoint,
    ) -> Result<pb::Task> {
        let ext = external_from_wire(e)?;
        if !r.command.is_empty() || r.container.is_some() || !r.env.is_empty() {
            return Err(Error::InvalidInput(
                "a foreign runtime's container takes no command, image or environment from weft"
                    .into(),
            ));
        }
        // Its runtime's port mappings (CNI's portMappings capability),
        // published on its node as `weft run -p` publishes a task's.
        crate::limits::task_request(&[], &Default::default(), 1, r.ports.len())?;
        let ports = crate::convert::ports_from_wire(&r.ports)?;
        let [net] = &r.networks[..] else {
            return Err(Error::InvalidInput(format!(
                "a foreign runtime's container joins exactly one weft network per interface, \
                 not {}",
                r.networks.len()
            )));
        };
        if matches!(net.network.as_str(), "host" | "none" | "") {
            return Err(Error::InvalidInput(format!(
                "network {:?} cannot be given to a foreign runtime: name a weft network",
                net.network
            )));
        }
        if let Some((id, x, unpublished)) = self.core.read(|s| {
            existing(s, node, &ext)
                .map(|t| (t.id.clone(), t.spec.external.clone(), t.ports.is_empty()))
        }) {
            if x.is_none_or(|x| x.netns != ext.netns) {
                return Err(Error::AlreadyExists(format!(
                    "container {} already has an interface {} on this node, in another \
                     namespace: delete it first",
                    ext.container_id, ext.ifname
                )));
            }
            // Docker tells the ports after the address: the same request
            // again, with ports, publishes them (once).
            if ext.runtime == ExternalRuntime::Docker && !ports.is_empty() && unpublished {
                let cmd = Command::SetTaskPorts {
                    task: id.clone(),
                    node: node.id,
                    ports,
                };
                self.core.read(|s| crate::limits::admit(s, &cmd))?;
                self.core.propose(cmd).await?;
            }
            return self
                .core
                .read(|s| s.tasks.get(&id).map(|t| crate::convert::task_to_wire(s, t)))
                .ok_or(Error::NotReady);
        }
        let network = self.core.read(|s| {
            s.resolve_network_on(&net.network, node.id)
                .map(|n| n.id.clone())
        })?;
        let ip = if net.ip.is_empty() {
            None
        } else {
            Some(net.ip.parse().map_err(|_| {
                Error::InvalidInput(format!("invalid address {:?}: give an IP address", net.ip))
            })?)
        };
        let id = crate::validate::random_id();
        let cmd = Command::CreateTask {
            aliases: Default::default(),
            ip6: Default::default(),
            id: id.clone(),
            name: task_name(&ext),
            node: node.id,
            spec: TaskSpec {
                auto_remove: true,
                external: Some(ext),
                ..TaskSpec::default()
            },
            networks: vec![(network, ip)],
            standalone: true,
            now_ms: crate::core::now_ms(),
            network_mode: NetworkMode::Attached,
            ports,
        };
        self.core.read(|s| crate::limits::admit(s, &cmd))?;
        self.core.propose(cmd).await?;
        self.core
            .read(|s| s.tasks.get(&id).map(|t| crate::convert::task_to_wire(s, t)))
            .ok_or(Error::NotReady)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(id: &str, ifname: &str, netns: &str) -> pb::ExternalEndpoint {
        pb::ExternalEndpoint {
            runtime: "cni".into(),
            container_id: id.into(),
            ifname: ifname.into(),
            netns: netns.into(),
            container_name: String::new(),
        }
    }

    #[test]
    fn foreign_endpoints_are_bounded_at_the_edge() {
        let ok = external_from_wire(&wire("abc123", "eth0", "/tmp/containers/x")).expect("ok");
        assert_eq!(ok.runtime, ExternalRuntime::Cni);
        assert_eq!(task_name(&ok), "cni-abc123");
        let two = external_from_wire(&wire("0123456789abcdef", "net1", "/proc/1/ns/net")).unwrap();
        assert_eq!(task_name(&two), "cni-0123456789ab-net1");
        for (id, ifname, ns) in [
            ("", "eth0", "/x"),
            ("-lead", "eth0", "/x"),
            ("a b", "eth0", "/x"),
            (&"a".repeat(MAX_CONTAINER_ID + 1), "eth0", "/x"),
            ("a", "", "/x"),
            ("a", "eth0eth0eth0eth0", "/x"),
            ("a", "et/h", "/x"),
            ("a", "e:1", "/x"),
            ("a", "lo", "/x"),
            ("a", "gw0", "/x"),
            ("a", "eth0", "relative"),
            ("a", "eth0", ""),
            ("a", "eth0", "/a\0b"),
        ] {
            let e = external_from_wire(&wire(id, ifname, ns));
            assert!(
                matches!(e, Err(Error::InvalidInput(_))),
                "{id:?} {ifname:?} {ns:?}: {e:?}"
            );
        }
        let mut w = wire("a", "eth0", "/x");
        w.runtime = "rkt".into();
        assert!(external_from_wire(&w).is_err());
        w.runtime = "docker".into();
        w.container_name = "web\n".into();
        assert!(external_from_wire(&w).is_err());
        // A Docker endpoint may come before its sandbox; a CNI one may not.
        let mut d = wire("a", "eth0", "");
        d.runtime = "docker".into();
        let d = external_from_wire(&d).expect("docker, no namespace yet");
        assert_eq!((d.netns.as_str(), task_name(&d).as_str()), ("", "docker-a"));
        let mut d = wire("a", "eth0", "relative");
        d.runtime = "docker".into();
        assert!(external_from_wire(&d).is_err());
    }
}
