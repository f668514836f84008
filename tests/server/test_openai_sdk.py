#!/usr/bin/env python3
"""The real `grok1 serve` driven by the official `openai` Python package.

    python3 tests/server/test_openai_sdk.py path/to/grok1

Starts the server on a free loopback port with the tiny-vocab fixture model and
an API key, runs every check, stops the server with SIGTERM while a stream is in
flight (it must exit 0 within its grace period), and prints
`N passed, M failed`. Exits non-zero if anything failed.

With GROK1_SERVE_LAUNCHER set (e.g. "mpirun -np 2 --oversubscribe"), the
server runs under that launcher and SIGTERM goes to its rank 0.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(ROOT, "tests", "fixtures", "models", "tiny-vocab")
KEY = "sdk-test-key"
PROMPT = "The answer to life the universe and everything is of course"
# The official reference's greedy continuation (fixture README, f32 run).
REFERENCE = "FACEFACEikasikasikasikasikasikas Big Big Big tiger rode maf Eenlonger"
LAUNCHER = shlex.split(os.environ.get("GROK1_SERVE_LAUNCHER", ""))


def rank_0(proc):
    """The server process: the launcher's child of MPI rank 0, or proc itself."""
    if not LAUNCHER:
        return proc.pid
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                rank0 = b"OMPI_COMM_WORLD_RANK=0" in f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == proc.pid and rank0:
            return int(pid)
    raise RuntimeError("no rank 0 under the launcher")


