//! `grok1 eval` end to end on the fixture data: every task through the engine
//! and through `grok1 serve`, result files, resuming, the table, and errors.
//! (A random model's accuracies mean nothing; the pipeline is what is tested.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

fn grok1() -> Command {
    Command::new(env!("CARGO_BIN_EXE_grok1"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn data(task: &str) -> PathBuf {
    let e = root().join("eval");
    match task {
        "gsm8k" => e.join("gsm8k/test.jsonl"),
        "mmlu" => e.join("mmlu"),
        "humaneval" => e.join("humaneval/HumanEval.jsonl"),
        "math" => e.join("math"),
        _ => unreachable!(),
    }
}

const ITEMS: [(&str, usize); 4] = [("gsm8k", 5), ("mmlu", 5), ("humaneval", 3), ("math", 4)];

fn tiny_vocab() -> PathBuf {
    root().join("models/tiny-vocab")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running grok1")
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs one task; checks the table, the JSON line and the result file.
fn eval(task: &str, n: usize, how: &[&str], out: &Path) -> Vec<Value> {
    let o = run(grok1()
        .args(["eval", "--task", task, "--data"])
        .arg(data(task))
        .arg("--out")
        .arg(out)
        .args(["--json", "--concurrency", "4"])
        .args(how));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{task}: {}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.starts_with("task "), "{stdout}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["task"], task);
    assert_eq!(summary["scores"][0]["n"], n, "{stdout}");
    // The JSON line records what was run: the flags given, or their defaults.
    let flag = |name: &str| how.windows(2).find(|w| w[0] == name).map(|w| w[1]);
    let number = |name: &str| flag(name).map_or(Value::Null, |v| json!(v.parse::<u64>().unwrap()));
    assert_eq!(summary["limit"], number("--limit"), "{stdout}");
    assert_eq!(summary["seed"], number("--seed"), "{stdout}");
    assert!(summary["shots"].is_u64(), "{stdout}");
    match (flag("--model"), flag("--server"), flag("--samples")) {
        (Some(model), _, _) => assert_eq!(summary["model"], model, "{stdout}"),
        (_, Some(_), _) => assert!(summary["model"].is_string(), "{stdout}"),
        (_, _, Some(samples)) => assert_eq!(summary["model"], format!("samples:{samples}")),
        (None, None, None) => assert_eq!(summary["model"], "grok1-demo", "{stdout}"),
    }
    let recs = records(out);
    assert_eq!(recs.len(), n);
    for r in &recs {
        assert_eq!(r["task"], task);
        for key in ["id", "prompt", "output", "target", "correct"] {
            assert!(!r[key].is_null(), "{task}: {key} missing in {r}");
        }
    }
    let correct = recs.iter().filter(|r| r["correct"] == true).count();
    assert_eq!(summary["scores"][0]["correct"], correct);
    recs
}

#[test]
fn every_task_runs_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    for (task, n) in ITEMS {
        let model = tiny_vocab();
        let recs = eval(
            task,
            n,
            &["--model", model.to_str().unwrap()],
            &dir.path().join(format!("{task}.jsonl")),
        );
        match task {
            "mmlu" => {
                for r in &recs {
                    let lls = r["loglikelihoods"].as_array().unwrap();
                    assert_eq!(lls.len(), 4);
                    assert!(lls.iter().all(|v| v.as_f64().unwrap() < 0.0), "{r}");
                    assert!(r["subject"].is_string());
                }
            }
            "humaneval" => {
                // Random text is not Python: every sample fails, and says so.
                for r in &recs {
                    let how = r["execution"].as_str().unwrap();
                    assert!(how.starts_with("failed") || how == "timed out", "{how}");
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_demo_model_runs_every_task_without_a_model_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (task, n) in ITEMS {
        eval(task, n, &[], &dir.path().join(format!("{task}.jsonl")));
    }
    eval(
        "gsm8k",
        2,
        &["--limit", "2", "--seed", "7"],
        &dir.path().join("gsm8k-limit.jsonl"),
    );
    // And through a server running the demo model.
    let server = serve(None);
    eval(
        "gsm8k",
        5,
        &["--server", &server.url],
        &dir.path().join("gsm8k-server.jsonl"),
    );
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: Option<&Path>) -> Server {
    let mut cmd = grok1();
    cmd.args(["serve", "--port", "0"]);
    if let Some(model) = model {
        cmd.arg("--model").arg(model);
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

#[test]
fn every_task_runs_through_a_server_with_the_engines_numbers() {
    let server = serve(Some(&tiny_vocab()));
    let dir = tempfile::tempdir().unwrap();
    for (task, n) in ITEMS {
        let via_server = eval(
            task,
            n,
            &["--server", &server.url],
            &dir.path().join(format!("{task}-server.jsonl")),
        );
        if task == "mmlu" || task == "gsm8k" {
            // The same tokens reach the same model: the same answers.
            let model = tiny_vocab();
            let direct = eval(
                task,
                n,
                &["--model", model.to_str().unwrap()],
                &dir.path().join(format!("{task}-direct.jsonl")),
            );
            // The file lists items as they finish: match them by id.
            assert_eq!(direct.len(), via_server.len());
            for a in &direct {
                let b = via_server.iter().find(|b| b["id"] == a["id"]).unwrap();
                if task == "gsm8k" {
                    assert_eq!(a["output"], b["output"]);
                    continue;
                }
                let la = a["loglikelihoods"].as_array().unwrap();
                let lb = b["loglikelihoods"].as_array().unwrap();
                for (x, y) in la.iter().zip(lb) {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    assert!((x - y).abs() < 1e-3, "{x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn a_run_resumes_from_its_result_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.jsonl");
    let model = tiny_vocab();
    let m = model.to_str().unwrap();
    eval("gsm8k", 2, &["--model", m, "--limit", "2"], &out);
    let first = records(&out);
    let all = eval("gsm8k", 5, &["--model", m], &out);
    assert_eq!(&all[..2], &first[..], "earlier lines are kept as they were");
    // Other settings with the same file are refused, not mixed in.
    let o = run(grok1()
        .args([
            "eval", "--task", "gsm8k", "--shots", "2", "--model", m, "--data",
        ])
        .arg(data("gsm8k"))
        .arg("--out")
        .arg(&out));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another prompt"), "{err}");
}

#[test]
fn canonical_solutions_pass_and_empty_bodies_fail() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(data("humaneval")).unwrap();
    for (kind, expect) in [("canonical", 3), ("empty", 0)] {
        let samples: String = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let completion = if kind == "canonical" {
                    v["canonical_solution"].clone()
                } else {
                    Value::from("")
                };
                format!(
                    "{}\n",
                    serde_json::json!({"task_id": v["task_id"], "completion": completion})
                )
            })
            .collect();
        let path = dir.path().join(format!("{kind}.jsonl"));
        std::fs::write(&path, samples).unwrap();
        let recs = eval(
            "humaneval",
            3,
            &["--samples", path.to_str().unwrap()],
            &dir.path().join(format!("{kind}-out.jsonl")),
        );
        let passed = recs.iter().filter(|r| r["correct"] == true).count();
        assert_eq!(passed, expect, "{kind}: {recs:?}");
    }
}

#[test]
fn bad_eval_flags_and_data_are_named() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--task", "gsm8k", "--data", "/no/such.jsonl"],
            "/no/such.jsonl",
        ),
        (
            &["--task", "trivia", "--data", "x"],
            "invalid value 'trivia'",
        ),
        (
            &[
                "--task", "gsm8k", "--data", "x", "--server", "http://h", "--model", "m",
            ],
            "cannot be used with",
        ),
        (&["--task", "humaneval", "--data", "x", "--shots", "3"], "x"),
        (
            &["--task", "gsm8k", "--data", "x", "--concurrency", "0"],
            "--concurrency",
        ),
    ];
    for (args, needle) in cases {
        let o = run(grok1().arg("eval").args(args));
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A server that is not there is an error naming it, not a hang.
    let o = run(grok1()
        .args([
            "eval",
            "--task",
            "gsm8k",
            "--server",
            "http://127.0.0.1:9",
            "--data",
        ])
        .arg(data("gsm8k")));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("127.0.0.1:9"));
}
