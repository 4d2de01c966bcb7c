//! The shape of an interactive exec (`weft exec`): what to run in a task's
//! running container and the two channels of a session with it.
//!
//! ```text
//!  caller ── ExecInput (stdin chunks, close stdin, resize) ──▶ runtime's exec job
//!  caller ◀── ExecEvent (stdout, stderr chunks…, then one Exit) ── runtime's exec job
//! ```
//!
//! The runtime's job owns the process from its creation to its deletion:
//! dropping the input sender before the exit (the client went away) kills
//! the process, and the job still deletes it and its FIFOs (an exec left
//! created in the shim delays stopping its container).

use tokio::sync::mpsc;

/// Largest number of arguments of an exec command.
pub const MAX_ARGS: usize = 1024;
/// Largest total size of an exec's arguments and environment, bytes.
pub const MAX_ARGS_BYTES: usize = 128 * 1024;
/// Largest number of `-e` variables.
pub const MAX_ENV: usize = 256;
/// Largest stdin chunk a session accepts (and output chunk it sends).
pub const MAX_CHUNK: usize = 64 * 1024;

/// What to run, with Docker's `exec` options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Program and arguments (looked up in the container's `PATH`).
    pub args: Vec<String>,
    /// `-e K=V`: added to (or replacing in) the container's environment.
    pub env: Vec<String>,
    /// `-u USER[:GROUP]`; `None`: the container's user.
    pub user: Option<String>,
    /// `-w DIR` (absolute); `None`: the container's working directory.
    pub workdir: Option<String>,
    /// `-i`: the process gets a stdin fed from [`ExecInput::Stdin`].
    pub stdin: bool,
    /// `-t`: the process gets a pseudo-terminal (its stdout and stderr
    /// both arrive as [`ExecEvent::Stdout`]).
    pub tty: bool,
    /// The terminal's initial size (columns, rows), with `tty`.
    pub size: Option<(u16, u16)>,
}

/// Why an [`ExecSpec`] is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No program.
    #[error("no command given")]
    NoCommand,
    /// Too many or too long arguments or variables.
    #[error(
        "the command line is too long (at most {MAX_ARGS} arguments, {MAX_ENV} variables, {MAX_ARGS_BYTES} bytes)"
    )]
    TooLong,
    /// A NUL byte in an argument, variable, user or directory.
    #[error("a NUL byte in the command, environment, user or directory")]
    Nul,
    /// A variable not of the form `NAME=VALUE`.
    #[error("environment variables must be NAME=VALUE with a non-empty NAME")]
    BadEnv,
    /// A working directory that is not absolute.
    #[error("the working directory must be an absolute path")]
    RelativeWorkdir,
}

impl ExecSpec {
    /// Checks the bounds and syntax the runtime relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.args.first().is_none_or(|a| a.is_empty()) {
            return Err(SpecError::NoCommand);
        }
        let bytes: usize = self.args.iter().chain(&self.env).map(String::len).sum();
        if self.args.len() > MAX_ARGS || self.env.len() > MAX_ENV || bytes > MAX_ARGS_BYTES {
            return Err(SpecError::TooLong);
        }
        let strings = self
            .args
            .iter()
            .chain(&self.env)
            .chain(self.user.iter())
            .chain(self.workdir.iter());
        if strings.clone().any(|s| s.contains('\0')) {
            return Err(SpecError::Nul);
        }
        if self
            .env
            .iter()
            .any(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(SpecError::BadEnv);
        }
        if self.workdir.as_ref().is_some_and(|w| !w.starts_with('/')) {
            return Err(SpecError::RelativeWorkdir);
        }
        Ok(())
    }
}

/// What the caller sends to a running exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for its stdin (ignored without [`ExecSpec::stdin`]).
    Stdin(Vec<u8>),
    /// The end of its stdin: it reads EOF once what was sent is read.
    CloseStdin,
    /// The terminal's new size (columns, rows); ignored without a tty.
    Resize(u16, u16),
}

