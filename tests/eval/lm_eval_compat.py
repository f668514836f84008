"""lm-evaluation-harness compatibility: lm_eval's `local-completions` model
against `grok1 serve` gives the same per-item log-likelihoods as `grok1 eval`'s
MMLU scorer on the same items.

The items are the MMLU-format fixture (tests/fixtures/eval/mmlu), written as a
local lm-eval task per subject (YAML + JSON Lines, MMLU's prompt: description,
5 first dev examples, "Answer:" and the letters " A".." D"). lm_eval reaches the
server through its "remote" tokenizer (our /tokenize and /tokenizer_info), so
both sides score the same tokens.

Needs `pip install lm-eval` (it pulls in torch; not run in CI).
Usage: python tests/eval/lm_eval_compat.py GROK1_BINARY [MODEL_DIR | demo]
(default tiny-vocab, whose 128-token context cuts the 5-shot prompts from the
left on both sides; `demo`, the built-in model with 1024 tokens, holds them whole)
"""
import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "../.."))
MMLU = os.path.join(ROOT, "tests/fixtures/eval/mmlu")

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: 5
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {words}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
metric_list:
  - metric: acc
"""


def csv_to_jsonl(src, dst):
    with open(src, newline="") as f, open(dst, "w") as out:
        for row in csv.reader(f):
            out.write(json.dumps({"question": row[0], "choices": row[1:5],
                                  "answer": "ABCD".index(row[5].strip())}) + "\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    binary = os.path.abspath(sys.argv[1])
    model = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests/fixtures/models/tiny-vocab")
    lm_eval = shutil.which("lm_eval") or os.path.join(os.path.dirname(sys.executable), "lm_eval")
    tmp = tempfile.mkdtemp(prefix="grok1-lmeval-")
    subjects = sorted(f[: -len("_test.csv")] for f in os.listdir(os.path.join(MMLU, "test")))
    tasks = []
    for subject in subjects:
        task = f"grok1_fixture_{subject}"
        test = os.path.join(tmp, f"{subject}_test.jsonl")
        dev = os.path.join(tmp, f"{subject}_dev.jsonl")
        csv_to_jsonl(os.path.join(MMLU, "test", f"{subject}_test.csv"), test)
        csv_to_jsonl(os.path.join(MMLU, "dev", f"{subject}_dev.csv"), dev)
        with open(os.path.join(tmp, f"{task}.yaml"), "w") as f:
            f.write(YAML.format(task=task, test=test, dev=dev, words=subject.replace("_", " ")))
        tasks.append((subject, task))

    port = free_port()
    model_flag = [] if model == "demo" else ["--model", model]
    server = subprocess.Popen([binary, "serve", *model_flag, "--port", str(port)],
                              stderr=subprocess.PIPE, text=True)
    try:
        while "listening on" not in (server.stderr.readline() or "listening on"):
            pass
        # The server logs a line per request: keep reading so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        info = json.load(__import__("urllib.request").request.urlopen(url + "/v1/models"))
        name = info["data"][0]["id"]
        max_len = info["data"][0]["max_model_len"]
        # lm_eval keeps max_length - 1 tokens (one more is generated), as grok1 eval does.
        model_args = (f"base_url={url}/v1/completions,model={name},tokenizer_backend=remote,"
                      f"tokenized_requests=True,num_concurrent=4,max_retries=3,max_length={max_len}")
        out = os.path.join(tmp, "lm_eval_out")
        subprocess.run([lm_eval, "--model", "local-completions", "--model_args", model_args,
                        "--tasks", ",".join(t for _, t in tasks), "--include_path", tmp,
                        "--log_samples", "--output_path", out], check=True)
        ours_path = os.path.join(tmp, "grok1.jsonl")
        subprocess.run([binary, "eval", "--task", "mmlu", "--data", MMLU, "--server", url,
                        "--out", ours_path], check=True)
        subprocess.run([binary, "eval", "--task", "mmlu", "--data", MMLU, *model_flag,
                        "--out", os.path.join(tmp, "grok1-direct.jsonl")], check=True)
    finally:
        server.terminate()
        server.wait()

    ours = {}
    for path, how in [(ours_path, "server"), (os.path.join(tmp, "grok1-direct.jsonl"), "direct")]:
        for line in open(path):
            r = json.loads(line)
            ours[(how, r["id"])] = r["loglikelihoods"]
    worst = 0.0
    n = 0
    for subject, task in tasks:
        files = glob.glob(os.path.join(out, "**", f"samples_{task}_*.jsonl"), recursive=True)
        assert files, f"lm_eval wrote no samples for {task}"
        for line in open(files[0]):
            s = json.loads(line)
            theirs = [float(r[0][0]) for r in s["resps"]]
            for how in ["server", "direct"]:
                mine = ours[(how, f"{subject}/{s['doc_id']}")]
                diff = max(abs(a - b) for a, b in zip(mine, theirs))
                worst = max(worst, diff)
                print(f"{subject}/{s['doc_id']} ({how}): lm_eval {[round(x, 5) for x in theirs]} "
                      f"grok1 {[round(x, 5) for x in mine]} max diff {diff:.2e}")
            n += 1
    print(f"{n} items x 4 choices: largest difference {worst:.2e}")
    shutil.rmtree(tmp, ignore_errors=True)
    if worst > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
