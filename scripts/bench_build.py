#!/usr/bin/env python3
"""Build time of a whole `qa build` against sentence-transformers' own `encode()` of the same paragraphs.

Reference: `SentenceTransformer(<packaged all-MiniLM-L6-v2>, device="cpu").encode(paragraphs, batch_size=32)` with
PyTorch, in this process, over every paragraph of the articles file (its JSONL `paragraphs` field, as given).
The model is loaded and one batch encoded before the clock starts; encode() truncates a paragraph at the model's
256 tokens, where `qa build` embeds every window of it (how many are affected is printed).

Each backend: `qa build ARTICLES --index-dir <fresh folder> --backend B --quiet` as a subprocess, timed by wall
clock: process start, imports and model load included, with everything hybrid ranking needs (window and sentence
vectors, the lexical index, FAISS, the store). One untimed warm-up build of a one-paragraph file per backend
comes first: it makes the ONNX backend's one-off export (cached under $QA_CACHE_DIR or ~/.cache/qa/onnx) and
warms the file cache for both. The time `qa build` reports for its own `build_index()` is shown beside it.

Target (the performance issue): ratio ≤ 1.0 for every backend.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qa_harness import CORPORA, fmt, log, machine_note, markdown_table, reference_model, run_build  # noqa: E402

BACKENDS = ("torch", "onnx")
TARGET = ("target: ratio ≤ 1.0 — a whole `qa build` takes no longer than sentence-transformers' encode() of the "
          "same paragraphs with PyTorch")
BATCH_SIZE = 32


def read_articles(path: str, limit: int | None) -> list[str]:
    """The article lines of a JSONL file (the first `limit` when given), each checked to be JSON."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError as e:
                raise RuntimeError(f"{path}:{lineno}: not JSON: {e}") from None
            lines.append(line if line.endswith("\n") else line + "\n")
            if limit and len(lines) >= limit:
                break
    if not lines:
        raise RuntimeError(f"{path}: no articles")
    return lines


def reference(paragraphs: list[str], repeat: int) -> dict:
    """Seconds of sentence-transformers' encode() of `paragraphs` (model load excluded), and what it truncates."""
    model, load = reference_model()
    lengths = [len(ids) for ids in model.tokenizer(paragraphs, verbose=False)["input_ids"]]  # with [CLS], [SEP]
    model.encode(paragraphs[:BATCH_SIZE], batch_size=BATCH_SIZE)  # warm-up, not timed
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.encode(paragraphs, batch_size=BATCH_SIZE)
        runs.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(runs), "runs": runs, "model_load_seconds": load,
            "max_seq_length": model.max_seq_length,
            "truncated_paragraphs": sum(n > model.max_seq_length for n in lengths)}


def build(backend: str, articles: str, tiny: str, workdir: str, repeat: int) -> dict:
    """Seconds of a whole `qa build --backend B` after an untimed warm-up; passages and in-process seconds."""
    note = " (exports the model to ONNX if its cache is empty)" if backend == "onnx" else ""
    log(f"warm-up, not timed: qa build --backend {backend} of one paragraph{note}")
    run_build([tiny], os.path.join(workdir, f"warm-{backend}"), "--backend", backend)
    runs, inside = [], []
    for r in range(repeat):
        index_dir = os.path.join(workdir, f"index-{backend}-{r}")
        log(f"timed: qa build --backend {backend} ({r + 1}/{repeat})")
        seconds, out = run_build([articles], index_dir, "--backend", backend)
        runs.append(seconds)
        m = re.search(r"passages in ([\d.]+)s", out)  # "built DIR: D documents, P passages in S.Ss (...)"
        if m:
            inside.append(float(m.group(1)))
        with open(os.path.join(index_dir, "manifest.json"), encoding="utf-8") as f:
            counts = json.load(f)["counts"]
        shutil.rmtree(index_dir, ignore_errors=True)
    return {"backend": backend, "seconds": statistics.median(runs), "runs": runs,
            "build_index_seconds": statistics.median(inside) if inside else None, "passages": counts["passages"],
            "windows": counts.get("windows"), "sentences": counts.get("sentences")}


