//! `--limit-*` and `--reserve-*` of `weft run` and `weft service create`,
//! parsed as Docker parses them: CPUs as a decimal number (`0.5`, `2`;
//! at most nine decimals), memory as bytes with an optional binary unit
//! (`64m`, `1g`, `512k`, `1.5g`, `64MiB`, a plain byte count). The
//! managers check the bounds again (`manager/src/validate.rs`).

use clap::Args;
use weft_proto::v1 as pb;

/// Resource limits (containers only: the kernel enforces them on the
/// container's cgroup) and reservations (the scheduler sets them aside on
/// the task's node and places a task only where they fit).
#[derive(Debug, Args, Default)]
pub struct ResourceArgs {
    /// Most CPUs the container may use, e.g. 0.5 (a CFS quota per 100 ms).
    #[arg(long, value_name = "CPUS", value_parser = parse_nano_cpus)]
    pub limit_cpu: Option<u64>,
    /// Most memory the container may use, e.g. 64m, 1g or bytes; swap
    /// included (none), so a container that needs more is OOM-killed.
    #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
    pub limit_memory: Option<u64>,
    /// Most processes and threads the container may have.
    #[arg(long, value_name = "N", value_parser = parse_pids)]
    pub limit_pids: Option<u64>,
    /// CPUs to reserve on the task's node, e.g. 0.25.
    #[arg(long, value_name = "CPUS", value_parser = parse_nano_cpus)]
    pub reserve_cpu: Option<u64>,
    /// Memory to reserve on the task's node, e.g. 128m; a replica that
    /// fits on no node stays pending (the reason shows in `service ps`),
    /// and `weft run` refuses a task its node has no room for.
    #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
    pub reserve_memory: Option<u64>,
}

impl ResourceArgs {
    /// The wire form; absent when nothing was given.
    pub fn to_wire(&self) -> Option<pb::Resources> {
        let r = pb::Resources {
            limit_nano_cpus: self.limit_cpu.unwrap_or(0),
            limit_memory_bytes: self.limit_memory.unwrap_or(0),
            limit_pids: self.limit_pids.unwrap_or(0),
            reserve_nano_cpus: self.reserve_cpu.unwrap_or(0),
            reserve_memory_bytes: self.reserve_memory.unwrap_or(0),
        };
        (r != pb::Resources::default()).then_some(r)
    }

    /// Whether a limit was given (only a container can be limited).
    pub fn has_limits(&self) -> bool {
        self.limit_cpu.is_some() || self.limit_memory.is_some() || self.limit_pids.is_some()
    }
}

/// `service update`'s resource flags: each given replaces the service's;
/// `0` removes it.
#[derive(Debug, Args, Default)]
pub struct ResourceUpdateArgs {
    /// New CPU limit, e.g. 0.5 (0: none).
    #[arg(long, value_name = "CPUS", value_parser = zero_or(parse_nano_cpus))]
    pub limit_cpu: Option<u64>,
    /// New memory limit, e.g. 64m (0: none).
    #[arg(long, value_name = "BYTES", value_parser = zero_or(parse_memory))]
    pub limit_memory: Option<u64>,
    /// New process limit (0: none).
    #[arg(long, value_name = "N", value_parser = zero_or(parse_pids))]
    pub limit_pids: Option<u64>,
    /// New CPU reservation (0: none).
    #[arg(long, value_name = "CPUS", value_parser = zero_or(parse_nano_cpus))]
    pub reserve_cpu: Option<u64>,
    /// New memory reservation (0: none).
    #[arg(long, value_name = "BYTES", value_parser = zero_or(parse_memory))]
    pub reserve_memory: Option<u64>,
}

impl ResourceUpdateArgs {
    /// The wire form; absent when nothing was given.
    pub fn to_wire(&self) -> Option<pb::ResourcesUpdate> {
        let u = pb::ResourcesUpdate {
            limit_nano_cpus: self.limit_cpu,
            limit_memory_bytes: self.limit_memory,
            limit_pids: self.limit_pids,
            reserve_nano_cpus: self.reserve_cpu,
            reserve_memory_bytes: self.reserve_memory,
        };
        (u != pb::ResourcesUpdate::default()).then_some(u)
    }
}

