//! Node-local named volumes (`weft volume create|ls|inspect|rm|prune`),
//! Docker's `local` driver: what a volume is, which filters and names are
//! accepted, and the pure decisions — which volumes a task uses, whether
//! one may be removed, which ones a prune takes. The files live in
//! [`store`].
//!
//! ```text
//!  <data-dir>/volumes/NAME/_data      what tasks see (bound at the mount's target)
//!  <data-dir>/volumes/NAME/meta.json  created_at, labels, options (written atomically)
//!  <exec-root>/containers/<task>/volumes.json
//!        the names a task's container mounts: its claim, written before the
//!        volumes are made and removed with the container (so a stopped
//!        standalone task whose container remains still holds them)
//!
//!  in use = claims on disk ∪ volume mounts of the tasks in the node's config
//!  claim+make (task start) and check+remove (`rm`, `prune`) hold one lock
//! ```
//!
//! A volume is never in use by accident of timing: a task's start claims
//! its volumes and makes them under the store's lock, and a removal checks
//! the claims and removes under the same lock. A start after a removal
//! makes the volume anew (as Docker's implicit creation does).

pub mod store;

pub use store::{Held, VolumeStore};

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The only driver: a directory on this node.
pub const DRIVER: &str = "local";

/// Volumes are this node's alone.
pub const SCOPE: &str = "local";

/// Labels on one volume (as on a node or network).
pub const MAX_LABELS: usize = 128;

/// Length of a label key.
pub const MAX_LABEL_KEY_BYTES: usize = 128;

/// Length of a label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// `--filter`s in one request.
pub const MAX_FILTERS: usize = 32;

/// Length of one `--filter`.
pub const MAX_FILTER_BYTES: usize = 1024;

/// What a volume records beside its data (`meta.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// When it was made, RFC 3339 in UTC to the second (Docker's
    /// `CreatedAt`).
    pub created_at: String,
    /// `--label`s.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The driver's options (`--opt`); always empty for now: none are
    /// supported ([`check_options`]).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// A volume on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Its name (also its directory's).
    pub name: String,
    /// What it records.
    pub meta: VolumeMeta,
}

/// Why a volume request is refused or failed; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Not a volume name.
    #[error(
        "invalid volume name {0:?}: use 1-{max} letters, digits, '_', '.' or '-', starting with \
         a letter or digit",
        max = weft_proto::isolation::MAX_VOLUME_NAME_BYTES
    )]
    BadName(String),
    /// Too many labels.
    #[error("too many labels: {0} (at most {MAX_LABELS})")]
    TooManyLabels(usize),
    /// A label that cannot be kept.
    #[error("label {key:?}: {reason}")]
    BadLabel {
        /// Its key (cut to the key bound).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `--opt` given: the local driver's options are not supported.
    #[error(
        "volume option {0:?} is not supported: weft's local volumes are plain directories \
         (for memory-backed storage use --mount type=tmpfs on the task)"
    )]
    OptionUnsupported(String),
    /// Too many filters.
    #[error("too many filters: {0} (at most {MAX_FILTERS})")]
    TooManyFilters(usize),
    /// A filter that does not parse or is not supported here.
    #[error("invalid filter {filter:?}: {reason}")]
    BadFilter {
        /// What was given (cut to the filter bound).
        filter: String,
        /// What is wrong.
        reason: String,
    },
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// The name is taken by a volume with other labels or options.
    #[error(
        "volume {0:?} already exists with other labels or options; remove it first or create \
         it with the same ones"
    )]
    Conflict(String),
    /// Tasks on this node hold the volume (Docker's words).
    #[error("remove {name}: volume is in use - [{}]", tasks.join(", "))]
    InUse {
        /// The volume.
        name: String,
        /// The tasks that hold it.
        tasks: Vec<String>,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

/// Refuses a name that is not one path component of the allowed shape.
pub fn check_name(name: &str) -> Result<()> {
    if weft_proto::isolation::volume_name_ok(name) {
        Ok(())
    } else {
        let mut shown = name.to_owned();
        shown.truncate(weft_proto::isolation::MAX_VOLUME_NAME_BYTES + 8);
        Err(VolumeError::BadName(shown))
    }
}

/// A new name for a volume created without one: 64 hex digits, as
/// Docker's anonymous volumes.
pub fn generate_name() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Checks labels against the bounds.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(VolumeError::TooManyLabels(labels.len()));
    }
    for (k, v) in labels {
        let bad = |reason| {
            let mut key = k.clone();
            key.truncate(MAX_LABEL_KEY_BYTES);
            Err(VolumeError::BadLabel { key, reason })
        };
        if k.is_empty() {
            return bad("the key is empty (use key=value)");
        }
        if k.len() > MAX_LABEL_KEY_BYTES {
            return bad("the key is longer than 128 bytes");
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return bad("the value is longer than 1024 bytes");
        }
        if k.contains('\0') || v.contains('\0') {
            return bad("NUL bytes are not allowed");
        }
    }
    Ok(())
}

