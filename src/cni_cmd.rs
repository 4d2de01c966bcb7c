//! `weft cni config` and `weft cni install`: the plugin's config and files.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::CniCommand;

/// The conflist for `network`, as a runtime reads it.
pub fn conflist(network: &str, socket: Option<&Path>) -> serde_json::Value {
    let mut plugin = serde_json::json!({"type": "weft", "network": network,
                                        "capabilities": {"portMappings": true}});
    if let Some(s) = socket {
        plugin["socket"] = serde_json::json!(s);
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [plugin],
    })
}

fn check_network_name(network: &str) -> anyhow::Result<()> {
    let ok = !network.is_empty()
        && network.len() <= 64
        && network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    anyhow::ensure!(
        ok,
        "invalid network name {network:?}: letters, digits, '_', '-' and '.', at most 64"
    );
    Ok(())
}

/// Runs a `weft cni` command.
pub fn run(cmd: CniCommand) -> anyhow::Result<()> {
    match cmd {
        CniCommand::Config { network, socket } => {
            check_network_name(&network)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&conflist(&network, socket.as_deref()))?
            );
            Ok(())
        }
        CniCommand::Install {
            network,
            bin_dir,
            conf_dir,
            socket,
        } => {
            if let Some(n) = &network {
                check_network_name(n)?;
            }
            let me = std::env::current_exe().context("cannot find this binary")?;
            let plugin = bin_dir.join("weft");
            install_file(
                &plugin,
                &std::fs::read(&me).context("cannot read this binary")?,
                0o755,
            )?;
            println!("installed the CNI plugin {}", plugin.display());
            if let Some(n) = network {
                let path: PathBuf = conf_dir.join(format!("50-weft-{n}.conflist"));
                let body = serde_json::to_string_pretty(&conflist(&n, socket.as_deref()))?;
                install_file(&path, body.as_bytes(), 0o644)?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// Writes `bytes` to `path` whole (a temporary file renamed over it), so a
/// runtime never runs or reads half a file.
fn install_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("weft")
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
