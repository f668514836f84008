//! Scoring without a model: a scripted backend gives hand-made answers and the
//! tests check what each task extracts and how it compares, awkward cases
//! included; the loaders' errors name the file and line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use grok1_eval::runner::{self, RunOptions};
use grok1_eval::{
    data, gsm8k, math, math_equiv, mmlu, Backend, Item, Query, Response, ScriptedBackend, Task,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval")
}

fn gen_item(id: &str, prompt: &str, target: &str) -> Item {
    Item {
        id: id.into(),
        query: Query::Generate {
            prompt: prompt.into(),
            max_tokens: 16,
            stop: vec!["\n\n".into(), "Q:".into()],
        },
        target: target.into(),
        subject: None,
        code: None,
    }
}

fn opts() -> RunOptions {
    RunOptions {
        concurrency: 3,
        ..RunOptions::default()
    }
}

/// Runs `cases` of (output, target, expected correct) through the runner with
/// a scripted backend; returns the extracted answers.
fn run_cases(task: Task, cases: &[(&str, &str, bool)]) -> Vec<Option<String>> {
    let items: Vec<Item> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, target, _))| gen_item(&format!("{i}"), &format!("prompt {i}"), target))
        .collect();
    let mut backend = ScriptedBackend::new();
    for (i, (output, _, _)) in cases.iter().enumerate() {
        backend = backend.text(&format!("prompt {i}"), output);
    }
    let records = runner::run(task, &items, &backend, None, &opts(), &|_| {}).unwrap();
    for (rec, (output, target, expected)) in records.iter().zip(cases) {
        assert_eq!(
            rec.correct, *expected,
            "{task}: output {output:?} target {target:?} extracted {:?}",
            rec.extracted
        );
    }
    records.into_iter().map(|r| r.extracted).collect()
}

#[test]
fn gsm8k_extracts_the_final_number() {
    let cases = [
        ("So 1,000 + 234 = 1,234. The answer is 1,234.", "1234", true),
        ("She has 18 dollars. The answer is $18.00.", "18", true),
        ("23 - 15 is 8 dollars left.", "8", true),
        ("The answer is 5 apples. Then 7 more are bought.", "5", true),
        ("It fell to -3 degrees. The answer is -3.", "-3", true),
        ("The answer is 0.50", "0.5", true),
        ("The answer is 25%.", "25", true),
        (
            "It is 1,000,000 in total. The answer is 1,000,000.",
            "1000000",
            true,
        ),
        ("The answer is 12.", "13", false),
        ("I do not know.", "3", false),
        // The stop string cuts what follows (the next few-shot question).
        (
            "The answer is 4.\n\nQ: what is 2+3? A: The answer is 5.",
            "4",
            true,
        ),
        ("the final answer is 042", "42", true),
    ];
    let extracted = run_cases(Task::Gsm8k, &cases);
    assert_eq!(extracted[0].as_deref(), Some("1234"));
    assert_eq!(extracted[1].as_deref(), Some("18"));
    assert_eq!(extracted[9], None);
    assert_eq!(
        gsm8k::reference_answer("so 1,000\n#### 1,000").as_deref(),
        Some("1000")
    );
    assert_eq!(gsm8k::reference_answer("no marker"), None);
}

#[test]
fn gsm8k_prompt_has_the_requested_shots() {
    let p = gsm8k::prompt("How many?", 8);
    assert_eq!(p.matches("Q: ").count(), 9);
    assert!(p.ends_with("Q: How many?\nA:"));
    assert!(p.starts_with("Q: There are 15 trees"));
    assert_eq!(gsm8k::prompt("How many?", 0), "Q: How many?\nA:");
}