def start(binary):
    proc = subprocess.Popen(
        # f32: the reference continuations are the f32 run's.
        LAUNCHER + [binary, "serve", "--model", MODEL_DIR, "--precision", "f32", "--port", "0", "--api-key", KEY,
         "--max-batch", "8", "--shutdown-grace", "3"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    for line in proc.stderr:
        match = re.search(r"listening on (http://[0-9.:]+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, match.group(1)
        if time.time() > deadline:
            break
    raise RuntimeError("the server did not start")


def main():
    binary = sys.argv[1]
    proc, base = start(binary)
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
    results = []

    def check(name):
        def wrap(fn):
            try:
                fn()
                results.append((name, None))
                print(f"ok   {name}")
            except Exception:
                results.append((name, traceback.format_exc()))
                print(f"FAIL {name}\n{traceback.format_exc()}")
        return wrap

    @check("models")
    def _():
        ids = [m.id for m in client.models.list()]
        assert ids == ["tiny-vocab"], ids

    @check("models.retrieve: the served model, and NotFoundError for another")
    def _():
        m = client.models.retrieve("tiny-vocab")
        assert m.id == "tiny-vocab" and m.object == "model", m
        try:
            client.models.retrieve("gpt-4o")
            raise AssertionError("an unknown model must be a 404")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body

    @check("fields the SDK and LangChain send that change nothing are accepted")
    def _():
        messages = [{"role": "user", "content": "Say something.", "name": "ann"},
                    {"role": "assistant", "content": "Hi.", "refusal": None, "tool_calls": None},
                    {"role": "user", "content": "Again."}]
        plain = [{k: v for k, v in m.items() if k in ("role", "content")} for m in messages]
        want = client.chat.completions.create(model="tiny-vocab", messages=plain, max_tokens=6, temperature=0)
        got = client.chat.completions.create(model="tiny-vocab", messages=messages, max_tokens=6, temperature=0,
                                             store=False, metadata={"run": "sdk"}, service_tier="auto", user="u-1",
                                             reasoning_effort="low", parallel_tool_calls=False)
        assert got.choices[0].message.content == want.choices[0].message.content
        try:
            client.chat.completions.create(model="tiny-vocab", messages=plain, max_tokens=2, tool_choice="required")
            raise AssertionError("tool_choice required must be refused")
        except openai.BadRequestError as e:
            assert e.body["param"] == "tools", e.body

    @check("completion equals grok1 generate and the reference")
    def _():
        r = client.completions.create(model="tiny-vocab", prompt=PROMPT, max_tokens=16, temperature=0)
        generated = subprocess.run([binary, "generate", "--precision", "f32", "--model", MODEL_DIR, "--prompt", PROMPT, "--max-tokens", "16"],
                                   capture_output=True, text=True, check=True).stdout
        assert r.choices[0].text == REFERENCE, r.choices[0].text
        assert r.choices[0].text == generated.rstrip("\n"), generated
        assert r.choices[0].finish_reason == "length"
        assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 16 and r.usage.total_tokens == 27

    @check("completion from token ids")
    def _():
        r = client.completions.create(model="tiny-vocab", prompt=[422, 3033, 356, 1180, 333, 9072, 360, 2175, 391, 359, 1805],
                                      max_tokens=16, temperature=0)
        assert r.choices[0].text == REFERENCE

    @check("streaming completion")
    def _():
        stream = client.completions.create(model="tiny-vocab", prompt=PROMPT, max_tokens=16, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        for chunk in stream:
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
            usage = chunk.usage or usage
        assert text == REFERENCE, text
        assert finish == "length"
        assert usage is not None and usage.completion_tokens == 16

    @check("chat and streaming chat")
    def _():
        messages = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Say something."}]
        r = client.chat.completions.create(model="tiny-vocab", messages=messages, max_tokens=8, temperature=0)
        content = r.choices[0].message.content
        assert r.choices[0].message.role == "assistant"
        assert isinstance(content, str) and content == content.strip() and content
        assert r.usage.completion_tokens > 0
        streamed = ""
        for chunk in client.chat.completions.create(model="tiny-vocab", messages=messages, max_tokens=8, temperature=0, stream=True):
            for c in chunk.choices:
                streamed += c.delta.content or ""
        assert streamed.strip() == content, (streamed, content)

    @check("logprobs with top alternatives")
    def _():
        r = client.completions.create(model="tiny-vocab", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
        lp = r.choices[0].logprobs
        assert len(lp.tokens) == 5 and len(lp.token_logprobs) == 5 and len(lp.top_logprobs) == 5
        assert all(x <= 0 for x in lp.token_logprobs)
        for top, chosen in zip(lp.top_logprobs, lp.token_logprobs):
            assert len(top) >= 1 and max(top.values()) >= chosen - 1e-6
        c = client.chat.completions.create(model="tiny-vocab", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                           temperature=0, logprobs=True, top_logprobs=2)
        content = c.choices[0].logprobs.content
        assert len(content) >= 1 and len(content[0].top_logprobs) == 2

    @check("echo scoring with max_tokens 0 (lm-evaluation-harness loglikelihood)")
    def _():
        r = client.completions.create(model="tiny-vocab", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
        lp = r.choices[0].logprobs
        assert r.choices[0].text == PROMPT
        assert len(lp.tokens) == 11
        assert lp.token_logprobs[0] is None
        assert all(isinstance(x, float) and x < 0 for x in lp.token_logprobs[1:])
        assert r.usage.completion_tokens == 0

    @check("n > 1")
    def _():
        r = client.completions.create(model="tiny-vocab", prompt="Hello", max_tokens=6, temperature=1.0, seed=11, n=3)
        assert sorted(c.index for c in r.choices) == [0, 1, 2]
        assert r.usage.completion_tokens == 18
        again = client.completions.create(model="tiny-vocab", prompt="Hello", max_tokens=6, temperature=1.0, seed=11, n=3)
        assert [c.text for c in again.choices] == [c.text for c in r.choices]

    @check("stop strings")
    def _():
        r = client.completions.create(model="tiny-vocab", prompt=PROMPT, max_tokens=16, temperature=0, stop=["ikasika"])
        assert r.choices[0].text == "FACEFACE" and r.choices[0].finish_reason == "stop"
        chunks = client.completions.create(model="tiny-vocab", prompt=PROMPT, max_tokens=16, temperature=0, stop="Big", stream=True)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "FACEFACEikasikasikasikasikasikas "

    @check("errors through the SDK")
    def _():
        for kwargs, error in [
            (dict(model="nope", prompt="x"), openai.NotFoundError),
            (dict(model="tiny-vocab", prompt="x", max_tokens=10_000), openai.BadRequestError),
            (dict(model="tiny-vocab", prompt=[5, 10**9]), openai.BadRequestError),
            (dict(model="tiny-vocab", prompt="x", frequency_penalty=3.0), openai.BadRequestError),
        ]:
            try:
                client.completions.create(**kwargs)
                raise AssertionError(f"{kwargs} should fail")
            except error as e:
                assert e.body and "message" in e.body, e.body
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("a wrong key must be refused")
        except openai.AuthenticationError:
            pass

    @check("raw HTTP: invalid JSON, health without a key")
    def _():
        req = urllib.request.Request(base + "/v1/completions", data=b"{oops", headers={"Authorization": "Bearer " + KEY})
        try:
            urllib.request.urlopen(req)
            raise AssertionError("invalid JSON must be refused")
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
            assert e.code == 400 and body["error"]["type"] == "invalid_request_error", body
        with urllib.request.urlopen(base + "/health") as r:
            assert json.loads(r.read()) == {"status": "ok"}

    @check("SIGTERM during a stream: the stream ends and the server exits 0")
    def _():
        stream = client.completions.create(model="tiny-vocab", prompt="Hello", max_tokens=110, temperature=0, stream=True)
        first = next(iter(stream))
        assert first.choices
        os.kill(rank_0(proc), signal.SIGTERM)
        finish = None
        try:
            for chunk in stream:
                for c in chunk.choices:
                    finish = c.finish_reason or finish
        except openai.APIError as e:
            # Cut short by the shutdown: "length", then the error event saying why.
            assert finish == "length" and "shutting down" in str(e), (finish, e)
        else:
            # The stream finished within the grace period.
            assert finish in ("length", "stop"), finish
        code = proc.wait(timeout=30)
        assert code == 0, code

    if proc.poll() is None:
        proc.kill()
    failed = [n for n, e in results if e]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


main()
