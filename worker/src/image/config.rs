//! An image's configuration as the OCI image spec and Docker write it: the
//! defaults a container starts from (entrypoint, command, environment,
//! working directory, user, stop signal, health check) and the layers'
//! uncompressed digests.
//!
//! One serde type for both formats: Docker's config is the OCI one plus
//! `Healthcheck` (which `oci_spec::image::ImageConfiguration` lacks), and
//! unknown fields are ignored, so any image config parses.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The image configuration blob (`application/vnd.oci.image.config.v1+json`
/// or `application/vnd.docker.container.image.v1+json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// RFC 3339 creation time, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The defaults a container starts from.
    #[serde(default)]
    pub config: RunConfig,
    /// The layers, as uncompressed digests.
    #[serde(default)]
    pub rootfs: RootFs,
}

/// The `config` object: what `docker run IMAGE` starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `NAME=value` entries.
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// The program and its fixed arguments.
    #[serde(default, deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    /// Default arguments (or the program, without an entrypoint).
    #[serde(default, deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    /// Absolute working directory; empty means `/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// Labels.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// The signal that asks the container to stop (`SIGTERM`, `15`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Docker's health check (not in the OCI spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
}

/// Docker's `HEALTHCHECK`. Durations are nanoseconds on the wire; zero means
/// "inherit the default".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", prog, args…]` or `["CMD-SHELL", command]`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub test: Vec<String>,
    /// Time between checks, in ns.
    #[serde(default)]
    pub interval: u64,
    /// Time one check may take, in ns.
    #[serde(default)]
    pub timeout: u64,
    /// Grace time after start, in ns, during which failures do not count.
    #[serde(default)]
    pub start_period: u64,
    /// Consecutive failures that make the container unhealthy.
    #[serde(default)]
    pub retries: u32,
}

impl Healthcheck {
    /// The check's interval as a duration (zero if unset).
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }
}

/// The `rootfs` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `sha256:…` digest of each uncompressed layer, bottom first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<String>,
}

/// Docker writes `null` for empty lists and maps.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The snapshot chain ids of the layers, bottom first: the first is the
    /// first diff id, each next one is `sha256(previous + " " + diff id)`.
    /// The last one names the image's root filesystem snapshot.
    pub fn chain_ids(&self) -> Vec<String> {
        use sha2::{Digest, Sha256};
        let mut out: Vec<String> = Vec::with_capacity(self.rootfs.diff_ids.len());
        for diff in &self.rootfs.diff_ids {
            let next = match out.last() {
                None => diff.clone(),
                Some(prev) => {
                    let h = Sha256::digest(format!("{prev} {diff}").as_bytes());
                    format!("sha256:{}", hex::encode(h))
                }
            };
            out.push(next);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_nulls_and_healthcheck_parse() {
        let c = ImageConfig::parse(
            br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],
            "Entrypoint":null,"Labels":null,"Healthcheck":{"Test":["CMD-SHELL","true"],
            "Interval":5000000000,"Retries":3}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},
            "history":[{"created_by":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(c.config.cmd, ["sh"]);
        assert!(c.config.env.is_empty() && c.config.entrypoint.is_empty());
        let h = c.config.healthcheck.unwrap();
        assert_eq!(h.interval(), Duration::from_secs(5));
        assert_eq!(h.retries, 3);
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let mut c = ImageConfig::default();
        c.rootfs.diff_ids = vec!["sha256:a".into(), "sha256:b".into()];
        let ids = c.chain_ids();
        assert_eq!(ids[0], "sha256:a");
        // sha256("sha256:a sha256:b")
        let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sha256:a sha256:b"));
        assert_eq!(ids[1], format!("sha256:{want}"));
    }
}
