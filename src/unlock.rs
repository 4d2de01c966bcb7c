//! `weft unlock` and `weft unlock-key`: autolock's commands (the design is
//! in SECURITY.md, "Secrets at rest").

use std::io::{BufRead, IsTerminal, Write};

use weft_proto::v1 as pb;

use crate::commands::Client;

/// Prints an unlock key with what to do with it.
pub fn print_key(key: &str) {
    println!("To unlock a restarted manager, run `weft unlock` on it and give this key:\n");
    println!("    {key}\n");
    println!(
        "weft stores this key nowhere: keep it safe (a password manager). Without it a \
         restarted manager cannot rejoin the cluster."
    );
}

/// `weft unlock-key [--rotate] [-q]`.
pub async fn unlock_key(c: &Client, rotate: bool, quiet: bool) -> anyhow::Result<()> {
    let r = c
        .control()
        .unlock_key(pb::UnlockKeyRequest { rotate })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if quiet {
        println!("{}", r.unlock_key);
        return Ok(());
    }
    if rotate {
        println!(
            "Unlock key rotated. A manager that was down during the rotation is unlocked with \
             the previous key.\n"
        );
    }
    print_key(&r.unlock_key);
    Ok(())
}

/// One line of stdin; on a terminal, asked for with echo off.
fn read_key() -> anyhow::Result<zeroize::Zeroizing<String>> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut line = zeroize::Zeroizing::new(String::new());
    if !stdin.is_terminal() {
        stdin.lock().read_line(&mut line)?;
        return Ok(line);
    }
    eprint!("Enter unlock key: ");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    eprintln!();
    read?;
    Ok(line)
}

/// `weft unlock`: the key from stdin (asked for on a terminal), to the
/// local daemon.
pub async fn unlock(c: &Client) -> anyhow::Result<()> {
    let line = read_key()?;
    let key = line.trim();
    if key.is_empty() {
        anyhow::bail!("no unlock key given: pipe it in (`weft unlock < keyfile`) or type it");
    }
    c.daemon()
        .unlock(pb::UnlockRequest {
            unlock_key: key.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    println!("Manager unlocked.");
    Ok(())
}
