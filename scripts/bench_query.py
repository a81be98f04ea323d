#!/usr/bin/env python3
"""Query latency and throughput of a real `qa serve` on a loopback port.

(a) one client, N sequential GET /api/search requests (SQuAD dev questions): client latency p50/p99 and the
    server-reported took_ms; then N sequential GET /api/ask requests on other questions;
(b) load: wrk (Debian package `wrk`; `make bench-deps` or `sudo apt-get install wrk`) with a Lua script rotating
    through URL-encoded questions, --connections connections on --wrk-threads threads for --load-duration
    seconds: requests/s, latency percentiles, non-2xx and socket errors. Without wrk a Python thread-pool load
    generator (keep-alive connections, one per thread) runs instead and is labelled as such;
(c) with --writes N: N writes by another process (`qa add` of a two-paragraph article, the server reloading on its
    own as it does), each followed at once by ten sequential searches: the first search's latency and the nine
    others' (what a write costs the searches beside it).

The index is built into a temporary folder from squad-dev (build time is reported), or copied from --index-dir;
--passages N synthesises a bigger corpus of about N passages: squad-dev, then copies of its articles whose
paragraphs are remixed from the article's own sentences (real text, no two paragraphs alike). Standard library only;
all traffic goes to 127.0.0.1. --side-by-side then runs ../shared/bench/side_by_side.py as it is (our server against
txtai's API on squad-dev, same client and load) and prints its lines.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qa_harness import (CORPORA, QA, Server, build_index, copy_index, fmt, log, machine_note,  # noqa: E402
                        markdown_table, percentile, qa_env, read_questions, reference_model)
from qa_harness import http as http_call  # noqa: E402

TARGETS = ("targets, as ratios to this run's references: one client's search p50 ≤ 0.5 and p99 ≤ 1.5 PyTorch query "
           "encodes; /api/ask p50 ≤ 1.5 × /api/search p50; 8 clients ≥ 3 × txtai's req/s (--side-by-side), 0 errors")
# What the targets were set against, from the team's notes on this machine: one short query through
# sentence-transformers (PyTorch) ~9 ms; exact FAISS search over 100k x 384 ~13 ms. The machine's speed varies from
# day to day, so the same two measurements are taken in each run and printed beside the figures.
NOTES_ENCODE_MS, NOTES_FLAT_MS = 9.0, 13.0
# the short queries ../shared/bench/side_by_side.py encodes for its reference, so that both benchmarks divide by the
# same measure (a squad-dev question is about twice as many word pieces, and slower to encode: docs/performance.md)
REFERENCE_QUERIES = ("what actions has China taken?", "who led the delegation to Beijing?",
                     "when did the talks start?")

WRK_LUA = r"""
-- rotate through the request paths in paths.txt; each wrk thread starts at a different offset
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local counter = 1
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 7919)
  table.insert(threads, thread)
end

function init(args)
  counter = offset or 0
end

function request()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\"requests\": %%d, \"duration_us\": %%d, \"non2xx\": %%d, \"connect\": %%d, \"read\": %%d, " ..
    "\"write\": %%d, \"timeout\": %%d, \"p50_us\": %%d, \"p90_us\": %%d, \"p99_us\": %%d, \"max_us\": %%d, " ..
    "\"mean_us\": %%f}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


# --- corpus ---------------------------------------------------------------------------------------------------