#[test]
fn math_compares_boxed_answers_after_normalisation() {
    let cases = [
        (r"so $x=\boxed{\dfrac12}$.", r"\frac{1}{2}", true),
        (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt3}{2}", true),
        (r"$\boxed{0.5}$", r"\frac{1}{2}", true),
        (r"$\boxed{10\text{ inches}}$", "10", true),
        (r"$\boxed{(1, 2)}$", "(1,2)", true),
        (r"$\boxed{(2,1)}$", "(1,2)", false),
        (r"$\boxed{[2,5)}$", "[2,5]", false),
        (r"$\boxed{x = 5}$", "5", true),
        (r"$\boxed{2(x+1)}$", "2x+2", true),
        (r"$\boxed{2(x+1)}$", "2x+1", false),
        (r"$\boxed{\$1,000}$", "1000", true),
        (r"$\boxed{30^\circ}$", "30", true),
        (r"$\boxed{\text{Monday}}$", r"\text{Monday}", true),
        (r"$\boxed{\text{Monday}}$", r"\text{Tuesday}", false),
        (r"$\boxed{3}$", "4", false),
        (r"$\boxed{1, 2, 3}$", "3,2,1", true),
        (r"the sum is $\boxed 5$.", "5", true),
        (
            r"first $\boxed{1}$, then $\boxed{\left(3, \frac{1}{4}\right)}$",
            r"(3,\frac14)",
            true,
        ),
        (r"$\boxed{\frac{1}{\sqrt{3}}}$", r"\frac{\sqrt{3}}{3}", true),
        (r"$\boxed{2\pi}$", r"2 \pi", true),
        (r"$\boxed{6.28}$", r"2\pi", false),
        (r"$\boxed{50\%}$", "50", true),
        (
            "Final Answer: The final answer is $7$. I hope it is correct.",
            "7",
            true,
        ),
        (r"$\boxed{\frac{1}{2}$", r"\frac{1}{2}", false),
        ("no answer here", "1", false),
    ];
    let extracted = run_cases(Task::Math, &cases);
    assert_eq!(extracted[1].as_deref(), Some(r"\frac{\sqrt{3}}{2}"));
    assert_eq!(
        extracted[17].as_deref(),
        Some(r"\left(3, \frac{1}{4}\right)")
    );
    assert_eq!(extracted[24], None);
}

#[test]
fn math_boxed_extraction_balances_nested_braces() {
    assert_eq!(
        math::last_boxed(r"\boxed{\frac{a}{b^{2}}} and more").as_deref(),
        Some(r"\frac{a}{b^{2}}")
    );
    assert_eq!(math::last_boxed(r"\fbox{7}").as_deref(), Some("7"));
    assert_eq!(math::last_boxed(r"\boxed{unclosed"), None);
    assert!(math_equiv::equivalent(r"\dfrac{3}{4}", "3/4"));
    assert!(math_equiv::equivalent(r"\tfrac{3}{4}", "0.75"));
    assert!(!math_equiv::equivalent("", ""));
    assert!(!math_equiv::equivalent("x", "y"));
}

