//! What [`super::ImageStore`] remembers of containerd between calls, so a
//! container start asks containerd one question (`Images.Get`) about its
//! image instead of five or six.
//!
//! - **Parsed content**, by the record's target digest: the manifest's
//!   layers and the image configuration. Content is addressed by its
//!   digest, so what was read for a digest never changes; entries are only
//!   dropped to bound the map.
//! - **Unpacked images**, by the record as it was seen (name, target,
//!   update time) and its top chain id: that the top snapshot existed and
//!   the config blob named it. A record made again (a load, a pull, `image
//!   rm` then a load) has another update time and is checked again. Every
//!   load and removal through the store, and every `image pull`, forgets
//!   them all (a pull a start makes records anew, with a new update time),
//!   and so does a container start that finds the top snapshot gone
//!   ([`super::ImageSource::stale`]): the next start checks, and unpacks
//!   again. A check that began before such a forgetting is not kept.
//!
//! Content removed behind the store's back (not through `image rm`) is
//! not noticed for a target read before: `image ls` and `inspect` list
//! such a record as they did when its content was there.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use weft_containerd_api::containerd::services::images::v1::Image;

use super::ImageConfig;
use super::plan::Descriptor;

/// Entries kept of each kind before the map is emptied: a node holds a
/// few images, and a miss costs a handful of containerd calls.
const MAX_ENTRIES: usize = 256;

/// What a target digest's manifest and configuration say.
#[derive(Clone, Debug)]
pub(super) struct Parsed {
    pub config_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
}

/// An image record as seen, with the top snapshot found unpacked for it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct Unpacked {
    name: String,
    target: String,
    updated: (i64, i32),
    top: String,
}

impl Unpacked {
    pub fn of(record: &Image, target: &str, top: &str) -> Self {
        Self {
            name: record.name.clone(),
            target: target.to_owned(),
            updated: record
                .updated_at
                .as_ref()
                .map_or((0, 0), |t| (t.seconds, t.nanos)),
            top: top.to_owned(),
        }
    }
}

#[derive(Default)]
pub(super) struct Cache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    parsed: HashMap<String, Parsed>,
    unpacked: HashSet<Unpacked>,
    /// Bumped by every forgetting: a check made across one is not kept.
    generation: u64,
}

impl Cache {
    pub fn parsed(&self, target: &str) -> Option<Parsed> {
        self.lock().parsed.get(target).cloned()
    }

    pub fn keep_parsed(&self, target: &str, parsed: Parsed) {
        let mut inner = self.lock();
        if inner.parsed.len() >= MAX_ENTRIES {
            inner.parsed.clear();
        }
        inner.parsed.insert(target.to_owned(), parsed);
    }

    pub fn is_unpacked(&self, key: &Unpacked) -> bool {
        self.lock().unpacked.contains(key)
    }

    /// Where forgetting stands: give it to [`Self::keep_unpacked`] for a
    /// check that starts now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Remembers `key` unpacked, as a check begun at `generation` found
    /// it, unless the store forgot everything since.
    pub fn keep_unpacked(&self, key: Unpacked, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.unpacked.len() >= MAX_ENTRIES {
            inner.unpacked.clear();
        }
        inner.unpacked.insert(key);
    }

    /// Every image is checked again before its next use.
    pub fn forget_unpacked(&self) {
        let mut inner = self.lock();
        inner.unpacked.clear();
        inner.generation = inner.generation.wrapping_add(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing here panics while holding the lock; a poisoned map is
        // still a valid map.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, secs: i64) -> Image {
        Image {
            name: name.into(),
            updated_at: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_made_again_is_checked_again() {
        let cache = Cache::default();
        let seen = Unpacked::of(&record("busybox:latest", 10), "sha256:a", "sha256:top");
        cache.keep_unpacked(seen.clone(), cache.generation());
        assert!(cache.is_unpacked(&seen));
        // The same name and target, recorded again later (rm, then load).
        let again = Unpacked::of(&record("busybox:latest", 11), "sha256:a", "sha256:top");
        assert!(!cache.is_unpacked(&again));
        // Another name for the same target is its own record.
        let other = Unpacked::of(&record("other:1", 10), "sha256:a", "sha256:top");
        assert!(!cache.is_unpacked(&other));
    }

    #[test]
    fn forgetting_and_the_bound_empty_the_unpacked_set() {
        let cache = Cache::default();
        let seen = Unpacked::of(&record("a:1", 1), "sha256:a", "sha256:top");
        cache.keep_unpacked(seen.clone(), cache.generation());
        cache.forget_unpacked();
        assert!(!cache.is_unpacked(&seen));
        // A check begun before a forgetting is not kept.
        let began = cache.generation();
        cache.forget_unpacked();
        cache.keep_unpacked(seen.clone(), began);
        assert!(!cache.is_unpacked(&seen));
        for i in 0..MAX_ENTRIES as i64 + 1 {
            cache.keep_unpacked(
                Unpacked::of(&record("a:1", i), "sha256:a", "t"),
                cache.generation(),
            );
        }
        assert!(cache.lock().unpacked.len() <= MAX_ENTRIES);
    }

    #[test]
    fn parsed_content_is_kept_by_target_and_bounded() {
        let cache = Cache::default();
        let parsed = Parsed {
            config_digest: "sha256:c".into(),
            config: ImageConfig::default(),
            layers: Vec::new(),
        };
        assert!(cache.parsed("sha256:a").is_none());
        cache.keep_parsed("sha256:a", parsed.clone());
        assert_eq!(
            cache.parsed("sha256:a").map(|p| p.config_digest),
            Some("sha256:c".into())
        );
        for i in 0..MAX_ENTRIES {
            cache.keep_parsed(&format!("sha256:{i}"), parsed.clone());
        }
        assert!(cache.lock().parsed.len() <= MAX_ENTRIES);
    }
}
