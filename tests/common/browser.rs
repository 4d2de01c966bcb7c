//! A headless Chromium driven over the DevTools protocol (CDP), for the
//! tests of `weft ui`'s page: the page's own JavaScript runs, and the test
//! reads the DOM it built (`Runtime.evaluate`) and a screenshot.
//!
//! The DevTools websocket is spoken here in a few lines (text frames, the
//! client's masking, pings) rather than with a websocket crate: tests are
//! its only user, and it talks to one local browser.
//!
//! The browser runs in a process group of its own, killed as a whole on
//! drop (its zygote, renderer and GPU processes too), also when the test
//! fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium to run: `$WEFT_TEST_CHROMIUM`, else `chromium` or
/// `chromium-browser` on PATH; `None` when there is none.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `GET path` on `addr` (HTTP/1.1, `Host: host`); returns the status code
/// and the body (of `Content-Length` bytes, or up to the connection's end:
/// Chromium's DevTools server keeps it open).
pub fn http_get(addr: &str, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body_at) = loop {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&raw[..i]).into_owned(), i + 4);
        }
        assert!(n > 0, "no HTTP answer to GET {path}: {raw:?}");
    };
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    loop {
        let have = raw.len() - body_at;
        if length.is_some_and(|l| have >= l) {
            break;
        }
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (
        status,
        String::from_utf8_lossy(&raw[body_at..]).into_owned(),
    )
}

/// A headless Chromium with one page open, and a DevTools connection to it.
pub struct Browser {
    child: Child,
    ws: Ws,
    next_id: u64,
}

impl Browser {
    /// Starts `exe` on `url` with its profile in `profile` (a fresh
    /// directory), and connects to the page's DevTools target.
    pub fn open(exe: &Path, url: &str, profile: &Path) -> Browser {
        std::fs::create_dir_all(profile).expect("profile dir");
        let log = std::fs::File::create(profile.join("chromium.log")).expect("log");
        let child = Command::new(exe)
            .args([
                "--headless=new",
                // Root has no user namespace sandbox to give it.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        let mut b = Browser {
            child,
            ws: Ws { s: None },
            next_id: 0,
        };
        let port = b.devtools_port(profile);
        b.ws = Ws::connect(&page_target(port, url));
        b
    }

    /// The port Chromium picked (`DevToolsActivePort` in the profile).
    fn devtools_port(&mut self, profile: &Path) -> u16 {
        let file = profile.join("DevToolsActivePort");
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
            {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before it served DevTools:\n{}",
                    std::fs::read_to_string(profile.join("chromium.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromium wrote no {} in 30 s",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One CDP call; its `result`.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws.send(&msg.to_string());
        loop {
            let m: serde_json::Value =
                serde_json::from_str(&self.ws.recv()).expect("CDP message is JSON");
            if m["id"] == id {
                if let Some(e) = m.get("error") {
                    panic!("CDP {method} failed: {e}");
                }
                return m["result"].clone();
            }
        }
    }

    /// The value of the JavaScript expression `expr` in the page (JSON;
    /// null when it threw).
    pub fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// A PNG of the page as it is shown.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: Chromium's helpers are its children.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The DevTools websocket URL of the page showing `url`.
fn page_target(port: u16, url: &str) -> String {
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        let (status, body) = http_get(&addr, "/json/list", &addr);
        if status == 200 {
            let targets: serde_json::Value = serde_json::from_str(&body).expect("target list");
            let page = targets.as_array().into_iter().flatten().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            });
            if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                return ws.to_string();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no DevTools page for {url}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A websocket client of text messages (RFC 6455, what CDP needs).
struct Ws {
    s: Option<TcpStream>,
}

impl Ws {
    fn connect(url: &str) -> Ws {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
        // A page that stops answering fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("handshake");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).expect("handshake answer");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket refused: {head}"
        );
        Ws { s: Some(s) }
    }

    fn stream(&mut self) -> &mut TcpStream {
        self.s.as_mut().expect("connected")
    }

    /// Sends one frame (clients mask theirs).
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65_536 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0x17, 0xc3, 0x8e];
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream().write_all(&f).expect("websocket send");
    }

    fn send(&mut self, text: &str) {
        self.frame(0x1, text.as_bytes());
    }

    /// The next text message (answering pings on the way).
    fn recv(&mut self) -> String {
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.stream().read_exact(&mut h).expect("websocket read");
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.stream().read_exact(&mut l).expect("length");
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.stream().read_exact(&mut l).expect("length");
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mask = if h[1] & 0x80 != 0 {
                let mut m = [0u8; 4];
                self.stream().read_exact(&mut m).expect("mask");
                Some(m)
            } else {
                None
            };
            let mut payload = vec![0u8; len as usize];
            self.stream().read_exact(&mut payload).expect("payload");
            if let Some(m) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= m[i % 4]);
            }
            match opcode {
                0x0 | 0x1 => {
                    msg.extend(payload);
                    if fin {
                        return String::from_utf8(msg).expect("text message is UTF-8");
                    }
                }
                0x8 => panic!("the browser closed the DevTools connection"),
                0x9 => self.frame(0xA, &payload),
                _ => {}
            }
        }
    }
}
