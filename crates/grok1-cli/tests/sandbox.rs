//! The HumanEval sandbox on hostile samples: each must fail cleanly within
//! its limits, leave nothing running and touch nothing outside.
//!
//! Run as root, these test the root mode (the sample runs as `nobody`), and
//! [`every_test_passes_unprivileged`] runs them all again as `nobody`, which
//! tests the user-namespace mode.

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use grok1_eval::sandbox::{Limits, Outcome, Sandbox};
use grok1_eval::{humaneval, CodeTask};
use serde_json::Value;

/// One sample at a time: the leftover-process check must not see another
/// test's sample.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `nobody`, whom the unprivileged run runs as.
const NOBODY: u32 = 65534;

/// Set in the unprivileged run: the `grok1` binary to use (a copy `nobody`
/// can reach when the build directory is not).
const GROK1_ENV: &str = "GROK1_SANDBOX_TEST_GROK1";

fn grok1() -> PathBuf {
    std::env::var_os(GROK1_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_grok1")))
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uid.split_whitespace().nth(2) == Some("0")
}

fn limits(seconds: f64, memory: u64) -> Limits {
    Limits {
        time: Duration::from_secs_f64(seconds),
        memory,
        ..Limits::default()
    }
}

fn sandbox(seconds: f64) -> Sandbox {
    sandbox_with("python3", limits(seconds, 512 << 20))
}

fn sandbox_with(python: &str, limits: Limits) -> Sandbox {
    Sandbox::new(grok1(), python, limits)
        .expect("python3 is needed to run the HumanEval sandbox tests")
}

/// Runs `program`; returns its outcome and how long it took.
fn run(program: &str, seconds: f64) -> (Outcome, Duration) {
    run_in(&sandbox(seconds), program)
}

fn run_in(sandbox: &Sandbox, program: &str) -> (Outcome, Duration) {
    let _guard = serial();
    let start = Instant::now();
    let outcome = sandbox.run_python(program).expect("the sandbox sets up");
    let took = start.elapsed();
    assert!(
        leftover_samples().is_empty(),
        "processes of the sample outlived it: {:?}",
        leftover_samples()
    );
    (outcome, took)
}

/// Processes still running a sample's program.
fn leftover_samples() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let mut cmdline = Vec::new();
        if let Ok(mut f) = std::fs::File::open(entry.path().join("cmdline")) {
            let _ = f.read_to_end(&mut cmdline);
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("/sandbox/main.py") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn a_correct_program_passes_and_a_failing_one_fails() {
    let (o, _) = run("def f(x):\n    return x + 1\nassert f(1) == 2\n", 10.0);
    assert_eq!(o, Outcome::Passed);
    let (o, _) = run("assert 1 == 2, 'wrong answer'\n", 10.0);
    match o {
        Outcome::Failed { status, stderr } => {
            assert_eq!(status, 1);
            assert!(stderr.contains("wrong answer"), "{stderr}");
        }
        o => panic!("expected a failure, got {o:?}"),
    }
}

/// unshare, keyctl and ptrace.
#[cfg(target_arch = "x86_64")]
const SYSCALLS: [u32; 3] = [272, 250, 101];
#[cfg(target_arch = "aarch64")]
const SYSCALLS: [u32; 3] = [97, 219, 117];

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn the_seccomp_filter_denies_namespaces_keys_and_tracing() {
    // Each of these succeeds for an unprivileged process without the filter
    // (clone3 with no arguments is EINVAL); with it, EPERM (clone3: ENOSYS).
    let [unshare, keyctl, ptrace] = SYSCALLS;
    let program = format!(
        r#"import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, *args):
    rc = libc.syscall(*[ctypes.c_long(a) for a in args])
    return (name, rc, ctypes.get_errno())
got = [
    call("unshare", {unshare}, 0x10000000),
    call("keyctl", {keyctl}, 0, -3, 0),
    call("ptrace", {ptrace}, 0, 0, 0, 0),
    call("clone3", 435, 0, 0),
]
want = [("unshare", -1, 1), ("keyctl", -1, 1), ("ptrace", -1, 1), ("clone3", -1, 38)]
assert got == want, got
"#
    );
    let (o, _) = run(&program, 10.0);
    assert_eq!(o, Outcome::Passed);
}

#[test]
fn threads_and_subprocesses_still_work() {
    // The seccomp filter answers clone3 with ENOSYS: the C library must fall
    // back to clone for threads, fork and posix_spawn.
    let program = r#"import os, subprocess, sys, threading
out = []
t = threading.Thread(target=lambda: out.append(6 * 7))
t.start()
t.join()
assert out == [42], out
r = subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True)
assert r.stdout == "7\n", r
pid = os.fork()
if pid == 0:
    os._exit(5)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 5
"#;
    let (o, _) = run(program, 10.0);
    assert_eq!(o, Outcome::Passed);
}

#[test]
fn the_helpers_own_statuses_cannot_be_faked() {
    // 125 means "the sandbox could not be set up": a sample exiting with it
    // must be an ordinary failure, not abort the run.
    let (o, _) = run("import sys\nsys.exit(125)\n", 10.0);
    assert!(matches!(o, Outcome::Failed { status: 1, .. }), "{o:?}");
    let (o, _) = run("import sys\nsys.exit(124)\n", 10.0);
    assert!(matches!(o, Outcome::Failed { status: 1, .. }), "{o:?}");
}

#[test]
fn an_infinite_loop_times_out() {
    let (o, took) = run("while True:\n    pass\n", 1.5);
    assert_eq!(o, Outcome::TimedOut);
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[test]
fn a_fork_bomb_is_contained_and_killed() {
    let program =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let (o, took) = run(program, 2.0);
    assert!(!o.passed(), "{o:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_large_allocation_fails() {
    let (o, took) = run("x = bytearray(8 << 30)\n", 10.0);
    match o {
        Outcome::Failed { stderr, .. } => assert!(stderr.contains("MemoryError"), "{stderr}"),
        o => panic!("expected a MemoryError, got {o:?}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn writes_outside_its_directory_fail_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("escaped.txt");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for target in [
        outside.display().to_string(),
        "/etc/grok1-sandbox-escape".to_string(),
        format!("{home}/grok1-sandbox-escape"),
        "/usr/grok1-sandbox-escape".to_string(),
    ] {
        let program = format!("open({target:?}, 'w').write('escaped')\n");
        let (o, _) = run(&program, 10.0);
        assert!(!o.passed(), "writing {target} succeeded");
        assert!(
            !std::path::Path::new(&target).exists(),
            "{target} was written"
        );
    }
    // Its own directory and /tmp are writable, and gone afterwards.
    let (o, _) = run(
        "open('/sandbox/a.txt', 'w').write('x')\nopen('/tmp/b.txt', 'w').write('y')\n",
        10.0,
    );
    assert_eq!(o, Outcome::Passed);
}

#[test]
fn network_connections_fail() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let program =
        format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n");
    let (o, _) = run(&program, 10.0);
    assert!(!o.passed(), "{o:?}");
    assert!(
        listener.accept().is_err(),
        "the sample reached the host's loopback"
    );
    let (o, _) = run(
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n",
        10.0,
    );
    assert!(!o.passed(), "{o:?}");
}

#[test]
fn endless_output_does_not_hang_or_fill_memory() {
    let (o, took) = run(
        "import sys\nfor _ in range(200000):\n    sys.stdout.write('x' * 1000)\nsys.exit(3)\n",
        20.0,
    );
    assert!(matches!(o, Outcome::Failed { status: 3, .. }), "{o:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

fn stderr_of(o: &Outcome) -> &str {
    match o {
        Outcome::Failed { stderr, .. } => stderr,
        _ => "",
    }
}

#[test]
fn exiting_before_the_tests_is_not_a_pass() {
    let task = CodeTask {
        prompt: "def add(a, b):\n".into(),
        test: "def check(candidate):\n    assert candidate(2, 3) == 5\n".into(),
        entry_point: "add".into(),
    };
    let sandbox = sandbox(10.0);
    let check = |completion: &str| {
        let _guard = serial();
        humaneval::check(&task, completion, &sandbox).expect("the sandbox sets up")
    };
    assert_eq!(check("    return a + b\n"), Outcome::Passed);
    for completion in [
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os._exit(0)\n",
        "    raise SystemExit\n",
        "    raise SystemExit(0)\n",
        // At module level, before the tests are even defined.
        "    return a\nimport sys\nsys.exit(0)\n",
        // The tests fail, then an exit handler makes the status 0.
        "    import atexit, os\n    atexit.register(os._exit, 0)\n    return 0\n",
        "    import atexit, os, sys\n    sys.excepthook = lambda *a: None\n    atexit.register(os._exit, 0)\n    return 0\n",
        // A marker without the run's nonce.
        "    print('grok1-sandbox: the program reached its end 0')\n    import os\n    os._exit(0)\n",
    ] {
        let o = check(completion);
        assert!(!o.passed(), "{completion:?} passed");
    }
    let o = check("    import sys\n    sys.exit(0)\n");
    assert!(
        matches!(o, Outcome::Failed { status: 0, .. })
            && o.describe().contains("exited before its end"),
        "{o:?}"
    );
}

#[test]
fn a_sample_cannot_remount_its_read_only_binds() {
    // A Python installation the sample's user owns, bound read-only: the
    // sample may not make it writable, by either mount API.
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let venv = venv.canonicalize().unwrap();
    if is_root() {
        let owned = Command::new("chown")
            .args(["-R", "-h", &format!("{NOBODY}:{NOBODY}")])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(owned.success());
    }
    let before = listing(&venv);
    let program = format!(
        r#"import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
target = {target:?}
MS_REMOUNT, MS_BIND = 32, 4096
tries = []
rc = libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND, None)
tries.append(("mount", rc, ctypes.get_errno()))
# mount_setattr(AT_FDCWD, target, 0, {{attr_clr: MOUNT_ATTR_RDONLY}}, 32)
attr = (ctypes.c_uint64 * 4)(0, 1, 0, 0)
rc = libc.syscall(ctypes.c_long(442), ctypes.c_long(-100), ctypes.c_char_p(target.encode()),
                  ctypes.c_long(0), ctypes.byref(attr), ctypes.c_long(32))
tries.append(("mount_setattr", rc, ctypes.get_errno()))
assert tries == [("mount", -1, 1), ("mount_setattr", -1, 1)], tries
try:
    open(target + "/escaped", "w").write("x")
except OSError as e:
    assert e.errno == 30, e
else:
    raise AssertionError("wrote into the read-only Python installation")
"#,
        target = venv.display().to_string()
    );
    let python = venv.join("bin/python3");
    let sandbox = sandbox_with(python.to_str().unwrap(), limits(10.0, 512 << 20));
    // The program checks that each try fails with EPERM, then EROFS.
    let (o, _) = run_in(&sandbox, &program);
    assert_eq!(o, Outcome::Passed);
    assert!(!venv.join("escaped").exists());
    assert_eq!(listing(&venv), before);
}

/// Every path under `dir` with its size.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), meta.len()));
        }
    }
    out.sort();
    out
}

/// Forks `children` processes that each touch `mb` MiB and hold it for a
/// second; prints the most that held theirs at the same time, and fails
/// unless all held theirs to the end.
fn children_allocating(children: usize, mb: usize) -> String {
    format!(
        r#"import os, sys, time
read, write = os.pipe()
kids = []
for _ in range({children}):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        try:
            block = b"\x01" * ({mb} << 20)
            start = time.monotonic()
            time.sleep(1.0)
            os.write(write, f"{{start}} {{time.monotonic()}}\n".encode())
            os._exit(0)
        except MemoryError:
            os._exit(3)
    kids.append(pid)
os.close(write)
finished = sum(1 for pid in kids if os.waitpid(pid, 0)[1] == 0)
spans = [tuple(map(float, l.split())) for l in os.fdopen(read).read().split("\n") if l]
held = max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)
print("held", held, file=sys.stderr)
assert finished == {children}, finished
"#
    )
}

