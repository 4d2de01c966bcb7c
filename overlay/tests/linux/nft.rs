//! `nft`: batches applied and rulesets listed inside a namespace, checked
//! with `nsenter … nft -j list ruleset`; the host ruleset stays untouched.

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::schema::{Chain, NfListObject, NfObject, Rule, Table};
use nftables::stmt::{Counter, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use weft_overlay::linux::nft;

use crate::common::{RunDir, nft_ruleset, require_root, unique};

fn table_batch(table: &str) -> nftables::schema::Nftables<'static> {
    let table: Cow<'static, str> = Cow::Owned(table.to_owned());
    let mut b = Batch::new();
    b.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: table.clone(),
        handle: None,
    }));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: table.clone(),
        name: "out".into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Output),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    b.add(NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table,
        chain: "out".into(),
        expr: Cow::Owned(vec![
            Statement::Counter(Counter::Anonymous(None)),
            Statement::Accept(None),
        ]),
        ..Default::default()
    }));
    b.to_nftables()
}

/// A rule for a table that does not exist: the whole batch fails.
fn bad_batch() -> nftables::schema::Nftables<'static> {
    let mut bad = Batch::new();
    bad.add(NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: "no-such-table".into(),
        chain: "out".into(),
        expr: Cow::Owned(vec![Statement::Accept(None)]),
        ..Default::default()
    }));
    bad.to_nftables()
}

fn has_table(ruleset: &serde_json::Value, name: &str) -> bool {
    ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["table"]["name"] == name)
}

#[test]
fn nft_is_installed() {
    let path = nft::check_nft().expect("nft installed on the test machine");
    assert!(path.ends_with("nft"));
}

#[test]
fn apply_and_list_inside_a_namespace() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("nft");
    let table = unique("weft-t");
    nft::apply(&ns, &table_batch(&table)).unwrap();

    // Independent view: nft run by nsenter inside the namespace.
    let seen = nft_ruleset(ns.path());
    assert!(has_table(&seen, &table), "{seen}");
    let rules = seen["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count();
    assert_eq!(rules, 1);

    // The library's own read sees it too.
    let listed = nft::list_ruleset(&ns).unwrap();
    assert!(
        listed
            .objects
            .iter()
            .any(|o| matches!(o, NfObject::ListObject(NfListObject::Table(t)) if t.name == table))
    );

    // The host namespace never saw it.
    let host = std::process::Command::new("nft")
        .args(["-j", "list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains(&table));

    // A failing batch is an error with nft's message and changes nothing.
    let err = nft::apply(&ns, &bad_batch()).unwrap_err();
    assert!(
        matches!(err, weft_overlay::linux::Error::Nft { .. }),
        "{err}"
    );
    assert_eq!(nft_ruleset(ns.path()), seen);
}

#[tokio::test]
async fn async_wrappers() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("nfta");
    let table = unique("weft-a");
    nft::apply_async(&ns, table_batch(&table)).await.unwrap();
    let listed = nft::list_ruleset_async(&ns).await.unwrap();
    assert!(
        listed
            .objects
            .iter()
            .any(|o| matches!(o, NfObject::ListObject(NfListObject::Table(t)) if t.name == table))
    );
    assert!(has_table(&nft_ruleset(ns.path()), &table));
}

#[test]
fn list_tables_reads_only_the_named_tables() {
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("nftl");
    let ours = unique("weft-l");
    let other = unique("weft-o");
    nft::apply(&ns, &table_batch(&ours)).unwrap();
    nft::apply(&ns, &table_batch(&other)).unwrap();
    // Someone else's table in another family, as kube-proxy's or Docker's.
    let foreign = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args([
            "nft",
            "add table ip foreign; add chain ip foreign c; add rule ip foreign c accept",
        ])
        .status()
        .unwrap();
    assert!(foreign.success());

    let tables = |rs: &nftables::schema::Nftables<'_>| -> Vec<String> {
        rs.objects
            .iter()
            .filter_map(|o| match o {
                NfObject::ListObject(NfListObject::Table(t)) => Some(t.name.to_string()),
                _ => None,
            })
            .collect()
    };
    // One named table with its chain and rule; an absent one (wrong family,
    // or no such name) is left out, not an error.
    let listed = nft::list_tables(
        &ns,
        &[
            (NfFamily::INet, ours.as_str()),
            (NfFamily::Bridge, ours.as_str()),
            (NfFamily::INet, "weft-none"),
        ],
    )
    .unwrap();
    assert_eq!(tables(&listed), vec![ours.clone()]);
    let rules = listed
        .objects
        .iter()
        .filter(|o| matches!(o, NfObject::ListObject(NfListObject::Rule(r)) if r.table == ours))
        .count();
    assert_eq!(rules, 1);
    assert_eq!(
        tables(&nft::list_tables(&ns, &[(NfFamily::INet, "weft-none")]).unwrap()),
        Vec::<String>::new()
    );
    // Two tables in one listing, and not the foreign one (a full listing has it).
    let both = nft::list_tables(
        &ns,
        &[
            (NfFamily::INet, ours.as_str()),
            (NfFamily::INet, other.as_str()),
        ],
    )
    .unwrap();
    assert_eq!(tables(&both), vec![ours.clone(), other.clone()]);
    assert!(tables(&nft::list_ruleset(&ns).unwrap()).contains(&"foreign".to_string()));
}

