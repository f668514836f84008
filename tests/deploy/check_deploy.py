#!/usr/bin/env python3
"""Checks deploy/ without a cluster or a container registry: every YAML file
parses, the MPIJob has the shape the MPI Operator (kubeflow.org/v2beta1) and
grok1 need, the Service selects rank 0's pod, and the grok1 command lines of
the manifest and of the Dockerfile's ENTRYPOINT + CMD are accepted by the
binary's own argument parser (`grok1 --check-args ...`), which a misspelled
flag fails (checked here too, so the check itself is known to bite).

usage: check_deploy.py GROK1_BINARY     (needs PyYAML)
"""

import glob
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")


def fail(message):
    sys.exit(f"FAIL: {message}")


def load_all():
    docs = {}
    files = sorted(glob.glob(os.path.join(DEPLOY, "k8s", "*.yaml")))
    if not files:
        fail("no YAML files under deploy/k8s")
    for path in files:
        with open(path) as f:
            try:
                parsed = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                fail(f"{path} does not parse: {e}")
        for d in parsed:
            if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                fail(f"{path}: a document without kind/apiVersion")
            docs.setdefault(d["kind"], []).append((path, d))
    print(f"ok: {len(files)} YAML files parse")
    return docs


def get(d, *keys, where=""):
    for k in keys:
        if not isinstance(d, (dict, list)):
            fail(f"{where}: {'.'.join(map(str, keys))} is missing")
        try:
            d = d[k]
        except (KeyError, IndexError):
            fail(f"{where}: {'.'.join(map(str, keys))} is missing")
    return d


def grok1_argv(args, where):
    """The arguments after the grok1 program in an mpirun command line."""
    for i, a in enumerate(args):
        if os.path.basename(str(a)) == "grok1":
            return [str(x) for x in args[i + 1 :]]
    fail(f"{where}: no grok1 in the command line {args}")


def check_args(binary, argv, where, expect_ok=True):
    p = subprocess.run([binary, "--check-args"] + argv, capture_output=True, text=True, timeout=60)
    if expect_ok and p.returncode != 0:
        fail(f"{where}: grok1 refuses its command line {argv}:\n{p.stderr}")
    if not expect_ok and p.returncode == 0:
        fail(f"{where}: grok1 accepted a misspelled command line {argv}")
    return p