#[test]
fn the_memory_limit_bounds_the_sample_as_a_whole() {
    let sandbox = sandbox_with("python3", limits(20.0, 256 << 20));
    // Six children of 200 MiB: at most one can hold its block at a time.
    let (o, _) = run_in(&sandbox, &children_allocating(6, 200));
    assert!(!o.passed(), "{o:?}");
    let held: usize = stderr_of(&o)
        .lines()
        .find_map(|l| l.strip_prefix("held "))
        .unwrap_or_else(|| panic!("no count: {o:?}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        held <= 1,
        "{held} children held 200 MiB at once under a 256 MiB limit ({})",
        sandbox.containment()
    );
    // Within the limit, it passes.
    let (o, _) = run_in(&sandbox, &children_allocating(1, 60));
    assert_eq!(o, Outcome::Passed, "{}", sandbox.containment());
}

/// A HumanEval task for `grok1 eval`.
struct Task<'a> {
    id: &'a str,
    prompt: &'a str,
    test: &'a str,
    completion: &'a str,
}

/// `grok1 eval --samples` on `tasks`, run by the shell command `wrap`
/// (around `"$@"`), and the file it writes its records to.
fn eval_command(
    dir: &Path,
    tasks: &[Task],
    wrap: &str,
    env: &[(&str, &Path)],
) -> (Command, PathBuf) {
    let data = dir.join("HumanEval.jsonl");
    let samples = dir.join("samples.jsonl");
    let out = dir.join("out.jsonl");
    let line = |v: Value| format!("{v}\n");
    let rows: String = tasks
        .iter()
        .map(|t| {
            line(serde_json::json!({
                "task_id": t.id, "prompt": t.prompt, "test": t.test, "entry_point": "f",
            }))
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let rows: String = tasks
        .iter()
        .map(|t| line(serde_json::json!({"task_id": t.id, "completion": t.completion})))
        .collect();
    std::fs::write(&samples, rows).unwrap();
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(wrap).arg("sh").arg(grok1());
    cmd.args([
        "eval",
        "--task",
        "humaneval",
        "--json",
        "--exec-timeout",
        "60",
        "--data",
    ])
    .arg(&data)
    .arg("--samples")
    .arg(&samples)
    .arg("--out")
    .arg(&out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd, out)
}

/// Scores `tasks` as [`eval_command`] does; returns its output and records.
fn eval_samples(
    dir: &Path,
    tasks: &[Task],
    wrap: &str,
    env: &[(&str, &Path)],
) -> (Output, Vec<Value>) {
    let (mut cmd, out) = eval_command(dir, tasks, wrap, env);
    let _guard = serial();
    let output = cmd.output().unwrap();
    let records = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output, records)
}

/// Waits up to `limit` for `done`; whether it came.
fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn killing_grok1_eval_ends_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let task = Task {
        id: "t/0",
        prompt: "def f():\n",
        test: "def check(candidate):\n    assert candidate() == 1\n",
        completion: "    import time\n    time.sleep(60)\n",
    };
    let (mut cmd, _) = eval_command(dir.path(), &[task], r#"exec "$@""#, &[]);
    let _guard = serial();
    let mut eval = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Running a second on (the sandbox's probe ends at once).
    let started = wait_for(Duration::from_secs(20), || {
        !leftover_samples().is_empty() && {
            std::thread::sleep(Duration::from_secs(1));
            !leftover_samples().is_empty()
        }
    });
    eval.kill().unwrap();
    eval.wait().unwrap();
    assert!(started, "the sample never started");
    assert!(
        wait_for(Duration::from_secs(3), || leftover_samples().is_empty()),
        "the samples outlived grok1 eval: {:?}",
        leftover_samples()
    );
}

#[test]
fn descriptors_that_grok1_eval_inherits_do_not_reach_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host.txt");
    let secret = dir.path().join("secret.txt");
    std::fs::write(&host, "host data\n").unwrap();
    std::fs::write(&secret, "the-secret-2718\n").unwrap();
    // Returns 1 only if neither descriptor is open; else fails, showing what leaked.
    let completion = r#"    import os
    leaked = []
    try:
        os.write(7, b"the sample wrote this\n")
        leaked.append("wrote fd 7")
    except OSError:
        pass
    try:
        leaked.append(os.read(8, 100).decode())
    except OSError:
        pass
    assert not leaked, leaked
    return 1
"#;
    let task = Task {
        id: "t/0",
        prompt: "def f():\n",
        test: "def check(candidate):\n    assert candidate() == 1\n",
        completion,
    };
    let (output, records) = eval_samples(
        dir.path(),
        &[task],
        r#"exec "$@" 7>>"$HOST_FILE" 8<"$SECRET_FILE""#,
        &[("HOST_FILE", &host), ("SECRET_FILE", &secret)],
    );
    let all = format!("{output:?}{records:?}");
    assert!(output.status.success(), "{all}");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host data\n");
    assert!(!all.contains("the-secret-2718"), "{all}");
    assert_eq!(records.len(), 1, "{all}");
    assert_eq!(records[0]["correct"], true, "{all}");
}

#[test]
fn samples_are_matched_to_tasks_by_id_not_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "def f(x):\n";
    let tasks = [
        Task {
            id: "t/0",
            prompt,
            test: "def check(candidate):\n    assert candidate(1) == 1\n",
            completion: "    return x\n",
        },
        Task {
            id: "t/1",
            prompt,
            test: "def check(candidate):\n    assert candidate(1) == 2\n",
            completion: "    return x + 1\n",
        },
    ];
    let (output, records) = eval_samples(dir.path(), &tasks, r#"exec "$@""#, &[]);
    let all = format!("{output:?}{records:?}");
    assert!(output.status.success(), "{all}");
    let mut correct: Vec<(&str, bool)> = records
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["correct"].as_bool().unwrap()))
        .collect();
    correct.sort();
    assert_eq!(correct, [("t/0", true), ("t/1", true)], "{all}");
}

