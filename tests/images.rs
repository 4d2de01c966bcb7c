//! `weft image load|ls|inspect|rm` end to end: a real daemon (in its own
//! network namespace) on a private containerd per test, with `ctr` as the
//! independent view of what containerd holds (STYLE rule 9).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::Lab;
use common::containerd::PrivateContainerd;
use common::image::{busybox, tar_entries, write_tar};

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
    // The same image by its short ID and by name@digest.
    let short = rows[1][2].clone();
    let by_id: serde_json::Value =
        serde_json::from_str(&node.weft(&["image", "inspect", &short])).unwrap();
    assert_eq!(by_id[0]["Id"], i["Id"]);
    let by_digest: serde_json::Value =
        serde_json::from_str(&node.weft(&["image", "inspect", digest])).unwrap();
    assert_eq!(by_digest[0]["Id"], i["Id"]);
    let err = node.weft_err(&["image", "inspect", "nosuch"]);
    assert!(err.contains("no such image: nosuch on this node"), "{err}");

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
    use weft_worker::image::{ImageError, ImageStore, Spool, StoreConfig};
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

    let image = store.get("busybox").await.unwrap();
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
        let other = store.get(&reference).await.unwrap();
        assert_eq!(other.digest, image.digest, "{reference}");
        assert_eq!(other.top_chain_id, image.top_chain_id, "{reference}");
    }
    let err = store.get("nosuch").await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), "no such image: nosuch on this node");

    // Take the snapshot away behind the store's back: get() unpacks again.
    ctrd.ctr_ok(NS, &["snapshots", "rm", &image.top_chain_id]);
    assert!(
        !ctrd
            .ctr_ok(NS, &["snapshots", "ls"])
            .contains(&image.top_chain_id)
    );
    let started = Instant::now();
    let again = store.get("busybox").await.unwrap();
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
