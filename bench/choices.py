#!/usr/bin/env python3
"""Time of a completion with `n` choices of one prompt, against a running
`grok1 serve` (with its prefix cache the prompt is computed once, the other
choices taking its pages; without it, `n` times).

    grok1 serve --model M &
    python3 bench/choices.py [--url http://127.0.0.1:8000] [--prompt 512] [--n 8] [--max-tokens 4] [--rounds 3]

Each round sends one completion (not streamed) of a prompt of `--prompt`
random token ids never sent before, `n` choices of `--max-tokens` tokens at
temperature 1, and times it from sending to the whole response. Prints each
round (seconds, the usage's prompt tokens and cached tokens) and the
median. Run it against two servers (say one with `--no-prefix-cache`, or
an older binary) for a ratio. Uses only the Python standard library.
"""
import argparse
import http.client
import json
import random
import statistics
import time
import urllib.parse


def complete(url, prompt, n, max_tokens, api_key):
    """(seconds, usage) of one completion with `n` choices."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=1800)
    body = json.dumps({
        "prompt": prompt,
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "ignore_eos": True,
    })
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    resp = conn.getresponse()
    data = resp.read()
    seconds = time.perf_counter() - start
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {data.decode(errors='replace')}")
    reply = json.loads(data)
    if len(reply.get("choices", [])) != n:
        raise SystemExit(f"expected {n} choices: {reply}")
    return seconds, reply.get("usage", {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key")
    ap.add_argument("--prompt", type=int, default=512, help="prompt, tokens")
    ap.add_argument("--n", type=int, default=8, help="choices")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=131072, help="ids are drawn below this")
    ap.add_argument("--seed", type=int, default=None, help="default: the clock (a fresh prompt each round)")
    args = ap.parse_args()
    if args.prompt < 1 or args.n < 1 or args.rounds < 1:
        ap.error("--prompt, --n and --rounds must be at least 1")
    rng = random.Random(args.seed if args.seed is not None else time.time_ns())
    times = []
    for r in range(args.rounds):
        # Ids from 3 up: past the pad, BOS and EOS of Grok-1's vocabulary.
        prompt = [rng.randrange(3, args.vocab) for _ in range(args.prompt)]
        seconds, usage = complete(args.url, prompt, args.n, args.max_tokens, args.api_key)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        print(f"round {r + 1}: {seconds:.3f} s, prompt_tokens {usage.get('prompt_tokens')}, "
              f"cached_tokens {cached}", flush=True)
        times.append(seconds)
    print(f"median {statistics.median(times):.3f} s over {args.rounds} rounds "
          f"(n={args.n}, prompt {args.prompt} tokens, {args.max_tokens} tokens each)")


if __name__ == "__main__":
    main()
