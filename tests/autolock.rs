//! Autolock end to end (issue #12, "Secrets at rest"): real daemons in
//! namespace hosts, 3 managers and a worker, a service running.
//!
//! With `init --autolock`, no file under any manager's data dir holds a PEM
//! private key or a join secret; a manager killed and started again serves
//! nothing and takes no part in Raft until `weft unlock`, while the other
//! two go on; a wrong key is refused and changes nothing; a rotated key is
//! learned by every running manager; `--autolock=false` puts everything
//! back in the clear so a restart needs no unlock.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Lab, WEFT, wait_for, wait_voters};

const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];

/// `weft unlock` on `host` with `key` on stdin: (success, stderr).
fn unlock(lab: &Lab, host: &str, key: &str) -> (bool, String) {
    let mut child = Command::new(WEFT)
        .arg("-H")
        .arg(format!("unix://{}", lab.socket_path(host).display()))
        .arg("unlock")
        .env_remove("WEFT_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft unlock");
    writeln!(child.stdin.take().expect("stdin"), "{key}").expect("write key");
    let out = child.wait_with_output().expect("weft unlock");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unlock key in `weft init --autolock` / `unlock-key` output.
fn key_in(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("WEFTKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in {out:?}"))
        .to_string()
}

/// Files under `dir` (recursively, links not followed) whose bytes contain
/// one of `needles`: (file, needle).
fn files_containing(dir: &Path, needles: &[&str]) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                let data = std::fs::read(&p).unwrap_or_default();
                for n in needles {
                    if data.windows(n.len()).any(|w| w == n.as_bytes()) {
                        hits.push((p.display().to_string(), n.to_string()));
                    }
                }
            }
        }
    }
    hits
}

fn node_key(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.data_dir(host).join("certs/node-key.pem")).expect("node key")
}

fn manager_status(lab: &Lab, asking: &str, host: &str) -> String {
    lab.node_ls(asking)
        .into_iter()
        .find(|r| r.hostname == host)
        .map(|r| r.manager)
        .unwrap_or_default()
}

