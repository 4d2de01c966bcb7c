//! What loading an archive will write, decided before anything is written:
//! the blobs (children before parents, each once, with the GC labels that
//! make a parent keep its children), and the images (names, target,
//! manifest, config, layers) to record and unpack.
//!
//! Pure: reads the archive through its [`ArchiveIndex`] only. Every blob a
//! manifest names must be in the archive with that digest and size, so an
//! archive that lies is refused here and containerd is never touched.
//!
//! ```text
//!   OCI layout:  index.json ─► [index ─► platform's] manifest ─► config, layers
//!   docker save: manifest.json entry ─► config, layers ─► synthesized schema2 manifest
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ImageConfig;
use super::archive::{ArchiveError, ArchiveIndex, FileEntry, Format, Limits};
use super::reference;

/// `application/vnd.oci.image.index.v1+json`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.manifest.v1+json`.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's manifest list (an index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker's schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's layer type. containerd's differ detects the compression of
/// layers of this type from their bytes, so it fits the uncompressed
/// `layer.tar`s of docker save too (containerd's own importer uses it).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The annotation containerd (and Docker ≥ 25) put the full image name in.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation naming a manifest in an index (usually a bare tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor, as in manifests and indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// What the blob is.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OS and architecture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// `v8` for arm64, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// This node's platform, in Go's names (as images use them).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: None,
        }
    }

    /// The manifest for this platform among an index's entries.
    pub fn pick(&self, manifests: &[Descriptor]) -> Option<Descriptor> {
        manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == self.os && p.architecture == self.architecture)
                    && matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
            })
            .cloned()
    }
}

/// An index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Index {
    /// The manifests (or nested indexes) it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Docker writes it, OCI may.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// One entry of docker save's manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// Where a blob's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobSource {
    /// A file of the spooled archive.
    Archive(FileEntry),
    /// Made by the planner (docker save's synthesized manifest).
    Bytes(Vec<u8>),
}

/// One blob to write to containerd's content store.
#[derive(Clone, Debug)]
pub struct BlobWrite {
    /// What it is; containerd checks the digest and size at commit.
    pub descriptor: Descriptor,
    /// Its bytes.
    pub source: BlobSource,
    /// GC references to its children (`containerd.io/gc.ref.content.*`).
    pub labels: BTreeMap<String, String>,
}

/// One image the archive holds.
#[derive(Clone, Debug)]
pub struct PlannedImage {
    /// Normalized names to record it under (empty: unnamed, recorded by digest).
    pub names: Vec<String>,
    /// What the records point at (a manifest, or an index holding it).
    pub target: Descriptor,
    /// The manifest for this node's platform.
    pub manifest: Descriptor,
    /// The config's descriptor.
    pub config_descriptor: Descriptor,
    /// The parsed config.
    pub config: ImageConfig,
    /// The layers, bottom first (as many as `config.rootfs.diff_ids`).
    pub layers: Vec<Descriptor>,
}

/// Everything a load does, in order.
#[derive(Clone, Debug)]
pub struct ImportPlan {
    /// The archive's format.
    pub format: Format,
    /// Blobs to write, children first, each digest once.
    pub blobs: Vec<BlobWrite>,
    /// Images to unpack and then record.
    pub images: Vec<PlannedImage>,
}

/// Plans the load of the archive indexed by `index` (bytes readable from
/// `src`). `tag`, if given, is one more name for the archive's only image.
pub fn plan<R: Read + Seek>(
    index: &ArchiveIndex,
    src: &mut R,
    tag: Option<&str>,
    platform: &Platform,
    limits: &Limits,
) -> Result<ImportPlan, ArchiveError> {
    let format = index.format()?;
    let mut planner = Planner {
        index,
        src,
        limits,
        blobs: Vec::new(),
        seen: BTreeSet::new(),
        images: Vec::new(),
    };
    match format {
        Format::OciLayout => planner.oci(platform)?,
        Format::DockerSave => planner.docker_save()?,
    }
    let mut images = planner.images;
    let blobs = planner.blobs;
    if images.is_empty() {
        return Err(ArchiveError::Invalid("the archive holds no image".into()));
    }
    if let Some(tag) = tag {
        if images.len() != 1 {
            return Err(ArchiveError::Invalid(format!(
                "--tag names one image, but the archive holds {}",
                images.len()
            )));
        }
        let name = reference::normalize(tag).map_err(|_| {
            ArchiveError::Invalid(format!("--tag {tag:?} is not a valid image name"))
        })?;
        if !images[0].names.contains(&name) {
            images[0].names.push(name);
        }
    }
    Ok(ImportPlan {
        format,
        blobs,
        images,
    })
}

