//! `weft inspect`: a task as `docker container inspect` shows a container,
//! where the two agree, and weft's own fields under `"Weft"`.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use weft_proto::v1 as pb;

/// Docker's "never" time.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn time(ms: u64) -> String {
    if ms == 0 {
        return ZERO_TIME.into();
    }
    weft_worker::logs::format::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Docker's `State.Status` word for a weft task state.
fn docker_status(s: pb::TaskState) -> &'static str {
    match s {
        pb::TaskState::Running => "running",
        pb::TaskState::Exited
        | pb::TaskState::Failed
        | pb::TaskState::Rejected
        | pb::TaskState::Shutdown => "exited",
        _ => "created",
    }
}

/// The JSON object printed for one task.
pub fn docker_shape(r: &pb::InspectResponse) -> Value {
    let c = r.config.clone().unwrap_or_default();
    let s = r.status.clone().unwrap_or_default();
    let state = s.state();
    let ended = crate::task_text::is_terminal(state);
    let container = c.container.clone().unwrap_or_default();
    let resources = c.resources.unwrap_or_default();
    let mut env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    let networks: serde_json::Map<String, Value> = r
        .addresses
        .iter()
        .map(|a| {
            let (ip, prefix) = a.ip.split_once('/').unwrap_or((a.ip.as_str(), ""));
            let (ip6, prefix6) = a.ip6.split_once('/').unwrap_or((a.ip6.as_str(), ""));
            (
                a.network.clone(),
                json!({
                    "IPAddress": ip,
                    "IPPrefixLen": prefix.parse::<u32>().unwrap_or(0),
                    "GlobalIPv6Address": ip6,
                    "GlobalIPv6PrefixLen": prefix6.parse::<u32>().unwrap_or(0),
                    "MacAddress": a.mac,
                    "Aliases": if a.aliases.is_empty() { Value::Null } else { json!(a.aliases) },
                }),
            )
        })
        .collect();
    let first = r.addresses.first();
    let stop = c.stop.unwrap_or_default();
    json!({
        "Id": c.id,
        "Name": format!("/{}", c.name),
        "Created": time(c.created_at_ms),
        "Path": c.command.first().cloned().unwrap_or_default(),
        "Args": c.command.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": docker_status(state),
            "Running": state == pb::TaskState::Running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": s.oom_killed,
            "Dead": false,
            "ExitCode": if ended { i32::from(super::attach::exit_code(&s)) } else { 0 },
            "Error": if matches!(state, pb::TaskState::Failed | pb::TaskState::Rejected) {
                s.message.clone()
            } else {
                String::new()
            },
            "StartedAt": time(r.started_at_ms),
            "FinishedAt": time(r.finished_at_ms),
        },
        "Image": container.image,
        "LogPath": r.log_path,
        "Config": {
            "Hostname": if c.network_mode == "host" { r.hostname.clone() } else { c.name.clone() },
            "Image": container.image,
            // What the task was given; the image's own values fill in
            // what is not given, on the node, when the container is made.
            "Cmd": if c.command.is_empty() { Value::Null } else { json!(c.command) },
            "Entrypoint": if container.has_entrypoint { json!(container.entrypoint) } else { Value::Null },
            "Env": env,
            "WorkingDir": container.workdir,
            "User": container.user,
            "Tty": container.tty,
            "OpenStdin": container.open_stdin,
            "StopSignal": if stop.signal == 0 { "SIGTERM".to_string() } else { stop.signal.to_string() },
            "StopTimeout": if stop.has_grace { stop.grace_ms / 1000 } else { 10 },
        },
        "HostConfig": {
            "NetworkMode": if c.network_mode.is_empty() { "bridge" } else { c.network_mode.as_str() },
            "Memory": resources.limit_memory_bytes,
            "NanoCpus": resources.limit_nano_cpus,
            "PidsLimit": resources.limit_pids,
            "ReadonlyRootfs": container.read_only,
            "RestartPolicy": { "Name": "no", "MaximumRetryCount": 0 },
            "PortBindings": c.ports.iter().map(|p| json!({
                "ContainerPort": format!("{}/{}", p.target, p.protocol),
                "HostPort": p.published.to_string(),
            })).collect::<Vec<_>>(),
        },
        "NetworkSettings": {
            "IPAddress": first.map(|a| a.ip.split('/').next().unwrap_or_default().to_string()).unwrap_or_default(),
            "MacAddress": first.map(|a| a.mac.clone()).unwrap_or_default(),
            "Networks": networks,
        },
        "Weft": {
            "Node": r.node_id,
            "Hostname": r.hostname,
            "Service": c.service,
            "State": crate::task_text::word(state),
            "ExitSignal": s.signal,
            "StopGracePeriodMs": if stop.has_grace { stop.grace_ms } else { 10_000 },
            "Runtime": if c.container.is_some() { "containerd" } else { "process" },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_task_in_dockers_shape() {
        let mut status = pb::TaskStatus {
            has_exit_code: true,
            exit_code: 3,
            ..Default::default()
        };
        status.set_state(pb::TaskState::Exited);
        let r = pb::InspectResponse {
            config: Some(pb::TaskConfig {
                id: "abc".into(),
                name: "t1".into(),
                command: vec!["sh".into(), "-c".into(), "exit 3".into()],
                created_at_ms: 1,
                ..Default::default()
            }),
            status: Some(status),
            started_at_ms: 1000,
            finished_at_ms: 2000,
            addresses: vec![pb::TaskAddress {
                ip6: String::new(),
                aliases: Default::default(),
                network: "bridge".into(),
                ip: "172.17.0.2/16".into(),
                mac: "02:42:ac:11:00:02".into(),
            }],
            ..Default::default()
        };
        let v = docker_shape(&r);
        assert_eq!(v["Name"], "/t1");
        assert_eq!(v["State"]["Status"], "exited");
        assert_eq!(v["State"]["ExitCode"], 3);
        assert_eq!(v["State"]["Running"], false);
        assert_eq!(v["State"]["StartedAt"], "1970-01-01T00:00:01Z");
        assert_eq!(
            v["NetworkSettings"]["Networks"]["bridge"]["IPAddress"],
            "172.17.0.2"
        );
        assert_eq!(
            v["NetworkSettings"]["Networks"]["bridge"]["IPPrefixLen"],
            16
        );
        assert_eq!(v["Config"]["Cmd"][2], "exit 3");
    }
}