/// libnftables in the daemon's process: a context kept per namespace writes
/// there (an independent `nft` sees it), fails whole with the library's
/// message, and keeps the namespace alive until it is forgotten (a veth
/// whose peer lives in another namespace goes only then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_writes_land_in_their_namespace_and_let_it_go() {
    use weft_overlay::linux::libnft::Sessions;
    require_root!();
    let run = RunDir::new();
    let ns = run.netns("lib");
    let other = run.netns("peer");
    let sessions = Sessions::default();
    let table = unique("weft-t");
    sessions.apply(&ns, table_batch(&table)).await.unwrap();
    assert_eq!(
        sessions.count(),
        1,
        "libnftables.so.1 (Debian's libnftables1, installed with nftables) is loadable"
    );
    let seen = nft_ruleset(ns.path());
    assert!(has_table(&seen, &table), "{seen}");
    let host = std::process::Command::new("nft")
        .args(["-j", "list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains(&table));

    let err = sessions.apply(&ns, bad_batch()).await.unwrap_err();
    assert!(format!("{err:?}").contains("No such file"), "{err:?}");
    assert_eq!(
        nft_ruleset(ns.path()),
        seen,
        "a failed batch changes nothing"
    );
    sessions.apply(&ns, table_batch(&table)).await.unwrap();
    assert_eq!(sessions.count(), 1, "one context per namespace");

    let peer_pin = run.pin("peer");
    crate::common::nsenter(
        ns.path(),
        &[
            "ip",
            "link",
            "add",
            "vlib0",
            "type",
            "veth",
            "peer",
            "name",
            "vlib1",
            "netns",
            peer_pin.to_str().unwrap(),
        ],
    );
    assert!(crate::common::ip_link(other.path(), "vlib1").is_some());
    let inode = ns.inode();
    drop(ns);
    weft_overlay::linux::Netns::delete(run.pin("lib")).expect("unpin");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        crate::common::ip_link(other.path(), "vlib1").is_some(),
        "the kept context holds the namespace"
    );
    sessions.forget(inode);
    assert_eq!(sessions.count(), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while crate::common::ip_link(other.path(), "vlib1").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the namespace outlived its context by 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A daemon holding over 1024 descriptors (a node with a few hundred tasks)
/// still writes in process: the contexts live on a thread with a table of
/// its own, where their sockets stay below select(2)'s limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_writes_go_on_past_1024_descriptors() {
    use std::os::fd::AsRawFd;
    use weft_overlay::linux::libnft::Sessions;
    require_root!();
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < 2048 {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(4096),
            hard,
        )
        .unwrap();
    }
    let held: Vec<std::fs::File> = (0..1100)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    assert!(held.last().unwrap().as_raw_fd() >= 1024);
    let run = RunDir::new();
    let ns = run.netns("many");
    let sessions = Sessions::default();
    let table = unique("weft-m");
    sessions.apply(&ns, table_batch(&table)).await.unwrap();
    assert_eq!(
        sessions.count(),
        1,
        "written through a kept context, not an nft process"
    );
    assert!(has_table(&nft_ruleset(ns.path()), &table));
    sessions.clear();
    assert_eq!(sessions.count(), 0);
    drop(held);
}
