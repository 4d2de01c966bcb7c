//! `weft ui` (issue #19) against real daemons in namespace hosts, run as
//! its own process on a lab node's socket (and from another host through
//! a manager's control API, -H tcp://), as a user runs it: its HTTP
//! answers (every node and network in `/api/state`, a snapshot on
//! `/api/events`, no token or key material anywhere, non-loopback
//! `--listen` refused without `--insecure-listen`, foreign `Host`s
//! refused), then the page itself in a headless Chromium: it lists every
//! node, shows a `service scale` within a second without a reload, and
//! draws something (the screenshot is not blank).
//!
//! The browser test FAILS when no Chromium is installed (`make deps`
//! installs it); `WEFT_SKIP_BROWSER_TESTS=1` skips it, saying so loudly.
//! `WEFT_TEST_UI_SCREENSHOT=FILE` keeps the page's screenshot.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{Browser, find_chromium, http_get};
use common::{Lab, WEFT, wait_for};

/// A running `weft ui`; killed on drop, also when the test fails.
struct Ui {
    child: Child,
    /// IP:PORT it serves on.
    addr: String,
    /// What it printed on stderr before it served (the warning).
    stderr: BufReader<std::process::ChildStderr>,
    /// Kept open: a closed stdout would end it at its next line.
    _stdout: BufReader<std::process::ChildStdout>,
    /// The login token in the address it printed (--insecure-listen).
    token: Option<String>,
}

impl Ui {
    /// `weft ui ARGS` against `host`'s daemon; waits for the address line.
    fn start(lab: &Lab, host: &str, args: &[&str]) -> Ui {
        let mut cmd = Command::new(WEFT);
        cmd.arg("-H")
            .arg(format!("unix://{}", lab.socket_path(host).display()))
            .arg("ui")
            .args(args);
        Ui::spawn(cmd)
    }

    /// Runs `cmd` (a `weft … ui …`); waits for the address line.
    fn spawn(mut cmd: Command) -> Ui {
        let mut child = cmd
            .env_remove("WEFT_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run weft ui");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        out.read_line(&mut line).expect("weft ui's first line");
        let mut ui = Ui {
            child,
            addr: String::new(),
            stderr,
            _stdout: out,
            token: line
                .split("?token=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .map(str::to_string),
        };
        let Some(addr) = line
            .strip_prefix("weft ui: serving http://")
            .and_then(|r| r.split('/').next())
        else {
            let _ = ui.child.kill();
            let mut err = String::new();
            let _ = ui.stderr.read_to_string(&mut err);
            panic!("weft ui did not serve: {line:?} {err}");
        };
        ui.addr = addr.to_string();
        ui
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `GET path` with this server's own `Host`.
    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path, &self.addr)
    }

