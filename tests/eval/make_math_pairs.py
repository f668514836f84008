"""Writes tests/fixtures/eval/math_pairs.jsonl: MATH-style answer pairs with the
verdict a careful grader gives ("expected"), for checking grok1's MATH answer
equivalence (crates/grok1-eval/tests/math_pairs.rs) and comparing it with the
math-verify package (tests/eval/math_verify_compare.py).

Each group lists forms of one answer as MATH references and model outputs
write them; pairs inside a group are equivalent, pairs of neighbouring groups
are not. Run: python3 tests/eval/make_math_pairs.py
"""
import itertools
import json
import os

GROUPS = [
    # fractions and decimals
    [r"\frac{1}{2}", r"\dfrac{1}{2}", r"\tfrac12", r"0.5", r"1/2", r"\frac12"],
    [r"\frac{3}{4}", r"\dfrac34", r"0.75", r"3/4"],
    [r"-\frac{2}{3}", r"\frac{-2}{3}", r"-\dfrac{2}{3}", r"-2/3"],
    [r"\frac{5}{2}", r"2.5", r"\dfrac{5}{2}"],
    [r"\frac{7}{3}", r"\dfrac{7}{3}", r"7/3"],
    [r"\frac{1}{8}", r"0.125", r"\frac18"],
    # integers with decoration
    [r"24", r"24.", r"24.0", r"\$24", r"24\text{ dollars}"],
    [r"1000", r"1,000", r"1{,}000", r"\$1,000"],
    [r"30", r"30^\circ", r"30^{\circ}", r"30\text{ degrees}"],
    [r"50", r"50\%", r"50\text{\%}"],
    [r"16", r"x=16", r"n = 16", r"16\text{ times}"],
    [r"-5", r"-5.0", r"x = -5"],
    [r"0", r"0.0", r"x=0"],
    [r"12", r"12\text{ inches}", r"12 \text{ cm}"],
    # radicals and pi
    [r"\sqrt{2}", r"\sqrt2", r"2^{1/2}", r"\frac{2}{\sqrt{2}}"],
    [r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", r"\frac{\sqrt3}{3}", r"\dfrac{\sqrt{3}}{3}"],
    [r"2\sqrt{5}", r"\sqrt{20}", r"2 \sqrt 5"],
    [r"3\sqrt{2}", r"\sqrt{18}", r"3\sqrt2"],
    [r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt2}", r"\dfrac{\sqrt2}{2}"],
    [r"2\pi", r"2 \pi", r"\pi \cdot 2"],
    [r"\frac{\pi}{4}", r"\dfrac{\pi}{4}", r"\pi/4"],
    [r"9\pi", r"9 \pi", r"\pi 9"],
    [r"\sqrt[3]{2}", r"2^{1/3}", r"2^{\frac{1}{3}}"],
    # tuples, intervals, lists
    [r"(1,2)", r"(1, 2)", r"\left(1,2\right)", r"(1,\ 2)"],
    [r"(3,\frac{1}{4})", r"\left(3, \frac14\right)", r"(3, 0.25)"],
    [r"[2,5)", r"[2, 5)", r"\left[2,5\right)"],
    [r"(-\infty,3]", r"(-\infty, 3]", r"\left(-\infty,3\right]"],
    [r"1,2,3", r"1, 2, 3", r"3,2,1", r"2, 1, 3"],
    [r"-1,4", r"4, -1", r"-1, 4"],
    # algebraic expressions
    [r"2x+2", r"2(x+1)", r"2+2x", r"x \cdot 2 + 2"],
    [r"x^2-1", r"(x-1)(x+1)", r"(x+1)(x-1)", r"-1+x^2"],
    [r"3x^2", r"3 x^2", r"x^2 \cdot 3"],
    [r"\frac{x}{2}", r"\frac12 x", r"0.5x", r"x/2"],
    [r"a+b", r"b+a"],
    [r"y=2x+3", r"2x+3", r"y = 3 + 2x"],
    # text answers
    [r"\text{Monday}", r"Monday", r"\textbf{Monday}"],
    [r"\text{(C)}", r"(C)", r"\text{(C)}"],
    [r"\text{even}", r"even", r"\mbox{even}"],
    # matrices and vectors written alike
    [r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"],
    # numbers that look alike but differ from the group before or after
    [r"\frac{1}{3}", r"\dfrac13", r"1/3"],
    [r"0.33", r"\frac{33}{100}"],
    [r"6.28", r"6.280"],
    [r"25", r"25.0"],
    [r"5", r"5."],
    # harder: powers, mixed numbers, sets, membership, money
    [r"1024", r"2^{10}", r"2^10"],
    [r"\frac{3}{2}", r"1\frac{1}{2}", r"1.5"],
    [r"4.5", r"\frac{9}{2}", r"4\frac12"],
    [r"\{1,2\}", r"\{2,1\}", r"\{1, 2\}"],
    [r"[2,5)", r"x\in[2,5)", r"x \in [2, 5)"],
    [r"5.5", r"\$5.50", r"5.50"],
]

# Near misses: pairs a sloppy grader might accept and a careful one must not.
NOT_EQUAL = [
    (r"\frac{1}{3}", r"0.33"),
    (r"\frac{1}{3}", r"0.333"),
    (r"2\pi", r"6.28"),
    (r"\sqrt{2}", r"1.414"),
    (r"(1,2)", r"(2,1)"),
    (r"[2,5)", r"[2,5]"),
    (r"[2,5)", r"(2,5)"),
    (r"2x+2", r"2x+1"),
    (r"x^2-1", r"x^2+1"),
    (r"24", r"42"),
    (r"-5", r"5"),
    (r"\frac{3}{4}", r"\frac{4}{3}"),
    (r"1000", r"100"),
    (r"\text{Monday}", r"\text{Tuesday}"),
    (r"\text{(C)}", r"\text{(D)}"),
    (r"1,2,3", r"1,2"),
    (r"1,2,3", r"1,2,4"),
    (r"-1,4", r"1,-4"),
    (r"a+b", r"a-b"),
    (r"3x^2", r"3x^3"),
    (r"\frac{x}{2}", r"2x"),
    (r"\sqrt[3]{2}", r"\sqrt{2}"),
    (r"9\pi", r"9"),
    (r"\frac{\pi}{4}", r"\frac{\pi}{2}"),
    (r"30", r"60"),
    (r"0", r"1"),
    (r"(-\infty,3]", r"(-\infty,3)"),
    (r"\{1,2\}", r"\{1,3\}"),
    (r"2^{10}", r"1000"),
    (r"1\frac{1}{2}", r"\frac{1}{2}"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}"),
]


def main():
    pairs = []
    for g in GROUPS:
        forms = list(dict.fromkeys(g))
        for a, b in itertools.combinations(forms, 2):
            pairs.append({"gold": a, "pred": b, "expected": True})
    for a, b in NOT_EQUAL:
        pairs.append({"gold": a, "pred": b, "expected": False})
    # Each group's first form against the next group's: different answers.
    for g, h in zip(GROUPS, GROUPS[1:]):
        pairs.append({"gold": g[0], "pred": h[0], "expected": False})
    out = os.path.join(os.path.dirname(__file__), "../fixtures/eval/math_pairs.jsonl")
    with open(out, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    print(f"{len(pairs)} pairs ({sum(p['expected'] for p in pairs)} equivalent) -> {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
