//! nftables inside a network namespace, through the `nftables` crate
//! (`nft -j`, one atomic transaction per batch).
//!
//! The `nft` child inherits the namespace of the thread that spawns it, so
//! both applying and listing run the crate's synchronous helpers on a thread
//! that joined the namespace ([`Netns::run_in`]). Passing `ip netns exec`
//! style arguments instead does not work for reads: the crate's read helpers
//! *replace* `list ruleset` with the given args.

use std::path::PathBuf;

use nftables::helper::{self, NftablesError};
use std::collections::BTreeSet;

use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;

use super::error::{Error, Result};
use super::netns::Netns;

/// Checks that the `nft` command is installed, returning its path; the error
/// tells the operator to install the `nftables` package.
pub fn check_nft() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("nft"))
        .find(|p| is_executable(p))
        .ok_or(Error::NftMissing)
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn map_err(ns: &Netns, e: NftablesError) -> Error {
    match e {
        NftablesError::NftExecution { ref inner, .. }
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            Error::NftMissing
        }
        source => Error::Nft {
            ns: ns.label(),
            source: Box::new(source),
        },
    }
}

/// Applies `ruleset` (one `nft -j -f -` transaction: all or nothing) inside
/// `ns`. Blocks; use [`apply_async`] from async code.
pub fn apply(ns: &Netns, ruleset: &Nftables<'_>) -> Result<()> {
    ns.run_in(|| helper::apply_ruleset(ruleset))?
        .map_err(|e| map_err(ns, e))
}

/// The current ruleset of `ns` (`nft -j list ruleset`). Blocks; use
/// [`list_ruleset_async`] from async code.
pub fn list_ruleset(ns: &Netns) -> Result<Nftables<'static>> {
    ns.run_in(helper::get_current_ruleset)?
        .map_err(|e| map_err(ns, e))
}

/// The tables `tables` (family, name) of `ns` as one listing, one
/// `nft -j list table` each; tables that do not exist are left out.
///
/// On the host this is what observation uses instead of [`list_ruleset`]:
/// `nft list ruleset` (or `list ruleset inet`) reads every table in the
/// namespace, which is 1.2 s of CPU for a host with 20,000 rules of its own
/// (kube-proxy, firewalld), every few seconds; `nft list table` reads only
/// the one table (3 ms). Blocks; use [`list_tables_async`] from async code.
pub fn list_tables(ns: &Netns, tables: &[(NfFamily, &str)]) -> Result<Nftables<'static>> {
    let program = check_nft()?;
    let mut objects = Vec::new();
    for (family, name) in tables {
        let family = family_name(family);
        let listed = ns.run_in(|| {
            std::process::Command::new(&program)
                .args(["-j", "list", "table", family, name])
                // The "no such table" check below reads nft's message.
                .env("LC_ALL", "C")
                .output()
        })?;
        let out = listed.map_err(|inner| Error::Nft {
            ns: ns.label(),
            source: Box::new(NftablesError::NftExecution {
                program: program.clone().into_os_string(),
                inner,
            }),
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                continue;
            }
            return Err(Error::Nft {
                ns: ns.label(),
                source: Box::new(NftablesError::NftFailed {
                    program: program.clone().into_os_string(),
                    hint: format!("listing table {family} {name}"),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: stderr.into_owned(),
                }),
            });
        }
        let rs: Nftables<'static> =
            serde_json::from_slice(&out.stdout).map_err(|e| Error::Nft {
                ns: ns.label(),
                source: Box::new(NftablesError::NftInvalidJson(e)),
            })?;
        objects.extend(rs.objects.into_owned());
    }
    Ok(Nftables {
        objects: objects.into(),
    })
}

/// The family as `nft` spells it on its command line.
fn family_name(f: &NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// [`list_tables`] on the blocking pool, for async callers.
pub async fn list_tables_async(
    ns: &Netns,
    tables: &'static [(NfFamily, &'static str)],
) -> Result<Nftables<'static>> {
    let ns = ns.clone();
    tokio::task::spawn_blocking(move || list_tables(&ns, tables))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`apply`] on the blocking pool, for async callers.
pub async fn apply_async(ns: &Netns, ruleset: Nftables<'static>) -> Result<()> {
    let ns = ns.clone();
    tokio::task::spawn_blocking(move || apply(&ns, &ruleset))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`list_ruleset`] on the blocking pool, for async callers.
pub async fn list_ruleset_async(ns: &Netns) -> Result<Nftables<'static>> {
    let ns = ns.clone();
    tokio::task::spawn_blocking(move || list_ruleset(&ns))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The rule comments of the tables named `table` in the families `ours`
/// accepts, in a listing; `None` when no such table exists. weft's tables
/// mark every rule with a comment that says what it is for, so comparing
/// these sets is how drift is found.
pub fn table_comments(
    rs: &Nftables<'_>,
    table: &str,
    ours: impl Fn(&NfFamily) -> bool,
) -> Option<BTreeSet<String>> {
    let mut found = false;
    let mut comments = BTreeSet::new();
    for o in rs.objects.iter() {
        match o {
            NfObject::ListObject(NfListObject::Table(t)) if t.name == table && ours(&t.family) => {
                found = true;
            }
            NfObject::ListObject(NfListObject::Rule(r)) if r.table == table && ours(&r.family) => {
                if let Some(c) = &r.comment {
                    comments.insert(c.to_string());
                }
            }
            _ => {}
        }
    }
    found.then_some(comments)
}
