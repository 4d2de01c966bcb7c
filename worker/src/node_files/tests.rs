use super::*;

/// A certificate of weft's subject layout (CN node, OU role, O cluster)
/// and its key. Self-signed: the files only have to belong together.
fn issue(role: &str) -> (String, String) {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "0123456789abcdef");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "c");
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn certs(role: &str) -> Certs {
    let (ca_pem, _) = issue("manager");
    let (cert_pem, key_pem) = issue(role);
    Certs {
        ca_pem,
        cert_pem,
        key_pem,
    }
}

fn record(role: &str) -> NodeRecord {
    NodeRecord {
        node_id: "0123456789abcdef".into(),
        cluster_id: "c".into(),
        role: role.into(),
        advertise_addr: "198.18.0.2:4377".into(),
        listen_addr: "0.0.0.0:4377".into(),
        data_path_addr: "198.18.0.2".into(),
        manager_addrs: vec!["198.18.0.1:4377".into()],
        removed_node_ids: Vec::new(),
        manager_node_ids: Vec::new(),
    }
}

/// The set as the README's paths show it (through the fixed links), or
/// `None` where a first save has not made them yet.
fn via_fixed_paths(files: &NodeFiles) -> Option<Certs> {
    let d = files.certs_dir();
    let read = |n: &str| fs::read_to_string(d.join(n)).ok();
    Some(Certs {
        ca_pem: read(CA)?,
        cert_pem: read(CERT)?,
        key_pem: read(KEY)?,
    })
}

/// A data dir holding `rec` and `set`.
fn member(rec: &NodeRecord, set: &Certs) -> (tempfile::TempDir, NodeFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = NodeFiles::new(dir.path());
    files.save_record(rec).unwrap();
    files.save_certs(set).unwrap();
    (dir, files)
}

/// The layout before pairs: three regular files.
fn write_old_layout(files: &NodeFiles, set: &Certs) {
    let d = files.certs_dir();
    fs::create_dir(&d).unwrap();
    fs::write(d.join(CA), &set.ca_pem).unwrap();
    fs::write(d.join(CERT), &set.cert_pem).unwrap();
    fs::write(d.join(KEY), &set.key_pem).unwrap();
}

