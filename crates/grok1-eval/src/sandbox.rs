//! Running untrusted Python (HumanEval completions) in a sandbox: a separate
//! process per sample with a wall-clock and CPU time limit, a memory limit on
//! the sample as a whole, a process limit, no network, no system calls that
//! change mounts or make namespaces, and a filesystem of its own in which only
//! a private, size-limited working directory and /tmp are writable.
//!
//! How: the eval process makes the sample's cgroups ([`cgroup`]) and starts a
//! helper (`grok1 sandbox-exec`, which calls [`helper_main`]) with only its
//! standard streams, writing the program to its stdin. The helper enters new
//! mount, network, PID, IPC and UTS namespaces (and a user namespace when not
//! root), builds a root of its own on a tmpfs with read-only bind mounts of the
//! system and Python directories, `pivot_root`s into it, and runs Python as
//! PID 1 of the new PID namespace (as `nobody` when started by root; in a
//! further user namespace when not, which owns no mount, so the mounts cannot
//! be changed) after it has joined the cgroups, set rlimits and installed a
//! seccomp filter ([`seccomp`]). Killing that PID 1 (on timeout, or when the
//! helper dies, through `PR_SET_PDEATHSIG`) ends every process the sample
//! started. A new network namespace holds only a loopback device that is down:
//! no connection leaves. A program passes only if it reaches its end: a line
//! with a nonce drawn for the run, printed after it, must be on its stdout.
//!
//! Why by hand and not a container tool: the product is one binary, and these
//! are a dozen system calls (the `nix` crate's safe wrappers).

mod cgroup;
#[cfg(target_os = "linux")]
mod seccomp;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EvalError, Result};

/// Exit status of the helper when the sample ran out of time.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status of the helper when the sandbox could not be set up.
pub const EXIT_SETUP: i32 = 125;

/// Memory each process gets when no memory cgroup bounds the sample, so that
/// its share of the bound is enough to start Python and do some work.
const FALLBACK_SHARE: u64 = 128 << 20;

/// Limits of one sample.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock limit (the CPU-time limit is one second more).
    pub time: Duration,
    /// Memory of the sample, all its processes together, bytes.
    pub memory: u64,
    /// Processes the sample may have at once.
    pub processes: u64,
    /// Largest file the sample may write, bytes (also the size of its tmpfs).
    pub file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(10),
            memory: 1 << 30,
            processes: 32,
            file_size: 16 << 20,
        }
    }
}

/// How a sample ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Exit status 0.
    Passed,
    /// Another exit status or a signal; the end of stderr says why.
    Failed {
        status: i32,
        stderr: String,
    },
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }

    /// One line for result files.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Failed { status, stderr } => {
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                match last {
                    Some(l) => format!("failed (exit {status}): {}", l.trim()),
                    None => format!("failed (exit {status})"),
                }
            }
        }
    }
}

/// Runs Python programs in the sandbox.
#[derive(Clone, Debug)]
pub struct Sandbox {
    helper: PathBuf,
    python: PathBuf,
    /// Directories Python needs besides the system ones (its prefixes).
    binds: Vec<PathBuf>,
    pub limits: Limits,
    /// Where each sample's cgroups go.
    cgroups: cgroup::Plan,
}

/// Per-process limits that go with the whole-sample ones.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ProcessLimits {
    /// Address space of each process, bytes.
    address_space: u64,
    /// Processes the sample may have at once.
    processes: u64,
    /// Whether RLIMIT_NPROC holds that number (no pids cgroup does).
    nproc: bool,
}

