//! `weft image load|pull|ls|inspect|rm` end to end: a real daemon (in its
//! own network namespace) on a private containerd per test, with `ctr` as
//! the independent view of what containerd holds (STYLE rule 9). Pulls are
//! from a real registry (Distribution's `docker-registry`) the test starts
//! in a lab host's namespace and pushes the test image into with skopeo.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Lab;
use common::containerd::PrivateContainerd;
use common::image::{Registry, busybox, tar_entries, write_tar};

const NS: &str = "weft";

/// One node: its containerd and a daemon using it. The daemon goes first
/// on drop (fields drop in order), then containerd.
struct Node {
    lab: Lab,
    ctrd: PrivateContainerd,
}

impl Node {
    fn start(test: &str) -> Node {
        let ctrd = PrivateContainerd::start(test);
        let mut lab = Lab::new(test, &["n1"]);
        let socket = ctrd.socket().display().to_string();
        lab.start_with("n1", &["--containerd-socket", &socket]);
        Node { lab, ctrd }
    }

    fn weft(&self, args: &[&str]) -> String {
        self.lab.weft("n1", args)
    }

    fn weft_err(&self, args: &[&str]) -> String {
        self.lab.weft_err("n1", args)
    }

    fn ctr(&self, args: &[&str]) -> Vec<String> {
        self.ctrd
            .ctr_ok(NS, args)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Committed snapshots in the overlayfs snapshotter (not extraction
    /// keys in progress).
    fn snapshots(&self) -> Vec<String> {
        self.ctr(&["snapshots", "ls"])
            .into_iter()
            .skip(1)
            .filter(|l| l.contains("Committed"))
            .collect()
    }

    /// Files left in the upload spool directory.
    fn spool_files(&self) -> Vec<PathBuf> {
        let dir = self.lab.host_dir("n1").join("run/images");
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn load(&self, archive: &Path, extra: &[&str]) -> String {
        let path = archive.display().to_string();
        let mut args = vec!["image", "load", "-i", path.as_str()];
        args.extend_from_slice(extra);
        self.weft(&args)
    }
}

fn rows(ls: &str) -> Vec<Vec<String>> {
    ls.lines()
        .skip(1)
        .map(|l| {
            l.split("   ")
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
}

/// The image `i` inspected by its short ID and by name@digest, through a
/// template, and an unknown image refused.
fn inspect_by_id_digest_and_template(
    node: &Node,
    short: &str,
    digest: &str,
    i: &serde_json::Value,
) {
    let by_id: serde_json::Value =
        serde_json::from_str(&node.weft(&["image", "inspect", short])).unwrap();
    assert_eq!(by_id[0]["Id"], i["Id"]);
    let by_digest: serde_json::Value =
        serde_json::from_str(&node.weft(&["image", "inspect", digest])).unwrap();
    assert_eq!(by_digest[0]["Id"], i["Id"]);
    let id = node.weft(&["image", "inspect", "--format", "{{.Id}}", digest]);
    assert_eq!(id.trim(), i["Id"].as_str().unwrap());
    let err = node.weft_err(&["image", "inspect", "nosuch"]);
    assert!(err.contains("no such image: nosuch on this node"), "{err}");
}

#[test]
fn both_formats_load_list_inspect_and_remove() {
    let images = busybox();
    let node = Node::start("img-both");
    node.lab.init("n1", &[]);

    let started = Instant::now();
    let out = node.load(&images.oci, &["--tag", "weft-test/busybox:oci"]);
    let oci_time = started.elapsed();
    assert_eq!(out.trim(), "Loaded image: weft-test/busybox:oci", "{out}");
    let started = Instant::now();
    let out = node.load(&images.docker, &[]);
    let docker_time = started.elapsed();
    assert_eq!(
        out.trim(),
        "Loaded image: weft-test/busybox:latest",
        "{out}"
    );
    eprintln!(
        "load times: OCI layout {} ms, docker-save {} ms",
        oci_time.as_millis(),
        docker_time.as_millis()
    );

    // weft's view.
    let ls = node.weft(&["image", "ls"]);
    let header = ls.lines().next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{ls}");
    }
    let rows = rows(&ls);
    assert_eq!(rows.len(), 2, "{ls}");
    assert_eq!(rows[0][..2], ["weft-test/busybox", "latest"], "{ls}");
    // --format: a template over docker's field names, or json.
    let tags = node.weft(&[
        "image",
        "ls",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ]);
    assert_eq!(
        tags,
        format!(
            "weft-test/busybox:latest {}\nweft-test/busybox:oci {}\n",
            rows[0][2], rows[1][2]
        )
    );
    let json = node.weft(&["image", "ls", "--format", "json", "--no-trunc"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert!(
        first["ID"].as_str().unwrap().starts_with("sha256:"),
        "{json}"
    );
    assert_eq!(rows[1][..2], ["weft-test/busybox", "oci"], "{ls}");
    for r in &rows {
        assert_eq!(r[2].len(), 12, "short ID: {ls}");
        assert!(r[2].bytes().all(|b| b.is_ascii_hexdigit()), "{ls}");
        assert!(r[3].ends_with("ago"), "created: {ls}");
        assert!(r[4].ends_with("MB"), "size (busybox is about 2 MB): {ls}");
    }

    // containerd's view: the records, their blobs, one shared snapshot.
    let names = node.ctr(&["images", "ls", "-q"]);
    assert_eq!(
        names,
        [
            "docker.io/weft-test/busybox:latest",
            "docker.io/weft-test/busybox:oci"
        ],
    );
    let content = node.ctr(&["content", "ls", "-q"]);
    // OCI: manifest, config, gzip layer; docker-save: synthesized manifest,
    // uncompressed layer, and the same config (skopeo keeps its bytes, so
    // both have one image ID, as Docker would show them).
    assert_eq!(content.len(), 5, "{content:?}");
    assert_eq!(rows[0][2], rows[1][2], "{ls}");
    let snapshots = node.snapshots();
    assert_eq!(
        snapshots.len(),
        1,
        "both share the one layer's snapshot: {snapshots:?}"
    );
    assert!(
        node.ctr(&["leases", "ls", "-q"]).is_empty(),
        "the load's lease is gone"
    );
    assert!(node.spool_files().is_empty(), "{:?}", node.spool_files());
    // The config keeps the snapshot alive.
    let info = node.ctrd.ctr_ok(NS, &["content", "ls"]);
    assert!(
        info.contains("containerd.io/gc.ref.snapshot.overlayfs="),
        "{info}"
    );

    // Inspect, in Docker's shape.
    let json = node.weft(&["image", "inspect", "weft-test/busybox:oci"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
    let i = &v[0];
    assert!(i["Id"].as_str().unwrap().starts_with("sha256:"), "{json}");
    // One config, so one image with both names (as Docker shows it), and a
    // digest per manifest.
    assert_eq!(
        i["RepoTags"],
        serde_json::json!(["weft-test/busybox:latest", "weft-test/busybox:oci"])
    );
    let digests = i["RepoDigests"].as_array().unwrap();
    assert_eq!(digests.len(), 2, "{json}");
    let digest = format!(
        "weft-test/busybox@{}",
        i["Descriptor"]["digest"].as_str().unwrap()
    );
    assert!(digests.contains(&serde_json::json!(digest)), "{json}");
    let digest = digest.as_str();
    assert_eq!(i["Architecture"], "amd64");
    assert_eq!(i["Os"], "linux");
    assert_eq!(i["Config"]["Env"], serde_json::json!(["PATH=/bin"]));
    assert_eq!(i["Config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(i["Config"]["WorkingDir"], "/");
    assert_eq!(i["RootFS"]["Type"], "layers");
    assert_eq!(i["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    assert!(i["Size"].as_u64().unwrap() > 1_000_000, "{json}");
    assert!(i["Created"].as_str().unwrap().starts_with("20"), "{json}");
    let short = rows[1][2].clone();
    inspect_by_id_digest_and_template(&node, &short, digest, i);

    // By ID, both names would go: refused without --force.
    let err = node.weft_err(&["image", "rm", &short]);
    assert!(err.contains("has several names"), "{err}");
    // Remove one name: the other image still holds the snapshot.
    let out = node.weft(&["image", "rm", "weft-test/busybox:oci"]);
    assert!(out.contains("Untagged: weft-test/busybox:oci"), "{out}");
    assert_eq!(
        node.ctr(&["images", "ls", "-q"]),
        ["docker.io/weft-test/busybox:latest"]
    );
    assert_eq!(node.snapshots().len(), 1);
    // Remove the last: after containerd's GC (synchronous on the delete)
    // nothing is left.
    node.weft(&["image", "rm", "weft-test/busybox"]);
    assert!(node.ctr(&["images", "ls", "-q"]).is_empty());
    assert!(
        node.snapshots().is_empty(),
        "{:?}",
        node.ctr(&["snapshots", "ls"])
    );
    assert!(
        node.ctr(&["content", "ls", "-q"]).is_empty(),
        "{:?}",
        node.ctr(&["content", "ls"])
    );
    assert!(node.weft(&["image", "ls", "-q"]).trim().is_empty());
}

#[test]
fn an_unnamed_image_and_a_gzipped_archive() {
    let images = busybox();
    let node = Node::start("img-unnamed");
    // A gzipped OCI layout whose index names its manifest with a bare tag.
    let gz = node.ctrd.dir().join("busybox-oci.tar.gz");
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&std::fs::read(&images.oci).unwrap()).unwrap();
        enc.finish().unwrap();
    }
    let out = node.load(&gz, &[]);
    let id = out
        .trim()
        .strip_prefix("Loaded image ID: ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let ls = node.weft(&["image", "ls"]);
    let rows = rows(&ls);
    assert_eq!(rows.len(), 1, "{ls}");
    assert_eq!(rows[0][..2], ["<none>", "<none>"], "{ls}");
    assert!(id.contains(&rows[0][2]), "{id} vs {ls}");
    // containerd records it by its digest.
    let names = node.ctr(&["images", "ls", "-q"]);
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with("sha256:"), "{names:?}");
    assert!(node.spool_files().is_empty(), "{:?}", node.spool_files());
    // Found by ID; removed by ID.
    let v: serde_json::Value =
        serde_json::from_str(&node.weft(&["image", "inspect", &id])).unwrap();
    assert_eq!(v[0]["Id"], id.as_str());
    assert_eq!(v[0]["RepoTags"], serde_json::json!([]));
    node.weft(&["image", "rm", &rows[0][2]]);
    assert!(node.ctr(&["images", "ls", "-q"]).is_empty());
    assert!(node.snapshots().is_empty());
}

#[test]
fn an_image_in_use_is_not_removed() {
    let images = busybox();
    let node = Node::start("img-inuse");
    node.load(&images.docker, &[]);
    let v: serde_json::Value =
        serde_json::from_str(&node.weft(&["image", "inspect", "weft-test/busybox"])).unwrap();
    let digest = v[0]["Descriptor"]["digest"].as_str().unwrap().to_owned();
    // A container record (no task) carrying the runtime's label.
    node.ctrd.ctr_ok(
        NS,
        &[
            "containers",
            "create",
            "--label",
            &format!("weft.image={digest}"),
            "docker.io/weft-test/busybox:latest",
            "img-inuse-c1",
        ],
    );
    let err = node.weft_err(&["image", "rm", "weft-test/busybox"]);
    assert!(err.contains("in use by container(s) img-inuse-c1"), "{err}");
    assert_eq!(node.ctr(&["images", "ls", "-q"]).len(), 1);
    node.ctrd
        .ctr_ok(NS, &["containers", "delete", "img-inuse-c1"]);
    node.weft(&["image", "rm", "weft-test/busybox"]);
    assert!(node.ctr(&["images", "ls", "-q"]).is_empty());
}

/// Archives made from the OCI test image, each wrong in one way, with a
/// phrase the refusal must contain.
fn bad_archives(dir: &Path, oci: &Path) -> Vec<(&'static str, PathBuf, &'static str)> {
    let entries = tar_entries(oci);
    let mut out = Vec::new();

    let garbage = dir.join("garbage.tar");
    std::fs::write(
        &garbage,
        (0..100_000u32)
            .map(|i| (i * 31 + 7) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    out.push(("garbage", garbage, "not a valid image archive"));

    let truncated = dir.join("truncated.tar");
    let bytes = std::fs::read(oci).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    out.push(("truncated", truncated, "image archive"));

    // The largest blob is the layer: flip one byte of it.
    let mut tampered = entries.clone();
    let layer = tampered.iter_mut().max_by_key(|(_, d, _)| d.len()).unwrap();
    let mid = layer.1.len() / 2;
    layer.1[mid] ^= 0xff;
    let path = dir.join("tampered.tar");
    write_tar(&path, &tampered);
    out.push(("tampered layer", path, "tampered with"));

    // A path climbing out of the archive (written raw: tar writers refuse it).
    let path = dir.join("traversal.tar");
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, _) in entries.iter().filter(|(_, _, l)| l.is_none()) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.as_old_mut().name[..12].copy_from_slice(b"../../escape");
    h.set_cksum();
    b.append(&h, &b"evil"[..]).unwrap();
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    out.push(("path traversal", path, "outside the archive"));

    // A symlink leaving the archive.
    let mut linked = entries.clone();
    linked.push((
        "blobs/sha256/link".into(),
        Vec::new(),
        Some("../../../etc/shadow".into()),
    ));
    let path = dir.join("link.tar");
    write_tar(&path, &linked);
    out.push(("escaping link", path, "leaves the archive"));

    out
}

#[test]
fn bad_archives_are_refused_and_change_nothing() {
    let images = busybox();
    let node = Node::start("img-bad");
    for (what, path, phrase) in bad_archives(node.ctrd.dir(), &images.oci) {
        let err = node.weft_err(&[
            "image",
            "load",
            "-i",
            &path.display().to_string(),
            "--tag",
            "bad:one",
        ]);
        assert!(err.contains(phrase), "{what}: {err}");
        assert!(
            node.ctr(&["images", "ls", "-q"]).is_empty(),
            "{what} left an image record"
        );
        assert!(node.snapshots().is_empty(), "{what} left a snapshot");
        assert!(
            node.ctr(&["leases", "ls", "-q"]).is_empty(),
            "{what} left its lease"
        );
        assert!(
            node.spool_files().is_empty(),
            "{what} left {:?}",
            node.spool_files()
        );
        eprintln!("{what}: refused: {}", err.trim());
    }
    // The node still loads a good archive afterwards.
    node.load(&images.docker, &[]);
    assert_eq!(node.ctr(&["images", "ls", "-q"]).len(), 1);
}

#[test]
fn a_layer_that_lies_about_its_diff_id_is_refused_at_unpack() {
    // A docker-save archive whose config claims another diff id: the layer
    // blob itself is intact (its digest is its name), so only unpacking
    // (containerd's Diff.Apply computes the real one) can tell.
    let images = busybox();
    let node = Node::start("img-diffid");
    let mut entries = tar_entries(&images.docker);
    let config_name = entries
        .iter()
        .find(|(n, _, _)| n.ends_with(".json") && n != "manifest.json" && !n.contains('/'))
        .map(|(n, _, _)| n.clone())
        .expect("config");
    let fake = format!("sha256:{}", "ab".repeat(32));
    let mut new_config = Vec::new();
    let mut new_name = String::new();
    for (name, data, _) in entries.iter_mut() {
        if *name == config_name {
            let mut v: serde_json::Value = serde_json::from_slice(data).unwrap();
            v["rootfs"]["diff_ids"][0] = serde_json::json!(fake);
            new_config = serde_json::to_vec(&v).unwrap();
            use sha2::Digest;
            new_name = format!("{}.json", hex::encode(sha2::Sha256::digest(&new_config)));
            *data = new_config.clone();
            *name = new_name.clone();
        }
    }
    for (name, data, _) in entries.iter_mut() {
        if name == "manifest.json" {
            let text = String::from_utf8(data.clone())
                .unwrap()
                .replace(&config_name, &new_name);
            *data = text.into_bytes();
        }
    }
    assert!(!new_config.is_empty());
    let path = node.ctrd.dir().join("lying.tar");
    write_tar(&path, &entries);
    let err = node.weft_err(&["image", "load", "-i", &path.display().to_string()]);
    assert!(err.contains("unpacks to sha256:"), "{err}");
    assert!(err.contains(&fake), "{err}");
    assert!(node.ctr(&["images", "ls", "-q"]).is_empty());
    assert!(
        node.snapshots().is_empty(),
        "{:?}",
        node.ctr(&["snapshots", "ls"])
    );
    assert!(node.ctr(&["leases", "ls", "-q"]).is_empty());
    // With the lease gone nothing references the refused blobs: the next
    // garbage collection takes them. An image delete runs one synchronously.
    node.load(&images.oci, &["--tag", "good"]);
    node.weft(&["image", "rm", "good"]);
    assert!(
        node.ctr(&["content", "ls", "-q"]).is_empty(),
        "{:?}",
        node.ctr(&["content", "ls"])
    );
}

#[test]
fn containerd_not_running_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("containerd.sock");
    let mut lab = Lab::new("img-noctrd", &["n1"]);
    lab.start_with(
        "n1",
        &["--containerd-socket", &missing.display().to_string()],
    );
    let want = format!(
        "containerd is not running: cannot connect to {} (`make deps` installs it; start it \
         with `containerd &` or `systemctl start containerd`)",
        missing.display()
    );
    let err = lab.weft_err("n1", &["image", "ls"]);
    assert!(err.contains(&want), "{err}");
    let images = busybox();
    let err = lab.weft_err(
        "n1",
        &["image", "load", "-i", &images.docker.display().to_string()],
    );
    assert!(err.contains(&want), "{err}");
    // The daemon runs on (tasks do not need containerd yet).
    lab.weft("n1", &["info"]);
}

/// The runtime's entry point, `ImageStore::get`, against a real containerd:
/// names, digests and IDs resolve to one unpacked image; a missing
/// snapshot chain is unpacked again on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_resolves_references_and_unpacks_lazily() {
    use weft_worker::image::{Fetch, ImageError, ImageSource, ImageStore, Spool, StoreConfig};
    let images = busybox();
    let ctrd = PrivateContainerd::start("img-get");
    let mut config = StoreConfig::new(&ctrd.dir().join("exec"));
    config.socket = ctrd.socket().to_owned();
    let store = ImageStore::new(config);

    let mut spool = Spool::create(&ctrd.dir().join("exec/images"), 1 << 30)
        .await
        .unwrap();
    for chunk in std::fs::read(&images.docker).unwrap().chunks(1 << 20) {
        spool.write(chunk).await.unwrap();
    }
    let loaded = store
        .load(spool.finish().await.unwrap(), Some("busybox".into()))
        .await
        .unwrap();
    let names: Vec<&str> = loaded.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/weft-test/busybox:latest",
            "docker.io/library/busybox:latest"
        ]
    );

    let image = store.get("busybox", Fetch::default()).await.unwrap();
    assert_eq!(image.name, "docker.io/library/busybox:latest");
    assert_eq!(image.digest, loaded[0].digest);
    assert_eq!(image.config.config.cmd, ["/bin/sh"]);
    assert_eq!(
        Some(&image.top_chain_id),
        image.config.chain_ids().last(),
        "{image:?}"
    );
    for reference in [
        format!("weft-test/busybox@{}", image.digest),
        image.digest.clone(),
        loaded[0].id.clone(),
        loaded[0].id["sha256:".len()..][..12].to_owned(),
    ] {
        let other = store.get(&reference, Fetch::default()).await.unwrap();
        assert_eq!(other.digest, image.digest, "{reference}");
        assert_eq!(other.top_chain_id, image.top_chain_id, "{reference}");
    }
    let missing = format!("sha256:{}", "0".repeat(64));
    let err = store.get(&missing, Fetch::default()).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("no such image: {missing} on this node")
    );
    // A name that is not here is pulled; from a registry that is not there,
    // that fails, saying both.
    let err = store
        .get("127.0.0.1:9/nosuch", Fetch::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::PullFailed { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "no such image: 127.0.0.1:9/nosuch on this node; pulling it: cannot reach registry 127.0.0.1:9"
        ),
        "{err}"
    );

    // Take the snapshot away behind the store's back. The store remembers
    // the image unpacked and hands it out unchecked (one containerd call
    // per start, not six); told it is stale (as a container start is,
    // when its snapshot cannot be prepared), get() unpacks again.
    ctrd.ctr_ok(NS, &["snapshots", "rm", &image.top_chain_id]);
    assert!(
        !ctrd
            .ctr_ok(NS, &["snapshots", "ls"])
            .contains(&image.top_chain_id)
    );
    let remembered = store.get("busybox", Fetch::default()).await.unwrap();
    assert_eq!(remembered, image);
    assert!(
        !ctrd
            .ctr_ok(NS, &["snapshots", "ls"])
            .contains(&image.top_chain_id),
        "no unpack without being told"
    );
    ImageSource::stale(&store, &image);
    let started = Instant::now();
    let again = store.get("busybox", Fetch::default()).await.unwrap();
    eprintln!("lazy unpack took {} ms", started.elapsed().as_millis());
    assert_eq!(again, image);
    let snapshots = ctrd.ctr_ok(NS, &["snapshots", "ls"]);
    assert!(
        snapshots.contains(&image.top_chain_id) && snapshots.contains("Committed"),
        "{snapshots}"
    );
    assert!(ctrd.ctr_ok(NS, &["leases", "ls", "-q"]).trim().is_empty());
    drop(store);
}

/// `ctr images ls` rows as (name, digest).
fn ctr_images(ctrd: &PrivateContainerd) -> Vec<(String, String)> {
    ctrd.ctr_ok(NS, &["images", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let name = cols.next()?.to_owned();
            let digest = cols.find(|c| c.starts_with("sha256:"))?.to_owned();
            Some((name, digest))
        })
        .collect()
}

#[test]
fn pull_from_a_registry_on_loopback() {
    let images = busybox();
    let node = Node::start("img-pull");
    // The registry listens on the host's loopback, inside its namespace:
    // plain HTTP without any flag, as Docker allows for loopback.
    let registry = Registry::start("img-pull", &node.lab.host_netns("n1"), "127.0.0.1:5000");
    let reference = registry.push(&images.docker, "weft-test/busybox:latest");

    let started = Instant::now();
    let out = node.weft(&["image", "pull", &reference]);
    eprintln!("pull: {} ms", started.elapsed().as_millis());
    let mut lines = out.lines();
    let digest = lines
        .next()
        .and_then(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    assert_eq!(lines.next(), Some(reference.as_str()), "{out}");
    // containerd's view: the record, its target, and the unpacked layer.
    assert!(
        ctr_images(&node.ctrd).contains(&(reference.clone(), digest.clone())),
        "{:?}",
        ctr_images(&node.ctrd)
    );
    assert_eq!(node.snapshots().len(), 1, "{:?}", node.snapshots());
    let ls = node.weft(&["image", "ls"]);
    assert!(
        ls.contains("127.0.0.1:5000/weft-test/busybox") && ls.contains("latest"),
        "{ls}"
    );

    // Again: the same image, nothing new.
    let again = node.weft(&["image", "pull", "-q", &reference]);
    assert_eq!(again.trim(), reference);
    assert_eq!(ctr_images(&node.ctrd).len(), 1);

    // By digest: recorded as repo@digest, found by it.
    let by_digest = format!("127.0.0.1:5000/weft-test/busybox@{digest}");
    let out = node.weft(&["image", "pull", &by_digest]);
    assert!(out.contains(&by_digest), "{out}");
    assert!(
        ctr_images(&node.ctrd).contains(&(by_digest.clone(), digest.clone())),
        "{:?}",
        ctr_images(&node.ctrd)
    );
    let inspect = node.weft(&["image", "inspect", &by_digest]);
    assert!(inspect.contains(&digest), "{inspect}");

    // Three pulls of a new tag at once: all succeed, one record.
    let two = registry.push(&images.docker, "weft-test/busybox:two");
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| node.lab.try_weft("n1", &["image", "pull", "-q", &two])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let names: Vec<String> = ctr_images(&node.ctrd).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.iter().filter(|n| **n == two).count(), 1, "{names:?}");
    assert_eq!(node.snapshots().len(), 1, "the layer is shared");

    // What cannot be pulled, said clearly; nothing recorded.
    let before = ctr_images(&node.ctrd);
    let err = node.weft_err(&["image", "pull", "127.0.0.1:5000/weft-test/nope:latest"]);
    assert!(
        err.contains("not found in registry 127.0.0.1:5000") && err.contains("manifest unknown"),
        "{err}"
    );
    let err = node.weft_err(&["image", "pull", "127.0.0.1:5999/weft-test/busybox:latest"]);
    assert!(
        err.contains("cannot reach registry 127.0.0.1:5999"),
        "{err}"
    );
    for bad in ["Weft-Test/BusyBox", "busybox@sha256:abc", "a b"] {
        let err = node.weft_err(&["image", "pull", bad]);
        assert!(err.contains("invalid image reference"), "{bad}: {err}");
    }
    assert_eq!(ctr_images(&node.ctrd), before);
    assert!(node.spool_files().is_empty(), "{:?}", node.spool_files());
    drop(registry);
}

/// Hosts each with a private containerd, allowed to pull over plain HTTP
/// from the registry at port 5000 of the first host's underlay address
/// (not loopback, hence the flag). Fields drop in order: daemons, then
/// containerds.
struct PullRig {
    lab: Lab,
    ctrd: Vec<(String, PrivateContainerd)>,
    registry: String,
}

impl PullRig {
    fn new(test: &str, hosts: &[&str]) -> PullRig {
        let ctrd: Vec<_> = hosts
            .iter()
            .map(|h| {
                (
                    h.to_string(),
                    PrivateContainerd::start(&format!("{test}-{h}")),
                )
            })
            .collect();
        let mut lab = Lab::new(test, hosts);
        let registry = format!("{}:5000", lab.addr(hosts[0]));
        let insecure = registry.as_str();
        for (h, c) in &ctrd {
            let flags = [
                "--containerd-socket",
                &c.socket().display().to_string(),
                "--runc-root",
                &c.runc_root().display().to_string(),
                "--cgroup-parent",
                c.cgroup_parent(),
                "--insecure-registry",
                insecure,
            ]
            .map(|f| f.to_owned());
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            lab.start_with(h, &flags);
        }
        PullRig {
            lab,
            ctrd,
            registry,
        }
    }

    fn running(&self, host: &str) -> usize {
        let c = &self.ctrd.iter().find(|(h, _)| h == host).expect("host").1;
        c.ctr_ok(NS, &["tasks", "ls"])
            .lines()
            .filter(|l| l.contains("RUNNING"))
            .count()
    }
}

#[test]
fn a_service_pulled_from_a_registry_runs_on_three_hosts() {
    let images = busybox();
    let hosts = ["m1", "w1", "w2"];
    // The registry runs in m1's namespace on its underlay address, so every
    // host reaches it.
    let rig = PullRig::new("pull-svc", &hosts);
    let lab = &rig.lab;
    let registry_addr = rig.registry.clone();
    let registry = Registry::start("pull-svc", &lab.host_netns("m1"), &registry_addr);
    let reference = registry.push(&images.docker, "weft-test/busybox:latest");

    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    lab.attachable_network("m1", "10.0.9.0/24", "appnet");
    let script =
        "busybox mkdir -p /www && echo $HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www";
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "appnet",
            &reference,
            "sh",
            "-c",
            script,
        ],
    );
    // The CLI pinned the tag's digest once, through its local daemon.
    let inspect: serde_json::Value =
        serde_json::from_str(&lab.weft("m1", &["service", "inspect", "web"])).expect("json");
    let pinned = inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or_else(|| panic!("{inspect}"))
        .to_owned();
    let digest = pinned
        .strip_prefix(&format!("{reference}@"))
        .unwrap_or_else(|| panic!("pinned {pinned:?}"))
        .to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{pinned}"
    );
    wait_for_each_host(&rig, &hosts, &registry);
    // Every node pulled that digest itself: it is in each host's containerd.
    let by_digest = format!("{registry_addr}/weft-test/busybox@{digest}");
    for (h, c) in &rig.ctrd {
        let images = ctr_images(c);
        assert!(
            images.contains(&(by_digest.clone(), digest.clone())),
            "{h}: {images:?}"
        );
    }
    // --no-resolve-image keeps the tag.
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            "tagged",
            "--replicas",
            "0",
            &reference,
        ],
    );
    let inspect = lab.weft("m1", &["service", "inspect", "tagged"]);
    assert!(inspect.contains(&format!("\"{reference}\"")), "{inspect}");
    let pin = common::sleeper(lab, "m1", "client", "appnet");
    let vip = common::vip_of(lab, "m1", "web");
    common::wait_for("web resolves to its VIP", Duration::from_secs(15), || {
        common::resolve(&pin, "web") == BTreeSet::from([vip.clone()])
    });
    common::replicas_behind_vip(&pin, &vip, "web.", 3);

    // An image the registry does not have: `service ps` shows the
    // registry's answer, and the replacements back off.
    let missing = format!("{registry_addr}/weft-test/nope:latest");
    lab.weft(
        "m1",
        &["service", "create", "--detach", "--name", "bad", &missing],
    );
    let shown =
        common::image::assert_fails_and_backs_off(lab, "m1", "bad", "not found in registry");
    assert!(shown.contains("manifest unknown"), "{shown}");

    // A malformed reference is refused before anything is stored.
    let err = lab.weft_err("m1", &["service", "create", "--name", "worse", "not a ref"]);
    assert!(err.contains("invalid image reference"), "{err}");
    lab.weft("m1", &["service", "rm", "bad", "web", "tagged"]);
}

#[test]
fn a_task_shows_pulling_while_its_registry_is_slow() {
    let rig = PullRig::new("pull-slow", &["m1"]);
    let lab = &rig.lab;
    // A registry that takes connections and never answers: a listening
    // socket nobody accepts on (the kernel completes the handshake), on
    // m1's loopback. The node's pull waits on it for its read timeout.
    let silent = common::in_host(lab, "m1", async || {
        std::net::TcpListener::bind("127.0.0.1:5001").expect("bind the silent registry")
    });
    lab.init("m1", &["--heartbeat-period", "500ms"]);
    // --no-resolve-image: the CLI's own resolve would wait on it too.
    create_detached(lab, "slow", "127.0.0.1:5001/weft-test/slow:latest");
    let mut ps = String::new();
    common::wait_for("the task shows pulling", Duration::from_secs(30), || {
        ps = lab.weft("m1", &["service", "ps", "slow"]);
        // The state, not an error's "pulling it: …" (the pull waits).
        ps.lines()
            .skip(1)
            .any(|l| l.contains("pulling") && !l.contains("failed") && !l.contains("pulling it"))
    });
    eprintln!("{ps}");
    lab.weft("m1", &["service", "rm", "slow"]);
    drop(silent);
}

/// `service create --detach --no-resolve-image --name NAME IMAGE` on m1.
fn create_detached(lab: &Lab, name: &str, image: &str) {
    let args = [
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        name,
        image,
    ];
    lab.weft("m1", &args);
}

/// The private registry's user and password, and the htpasswd line for
/// them (bcrypt, made once with Python's `crypt`: Distribution reads
/// bcrypt only).
const USER: &str = "alice";
const PASSWORD: &str = "Sup3rSecret-pw";
const HTPASSWD: &str = "alice:$2b$12$WdvD5gSQZYFmDfIPV8QOJ.Z19bS56sqdUx8SiSjfshbdX8/arN7la";

/// `weft ARGS` inside `host`'s namespace (where the registry is reached),
/// with its credentials file at `config` and `stdin` as its input.
fn weft_login(
    lab: &Lab,
    host: &str,
    config: &Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.host_netns(host).display()))
        .arg(common::WEFT)
        .args(args)
        .env("WEFT_CONFIG", config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("weft output")
}

