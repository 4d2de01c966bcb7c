//! The `weft` CLI on a real pseudo-terminal (`weft exec -t`, `weft run
//! -it`), as a user at a terminal runs it: what it shows, keys typed in,
//! resizes as a terminal emulator makes them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::wait_for;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// `weft ARGS` against the daemon at `socket` on a pseudo-terminal (stdin, stdout and stderr), as
/// a user at a terminal runs it.
pub struct OnPty {
    child: std::process::Child,
    master: std::fs::File,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl OnPty {
    pub fn spawn(socket: &Path, args: &[&str], rows: u16, cols: u16) -> OnPty {
        use std::io::Read;
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = || Stdio::from(pty.slave.try_clone().expect("dup the pty"));
        let child = Command::new(WEFT)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .env_remove("WEFT_HOST")
            .stdin(slave())
            .stdout(slave())
            .stderr(slave())
            .spawn()
            .expect("spawn weft");
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnPty {
            child,
            master,
            seen,
        }
    }

    pub fn wait_text(&self, what: &str) {
        wait_for(what, Duration::from_secs(30), || self.text().contains(what));
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    pub fn type_in(&self, bytes: &[u8]) {
        use std::io::Write;
        (&self.master).write_all(bytes).expect("type");
    }

    /// Sets the terminal's size and tells the CLI (SIGWINCH), as a
    /// terminal emulator does.
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from `ws`, which outlives
        // the call; the fd is our open pty master.
        unsafe { tiocswinsz(self.master.as_raw_fd(), &ws) }.expect("TIOCSWINSZ");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGWINCH,
        )
        .expect("SIGWINCH");
    }

    /// Resizes to `rows`×`cols`, then presses enter until the command
    /// (printing `stty size` on each line) shows the new size: a key typed
    /// right after the resize may overtake it.
    pub fn resize_until_shown(&self, rows: u16, cols: u16) {
        self.resize(rows, cols);
        let want = format!("{rows} {cols}");
        wait_for(&want, Duration::from_secs(30), || {
            self.type_in(b"\r");
            self.text().contains(&want)
        });
    }

    /// Waits (up to 30 s) for the CLI's exit code; `None` if it did not
    /// end (or ended by a signal), with what the terminal showed.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return (s.code(), self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (None, self.text())
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