    /// `/api/state`, parsed.
    fn state(&self) -> serde_json::Value {
        let (status, body) = self.get("/api/state");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("state is not JSON ({e}): {body}"))
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values of `key` of each object of `v[list]`, sorted.
fn names(v: &serde_json::Value, list: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|x| x[key].as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

/// A cluster of `m1` (manager) and `w1`, an encrypted overlay and a
/// two-replica service on it whose environment holds a password.
fn cluster(test: &str) -> (Lab, String, String) {
    let mut lab = Lab::new(test, &["m1", "w1"]);
    lab.start_all();
    let (wt, mt) = lab.init("m1", &["--heartbeat-period", "500ms"]);
    lab.join("w1", &wt, "m1");
    wait_for("2 nodes ready", Duration::from_secs(30), || {
        let nodes = lab.node_ls("m1");
        nodes.len() == 2 && nodes.iter().all(|n| n.status == "Ready")
    });
    lab.encrypted_network("m1", "10.0.41.0/24", "uisec");
    lab.weft(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "uiweb",
            "--replicas",
            "2",
            "--network",
            "uisec",
            "--env",
            "UI_DB_PASSWORD=hunter2-never-shown",
            "--",
            "sleep",
            "600",
        ],
    );
    wait_for("2 uiweb tasks running", Duration::from_secs(30), || {
        lab.running_on("m1", "uiweb").len() == 2
    });
    (lab, wt, mt)
}

/// Everything secret the cluster has that a page could leak: the join
/// tokens, the nodes' private keys (their base64 lines), the service's
/// password.
fn secrets(lab: &Lab, tokens: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    out.push("hunter2-never-shown".into());
    out.push("PRIVATE KEY".into());
    for host in ["m1", "w1"] {
        let key = lab.data_dir(host).join("certs/node-key.pem");
        let pem =
            std::fs::read_to_string(&key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        out.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
                .map(str::to_string),
        );
    }
    out
}

#[test]
fn ui_serves_every_node_and_network_without_secrets() {
    let (lab, wt, mt) = cluster("ui-http");
    let ui = Ui::start(&lab, "m1", &["--listen", "127.0.0.1:0"]);

    let state = ui.state();
    assert_eq!(names(&state, "nodes", "hostname"), ["m1", "w1"], "{state}");
    let nets = names(&state, "networks", "name");
    assert!(nets.contains(&"uisec".to_string()), "{nets:?}");
    let sec = state["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "uisec")
        .unwrap();
    assert_eq!(sec["encrypted"], true, "{sec}");
    assert_eq!(sec["subnet"], "10.0.41.0/24", "{sec}");
    assert_eq!(
        names(sec, "peers", "hostname"),
        ["m1", "w1"],
        "each node's config version and handshake: {sec}"
    );
    let web = &state["services"][0];
    assert_eq!(web["name"], "uiweb", "{state}");
    assert_eq!(
        (web["running"].as_u64(), web["desired"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(!web["vips"].as_array().unwrap().is_empty(), "a VIP: {web}");

    // Nothing secret in anything the server gives.
    let (_, page) = ui.get("/");
    let (_, js) = ui.get("/app.js");
    let everything = format!("{state}\n{page}\n{js}\n{}", first_event(&ui));
    for s in secrets(&lab, &[&wt, &mt]) {
        assert!(!everything.contains(&s), "the page shows {s:?}");
    }

    // Another site's name for 127.0.0.1 (DNS rebinding) is refused.
    let (status, _) = http_get(&ui.addr, "/api/state", "rebound.example:4390");
    assert_eq!(status, 421);

    // From another machine (w1's namespace) through a manager's control
    // API over mTLS (-H tcp://), as the other commands reach it.
    let certs = lab.data_dir("m1").join("certs");
    let f = |n: &str| certs.join(n).display().to_string();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.host_netns("w1").display()))
        .arg(WEFT)
        .args(["-H", &format!("tcp://{}:4377", lab.addr("m1"))])
        .args(["--tlscacert", &f("ca.pem")])
        .args(["--tlscert", &f("node.pem"), "--tlskey", &f("node-key.pem")])
        .args(["ui", "--listen", "127.0.0.1:0"]);
    let remote = Ui::spawn(cmd);
    let addr = remote.addr.clone();
    let (status, body) = common::in_host(&lab, "w1", async move || {
        http_get(&addr, "/api/state", &addr)
    });
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(names(&v, "nodes", "hostname"), ["m1", "w1"], "{v}");
    drop(remote);

    // A worker has no control API: said at once, not a page of errors.
    let err = lab.weft_err("w1", &["ui", "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("cannot read the cluster's state") && err.contains("not a manager"),
        "{err}"
    );
}

/// The first snapshot `/api/events` sends (Server-Sent Events).
fn first_event(ui: &Ui) -> String {
    let mut s = std::net::TcpStream::connect(&ui.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {}\r\n\r\n", ui.addr).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        let n = s.read(&mut buf).expect("event stream");
        assert!(n > 0, "the event stream ended");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("text/event-stream"), "{text}");
        if let Some(i) = text.find("data: ")
            && let Some(line) = text[i + 6..].split('\n').next()
            && text[i + 6..].contains('\n')
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("event is not a JSON snapshot ({e}): {line}"));
            assert_eq!(names(&v, "nodes", "hostname"), ["m1", "w1"]);
            return line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no event: {text}"
        );
    }
}

#[test]
fn ui_listens_beyond_loopback_only_when_told_to() {
    let mut lab = Lab::new("ui-listen", &["m1"]);
    lab.start_all();
    lab.init("m1", &[]);
    let err = lab.weft_err("m1", &["ui", "--listen", "0.0.0.0:0"]);
    assert!(
        err.contains("not a loopback address") && err.contains("--insecure-listen"),
        "{err}"
    );
    let err = lab.weft_err("m1", &["ui", "--listen", "localhost"]);
    assert!(err.contains("--listen"), "{err}");

    let mut ui = Ui::start(&lab, "m1", &["--listen", "0.0.0.0:0", "--insecure-listen"]);
    let mut warning = String::new();
    ui.stderr.read_line(&mut warning).expect("stderr");
    assert!(warning.contains("login token"), "{warning}");
    let port = ui.addr.rsplit_once(':').expect("port").1.to_string();
    let token = ui
        .token
        .clone()
        .expect("a login token in the address it printed");
    assert_eq!(token.len(), 64, "{token}");
    let at = format!("127.0.0.1:{port}");
    let (status, body) = http_get(&at, "/api/state", "10.1.2.3:80");
    assert_eq!(status, 401, "no token, no state: {body}");
    let (status, body) = http_get(&at, &format!("/api/state?token={token}"), "10.1.2.3:80");
    assert_eq!(status, 200, "any Host with the token once told so: {body}");
}

/// The Chromium to test the page with; `None` (after saying SKIPPED
/// loudly) when there is none and WEFT_SKIP_BROWSER_TESTS is set; the test
/// fails when there is none otherwise.
fn chromium_for(test: &str) -> Option<std::path::PathBuf> {
    if let Some(c) = find_chromium() {
        return Some(c);
    }
    if std::env::var_os("WEFT_SKIP_BROWSER_TESTS").is_some() {
        eprintln!("\n*** SKIPPED: {test}: no chromium (WEFT_SKIP_BROWSER_TESTS is set) ***\n");
        return None;
    }
    panic!(
        "no chromium to test the page with: install it (`make deps` does), set \
         WEFT_TEST_CHROMIUM, or set WEFT_SKIP_BROWSER_TESTS=1 to skip this test"
    );
}

/// A [`cluster`], `weft ui` on m1's socket and its page in Chromium,
/// listing both nodes. Bind every field: one left out of a pattern (`..`)
/// is dropped at once, and `weft ui` is killed with it.
struct Page {
    b: Browser,
    _ui: Ui,
    lab: Lab,
}

/// A [`Page`] for `test`, its lab named `lab` (short: socket paths have
/// a limit); `None` when the browser tests are skipped.
fn page(test: &str, lab: &str) -> Option<Page> {
    let chromium = chromium_for(test)?;
    let (lab, _, _) = cluster(lab);
    let ui = Ui::start(&lab, "m1", &["--listen", "127.0.0.1:0"]);
    let mut b = Browser::open(&chromium, &ui.url(), &lab.dir().join("chromium"));
    let hosts = r#"JSON.stringify([...document.querySelectorAll('#topology [data-hostname]')]
                   .map(e => e.dataset.hostname).sort())"#;
    wait_for("the page lists both nodes", Duration::from_secs(20), || {
        b.eval(hosts) == serde_json::json!(r#"["m1","w1"]"#)
    });
    Some(Page { b, _ui: ui, lab })
}

#[test]
fn ui_page_in_a_headless_browser_follows_a_scale() {
    let Some(Page { mut b, _ui, lab }) = page(
        "ui_page_in_a_headless_browser_follows_a_scale",
        "ui-browser",
    ) else {
        return;
    };
    let running = r#"document.querySelectorAll(
                   '#topology [data-service="uiweb"][data-state="running"]').length"#;
    wait_for(
        "the page shows 2 running tasks",
        Duration::from_secs(10),
        || b.eval(running) == 2,
    );

