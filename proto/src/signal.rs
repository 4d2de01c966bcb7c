//! Signal names as operators write them (`--stop-signal SIGINT`, `INT`,
//! `2`), checked the same way by the CLI, the manager and the node. The
//! wire and the store carry the number; this module turns it into a name
//! and back. Linux numbering (x86 and arm): the standard signals 1–31 and
//! the real-time ones, `SIGRTMIN+n` (34–64).

/// The standard signals by number (index = number - 1).
const NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];
/// The first real-time signal as glibc and musl present it.
const RTMIN: i32 = 34;
/// The last real-time signal.
const RTMAX: i32 = 64;

/// SIGTERM: what stops a task unless it says otherwise.
pub const SIGTERM: i32 = 15;

/// Why a signal name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid signal {0:?}: give a name such as SIGTERM, SIGINT or SIGQUIT (the SIG prefix is \
     optional), SIGRTMIN+N, or a number from 1 to 64"
)]
pub struct BadSignal(pub String);

/// The number of the signal `s` names: `SIGTERM`, `term`, `15`,
/// `SIGRTMIN+3`.
pub fn parse(s: &str) -> Result<i32, BadSignal> {
    let bad = || BadSignal(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if valid(n) { Ok(n) } else { Err(bad()) };
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(i) = NAMES.iter().position(|n| *n == name) {
        return Ok(i as i32 + 1);
    }
    let rt = |rest: &str, base: i32, sign: i32| -> Result<i32, BadSignal> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| bad())?
        };
        let n = base + sign * off;
        if (RTMIN..=RTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        return match rest.strip_prefix('+') {
            Some(off) => rt(off, RTMIN, 1),
            None if rest.is_empty() => Ok(RTMIN),
            None => Err(bad()),
        };
    }
    if let Some(rest) = name.strip_prefix("SIGRTMAX") {
        return match rest.strip_prefix('-') {
            Some(off) => rt(off, RTMAX, -1),
            None if rest.is_empty() => Ok(RTMAX),
            None => Err(bad()),
        };
    }
    Err(bad())
}

/// Whether `n` is a signal a task may be sent (1–31 and 34–64).
pub fn valid(n: i32) -> bool {
    (1..=31).contains(&n) || (RTMIN..=RTMAX).contains(&n)
}

/// The name of signal `n` (`SIGTERM`, `SIGRTMIN+3`), or its number.
pub fn name(n: i32) -> String {
    match n {
        1..=31 => NAMES[n as usize - 1].to_string(),
        RTMIN => "SIGRTMIN".to_string(),
        35..=RTMAX => format!("SIGRTMIN+{}", n - RTMIN),
        _ => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_their_spellings() {
        assert_eq!(parse("SIGTERM"), Ok(15));
        assert_eq!(parse("term"), Ok(15));
        assert_eq!(parse(" SIGint "), Ok(2));
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("SIGRTMIN"), Ok(34));
        assert_eq!(parse("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse("RTMAX-1"), Ok(63));
        for n in (1..=31).chain(34..=64) {
            assert_eq!(parse(&name(n)), Ok(n), "{}", name(n));
        }
        assert_eq!(name(15), "SIGTERM");
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "0",
            "-1",
            "32",
            "65",
            "SIGNOPE",
            "SIG",
            "SIGRTMIN+31",
            "SIGRTMIN-1",
            "SIGRTMAX+1",
            "SIGRTMIN+x",
            "SIGTERM2",
            "99999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
