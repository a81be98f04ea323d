#!/usr/bin/env python3
"""Dump every question's rankings and answer through the service's JSON, or compare two dumps.

A refactor that must not change results is checked by dumping before and after on the same index recipe:

    scripts/rankings.py dump --index-dir /tmp/sq --out before.jsonl
    scripts/rankings.py compare before.jsonl after.jsonl

`dump` asks each question once per mode (hybrid through /api/ask with k=10, so the answer and the ranking come
from one call; dense and lexical through /api/search) and writes one JSON line per question, timings left out.
`compare` prints how many questions differ per mode and the first differences, and exits 1 when any does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = os.path.join(ROOT, "eval", "squad-dev", "questions.jsonl")


def ranking(results: list[dict]) -> list[list]:
    """Each hit as [passage_id, fused score, component scores, duplicate passage ids]."""
    return [[r["passage_id"], r["score"], r["scores"], [d["passage_id"] for d in r.get("duplicates", [])]]
            for r in results]


def dump(index_dir: str, questions: str, out: str, limit: int | None) -> None:
    """Write one line per question: its hybrid answer and ranking, its dense and lexical rankings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm

    from qa.config import Config
    from qa.service import Engine

    engine = Engine(Config(index_dir=index_dir))
    with open(questions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()][:limit]
    with open(out, "w", encoding="utf-8") as f:
        for q in tqdm(rows, desc="questions", unit="q", mininterval=5):
            ask = engine.ask({"q": q["question"], "k": 10})
            line = {"question": q["question"], "answer": ask["answer"], "citations": ask["citations"],
                    "hybrid": ranking(ask["passages"])}
            for mode in ("dense", "lexical"):
                line[mode] = ranking(engine.search({"q": q["question"], "k": 10, "mode": mode})["results"])
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def compare(a: str, b: str, show: int = 5) -> int:
    """Print the questions whose rankings or answers differ between two dumps; 1 when any does."""
    with open(a, encoding="utf-8") as fa, open(b, encoding="utf-8") as fb:
        left = [json.loads(line) for line in fa]
        right = [json.loads(line) for line in fb]
    if len(left) != len(right):
        print(f"{a} has {len(left)} questions, {b} {len(right)}")
        return 1
    differing = 0
    for key in ("hybrid", "dense", "lexical", "answer", "citations"):
        diffs = [(x["question"], x[key], y[key]) for x, y in zip(left, right) if x[key] != y[key]]
        differing += len(diffs)
        print(f"{key}: {len(diffs)} of {len(left)} questions differ")
        for question, x, y in diffs[:show]:
            print(f"  {question!r}\n    before {json.dumps(x)[:300]}\n    after  {json.dumps(y)[:300]}")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="dump rankings and answers of every question")
    d.add_argument("--index-dir", required=True)
    d.add_argument("--questions", default=QUESTIONS)
    d.add_argument("--out", required=True)
    d.add_argument("--limit", type=int)
    c = sub.add_parser("compare", help="compare two dumps")
    c.add_argument("before")
    c.add_argument("after")
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.index_dir, args.questions, args.out, args.limit)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
