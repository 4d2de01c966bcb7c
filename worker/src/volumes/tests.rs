use std::collections::BTreeMap;

use super::store::VolumeStore;
use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn vol(name: &str, l: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.into(),
        meta: VolumeMeta {
            created_at: "2026-01-01T00:00:00Z".into(),
            labels: labels(l),
            options: BTreeMap::new(),
        },
    }
}

fn users() -> Users {
    Users::new([
        ("t1", vec!["db".to_string(), "cache".to_string()]),
        ("t2", vec!["db".to_string()]),
    ])
}

#[test]
fn names_are_one_safe_path_component() {
    for ok in ["a", "db", "my_vol.1-x", &"a".repeat(64), &generate_name()] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/abs",
        "-x",
        "_x",
        ".hidden",
        "a b",
        "a\0b",
        &"a".repeat(65),
    ] {
        assert!(
            matches!(check_name(bad), Err(VolumeError::BadName(_))),
            "{bad:?}"
        );
    }
    let g = generate_name();
    assert_eq!(g.len(), 64);
    assert!(g.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(g, generate_name());
}

#[test]
fn labels_and_options_are_bounded_and_options_refused() {
    assert!(check_labels(&labels(&[("a", "b"), ("c", "")])).is_ok());
    assert!(matches!(
        check_labels(&labels(&[("", "x")])),
        Err(VolumeError::BadLabel { .. })
    ));
    let long_key = "k".repeat(MAX_LABEL_KEY_BYTES + 1);
    assert!(check_labels(&labels(&[(&long_key, "x")])).is_err());
    let long_value = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
    assert!(check_labels(&labels(&[("k", &long_value)])).is_err());
    let many: BTreeMap<String, String> = (0..=MAX_LABELS)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    assert!(matches!(
        check_labels(&many),
        Err(VolumeError::TooManyLabels(_))
    ));
    assert!(check_options(&BTreeMap::new()).is_ok());
    let e = check_options(&labels(&[("type", "tmpfs")])).unwrap_err();
    assert!(e.to_string().contains("type=tmpfs"), "{e}");
}

#[test]
fn create_is_idempotent_for_the_same_labels_only() {
    let none = BTreeMap::new();
    let have = VolumeMeta {
        labels: labels(&[("a", "1")]),
        ..Default::default()
    };
    assert_eq!(
        plan_create("v", None, &none, &none).unwrap(),
        CreatePlan::Make
    );
    assert_eq!(
        plan_create("v", Some(&have), &none, &none).unwrap(),
        CreatePlan::Exists
    );
    assert_eq!(
        plan_create("v", Some(&have), &labels(&[("a", "1")]), &none).unwrap(),
        CreatePlan::Exists
    );
    assert!(matches!(
        plan_create("v", Some(&have), &labels(&[("a", "2")]), &none),
        Err(VolumeError::Conflict(_))
    ));
}

#[test]
fn a_volume_in_use_is_never_removed_even_with_force() {
    let u = users();
    let e = plan_remove("db", true, &u, true).unwrap_err();
    assert_eq!(e.to_string(), "remove db: volume is in use - [t1, t2]");
    assert!(matches!(
        plan_remove("cache", true, &u, false),
        Err(VolumeError::InUse { .. })
    ));
    assert_eq!(
        plan_remove("free", true, &u, false).unwrap(),
        RemovePlan::Remove
    );
    assert!(matches!(
        plan_remove("gone", false, &u, false),
        Err(VolumeError::NotFound(_))
    ));
    assert_eq!(
        plan_remove("gone", false, &u, true).unwrap(),
        RemovePlan::Nothing
    );
}

#[test]
fn filters_parse_strictly() {
    let f = |s: &[&str], w| parse_filters(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), w);
    assert_eq!(
        f(
            &["dangling=true", "name=db", "label=a", "label!=b=2"],
            FilterUse::List
        )
        .unwrap(),
        vec![
            Filter::Dangling(true),
            Filter::Name("db".into()),
            Filter::Label {
                key: "a".into(),
                value: None,
                negate: false
            },
            Filter::Label {
                key: "b".into(),
                value: Some("2".into()),
                negate: true
            },
        ]
    );
    for bad in ["dangling=maybe", "nokey", "=x", "colour=red", "label="] {
        assert!(
            matches!(
                f(&[bad], FilterUse::List),
                Err(VolumeError::BadFilter { .. })
            ),
            "{bad}"
        );
    }
    assert!(f(&["label=a=1"], FilterUse::Prune).is_ok());
    assert!(f(&["dangling=true"], FilterUse::Prune).is_err());
    assert!(f(&["name=x"], FilterUse::Prune).is_err());
    let many: Vec<&str> = vec!["name=x"; MAX_FILTERS + 1];
    assert!(matches!(
        f(&many, FilterUse::List),
        Err(VolumeError::TooManyFilters(_))
    ));
    let long = format!("name={}", "x".repeat(MAX_FILTER_BYTES));
    assert!(f(&[&long], FilterUse::List).is_err());
}

