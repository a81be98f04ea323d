#!/usr/bin/env python3
"""The cluster index against the local engine on one question set, in one process, question by question.

    scripts/cluster_parity.py QUESTIONS --local DIR --cluster DIR [--every N] [--limit N] [--json OUT]

Both indexes must be built from the same articles with the same model. Each question is answered by the local
index, then by the cluster index (alternating, so both see the same machine load); the script prints R@1, R@5,
MRR@10 and answer_hit@1 of each, the share of questions whose top 10 (passage ids in order) and answer are the
same, and each side's time per question (search and answer extraction, p50 / p95 / mean), plus the Milvus
requests a cluster query makes.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qa.answer import answer_question
from qa.evaluate import answer_contains, read_questions
from qa.index import embedder_for, load_index
from qa.manifest import Manifest


def rank_of(hits, gold) -> int | None:
    return next((r for r, h in enumerate(hits, 1) if (h.passage.doc_id, h.passage.paragraph_index) == gold
                 or any((d.doc_id, d.paragraph_index) == gold for d in h.duplicates)), None)


def summary(ranks: list, hits: list, times: list) -> dict:
    n = len(ranks)
    recall = lambda c: sum(1 for r in ranks if r is not None and r <= c) / n  # noqa: E731
    return {"questions": n, "recall@1": recall(1), "recall@5": recall(5),
            "mrr@10": sum(1.0 / r for r in ranks if r is not None and r <= 10) / n,
            "answer_hit@1": sum(hits) / len(hits) if hits else None,
            "ms_p50": float(np.percentile(times, 50)), "ms_p95": float(np.percentile(times, 95)),
            "ms_mean": float(np.mean(times))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("questions")
    ap.add_argument("--local", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--every", type=int, default=1, help="every Nth question (a sample across all articles)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    questions = read_questions(args.questions)[::args.every][:args.limit]
    embedder = embedder_for(Manifest.load(args.local))
    indexes = {"local": load_index(args.local, embedder=embedder), "cluster": load_index(args.cluster,
                                                                                        embedder=embedder)}
    client = indexes["cluster"].store.client
    calls = {"n": 0}
    for name in ("search", "query", "upsert"):  # count the Milvus requests of cluster queries
        original = getattr(client, name)

        def counted(*a, _original=original, **kw):
            calls["n"] += 1
            return _original(*a, **kw)
        setattr(client, name, counted)
    for index in indexes.values():
        answer_question(index, "warm up", 5)
    calls["n"] = 0
    ranks = {k: [] for k in indexes}
    hits = {k: [] for k in indexes}
    times = {k: [] for k in indexes}
    same_top, same_answer = 0, 0
    for i, q in enumerate(questions, 1):
        out = {}
        for name, index in indexes.items():
            t = time.perf_counter()
            result = answer_question(index, q["question"], k=10)
            times[name].append((time.perf_counter() - t) * 1000)
            ranks[name].append(rank_of(result.search.hits, (q["doc_id"], q["paragraph_index"])))
            first = result.sentences[0].text if result.sentences else ""
            if q.get("answers"):
                hits[name].append(answer_contains(first, q["answers"]))
            out[name] = ([h.passage.passage_id for h in result.search.hits], first)
        same_top += out["local"][0] == out["cluster"][0]
        same_answer += out["local"][1] == out["cluster"][1]
        if i % 100 == 0:
            print(f"{i}/{len(questions)}", {k: round(summary(ranks[k], hits[k], times[k])["recall@1"], 4)
                                            for k in indexes}, flush=True)
    figures = {k: summary(ranks[k], hits[k], times[k]) for k in indexes}
    figures["same_top10"] = same_top / len(questions)
    figures["same_answer"] = same_answer / len(questions)
    figures["milvus_requests_per_question"] = calls["n"] / len(questions)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
