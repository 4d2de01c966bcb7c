//! The per-task shim process (stub until the runtime lands).

/// Arguments of the hidden `weft task-shim` command.
#[derive(Debug, clap::Args)]
pub struct ShimArgs {
    /// The task's directory.
    #[arg(long)]
    pub dir: std::path::PathBuf,
}

/// Errors of the shim.
#[derive(Debug, thiserror::Error)]
#[error("task shim: {0}")]
pub struct ShimError(pub String);

/// Runs the shim.
pub fn run(_args: ShimArgs) -> Result<(), ShimError> {
    Err(ShimError("not implemented".into()))
}