    // `service scale` returns once 4 tasks run; the page shows them
    // within a second of that, without a reload.
    lab.weft("m1", &["service", "scale", "uiweb=4"]);
    let scaled = Instant::now();
    while b.eval(running) != 4 {
        assert!(
            scaled.elapsed() < Duration::from_secs(1),
            "1 s after the scale the page shows {} running uiweb tasks",
            b.eval(running)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "the page showed the scale {:?} after it returned",
        scaled.elapsed()
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation').length"),
        1,
        "one page load: no reload"
    );
    let rows =
        b.eval("document.querySelectorAll('#networks tbody tr[data-network=\"uisec\"]').length");
    assert_eq!(rows, 1, "the networks table lists uisec");
    let endpoints = r#"[...document.querySelectorAll(
                       '#networks tr[data-network="uisec"] li[data-endpoint]')]
                       .filter(e => e.dataset.endpoint.startsWith('uiweb.')).length"#;
    wait_for(
        "uisec lists uiweb's 4 endpoints",
        Duration::from_secs(5),
        || b.eval(endpoints) == 4,
    );
    let mtu =
        b.eval("document.querySelector('#networks tr[data-network=\"uisec\"] td.num').textContent");
    let mtu = mtu.as_str().unwrap_or_default();
    assert!(
        mtu.starts_with("1390 (") && (mtu.contains("m1") || mtu.contains("w1")),
        "the MTU and the node that sets it: {mtu:?}"
    );

    // Keyboard: every node box and task chip takes the focus.
    let focusable = b.eval(
        "[...document.querySelectorAll('#topology article, #topology .task')]\
         .every(e => e.tabIndex === 0)",
    );
    assert_eq!(focusable, true);

    let png = b.screenshot();
    // WEFT_TEST_UI_SCREENSHOT=FILE keeps it, to look at.
    if let Some(keep) = std::env::var_os("WEFT_TEST_UI_SCREENSHOT") {
        std::fs::write(&keep, &png).expect("write the screenshot");
    }
    let (colours, top_share) = png_colours(&png);
    assert!(
        png.len() > 10_000 && colours >= 16 && top_share < 0.97,
        "the screenshot looks blank: {} bytes, {colours} colours, the commonest covers {:.1}%",
        png.len(),
        top_share * 100.0
    );

    // Dark when the system prefers it.
    let background = "getComputedStyle(document.body).backgroundColor";
    let light = b.eval(background);
    b.call(
        "Emulation.setEmulatedMedia",
        serde_json::json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    );
    let dark = b.eval(background);
    assert_ne!(light, dark, "the same background in light and dark");
    assert_eq!(dark, "rgb(22, 23, 26)", "the dark background");
    if let Some(keep) = std::env::var_os("WEFT_TEST_UI_SCREENSHOT") {
        let mut dark = std::path::PathBuf::from(keep);
        dark.set_extension("dark.png");
        std::fs::write(&dark, b.screenshot()).expect("write the dark screenshot");
    }
}