/// `path` (a file) or every file under it (a directory) whose bytes
/// contain one of `needles`.
fn files_containing(path: &Path, needles: &[&[u8]]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            let entries = std::fs::read_dir(&p).into_iter().flatten().flatten();
            stack.extend(entries.map(|e| e.path()));
        } else if let Ok(bytes) = std::fs::read(&p)
            && needles
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == *n))
        {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_private_registry_with_login_and_registry_auth() {
    use base64::Engine as _;
    let images = busybox();
    let hosts = ["m1", "w1", "w2"];
    let rig = PullRig::new("regauth", &hosts);
    let lab = &rig.lab;
    let creds = format!("{USER}:{PASSWORD}");
    let registry = Registry::start_private(
        "regauth",
        &lab.host_netns("m1"),
        &rig.registry,
        HTPASSWD,
        &creds,
    );
    let reference = registry.push(&images.docker, "private/busybox:latest");
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    // w2 takes no task: it must never receive the credentials.
    lab.weft("m1", &["node", "update", "--availability", "drain", "w2"]);

    // Without credentials: a clear "unauthorized", shown in service ps,
    // and the replacements back off.
    create_detached(lab, "anon", &reference);
    common::image::assert_fails_and_backs_off(lab, "m1", "anon", "unauthorized");
    lab.weft("m1", &["service", "rm", "anon"]);

    // A wrong password: refused, nothing stored.
    let home = tempfile::tempdir().expect("temp dir");
    let config = home.path().join("weft/config.json");
    let registry_addr = rig.registry.as_str();
    let login = [
        "login",
        "--insecure",
        "-u",
        USER,
        "--password-stdin",
        registry_addr,
    ];
    let out = weft_login(lab, "m1", &config, &login, "wrong-password\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unauthorized"),
        "{err}"
    );
    assert!(!config.exists(), "a refused login stored something");
    // Bad input: no user name, a malformed registry.
    let out = weft_login(
        lab,
        "m1",
        &config,
        &["login", "--password-stdin", registry_addr],
        "x\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("user name is empty"));
    let out = weft_login(
        lab,
        "m1",
        &config,
        &["login", "-u", USER, "--password-stdin", "http://x/y"],
        "x\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST[:PORT]"));
    assert!(!config.exists());

    // The right one: stored, mode 0600.
    let out = weft_login(lab, "m1", &config, &login, &format!("{PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // --with-registry-auth: both nodes that take a replica pull it.
    let create = [
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--with-registry-auth",
        "--name",
        "private",
        "--replicas",
        "2",
        "--constraint",
        "node.hostname!=w2",
        &reference,
        "sleep",
        "1d",
    ];
    let socket = format!("unix://{}", lab.host_dir("m1").join("weft.sock").display());
    let args: Vec<&str> = ["-H", socket.as_str()].into_iter().chain(create).collect();
    let out = weft_login(lab, "m1", &config, &args, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while !(rig.running("m1") == 1 && rig.running("w1") == 1) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "one replica on m1 and one on w1: {}\n{}",
            lab.weft("m1", &["service", "ps", "private"]),
            lab.log_tail("w1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rig.running("w2"), 0);

    // inspect says for which registry, never the credentials.
    let inspect = lab.weft("m1", &["service", "inspect", "private"]);
    assert!(
        inspect.contains(&format!("\"Registry\": \"{registry_addr}\"")),
        "{inspect}"
    );
    let b64_pair = base64::engine::general_purpose::STANDARD.encode(&creds);
    let b64_password = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    assert!(
        !inspect.contains(PASSWORD) && !inspect.contains(&b64_pair),
        "{inspect}"
    );

    // The tag of a private image is pinned to its digest with the user's
    // `weft login` credentials (asked for this lookup only); without them
    // the registry refuses and the tag is kept, with a warning.
    let pin = |name: &str, config: &Path| {
        let create = [
            "-H",
            socket.as_str(),
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--replicas",
            "0",
            &reference,
            "sleep",
            "1d",
        ];
        let out = weft_login(lab, "m1", config, &create, "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spec = lab.weft("m1", &["service", "inspect", name]);
        lab.weft("m1", &["service", "rm", name]);
        (spec, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (spec, _) = pin("pinned", &config);
    assert!(spec.contains(&format!("{reference}@sha256:")), "{spec}");
    let nobody = config.with_file_name("nobody.json");
    let (spec, warned) = pin("unpinned", &nobody);
    assert!(!spec.contains("@sha256:"), "{spec}");
    assert!(warned.contains("could not be accessed"), "{warned}");

    // The manager's disk (Raft log, snapshots, everything in its data dir):
    // no password, no base64 of it. The service name is there (the grep
    // sees the store), the password is not.
    let needles: [&[u8]; 3] = [
        PASSWORD.as_bytes(),
        b64_pair.as_bytes(),
        b64_password.as_bytes(),
    ];
    let m1_data = lab.data_dir("m1");
    assert!(
        !files_containing(&m1_data, &[b"private/busybox"]).is_empty(),
        "the grep sees the store"
    );
    let leaked: Vec<PathBuf> = files_containing(&m1_data, &needles)
        .into_iter()
        .filter(|p| !p.ends_with("node-config.pb"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the password is on the manager's disk: {leaked:?}"
    );
    // The nodes that run a replica got it in their config (saved 0600);
    // w2, with none, never did.
    for h in ["m1", "w1"] {
        let saved = lab.data_dir(h).join("node-config.pb");
        assert!(
            !files_containing(&saved, &[PASSWORD.as_bytes()]).is_empty(),
            "{h} has no credentials"
        );
    }
    let w2 = lab.data_dir("w2").join("node-config.pb");
    assert!(w2.exists(), "w2 saved its config");
    assert!(
        files_containing(&lab.data_dir("w2"), &needles).is_empty(),
        "w2 received the credentials"
    );

    // update --with-registry-auth seals them again: still only the registry shown.
    let update = [
        "service",
        "update",
        "--detach",
        "--with-registry-auth",
        "private",
    ];
    let args: Vec<&str> = ["-H", socket.as_str()].into_iter().chain(update).collect();
    let out = weft_login(lab, "m1", &config, &args, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = lab.weft("m1", &["service", "inspect", "private"]);
    assert!(
        inspect.contains(registry_addr) && !inspect.contains(PASSWORD),
        "{inspect}"
    );

    // image pull: anonymous without the file, with the stored credentials
    // with it (w2's daemon: it has not got the image).
    let w2_socket = format!("unix://{}", lab.host_dir("w2").join("weft.sock").display());
    let pull = [
        "-H",
        w2_socket.as_str(),
        "image",
        "pull",
        "-q",
        reference.as_str(),
    ];
    let nowhere = home.path().join("none.json");
    let out = weft_login(lab, "w2", &nowhere, &pull, "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unauthorized"),
        "{err}"
    );
    let out = weft_login(lab, "w2", &config, &pull, "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // logout removes them.
    let out = weft_login(lab, "m1", &config, &["logout", registry_addr], "");
    assert!(out.status.success());
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains(registry_addr)
    );
    lab.weft("m1", &["service", "rm", "private"]);
}

fn wait_for_each_host(rig: &PullRig, hosts: &[&str], registry: &Registry) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if hosts.iter().all(|h| rig.running(h) == 1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "one web replica per host: {:?}\nservice ps:\n{}\nregistry log:\n{}\nm1 log:\n{}",
        hosts.iter().map(|h| rig.running(h)).collect::<Vec<_>>(),
        rig.lab.weft("m1", &["service", "ps", "web"]),
        registry.log(),
        rig.lab.log_tail("w1"),
    );
}

/// `weft image ls --all-nodes` on `host`: the exit status, and the
/// (NODE, REPOSITORY, TAG) of each image row, or (NODE, note) of a node
/// without a current list; stderr last.
fn ls_all_nodes(lab: &Lab, host: &str, extra: &[&str]) -> (bool, Vec<Vec<String>>, String) {
    let mut args = vec!["image", "ls", "--all-nodes"];
    args.extend_from_slice(extra);
    let out = lab.try_weft(host, &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let table = rows(&stdout)
        .into_iter()
        .map(|mut r| {
            r.truncate(3);
            r
        })
        .collect();
    (
        out.status.success(),
        table,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// `weft image ls --all-nodes` (issue #14): an image loaded on one node
/// is listed on that node only; after `image load --all-nodes` on every
/// node; `image rm` on one node (and a removal outside weft, with `ctr`)
/// takes its row away; a stopped worker's daemon is a line saying so and
/// the command fails. Works over a manager's TCP port too; a worker's
/// socket, and plain `image ls` over TCP, are clear errors.
#[test]
fn image_ls_all_nodes_lists_every_nodes_images() {
    let images = busybox();
    let hosts = ["m1", "w1", "w2"];
    let mut rig = PullRig::new("ls-all", &hosts);
    let lab = &rig.lab;
    let (wt, _) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    lab.join("w2", &wt, "m1");
    common::wait_for("three ready nodes", Duration::from_secs(30), || {
        lab.node_ls("m1")
            .iter()
            .filter(|n| n.status == "Ready")
            .count()
            == 3
    });
    let busybox_on = |hosts: &[&str]| -> Vec<Vec<String>> {
        hosts
            .iter()
            .map(|h| row(&[h, "weft-test/busybox", "latest"]))
            .collect()
    };
    // Every node answered, with no image: the header alone, status 0.
    common::wait_for("every node's empty list", Duration::from_secs(30), || {
        ls_all_nodes(lab, "m1", &[]) == (true, vec![], String::new())
    });

    // Loaded on w1 only: listed on w1 only.
    lab.weft(
        "w1",
        &["image", "load", "-i", images.docker.to_str().unwrap()],
    );
    common::wait_for("the image on w1", Duration::from_secs(30), || {
        ls_all_nodes(lab, "m1", &[]).1 == busybox_on(&["w1"])
    });
    let (ok, _, err) = ls_all_nodes(lab, "m1", &[]);
    assert!(ok, "{err}");
    // -q and --no-trunc as plain `image ls` has them.
    let ids = lab.weft("m1", &["image", "ls", "--all-nodes", "-q"]);
    let local = lab.weft("w1", &["image", "ls", "-q"]);
    assert_eq!(ids, local);
    assert_eq!(ids.trim().len(), 12, "{ids}");
    let full = lab.weft("m1", &["image", "ls", "--all-nodes", "--no-trunc"]);
    let full_id = lab.weft("w1", &["image", "ls", "-q", "--no-trunc"]);
    assert!(full_id.starts_with("sha256:"), "{full_id}");
    assert!(full.contains(full_id.trim()), "{full}");

    // Loaded everywhere.
    lab.weft(
        "m1",
        &[
            "image",
            "load",
            "--all-nodes",
            "-i",
            images.docker.to_str().unwrap(),
        ],
    );
    common::wait_for("the image on every node", Duration::from_secs(30), || {
        ls_all_nodes(lab, "m1", &[]).1 == busybox_on(&hosts)
    });
    // Each ID once with -q.
    assert_eq!(lab.weft("m1", &["image", "ls", "--all-nodes", "-q"]), local);

    // Over m1's TCP port with a manager's certificate, from w1.
    let certs = lab.data_dir("m1").join("certs");
    let over_tcp = |args: &[&str]| lab.weft_over_tcp("w1", "m1", &certs, args);
    let out = over_tcp(&["image", "ls", "--all-nodes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Vec<String>> = rows(&stdout)
        .into_iter()
        .map(|mut r| {
            r.truncate(3);
            r
        })
        .collect();
    assert_eq!(listed, busybox_on(&hosts), "{stdout}");
    // Plain `image ls` is the local daemon's: over TCP, a clear error.
    let out = over_tcp(&["image", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("use `weft image ls --all-nodes`"),
        "{err}"
    );
    // A worker's socket has no control API.
    let err = lab.weft_err("w1", &["image", "ls", "--all-nodes"]);
    assert!(err.contains("not a manager"), "{err}");

    // Removed on w2 with `image rm`, on w1 behind weft's back: rows gone.
    lab.weft("w2", &["image", "rm", "weft-test/busybox"]);
    common::wait_for("w2's row gone", Duration::from_secs(30), || {
        ls_all_nodes(lab, "m1", &[]).1 == busybox_on(&["m1", "w1"])
    });
    let w1_ctrd = &rig.ctrd.iter().find(|(h, _)| h == "w1").expect("w1").1;
    w1_ctrd.ctr_ok(NS, &["images", "rm", "docker.io/weft-test/busybox:latest"]);
    common::wait_for("w1's row gone", Duration::from_secs(30), || {
        ls_all_nodes(lab, "m1", &[]).1 == busybox_on(&["m1"])
    });

    // w2's daemon stopped: a line saying so, on stderr with -q, status 1.
    rig.lab.sigterm("w2");
    let lab = &rig.lab;
    common::wait_for("w2 not answering", Duration::from_secs(30), || {
        let (ok, table, _) = ls_all_nodes(lab, "m1", &[]);
        !ok && table.len() == 2
            && table[0] == row(&["m1", "weft-test/busybox", "latest"])
            && table[1][0] == "w2"
            && table[1][1].starts_with("(node ")
    });
    let (ok, table, err) = ls_all_nodes(lab, "m1", &[]);
    assert!(!ok);
    assert!(table[1][1].contains("last report"), "{table:?}");
    assert!(err.contains("1 of 3 nodes did not report"), "{err}");
    let (ok, _, err) = ls_all_nodes(lab, "m1", &["-q"]);
    assert!(!ok);
    assert!(err.contains("w2: node "), "{err}");
}

/// `image ls --all-nodes` on a follower manager (it asks the leader), and
/// after the leader is killed: the new leader rebuilds the lists as the
/// nodes reconnect, and the dead leader is a line saying so.
#[test]
fn image_ls_all_nodes_on_a_follower_and_after_a_leader_change() {
    let images = busybox();
    let hosts = ["m1", "m2", "m3"];
    let mut rig = PullRig::new("ls-lead", &hosts);
    let lab = &rig.lab;
    let (_, mt) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m1");
    common::wait_voters(lab, "m1", &hosts);
    lab.weft(
        "m2",
        &["image", "load", "-i", images.docker.to_str().unwrap()],
    );
    let on_m2 = vec![row(&["m2", "weft-test/busybox", "latest"])];
    // m3 is a follower: its answer is the leader's.
    common::wait_for("m2's image, asked on m3", Duration::from_secs(30), || {
        ls_all_nodes(lab, "m3", &[]) == (true, on_m2.clone(), String::new())
    });

    rig.lab.kill9("m1");
    let lab = &rig.lab;
    common::wait_for(
        "a new leader with m2's list again, m1 a line",
        Duration::from_secs(60),
        || {
            let (ok, table, _) = ls_all_nodes(lab, "m3", &[]);
            !ok && table.len() == 2
                && table[0][0] == "m1"
                && table[0][1].starts_with("(node ")
                && table[1] == on_m2[0]
        },
    );
    let (_, _, err) = ls_all_nodes(lab, "m2", &[]);
    assert!(err.contains("1 of 3 nodes did not report"), "{err}");
}
