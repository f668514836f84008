#!/usr/bin/env python3
"""`grok1 serve`, `chat` and `eval` under mpirun, and how a job ends: greedy
completions (f32) and prefix-cache reuse equal one process's at N = 2 and 4;
two chat turns and a small eval equal one process's; an idle server longer
than the wait limit stays up; SIGTERM to rank 0 ends every rank with exit 0;
a hung rank (SIGSTOP) makes rank 0 name it and the job end within the wait
limit (GROK1_MPI_TIMEOUT); Ctrl-C at a terminal (SIGINT to mpirun) stops
the server on rank 0 gracefully and leaves no rank running; kill -9 of a
rank during a stream ends the job with an error; different engine settings are refused; a
`chat --session` file saved by one process or by N=2 resumes in either.
Standard library only.

usage: check_serve.py GROK1_BINARY [--mpirun-args "..."]
"""

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
MOE = os.path.join(MODELS, "tiny-moe")
VOCAB = os.path.join(MODELS, "tiny-vocab")
SCRATCH = os.path.join(ROOT, "target", "ci-mpi")


def mpi_env(**extra):
    # One thread per rank (ranks share 2 cores in CI); no cross-memory
    # attach between ranks, which containers often forbid (ptrace).
    env = dict(os.environ, RAYON_NUM_THREADS="1", **extra)
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return env


def fail(message):
    sys.exit(f"FAIL: {message}")


