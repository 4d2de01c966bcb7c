//! Image names as users type them and as they are recorded: Docker Hub
//! normalization (`busybox` → `docker.io/library/busybox:latest`), the
//! short form `image ls` shows, and what a user's word can mean (a name, a
//! `name@sha256:…`, a digest, or an image ID prefix).

use oci_spec::distribution::Reference;

/// The full name a user's `name[:tag][@digest]` stands for.
pub fn normalize(name: &str) -> Result<String, oci_spec::distribution::ParseError> {
    Ok(Reference::try_from(name)?.whole())
}

/// What a user's word names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// A normalized name, maybe with a digest (`docker.io/library/busybox:latest`,
    /// `docker.io/library/busybox@sha256:…`).
    Name(String),
    /// `sha256:<64 hex>`: a manifest (or index) digest, or an image ID.
    Digest(String),
    /// Hex digits: a prefix of an image ID (config digest), as `image ls` shows.
    IdPrefix(String),
}

impl Query {
    /// Reads a user's word. Names are tried first, as Docker does; a word
    /// that is also a valid name (`cafe`) is asked for as both (see
    /// [`Query::alternative`]).
    pub fn parse(word: &str) -> Option<Query> {
        if let Some(hex) = word.strip_prefix("sha256:") {
            return is_hex(hex, 64).then(|| Query::Digest(word.to_owned()));
        }
        match normalize(word) {
            Ok(n) => Some(Query::Name(n)),
            Err(_) if is_id_prefix(word) => Some(Query::IdPrefix(word.to_owned())),
            Err(_) => None,
        }
    }

    /// A second reading of the word when the first finds nothing: hex that
    /// parsed as a name may be an ID prefix.
    pub fn alternative(word: &str) -> Option<Query> {
        is_id_prefix(word).then(|| Query::IdPrefix(word.to_owned()))
    }
}

fn is_id_prefix(word: &str) -> bool {
    (4..=64).contains(&word.len()) && word.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The repository and tag `image ls` shows for a recorded name, in Docker's
/// familiar form (`docker.io/library/busybox:latest` → `busybox`, `latest`).
/// A name recorded by digest only shows `<none>`, `<none>`.
pub fn repo_and_tag(name: &str) -> (String, String) {
    let Ok(r) = Reference::try_from(name) else {
        return ("<none>".into(), "<none>".into());
    };
    if name.starts_with("sha256:") {
        return ("<none>".into(), "<none>".into());
    }
    let repo = match r.registry() {
        "docker.io" => r
            .repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_owned(),
        reg => format!("{reg}/{}", r.repository()),
    };
    (repo, r.tag().unwrap_or("<none>").to_owned())
}

/// `repo@digest` for a recorded name (Docker's RepoDigests), or `None` for
/// an unnamed image.
pub fn repo_digest(name: &str, digest: &str) -> Option<String> {
    let (repo, _) = repo_and_tag(name);
    (repo != "<none>").then(|| format!("{repo}@{digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_normalize_like_docker_hub() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("weft-test/busybox:oci").unwrap(),
            "docker.io/weft-test/busybox:oci"
        );
        assert_eq!(
            normalize("localhost:5000/a/b:1").unwrap(),
            "localhost:5000/a/b:1"
        );
        assert_eq!(
            normalize(&format!("busybox@{D}")).unwrap(),
            format!("docker.io/library/busybox@{D}")
        );
    }

    #[test]
    fn words_are_names_digests_or_id_prefixes() {
        assert_eq!(
            Query::parse("busybox"),
            Some(Query::Name("docker.io/library/busybox:latest".into()))
        );
        assert_eq!(Query::parse(D), Some(Query::Digest(D.into())));
        assert_eq!(Query::parse("sha256:abc"), None);
        // Hex is a valid name too: the ID reading is the alternative.
        assert!(matches!(Query::parse("3f57d9401f8d"), Some(Query::Name(_))));
        assert_eq!(
            Query::alternative("3f57d9401f8d"),
            Some(Query::IdPrefix("3f57d9401f8d".into()))
        );
        assert_eq!(Query::parse("Not A Name"), None);
    }

    #[test]
    fn ls_shows_familiar_names() {
        assert_eq!(
            repo_and_tag("docker.io/library/busybox:latest"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            repo_and_tag("docker.io/weft-test/busybox:oci"),
            ("weft-test/busybox".into(), "oci".into())
        );
        assert_eq!(
            repo_and_tag("example.com:5000/a:1"),
            ("example.com:5000/a".into(), "1".into())
        );
        assert_eq!(repo_and_tag(D), ("<none>".into(), "<none>".into()));
        assert_eq!(
            repo_digest("docker.io/library/busybox:latest", D).unwrap(),
            format!("busybox@{D}")
        );
        assert_eq!(repo_digest(D, D), None);
    }
}
