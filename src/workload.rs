//! What `weft run` and `weft service create` run, from their arguments:
//! `IMAGE [COMMAND [ARG...]]` (a container) or `-- CMD [ARG...]` (a host
//! process), with the container options.

use anyhow::bail;
use weft_proto::v1 as pb;

use crate::cli::{ContainerArgs, StopArgs};

/// The stop policy the flags ask for (`None`: the node's defaults).
pub fn stop_from_args(a: &StopArgs) -> anyhow::Result<Option<pb::StopPolicy>> {
    if a.stop_signal.is_none() && a.stop_grace_period.is_none() {
        return Ok(None);
    }
    let grace_ms = a
        .stop_grace_period
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if grace_ms.is_some_and(|ms| ms > weft_manager::validate::MAX_STOP_GRACE_MS) {
        bail!("--stop-grace-period is too long: at most 1h");
    }
    Ok(Some(pb::StopPolicy {
        signal: a.stop_signal.unwrap_or(0),
        has_grace: grace_ms.is_some(),
        grace_ms: grace_ms.unwrap_or(0),
    }))
}

/// The command, and the container options when the task is a container.
pub fn from_args(a: ContainerArgs) -> anyhow::Result<(Vec<String>, Option<pb::ContainerConfig>)> {
    let has_container_flag = a.entrypoint.is_some()
        || a.workdir.is_some()
        || a.user.is_some()
        || a.read_only
        || a.isolation.any_container_option();
    match (a.image_and_command.split_first(), a.command.is_empty()) {
        (Some(_), false) => bail!(
            "give either IMAGE [COMMAND...] (a container) or -- CMD [ARG...] (a host process), \
             not both"
        ),
        (None, true) => bail!(
            "nothing to run: give IMAGE [COMMAND...] (a container) or -- CMD [ARG...] (a host \
             process)"
        ),
        (None, false) => {
            if has_container_flag {
                bail!(
                    "--entrypoint, --workdir, --user, --read-only, --cap-add, --cap-drop, \
                     --security-opt, --mount and --hostname are for containers: give an IMAGE \
                     instead of -- CMD"
                );
            }
            Ok((a.command, None))
        }
        (Some((image, _)), true)
            if weft_worker::image::reference::Query::parse(image).is_none() =>
        {
            bail!(
                "invalid image reference {image:?}: give NAME[:TAG][@DIGEST] (such as \
                 busybox:latest or registry:5000/team/app@sha256:...), sha256:DIGEST, or an image \
                 ID prefix"
            )
        }
        (Some((image, command)), true) => {
            let mut c = pb::ContainerConfig {
                image: image.clone(),
                has_entrypoint: a.entrypoint.is_some(),
                entrypoint: a
                    .entrypoint
                    .map(|e| if e.is_empty() { vec![] } else { vec![e] })
                    .unwrap_or_default(),
                workdir: a.workdir.unwrap_or_default(),
                user: a.user.unwrap_or_default(),
                read_only: a.read_only,
                ..Default::default()
            };
            a.isolation.apply(&mut c)?;
            Ok((command.to_vec(), Some(c)))
        }
    }
}

/// Limits are for containers: a host process runs unisolated in the
/// daemon's cgroup, which weft does not split (the managers refuse it too).
pub fn check_resources(r: &crate::resources::ResourceArgs, container: bool) -> anyhow::Result<()> {
    if r.has_limits() && !container {
        bail!(
            "--limit-cpu, --limit-memory and --limit-pids are for containers: a host process \
             (-- CMD) runs unisolated in the daemon's cgroup; give an IMAGE"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(image_and_command: &[&str], command: &[&str]) -> ContainerArgs {
        ContainerArgs {
            entrypoint: None,
            workdir: None,
            user: None,
            read_only: false,
            isolation: Default::default(),
            image_and_command: image_and_command.iter().map(|s| s.to_string()).collect(),
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn image_or_host_command() {
        let (cmd, c) = from_args(args(&["busybox", "sh", "-c", "x"], &[])).unwrap();
        assert_eq!(cmd, ["sh", "-c", "x"]);
        assert_eq!(c.unwrap().image, "busybox");
        let (cmd, c) = from_args(args(&[], &["sleep", "1"])).unwrap();
        assert_eq!(cmd, ["sleep", "1"]);
        assert!(c.is_none());
        assert!(from_args(args(&["busybox"], &["sleep"])).is_err());
        assert!(from_args(args(&[], &[])).is_err());
        let mut host_ro = args(&[], &["sleep", "1"]);
        host_ro.read_only = true;
        assert!(from_args(host_ro).is_err());
        let mut cleared = args(&["busybox", "ls"], &[]);
        cleared.entrypoint = Some(String::new());
        let c = from_args(cleared).unwrap().1.unwrap();
        assert!(c.has_entrypoint && c.entrypoint.is_empty());
    }
}
