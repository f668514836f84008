//! The system calls a sample may not make, as seccomp filters (built with
//! `seccompiler`, from the Firecracker project): changing mounts (old and new
//! API), new namespaces, keyrings, tracing other processes, BPF and perf
//! events. They fail with EPERM, so that a sample that tries sees an error.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `open_tree_attr` (Linux 6.15, the same number on every architecture):
/// a mount clone with other attributes in one call; the libc crate lacks it.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Denied outright.
const DENIED: [i64; 21] = [
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
];

/// `clone` flags that make namespaces (CLONE_NEWTIME shares its bit with the
/// exit signal in `clone`, and only `clone3` and `unshare` take it).
const NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// x86_64's x32 ABI reaches the same calls with this bit set (and `ptrace`
/// and `process_vm_*` under numbers of their own); where x32 is off these
/// numbers fail anyway.
#[cfg(target_arch = "x86_64")]
fn aliases(nr: i64) -> Vec<i64> {
    const X32: i64 = 0x4000_0000;
    let own = match nr {
        libc::SYS_ptrace => Some(521),
        libc::SYS_process_vm_readv => Some(539),
        libc::SYS_process_vm_writev => Some(540),
        _ => None,
    };
    [Some(nr), Some(nr | X32), own.map(|n| n | X32)]
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(not(target_arch = "x86_64"))]
fn aliases(nr: i64) -> Vec<i64> {
    vec![nr]
}

/// The filters, to install in the sample's process before it runs Python:
/// the denials, and `clone3` answered with ENOSYS (its flags are out of a
/// filter's reach; the C library then falls back to `clone`, whose flags the
/// first filter checks).
pub fn filters() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for this architecture: {e}"))?;
    let bad = |e: seccompiler::BackendError| format!("building the seccomp filter: {e}");
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in DENIED.iter().flat_map(|&nr| aliases(nr)) {
        denied.insert(nr, Vec::new());
    }
    let mut namespaces = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        let condition = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(bad)?;
        namespaces.push(SeccompRule::new(vec![condition]).map_err(bad)?);
    }
    for nr in aliases(libc::SYS_clone) {
        denied.insert(nr, namespaces.clone());
    }
    let deny = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(bad)?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> = aliases(libc::SYS_clone3)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let no_clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(bad)?;
    [deny, no_clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|e| format!("compiling the seccomp filter: {e}")))
        .collect()
}

/// Installs `filters` (after setting no_new_privs) in this process: between
/// fork and exec, so only system calls, no allocation.
pub fn install(filters: &[BpfProgram]) -> std::io::Result<()> {
    for filter in filters {
        seccompiler::apply_filter(filter).map_err(|e| match e {
            seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
            _ => std::io::ErrorKind::InvalidInput.into(),
        })?;
    }
    Ok(())
}