/// The number of distinct colours of an 8-bit RGB(A), non-interlaced PNG
/// (what Chromium writes) and the share of its commonest colour.
fn png_colours(png: &[u8]) -> (usize, f64) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (mut at, mut idat) = (8, Vec::new());
    let (mut width, mut height, mut bpp) = (0usize, 0usize, 0usize);
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!((data[8], data[12]), (8, 0), "8-bit, not interlaced");
                bpp = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("PNG colour type {t}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("PNG data");
    let stride = width * bpp;
    assert_eq!(raw.len(), height * (stride + 1), "PNG size");
    let mut prev = vec![0u8; stride];
    let mut counts = std::collections::HashMap::new();
    for row in raw.chunks(stride + 1) {
        let (filter, line) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= bpp { cur[i - bpp] } else { 0 };
            let (b, c) = (prev[i], if i >= bpp { prev[i - bpp] } else { 0 });
            let predict = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => paeth(a, b, c),
                f => panic!("PNG filter {f}"),
            };
            cur[i] = line[i].wrapping_add(predict);
        }
        for px in cur.chunks(bpp) {
            *counts.entry([px[0], px[1], px[2]]).or_insert(0usize) += 1;
        }
        prev = cur;
    }
    let top = counts.values().max().copied().unwrap_or(0);
    (counts.len(), top as f64 / (width * height).max(1) as f64)
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[test]
fn ui_page_marks_a_node_behind_on_its_network_config() {
    let Some(Page { mut b, _ui, lab }) = page(
        "ui_page_marks_a_node_behind_on_its_network_config",
        "ui-behind",
    ) else {
        return;
    };
    let behind = r#"document.querySelector('#topology [data-hostname="w1"]')
                    ?.classList.contains('behind') ?? null"#;
    wait_for(
        "the page shows w1 up to date",
        Duration::from_secs(20),
        || b.eval(behind) == false,
    );

    // w1's daemon stopped (SIGSTOP: it neither applies nor acknowledges),
    // then a new task on the network changes w1's config.
    let mut w1 = common::Paused::stop(lab.pid("w1").expect("w1 runs"));
    lab.weft("m1", &["service", "scale", "--detach", "uiweb=3"]);
    let marked = wait_for("the page marks w1 behind", Duration::from_secs(10), || {
        b.eval(behind) == true
    });
    eprintln!("w1 marked behind {marked:?} after the scale");
    let row = b.eval(
        r#"document.querySelector('#networks tr[data-network="uisec"] li[data-peer="w1"]')
           ?.classList.contains('short') ?? null"#,
    );
    assert_eq!(row, true, "the networks table marks w1's config");

    w1.resume();
    wait_for(
        "the page shows w1 caught up",
        Duration::from_secs(20),
        || b.eval(behind) == false,
    );
}

