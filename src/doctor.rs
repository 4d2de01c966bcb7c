//! `weft doctor`: prints what the offline checks in the library found.

use weft_manager::raft::doctor::{self, Verdict};

use crate::cli::DoctorCommand;

/// Runs a doctor command; fails (non-zero exit) when the next start of the
/// daemon would refuse.
pub fn run(cmd: DoctorCommand) -> anyhow::Result<()> {
    match cmd {
        DoctorCommand::Raft { data_dir } => {
            let report = doctor::check(&data_dir.join("raft"));
            println!("{report}");
            if matches!(report.verdict, Verdict::Refused(_)) {
                anyhow::bail!("the Raft state in {} needs attention", data_dir.display());
            }
            Ok(())
        }
    }
}
