//! A one-node cluster on a private containerd with the busybox test image
//! loaded (`weft run`, `weft exec`, `weft run -i/-t` tests), and the
//! CLI run against it as a child.

use std::process::{Command, Stdio};

use super::Lab;
use super::containerd::PrivateContainerd;

/// containerd's namespace for weft's containers.
const NS: &str = "weft";
const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Fields drop in order: the daemon goes first, then its containerd.
pub struct OneNode {
    /// The lab with its one host, m1.
    pub lab: Lab,
    /// m1's containerd.
    pub ctrd: PrivateContainerd,
}

impl OneNode {
    /// Starts m1 on its own containerd, initialises a cluster and loads the
    /// test image.
    pub fn new(test: &str) -> OneNode {
        let ctrd = PrivateContainerd::start(&format!("{test}-m1"));
        let mut lab = Lab::new(test, &["m1"]);
        lab.start_on_containerd("m1", &ctrd);
        lab.init("m1", &["--heartbeat-period", "500ms"]);
        let images = super::image::busybox();
        lab.weft(
            "m1",
            &["image", "load", "-i", images.docker.to_str().unwrap()],
        );
        OneNode { lab, ctrd }
    }

    /// `weft ARGS` on m1 as a child with `stdin` (stdout and stderr piped).
    pub fn spawn(&self, args: &[&str], stdin: Stdio) -> std::process::Child {
        Command::new(WEFT)
            .arg("-H")
            .arg(format!("unix://{}", self.lab.socket_path("m1").display()))
            .args(args)
            .env_remove("WEFT_HOST")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft")
    }

    /// `weft ARGS` on m1 with `input` piped to its stdin (then closed).
    pub fn piped(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self.spawn(args, Stdio::piped());
        let mut stdin = child.stdin.take().expect("stdin");
        // A command that reads no stdin may be gone before all is written.
        if let Err(e) = stdin.write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        drop(stdin);
        child.wait_with_output().expect("wait weft")
    }

    /// Containers in weft's namespace, as containerd says.
    pub fn containers(&self) -> Vec<String> {
        self.ctrd
            .ctr_ok(NS, &["containers", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The `weft ps -a` row of task `what` (ID prefix or name), if listed.
    pub fn row(&self, what: &str) -> Option<String> {
        self.lab
            .weft("m1", &["ps", "-a"])
            .lines()
            .skip(1)
            .find(|l| {
                let mut f = l.split_whitespace();
                let (id, name) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                id.starts_with(what) || name == what
            })
            .map(str::to_owned)
    }

    /// `weft inspect WHAT`'s object.
    pub fn inspect(&self, what: &str) -> serde_json::Value {
        let out = self.lab.weft("m1", &["inspect", what]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
        v[0].clone()
    }
}