def synthesise(articles_path: str, passages: int, out_path: str, short: bool = False) -> int:
    """A JSONL corpus of about `passages` paragraphs of real text: the squad-dev articles, then copies of them with
    their own ids and titles whose every paragraph is remixed from sentences drawn at random across its article, so
    no two paragraphs are copies of each other (copies would make every query a duplicate-collapse case).
    `short`: remixed paragraphs of 2-3 sentences (news length) instead of the original paragraph's count.
    Returns the number of paragraphs written."""
    with open(articles_path, encoding="utf-8") as f:
        articles = [json.loads(line) for line in f if line.strip()]
    rng = random.Random(0)
    split = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
    pools = [[s for p in a["paragraphs"] for s in split.split(p) if s.strip()] for a in articles]
    written, copy = 0, 0
    with open(out_path, "w", encoding="utf-8") as out:
        while written < passages:
            for a, pool in zip(articles, pools):
                if written >= passages:
                    break
                paras = a["paragraphs"][: passages - written]
                if copy and short:
                    paras = [" ".join(rng.sample(pool, rng.randint(2, 3))) for _ in paras]
                elif copy:
                    paras = [" ".join(rng.sample(pool, min(len(pool), max(1, len(split.split(p))))))
                             for p in paras]
                doc = {"id": f"{a['id']}~{copy}" if copy else a["id"],
                       "title": f"{a['title']} ({copy + 1})" if copy else a["title"], "paragraphs": paras}
                out.write(json.dumps(doc, ensure_ascii=False) + "\n")
                written += len(paras)
            copy += 1
    return written


def search_path(q: str, k: int, mode: str) -> str:
    return "/api/search?" + urllib.parse.urlencode({"q": q, "k": k, "mode": mode})


def ask_path(q: str, mode: str) -> str:
    return "/api/ask?" + urllib.parse.urlencode({"q": q, "mode": mode})


# --- the reference, measured in this run ----------------------------------------------------------------------

