"""`qa eval`: retrieval and answer quality over a question set with gold paragraphs and answers."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadRequest

if TYPE_CHECKING:
    from .index import Index


def read_questions(path: str, limit: int | None = None) -> list[dict]:
    """Questions in the eval schema: `question`, `doc_id`, `paragraph_index`, optional `answers`."""
    questions = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    q = json.loads(line)
                except ValueError as e:
                    raise BadRequest(f"{path}:{lineno}: malformed JSON: {e}") from None
                if not isinstance(q, dict) or not isinstance(q.get("question"), str) or "doc_id" not in q \
                        or not isinstance(q.get("paragraph_index"), int):
                    raise BadRequest(f"{path}:{lineno}: needs question, doc_id and paragraph_index")
                questions.append(q)
                if limit and len(questions) >= limit:
                    break
    except OSError as e:
        raise BadRequest(f"cannot read {path}: {e.strerror}") from None
    if not questions:
        raise BadRequest(f"no questions in {path}")
    return questions


def answer_contains(sentence: str, answers: Sequence[str]) -> bool:
    """Whether a sentence holds one of the gold answers (case- and space-insensitive)."""
    norm = " ".join(sentence.lower().split())
    return any(" ".join(a.lower().split()) in norm for a in answers if a.strip())


def evaluate(index: Index, questions: Sequence[dict], *, k: int = 10, mode: str = "hybrid", answers: bool = True,
             progress: Callable[[int], None] | None = None) -> dict:
    """R@1, R@5, R@10, MRR@10 (over the first k), answer_hit@1 and latency percentiles."""
    from .answer import answer_question
    from .search import search

    ranks, latencies, hits = [], [], []
    for i, q in enumerate(questions):
        t = time.perf_counter()
        if answers and q.get("answers"):
            result = answer_question(index, q["question"], k=max(k, 5), mode=mode)
            search_hits = result.search.hits[:k]
            first = result.sentences[0].text if result.sentences else ""
            hits.append(answer_contains(first, q["answers"]))
        else:
            search_hits = search(index, q["question"], k, mode=mode).hits
        latencies.append((time.perf_counter() - t) * 1000)
        gold = (q["doc_id"], q["paragraph_index"])
        rank = next((r for r, h in enumerate(search_hits, 1)
                     if (h.passage.doc_id, h.passage.paragraph_index) == gold
                     or any((d.doc_id, d.paragraph_index) == gold for d in h.duplicates)), None)
        ranks.append(rank)
        if progress:
            progress(i + 1)
    n = len(questions)
    recall = lambda c: sum(1 for r in ranks if r is not None and r <= c) / n  # noqa: E731
    out = {"questions": n, "mode": mode, "k": k,
           "recall@1": recall(1), "recall@5": recall(5), "recall@10": recall(min(10, k)),
           "mrr@10": sum(1.0 / r for r in ranks if r is not None and r <= 10) / n,
           "answer_hit@1": (sum(hits) / len(hits)) if hits else None,
           "latency_p50_ms": float(np.percentile(latencies, 50)),
           "latency_p95_ms": float(np.percentile(latencies, 95))}
    return out
