//! `-u NAME[:GROUP]` as Docker resolves it: names looked up in the
//! image's own `/etc/passwd` and `/etc/group` (read by the node from the
//! container's prepared root filesystem), numeric ids taken as they are,
//! and the supplementary groups of the user from `/etc/group`.

/// Largest `/etc/passwd` or `/etc/group` read from an image.
pub const MAX_DB_BYTES: u64 = 4 << 20;

/// A user as the container's process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the groups listing the user by name).
    pub additional_gids: Vec<u32>,
}

/// Why a user cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The user name is not in the image's /etc/passwd.
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    NoUser(String),
    /// The group name is not in the image's /etc/group.
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    NoGroup(String),
}

/// One `/etc/passwd` line: name, uid, gid.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if l.starts_with('#') || f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// One `/etc/group` line: name, gid, members.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if l.starts_with('#') || f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `user` (`""`, `NAME`, `UID`, `NAME:GROUP`, `UID:GID`, …)
/// against the image's databases (empty text when the image has none).
/// Docker's rules: a name must exist; a numeric uid need not (its group is
/// then 0, else its passwd entry's); an explicit group replaces the
/// primary group; supplementary groups are those listing the user's name.
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Resolved, UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = passwd_entries(passwd).find(|(name, uid, _)| match u.parse::<u32>() {
        Ok(n) => *uid == n,
        Err(_) => *name == u,
    });
    let (name, uid, mut gid) = match (entry, u.parse::<u32>()) {
        (Some((name, uid, gid)), _) => (Some(name), uid, gid),
        (None, Ok(uid)) => (None, uid, 0),
        (None, Err(_)) if u == "root" => (Some("root"), 0, 0),
        (None, Err(_)) => return Err(UserError::NoUser(u.to_owned())),
    };
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .or((g == "root").then_some(0))
                .ok_or_else(|| UserError::NoGroup(g.to_owned()))?,
        };
    }
    let mut additional_gids: Vec<u32> = match name {
        Some(name) => group_entries(group)
            .filter(|(_, id, members)| *id != gid && members.contains(&name))
            .map(|(_, id, _)| id)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.dedup();
    Ok(Resolved {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # a comment\n\
                          broken line\n\
                          www:x:33:33:www:/var/www:/bin/false\n\
                          nobody:x:65534:65534:nobody:/:/bin/false\n";
    const GROUP: &str = "root:x:0:\n\
                         www:x:33:\n\
                         adm:x:4:www,other\n\
                         audio:x:29:www\n\
                         nogroup:x:65534:\n";

    fn r(uid: u32, gid: u32, extra: &[u32]) -> Resolved {
        Resolved {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        }
    }

    #[test]
    fn names_and_numbers_resolve_as_docker_does() {
        assert_eq!(resolve("", PASSWD, GROUP).unwrap(), r(0, 0, &[]));
        assert_eq!(resolve("root", "", "").unwrap(), r(0, 0, &[]));
        assert_eq!(
            resolve("nobody", PASSWD, GROUP).unwrap(),
            r(65534, 65534, &[])
        );
        assert_eq!(resolve("www", PASSWD, GROUP).unwrap(), r(33, 33, &[4, 29]));
        assert_eq!(resolve("www:adm", PASSWD, GROUP).unwrap(), r(33, 4, &[29]));
        assert_eq!(resolve("33", PASSWD, GROUP).unwrap(), r(33, 33, &[4, 29]));
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap(), r(1000, 0, &[]));
        assert_eq!(
            resolve("1000:100", PASSWD, GROUP).unwrap(),
            r(1000, 100, &[])
        );
        assert_eq!(
            resolve("nobody:nogroup", PASSWD, GROUP).unwrap(),
            r(65534, 65534, &[])
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("alice", PASSWD, GROUP).unwrap_err(),
            UserError::NoUser("alice".into())
        );
        assert_eq!(
            resolve("www:staff", PASSWD, GROUP).unwrap_err(),
            UserError::NoGroup("staff".into())
        );
        assert!(resolve("nobody", "", "").is_err());
    }
}