#[test]
fn mmlu_picks_the_most_likely_letter() {
    let items: Vec<Item> = (0..4)
        .map(|i| Item {
            id: format!("s/{i}"),
            query: Query::Choice {
                context: format!("question {i}\nAnswer:"),
                continuations: [" A", " B", " C", " D"].map(String::from).to_vec(),
            },
            target: ["B", "A", "D", "C"][i].into(),
            subject: Some("philosophy".into()),
            code: None,
        })
        .collect();
    let backend = ScriptedBackend::new()
        .choice("question 0\nAnswer:", &[-3.0, -0.5, -2.0, -9.0])
        .choice("question 1\nAnswer:", &[-1.0, -1.0, -2.0, -2.0]) // a tie: the first
        .choice("question 2\nAnswer:", &[-1.0, f64::NAN, -2.0, -0.1])
        .choice("question 3\nAnswer:", &[-0.1, -1.0, -2.0, -3.0]);
    let records = runner::run(Task::Mmlu, &items, &backend, None, &opts(), &|_| {}).unwrap();
    let got: Vec<(bool, Option<&str>)> = records
        .iter()
        .map(|r| (r.correct, r.extracted.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (true, Some("B")),
            (true, Some("A")),
            (true, Some("D")),
            (false, Some("A"))
        ]
    );
    let scores = grok1_eval::report::scores("mmlu", &records);
    assert_eq!(scores[0].correct, 3);
    assert!((scores[0].accuracy - 0.75).abs() < 1e-12);
    assert!((scores[0].stderr - (0.75f64 * 0.25 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(scores[1].name.trim(), "humanities");
    assert_eq!(mmlu::group_of("college_physics"), "STEM");
    assert_eq!(mmlu::group_of("unknown_subject"), "other");
}

#[test]
fn results_resume_and_refuse_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.jsonl");
    let items = vec![gen_item("a", "p1", "1"), gen_item("b", "p2", "2")];
    let backend = ScriptedBackend::new()
        .text("p1", "The answer is 1.")
        .text("p2", "The answer is 3.");
    let options = RunOptions {
        out: Some(out.clone()),
        ..opts()
    };
    let first = runner::run(Task::Gsm8k, &items, &backend, None, &options, &|_| {}).unwrap();
    // A run cut off mid-line leaves a partial last line: dropped on resume.
    let mut text = std::fs::read_to_string(&out).unwrap();
    text.push_str("{\"task\":\"gsm8k\",\"id\":\"c\",\"pro");
    std::fs::write(&out, &text).unwrap();
    // Nothing is asked again: a backend that knows nothing still completes.
    let again = runner::run(
        Task::Gsm8k,
        &items,
        &ScriptedBackend::new(),
        None,
        &options,
        &|_| {},
    )
    .unwrap();
    assert_eq!(first, again);
    // One more item: only it is asked, and the file gains one whole line.
    let mut more = items.clone();
    more.push(gen_item("c", "p3", "3"));
    let backend3 = ScriptedBackend::new().text("p3", "The answer is 3.");
    let third = runner::run(Task::Gsm8k, &more, &backend3, None, &options, &|_| {}).unwrap();
    assert_eq!(third.len(), 3);
    assert!(third[2].correct);
    let lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        serde_json::from_str::<grok1_eval::Record>(l).unwrap();
    }
    // The same ids with another prompt (other --shots) are refused.
    let changed = vec![gen_item("a", "other prompt", "1")];
    let err = runner::run(Task::Gsm8k, &changed, &backend, None, &options, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("another prompt"), "{err}");
}

#[test]
fn items_sharing_an_id_are_refused() {
    let items = vec![gen_item("a", "p1", "1"), gen_item("a", "p2", "2")];
    let backend = ScriptedBackend::new().text("p1", "1").text("p2", "2");
    let err = runner::run(Task::Gsm8k, &items, &backend, None, &opts(), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("share the id a"), "{err}");
}

#[test]
fn a_failing_backend_stops_the_run_with_the_item_named() {
    let items = vec![gen_item("a", "p1", "1"), gen_item("b", "unknown", "2")];
    let backend = ScriptedBackend::new().text("p1", "1");
    let err = runner::run(Task::Gsm8k, &items, &backend, None, &opts(), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("item b"), "{err}");
}

#[test]
fn limit_and_seed_select_items() {
    let items: Vec<Item> = (0..10)
        .map(|i| gen_item(&format!("{i}"), "p", "1"))
        .collect();
    let first = runner::select(items.clone(), Some(3), None);
    assert_eq!(
        first.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    let a = runner::select(items.clone(), Some(3), Some(7));
    let b = runner::select(items.clone(), Some(3), Some(7));
    let c = runner::select(items, Some(3), Some(8));
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    assert_ne!(a, c);
}

#[test]
fn fixture_data_loads_for_every_task() {
    let f = fixtures();
    let g = data::load(Task::Gsm8k, &f.join("gsm8k/test.jsonl"), 8).unwrap();
    assert_eq!(g.len(), 5);
    assert_eq!(g[2].target, "1500");
    assert_eq!(g[4].target, "-5");
    let m = data::load(Task::Mmlu, &f.join("mmlu"), 5).unwrap();
    assert_eq!(m.len(), 5);
    let Query::Choice {
        context,
        continuations,
    } = &m[0].query
    else {
        panic!("MMLU asks for log-likelihoods")
    };
    assert!(context.starts_with(
        "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
    ));
    assert_eq!(context.matches("\nAnswer:").count(), 6);
    assert!(context.ends_with("What is 7 - 3?\nA. 4\nB. 3\nC. 2\nD. 1\nAnswer:"));
    assert_eq!(continuations, &[" A", " B", " C", " D"]);
    let h = data::load(Task::HumanEval, &f.join("humaneval/HumanEval.jsonl"), 0).unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0].id, "Fixture/0");
    let mut ids: Vec<&str> = m.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), m.len(), "MMLU item ids are unique");
    assert_eq!(m[0].id, "high_school_mathematics/0");
    let x = data::load(Task::Math, &f.join("math"), 4).unwrap();
    assert_eq!(x.len(), 4);
    assert_eq!(x[1].target, r"\frac{1}{2}");
    assert_eq!(x[0].id, "algebra/1.json");
}

