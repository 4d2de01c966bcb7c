//! The cluster-wide version gate of a rolling upgrade. During an upgrade
//! the managers run two releases side by side, and every manager applies
//! every command of the Raft log: a command an older manager cannot decode
//! would stop its state machine. So a command names the first release that
//! can apply it ([`Command::since`]) and is proposed only once every
//! manager reports that release or a newer one (its node record's
//! `version`, sent with its daemon's session); until then it is refused
//! with FAILED_PRECONDITION naming the managers still to upgrade.
//!
//! A release that adds a command (or a field whose absence an older
//! manager would misread) gives it its own release in [`Command::since`],
//! and raises the data directory's format (`src/data_format.rs`) so an
//! older binary put back on that data refuses to start. 0.2.0 added
//! dual-stack networks: a network created with `--ipv6`, and an address
//! asked for with `--ip6` (an older manager would drop the IPv6 side).

use super::{Command, Role, State};

/// A weft release, as nodes report it: `MAJOR.MINOR.PATCH`, with any
/// pre-release or build suffix (`0.3.0-rc1`, `0.3.0+deb1`) ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release(pub u32, pub u32, pub u32);

impl Release {
    /// The first release: what every command of it needs.
    pub const FIRST: Release = Release(0, 1, 0);
    /// Dual-stack (IPv6) networks.
    pub const DUAL_STACK: Release = Release(0, 2, 0);

    /// Parses a reported version; `None` when it is not one.
    pub fn parse(v: &str) -> Option<Release> {
        let core = v.split(['-', '+', '~']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let r = Release(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(r)
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Command {
    /// The first release whose managers can apply this command.
    pub fn since(&self) -> Release {
        match self {
            Command::CreateNetwork { spec } if spec.ipv6 => Release::DUAL_STACK,
            Command::CreateTask { ip6, .. } if !ip6.is_empty() => Release::DUAL_STACK,
            Command::ConnectTask { ip6: Some(_), .. } => Release::DUAL_STACK,
            Command::UpdateClusterSettings {
                ingress_subnet6: Some(_),
                ..
            } => Release::DUAL_STACK,
            _ => Release::FIRST,
        }
    }
}

/// The managers that report a release older than `needed` (or none, or
/// one that does not parse), as "HOSTNAME (VERSION)".
pub fn managers_before(state: &State, needed: Release) -> Vec<String> {
    state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager)
        .filter(|n| Release::parse(&n.version).is_none_or(|r| r < needed))
        .map(|n| {
            let v = if n.version.is_empty() {
                "version not reported"
            } else {
                n.version.as_str()
            };
            format!("{} ({v})", n.hostname)
        })
        .collect()
}

/// Whether `cmd` may be proposed in `state`: `Err` says which managers
/// must be upgraded first.
pub fn check(state: &State, cmd: &Command) -> Result<(), String> {
    gate(state, cmd.since())
}

/// [`check`] for a command that needs `needed`.
pub fn gate(state: &State, needed: Release) -> Result<(), String> {
    // Anything 0.1.0 can apply needs no check (managers of 0.1.0 report
    // their version only once their daemon's session opens).
    if needed <= Release::FIRST {
        return Ok(());
    }
    let behind = managers_before(state, needed);
    if behind.is_empty() {
        return Ok(());
    }
    Err(format!(
        "this change needs every manager at weft {needed} or newer, and {} not: finish the \
         rolling upgrade of the managers first",
        if behind.len() == 1 {
            format!("{} is", behind[0])
        } else {
            format!("{} are", behind.join(", "))
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Node, NodeId};

    fn state(nodes: &[(u64, Role, &str)]) -> State {
        let mut s = State::default();
        for &(id, role, version) in nodes {
            s.nodes.insert(
                NodeId(id),
                Node {
                    id: NodeId(id),
                    hostname: format!("n{id}"),
                    role,
                    version: version.into(),
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn releases_parse_and_order_as_versions() {
        assert_eq!(Release::parse("0.1.0"), Some(Release(0, 1, 0)));
        assert_eq!(Release::parse("0.10.2-rc1"), Some(Release(0, 10, 2)));
        assert_eq!(Release::parse("1.2.3+deb12u1"), Some(Release(1, 2, 3)));
        assert_eq!(Release::parse("0.1.0~test1"), Some(Release(0, 1, 0)));
        for bad in ["", "1", "1.2", "1.2.3.4", "v1.2.3", "1.x.3"] {
            assert_eq!(Release::parse(bad), None, "{bad}");
        }
        assert!(Release(0, 10, 0) > Release(0, 9, 9));
        assert!(Release(1, 0, 0) > Release(0, 99, 99));
    }

    #[test]
    fn a_new_command_waits_for_every_manager_and_names_the_ones_behind() {
        let s = state(&[
            (1, Role::Manager, "0.3.0"),
            (2, Role::Manager, "0.2.4"),
            (3, Role::Manager, ""),
            (4, Role::Worker, "0.1.0"),
        ]);
        let e = gate(&s, Release(0, 3, 0)).unwrap_err();
        assert!(e.contains("every manager at weft 0.3.0 or newer"), "{e}");
        assert!(
            e.contains("n2 (0.2.4), n3 (version not reported) are not"),
            "{e}"
        );
        assert!(!e.contains("n4"), "workers do not apply the log: {e}");
        // Once they are upgraded, it passes; workers never hold it back.
        let s = state(&[
            (1, Role::Manager, "0.3.0"),
            (2, Role::Manager, "0.3.1"),
            (4, Role::Worker, "0.1.0"),
        ]);
        assert_eq!(gate(&s, Release(0, 3, 0)), Ok(()));
    }

    #[test]
    fn commands_of_the_first_release_pass_whatever_the_managers_report() {
        let s = state(&[(1, Role::Manager, ""), (2, Role::Manager, "garbage")]);
        assert_eq!(gate(&s, Release::FIRST), Ok(()));
        let cmd = Command::RemoveNode { id: NodeId(9) };
        assert_eq!(cmd.since(), Release::FIRST);
        assert_eq!(check(&s, &cmd), Ok(()));
    }
}
