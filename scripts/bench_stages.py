#!/usr/bin/env python3
"""Where a search's time goes, step by step, in one process, on an index loaded and warmed as `qa serve` warms it.

Each named step of qa/search.py, and the calls into the index it makes (the query's encode, tantivy's top-k, the exact
pass over every window), runs under a timer: --warmup questions first, then --questions N a round. Per round: a whole
search's p50, then each step's p50 in ms and its calls a search. The libraries run on one thread each and the query's
encode on every core, as `qa serve` runs a request that is alone. A timer costs about a microsecond a call, and the
steps nest: the indented ones are part of the step above them. docs/performance.md#where-a-searchs-time-goes has the
figures.

    scripts/bench_stages.py --index-dir /tmp/sq [--questions 1000] [--warmup 100] [--rounds 2] [--mode hybrid] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qa_harness import CORPORA, log, machine_note, markdown_table, percentile, read_questions  # noqa: E402


class Step(NamedTuple):
    """A timed function: its label, how deep it nests in the table, and where it is looked up when called."""

    label: str
    depth: int
    owner: Any  # a module or class whose attribute the search code calls
    name: str


def steps(index) -> list[Step]:
    """The steps of a search on `index`, in the order a search takes them."""
    import qa.search as search
    from qa.index import PassageCosines
    from qa.text import TermMatcher

    store = type(index.store)
    return [Step("the query's embedding", 0, type(index.embedder), "encode_query"),
            Step("the pass over every window (an exact index)", 0, type(index), "passage_cosines"),
            Step("the exact pass's best passages", 0, PassageCosines, "top"),
            Step("the dense candidates (an approximate index, or filters)", 0, search, "dense_candidates"),
            Step("tantivy's top-k", 0, type(index), "lexical_search"),
            Step("the exact BM25 with proximity of the candidates", 0, search, "_rescore_lexical"),
            Step("the lexical-only candidates' best windows", 0, search, "_complete_dense"),
            Step("the shortlist", 0, search, "shortlist"),
            Step("the sentence signals", 0, search, "_add_sentence_signals"),
            Step("the shortlist's texts", 1, store, "folded_texts"),
            Step("the query's IDF weights", 1, TermMatcher, "for_query"),
            Step("the sentence rows", 1, store, "sentences"),
            Step("term coverage", 1, TermMatcher, "held"),
            Step("the fusion", 0, search, "_fused_ranking"),
            Step("the hits' passages", 0, search, "_hits"),
            Step("the duplicate collapse", 0, search, "collapse_duplicates")]


def timed(fn: Callable, times: list[float]) -> Callable:
    """`fn` with each call's seconds appended to `times`."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - t0)

    return wrapper


def instrument(labels: list[Step]) -> dict[str, list[float]]:
    """Put a timer on every step; the calls' seconds by label. A step the code no longer has is an error, not a row
    left out: the table would go on without it."""
    times: dict[str, list[float]] = defaultdict(list)
    for step in labels:
        fn = getattr(step.owner, step.name, None)
        if fn is None:
            raise SystemExit(f"bench_stages: {getattr(step.owner, '__name__', step.owner)} has no {step.name} "
                             f"({step.label}): update scripts/bench_stages.py")
        setattr(step.owner, step.name, timed(fn, times[step.label]))
    return times


def load(index_dir: str):
    """The index as `qa serve` loads it for a request alone: one thread a library, the encode on every core, the
    rows searches read decoded ahead."""
    from qa import process

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    process.serving_encode_threads()
    process.one_thread_per_request()  # before FAISS loads
    from qa.config import Config
    from qa.service import Engine

    engine = Engine(dataclasses.replace(Config.from_env(), index_dir=index_dir))
    engine.warm_up()
    return engine.index()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index-dir", required=True, help="the index to search")
    ap.add_argument("--questions-file", default=CORPORA["squad-dev"][1], help="question JSONL file")
    ap.add_argument("--questions", type=int, default=1000, help="timed searches a round")
    ap.add_argument("--warmup", type=int, default=100, help="searches before the first round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mode", choices=["hybrid", "dense", "lexical"], default="hybrid")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of Markdown tables")
    args = ap.parse_args()
    if not os.path.isdir(args.index_dir):
        ap.error(f"no index folder at {args.index_dir}")

    from qa.search import search

    index = load(args.index_dir)
    questions = read_questions(args.questions_file)
    needed = args.warmup + args.questions * args.rounds
    questions = (questions * (needed // len(questions) + 1))[:needed]
    for q in questions[:args.warmup]:
        search(index, q, args.k, mode=args.mode)
    labels = steps(index)
    times = instrument(labels)
    rounds = []
    for r in range(args.rounds):
        for values in times.values():
            values.clear()
        whole = []
        start = args.warmup + r * args.questions
        for q in questions[start:start + args.questions]:
            t0 = time.perf_counter()
            search(index, q, args.k, mode=args.mode)
            whole.append(time.perf_counter() - t0)
        rounds.append({"search_ms": percentile(whole, 50) * 1000,
                       "steps": {step.label: {"depth": step.depth, "p50_ms": percentile(times[step.label], 50) * 1000,
                                              "calls": len(times[step.label]) / args.questions}
                                 for step in labels if times.get(step.label)}})
        log(f"round {r + 1}: a search {rounds[-1]['search_ms']:.3f} ms p50")
    if args.json:
        print(json.dumps({"index_dir": args.index_dir, "mode": args.mode, "k": args.k, "questions": args.questions,
                          "passages": index.passage_count, "machine": machine_note(), "rounds": rounds}))
        return 0
    print(f"### Stages: {args.index_dir}, {index.passage_count:,} passages, mode {args.mode}, k={args.k}, "
          f"{args.questions} questions a round after {args.warmup}\n")
    for r, result in enumerate(rounds, 1):
        rows = [[f"a search (round {r})", f"{result['search_ms']:.3f}", "1.00"]]
        rows += [[("… " * s["depth"]) + label, f"{s['p50_ms']:.3f}", f"{s['calls']:.2f}"]
                 for label, s in result["steps"].items()]
        print(markdown_table(["step", "p50 ms", "calls a search"], rows) + "\n")
    print(f"machine: {machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
