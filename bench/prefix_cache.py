#!/usr/bin/env python3
"""Time to first token with and without a cached prefix, against a running
`grok1 serve`.

    grok1 serve &                                  # the demo model, prefix cache on
    python3 bench/prefix_cache.py [--url http://127.0.0.1:8000] [--prefix 900] [--new 10] [--rounds 3]

Each round makes a prefix of `--prefix` random token ids never sent before
(so the first request finds nothing cached), then sends, one after the other,
two streamed completions of one token: the prefix plus `--new` tokens, then
the same prefix plus `--new` other tokens. The time to first token of each is
the time from sending the request to the first chunk that carries a choice;
`cached_tokens` is read from the streamed usage chunk
(`usage.prompt_tokens_details.cached_tokens`). Prints each round and the
median speed-up (first request's TTFT over the second's). With `--check`,
exits 1 unless the median speed-up reaches `--min-speedup` and every second
request reports at least `--min-cached` cached tokens.
Uses only the Python standard library.
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse


def stream_ttft(url, prompt, api_key):
    """(seconds to the first choice chunk, cached_tokens, prompt_tokens)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=600)
    body = json.dumps({
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {resp.read().decode(errors='replace')}")
    ttft, usage = None, None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise SystemExit(f"error event: {chunk}")
        if ttft is None and chunk.get("choices"):
            ttft = time.perf_counter() - start
        if chunk.get("usage"):
            usage = chunk["usage"]
    conn.close()
    if ttft is None or usage is None:
        raise SystemExit("the stream had no choice chunk or no usage chunk")
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens")
    return ttft, cached, usage["prompt_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key")
    ap.add_argument("--prefix", type=int, default=900, help="shared prefix, tokens")
    ap.add_argument("--new", type=int, default=10, help="tokens after the prefix")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=131072, help="ids are drawn below this")
    ap.add_argument("--seed", type=int, default=None, help="default: the clock (a fresh prefix each run)")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--min-speedup", type=float, default=5.0)
    ap.add_argument("--min-cached", type=int, default=880)
    args = ap.parse_args()
    rng = random.Random(args.seed if args.seed is not None else time.time_ns())
    # Ids from 1000 up: clear of the control and byte tokens at the start.
    draw = lambda n: [rng.randrange(1000, args.vocab) for _ in range(n)]
    speedups, cached_seen = [], []
    print(f"{args.url}: prefix {args.prefix} tokens + {args.new} new, {args.rounds} rounds")
    for r in range(args.rounds):
        prefix = draw(args.prefix)
        first = stream_ttft(args.url, prefix + draw(args.new), args.api_key)
        second = stream_ttft(args.url, prefix + draw(args.new), args.api_key)
        speedups.append(first[0] / second[0])
        cached_seen.append(second[1])
        print(f"round {r + 1}: first TTFT {first[0] * 1000:.1f} ms (cached_tokens {first[1]}, prompt {first[2]}), "
              f"second TTFT {second[0] * 1000:.1f} ms (cached_tokens {second[1]}), speed-up {speedups[-1]:.1f}x")
    median = statistics.median(speedups)
    print(f"median speed-up {median:.1f}x; second request's cached_tokens {cached_seen}")
    if args.check:
        ok = median >= args.min_speedup and all(c is not None and c >= args.min_cached for c in cached_seen)
        print("PASS" if ok else f"FAIL: want speed-up >= {args.min_speedup}x and cached_tokens >= {args.min_cached}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