#[test]
fn ui_page_shows_handshake_ages_and_a_killed_worker_down_with_its_tasks_moved() {
    let Some(Page {
        mut b,
        _ui,
        mut lab,
    }) = page(
        "ui_page_shows_handshake_ages_and_a_killed_worker_down_with_its_tasks_moved",
        "ui-kill",
    )
    else {
        return;
    };
    // Traffic across the encrypted overlay: the two nodes handshake.
    let probe = common::sleeper(&lab, "m1", "uiprobe", "uisec");
    let on_w1 = lab
        .weft("m1", &["service", "ps", "uiweb"])
        .lines()
        .find(|l| l.contains(" w1 ") && l.contains(" running "))
        .and_then(|l| l.split("uisec=").nth(1))
        .and_then(|a| a.split([' ', ',', '/']).next())
        .map(str::to_string)
        .expect("a uiweb task on w1");
    wait_for(
        "a ping across the encrypted overlay",
        Duration::from_secs(20),
        || common::pings(&probe, &on_w1),
    );
    let peer_text = |host: &str| {
        format!(
            r#"document.querySelector('#networks tr[data-network="uisec"] li[data-peer="{host}"]')
               ?.textContent ?? ''"#
        )
    };
    for host in ["m1", "w1"] {
        let js = peer_text(host);
        wait_for(
            &format!("the page shows {host}'s handshake age on uisec"),
            Duration::from_secs(20),
            || {
                let t = b.eval(&js);
                let t = t.as_str().unwrap_or_default();
                t.contains("handshake ") && t.contains("s ago")
            },
        );
    }
    eprintln!(
        "uisec peers: {} | {}",
        b.eval(&peer_text("m1")),
        b.eval(&peer_text("w1"))
    );

    // The worker dies: the page shows it down, and both replicas running
    // on m1, without a reload.
    lab.kill9("w1");
    let killed = Instant::now();
    let w1_down = r#"document.querySelector('#topology [data-hostname="w1"]')
                     ?.classList.contains('down') ?? null"#;
    wait_for("the page shows w1 down", Duration::from_secs(20), || {
        b.eval(w1_down) == true
    });
    let down_after = killed.elapsed();
    let on_m1 = r#"document.querySelectorAll(
                   '#topology [data-hostname="m1"] [data-service="uiweb"][data-state="running"]').length"#;
    wait_for(
        "the page shows uiweb's 2 tasks on m1",
        Duration::from_secs(30),
        || b.eval(on_m1) == 2,
    );
    eprintln!(
        "w1 killed: shown down after {down_after:?}, its task running on m1 after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation').length"),
        1,
        "one page load: no reload"
    );
}
