"""Compares grok1's MATH answer equivalence with the math-verify package
(PyPI `math-verify`, HuggingFace's grader) on the committed answer pairs.

Each pair becomes a MATH problem whose reference solution boxes `gold` and a
sample that boxes `pred`; `grok1 eval --task math --samples` scores them, so
the whole scoring path is used. math-verify judges the same pairs with
verify(parse(gold), parse(pred)). Prints the agreement, every disagreement,
and how each side fares against the pairs' expected verdicts.

Usage: python tests/eval/math_verify_compare.py GROK1_BINARY PAIRS.jsonl [--strict]
--strict: exit 1 unless grok1 matches every expected verdict.
"""
import json
import os
import subprocess
import sys
import tempfile

from math_verify import parse, verify


def main():
    binary, pairs_path = sys.argv[1], sys.argv[2]
    strict = "--strict" in sys.argv
    pairs = [json.loads(l) for l in open(pairs_path) if l.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "math")
        os.makedirs(data)
        samples = os.path.join(tmp, "samples.jsonl")
        with open(samples, "w") as s:
            for i, p in enumerate(pairs):
                name = f"{i:04d}.json"
                with open(os.path.join(data, name), "w") as f:
                    json.dump({"problem": f"pair {i}", "level": "Level 1", "type": "pairs",
                               "solution": "The answer is $\\boxed{" + p["gold"] + "}$."}, f)
                s.write(json.dumps({"id": name, "completion": "So it is $\\boxed{" + p["pred"] + "}$."}) + "\n")
        out = os.path.join(tmp, "out.jsonl")
        subprocess.run([binary, "eval", "--task", "math", "--data", data, "--samples", samples,
                        "--out", out], check=True, stdout=subprocess.DEVNULL)
        ours = {}
        for line in open(out):
            r = json.loads(line)
            ours[int(r["id"].split(".")[0])] = r["correct"]
    agree = 0
    ours_right = mv_right = 0
    disagreements = []
    for i, p in enumerate(pairs):
        mv = bool(verify(parse("$" + p["gold"] + "$"), parse("$" + p["pred"] + "$")))
        g = ours[i]
        agree += g == mv
        ours_right += g == p["expected"]
        mv_right += mv == p["expected"]
        if g != mv:
            disagreements.append((p, g, mv))
    n = len(pairs)
    print(f"pairs: {n} ({sum(p['expected'] for p in pairs)} equivalent)")
    print(f"grok1 vs math-verify: agree on {agree}/{n} ({100 * agree / n:.1f}%)")
    print(f"matching the expected verdict: grok1 {ours_right}/{n}, math-verify {mv_right}/{n}")
    for p, g, mv in disagreements:
        print(f"  gold {p['gold']!r:40} pred {p['pred']!r:32} expected {p['expected']!s:5} grok1 {g!s:5} math-verify {mv}")
    if strict and ours_right != n:
        sys.exit(1)


if __name__ == "__main__":
    main()