fn load_err(task: Task, name: &str, content: &[u8], shots: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, content).unwrap();
    let target = if task == Task::Mmlu || task == Task::Math {
        dir.path().to_path_buf()
    } else {
        path
    };
    data::load(task, &target, shots).unwrap_err().to_string()
}

#[test]
fn malformed_data_is_an_error_naming_file_and_line() {
    let good = r#####"{"question": "q", "answer": "a #### 1"}"#####;
    let e = load_err(
        Task::Gsm8k,
        "test.jsonl",
        format!("{good}\n{good}\n{{oops\n").as_bytes(),
        0,
    );
    assert!(
        e.contains("test.jsonl line 3") && e.contains("invalid JSON"),
        "{e}"
    );
    let e = load_err(
        Task::Gsm8k,
        "test.jsonl",
        br#"{"question": "q", "answer": "no marker"}"#,
        0,
    );
    assert!(e.contains("line 1") && e.contains("####"), "{e}");
    let e = load_err(
        Task::Gsm8k,
        "test.jsonl",
        br#####"{"question": 5, "answer": "#### 1"}"#####,
        0,
    );
    assert!(e.contains("`question` is not a string"), "{e}");
    let e = load_err(Task::Gsm8k, "test.jsonl", b"{\"question\": \"\xff\"}", 0);
    assert!(e.contains("line 1: invalid UTF-8"), "{e}");
    let e = load_err(Task::Gsm8k, "test.jsonl", b"", 0);
    assert!(e.contains("holds no records"), "{e}");
    let e = load_err(Task::Gsm8k, "test.jsonl", good.as_bytes(), 9);
    assert!(e.contains("--shots 9"), "{e}");
    let e = load_err(
        Task::Mmlu,
        "test/x_test.csv",
        b"q,a,b,c,d,A\nq,a,b,c,d\n",
        0,
    );
    assert!(
        e.contains("x_test.csv line 2") && e.contains("6 columns"),
        "{e}"
    );
    let e = load_err(
        Task::Mmlu,
        "test/x_test.csv",
        b"\"two\nlines\",a,b,c,d,A\nq,a,b,c,d,E\n",
        0,
    );
    assert!(e.contains("x_test.csv line 3"), "{e}");
    assert!(e.contains("`E` is not one of"), "{e}");
    let e = load_err(Task::Mmlu, "test/x_test.csv", b"q,a,b,c,d,A\n", 5);
    assert!(e.contains("x_dev.csv"), "{e}");
    let e = load_err(Task::Mmlu, "test/readme.txt", b"hi", 0);
    assert!(e.contains("no MMLU test files"), "{e}");
    let e = load_err(
        Task::HumanEval,
        "HumanEval.jsonl",
        br#"{"task_id": "t", "prompt": "p"}"#,
        0,
    );
    assert!(e.contains("line 1: field `test` is missing"), "{e}");
    let e = load_err(Task::HumanEval, "HumanEval.jsonl.gz", b"not gzip", 0);
    assert!(e.contains("not a valid gzip file"), "{e}");
    let e = load_err(
        Task::Math,
        "a/1.json",
        br#"{"problem": "p", "solution": "no box"}"#,
        0,
    );
    assert!(e.contains("1.json") && e.contains("boxed"), "{e}");
    let e = load_err(Task::Math, "a/1.json", b"{\"problem\": ", 0);
    assert!(e.contains("1.json line 1: invalid JSON"), "{e}");
    let missing = data::load(Task::Gsm8k, Path::new("/no/such/file.jsonl"), 0).unwrap_err();
    assert!(
        missing.to_string().contains("/no/such/file.jsonl"),
        "{missing}"
    );
}

fn ids(items: &[Item]) -> HashSet<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

