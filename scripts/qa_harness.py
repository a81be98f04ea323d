"""Shared helpers for scripts/soak and the benchmarks: a temporary index, a real `qa serve` on a free loopback port,
small HTTP calls, percentiles and Markdown tables, the reference model. Standard library only at import (the
reference model's libraries are imported when it is loaded)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
QA = os.path.join(VENV_BIN, "qa") if os.path.exists(os.path.join(VENV_BIN, "qa")) else (shutil.which("qa") or "qa")

CORPORA = {  # --corpus name -> (sources, the questions that go with it)
    "seeds": ([os.path.join(ROOT, "seeds")], None),
    "squad-small": ([os.path.join(ROOT, "eval", "squad-small", "articles.jsonl")],
                    os.path.join(ROOT, "eval", "squad-small", "questions.jsonl")),
    "squad-dev": ([os.path.join(ROOT, "eval", "squad-dev", "articles.jsonl")],
                  os.path.join(ROOT, "eval", "squad-dev", "questions.jsonl")),
}


def qa_env(**extra: str) -> dict:
    """The environment for every `qa` process: offline model, no tokenizer fork warnings."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def reference_model():
    """all-MiniLM-L6-v2 through sentence-transformers with PyTorch on the CPU, the benchmarks' reference, and the
    seconds its load took (imports excluded). Offline; no progress bars."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from qa.embed import packaged_model_path

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the output
    t0 = time.perf_counter()
    model = SentenceTransformer(str(packaged_model_path()), device="cpu")
    return model, time.perf_counter() - t0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- corpus, questions, index -------------------------------------------------------------------------------

def corpus_sources(names: list[str]) -> tuple[list[str], str]:
    """The source paths of the chosen corpora and the question file of the last SQuAD corpus among them."""
    sources, questions = [], None
    for name in names:
        paths, qfile = CORPORA[name]
        sources += paths
        questions = qfile or questions
    if questions is None:
        questions = CORPORA["squad-small"][1]
    return sources, questions


def read_questions(path: str, limit: int | None = None, seed: int = 0) -> list[str]:
    """Questions from a JSONL question file, shuffled reproducibly."""
    with open(path, encoding="utf-8") as f:
        qs = [json.loads(line)["question"] for line in f if line.strip()]
    random.Random(seed).shuffle(qs)
    return qs[:limit] if limit else qs


def run_build(sources: list[str], index_dir: str, *options: str, timeout: float = 3600) -> tuple[float, str]:
    """`qa build` into index_dir with extra options: (wall-clock seconds, its stdout). Raises on failure with the
    tool's output."""
    t0 = time.perf_counter()
    p = subprocess.run([QA, "build", *sources, "--index-dir", index_dir, "--quiet", *options], env=qa_env(),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"qa build failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0, p.stdout


def build_index(sources: list[str], index_dir: str, timeout: float = 3600) -> float:
    """`qa build` into index_dir; returns the wall-clock seconds. Raises on failure with the tool's output."""
    return run_build(sources, index_dir, timeout=timeout)[0]


def copy_index(src: str, dst: str) -> None:
    """A private copy of an existing index folder (never written to in place)."""
    if not os.path.exists(os.path.join(src, "manifest.json")):
        raise SystemExit(f"error: {src} has no manifest.json; not an index folder")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".write.lock", ".build-*"))


# --- HTTP ---------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    """(status, body); HTTP errors are returned, connection errors raise OSError."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _own_rss_kib(pid: int) -> int | None:
    """VmRSS of one process in KiB (Linux /proc), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (every thread's), none when it is gone."""
    kids = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
    return kids


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process and its descendants, summed, in KiB (a server's supervisor and its workers); None when
    the process is gone. Pages the workers still share with the supervisor after the fork count in each."""
    total = _own_rss_kib(pid)
    if total is None:
        return None
    pending = _children(pid)
    while pending:
        child = pending.pop()
        total += _own_rss_kib(child) or 0
        pending += _children(child)
    return total


class Server:
    """`qa [-v] serve` on a free loopback port; stdout and stderr go to a log file. Use as a context manager."""

    def __init__(self, index_dir: str, log_path: str, env: dict | None = None, threads: int | None = None,
                 verbose: bool = False, start_timeout: float = 180, workers: int = 1):
        self.index_dir, self.log_path, self.env = index_dir, log_path, env or {}
        self.threads, self.verbose, self.start_timeout, self.workers = threads, verbose, start_timeout, workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        cmd = [QA, *(["-v"] if self.verbose else []), "serve", "--index-dir", self.index_dir,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
               *(["--threads", str(self.threads)] if self.threads else [])]  # else serve's default
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=qa_env(**self.env), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"qa serve exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError):
                if http(self.base + "/healthz", timeout=5)[0] == 200:
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"qa serve did not become healthy in {self.start_timeout:.0f}s: {self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid  # the `qa` entry point is a Python script: the server's supervisor, its workers below

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, n: int = 2000) -> str:
        return self.log_text()[-n:]


# --- numbers and tables -------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def fmt(x, digits: int = 1) -> str:
    return "–" if x is None else (f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_note() -> str:
    """CPU count and load average, to put the figures in context."""
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return f"{os.cpu_count()} CPUs, load average {load} (1/5/15 min)"
