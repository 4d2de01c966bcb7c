//! `weft lab`: a whole cluster on one machine (owned by the lab work; stub).

use clap::Subcommand;

/// `weft lab …`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// List labs.
    Ls,
}

/// Runs a lab command.
pub async fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Ls => anyhow::bail!("weft lab is not implemented yet"),
    }
}