def machine() -> dict:
    """What the figures ran on."""
    from qa.embed import PACKAGED_MODEL

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpus": os.cpu_count(), "note": machine_note(), "model": PACKAGED_MODEL, "torch": version("torch"),
            "onnxruntime": version("onnxruntime"), "sentence_transformers": version("sentence-transformers"),
            "python": sys.version.split()[0]}


def report(result: dict) -> None:
    """The table, the reference and the target, in Markdown."""
    ref, m = result["reference"], result["machine"]
    n = result["paragraphs"]
    print(f"\n### Build benchmark: {result['articles']}, {result['documents']:,} articles, {n:,} paragraphs"
          f" (median of {result['repeat']})\n")
    rows = [["reference: sentence-transformers `encode(batch_size=32)`, PyTorch, model loaded beforehand",
             f"{ref['seconds']:.1f}", "1.00", f"{n:,} paragraphs", f"{n / ref['seconds']:,.1f}", "–"]]
    for b in result["builds"]:
        ok = "" if b["ratio"] <= 1.0 else " ✗"
        rows.append([f"`qa build --backend {b['backend']}`, wall clock incl. process start and model load",
                     f"{b['seconds']:.1f}", f"{b['ratio']:.2f}{ok}", f"{b['passages']:,} passages",
                     f"{b['passages'] / b['seconds']:,.1f}", fmt(b["build_index_seconds"])])
    print(markdown_table(["run", "seconds", "ratio to reference", "items", "items/s", "of which build_index() (s)"],
                         rows))
    print(f"\nreference: {ref['seconds']:.1f} s to encode {n:,} paragraphs ({n / ref['seconds']:,.1f}/s); model "
          f"load {ref['model_load_seconds']:.1f} s not counted; {ref['truncated_paragraphs']:,} paragraphs are "
          f"over {ref['max_seq_length']} tokens, which encode() truncates and `qa build` windows.")
    print(f"machine: {m['note']}; model {m['model']}; torch {m['torch']}; onnxruntime {m['onnxruntime']}; "
          f"sentence-transformers {m['sentence_transformers']}; Python {m['python']}")
    print(f"{TARGET[0].upper()}{TARGET[1:]}.")


def backend_list(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)} (comma-separated), not {value!r}")
    return names


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return n


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench_build.py", description=__doc__.split("\n\n")[0],
                                 epilog="example: .venv/bin/python scripts/bench_build.py --limit 2 (a quick check); "
                                        + TARGET, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--articles", default=CORPORA["squad-dev"][0][0], help="articles JSONL file")
    ap.add_argument("--limit", type=positive, help="only the first N articles")
    ap.add_argument("--backends", type=backend_list, default=list(BACKENDS), help="comma-separated: torch,onnx")
    ap.add_argument("--repeat", type=positive, default=1, help="timed runs of each; the median is shown")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="qa-bench-build-")
    try:
        lines = read_articles(args.articles, args.limit)
        articles = args.articles
        if args.limit:  # both sides get exactly these articles
            articles = os.path.join(tmp, "articles.jsonl")
            with open(articles, "w", encoding="utf-8") as f:
                f.writelines(lines)
        paragraphs = [p for line in lines for p in json.loads(line).get("paragraphs", [])]
        first = json.loads(lines[0])
        tiny = os.path.join(tmp, "warm-up.jsonl")
        with open(tiny, "w", encoding="utf-8") as f:
            f.write(json.dumps({"id": "warm-up", "title": first.get("title") or "Warm-up",
                                "paragraphs": paragraphs[:1]}, ensure_ascii=False) + "\n")
        log(f"reference: sentence-transformers encode() of {len(paragraphs):,} paragraphs")
        ref = reference(paragraphs, args.repeat)
        log(f"reference: {ref['seconds']:.1f}s")
        builds = []
        for backend in args.backends:
            b = build(backend, articles, tiny, tmp, args.repeat)
            b["ratio"] = b["seconds"] / ref["seconds"]
            log(f"qa build --backend {backend}: {b['seconds']:.1f}s, ratio {b['ratio']:.2f}")
            builds.append(b)
        result = {"articles": args.articles, "limit": args.limit, "documents": len(lines),
                  "paragraphs": len(paragraphs), "repeat": args.repeat, "batch_size": BATCH_SIZE,
                  "reference": ref, "builds": builds, "target_ratio": 1.0, "machine": machine()}
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