/// What a running exec sends back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of its stdout (or of its terminal).
    Stdout(Vec<u8>),
    /// A chunk of its stderr.
    Stderr(Vec<u8>),
    /// The last event: its exit status (128 + n when signal n ended it).
    Exit(i32),
}

/// A started exec: see the module header.
#[derive(Debug)]
pub struct ExecSession {
    /// Input for the process; dropping it before the exit kills it.
    pub input: mpsc::Sender<ExecInput>,
    /// Its output, then its exit.
    pub events: mpsc::Receiver<ExecEvent>,
}

/// How a container task's stdio is wired (`weft run -i`/`-t`): all
/// false, its output goes through the shim's logger straight to its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StdioOpts {
    /// `-i`: a stdin kept open, fed by attaches.
    #[serde(default)]
    pub open_stdin: bool,
    /// `-t`: a pseudo-terminal (stdout and stderr as one).
    #[serde(default)]
    pub tty: bool,
    /// The output waits (bounded) for the first attach, so that an
    /// attached `weft run` misses none of it.
    #[serde(default)]
    pub attach_wait: bool,
    /// With `tty`: the terminal's size at the start (columns, rows).
    #[serde(default)]
    pub size: Option<(u16, u16)>,
}

impl StdioOpts {
    /// Whether the node copies the container's stdio itself (FIFOs)
    /// rather than the shim's logger.
    pub fn copied(&self) -> bool {
        self.open_stdin || self.tty
    }
}

/// A piece of a task's live output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StdioChunk {
    /// Bytes of its stdout (or of its terminal).
    Stdout(Vec<u8>),
    /// Bytes of its stderr.
    Stderr(Vec<u8>),
    /// Its output has ended (it is all in its log too).
    End,
}

/// An attach to a task's live stdio (see `containerd::stdio`).
#[derive(Debug)]
pub struct TaskStdio {
    /// Stdin chunks, its close (only with `-i`) and resizes (only with
    /// `-t`); shared by every attach.
    pub input: mpsc::Sender<ExecInput>,
    /// Its output from the moment of the attach (a slow reader that
    /// falls more than a thousand chunks behind loses some); `None`: read
    /// its log instead (the output had begun before a "from the start"
    /// attach, or has ended).
    pub output: Option<tokio::sync::broadcast::Receiver<StdioChunk>>,
    /// Whether it was run with `-i` (input is fed to it).
    pub open_stdin: bool,
    /// Whether it has a terminal.
    pub tty: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str]) -> ExecSpec {
        ExecSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn specs_are_bounded_and_well_formed() {
        assert_eq!(spec(&["sh", "-c", "true"]).validate(), Ok(()));
        assert_eq!(spec(&[]).validate(), Err(SpecError::NoCommand));
        assert_eq!(spec(&[""]).validate(), Err(SpecError::NoCommand));
        assert_eq!(spec(&["a\0b"]).validate(), Err(SpecError::Nul));
        let long = "x".repeat(MAX_ARGS_BYTES + 1);
        assert_eq!(spec(&[long.as_str()]).validate(), Err(SpecError::TooLong));
        let many = vec!["x"; MAX_ARGS + 1];
        assert_eq!(spec(&many).validate(), Err(SpecError::TooLong));
        for bad in ["NOEQUALS", "=v"] {
            let s = ExecSpec {
                env: vec![bad.into()],
                ..spec(&["true"])
            };
            assert_eq!(s.validate(), Err(SpecError::BadEnv), "{bad}");
        }
        let ok_env = ExecSpec {
            env: vec!["A=".into(), "B=c=d".into()],
            ..spec(&["true"])
        };
        assert_eq!(ok_env.validate(), Ok(()));
        let rel = ExecSpec {
            workdir: Some("tmp".into()),
            ..spec(&["true"])
        };
        assert_eq!(rel.validate(), Err(SpecError::RelativeWorkdir));
    }
}
