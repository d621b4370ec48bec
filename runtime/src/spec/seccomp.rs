//! seccomp profiles for `seccompProfile`: `Unconfined` (kubelet's default)
//! applies none; `RuntimeDefault` is containerd's default profile — an
//! allow-list with EPERM for the rest, more syscalls for more capabilities.
//! `Localhost` reads an OCI seccomp profile (JSON) from the node's profile
//! directory (kubelet's `<root-dir>/seccomp`), by a path relative to it.

use k8s_openapi::api::core::v1::SeccompProfile;
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

use std::path::{Component, Path};

use super::SpecError;

/// The profile for `profile` (`None`: no filter).
pub fn profile(
    profile: Option<&SeccompProfile>,
    field: &str,
    caps: &Capabilities,
    localhost_root: Option<&Path>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let Some(p) = profile else {
        return Ok(None);
    };
    match p.type_.as_str() {
        "Unconfined" => Ok(None),
        "RuntimeDefault" => runtime_default(caps).map(Some),
        "Localhost" => localhost(p.localhost_profile.as_deref(), field, localhost_root).map(Some),
        other => Err(SpecError::new(
            format!("{field}.type"),
            format!("{other:?} is not RuntimeDefault, Unconfined or Localhost"),
        )),
    }
}

/// A `Localhost` profile: `<root>/<localhostProfile>`, a relative path
/// that stays inside `root`, holding an OCI `LinuxSeccomp` document.
fn localhost(
    name: Option<&str>,
    field: &str,
    root: Option<&Path>,
) -> Result<LinuxSeccomp, SpecError> {
    let f = format!("{field}.localhostProfile");
    let Some(root) = root else {
        return Err(SpecError::new(
            format!("{field}.type"),
            "Localhost seccomp profiles are not supported by this node; use RuntimeDefault or Unconfined",
        ));
    };
    let name = name.unwrap_or_default();
    let rel = Path::new(name);
    if name.is_empty()
        || rel.is_absolute()
        || rel.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(SpecError::new(
            f,
            format!(
                "{name:?} must be a path relative to the node's seccomp directory, without '..'"
            ),
        ));
    }
    let path = root.join(rel);
    let text = std::fs::read(&path)
        .map_err(|e| SpecError::new(&f, format!("read profile {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| {
        SpecError::new(
            f,
            format!(
                "profile {} is not an OCI seccomp profile: {e}",
                path.display()
            ),
        )
    })
}

/// Allowed for everyone. Names this kernel or libseccomp does not know
/// are skipped by runc, so the list can run ahead of the host.
const BASE: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Safe since kernel 4.8 (ptrace can no longer bypass seccomp).
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

#[cfg(target_arch = "x86_64")]
const ARCH_SYSCALLS: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCH_SYSCALLS: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_SYSCALLS: &[&str] = &[];

#[cfg(target_arch = "x86_64")]
fn arches() -> Vec<Arch> {
    vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
}
#[cfg(target_arch = "aarch64")]
fn arches() -> Vec<Arch> {
    vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn arches() -> Vec<Arch> {
    Vec::new()
}

/// Syscalls a capability unlocks.
fn by_capability(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::DacReadSearch => &["open_by_handle_at"],
        Capability::SysAdmin => &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        Capability::SysBoot => &["reboot"],
        Capability::SysChroot => &["chroot"],
        Capability::SysModule => &["delete_module", "init_module", "finit_module"],
        Capability::SysPacct => &["acct"],
        Capability::SysPtrace => &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        Capability::SysRawio => &["iopl", "ioperm"],
        Capability::SysTime => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        Capability::SysTtyConfig => &["vhangup"],
        Capability::SysNice => &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        Capability::Syslog => &["syslog"],
        Capability::Bpf => &["bpf"],
        Capability::Perfmon => &["perf_event_open"],
        _ => &[],
    }
}

const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;
/// CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP.
const CLONE_NEW_NAMESPACES: u64 = 0x7E02_0000;

fn rule(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s.set_args((!args.is_empty()).then_some(args));
    s
}

fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> Result<LinuxSeccompArg, SpecError> {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(0u64)
        .op(op)
        .build()
        .map_err(|e| SpecError::new("", format!("build the seccomp profile: {e}")))
}

/// containerd's DefaultProfile for a process with bounding set `caps`.
pub fn runtime_default(caps: &Capabilities) -> Result<LinuxSeccomp, SpecError> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{
        ScmpCmpEq as Eq, ScmpCmpGt as Gt, ScmpCmpLt as Lt, ScmpCmpMaskedEq as MaskedEq,
    };
    let mut rules = vec![
        rule(BASE, Allow, vec![]),
        // socket(2) for every family but AF_ALG and AF_VSOCK.
        rule(&["socket"], Allow, vec![arg(0, AF_ALG, Lt)?]),
        rule(&["socket"], Allow, vec![arg(0, AF_ALG + 1, Eq)?]),
        rule(&["socket"], Allow, vec![arg(0, AF_VSOCK, Gt)?]),
    ];
    // personality(2) only for the harmless personas.
    for persona in [0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        rules.push(rule(&["personality"], Allow, vec![arg(0, persona, Eq)?]));
    }
    if !ARCH_SYSCALLS.is_empty() {
        rules.push(rule(ARCH_SYSCALLS, Allow, vec![]));
    }
    // In a fixed order, so the same capabilities give the same profile.
    let mut sorted: Vec<&Capability> = caps.iter().collect();
    sorted.sort_by_key(|c| c.to_string());
    for cap in sorted {
        let names = by_capability(*cap);
        if !names.is_empty() {
            rules.push(rule(names, Allow, vec![]));
        }
    }
    if !caps.contains(&Capability::SysAdmin) {
        // clone(2) only without new namespaces; clone3 answers ENOSYS so
        // that libcs fall back to clone (its flags are out of reach).
        // (masked-equal: flags & CLONE_NEW_NAMESPACES == 0)
        rules.push(rule(
            &["clone"],
            Allow,
            vec![arg(0, CLONE_NEW_NAMESPACES, MaskedEq)?],
        ));
        let mut clone3 = rule(&["clone3"], Errno, vec![]);
        clone3.set_errno_ret(Some(ENOSYS));
        rules.push(clone3);
    }
    let mut s = LinuxSeccomp::default();
    s.set_default_action(Errno);
    s.set_architectures(Some(arches()));
    s.set_syscalls(Some(rules));
    Ok(s)
}