#[test]
fn filters_match_as_dockers() {
    let u = users();
    let db = vol("db", &[("env", "prod"), ("team", "a")]);
    let free = vol("free-1", &[("env", "dev")]);
    let m = |v: &Volume, fs: &[Filter]| matches(v, &u, fs);
    let name = |n: &str| Filter::Name(n.into());
    let label = |k: &str, v: Option<&str>, negate| Filter::Label {
        key: k.into(),
        value: v.map(Into::into),
        negate,
    };
    assert!(m(&db, &[]));
    assert!(m(&db, &[Filter::Dangling(false)]) && !m(&db, &[Filter::Dangling(true)]));
    assert!(m(&free, &[Filter::Dangling(true)]));
    // Names: substring, any of several.
    assert!(m(&free, &[name("free")]) && m(&free, &[name("zzz"), name("ee-")]));
    assert!(!m(&db, &[name("free")]));
    // Labels: all of them.
    assert!(m(
        &db,
        &[
            label("env", Some("prod"), false),
            label("team", None, false)
        ]
    ));
    assert!(!m(
        &db,
        &[label("env", Some("prod"), false), label("x", None, false)]
    ));
    assert!(m(&free, &[label("env", Some("prod"), true)]));
    assert!(!m(&db, &[label("team", None, true)]));
    assert!(m(&db, &[Filter::Driver("local".into())]));
    assert!(!m(&db, &[Filter::Driver("nfs".into())]));
}

#[test]
fn prune_takes_only_dangling_volumes_that_pass_the_filters() {
    let u = users();
    let all = [
        vol("db", &[]),
        vol("cache", &[]),
        vol("old", &[("keep", "no")]),
        vol("keep", &[("keep", "yes")]),
    ];
    assert_eq!(plan_prune(&all, &u, &[]), vec!["keep", "old"]);
    let f = [Filter::Label {
        key: "keep".into(),
        value: Some("yes".into()),
        negate: true,
    }];
    assert_eq!(plan_prune(&all, &u, &f), vec!["old"]);
}

#[tokio::test]
async fn the_store_makes_lists_and_removes_volumes_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(dir.path().join("volumes"), dir.path().join("tasks"));
    assert!(store.list().unwrap().is_empty(), "no directory yet");
    let held = store.lock().await;
    let meta = VolumeMeta {
        created_at: store::created_at(std::time::SystemTime::now()),
        labels: labels(&[("a", "1")]),
        options: BTreeMap::new(),
    };
    assert!(store.make(&held, "v1", &meta).unwrap());
    assert!(!store.make(&held, "v1", &VolumeMeta::default()).unwrap());
    store.ensure(&held, "v2").unwrap();
    // A volume made before records were kept: listed with its dir's time.
    std::fs::create_dir_all(store.data_dir("legacy")).unwrap();
    std::fs::write(store.root().join(".new-x-1"), b"").unwrap();
    let listed = store.list().unwrap();
    let names: Vec<&str> = listed.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["legacy", "v1", "v2"]);
    assert_eq!(listed[1].meta, meta);
    assert!(listed[0].meta.created_at.ends_with('Z'));
    assert!(listed[2].meta.labels.is_empty());

    std::fs::write(store.data_dir("v1").join("f"), vec![0u8; 3000]).unwrap();
    let taken = store.take(&held, "v1").unwrap();
    assert_eq!(store::size(&taken.join(store::DATA_DIR)), 3000);
    drop(held);
    assert!(store.get("v1").unwrap().is_none());
    store.purge(std::slice::from_ref(&taken)).unwrap();
    assert!(!taken.exists());
    store.sweep().unwrap();
    assert!(!store.root().join(".new-x-1").exists());
    assert!(matches!(store.get("../x"), Err(VolumeError::BadName(_))));
}
