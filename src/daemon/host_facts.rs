//! What `weft info` says about the host: kernel, operating system,
//! architecture, CPUs and memory (Docker's `KernelVersion`,
//! `OperatingSystem`, `Architecture`, `NCPU`, `MemTotal`).

use weft_proto::v1 as pb;

/// Fills the host fields of `resp`.
pub fn fill(resp: &mut pb::InfoResponse) {
    let uts = nix::sys::utsname::uname().ok();
    resp.kernel_version = uts
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    resp.architecture = uts
        .as_ref()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    resp.operating_system = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| pretty_name(&t))
        .unwrap_or_else(|| "Linux".into());
    let r = weft_worker::capacity::node();
    resp.ncpu = u32::try_from(r.nano_cpus / 1_000_000_000).unwrap_or(u32::MAX);
    resp.mem_total_bytes = r.memory_bytes;
}

/// `PRETTY_NAME` of an os-release text, unquoted.
fn pretty_name(os_release: &str) -> Option<String> {
    let v = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))?
        .trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    (!v.is_empty()).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pretty_name_of_os_release() {
        let t = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(t).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(pretty_name("ID=x\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"\"\n"), None);
    }
}