def check_mpijob(docs, binary):
    jobs = docs.get("MPIJob", [])
    if len(jobs) != 1:
        fail(f"expected one MPIJob, found {len(jobs)}")
    path, job = jobs[0]
    if job["apiVersion"] != "kubeflow.org/v2beta1":
        fail(f"{path}: apiVersion {job['apiVersion']}, expected kubeflow.org/v2beta1")
    spec = get(job, "spec", where=path)
    replicas = get(spec, "mpiReplicaSpecs", where=path)
    if set(replicas) != {"Launcher", "Worker"}:
        fail(f"{path}: mpiReplicaSpecs holds {sorted(replicas)}, expected Launcher and Worker")
    if get(replicas, "Launcher", "replicas", where=path) != 1:
        fail(f"{path}: one launcher expected")
    workers = get(replicas, "Worker", "replicas", where=path)
    slots = spec.get("slotsPerWorker", 1)
    launcher = get(replicas, "Launcher", "template", "spec", "containers", 0, where=path)
    line = list(launcher.get("command", [])) + list(launcher.get("args", []))
    if not line or os.path.basename(line[0]) != "mpirun":
        fail(f"{path}: the launcher runs {line[:1]}, expected mpirun")
    np_ = line[line.index("-np") + 1] if "-np" in line else None
    if np_ is None or int(np_) != workers * slots:
        fail(f"{path}: mpirun -np {np_} but {workers} workers x {slots} slots")
    if int(np_) not in (1, 2, 4, 8):
        fail(f"{path}: -np {np_}: Grok-1 splits over 1, 2, 4 or 8 ranks")
    argv = grok1_argv(line, path)
    if argv[:1] != ["serve"]:
        fail(f"{path}: the launcher's grok1 runs {argv[:1]}, expected serve")
    for flag, want in (("--host", "0.0.0.0"), ("--port", "8000")):
        if flag not in argv or argv[argv.index(flag) + 1] != want:
            fail(f"{path}: grok1 serve needs {flag} {want}")
    model = argv[argv.index("--model") + 1] if "--model" in argv else ""
    check_args(binary, argv, path)
    print(f"ok: {path}: launcher runs mpirun -np {np_} grok1 {' '.join(argv)} (accepted by the parser)")
    # A misspelled flag in the same line must be refused.
    bad = [a.replace("--port", "--prot") for a in argv]
    p = check_args(binary, bad, path + " (misspelled)", expect_ok=False)
    if "--prot" not in p.stderr:
        fail(f"{path}: the refusal of --prot does not name it:\n{p.stderr}")
    print("ok: the same line with --prot for --port is refused by the parser")
    worker = get(replicas, "Worker", "template", "spec", where=path)
    container = get(worker, "containers", 0, where=path)
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in worker.get("volumes", [])}
    claimed = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    if not claimed or not any(
        model.startswith(mounts.get(n, "/nonexistent").rstrip("/") + "/") for n in claimed
    ):
        fail(f"{path}: --model {model} is not on a volume from a PersistentVolumeClaim mounted in the workers")
    probe = container.get("readinessProbe", {})
    if "/health" not in json.dumps(probe):
        fail(f"{path}: the workers' readiness probe does not ask /health")
    if get(worker, "securityContext", "runAsNonRoot", where=path) is not True:
        fail(f"{path}: workers must run as non-root")
    print(f"ok: {path}: {workers} workers mount the model claim, readiness asks /health, non-root")
    return job, claimed, volumes


def check_service(docs, job, claimed, volumes):
    services = docs.get("Service", [])
    if len(services) != 1:
        fail(f"expected one Service, found {len(services)}")
    path, svc = services[0]
    selector = get(svc, "spec", "selector", where=path)
    want = {
        "training.kubeflow.org/job-name": job["metadata"]["name"],
        "training.kubeflow.org/replica-type": "worker",
        "training.kubeflow.org/replica-index": "0",
    }
    if selector != want:
        fail(f"{path}: selector {selector}, expected rank 0's pod {want}")
    ports = get(svc, "spec", "ports", where=path)
    if not any(p.get("port") == 8000 for p in ports):
        fail(f"{path}: no port 8000")
    claims = {d["metadata"]["name"] for _, d in docs.get("PersistentVolumeClaim", [])}
    for n in claimed:
        name = volumes[n]["persistentVolumeClaim"]["claimName"]
        if name not in claims:
            fail(f"the MPIJob claims {name}, which no manifest under deploy/k8s defines")
    print(f"ok: {path}: selects worker 0 (rank 0) of job {job['metadata']['name']} on port 8000; claims defined")


def check_dockerfile(binary):
    path = os.path.join(DEPLOY, "Dockerfile")
    entrypoint, cmd, stages, user = None, None, 0, None
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            stages += 1
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "USER":
            user = rest.strip()
    if stages < 2:
        fail(f"{path}: {stages} stage(s), expected a multi-stage build")
    if "--features mpi" not in text:
        fail(f"{path}: grok1 is not built with --features mpi")
    if user in (None, "root", "0"):
        fail(f"{path}: the final image runs as {user or 'root'}")
    line = (entrypoint or []) + (cmd or [])
    argv = grok1_argv(line, path)
    check_args(binary, argv, path)
    print(f"ok: {path}: {stages} stages, user {user}, runs grok1 {' '.join(argv)} (accepted by the parser)")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    docs = load_all()
    job, claimed, volumes = check_mpijob(docs, binary)
    check_service(docs, job, claimed, volumes)
    check_dockerfile(binary)


if __name__ == "__main__":
    main()
