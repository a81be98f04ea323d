#!/usr/bin/env python
"""Calibration of the no-answer rule (qa/answer.py): answerable against unanswerable questions.

Half of the squad-dev articles (every other one, by id) are indexed; the questions about them are answerable, the
questions about the other half are not (their article is absent, so any answer is a wrong one, however close the
topic). For every question the best-scoring answer sentence is found as `/api/ask` finds it, and its token
alignment with the question, its cosine and its IDF-weighted coverage of the question's words are recorded before
the rule is applied. The tables show, for each alignment threshold (with the coverage escape at the current setting
and switched off), for the alignment the coverage escape still needs, and for the sentence's cosine in the
alignment's place (the rule before), the share of answerable questions still answered, answer_hit@1 over all
answerable questions, and the share of unanswerable questions wrongly answered. The current constants are marked.
The area under the ROC curve of the best sentence's alignment and of its cosine (answerable against unanswerable)
shows which signal tells the two apart better at any threshold.

    .venv/bin/python scripts/calibrate_no_answer.py [--limit 1000] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qa import answer as A  # noqa: E402
from qa.evaluate import answer_contains, read_questions  # noqa: E402
from qa.index import build_index, embedder_for, load_index  # noqa: E402
from qa.manifest import Manifest  # noqa: E402
from qa.search import search  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUAD = os.path.join(ROOT, "eval", "squad-dev")
THRESHOLDS = (0.35, 0.375, 0.40, 0.425, 0.45, 0.475, 0.50, 0.525, 0.55)
FLOORS = (0.0, 0.25, 0.30, 0.35, 0.40, 0.45)


def best_sentence(index, question: str) -> dict | None:
    """Alignment, cosine, coverage and text of the sentence /api/ask would put first, before the no-answer rule."""
    result = search(index, question, A.ANSWER_PASSAGES)
    scored = A.score_sentences(result, index.embedder)
    if not scored:
        return None
    best = scored[0]
    return {"alignment": A.sentence_alignment(result, index.embedder, best), "cosine": best.cosine,
            "coverage": best.coverage, "text": result.hits[best.pos].passage.text[best.start:best.end]}


def table(rows: list[dict], signal: str, coverage_rule: float, floors: tuple | None = None) -> list[dict]:
    """The rule's outcome for each threshold on `signal` (or, given `floors`, for each floor of the coverage escape
    at the current alignment threshold)."""
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    out = []
    settings = ([(A.NO_ANSWER_ALIGNMENT, f) for f in floors] if floors
                else [(c, A.NO_ANSWER_ESCAPE_ALIGNMENT) for c in THRESHOLDS])
    for c, f in settings:
        f = f if signal == "alignment" and coverage_rule <= 1 else None  # no floor: cosine rule, or no escape

        def ok(r, c=c, f=f):
            escape = r["coverage"] >= coverage_rule and (f is None or r["alignment"] >= f)
            return r[signal] is not None and (r[signal] >= c or escape)

        out.append({signal: c, "coverage": coverage_rule, "floor": f,
                    "answered": sum(map(ok, answerable)) / max(len(answerable), 1),
                    "answer_hit@1": sum(1 for r in answerable if ok(r) and r["hit"]) / max(len(answerable), 1),
                    "false_answers": sum(map(ok, unanswerable)) / max(len(unanswerable), 1)})
    return out


def auc(rows: list[dict], signal: str) -> float:
    """The area under the ROC curve of the best sentence's `signal` as a test of answerable against unanswerable:
    the chance that an answerable question's is higher than an unanswerable one's (ties count half)."""
    neg = np.sort([r[signal] for r in rows if not r["answerable"] and r[signal] is not None])
    pos = np.array([r[signal] for r in rows if r["answerable"] and r[signal] is not None])
    if not len(pos) or not len(neg):
        return float("nan")
    below, upto = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")
    return float((below + (upto - below) / 2).sum() / (len(pos) * len(neg)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, help="questions per side (a random sample, seed 0)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = ap.parse_args(argv)
    with open(os.path.join(SQUAD, "articles.jsonl"), encoding="utf-8") as f:
        articles = [json.loads(line) for line in f if line.strip()]
    ids = sorted(a["id"] for a in articles)
    indexed = set(ids[::2])
    questions = read_questions(os.path.join(SQUAD, "questions.jsonl"))
    sides = {True: [q for q in questions if q["doc_id"] in indexed],
             False: [q for q in questions if q["doc_id"] not in indexed]}
    if args.limit:
        rng = random.Random(0)
        sides = {k: rng.sample(v, min(args.limit, len(v))) for k, v in sides.items()}
    with tempfile.TemporaryDirectory(prefix="qa-calibrate-") as tmp:
        half = os.path.join(tmp, "half.jsonl")
        with open(half, "w", encoding="utf-8") as f:
            for a in articles:
                if a["id"] in indexed:
                    f.write(json.dumps(a, ensure_ascii=False) + "\n")
        t = time.perf_counter()
        build_index([half], os.path.join(tmp, "index"))
        index = load_index(os.path.join(tmp, "index"), embedder=embedder_for(Manifest.load(os.path.join(tmp, "index"))))
        print(f"indexed {len(indexed)} of {len(ids)} articles ({index.passage_count} passages) in "
              f"{time.perf_counter() - t:.0f}s", file=sys.stderr)
        rows = []
        for answerable, qs in sides.items():
            for q in qs:
                best = best_sentence(index, q["question"])
                rows.append({"answerable": answerable, "alignment": best and best["alignment"],
                             "cosine": best and best["cosine"], "coverage": best["coverage"] if best else 0.0,
                             "hit": bool(best) and answer_contains(best["text"], q.get("answers", []))})
        index.close()
    tables = {"current": table(rows, "alignment", A.NO_ANSWER_COVERAGE),
              "the coverage escape's alignment floor": table(rows, "alignment", A.NO_ANSWER_COVERAGE, floors=FLOORS),
              "alignment only": table(rows, "alignment", 2.0),
              "cosine in the alignment's place": table(rows, "cosine", A.NO_ANSWER_COVERAGE)}
    current = (A.NO_ANSWER_ALIGNMENT, A.NO_ANSWER_COVERAGE, A.NO_ANSWER_ESCAPE_ALIGNMENT)
    summary = {"answerable": len(sides[True]), "unanswerable": len(sides[False]),
               "current": dict(zip(("alignment", "coverage", "escape_alignment"), current)),
               "auc": {signal: auc(rows, signal) for signal in ("alignment", "cosine")}, "tables": tables}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{len(sides[True])} answerable and {len(sides[False])} unanswerable squad-dev questions; "
          f"current rule: alignment ≥ {A.NO_ANSWER_ALIGNMENT}, or coverage ≥ {A.NO_ANSWER_COVERAGE} "
          f"with alignment ≥ {A.NO_ANSWER_ESCAPE_ALIGNMENT}")
    print(f"area under the ROC curve, answerable against unanswerable: the best sentence's alignment "
          f"{summary['auc']['alignment']:.3f}, its cosine {summary['auc']['cosine']:.3f}\n")
    for name, rows_ in tables.items():
        signal = "cosine" if "cosine" in rows_[0] else "alignment"
        print(f"{name}:\n| {signal} ≥ | coverage ≥ | escape needs alignment ≥ | answerable answered | "
              "answer_hit@1 | unanswerable answered (false) |\n|---:|---:|---:|---:|---:|---:|")
        for r in rows_:
            mark = " ←" if (r.get("alignment"), r["coverage"], r["floor"]) == current else ""
            cov = "off" if r["coverage"] > 1 else f"{r['coverage']:.2f}"
            floor = "-" if r["floor"] is None else f"{r['floor']:.2f}"
            print(f"| {r[signal]:.3f}{mark} | {cov} | {floor} | {r['answered']:.3f} | {r['answer_hit@1']:.3f} | "
                  f"{r['false_answers']:.3f} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