impl Sandbox {
    /// A sandbox whose helper is the `grok1` binary `helper` and whose Python
    /// is `python` (looked up on PATH when it has no slash).
    pub fn new(helper: PathBuf, python: &str, limits: Limits) -> Result<Sandbox> {
        if !cfg!(target_os = "linux") {
            return Err(EvalError::Sandbox(
                "running HumanEval samples needs Linux namespaces; this platform has none".into(),
            ));
        }
        let python = which(python).ok_or_else(|| {
            EvalError::Sandbox(format!(
                "`{python}` not found: HumanEval runs its tests with Python 3 (--python PATH)"
            ))
        })?;
        let out = Command::new(&python)
            .args([
                "-I",
                "-c",
                "import sys; print(sys.prefix); print(sys.base_prefix); print(sys.version_info[0]); print(sys.executable)",
            ])
            .output()
            .map_err(|e| EvalError::Sandbox(format!("running {}: {e}", python.display())))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        if !out.status.success() || lines.len() != 4 || lines[2] != "3" {
            return Err(EvalError::Sandbox(format!(
                "{} is not a working Python 3",
                python.display()
            )));
        }
        // The interpreter itself, not a launcher script (pyenv's shims are
        // shell scripts that cannot run inside the sandbox).
        let python = PathBuf::from(lines[3]);
        let mut binds: Vec<PathBuf> = Vec::new();
        let real = std::fs::canonicalize(&python).unwrap_or(python.clone());
        for p in [
            lines[0].into(),
            lines[1].into(),
            python.parent().map(Path::to_path_buf).unwrap_or_default(),
            real.parent().map(Path::to_path_buf).unwrap_or_default(),
        ] {
            let p: PathBuf = std::fs::canonicalize(&p).unwrap_or(p);
            if p.is_absolute() && p != Path::new("/") && !binds.contains(&p) {
                binds.push(p);
            }
        }
        Ok(Sandbox {
            helper,
            python,
            binds,
            limits,
            cgroups: cgroup::Plan::detect(),
        })
    }

    /// What bounds a sample's memory and processes, in a sentence.
    pub fn containment(&self) -> String {
        let own = self.process_limits();
        let memory = match &self.cgroups.memory {
            Some(place) => format!(
                "{} MiB for the whole sample (a cgroup v{} memory limit)",
                self.limits.memory >> 20,
                if place.v2 { 2 } else { 1 }
            ),
            None => format!(
                "{} MiB of address space for each process (no memory cgroup: RLIMIT_AS)",
                own.address_space >> 20
            ),
        };
        let counted_by = if own.nproc {
            "RLIMIT_NPROC"
        } else {
            "a pids cgroup"
        };
        format!(
            "{memory}, at most {} processes ({counted_by})",
            own.processes
        )
    }

    /// With a memory cgroup each process may use all of the bound (so that a
    /// single huge allocation is a MemoryError, not a kill); without one, the
    /// bound is split among a number of processes small enough that their
    /// product is the bound, a number held by the pids cgroup or RLIMIT_NPROC.
    fn process_limits(&self) -> ProcessLimits {
        let Limits {
            memory, processes, ..
        } = self.limits;
        let (address_space, processes) = if self.cgroups.memory.is_some() {
            (memory, processes)
        } else {
            let cap = (memory / FALLBACK_SHARE).clamp(1, processes.max(1));
            (memory / cap, cap)
        };
        ProcessLimits {
            address_space,
            processes,
            nproc: self.cgroups.pids.is_none(),
        }
    }

    /// Runs `program` with `python -I -B` in a fresh sandbox. It passes if it
    /// exits 0 having reached its end: a line with a nonce drawn now, printed
    /// after it, must be on its stdout (`sys.exit(0)` or `os._exit(0)` before
    /// then is a failure). An `Err` is a sandbox that could not be set up (not
    /// the sample's fault); whatever the program does is an [`Outcome`].
    pub fn run_python(&self, program: &str) -> Result<Outcome> {
        let marker = format!(
            "grok1-sandbox: the program reached its end {:032x}",
            rand::random::<u128>()
        );
        let program = format!("{program}\nprint(\"{marker}\", flush=True)\n");
        let Some(run) = self.execute(&program)? else {
            return Ok(Outcome::TimedOut);
        };
        match run.status {
            0 if run.stdout.lines().any(|l| l == marker) => Ok(Outcome::Passed),
            0 => Ok(Outcome::Failed {
                status: 0,
                stderr: format!(
                    "{}\nthe program exited before its end (sys.exit, os._exit?)",
                    run.stderr
                ),
            }),
            EXIT_TIMEOUT => Ok(Outcome::TimedOut),
            EXIT_SETUP => Err(EvalError::Sandbox(format!(
                "the sandbox could not be set up: {}",
                run.stderr.trim()
            ))),
            status => Ok(Outcome::Failed {
                status,
                stderr: run.stderr,
            }),
        }
    }