/// Refuses every driver option: a local volume here is a directory, and
/// the local driver's `type=tmpfs`/`o=…` would need a host mount kept in
/// step with its users (see README).
pub fn check_options(options: &BTreeMap<String, String>) -> Result<()> {
    match options.iter().next() {
        None => Ok(()),
        Some((k, v)) => Err(VolumeError::OptionUnsupported(format!("{k}={v}"))),
    }
}

/// What `volume create` does with a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreatePlan {
    /// Make it.
    Make,
    /// It exists as asked: nothing to do (Docker's idempotent create).
    Exists,
}

/// Decides `volume create NAME` given what exists: a plain create of an
/// existing volume, or one with its own labels and options, is success;
/// other labels or options are a conflict (never changed silently).
pub fn plan_create(
    name: &str,
    existing: Option<&VolumeMeta>,
    labels: &BTreeMap<String, String>,
    options: &BTreeMap<String, String>,
) -> Result<CreatePlan> {
    match existing {
        None => Ok(CreatePlan::Make),
        Some(_) if labels.is_empty() && options.is_empty() => Ok(CreatePlan::Exists),
        Some(m) if &m.labels == labels && &m.options == options => Ok(CreatePlan::Exists),
        Some(_) => Err(VolumeError::Conflict(name.to_owned())),
    }
}

/// Which tasks hold which volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users(BTreeMap<String, BTreeSet<String>>);

impl Users {
    /// Collects `(task, volumes it mounts)` pairs (claims on disk and the
    /// node config's tasks; a task may appear in both).
    pub fn new<'a>(tasks: impl IntoIterator<Item = (&'a str, Vec<String>)>) -> Self {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (task, volumes) in tasks {
            for v in volumes {
                out.entry(v).or_default().insert(task.to_owned());
            }
        }
        Users(out)
    }

    /// The tasks that hold `volume`, ordered.
    pub fn of(&self, volume: &str) -> Vec<String> {
        self.0
            .get(volume)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// True when no task holds `volume`.
    pub fn dangling(&self, volume: &str) -> bool {
        self.0.get(volume).is_none_or(BTreeSet::is_empty)
    }
}

/// What `volume rm` does with a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovePlan {
    /// Remove it.
    Remove,
    /// Nothing there and `-f`: success without a change.
    Nothing,
}

/// Decides `volume rm [-f] NAME`: a volume a task holds is refused even
/// with `-f` (as Docker's); a missing one is an error unless `-f`.
pub fn plan_remove(name: &str, exists: bool, users: &Users, force: bool) -> Result<RemovePlan> {
    let tasks = users.of(name);
    if !tasks.is_empty() {
        return Err(VolumeError::InUse {
            name: name.to_owned(),
            tasks,
        });
    }
    match (exists, force) {
        (true, _) => Ok(RemovePlan::Remove),
        (false, true) => Ok(RemovePlan::Nothing),
        (false, false) => Err(VolumeError::NotFound(name.to_owned())),
    }
}

/// One `--filter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `dangling=true|false`: held by no task, or by some.
    Dangling(bool),
    /// `name=S`: the name contains S (several: any of them).
    Name(String),
    /// `driver=D`: only `local` matches anything.
    Driver(String),
    /// `label=K`, `label=K=V`, or with `label!=` the opposite (several:
    /// all of them).
    Label {
        /// The key.
        key: String,
        /// The value, if one is asked for.
        value: Option<String>,
        /// `label!=`.
        negate: bool,
    },
}

