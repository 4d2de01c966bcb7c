//! weft's default seccomp profile, written here from the syscalls'
//! meaning (not a copy of Docker's JSON): it refuses, with `EPERM`, what a
//! container has no business doing with its capability set — the kernel's
//! keyring, loading modules or kernels, BPF and perf, mounting and
//! namespaces, the clock, swap, reboot, tracing other processes, raw I/O
//! ports — as Docker's default profile refuses them to a container without
//! the matching extra capability.
//!
//! ```text
//!  default action: ALLOW
//!  each group below: ERRNO(EPERM)   unless the container holds a capability
//!                                  that lifts it (--cap-add SYS_ADMIN, …)
//!  clone(flags & CLONE_NEW*)         ERRNO(EPERM) without CAP_SYS_ADMIN
//!  clone3                            ERRNO(ENOSYS) without CAP_SYS_ADMIN: its
//!                                  flags sit behind a pointer seccomp cannot
//!                                  read; libc then falls back to clone
//! ```
//!
//! A deny list, unlike Docker's allow list: a syscall newer than this list
//! is allowed. The list covers every syscall Docker's default refuses to a
//! container that has only the default capabilities, except the NUMA
//! policy calls (`mbind` & co., harmless in a cgroup) and `personality`.
//!
//! Architectures: on x86_64 the filter covers x86_64, i386 and x32 (so a
//! 32-bit `int 0x80` cannot go around it); on aarch64, aarch64 and arm.

use std::collections::HashSet;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `EPERM`, what a refused syscall returns.
const EPERM: u32 = 1;
/// `ENOSYS`: "no such call", so callers fall back (clone3 → clone).
const ENOSYS: u32 = 38;

/// Syscalls refused unless the container holds one of `lifted_by`
/// (an empty `lifted_by`: always refused).
struct Group {
    lifted_by: &'static [Capability],
    names: &'static [&'static str],
}

const GROUPS: &[Group] = &[
    // The kernel keyring is not namespaced: keys would leak across
    // containers. Obsolete or unnamespaced calls; io_uring's many CVEs.
    Group {
        lifted_by: &[],
        names: &[
            "add_key",
            "keyctl",
            "request_key",
            "userfaultfd",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "nfsservctl",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "vm86",
            "vm86old",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    },
    // Mounting, namespaces, swap, quotas, host names (UTS is private
    // anyway), the kernel's event and cookie interfaces.
    Group {
        lifted_by: &[Capability::SysAdmin],
        names: &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "unshare",
            "setns",
            "swapon",
            "swapoff",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "fanotify_init",
            "sethostname",
            "setdomainname",
        ],
    },
    Group {
        lifted_by: &[Capability::Bpf, Capability::SysAdmin],
        names: &["bpf"],
    },
    Group {
        lifted_by: &[Capability::Perfmon, Capability::SysAdmin],
        names: &["perf_event_open"],
    },
    Group {
        lifted_by: &[Capability::SysModule],
        names: &["init_module", "finit_module", "delete_module"],
    },
    Group {
        lifted_by: &[Capability::SysBoot],
        names: &["reboot", "kexec_load", "kexec_file_load"],
    },
    // The clock is the host's.
    Group {
        lifted_by: &[Capability::SysTime],
        names: &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "adjtimex",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    },
    Group {
        lifted_by: &[Capability::SysPtrace],
        names: &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"],
    },
    Group {
        lifted_by: &[Capability::SysRawio],
        names: &["iopl", "ioperm"],
    },
    Group {
        lifted_by: &[Capability::SysPacct],
        names: &["acct"],
    },
    // File handles bypass the mount namespace (the "shocker" escape).
    Group {
        lifted_by: &[Capability::DacReadSearch],
        names: &["open_by_handle_at", "name_to_handle_at"],
    },
    Group {
        lifted_by: &[Capability::Syslog],
        names: &["syslog"],
    },
    Group {
        lifted_by: &[Capability::SysTtyConfig],
        names: &["vhangup"],
    },
];

/// The namespace flags of `clone` (`CLONE_NEW*`).
const CLONE_NAMESPACE_FLAGS: [u64; 8] = [
    0x0000_0080, // CLONE_NEWTIME
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The architectures the filter covers on this machine.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

/// The names a container holding `caps` is refused, in the profile's
/// order (for tests and `weft inspect`-like views).
pub fn refused(caps: &HashSet<Capability>) -> Vec<&'static str> {
    GROUPS
        .iter()
        .filter(|g| !g.lifted_by.iter().any(|c| caps.contains(c)))
        .flat_map(|g| g.names.iter().copied())
        .collect()
}

/// The profile for a container whose effective capabilities are `caps`.
pub fn profile(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, OciSpecError> {
    let deny = |names: Vec<&str>, errno: u32| {
        LinuxSyscallBuilder::default()
            .names(names.into_iter().map(String::from).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno)
    };
    let mut syscalls: Vec<LinuxSyscall> = vec![deny(refused(caps), EPERM).build()?];
    if !caps.contains(&Capability::SysAdmin) {
        for flag in CLONE_NAMESPACE_FLAGS {
            // (flags & flag) == flag; one rule per flag, as a rule's
            // conditions are all ANDed and these must be ORed.
            let arg = LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?;
            syscalls.push(deny(vec!["clone"], EPERM).args(vec![arg]).build()?);
        }
        syscalls.push(deny(vec!["clone3"], ENOSYS).build()?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_refuse_the_dangerous_calls() {
        let caps: HashSet<Capability> = super::super::DEFAULT_CAPABILITIES.into_iter().collect();
        let r = refused(&caps);
        for name in [
            "keyctl",
            "mount",
            "unshare",
            "setns",
            "swapoff",
            "bpf",
            "init_module",
            "kexec_load",
            "reboot",
            "clock_settime",
            "ptrace",
            "iopl",
            "acct",
            "open_by_handle_at",
        ] {
            assert!(r.contains(&name), "{name} is allowed");
        }
        for allowed in ["chown", "mknod", "kill", "chroot", "setuid", "read"] {
            assert!(!r.contains(&allowed), "{allowed} is refused");
        }
        let p = profile(&caps).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let clone_rules = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names() == &["clone".to_string()])
            .count();
        assert_eq!(clone_rules, CLONE_NAMESPACE_FLAGS.len());
    }

    #[test]
    fn capabilities_lift_their_groups() {
        let mut caps: HashSet<Capability> =
            super::super::DEFAULT_CAPABILITIES.into_iter().collect();
        caps.insert(Capability::SysAdmin);
        caps.insert(Capability::SysPtrace);
        let r = refused(&caps);
        for lifted in ["mount", "unshare", "bpf", "perf_event_open", "ptrace"] {
            assert!(!r.contains(&lifted), "{lifted} still refused");
        }
        // Never lifted.
        assert!(r.contains(&"keyctl") && r.contains(&"reboot"));
        let p = profile(&caps).unwrap();
        assert!(
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .all(|s| !s.names().iter().any(|n| n.starts_with("clone")))
        );
    }
}
