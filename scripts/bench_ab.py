#!/usr/bin/env python3
"""Two or more versions of the code served at once on one index, one client's searches (or asks) alternated between
them.

A change worth a few percent of a search is smaller than the machine's drift between two runs (the reference encode
moves 12-19 ms within ten minutes here; docs/performance.md). So each version runs its own `qa serve` of the same
index at the same time, and one client sends blocks of searches to each in turn, the order of the versions reversed
every round: the drift falls on all of them alike. Reported per version: the client's p50 and p99, the server's
`took_ms` p50 and each stage's (`timings`), and the servers' memory at the end. `--endpoint ask` sends /api/ask with
the question alone, as side_by_side's ask phase does, instead of /api/search.

A version is a git ref of this repository (its `qa/` exported into a temporary folder) or a folder holding a `qa`
package; each server runs the project's .venv with that folder first on its PYTHONPATH.

    scripts/bench_ab.py --index-dir /tmp/sq HEAD~1 HEAD
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import NamedTuple

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qa_harness import (CORPORA, ROOT, VENV_BIN, Server, http, log, machine_note, markdown_table,  # noqa: E402
                        percentile, qa_env, read_questions, rss_kib)


class Version(NamedTuple):
    """One version of the code: its name as given and the folder put first on its server's PYTHONPATH."""

    name: str
    path: str


def export(spec: str, into: str) -> Version:
    """`spec` as a `Version`: a folder holding `qa/` as it is, else a git ref whose `qa/` goes into `into`."""
    if os.path.isdir(os.path.join(spec, "qa")):
        return Version(spec, os.path.abspath(spec))
    os.makedirs(into)
    archive = subprocess.run(["git", "-C", ROOT, "archive", spec, "qa"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"bench_ab: {spec!r} is neither a folder holding qa/ nor a git ref of {ROOT}")
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return Version(spec, into)


def check_imports(version: Version) -> None:
    """Fail unless a process with the version's environment imports `qa` from the version's folder."""
    python = os.path.join(VENV_BIN, "python") if os.path.exists(os.path.join(VENV_BIN, "python")) else sys.executable
    out = subprocess.run([python, "-c", "import qa; print(qa.__file__)"], env=qa_env(PYTHONPATH=version.path),
                         cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True).stdout.strip()
    if not out.startswith(version.path + os.sep):
        raise SystemExit(f"bench_ab: {version.name} imports qa from {out}, not from {version.path}")


def request(base: str, endpoint: str, question: str, k: int) -> tuple[float, dict]:
    """One GET of /api/search (with k) or /api/ask (the question alone) on a new connection, as side_by_side's
    client does: (client ms, the JSON body)."""
    params = {"q": question, "k": k} if endpoint == "search" else {"q": question}
    t = time.perf_counter()
    status, body = http(f"{base}/api/{endpoint}?{urllib.parse.urlencode(params)}")
    ms = (time.perf_counter() - t) * 1000
    if status != 200:
        raise RuntimeError(f"{base}: HTTP {status}: {body[:200]!r}")
    return ms, json.loads(body)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("versions", nargs="+", help="git refs or folders holding qa/ (two or more)")
    ap.add_argument("--index-dir", required=True, help="the index every version serves (read only)")
    ap.add_argument("--questions", default=CORPORA["squad-dev"][1], help="question JSONL file")
    ap.add_argument("--rounds", type=int, default=20, help="rounds after one of warm-up")
    ap.add_argument("--block", type=int, default=50, help="requests to one version in a row")
    ap.add_argument("--k", type=int, default=10, help="results a search asks for")
    ap.add_argument("--endpoint", choices=("search", "ask"), default="search",
                    help="/api/search, or /api/ask with the question alone")
    args = ap.parse_args(argv)
    if len(args.versions) < 2:
        ap.error("give two versions or more")
    if args.rounds < 1 or args.block < 1:
        ap.error("--rounds and --block must be 1 or more")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    questions = read_questions(args.questions, limit=(args.rounds + 1) * args.block)
    with tempfile.TemporaryDirectory(prefix="qa-ab-") as work, contextlib.ExitStack() as stack:
        versions = [export(spec, os.path.join(work, f"v{i}")) for i, spec in enumerate(args.versions)]
        for v in versions:
            check_imports(v)
        servers = []
        for i, v in enumerate(versions):
            log(f"serving {v.name} ({v.path})")
            servers.append(stack.enter_context(Server(args.index_dir, os.path.join(work, f"serve{i}.log"),
                                                      env={"PYTHONPATH": v.path})))
        client: dict[str, list[float]] = {v.name: [] for v in versions}
        timings: dict[str, dict[str, list[float]]] = {v.name: {} for v in versions}
        pairs = list(zip(versions, servers))
        for r in range(args.rounds + 1):
            block = questions[r * args.block:(r + 1) * args.block] or questions[:args.block]
            for v, server in (pairs if r % 2 == 0 else pairs[::-1]):
                for q in block:
                    ms, body = request(server.base, args.endpoint, q, args.k)
                    if r:  # the first round warms every server up
                        client[v.name].append(ms)
                        for key, value in {"took_ms": body["took_ms"], **body["timings"]}.items():
                            timings[v.name].setdefault(key, []).append(value)
        memory = {v.name: rss_kib(server.pid) for v, server in pairs}
    keys = list(next(iter(timings.values())))
    rows = [[v.name, f"{statistics.median(client[v.name]):.2f} / {percentile(client[v.name], 99):.2f}",
             *(f"{statistics.median(timings[v.name][key]):.3f}" for key in keys),
             f"{memory[v.name] / 1024:.0f}" if memory[v.name] else "-"] for v in versions]
    what = f"searches each (k={args.k})" if args.endpoint == "search" else "asks each"
    print(f"### {len(versions)} versions served at once: {args.index_dir}, {args.rounds} rounds of {args.block} "
          f"{what}, the order reversed every round\n")
    print(markdown_table(["version", "client p50 / p99 ms", *(f"{key} p50" for key in keys), "RSS MiB"], rows))
    print(f"\nmachine: {machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