/// Names in the certificate directory, sorted.
fn listing(files: &NodeFiles) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(files.certs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A crash after each step of a save (every prefix of its plan run on a
/// fresh copy of the state `prepare` makes): the loader and the fixed
/// paths see the old set or the new one, whole, and once the new one is
/// visible every later crash keeps it; the next save then succeeds and
/// leaves one pair and no leftovers.
fn crash_after_every_step(prepare: impl Fn(&NodeFiles) -> Option<Certs>) {
    let new = certs("worker");
    let mut steps = None;
    let mut new_from = None;
    let mut k = 0;
    loop {
        // Each crash on its own copy of the starting state.
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles::new(dir.path());
        let old = prepare(&files);
        let plan = plan_save(
            &files.certs_dir(),
            &CertsDir::read(&files.certs_dir()).unwrap(),
            &new,
        );
        assert_eq!(*steps.get_or_insert(plan.len()), plan.len());
        if k > plan.len() {
            break;
        }
        for op in &plan[..k] {
            op.run().unwrap();
        }
        let seen = match files.load_certs(&[]) {
            Ok((c, _)) => Some(c),
            // A first save that got nowhere yet: no set at all.
            Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("after {k} of {} steps ({:?}): {e}", plan.len(), plan.get(k)),
        };
        assert!(
            seen == old || seen.as_ref() == Some(&new),
            "after {k} steps the loader sees a mix"
        );
        if old.is_some() {
            assert!(seen.is_some(), "after {k} steps the old set is gone");
        }
        match new_from {
            None if seen.as_ref() == Some(&new) => new_from = Some(k),
            Some(from) => assert_eq!(seen.as_ref(), Some(&new), "new after {from}, not {k}"),
            None => {}
        }
        if let Some(fixed) = via_fixed_paths(&files) {
            assert!(
                Some(&fixed) == old.as_ref() || fixed == new,
                "after {k} steps the fixed paths show a mix"
            );
            assert_eq!(Some(fixed), seen, "after {k} steps");
        }
        let then = certs("manager");
        files.save_certs(&then).unwrap();
        assert_eq!(
            files.load_certs(&[]).unwrap().0,
            then,
            "save after {k} steps"
        );
        assert_eq!(via_fixed_paths(&files), Some(then));
        let names = listing(&files);
        assert_eq!(names.len(), 5, "leftovers after {k} steps: {names:?}");
        assert!(names.iter().filter(|n| n.starts_with(PAIR)).count() == 1);
        k += 1;
    }
    assert!(
        new_from.is_some(),
        "the whole plan did not install the new set"
    );
}

#[test]
fn round_trip_and_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let files = NodeFiles::new(dir.path());
    assert!(!files.exists());
    let rec = record("worker");
    let certs = certs("worker");
    files.save_certs(&certs).unwrap();
    files.save_record(&rec).unwrap();
    assert!(files.exists());
    let (r, c) = files.load().unwrap();
    assert_eq!(r, rec);
    assert_eq!(c, certs);
    // The paths the README and the e2e tests use.
    assert_eq!(via_fixed_paths(&files), Some(certs.clone()));
    for name in ["node.json", "certs/current/node-key.pem"] {
        let mode = fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is root-only");
    }
    let again = self::certs("manager");
    files.save_certs(&again).unwrap();
    assert_eq!(files.load().unwrap().1, again);
    assert_eq!(
        listing(&files),
        ["ca.pem", "current", "node-key.pem", "node.pem", "pair.2"]
    );
    files.wipe().unwrap();
    assert!(!files.exists());
    assert!(!files.certs_dir().exists());
    files.wipe().unwrap();
}

#[test]
fn a_crash_during_a_renewal_leaves_the_old_pair_or_the_new() {
    crash_after_every_step(|files| {
        let old = certs("worker");
        files.save_certs(&old).unwrap();
        Some(old)
    });
}

#[test]
fn a_crash_during_the_first_save_leaves_nothing_or_the_new_pair() {
    crash_after_every_step(|_| None);
}

/// A data dir of the two-file layout: the first save moves it into a
/// pair; a crash at any step reads the old set or the new one.
#[test]
fn a_crash_during_the_migration_from_plain_files_leaves_one_whole_pair() {
    crash_after_every_step(|files| {
        let old = certs("worker");
        write_old_layout(files, &old);
        // A leftover of the old version's own temporary files.
        fs::write(files.certs_dir().join("node-key.tmp"), "half a key").unwrap();
        Some(old)
    });
}

#[test]
fn the_old_layout_loads_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let files = NodeFiles::new(dir.path());
    let old = certs("manager");
    write_old_layout(&files, &old);
    files.save_record(&record("manager")).unwrap();
    assert_eq!(files.load().unwrap().1, old);
}

/// What a crash between the old version's two renames left: the error
/// names both files and says what to do; no panic.
#[test]
fn a_pair_that_does_not_belong_together_is_refused_naming_both_files() {
    let (_dir, files) = member(&record("worker"), &certs("worker"));
    let set = files.certs_dir().join("pair.1");
    fs::write(set.join(KEY), certs("worker").key_pem).unwrap();
    let e = files.load().unwrap_err();
    assert!(matches!(e, Error::BadCertPair { .. }), "{e:?}");
    let msg = e.to_string();
    for wanted in [
        set.join(CERT).display().to_string(),
        set.join(KEY).display().to_string(),
        "do not fit together".into(),
        "weft node rm".into(),
    ] {
        assert!(msg.contains(&wanted), "{wanted:?} not in: {msg}");
    }
    // A key that is not a key at all: the same clear error.
    fs::write(set.join(KEY), "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    assert!(matches!(
        files.load().unwrap_err(),
        Error::BadCertPair { .. }
    ));
}

#[test]
fn the_certificate_decides_the_role() {
    // Renewed to a manager certificate; the crash came before node.json.
    let (_dir, files) = member(&record("worker"), &certs("manager"));
    assert_eq!(files.load().unwrap().0.role, "manager");
}

