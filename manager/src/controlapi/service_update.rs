//! `service update`'s changes to a container service's options and stop
//! policy: each one given replaces the service's, the rest stay; the
//! result is checked as a new spec would be (the same rules as `service
//! create`), so a bad change is refused and changes nothing.

use weft_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::store::TaskSpec;

/// Applies `u` (the container options) and `stop` to `task`, checked.
/// `service` names the service in errors.
pub(super) fn apply(
    service: &str,
    task: &mut TaskSpec,
    u: Option<&pb::ContainerUpdate>,
    stop: Option<&pb::StopPolicy>,
) -> Result<()> {
    if let Some(u) = u {
        container(service, task, u)?;
    }
    if let Some(p) = stop {
        if p.signal != 0 {
            task.stop.signal = Some(p.signal);
        }
        if p.has_grace {
            task.stop.grace_ms = Some(p.grace_ms);
        }
        crate::validate::stop_policy(&task.stop)?;
    }
    Ok(())
}

fn container(service: &str, task: &mut TaskSpec, u: &pb::ContainerUpdate) -> Result<()> {
    let Some(c) = task.container.as_mut() else {
        return Err(Error::InvalidInput(format!(
            "service {service} runs host processes, not containers: --image, -u, -w, \
             --hostname and --mount-* apply to a service made from an image"
        )));
    };
    if let Some(image) = &u.image {
        c.image = image.clone();
    }
    let or_default = |v: &String| Some(v.clone()).filter(|v| !v.is_empty());
    if let Some(user) = &u.user {
        c.user = or_default(user);
    }
    if let Some(w) = &u.workdir {
        c.workdir = or_default(w);
    }
    if let Some(h) = &u.hostname {
        c.hostname = or_default(h);
    }
    // The request's own lists are bounded before each entry costs work.
    for (flag, n) in [
        ("--mount-rm", u.mount_rm.len()),
        ("--mount-add", u.mount_add.len()),
    ] {
        crate::limits::at_most(flag, n, weft_proto::isolation::MAX_MOUNTS, "mounts")?;
    }
    for target in &u.mount_rm {
        let t = target.trim_end_matches('/');
        let before = c.mounts.len();
        c.mounts.retain(|m| m.target.trim_end_matches('/') != t);
        if c.mounts.len() == before {
            return Err(Error::InvalidInput(format!(
                "service {service} has no mount at {target:?}"
            )));
        }
    }
    let added = weft_proto::isolation::mounts_from_wire(&u.mount_add)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    for m in added {
        let t = m.target.trim_end_matches('/').to_owned();
        c.mounts.retain(|x| x.target.trim_end_matches('/') != t);
        c.mounts.push(m);
    }
    weft_proto::isolation::check_mounts(&c.mounts)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    crate::validate::container(c, &task.command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ContainerOpts;

    fn task() -> TaskSpec {
        TaskSpec {
            container: Some(ContainerOpts {
                image: "web:1".into(),
                user: Some("nobody".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tmpfs(target: &str) -> pb::MountConfig {
        pb::MountConfig::from(&weft_proto::isolation::MountSpec {
            kind: weft_proto::isolation::MountKind::Tmpfs,
            source: String::new(),
            target: target.into(),
            readonly: false,
            tmpfs_size: 0,
            tmpfs_mode: 0,
        })
    }

    #[test]
    fn given_fields_replace_and_the_rest_stay() {
        let mut t = task();
        let u = pb::ContainerUpdate {
            image: Some("web:2".into()),
            workdir: Some("/srv".into()),
            mount_add: vec![tmpfs("/cache"), tmpfs("/tmp/x")],
            ..Default::default()
        };
        apply("web", &mut t, Some(&u), None).unwrap();
        let c = t.container.as_ref().unwrap();
        assert_eq!(c.image, "web:2");
        assert_eq!(c.workdir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("nobody"), "not given: kept");
        assert_eq!(c.mounts.len(), 2);

        // An empty user goes back to the image's; a mount goes by target.
        let u = pb::ContainerUpdate {
            user: Some(String::new()),
            mount_rm: vec!["/cache/".into()],
            ..Default::default()
        };
        let stop = pb::StopPolicy {
            signal: 0,
            has_grace: true,
            grace_ms: 2_000,
        };
        apply("web", &mut t, Some(&u), Some(&stop)).unwrap();
        let c = t.container.as_ref().unwrap();
        assert_eq!(c.user, None);
        assert_eq!(c.mounts.len(), 1);
        assert_eq!(c.mounts[0].target, "/tmp/x");
        assert_eq!(t.stop.grace_ms, Some(2_000));
        assert_eq!(t.stop.signal, None, "signal 0: unchanged");
    }

    #[test]
    fn bad_changes_are_refused() {
        let bad = |u: pb::ContainerUpdate| {
            let mut t = task();
            apply("web", &mut t, Some(&u), None)
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(pb::ContainerUpdate {
                image: Some("-bad image".into()),
                ..Default::default()
            })
            .contains("invalid image reference")
        );
        assert!(
            bad(pb::ContainerUpdate {
                mount_rm: vec!["/nowhere".into()],
                ..Default::default()
            })
            .contains("no mount at")
        );
        assert!(
            bad(pb::ContainerUpdate {
                workdir: Some("relative".into()),
                ..Default::default()
            })
            .contains("not an absolute path")
        );
        assert!(
            bad(pb::ContainerUpdate {
                mount_add: vec![tmpfs("/")],
                ..Default::default()
            })
            .contains("cannot be /")
        );
        // A host-process service has no container options to change.
        let mut host = TaskSpec {
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        };
        let e = apply(
            "svc",
            &mut host,
            Some(&pb::ContainerUpdate {
                image: Some("web:2".into()),
                ..Default::default()
            }),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("host processes"), "{e}");
        let e = apply(
            "svc",
            &mut host,
            None,
            Some(&pb::StopPolicy {
                signal: 99,
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    }
}
