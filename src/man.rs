//! `weft man DIR`: the manual pages, written from the CLI's own definitions
//! (clap_mangen), one per command as Docker's are: `weft.1`,
//! `weft-service.1`, `weft-service-create.1`, … Hidden commands get none.
//! The Debian package (`make deb`) ships them.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// Writes every page into `dir` (created if missing); returns how many.
pub fn write_all(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = 0;
    write_tree(&crate::cli::Cli::command(), "weft", dir, &mut written)?;
    Ok(written)
}

/// The page of `cmd` (invoked as `words`, e.g. "weft service create") and
/// of each visible subcommand under it.
fn write_tree(
    cmd: &clap::Command,
    words: &str,
    dir: &Path,
    written: &mut usize,
) -> anyhow::Result<()> {
    let file = words.replace(' ', "-");
    let page = cmd
        .clone()
        .name(file.clone())
        .display_name(file.clone())
        .bin_name(words.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .with_context(|| format!("cannot render the page of {words}"))?;
    let path = dir.join(format!("{file}.1"));
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, &format!("{words} {}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_gets_a_page_named_as_docker_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_all(dir.path()).unwrap();
        assert!(n > 50, "only {n} pages");
        for page in ["weft.1", "weft-service-create.1", "weft-network-connect.1"] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.starts_with(".ie"), "{page} is not roff: {text:.80}");
            assert!(text.contains(".SH SYNOPSIS"), "{page}");
        }
        let create = std::fs::read_to_string(dir.path().join("weft-service-create.1")).unwrap();
        assert!(create.contains("weft service create"), "{create:.600}");
        assert!(create.contains("replicas"), "the options are documented");
        assert!(
            !dir.path().join("weft-task-shim.1").exists(),
            "a hidden command"
        );
        assert!(!dir.path().join("weft-man.1").exists(), "a hidden command");
    }
}