/// node.json is replaced through the crash-safe write: what a crash while
/// writing it leaves is ignored, and the next save removes it.
#[test]
fn a_torn_record_write_leaves_the_previous_record() {
    let rec = record("worker");
    let (_dir, files) = member(&rec, &certs("worker"));
    let tmp = durable::temp_path(&files.record_path());
    fs::write(&tmp, "{\"node_id\":").unwrap();
    assert_eq!(files.load().unwrap().0, rec);
    let mut moved = rec.clone();
    moved.manager_addrs = vec!["198.18.0.9:4377".into()];
    files.save_record(&moved).unwrap();
    assert_eq!(files.load().unwrap().0, moved);
    assert!(!tmp.exists());
}

#[test]
fn with_autolock_the_key_file_is_sealed_and_a_restart_is_locked() {
    let set = certs("manager");
    let dir = tempfile::tempdir().unwrap();
    let holder = KeyHolder::default();
    let files = NodeFiles::with_unlock(dir.path(), holder.clone());
    files.save_record(&record("manager")).unwrap();
    files.save_certs(&set).unwrap();
    let k = UnlockKey::generate().unwrap();
    holder.set(Some(k.clone()));
    assert!(files.reseal(None).unwrap());
    assert!(!files.reseal(None).unwrap(), "in step: nothing to write");
    // Nothing under the data dir holds the PEM key any more.
    let on_disk = fs::read_to_string(files.certs_dir().join(KEY)).unwrap();
    assert!(Sealed::looks_sealed(&on_disk) && !on_disk.contains("PRIVATE KEY"));
    assert_eq!(files.load().unwrap().1, set);

    // A restarted daemon holds no key: locked, naming `weft unlock`.
    let restarted = NodeFiles::new(dir.path());
    let e = restarted.load().unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    assert!(!restarted.reseal(None).unwrap(), "locked: nothing to do");
    assert!(e.to_string().contains("weft unlock"));
    // A wrong key says so; the right one opens it.
    let wrong = UnlockKey::generate().unwrap();
    let e = restarted
        .load_with(std::slice::from_ref(&wrong))
        .unwrap_err();
    assert!(
        e.to_string().contains("not the cluster's unlock key"),
        "{e}"
    );
    assert_eq!(
        restarted.load_with(std::slice::from_ref(&k)).unwrap().1,
        set
    );

    // Rotation: resealed under the new key, opened with the previous one.
    let k2 = UnlockKey::generate().unwrap();
    holder.set(Some(k2.clone()));
    assert!(files.reseal(Some(&k)).unwrap());
    assert_eq!(restarted.load_with(&[k2]).unwrap().1, set);
    // Autolock off: back to a plain PEM that loads without a key.
    holder.set(None);
    assert!(files.reseal(Some(&k)).is_err(), "k no longer opens it");
}

#[test]
fn autolock_off_writes_the_key_back_in_the_clear() {
    let set = certs("manager");
    let dir = tempfile::tempdir().unwrap();
    let holder = KeyHolder::default();
    let files = NodeFiles::with_unlock(dir.path(), holder.clone());
    files.save_record(&record("manager")).unwrap();
    let k = UnlockKey::generate().unwrap();
    holder.set(Some(k.clone()));
    files.save_certs(&set).unwrap();
    holder.set(None);
    assert!(files.reseal(Some(&k)).unwrap());
    assert_eq!(NodeFiles::new(dir.path()).load().unwrap().1, set);
}

#[test]
fn an_altered_sealed_key_file_is_refused() {
    let set = certs("manager");
    let dir = tempfile::tempdir().unwrap();
    let holder = KeyHolder::default();
    let k = UnlockKey::generate().unwrap();
    holder.set(Some(k.clone()));
    let files = NodeFiles::with_unlock(dir.path(), holder);
    files.save_record(&record("manager")).unwrap();
    files.save_certs(&set).unwrap();
    let path = files.certs_dir().join(KEY);
    let text = fs::read_to_string(&path).unwrap();
    let target = fs::canonicalize(&path).unwrap();
    let mut bytes = text.into_bytes();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    fs::write(&target, bytes).unwrap();
    let e = files.load().unwrap_err();
    assert!(matches!(e, Error::Seal { .. }), "{e}");
}
