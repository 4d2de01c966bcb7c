//! `weft unlock` and `weft unlock-key`: autolock's commands (the design is
//! in SECURITY.md, "Secrets at rest").

use std::io::{BufRead, IsTerminal, Read, Write};

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

/// One line of stdin, at most `max` bytes (more is refused); on a terminal
/// with a `prompt`, asked for with echo off.
pub fn read_secret(prompt: Option<&str>, max: usize) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut line = zeroize::Zeroizing::new(String::new());
    let bounded = |line: &mut String| -> anyhow::Result<()> {
        // Two bytes of room for a line end.
        stdin.lock().take(max as u64 + 3).read_line(line)?;
        if line.trim_end_matches(['\n', '\r']).len() > max {
            anyhow::bail!("the input is over {max} bytes");
        }
        Ok(())
    };
    let Some(prompt) = prompt.filter(|_| stdin.is_terminal()) else {
        bounded(&mut line)?;
        return Ok(line);
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let read = bounded(&mut line);
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
    // An unlock key is 53 characters; 4 KiB is plenty.
    let line = read_secret(Some("Enter unlock key: "), 4096)?;
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