def reference(n: int = 200) -> dict:
    """p50 ms of the notes' two measurements, in this process before the server starts: one short query at a time
    (`REFERENCE_QUERIES` in turn) through sentence-transformers' encode() with PyTorch (model loaded beforehand, 20
    untimed), and one query vector at a time against an exact FAISS index of 100k random unit vectors of 384
    dimensions."""
    import faiss
    import numpy as np

    def p50_ms(call, items) -> float:
        times = []
        for item in items:
            t0 = time.perf_counter()
            call(item)
            times.append((time.perf_counter() - t0) * 1000)
        return percentile(times, 50)

    queries = [REFERENCE_QUERIES[i % len(REFERENCE_QUERIES)] for i in range(20 + n)]
    model, _ = reference_model()
    for q in queries[:20]:
        model.encode([q])
    encode_ms = p50_ms(lambda q: model.encode([q]), queries[20:])
    del model
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((100_000, 384), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(384)
    flat.add(vecs)
    return {"encode_ms": encode_ms, "flat_ms": p50_ms(lambda q: flat.search(q[None, :], 10), vecs[:n])}


# --- (a) one client -------------------------------------------------------------------------------------------

def sequential(base: str, paths: list[str], n: int, key: str = "results") -> dict:
    """N sequential requests over one keep-alive connection: client latency and server took_ms (ms); a response
    without `key` results counts as an error."""
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    conn = http.client.HTTPConnection(host, port, timeout=60)
    client, server, errors = [], [], []
    for i in range(n):
        path = paths[i % len(paths)]
        t0 = time.perf_counter()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
            continue
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            errors.append(f"HTTP {r.status}: {body[:200]!r}")
            continue
        obj = json.loads(body)
        if not obj[key]:
            errors.append(f"no results for {path}")
            continue
        client.append(elapsed)
        server.append(obj["took_ms"])
    conn.close()
    return {"n": n, "errors": errors, "client": client, "server": server}


# --- (c) searches after writes ----------------------------------------------------------------------------------

def after_writes(base: str, index_dir: str, workdir: str, paths: list[str], writes: int) -> dict:
    """`writes` times: `qa add` of a new two-paragraph article (another process), then ten sequential searches at
    once; client latency (ms) of each write's first search and of the nine after it."""
    first: list[float] = []
    rest: list[float] = []
    errors: list[str] = []
    source = os.path.join(workdir, "written.jsonl")
    for w in range(writes):
        with open(source, "w") as f:  # a new text each run, so no write is skipped as unchanged
            f.write(json.dumps({"id": f"bench-write-{w}", "title": "Harbour news", "paragraphs": [
                f"The harbour reopened on day {w} at {time.time():.6f}.", "Ships queued outside the port."]}) + "\n")
        p = subprocess.run([QA, "add", source, "--index-dir", index_dir, "--quiet"], env=qa_env(),
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"qa add failed ({p.returncode}): {p.stderr.strip()[-500:]}")
        seq = sequential(base, paths[w * 10:(w + 1) * 10], 10)
        errors += seq["errors"]
        if seq["client"]:
            first.append(seq["client"][0])
            rest += seq["client"][1:]
    return {"n": writes, "first": first, "rest": rest, "errors": errors}


# --- (b) load -------------------------------------------------------------------------------------------------

def run_wrk(wrk: str, base: str, paths: list[str], workdir: str, connections: int, threads: int,
            seconds: float) -> dict:
    paths_file = os.path.join(workdir, "paths.txt")
    with open(paths_file, "w", encoding="utf-8") as f:
        f.write("\n".join(paths) + "\n")
    lua = os.path.join(workdir, "rotate.lua")
    with open(lua, "w", encoding="utf-8") as f:
        f.write(WRK_LUA % {"paths": paths_file})
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "30s", "-s", lua, base]
    log("running " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    m = re.search(r"^WRK_JSON (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip()} {p.stdout[-1000:]}")
    s = json.loads(m.group(1))
    secs = s["duration_us"] / 1e6
    return {"tool": f"wrk {threads} threads", "requests": s["requests"], "seconds": secs,
            "rps": s["requests"] / secs, "non2xx": s["non2xx"],
            "socket_errors": s["connect"] + s["read"] + s["write"] + s["timeout"],
            "p50": s["p50_us"] / 1000, "p90": s["p90_us"] / 1000, "p99": s["p99_us"] / 1000,
            "max": s["max_us"] / 1000, "command": " ".join(cmd)}


def run_python_load(base: str, paths: list[str], connections: int, seconds: float) -> dict:
    """Fallback load generator: one thread per connection, keep-alive, for `seconds`. Python clients share the
    GIL with each other (not with the server), so this understates what the server can take."""
    split = urllib.parse.urlsplit(base)
    lock, lat, counts = threading.Lock(), [], {"non2xx": 0, "socket": 0}
    stop = threading.Event()

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(split.hostname, split.port, timeout=30)
        j = i * 7919
        while not stop.is_set():
            j += 1
            t0 = time.perf_counter()
            try:
                conn.request("GET", paths[j % len(paths)])
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    counts["socket"] += 1
                conn.close()
                conn = http.client.HTTPConnection(split.hostname, split.port, timeout=30)
                continue
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(ms)
                counts["non2xx"] += not 200 <= r.status < 300
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    secs = time.perf_counter() - t0
    return {"tool": "Python thread pool (FALLBACK, not wrk)", "requests": len(lat), "seconds": secs,
            "rps": len(lat) / secs, "non2xx": counts["non2xx"], "socket_errors": counts["socket"],
            "p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
            "max": max(lat) if lat else None, "command": "built-in thread pool"}


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench_query.py", description=__doc__.split("\n\n")[0],
                                 epilog="example: .venv/bin/python scripts/bench_query.py --passages 100000; "
                                        + TARGETS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--index-dir", help="an existing index to copy and serve instead of building one")
    ap.add_argument("--passages", type=int, help="synthesise a corpus of about this many passages from squad-dev")
    ap.add_argument("--short", action="store_true",
                    help="with --passages: synthetic paragraphs of 2-3 sentences (news length)")
    ap.add_argument("--questions", default=CORPORA["squad-dev"][1], help="question JSONL file")
    ap.add_argument("--requests", type=int, default=200, help="sequential one-client requests")
    ap.add_argument("--k", type=int, default=10, help="results per search")
    ap.add_argument("--mode", choices=["hybrid", "dense", "lexical"], default="hybrid")
    ap.add_argument("--connections", type=int, default=8, help="concurrent connections of the load phase")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--load-duration", type=float, default=30, help="seconds of the load phase")
    ap.add_argument("--server-threads", type=int, help="threads per process of `qa serve` [default: its own]")
    ap.add_argument("--server-workers", type=int, default=1,
                    help="worker processes of `qa serve` (`--workers`)")
    ap.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk is installed")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (index, server log)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="then run ../shared/bench/side_by_side.py (our server against txtai's API on squad-dev)")
    ap.add_argument("--writes", type=int, default=0,
                    help="then (c): this many writes by another process, each followed by ten searches")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip this run's reference measurements (PyTorch query encode, exact FAISS search)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="qa-bench-")
    index_dir = os.path.join(tmp, "index")
    build_seconds, corpus = None, "squad-dev"
    try:
        if args.index_dir:
            log(f"copying {args.index_dir} to {index_dir}")
            copy_index(args.index_dir, index_dir)
            corpus = os.path.abspath(args.index_dir)
        else:
            sources = CORPORA["squad-dev"][0]
            if args.passages:
                synthetic = os.path.join(tmp, "synthetic.jsonl")
                n = synthesise(sources[0], args.passages, synthetic, args.short)
                sources, corpus = [synthetic], (f"synthetic {n:,} {'2-3 sentence ' if args.short else ''}"
                                                "paragraphs from squad-dev")
            log(f"building the index ({corpus})")
            build_seconds = build_index(sources, index_dir)
            log(f"built in {build_seconds:.1f}s")
        with open(os.path.join(index_dir, "manifest.json")) as f:
            counts = json.load(f)["counts"]
        questions = read_questions(args.questions, limit=2000)
        paths = [search_path(q, args.k, args.mode) for q in questions]
        ref = None
        if not args.no_reference:
            log("reference: one short query through sentence-transformers/PyTorch; exact FAISS search, 100k x 384")
            ref = reference()
            log(f"reference: encode {ref['encode_ms']:.1f} ms, flat search {ref['flat_ms']:.1f} ms (p50)")
        with Server(index_dir, os.path.join(tmp, "server.log"), threads=args.server_threads,
                    workers=args.server_workers) as server:
            for p in paths[:20]:  # warm-up, not measured
                http_call(server.base + p, timeout=60)
            log(f"(a) {args.requests} sequential searches, then as many asks on other questions, one client")
            seq = sequential(server.base, paths[20:], args.requests)
            asks = [ask_path(q, args.mode) for q in questions[400:]] or [ask_path(q, args.mode) for q in questions]
            seq["ask"] = sequential(server.base, asks, args.requests, key="passages")
            wrk = None if args.no_wrk else shutil.which("wrk")
            if wrk is None and not args.no_wrk:
                log("wrk is not installed (install: `make bench-deps` or `sudo apt-get install wrk`); "
                    "falling back to the Python thread-pool load generator")
            log(f"(b) load: {args.connections} connections for {args.load_duration:.0f}s")
            load = (run_wrk(wrk, server.base, paths, tmp, args.connections, args.wrk_threads, args.load_duration)
                    if wrk else run_python_load(server.base, paths, args.connections, args.load_duration))
            written = None
            if args.writes > 0:
                log(f"(c) {args.writes} writes by another process (`qa add`), each followed by ten searches")
                written = after_writes(server.base, index_dir, tmp, paths[1000:] or paths, args.writes)
        report(args, corpus, counts, build_seconds, seq, load, ref, written)
        if args.side_by_side:
            side_by_side()
    except (RuntimeError, subprocess.SubprocessError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if (seq["errors"] or seq["ask"]["errors"] or load["non2xx"] or load["socket_errors"]
                 or (written and written["errors"])) else 0


def side_by_side() -> None:
    """Run ../shared/bench/side_by_side.py as it is, from the project root, printing its lines."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(os.path.dirname(root), "shared", "bench", "side_by_side.py")
    if not os.path.exists(script):
        raise RuntimeError(f"{script} is missing (../shared beside the project)")
    log("side by side with txtai's API: " + script)
    print("\n### Side by side (`python3 ../shared/bench/side_by_side.py`)\n")
    subprocess.run([sys.executable, script], cwd=root, check=True)


def report(args, corpus: str, counts: dict, build_seconds, seq: dict, load: dict, ref: dict | None,
           written: dict | None = None) -> None:
    print(f"\n### Query benchmark: {corpus}, {counts['passages']:,} passages "
          f"({counts['windows']:,} window + {counts['sentences']:,} sentence vectors), mode {args.mode}, "
          f"k={args.k}\n")
    rows = []
    if build_seconds is not None:
        rows.append(["build (`qa build`, incl. model load)", f"{build_seconds:.1f} s "
                     f"({counts['passages'] / build_seconds:,.0f} passages/s)"])
    c, s = seq["client"], seq["server"]
    rows += [
        [f"one client, {seq['n']} sequential searches: client p50 / p99",
         f"{fmt(percentile(c, 50))} / {fmt(percentile(c, 99))} ms"],
        ["… server `took_ms` p50 / p99", f"{fmt(percentile(s, 50))} / {fmt(percentile(s, 99))} ms"],
        ["… errors", fmt(len(seq["errors"]))],
        [f"one client, {seq['ask']['n']} sequential asks: client p50 / p99",
         f"{fmt(percentile(seq['ask']['client'], 50))} / {fmt(percentile(seq['ask']['client'], 99))} ms "
         f"({len(seq['ask']['errors'])} errors)"],
        ["… ask p50 / search p50 (target ≤ 1.5)",
         f"{percentile(seq['ask']['client'], 50) / percentile(c, 50):.2f}" if c and seq["ask"]["client"] else "-"],
        [f"load: {load['tool']}, {args.connections} connections, {load['seconds']:.0f} s",
         f"{load['rps']:,.1f} req/s ({load['requests']:,} requests)"],
        ["… latency p50 / p90 / p99 / max",
         f"{fmt(load['p50'])} / {fmt(load['p90'])} / {fmt(load['p99'])} / {fmt(load['max'])} ms"],
        ["… non-2xx / socket errors", f"{load['non2xx']} / {load['socket_errors']}"],
    ]
    if written:
        rows += [
            [f"{written['n']} writes by another process (`qa add`): the first search after each, p50 / max",
             f"{fmt(percentile(written['first'], 50))} / {fmt(max(written['first'], default=None))} ms"],
            ["… the nine searches after it, p50 / max",
             f"{fmt(percentile(written['rest'], 50))} / {fmt(max(written['rest'], default=None))} ms "
             f"({len(written['errors'])} errors)"],
        ]
    rows += [
        ["server", f"`qa serve --workers {args.server_workers}"
                   + (f" --threads {args.server_threads}`" if args.server_threads else "` (its default threads)")],
        ["machine", machine_note()],
    ]
    if ref and c:
        speed = ref["encode_ms"] / NOTES_ENCODE_MS
        rows += [
            ["reference, this run: one short query through sentence-transformers/PyTorch, p50",
             f"{ref['encode_ms']:.1f} ms (notes: {NOTES_ENCODE_MS:.0f} ms; this machine ×{speed:.2f} as slow)"],
            ["reference, this run: exact FAISS search, 100k × 384, p50",
             f"{ref['flat_ms']:.1f} ms (notes: {NOTES_FLAT_MS:.0f} ms)"],
            ["one client's search p50 / p99 in reference query encodes (targets ≤ 0.5 / ≤ 1.5)",
             f"{percentile(c, 50) / ref['encode_ms']:.2f} / {percentile(c, 99) / ref['encode_ms']:.2f}"],
        ]
    print(markdown_table(["measure", "value"], rows))
    print(f"\nload command: `{load['command']}`")
    for e in seq["errors"][:5]:
        print(f"- error: {e}")
    print(f"\n{TARGETS[0].upper()}{TARGETS[1:]}.")


if __name__ == "__main__":
    sys.exit(main())