    /// Runs `program` through the helper; `None` if the helper itself had to
    /// be killed.
    fn execute(&self, program: &str) -> Result<Option<Finished>> {
        let root = tempfile::Builder::new()
            .prefix("grok1-sandbox-")
            .tempdir()
            .map_err(|e| EvalError::io("making the sandbox's mount point", e))?;
        let own = self.process_limits();
        let cgroups =
            cgroup::SampleCgroups::create(&self.cgroups, self.limits.memory, own.processes)
                .map_err(|e| EvalError::Sandbox(format!("limiting the sample: {e}")))?;
        let mut cmd = Command::new(&self.helper);
        cmd.arg("sandbox-exec")
            .arg("--root")
            .arg(root.path())
            .arg("--python")
            .arg(&self.python)
            .arg("--seconds")
            .arg(format!("{}", self.limits.time.as_secs_f64()))
            .arg("--memory")
            .arg(own.address_space.to_string())
            .arg("--file-size")
            .arg(self.limits.file_size.to_string());
        if own.nproc {
            cmd.arg("--processes").arg(own.processes.to_string());
        }
        for dir in cgroups.dirs() {
            cmd.arg("--cgroup").arg(dir);
        }
        for b in &self.binds {
            cmd.arg("--bind").arg(b);
        }
        // The helper needs none of this process's environment (API keys).
        cmd.env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: one system call (prctl) between fork and exec. The
            // helper, and with it the sample, dies with the thread that waits
            // for it (an eval process killed mid-run leaves no sample behind).
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| EvalError::Sandbox(format!("starting {}: {e}", self.helper.display())))?;
        let stdout = child.stdout.take().map(|s| drain_tail(s, 1 << 12));
        let stderr = child.stderr.take().map(|s| drain_tail(s, 1 << 12));
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that failed at once closes its stdin: its stderr says why.
            let _ = stdin.write_all(program.as_bytes());
        }
        // The helper enforces the limit itself; this is the backstop should it hang.
        let deadline = Instant::now() + self.limits.time + Duration::from_secs(20);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(EvalError::Sandbox(format!("waiting for the sandbox: {e}"))),
            }
        };
        let text = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let (stdout, stderr) = (text(stdout), text(stderr));
        Ok(status.map(|s| Finished {
            status: exit_status(&s),
            stdout,
            stderr,
        }))
    }
}

/// How the helper ended: its status and the ends of its output.
struct Finished {
    status: i32,
    stdout: String,
    stderr: String,
}

fn exit_status(status: &std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    status.code().unwrap_or(-1)
}

/// Reads a stream to its end on a thread, keeping its last `keep` bytes (a
/// sample that prints without end must not fill memory or block on a pipe).
fn drain_tail(mut r: impl Read + Send + 'static, keep: usize) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * keep {
                tail.drain(..tail.len() - keep);
            }
        }
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
        tail
    })
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The helper's settings (`grok1 sandbox-exec`).
#[derive(Clone, Debug)]
pub struct HelperArgs {
    /// An empty directory to build the sandbox's root on.
    pub root: PathBuf,
    pub python: PathBuf,
    pub seconds: f64,
    /// Address space of each process, bytes.
    pub memory: u64,
    /// RLIMIT_NPROC (beside what the user already runs when not root).
    pub processes: Option<u64>,
    pub file_size: u64,
    /// Directories to make visible read-only besides the system ones.
    pub binds: Vec<PathBuf>,
    /// Cgroups the sample joins before it runs.
    pub cgroups: Vec<PathBuf>,
}