#[test]
fn samples_files_answer_items_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let items = vec![gen_item("a", "p1", "1"), gen_item("b", "p2", "2")];
    let path = dir.path().join("s.jsonl");
    std::fs::write(&path, "{\"task_id\": \"a\", \"completion\": \"The answer is 1.\"}\n{\"id\": \"b\", \"completion\": \"2\"}\n").unwrap();
    let backend = ScriptedBackend::from_samples(&path, &ids(&items), &items).unwrap();
    let records = runner::run(Task::Gsm8k, &items, &backend, None, &opts(), &|_| {}).unwrap();
    assert!(records.iter().all(|r| r.correct));
    std::fs::write(&path, "{\"task_id\": \"a\", \"completion\": \"x\"}\n").unwrap();
    let e = ScriptedBackend::from_samples(&path, &ids(&items), &items).unwrap_err();
    assert!(e.to_string().contains("no sample for item b"), "{e}");
    // Samples for items that are not run (--limit) are fine.
    let backend = ScriptedBackend::from_samples(&path, &ids(&items), &items[..1]).unwrap();
    assert_eq!(
        backend.answer(&items[0]).unwrap(),
        Response::Text("x".into())
    );
    std::fs::write(&path, "{\"task_id\": \"a\", \"completion\": \"x\"}\n{\"task_id\": \"a\", \"completion\": \"y\"}\n").unwrap();
    let e = ScriptedBackend::from_samples(&path, &ids(&items), &items).unwrap_err();
    assert!(
        e.to_string().contains("line 2") && e.to_string().contains("second sample for a"),
        "{e}"
    );
}

#[test]
fn items_that_share_a_prompt_get_their_own_samples() {
    let dir = tempfile::tempdir().unwrap();
    let items = vec![gen_item("a", "same", "1"), gen_item("b", "same", "2")];
    let path = dir.path().join("s.jsonl");
    std::fs::write(
        &path,
        "{\"task_id\": \"a\", \"completion\": \"1\"}\n{\"task_id\": \"b\", \"completion\": \"2\"}\n",
    )
    .unwrap();
    let backend = ScriptedBackend::from_samples(&path, &ids(&items), &items).unwrap();
    let records = runner::run(Task::Gsm8k, &items, &backend, None, &opts(), &|_| {}).unwrap();
    let outputs: Vec<&str> = records.iter().map(|r| r.output.as_str()).collect();
    assert_eq!(outputs, ["1", "2"]);
    assert!(records.iter().all(|r| r.correct));
}

#[test]
fn a_sample_for_an_unknown_item_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let items = vec![gen_item("a", "p1", "1")];
    let path = dir.path().join("s.jsonl");
    std::fs::write(
        &path,
        "{\"task_id\": \"a\", \"completion\": \"1\"}\n{\"task_id\": \"HumanEval/999\", \"completion\": \"2\"}\n",
    )
    .unwrap();
    let e = ScriptedBackend::from_samples(&path, &ids(&items), &items)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("s.jsonl line 2") && e.contains("task_id HumanEval/999 is not an item"),
        "{e}"
    );
}

#[test]
fn loglikelihood_samples_must_all_be_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let items = vec![Item {
        id: "q".into(),
        query: Query::Choice {
            context: "c".into(),
            continuations: vec![" A".into(), " B".into()],
        },
        target: "A".into(),
        subject: None,
        code: None,
    }];
    let path = dir.path().join("s.jsonl");
    std::fs::write(
        &path,
        "{\"id\": \"q\", \"loglikelihoods\": [-1.0, \"x\", -2.0]}\n",
    )
    .unwrap();
    let e = ScriptedBackend::from_samples(&path, &ids(&items), &items)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 1: needs `loglikelihoods`: 2 numbers"),
        "{e}"
    );
    std::fs::write(&path, "{\"id\": \"q\", \"loglikelihoods\": [-1.0, -2.0]}\n").unwrap();
    let backend = ScriptedBackend::from_samples(&path, &ids(&items), &items).unwrap();
    assert_eq!(
        backend.answer(&items[0]).unwrap(),
        Response::Loglikelihoods(vec![-1.0, -2.0])
    );
}