class Server:
    """`grok1 serve` on a free port, under mpirun with np_ ranks (0: without)."""

    def __init__(self, r, np_, args, env=None):
        cmd = [r.binary, "serve", "--port", "0"] + args
        if np_:
            cmd = ["mpirun", "-np", str(np_)] + r.mpirun_args + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=env or mpi_env())
        self.lines = []
        listening = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(120) or self.proc.poll() is not None:
            fail(f"{' '.join(cmd)} did not start:\n{self.stderr()}")
        self.base = re.search(r"listening on (http://[0-9.:]+)", "".join(self.lines)).group(1)

    def stderr(self):
        return "".join(self.lines)

    def rank_pid(self, rank):
        return Server.rank_of(self.proc, rank)

    @staticmethod
    def rank_of(mpirun, rank):
        """The pid of rank `rank`: mpirun's child with that OMPI_COMM_WORLD_RANK."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != mpirun.pid:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                        return int(pid)
            except (OSError, ValueError, IndexError):
                continue
        fail(f"no rank {rank} under mpirun {mpirun.pid}")

    def complete(self, body, timeout=120):
        req = urllib.request.Request(self.base + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def wait(self, limit):
        """Exit code and seconds taken, killing the job past `limit` seconds."""
        start = time.time()
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail(f"the job did not end within {limit} s:\n{self.stderr()}")
        time.sleep(0.2)  # the reader thread takes the last lines
        return code, time.time() - start

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Runner:
    def __init__(self, binary, mpirun_args):
        self.binary = os.path.abspath(binary)
        self.mpirun_args = mpirun_args

    def run(self, np_, args, stdin=None, env=None):
        cmd = [self.binary] + args
        if np_:
            cmd = ["mpirun", "-np", str(np_)] + self.mpirun_args + cmd
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env or mpi_env(), timeout=300)


def prompts():
    """A 41-token prompt, one sharing its first 37 tokens (two pages and 5
    tokens of a third), and one that is wholly a cached prefix."""
    shared = [3 + (i * 37) % 1000 for i in range(37)]
    return [shared + [11, 12, 13, 14], shared + [21, 22, 23, 24, 25], shared[:32]]


def serve_greedy(server):
    out = []
    for prompt in prompts():
        r = server.complete({"model": "tiny-moe", "prompt": prompt, "max_tokens": 12, "temperature": 0,
                             "logprobs": 1})
        lp = r["choices"][0]["logprobs"]
        out.append((r["choices"][0]["text"], lp["tokens"], r["usage"]["prompt_tokens_details"]["cached_tokens"],
                    lp["token_logprobs"]))
    return out


def check_greedy_and_reuse(r):
    args = ["--model", MOE, "--precision", "f32"]
    one_server = Server(r, 0, args)
    one = serve_greedy(one_server)
    one_server.stop()
    if not (one[1][2] >= 32 and one[2][2] == 31):
        fail(f"one process: cached tokens {[o[2] for o in one]}")
    for np_ in (2, 4):
        # A wait limit shorter than the idle time below: idle is not a hang.
        server = Server(r, np_, args, env=mpi_env(GROK1_MPI_TIMEOUT="3"))
        got = serve_greedy(server)
        for i, (a, b) in enumerate(zip(got, one)):
            if a[:3] != b[:3]:
                fail(f"serve N={np_} request {i}: {a[:3]} != one process's {b[:3]}")
            worst = max(abs(x - y) for x, y in zip(a[3], b[3]))
            if worst > 1e-4:
                fail(f"serve N={np_} request {i}: logprobs {worst:.2e} from one process's")
        time.sleep(4)
        again = serve_greedy(server)
        if [a[:2] for a in again] != [o[:2] for o in one]:
            fail(f"serve N={np_}: after 4 s idle (wait limit 3 s) the answers changed")
        os.kill(server.rank_pid(0), signal.SIGTERM)
        code, took = server.wait(30)
        if code != 0 or "grok1: stopped" not in server.stderr():
            fail(f"serve N={np_}: SIGTERM to rank 0: exit {code}\n{server.stderr()}")
        print(f"ok: serve N={np_}: greedy completions and cached_tokens {[g[2] for g in got]} equal one "
              f"process's; idle past the wait limit stays up; SIGTERM to rank 0: every rank exit 0 in {took:.1f} s")


def check_hung_rank(r):
    """Rank 2 of 4 stopped (SIGSTOP): rank 0's wait runs out, it asks the
    others who is there, and names the one that does not answer (ranks 1 and
    3, waiting in the same collective, answer)."""
    limit = 3
    server = Server(r, 4, ["--model", MOE, "--precision", "f32"], env=mpi_env(GROK1_MPI_TIMEOUT=str(limit)))
    server.complete({"model": "tiny-moe", "prompt": [1, 2, 3], "max_tokens": 2})
    os.kill(server.rank_pid(2), signal.SIGSTOP)
    stopped = time.time()
    try:
        server.complete({"model": "tiny-moe", "prompt": [4, 5, 6], "max_tokens": 2}, timeout=60)
        fail("a request answered while rank 2 was stopped")
    except OSError:
        pass
    code, _ = server.wait(60)
    took = time.time() - stopped
    # Every waiting rank says it (rank 0 at least); each says it in one line.
    want = re.search(r"grok1: error \(rank 0\): [^\n]* waited [0-9.]+ s for the other ranks \(the wait limit\): "
                     r"rank 2 does not answer", server.stderr())
    if code == 0 or not want or took > limit + 15:
        fail(f"hung rank: exit {code} after {took:.1f} s\n{server.stderr()}")
    print(f"ok: a hung rank (SIGSTOP) ended the job {took:.1f} s after (wait limit {limit} s): {want.group(0)}")


def check_interrupt(r):
    """Ctrl-C at a terminal: SIGINT to mpirun, which passes it on to the ranks."""
    server = Server(r, 2, ["--model", MOE, "--precision", "f32"])
    server.complete({"model": "tiny-moe", "prompt": [1, 2, 3], "max_tokens": 2})
    ranks = [server.rank_pid(i) for i in range(2)]
    server.proc.send_signal(signal.SIGINT)
    code, took = server.wait(30)

    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.time() + 5
    while any(running(p) for p in ranks) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in ranks if running(p)]
    if left or "grok1: stopped" not in server.stderr():
        fail(f"SIGINT to mpirun: ranks {left} still running, exit {code} after {took:.1f} s\n{server.stderr()}")
    # mpirun itself returns 1 for a job it was signalled to end, whatever the
    # ranks' own exit codes.
    print(f"ok: Ctrl-C (SIGINT to mpirun): rank 0 stopped the server gracefully, every rank gone "
          f"{took:.1f} s after (mpirun exit {code})")


def check_killed_rank(r):
    server = Server(r, 2, ["--model", MOE, "--precision", "f32"])
    req = urllib.request.Request(server.base + "/v1/completions", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "tiny-moe", "prompt": [1, 2, 3], "max_tokens": 100,
                                                  "stream": True}).encode())
    stream = urllib.request.urlopen(req, timeout=60)
    stream.readline()
    os.kill(server.rank_pid(1), signal.SIGKILL)
    killed = time.time()
    code, _ = server.wait(60)
    took = time.time() - killed
    if code == 0 or took > 30 or "rank 1" not in server.stderr():
        fail(f"killed rank: exit {code} after {took:.1f} s\n{server.stderr()}")
    print(f"ok: kill -9 of rank 1 during a stream ended the job (exit {code}) in {took:.1f} s, naming rank 1")


def check_chat(r):
    args = ["chat", "--model", VOCAB, "--precision", "f32", "--temperature", "0", "--max-tokens", "12", "--timings"]
    turns = "Hello there\nTell me more\n"
    one = r.run(0, args, stdin=turns)
    split = r.run(2, args, stdin=turns)
    if one.returncode or split.returncode:
        fail(f"chat: exit {one.returncode} / {split.returncode}\n{split.stderr}")
    if split.stdout != one.stdout or split.stdout.count("Assistant:") != 2:
        fail(f"chat N=2 stdout {split.stdout!r} != one process's {one.stdout!r}")
    cached = [int(c) for c in re.findall(r", (\d+) from the cache", split.stderr)]
    if len(cached) != 2 or cached[1] == 0:
        fail(f"chat N=2: cached tokens per turn {cached}")
    resumed = check_chat_session(r, args)
    # SIGTERM to rank 0 at the prompt: every rank ends with exit 0.
    cmd = ["mpirun", "-np", "2"] + r.mpirun_args + [r.binary] + args
    chat = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=mpi_env())
    for line in chat.stderr:
        if "quits" in line:
            break
    os.kill(Server.rank_of(chat, 0), signal.SIGTERM)
    try:
        code = chat.wait(timeout=30)
    except subprocess.TimeoutExpired:
        chat.kill()
        fail("chat N=2 did not end within 30 s of SIGTERM to rank 0")
    if code != 0:
        fail(f"chat N=2: SIGTERM to rank 0 at the prompt: exit {code}\n{chat.stderr.read()}")
    print(f"ok: chat N=2: two turns equal one process's (second turn {cached[1]} tokens from the cache); "
          f"SIGTERM to rank 0 at the prompt: exit 0; --session saved by N=1 and N=2 resumed by both "
          f"({resumed} tokens with their keys and values)")


def check_chat_session(r, args):
    """A conversation saved with --session by one process and by N=2 (the
    same file), each resumed by both: the second turn equal everywhere,
    served from the resumed keys and values."""
    os.makedirs(SCRATCH, exist_ok=True)
    files = {n: os.path.join(SCRATCH, f"chat-{n}.session") for n in (0, 2)}
    first = {}
    for n, path in files.items():
        if os.path.exists(path):
            os.remove(path)
        run = r.run(n, args + ["--session", path], stdin="Hello there\n")
        if run.returncode or not os.path.exists(path):
            fail(f"chat --session N={n}: exit {run.returncode}\n{run.stderr}")
        first[n] = run.stdout
    if first[2] != first[0]:
        fail(f"chat --session N=2 first turn {first[2]!r} != one process's {first[0]!r}")
    sizes = {n: os.path.getsize(p) for n, p in files.items()}
    if sizes[0] != sizes[2]:
        fail(f"chat --session: the file N=2 saved has {sizes[2]} bytes, one process's {sizes[0]}")
    replies, resumed = [], None
    for saved_by, path in files.items():
        for n in (0, 2):
            copy = path + f".resumed-{n}"
            with open(path, "rb") as src, open(copy, "wb") as dst:
                dst.write(src.read())
            run = r.run(n, args + ["--session", copy], stdin="Tell me more\n")
            m = re.search(r"resumed (\d+) tokens of conversation from .* \((\d+) with their keys and values\)",
                          run.stderr)
            cached = [int(c) for c in re.findall(r", (\d+) from the cache", run.stderr)]
            if run.returncode or not m or int(m.group(2)) == 0 or cached != [int(m.group(2))]:
                fail(f"chat --session saved by N={saved_by or 1}, resumed by N={n or 1}: exit {run.returncode}, "
                     f"cached {cached}\n{run.stderr}")
            resumed = int(m.group(2))
            replies.append(run.stdout)
    if len(set(replies)) != 1 or replies[0].count("Assistant:") != 1:
        fail(f"chat --session: resumed second turns differ: {replies!r}")
    # A refusal of the command line: every rank finds it before they part,
    # rank 0 says it once, no MPI_Abort.
    bad = r.run(2, args + ["--session", files[2], "--no-prefix-cache"], stdin="Hello\n")
    want = "grok1: error: --session keeps the conversation in the prefix cache; drop --no-prefix-cache"
    if bad.returncode == 0 or bad.stderr.count(want) != 1 or "MPI_ABORT" in bad.stderr:
        fail(f"chat --session --no-prefix-cache under mpirun: exit {bad.returncode}\n{bad.stderr}")
    return resumed


def check_refusals_before_parting(r):
    """What rank 0 alone reads (the tokenizer, a session file, the port it
    binds, eval's data) or what every rank refuses alike (a prompt outside
    the vocabulary): each is found before the ranks part, rank 0 says it
    once, and every rank exits 2 without MPI_Abort (which ended the job
    before, with an ORTE error line). So does a chat turn refused after the
    ranks parted: rank 0 stops its engine, which sends the others home."""
    bad_session = os.path.join(SCRATCH, "not-a.session")
    with open(bad_session, "w") as f:
        f.write("not a session\n")
    # Two turns' conversation (check_chat_session's file) in a 16-token context.
    long_session = os.path.join(SCRATCH, "chat-2.session.short-context")
    with open(os.path.join(SCRATCH, "chat-2.session"), "rb") as src, open(long_session, "wb") as dst:
        dst.write(src.read())
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    chat = ["chat", "--model", VOCAB, "--precision", "f32", "--max-tokens", "4"]
    cases = [
        (chat + ["--session", bad_session], "not a grok1 session file"),
        (chat + ["--session", long_session, "--ctx", "16"], "fills the context (16)"),
        (chat + ["--tokenizer", "/nonexistent/tokenizer.model"], "loading tokenizer /nonexistent"),
        # After the ranks parted: a turn the engine refuses (the official
        # tokenizer's ids past tiny-moe's 1024); rank 0 stops the engine
        # first, which sends the others home.
        (["chat", "--model", MOE, "--max-tokens", "4"], "is outside the vocabulary (ids 0..1024)"),
        (["serve", "--model", MOE, "--port", str(port)], f"serving on 127.0.0.1:{port}: Address already in use"),
        (["generate", "--model", MOE, "--tokens", "5,2000", "--max-tokens", "2"],
         "token id 2000 at position 1 of sequence 0 is outside the vocabulary"),
        (["logits", "--model", MOE, "--tokens", "5,2000", "--out", os.path.join(SCRATCH, "x.npy")],
         "token id 2000 at position 1"),
        (["eval", "--task", "mmlu", "--model", MOE, "--data", "/nonexistent/mmlu"], "/nonexistent/mmlu"),
    ]
    try:
        for args, want in cases:
            run = r.run(2, args, stdin="Hello\n")
            errors = [line for line in run.stderr.splitlines() if line.startswith("grok1: error")]
            if (run.returncode == 0 or len(errors) != 1 or want not in errors[0]
                    or not errors[0].startswith("grok1: error: ") or "MPI_ABORT" in run.stderr):
                fail(f"{' '.join(args[:1])} under mpirun, refused on rank 0 ({want!r}): exit {run.returncode}\n"
                     f"{run.stderr}")
    finally:
        busy.close()
    # A file rank 1 alone lacks (as on another machine): rank 0 names it.
    args = ["generate", "--model", MOE, "--tokens", "5,6", "--max-tokens", "2"]
    cmd = (["mpirun"] + r.mpirun_args + ["-np", "1", r.binary] + args
           + [":", "-np", "1", r.binary] + args + ["--tokenizer", "/nonexistent/tokenizer.model"])
    run = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=300)
    errors = [line for line in run.stderr.splitlines() if line.startswith("grok1: error")]
    if (run.returncode == 0 or errors != ["grok1: error: rank 1: loading tokenizer /nonexistent/tokenizer.model: "
                                          "No such file or directory (os error 2)"] or "MPI_ABORT" in run.stderr):
        fail(f"generate with a tokenizer rank 1 lacks: exit {run.returncode}\n{run.stderr}")
    print(f"ok: {len(cases)} refusals (session file, context, tokenizer, a chat turn, port in use, vocabulary, "
          "eval data) and a file rank 1 alone lacks: rank 0 says each once, no MPI_Abort")


def check_eval(r):
    def run(np_):
        out = os.path.join(SCRATCH, f"eval-np{np_}.jsonl")
        if os.path.exists(out):
            os.remove(out)
        p = r.run(np_, ["eval", "--task", "gsm8k", "--data", os.path.join(ROOT, "tests/fixtures/eval/gsm8k/test.jsonl"),
                        "--model", VOCAB, "--precision", "f32", "--limit", "2", "--shots", "0", "--json",
                        "--out", out])
        if p.returncode:
            fail(f"eval N={np_}: exit {p.returncode}\n{p.stderr}")
        with open(out) as f:
            items = sorted((json.loads(line) for line in f), key=lambda i: i["id"])
        return p.stdout, [i["output"] for i in items]

    one, split = run(0), run(2)
    if split != one or len(one[1]) != 2:
        fail(f"eval N=2 {split!r} != one process's {one!r}")
    print("ok: eval N=2: the table, the JSON line and every item's output equal one process's")


def check_different_settings(r):
    args = ["serve", "--model", MOE, "--port", "0"]
    cmd = (["mpirun"] + r.mpirun_args + ["-np", "1", r.binary] + args + ["--kv-type", "f32"]
           + [":", "-np", "1", r.binary] + args + ["--kv-type", "bf16"])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=mpi_env())
    want = "grok1: error: rank 1 was started with other settings than rank 0: setting `--kv-type` is bf16 (rank 0: f32)"
    if p.returncode == 0 or p.stderr.count(want) != 1:
        fail(f"different settings: exit {p.returncode}, stderr:\n{p.stderr}")
    print("ok: ranks started with different --kv-type refused, naming the rank and the difference")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--mpirun-args", default="--oversubscribe --allow-run-as-root")
    a = ap.parse_args()
    os.makedirs(SCRATCH, exist_ok=True)
    r = Runner(a.binary, shlex.split(a.mpirun_args))
    start = time.time()
    check_greedy_and_reuse(r)
    check_hung_rank(r)
    check_interrupt(r)
    check_killed_rank(r)
    check_chat(r)
    check_refusals_before_parting(r)
    check_eval(r)
    check_different_settings(r)
    print(f"mpi serving: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