/// The test binary and `grok1` where `nobody` can run them: in place if
/// every directory above them lets others in, else copies.
fn reachable_by_nobody(path: &Path, copies: &Path) -> PathBuf {
    let open = path.ancestors().skip(1).all(|d| {
        d.metadata()
            .is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    }) && path
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005);
    if open {
        return path.to_path_buf();
    }
    let copy = copies.join(path.file_name().unwrap());
    std::fs::copy(path, &copy).unwrap();
    copy
}

/// Whether this machine lets an unprivileged user make a user namespace.
fn unprivileged_user_namespaces() -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .is_ok_and(|s| s.success())
}

/// Says something the test harness does not capture, so it shows in any run.
fn loudly(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
}

#[test]
fn every_test_passes_unprivileged() {
    if !is_root() {
        loudly("these sandbox tests ran unprivileged (the user-namespace mode) only: run them as root to test the root mode too");
        return;
    }
    if !unprivileged_user_namespaces() {
        loudly("the sandbox's unprivileged (user-namespace) mode is NOT tested: this machine does not let `nobody` make a user namespace (`unshare --user` failed)");
        return;
    }
    let copies = tempfile::tempdir().unwrap();
    std::fs::set_permissions(copies.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let me = reachable_by_nobody(&std::env::current_exe().unwrap(), copies.path());
    let grok1 = reachable_by_nobody(&grok1(), copies.path());
    // Its samples must not meet the leftover checks of the tests here.
    let _guard = serial();
    let run = Command::new(&me)
        .args(["--skip", "every_test_passes_unprivileged"])
        .env(GROK1_ENV, &grok1)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("test result: ok"),
        "the tests failed as nobody:\n{stdout}\n{stderr}"
    );
    let passed: usize = stdout
        .split("test result: ok. ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(passed >= 10, "only {passed} tests ran as nobody:\n{stdout}");
}