/// A parser that also takes `0` (none), for `service update`.
fn zero_or(
    parse: fn(&str) -> Result<u64, String>,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |s: &str| if s == "0" { Ok(0) } else { parse(s) }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `service create`'s restart policy; absent when no flag was given.
pub fn restart_policy(a: &crate::cli::RestartArgs) -> Option<pb::RestartPolicy> {
    let u = restart_update(a)?;
    Some(pb::RestartPolicy {
        has_delay: u.delay_ms.is_some(),
        delay_ms: u.delay_ms.unwrap_or(0),
        max_attempts: u.max_attempts.unwrap_or(0),
        window_ms: u.window_ms.unwrap_or(0),
    })
}

/// `service update`'s restart-policy changes; absent when none.
pub fn restart_update(a: &crate::cli::RestartArgs) -> Option<pb::RestartPolicyUpdate> {
    let u = pb::RestartPolicyUpdate {
        delay_ms: a.restart_delay.map(millis),
        max_attempts: a.restart_max_attempts,
        window_ms: a.restart_window.map(millis),
    };
    (u != pb::RestartPolicyUpdate::default()).then_some(u)
}

/// `0.5` → 500000000 billionths of a CPU (Docker's `--cpus`).
pub fn parse_nano_cpus(s: &str) -> Result<u64, String> {
    let err = || format!("invalid CPUs {s:?}: give a number such as 0.5, 1 or 2.25");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    if frac.len() > 9 {
        return Err(format!(
            "invalid CPUs {s:?}: too precise (at most 9 decimals)"
        ));
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let part: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| err())?
    };
    let nano = whole
        .checked_mul(1_000_000_000)
        .and_then(|w| w.checked_add(part))
        .ok_or_else(err)?;
    if nano == 0 {
        return Err(format!("invalid CPUs {s:?}: give more than 0"));
    }
    Ok(nano)
}

/// `64m` → 67108864 (Docker's `RAMInBytes`: units k, m, g, t, p of 1024,
/// optionally followed by `b` or `ib`, any case; a decimal number).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let err =
        || format!("invalid size {s:?}: give bytes or a number with a unit, e.g. 64m, 1g, 512k");
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let unit = unit.trim_start().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(err()),
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(err());
    }
    let bytes = if let Some((int, frac)) = num.split_once('.') {
        let v: f64 = format!("{int}.{frac}").parse().map_err(|_| err())?;
        let b = v * (1u64 << shift) as f64;
        if !(0.0..1.8e19).contains(&b) {
            return Err(err());
        }
        b as u64
    } else {
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1u64 << shift))
            .ok_or_else(err)?
    };
    if bytes == 0 {
        return Err(format!("invalid size {s:?}: give more than 0"));
    }
    Ok(bytes)
}

/// A positive count of processes.
pub fn parse_pids(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "invalid process count {s:?}: give a positive whole number"
        )),
    }
}

/// A node's `Description.Resources` as `docker node inspect` prints it.
pub fn node_json(r: Option<&pb::NodeResources>) -> serde_json::Value {
    let r = r.copied().unwrap_or_default();
    serde_json::json!({
        "Resources": {"NanoCPUs": r.nano_cpus, "MemoryBytes": r.memory_bytes},
    })
}

/// A service's `TaskTemplate.Resources` as `docker service inspect`
/// prints it (absent fields: none).
pub fn task_json(r: Option<&pb::Resources>) -> serde_json::Value {
    let r = r.copied().unwrap_or_default();
    let some = |v: u64| (v != 0).then_some(v);
    serde_json::json!({
        "Limits": {
            "NanoCPUs": some(r.limit_nano_cpus),
            "MemoryBytes": some(r.limit_memory_bytes),
            "Pids": some(r.limit_pids),
        },
        "Reservations": {
            "NanoCPUs": some(r.reserve_nano_cpus),
            "MemoryBytes": some(r.reserve_memory_bytes),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_as_docker_parses_them() {
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_nano_cpus("1.25"), Ok(1_250_000_000));
        assert_eq!(parse_nano_cpus(".5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("0.000000001"), Ok(1));
        for bad in [
            "",
            ".",
            "-1",
            "0",
            "0.0",
            "abc",
            "1.2.3",
            "1e3",
            "0.0000000001",
            "99999999999999999999",
        ] {
            assert!(parse_nano_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_as_docker_parses_it() {
        for (s, want) in [
            ("1024", 1024),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("64mb", 64 << 20),
            ("64MiB", 64 << 20),
            ("1g", 1 << 30),
            ("512k", 512 << 10),
            ("1.5g", 3 << 29),
            ("2t", 2 << 40),
            ("100b", 100),
        ] {
            assert_eq!(parse_memory(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "m",
            "-1m",
            "0",
            "12q",
            "1.g",
            ".5g",
            "1..2m",
            "64 mm",
            "99999999999p",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("64"), Ok(64));
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_pids(bad).is_err(), "{bad}");
        }
    }
}
