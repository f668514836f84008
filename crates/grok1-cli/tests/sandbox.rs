//! The HumanEval sandbox on hostile samples: each must fail cleanly within
//! its limits, leave nothing running and touch nothing outside.

#![cfg(target_os = "linux")]

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use grok1_eval::sandbox::{Limits, Outcome, Sandbox};

/// One sample at a time: the leftover-process check must not see another
/// test's sample.
static SERIAL: Mutex<()> = Mutex::new(());

fn sandbox(seconds: f64) -> Sandbox {
    let limits = Limits {
        time: Duration::from_secs_f64(seconds),
        memory: 512 << 20,
        ..Limits::default()
    };
    Sandbox::new(
        PathBuf::from(env!("CARGO_BIN_EXE_grok1")),
        "python3",
        limits,
    )
    .expect("python3 is needed to run the HumanEval sandbox tests")
}

/// Runs `program`; returns its outcome and how long it took.
fn run(program: &str, seconds: f64) -> (Outcome, Duration) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let outcome = sandbox(seconds)
        .run_python(program)
        .expect("the sandbox sets up");
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