/// Which filter keys a command takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterUse {
    /// `volume ls`: dangling, name, driver, label, label!.
    List,
    /// `volume prune`: label, label! (a prune only ever takes dangling
    /// volumes).
    Prune,
}

/// Parses `--filter KEY=VALUE`s for `what`, refusing unknown keys and
/// values rather than ignoring them.
pub fn parse_filters(filters: &[String], what: FilterUse) -> Result<Vec<Filter>> {
    if filters.len() > MAX_FILTERS {
        return Err(VolumeError::TooManyFilters(filters.len()));
    }
    filters.iter().map(|f| parse_filter(f, what)).collect()
}

fn parse_filter(f: &str, what: FilterUse) -> Result<Filter> {
    let bad = |reason: &str| {
        let mut filter = f.to_owned();
        filter.truncate(MAX_FILTER_BYTES);
        Err(VolumeError::BadFilter {
            filter,
            reason: reason.to_owned(),
        })
    };
    if f.len() > MAX_FILTER_BYTES {
        return bad("longer than 1024 bytes");
    }
    let (key, value) = match f.split_once('=') {
        Some((k, v)) if !k.is_empty() => (k, v),
        _ => return bad("use KEY=VALUE"),
    };
    let label = |negate: bool| {
        let (k, v) = match value.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (value, None),
        };
        if k.is_empty() {
            return bad("a label filter needs a key (label=KEY or label=KEY=VALUE)");
        }
        Ok(Filter::Label {
            key: k.to_owned(),
            value: v,
            negate,
        })
    };
    match (key, what) {
        ("label", _) => label(false),
        ("label!", _) => label(true),
        ("dangling", FilterUse::List) => match value {
            "true" | "1" => Ok(Filter::Dangling(true)),
            "false" | "0" => Ok(Filter::Dangling(false)),
            _ => bad("dangling takes true or false"),
        },
        ("name", FilterUse::List) => Ok(Filter::Name(value.to_owned())),
        ("driver", FilterUse::List) => Ok(Filter::Driver(value.to_owned())),
        (_, FilterUse::List) => bad("use dangling, name, driver, label or label!"),
        (_, FilterUse::Prune) => bad("a prune takes label or label! filters"),
    }
}

/// Whether `v` passes `filters`: different keys must all match; several
/// `name` or `driver` filters match when any does; label filters must all
/// match (Docker's rules).
pub fn matches(v: &Volume, users: &Users, filters: &[Filter]) -> bool {
    // Filters of one key that match when any of them does (or when none
    // is given).
    let any = |pick: fn(&Filter) -> Option<&str>, ok: &dyn Fn(&str) -> bool| {
        let mut given = filters.iter().filter_map(pick).peekable();
        given.peek().is_none() || given.any(ok)
    };
    fn name(f: &Filter) -> Option<&str> {
        match f {
            Filter::Name(n) => Some(n),
            _ => None,
        }
    }
    fn driver(f: &Filter) -> Option<&str> {
        match f {
            Filter::Driver(d) => Some(d),
            _ => None,
        }
    }
    if !any(name, &|n| v.name.contains(n)) || !any(driver, &|d| d == DRIVER) {
        return false;
    }
    filters.iter().all(|f| match f {
        Filter::Dangling(d) => users.dangling(&v.name) == *d,
        Filter::Label { key, value, negate } => {
            let has = match (v.meta.labels.get(key), value) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            };
            has != *negate
        }
        Filter::Name(_) | Filter::Driver(_) => true,
    })
}

/// The volumes a prune removes: those no task holds that pass `filters`,
/// ordered by name.
pub fn plan_prune(volumes: &[Volume], users: &Users, filters: &[Filter]) -> Vec<String> {
    let mut out: Vec<String> = volumes
        .iter()
        .filter(|v| users.dangling(&v.name) && matches(v, users, filters))
        .map(|v| v.name.clone())
        .collect();
    out.sort();
    out
}

/// The volume names among a task's mounts.
pub fn volume_names(mounts: &[weft_proto::isolation::MountSpec]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| m.kind == weft_proto::isolation::MountKind::Volume)
        .map(|m| m.source.clone())
        .collect()
}

#[cfg(test)]
mod tests;