struct Planner<'a, R> {
    index: &'a ArchiveIndex,
    src: &'a mut R,
    limits: &'a Limits,
    blobs: Vec<BlobWrite>,
    seen: BTreeSet<String>,
    images: Vec<PlannedImage>,
}

impl<R: Read + Seek> Planner<'_, R> {
    fn push(&mut self, blob: BlobWrite) {
        if self.seen.insert(blob.descriptor.digest.clone()) {
            self.blobs.push(blob);
        }
    }

    /// The archive file of a `blobs/<alg>/<hex>` blob, checked against its descriptor.
    fn blob_file(&self, d: &Descriptor) -> Result<FileEntry, ArchiveError> {
        let hex = d
            .digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                ArchiveError::Invalid(format!(
                    "unsupported digest {:?} (weft reads sha256 digests only)",
                    d.digest
                ))
            })?;
        let name = format!("blobs/sha256/{hex}");
        let file = self
            .index
            .file(&name)?
            .ok_or_else(|| ArchiveError::Missing {
                what: "blob",
                name: name.clone(),
            })?
            .clone();
        check(&name, &file, &d.digest, Some(d.size))?;
        Ok(file)
    }

    /// Reads and parses a JSON blob named by `d`.
    fn json_blob<T: serde::de::DeserializeOwned>(
        &mut self,
        d: &Descriptor,
        what: &'static str,
    ) -> Result<(T, FileEntry), ArchiveError> {
        let file = self.blob_file(d)?;
        let name = format!("blobs/{}", d.digest.replace(':', "/"));
        let (bytes, _) = self
            .index
            .read_json(self.src, &name, self.limits.max_json)?;
        let value = serde_json::from_slice(&bytes).map_err(|source| ArchiveError::BadJson {
            name,
            what,
            source,
        })?;
        Ok((value, file))
    }

    fn oci(&mut self, platform: &Platform) -> Result<(), ArchiveError> {
        let (bytes, _) = self
            .index
            .read_json(self.src, "index.json", self.limits.max_json)?;
        let top: Index =
            serde_json::from_slice(&bytes).map_err(|source| ArchiveError::BadJson {
                name: "index.json".into(),
                what: "OCI image index",
                source,
            })?;
        // The same manifest may be listed under several names.
        let mut by_target: BTreeMap<String, usize> = BTreeMap::new();
        for d in &top.manifests {
            let names = oci_names(d)?;
            if let Some(&i) = by_target.get(&d.digest) {
                for n in names {
                    if !self.images[i].names.contains(&n) {
                        self.images[i].names.push(n);
                    }
                }
                continue;
            }
            let image = match d.media_type.as_str() {
                OCI_INDEX | DOCKER_MANIFEST_LIST => self.nested_index(d, platform, names)?,
                OCI_MANIFEST | DOCKER_MANIFEST => self.manifest(d, d.clone(), names)?,
                other => {
                    return Err(ArchiveError::Invalid(format!(
                        "index.json lists {} of unsupported media type {other:?}",
                        d.digest
                    )));
                }
            };
            by_target.insert(d.digest.clone(), self.images.len());
            self.images.push(image);
        }
        Ok(())
    }

    /// An index inside the layout: only this platform's manifest is loaded
    /// (an archive of a multi-platform image often holds only one).
    fn nested_index(
        &mut self,
        d: &Descriptor,
        platform: &Platform,
        names: Vec<String>,
    ) -> Result<PlannedImage, ArchiveError> {
        let (index, file): (Index, FileEntry) = self.json_blob(d, "image index")?;
        let chosen = platform.pick(&index.manifests).ok_or_else(|| {
            ArchiveError::Invalid(format!(
                "index {} has no {}/{} image",
                d.digest, platform.os, platform.architecture
            ))
        })?;
        let image = self.manifest(&chosen, d.clone(), names)?;
        self.push(BlobWrite {
            descriptor: d.clone(),
            source: BlobSource::Archive(file),
            labels: index_labels(&chosen),
        });
        Ok(image)
    }

    fn manifest(
        &mut self,
        d: &Descriptor,
        target: Descriptor,
        names: Vec<String>,
    ) -> Result<PlannedImage, ArchiveError> {
        let (manifest, file): (Manifest, FileEntry) = self.json_blob(d, "image manifest")?;
        let (config, config_file): (ImageConfig, FileEntry) =
            self.json_blob(&manifest.config, "image config")?;
        self.check_layers(&config, manifest.layers.len())?;
        let mut layer_files = Vec::new();
        for l in &manifest.layers {
            layer_files.push(self.blob_file(l)?);
        }
        for (l, f) in manifest.layers.iter().zip(layer_files) {
            self.push(BlobWrite {
                descriptor: l.clone(),
                source: BlobSource::Archive(f),
                labels: BTreeMap::new(),
            });
        }
        self.push(BlobWrite {
            descriptor: manifest.config.clone(),
            source: BlobSource::Archive(config_file),
            labels: BTreeMap::new(),
        });
        self.push(BlobWrite {
            descriptor: d.clone(),
            source: BlobSource::Archive(file),
            labels: manifest_labels(&manifest),
        });
        Ok(PlannedImage {
            names,
            target,
            manifest: d.clone(),
            config_descriptor: manifest.config.clone(),
            config,
            layers: manifest.layers,
        })
    }

    fn check_layers(&self, config: &ImageConfig, layers: usize) -> Result<(), ArchiveError> {
        if layers > self.limits.max_layers {
            return Err(ArchiveError::Invalid(format!(
                "the image has {layers} layers, over the limit of {}",
                self.limits.max_layers
            )));
        }
        if config.rootfs.diff_ids.len() != layers {
            return Err(ArchiveError::Invalid(format!(
                "the manifest lists {layers} layers but the config {} diff ids",
                config.rootfs.diff_ids.len()
            )));
        }
        Ok(())
    }

    fn docker_save(&mut self) -> Result<(), ArchiveError> {
        let (bytes, _) = self
            .index
            .read_json(self.src, "manifest.json", self.limits.max_json)?;
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(&bytes).map_err(|source| ArchiveError::BadJson {
                name: "manifest.json".into(),
                what: "docker save manifest",
                source,
            })?;
        for entry in entries {
            let (config_bytes, config_file) =
                self.index
                    .read_json(self.src, &entry.config, self.limits.max_json)?;
            // docker save names the config by its digest (`<hex>.json`, or
            // `blobs/sha256/<hex>` since Docker 25): hold it to that name.
            let stem = entry
                .config
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".json");
            if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
                check(&entry.config, &config_file, &format!("sha256:{stem}"), None)?;
            }
            let config =
                ImageConfig::parse(&config_bytes).map_err(|source| ArchiveError::BadJson {
                    name: entry.config.clone(),
                    what: "image config",
                    source,
                })?;
            self.check_layers(&config, entry.layers.len())?;
            let mut layers = Vec::new();
            for path in &entry.layers {
                let file = self
                    .index
                    .file(path)?
                    .ok_or_else(|| ArchiveError::Missing {
                        what: "layer",
                        name: path.clone(),
                    })?
                    .clone();
                let descriptor = Descriptor {
                    media_type: DOCKER_LAYER.into(),
                    digest: file.digest.clone(),
                    size: file.size,
                    ..Descriptor::default()
                };
                self.push(BlobWrite {
                    descriptor: descriptor.clone(),
                    source: BlobSource::Archive(file),
                    labels: BTreeMap::new(),
                });
                layers.push(descriptor);
            }
            let config_descriptor = Descriptor {
                media_type: DOCKER_CONFIG.into(),
                digest: config_file.digest.clone(),
                size: config_file.size,
                ..Descriptor::default()
            };
            self.push(BlobWrite {
                descriptor: config_descriptor.clone(),
                source: BlobSource::Archive(config_file),
                labels: BTreeMap::new(),
            });
            let manifest = Manifest {
                schema_version: 2,
                media_type: DOCKER_MANIFEST.into(),
                config: config_descriptor.clone(),
                layers: layers.clone(),
            };
            let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
            let descriptor = Descriptor {
                media_type: DOCKER_MANIFEST.into(),
                digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
                size: bytes.len() as u64,
                ..Descriptor::default()
            };
            self.push(BlobWrite {
                descriptor: descriptor.clone(),
                source: BlobSource::Bytes(bytes),
                labels: manifest_labels(&manifest),
            });
            let mut names = Vec::new();
            for t in entry.repo_tags.unwrap_or_default() {
                let n = reference::normalize(&t).map_err(|_| {
                    ArchiveError::Invalid(format!("manifest.json names an invalid image {t:?}"))
                })?;
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            self.images.push(PlannedImage {
                names,
                target: descriptor.clone(),
                manifest: descriptor,
                config_descriptor,
                config,
                layers,
            });
        }
        Ok(())
    }
}

