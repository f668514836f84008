#!/usr/bin/env python3
"""The cost of constrained decoding at batch 1: decode time per token of
`grok1 serve` with and without a JSON schema, and the grammar's own time.

    python3 bench/structured_output.py GROK1 [--model DIR] [--baseline OLD_GROK1]
        [--rounds 5] [--tokens 64] [--threads N]

Starts `GROK1 serve --model DIR --max-batch 1` (and, with --baseline, the
older binary beside it; requests run one at a time, so the idle one costs
nothing), then alternates, each round:
  - unconstrained: a streamed completion of --tokens tokens (ignore_eos);
    the baseline's too, when given;
  - constrained: a streamed chat completion under a JSON schema whose output
    is long (8 strings of 8 to 16 characters).
Decode time per token is (last token's arrival - first's) / (tokens - 1), so
prefill is left out. The server logs, per constrained request (debug level),
the grammar's mean time per mask on its own thread and the mean time the
engine waited for it (what the overlap with the forward pass did not hide).
Prints medians (min - max) over the rounds and one JSON line last.
"""
import argparse
import json
import re
import statistics
import subprocess
import threading
import time
import urllib.request

SCHEMA = {
    "type": "object",
    "properties": {
        "words": {"type": "array", "items": {"type": "string", "minLength": 8, "maxLength": 16},
                  "minItems": 8, "maxItems": 8},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000},
    },
    "required": ["words", "count"],
    "additionalProperties": False,
}


class Server:
    def __init__(self, binary, model, threads):
        cmd = [binary, "serve", "--port", "0", "--max-batch", "1",
               "--log-level", "info,grok1_server::structured=debug"]
        if model:
            cmd += ["--model", model]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.grammar = []
        self.base = None
        deadline = time.time() + 300
        for line in self.proc.stderr:
            m = re.search(r"listening on (http://[0-9.:]+)", line)
            if m:
                self.base = m.group(1)
                break
            if time.time() > deadline:
                break
        if not self.base:
            raise RuntimeError(f"{binary} did not start")
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self):
        for line in self.proc.stderr:
            if "grammar done" in line:
                mask = re.search(r"mask_us_mean=([0-9.]+)", line)
                wait = re.search(r"wait_us_mean=([0-9.]+)", line)
                if mask and wait:
                    self.grammar.append((float(mask.group(1)), float(wait.group(1))))

    def stream(self, path, body):
        """Seconds per decoded token and the tokens, from a streamed request."""
        body = dict(body, stream=True, stream_options={"include_usage": True})
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        first = last = None
        tokens = 0
        with urllib.request.urlopen(req, timeout=600) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
        return (last - first) / max(tokens - 1, 1), tokens

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def summary(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f} - {max(values):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grok1")
    ap.add_argument("--model", help="the model (default: the built-in demo model)")
    ap.add_argument("--baseline", help="an older grok1 binary: its unconstrained decode, alternated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()

    new = Server(args.grok1, args.model, args.threads)
    old = Server(args.baseline, args.model, args.threads) if args.baseline else None
    plain = {"prompt": "The answer to life, the universe and everything is", "max_tokens": args.tokens,
             "temperature": 0, "ignore_eos": True}
    constrained = {"messages": [{"role": "user", "content": "List some words as JSON."}], "max_tokens": 400,
                   "temperature": 0,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "words", "schema": SCHEMA}}}
    # One warm-up each (the grammar compiler's token trie is built on first use).
    new.stream("/v1/completions", plain)
    new.stream("/v1/chat/completions", constrained)
    if old:
        old.stream("/v1/completions", plain)
    new.grammar.clear()
    rows = {"unconstrained": [], "constrained": [], "baseline unconstrained": []}
    constrained_tokens = []
    for r in range(args.rounds):
        order = [("unconstrained", new, "/v1/completions", plain),
                 ("constrained", new, "/v1/chat/completions", constrained)]
        if old:
            order.insert(r % 2, ("baseline unconstrained", old, "/v1/completions", plain))
        for name, server, path, body in order:
            per_token, tokens = server.stream(path, body)
            rows[name].append(per_token * 1e3)
            if name == "constrained":
                constrained_tokens.append(tokens)
    time.sleep(0.5)  # the last constrained request's log line
    masks = [m for m, _ in new.grammar]
    waits = [w for _, w in new.grammar]
    new.stop()
    if old:
        old.stop()
    print(f"decode ms/token at batch 1, {args.rounds} rounds alternated, medians (min - max):")
    for name, values in rows.items():
        if values:
            print(f"  {name:24} {summary(values)}")
    print(f"  constrained tokens per reply: {summary(constrained_tokens)}")
    mask_ms = statistics.median(masks) / 1e3
    wait_ms = statistics.median(waits) / 1e3
    decode_ms = statistics.median(rows["unconstrained"])
    print(f"grammar: {mask_ms:.3f} ms per mask on its thread ({100 * mask_ms / decode_ms:.1f}% of an "
          f"unconstrained token), the engine waited {wait_ms:.3f} ms per token for it "
          f"({100 * wait_ms / decode_ms:.1f}%)")
    print(json.dumps({
        "unconstrained_ms": statistics.median(rows["unconstrained"]),
        "constrained_ms": statistics.median(rows["constrained"]),
        "baseline_unconstrained_ms": statistics.median(rows["baseline unconstrained"]) if old else None,
        "mask_ms": mask_ms, "wait_ms": wait_ms, "rounds": args.rounds,
        "constrained_tokens": statistics.median(constrained_tokens),
    }))


if __name__ == "__main__":
    main()