#[test]
fn a_restarted_manager_waits_for_its_unlock_key() {
    let mut lab = Lab::new("autolock", &["m1", "m2", "m3", "w1"]);
    lab.start_all();
    let addr = lab.addr("m1");
    let init = lab.weft("m1", &["init", "--advertise-addr", &addr, "--autolock"]);
    let key = key_in(&init);
    let wt = lab
        .weft("m1", &["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let mt = lab
        .weft("m1", &["join-token", "-q", "manager"])
        .trim()
        .to_string();
    lab.join("m2", &mt, "m1");
    lab.join("m3", &mt, "m1");
    lab.join("w1", &wt, "m1");
    wait_voters(&lab, "m1", &MANAGERS);
    wait_for("every node ready", Duration::from_secs(30), || {
        let rows = lab.node_ls("m1");
        rows.len() == 4 && rows.iter().all(|r| r.status == "Ready")
    });
    assert!(lab.weft("m1", &["info"]).contains("Autolock: on, unlocked"));
    let web = "service create --name web --replicas 2 -- sleep 3600";
    lab.weft("m1", &web.split(' ').collect::<Vec<_>>());
    let running = |lab: &Lab| {
        lab.weft("m1", &["service", "ps", "web"])
            .lines()
            .filter(|l| l.contains(" running "))
            .count()
    };
    wait_for("two web tasks running", Duration::from_secs(30), || {
        running(&lab) == 2
    });

    // The joined managers learn the key from m1 over mTLS, and seal their
    // own TLS key with it.
    for m in ["m2", "m3"] {
        wait_for(
            &format!("{m} holds the unlock key"),
            Duration::from_secs(30),
            || lab.try_weft(m, &["unlock-key", "-q"]).stdout == format!("{key}\n").into_bytes(),
        );
        wait_for(
            &format!("{m}'s TLS key sealed"),
            Duration::from_secs(10),
            || node_key(&lab, m).starts_with("weft-sealed-1:"),
        );
    }
    // Nothing on disk holds a PEM private key, a join secret or the key.
    let secret = |t: &str| t.rsplit('-').next().expect("secret").to_string();
    let (ws, ms) = (secret(&wt), secret(&mt));
    let needles = ["PRIVATE KEY", ws.as_str(), ms.as_str(), key.as_str()];
    for m in MANAGERS {
        let hits = files_containing(&lab.data_dir(m), &needles);
        assert!(hits.is_empty(), "{m}: {hits:?}");
        let log = lab.daemon_log(m);
        assert!(!log.contains(&key), "{m}: the unlock key in its daemon log");
    }
    // Workers are not locked, and may not ask for the key: not through
    // their daemon, nor with their certificate on a manager's port.
    assert!(node_key(&lab, "w1").contains("PRIVATE KEY"));
    let err = lab.weft_err("w1", &["unlock-key"]);
    assert!(err.contains("not a manager"), "{err}");
    let certs = lab.data_dir("w1").join("certs");
    let out = lab.weft_over_tcp("w1", "m1", &certs, &["unlock-key"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains(&key), "{err}");
    assert!(err.contains("manager"), "{err}");
    // Unlocking a node that is not locked.
    let (ok, err) = unlock(&lab, "m2", &key);
    assert!(!ok && err.contains("not locked"), "{err}");

    // m3 is killed and started again: locked.
    lab.kill9("m3");
    lab.start("m3");
    let info = lab.weft("m3", &["info"]);
    assert!(
        info.contains("Cluster: locked") && info.contains("weft unlock"),
        "{info}"
    );
    let err = lab.weft_err("m3", &["node", "ls"]);
    assert!(
        err.contains("locked") && err.contains("weft unlock"),
        "{err}"
    );
    let err = lab.weft_err("m3", &["ps"]);
    assert!(err.contains("weft unlock"), "{err}");
    // It takes no part in Raft; the other two go on.
    wait_for("m3 unreachable from m1", Duration::from_secs(30), || {
        manager_status(&lab, "m1", "m3") == "Unreachable"
    });
    lab.weft("m1", &["service", "scale", "web=3"]);
    wait_for("three web tasks running", Duration::from_secs(30), || {
        running(&lab) == 3
    });
    // Wrong and garbled keys are refused and change nothing.
    let other = "WEFTKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (ok, err) = unlock(&lab, "m3", other);
    assert!(!ok && err.contains("not the cluster's unlock key"), "{err}");
    let (ok, err) = unlock(&lab, "m3", "SWMKEY-1-nonsense");
    assert!(!ok && err.contains("not an unlock key"), "{err}");
    assert!(lab.weft("m3", &["info"]).contains("Cluster: locked"));
    // The right key: it serves and is a voter again.
    let (ok, err) = unlock(&lab, "m3", &key);
    assert!(ok, "{err}\n{}", lab.log_tail("m3"));
    wait_for("m3 reachable again", Duration::from_secs(30), || {
        lab.try_weft("m3", &["node", "ls"]).status.success()
            && manager_status(&lab, "m1", "m3") == "Reachable"
    });
    wait_voters(&lab, "m1", &MANAGERS);

    // Rotation: every running manager learns the new key and reseals.
    let before = node_key(&lab, "m3");
    let key2 = lab
        .weft("m1", &["unlock-key", "--rotate", "-q"])
        .trim()
        .to_string();
    assert_ne!(key2, key);
    for m in ["m2", "m3"] {
        wait_for(
            &format!("{m} holds the new key"),
            Duration::from_secs(30),
            || lab.try_weft(m, &["unlock-key", "-q"]).stdout == format!("{key2}\n").into_bytes(),
        );
    }
    wait_for("m3 resealed its TLS key", Duration::from_secs(10), || {
        let now = node_key(&lab, "m3");
        now != before && now.starts_with("weft-sealed-1:")
    });
    lab.kill9("m3");
    lab.start("m3");
    let (ok, err) = unlock(&lab, "m3", &key);
    assert!(!ok && err.contains("not the cluster's unlock key"), "{err}");
    let (ok, err) = unlock(&lab, "m3", &key2);
    assert!(ok, "{err}");
    wait_for(
        "m3 serves after the rotation",
        Duration::from_secs(30),
        || lab.try_weft("m3", &["node", "ls"]).status.success(),
    );
    for m in MANAGERS {
        let hits = files_containing(&lab.data_dir(m), &["PRIVATE KEY", ws.as_str(), ms.as_str()]);
        assert!(hits.is_empty(), "{m} after rotation: {hits:?}");
    }

    // Autolock off: the key files go back to the clear, a restart needs no
    // unlock.
    let out = lab.weft("m1", &["cluster", "update", "--autolock=false"]);
    assert!(out.contains("Autolock: off"), "{out}");
    let err = lab.weft_err("m1", &["unlock-key"]);
    assert!(err.contains("autolock is off"), "{err}");
    for m in MANAGERS {
        wait_for(
            &format!("{m}'s TLS key in the clear"),
            Duration::from_secs(30),
            || node_key(&lab, m).contains("PRIVATE KEY"),
        );
    }
    lab.kill9("m3");
    lab.start("m3");
    wait_for("m3 serves without unlock", Duration::from_secs(30), || {
        lab.try_weft("m3", &["node", "ls"]).status.success()
    });
    // Its store shows autolock off once it has replayed the log.
    wait_for("m3 shows autolock off", Duration::from_secs(30), || {
        let info = lab.weft("m3", &["info"]);
        info.contains("Cluster: active") && info.contains("Autolock: off")
    });
    wait_voters(&lab, "m1", &MANAGERS);
}

/// Autolock turned on in a running cluster: what still holds the secrets
/// in the clear afterwards (SECURITY.md says the same).
#[test]
fn enabling_on_an_existing_cluster_seals_what_it_can() {
    let mut lab = Lab::new("autolock-late", &["m1", "m2"]);
    lab.start_all();
    let (_wt, mt) = lab.init("m1", &[]);
    lab.join("m2", &mt, "m1");
    wait_voters(&lab, "m1", &["m1", "m2"]);
    // Bad input first: each refused, autolock stays off.
    for (args, says) in [
        (
            &[
                "cluster",
                "update",
                "--autolock=true",
                "--cert-expiry",
                "2h",
            ][..],
            "on its own",
        ),
        (
            &["cluster", "update", "--autolock=false"][..],
            "already off",
        ),
        (
            &["cluster", "update", "--autolock=maybe"][..],
            "invalid value",
        ),
        (&["unlock-key"][..], "autolock is off"),
        (&["unlock-key", "--rotate"][..], "autolock is off"),
    ] {
        let err = lab.weft_err("m1", args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (ok, err) = unlock(
        &lab,
        "m1",
        "WEFTKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    assert!(!ok && err.contains("not locked"), "{err}");
    assert!(lab.weft("m1", &["info"]).contains("Autolock: off"));
    assert!(node_key(&lab, "m1").contains("PRIVATE KEY"));
    let out = lab.weft("m1", &["cluster", "update", "--autolock=true"]);
    assert!(out.contains("Autolock: on"), "{out}");
    let key = key_in(&out);
    for m in ["m1", "m2"] {
        wait_for(
            &format!("{m}'s TLS key sealed"),
            Duration::from_secs(30),
            || node_key(&lab, m).starts_with("weft-sealed-1:"),
        );
    }
    // The snapshot each manager builds on seeing autolock turned on.
    for m in ["m1", "m2"] {
        wait_for(&format!("{m} compacted"), Duration::from_secs(30), || {
            lab.daemon_log(m)
                .contains("autolock on: snapshot built, log purged behind it")
        });
    }
    let err = lab.weft_err("m1", &["cluster", "update", "--autolock=true"]);
    assert!(err.contains("already on"), "{err}");
    for m in ["m1", "m2"] {
        let hits = files_containing(&lab.data_dir(m), &["PRIVATE KEY"]);
        let names: Vec<&str> = hits
            .iter()
            .map(|(f, _)| f.rsplit('/').next().unwrap_or(f))
            .collect();
        eprintln!("REMAINS on {m} after enabling: {names:?}");
        // The TLS key is sealed and the log file compacted at the purge;
        // only free pages of the database may still hold old bytes.
        assert!(!names.contains(&"node-key.pem"), "{m}: {names:?}");
        assert!(names.iter().all(|n| *n == "raft.redb"), "{m}: {names:?}");
    }
    lab.kill9("m2");
    lab.start("m2");
    assert!(lab.weft("m2", &["info"]).contains("Cluster: locked"));
    let (ok, err) = unlock(&lab, "m2", &key);
    assert!(ok, "{err}");
    wait_voters(&lab, "m1", &["m1", "m2"]);
}