/// An index keeps the one manifest weft stores of it (this node's platform) alive.
pub(crate) fn index_labels(manifest: &Descriptor) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(
        "containerd.io/gc.ref.content.m.0".into(),
        manifest.digest.clone(),
    );
    labels
}

/// A manifest keeps its config and layers alive.
pub(crate) fn manifest_labels(m: &Manifest) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(
        "containerd.io/gc.ref.content.config".into(),
        m.config.digest.clone(),
    );
    for (i, l) in m.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    labels
}

/// The names an index entry gives its image: the full name containerd and
/// Docker annotate, or the OCI ref name when it is a full reference. A bare
/// tag (umoci's `latest`) names nothing: the image is recorded by digest.
fn oci_names(d: &Descriptor) -> Result<Vec<String>, ArchiveError> {
    let full = d.annotations.get(ANNOTATION_IMAGE_NAME).or_else(|| {
        d.annotations
            .get(ANNOTATION_REF_NAME)
            .filter(|r| r.contains('/') || r.contains(':'))
    });
    match full {
        None => Ok(Vec::new()),
        Some(n) => reference::normalize(n)
            .map(|n| vec![n])
            .map_err(|_| ArchiveError::Invalid(format!("index.json names an invalid image {n:?}"))),
    }
}

/// The entry's bytes hash to `digest` and it has `size` bytes.
fn check(
    name: &str,
    file: &FileEntry,
    digest: &str,
    size: Option<u64>,
) -> Result<(), ArchiveError> {
    if file.digest != digest {
        return Err(ArchiveError::DigestMismatch {
            name: name.to_owned(),
            expected: digest.to_owned(),
            actual: file.digest.clone(),
        });
    }
    if let Some(size) = size
        && file.size != size
    {
        return Err(ArchiveError::SizeMismatch {
            name: name.to_owned(),
            expected: size,
            actual: file.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::image::archive::tests::{TarBuilder, sha};

    fn hex_of(d: &str) -> &str {
        d.strip_prefix("sha256:").unwrap()
    }

    fn config_json(diff_ids: &[String]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// A one-layer OCI layout; `tamper` changes the layer after its digest
    /// was taken.
    fn oci_layout(ref_name: &str, tamper: bool) -> Vec<u8> {
        let layer = b"pretend this is a tar".to_vec();
        let config = config_json(&[sha(&layer)]);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(&manifest),
                           "size": manifest.len(),
                           "annotations": {ANNOTATION_REF_NAME: ref_name}}],
        }))
        .unwrap();
        let mut stored_layer = layer.clone();
        if tamper {
            stored_layer[0] ^= 1;
        }
        TarBuilder::new()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .file("index.json", &index)
            .file(
                &format!("blobs/sha256/{}", hex_of(&sha(&layer))),
                &stored_layer,
            )
            .file(&format!("blobs/sha256/{}", hex_of(&sha(&config))), &config)
            .file(
                &format!("blobs/sha256/{}", hex_of(&sha(&manifest))),
                &manifest,
            )
            .finish()
    }

    /// Two docker-save images sharing their layer, the second's a symlink.
    fn docker_save() -> Vec<u8> {
        let layer = b"layer bytes".to_vec();
        let c1 = config_json(&[sha(&layer)]);
        let mut c2v: serde_json::Value = serde_json::from_slice(&c1).unwrap();
        c2v["config"]["Cmd"] = serde_json::json!(["/bin/true"]);
        let c2 = serde_json::to_vec(&c2v).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": format!("{}.json", hex_of(&sha(&c1))),
             "RepoTags": ["busybox:latest", "example.com/team/bb:1"],
             "Layers": ["aaa/layer.tar"]},
            {"Config": format!("{}.json", hex_of(&sha(&c2))),
             "RepoTags": null,
             "Layers": ["bbb/layer.tar"]},
        ]))
        .unwrap();
        TarBuilder::new()
            .file("manifest.json", &manifest)
            .file(&format!("{}.json", hex_of(&sha(&c1))), &c1)
            .file(&format!("{}.json", hex_of(&sha(&c2))), &c2)
            .file("aaa/layer.tar", &layer)
            .symlink("bbb/layer.tar", "../aaa/layer.tar")
            .finish()
    }

    fn plan_of(tar: &[u8], tag: Option<&str>) -> Result<ImportPlan, ArchiveError> {
        let limits = Limits::default();
        let index = ArchiveIndex::build(tar, &limits)?;
        plan(
            &index,
            &mut Cursor::new(tar),
            tag,
            &Platform::host(),
            &limits,
        )
    }

    #[test]
    fn an_oci_layout_plans_children_first() {
        let p = plan_of(&oci_layout("latest", false), None).unwrap();
        assert_eq!(p.format, Format::OciLayout);
        let kinds: Vec<&str> = p
            .blobs
            .iter()
            .map(|b| b.descriptor.media_type.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.oci.image.config.v1+json",
                OCI_MANIFEST
            ]
        );
        let manifest = &p.blobs[2];
        assert_eq!(
            manifest.labels["containerd.io/gc.ref.content.config"],
            p.blobs[1].descriptor.digest
        );
        assert_eq!(
            manifest.labels["containerd.io/gc.ref.content.l.0"],
            p.blobs[0].descriptor.digest
        );
        assert_eq!(p.images.len(), 1);
        // A bare tag names nothing.
        assert!(p.images[0].names.is_empty());
        assert_eq!(p.images[0].config.config.cmd, ["/bin/sh"]);
    }

    #[test]
    fn names_come_from_full_refs_and_tag() {
        let p = plan_of(&oci_layout("example.com/a/b:v1", false), Some("busybox")).unwrap();
        assert_eq!(
            p.images[0].names,
            ["example.com/a/b:v1", "docker.io/library/busybox:latest"]
        );
    }

    #[test]
    fn a_tampered_layer_is_refused_before_containerd() {
        let err = plan_of(&oci_layout("latest", true), None).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::DigestMismatch { name, .. } if name.starts_with("blobs/sha256/")),
            "{err:?}"
        );
        assert!(err.to_string().contains("tampered"), "{err}");
    }

    #[test]
    fn a_missing_blob_is_refused() {
        let full = oci_layout("latest", false);
        // Rebuild without the layer.
        let limits = Limits::default();
        let index = ArchiveIndex::build(&full[..], &limits).unwrap();
        let p = plan(
            &index,
            &mut Cursor::new(&full),
            None,
            &Platform::host(),
            &limits,
        )
        .unwrap();
        let layer = &p.blobs[0].descriptor.digest;
        let mut b = TarBuilder::new();
        let mut archive = tar::Archive::new(&full[..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            if path.ends_with(hex_of(layer)) {
                continue;
            }
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            b = b.file(&path, &data);
        }
        let err = plan_of(&b.finish(), None).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Missing { what: "blob", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn docker_save_gets_a_synthesized_manifest_and_shares_its_layer() {
        let p = plan_of(&docker_save(), None).unwrap();
        assert_eq!(p.format, Format::DockerSave);
        assert_eq!(p.images.len(), 2);
        assert_eq!(
            p.images[0].names,
            ["docker.io/library/busybox:latest", "example.com/team/bb:1"]
        );
        assert!(p.images[1].names.is_empty());
        // One layer blob for both images (the symlink resolves to it).
        let layers: Vec<_> = p
            .blobs
            .iter()
            .filter(|b| b.descriptor.media_type == DOCKER_LAYER)
            .collect();
        assert_eq!(layers.len(), 1);
        assert_eq!(p.images[0].layers, p.images[1].layers);
        let manifest = p
            .blobs
            .iter()
            .find(|b| b.descriptor.digest == p.images[0].target.digest)
            .unwrap();
        let BlobSource::Bytes(bytes) = &manifest.source else {
            panic!("synthesized")
        };
        assert_eq!(sha(bytes), manifest.descriptor.digest);
        let m: Manifest = serde_json::from_slice(bytes).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        assert_eq!(m.config.media_type, DOCKER_CONFIG);
        assert_eq!(
            manifest.labels["containerd.io/gc.ref.content.config"],
            m.config.digest
        );
        // --tag needs one image.
        assert!(matches!(
            plan_of(&docker_save(), Some("x")).unwrap_err(),
            ArchiveError::Invalid(_)
        ));
    }

    #[test]
    fn a_docker_save_config_must_match_its_name() {
        let good = docker_save();
        let mut b = TarBuilder::new();
        let mut archive = tar::Archive::new(&good[..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            if e.header().entry_type().is_symlink() {
                let target = e.link_name().unwrap().unwrap().display().to_string();
                b = b.symlink(&path, &target);
                continue;
            }
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            if path.ends_with(".json") && path != "manifest.json" {
                let text = String::from_utf8(data)
                    .unwrap()
                    .replace("/bin/sh", "/bin/XX");
                data = text.into_bytes();
            }
            b = b.file(&path, &data);
        }
        let err = plan_of(&b.finish(), None).unwrap_err();
        assert!(
            matches!(err, ArchiveError::DigestMismatch { .. }),
            "{err:?}"
        );
    }
}