/// The helper: reads the program from stdin, builds the sandbox, runs the
/// program and returns its exit status ([`EXIT_TIMEOUT`], [`EXIT_SETUP`]).
pub fn helper_main(args: &HelperArgs) -> i32 {
    let mut program = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(args.file_size)
        .read_to_end(&mut program)
    {
        eprintln!("grok1 sandbox: reading the program: {e}");
        return EXIT_SETUP;
    }
    #[cfg(target_os = "linux")]
    {
        match linux::enter(args, &program) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("grok1 sandbox: {e}");
                EXIT_SETUP
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = program;
        eprintln!("grok1 sandbox: needs Linux namespaces");
        EXIT_SETUP
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::Signal;
    use nix::sys::statvfs::{statvfs, FsFlags};
    use nix::unistd::{getegid, geteuid, pivot_root, setsid};

    use super::{seccomp, HelperArgs, EXIT_TIMEOUT};

    /// `nobody`: the user samples run as when the helper is root.
    const NOBODY: u32 = 65534;

    /// System directories every Python needs, made visible read-only.
    const SYSTEM: [&str; 9] = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
    ];

    /// Device nodes Python may open.
    const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

    fn err(what: &str, e: impl std::fmt::Display) -> String {
        format!("{what}: {e}")
    }

    /// Counts the processes of `uid`, so that a process limit set for a user
    /// who is not root leaves room for what that user already runs.
    fn processes_of(uid: u32) -> u64 {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        dir.flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|e| {
                std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .is_some_and(|u| u == uid.to_string())
                })
            })
            .count() as u64
    }

    /// Bind-mounts `src` on `dst` read-only, keeping the flags the kernel
    /// locks on mounts seen from a user namespace.
    fn bind_read_only(src: &Path, dst: &Path) -> Result<(), String> {
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| err(&format!("bind-mounting {}", src.display()), e))?;
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        if let Ok(st) = statvfs(src) {
            let f = st.flags();
            for (fs, ms) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(fs) {
                    flags |= ms;
                }
            }
        }
        mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
            .map_err(|e| err(&format!("making {} read-only", dst.display()), e))
    }

    fn inside(root: &Path, path: &Path) -> PathBuf {
        root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn tmpfs(at: &Path, size: u64) -> Result<(), String> {
        std::fs::create_dir_all(at).map_err(|e| err(&format!("creating {}", at.display()), e))?;
        let options = format!("size={size},mode=1777");
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| err(&format!("mounting a tmpfs on {}", at.display()), e))
    }

    /// Marks every descriptor above stderr close-on-exec, so that what the
    /// eval process inherited (`7>>file`) never reaches the sample: with
    /// close_range (Linux 5.11), else one by one from /proc/self/fd.
    fn close_inherited_descriptors() -> Result<(), String> {
        // SAFETY: close_range only changes the flags of this process's descriptors.
        let marked = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if marked == 0 {
            return Ok(());
        }
        mark_listed_descriptors()
    }

    fn mark_listed_descriptors() -> Result<(), String> {
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map_err(|e| err("listing /proc/self/fd", e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: F_SETFD on a descriptor number changes only its flag; one
            // that closed meanwhile (the directory's own) gives EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    }

    /// Opens each cgroup's `cgroup.procs` before the sandbox hides them; the
    /// sample joins by writing "0" (itself) there.
    fn open_cgroups(dirs: &[PathBuf]) -> Result<Vec<File>, String> {
        dirs.iter()
            .map(|d| {
                let procs = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|e| err(&format!("opening {}", procs.display()), e))
            })
            .collect()
    }

    /// Builds the sandbox and runs the program; returns its exit status.
    pub fn enter(args: &HelperArgs, program: &[u8]) -> Result<i32, String> {
        close_inherited_descriptors()?;
        let cgroups = open_cgroups(&args.cgroups)?;
        let filters = seccomp::filters()?;
        let uid = geteuid().as_raw();
        let gid = getegid().as_raw();
        let root_user = uid == 0;
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        let already = if root_user || args.processes.is_none() {
            0
        } else {
            processes_of(uid)
        };
        if !root_user {
            flags |= CloneFlags::CLONE_NEWUSER;
        }
        unshare(flags).map_err(|e| {
            err(
                "entering new namespaces (run as root, or enable unprivileged user namespaces: \
                 sysctl kernel.unprivileged_userns_clone=1)",
                e,
            )
        })?;
        if !root_user {
            std::fs::write("/proc/self/setgroups", "deny").map_err(|e| err("setgroups", e))?;
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
                .map_err(|e| err("uid_map", e))?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
                .map_err(|e| err("gid_map", e))?;
        }
        // Mounts made from here on stay in this namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| err("making mounts private", e))?;
        let root = &args.root;
        tmpfs(root, 16 << 20)?;
        // Before the binds, so that a Python under /tmp stays visible.
        tmpfs(&root.join("tmp"), args.file_size)?;
        tmpfs(&root.join("sandbox"), args.file_size)?;
        let mut binds: Vec<PathBuf> = SYSTEM.iter().map(PathBuf::from).collect();
        binds.extend(args.binds.iter().cloned());
        binds.sort();
        binds.dedup();
        // Parents before children; a child already under a bound parent is visible.
        let mut bound: Vec<PathBuf> = Vec::new();
        for path in binds {
            if bound.iter().any(|b| path.starts_with(b)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let dst = inside(root, &path);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| err("reading a link", e))?;
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| err("creating a directory", e))?;
                }
                symlink(&target, &dst).map_err(|e| err("linking", e))?;
                continue;
            }
            if !meta.is_dir() {
                continue;
            }
            std::fs::create_dir_all(&dst).map_err(|e| err("creating a directory", e))?;
            bind_read_only(&path, &dst)?;
            bound.push(path);
        }
        let dev = root.join("dev");
        std::fs::create_dir_all(&dev).map_err(|e| err("creating /dev", e))?;
        for d in DEVICES {
            let host = Path::new("/dev").join(d);
            if host.exists() {
                let node = dev.join(d);
                std::fs::write(&node, b"").map_err(|e| err("creating a device node", e))?;
                mount(
                    Some(&host),
                    &node,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| err(&format!("binding {}", host.display()), e))?;
            }
        }
        let old = root.join(".oldroot");
        std::fs::create_dir_all(&old).map_err(|e| err("creating .oldroot", e))?;
        pivot_root(root.as_path(), old.as_path()).map_err(|e| err("pivot_root", e))?;
        std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
        umount2("/.oldroot", MntFlags::MNT_DETACH).map_err(|e| err("detaching the old root", e))?;
        let _ = std::fs::remove_dir("/.oldroot");
        std::fs::write("/sandbox/main.py", program).map_err(|e| err("writing the program", e))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| err("making the sandbox root read-only", e))?;

        let cpu = args.seconds.ceil() as u64 + 1;
        let mut limits = vec![
            (Resource::RLIMIT_CPU, cpu),
            (Resource::RLIMIT_AS, args.memory),
            (Resource::RLIMIT_FSIZE, args.file_size),
            (Resource::RLIMIT_NOFILE, 256),
            (Resource::RLIMIT_CORE, 0),
        ];
        if let Some(n) = args.processes {
            limits.push((Resource::RLIMIT_NPROC, already + n));
        }

        let mut cmd = Command::new(&args.python);
        cmd.args(["-I", "-B", "/sandbox/main.py"])
            .current_dir("/sandbox")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/sandbox")
            .env("TMPDIR", "/tmp")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        if root_user {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        // SAFETY: between fork and exec the closure makes only system calls
        // (write, setsid, setrlimit, unshare, prctl, seccomp) on data made
        // before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for procs in &cgroups {
                    (&*procs).write_all(b"0")?;
                }
                // No controlling terminal, no signals from the eval's group.
                setsid()?;
                for &(resource, value) in &limits {
                    setrlimit(resource, value, value)?;
                }
                // Not root: a user namespace owned by this one holds no
                // privilege over the mounts made here, whatever the system call.
                if !root_user {
                    unshare(CloneFlags::CLONE_NEWUSER)?;
                }
                // Ties the sample (PID 1 of its namespace, whose end kills
                // every process in it) to this helper's life.
                nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL))?;
                seccomp::install(&filters)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err(&format!("starting {}", args.python.display()), e))?;
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    // The helper's own statuses are never the sample's.
                    let s = super::exit_status(&status);
                    return Ok(if s == EXIT_TIMEOUT || s == super::EXIT_SETUP {
                        1
                    } else {
                        s
                    });
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(EXIT_TIMEOUT);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(err("waiting for the sample", e)),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::os::fd::AsRawFd;

        fn close_on_exec(fd: i32) -> bool {
            // SAFETY: F_GETFD reads a descriptor's flags.
            unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
        }

        #[test]
        fn the_fallback_marks_inherited_descriptors_close_on_exec() {
            let file = tempfile::tempfile().unwrap();
            let fd = file.as_raw_fd();
            // SAFETY: clears the flag of a descriptor this test owns, as an
            // inherited one would be.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
            assert!(!close_on_exec(fd));
            super::mark_listed_descriptors().unwrap();
            assert!(close_on_exec(fd));
            assert!(!close_on_exec(2), "stderr stays open across exec");
        }
    }
}
