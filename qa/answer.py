"""Extractive answers: the sentences of the top passages that best answer the question, each with its citation.

No sentence is generated: every answer sentence is a span of a returned passage (`text[start:end]`). A sentence is
scored by how close it is to the question in meaning (its cosine), how much of the question's rare words it holds
(IDF-weighted coverage), and how well its passage ranks; the scores are standardised over the candidate sentences
of one question, so no weight depends on a collection's score scale.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .search import SearchResult, search, zscores
from .store import Filters

# No answer when the best sentence is neither this close to the question nor holds this share of its IDF weight.
# Calibrated by scripts/calibrate_no_answer.py (half of squad-dev indexed; its questions answerable, the other half's
# not): the highest cosine, in steps of 0.05, that keeps answer_hit@1 on answerable questions within half a point of
# answering everything. At 0.40: 99.0% of answerable questions answered, 0.752 answer_hit@1 (0.756 with no rule),
# 28% of unanswerable ones answered (60% at 0.30).
NO_ANSWER_COSINE = 0.40
NO_ANSWER_COVERAGE = 0.50
ANSWER_PASSAGES = 5  # candidate sentences come from this many top passages
MAX_SENTENCES = 3
FOLLOW_MARGIN = 0.75  # further sentences (from other passages) within this many standard deviations of the best

@dataclasses.dataclass
class AnswerSentence:
    """A sentence of a passage, quoted exactly, with its citation number."""

    text: str
    citation: int
    passage_id: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return {"text": self.text, "citation": self.citation, "passage_id": self.passage_id,
                "start": self.start, "end": self.end}


@dataclasses.dataclass
class Answer:
    """The answer (or its absence), its citations and the search behind it."""

    question: str
    sentences: list[AnswerSentence]
    citations: list[dict]
    search: SearchResult

    @property
    def no_answer(self) -> bool:
        return not self.sentences

    @property
    def text(self) -> str:
        """The answer sentences joined, each followed by its [n] marker."""
        return " ".join(f"{s.text} [{s.citation}]" for s in self.sentences)

    def highlights(self) -> dict[str, list[tuple[int, int]]]:
        """Answer spans by passage id, for highlighting."""
        out: dict[str, list[tuple[int, int]]] = {}
        for s in self.sentences:
            out.setdefault(s.passage_id, []).append((s.start, s.end))
        return out


def score_sentences(result: SearchResult) -> list[tuple[float, int, int, int, int, float, float]]:
    """(score, hit position, sentence idx, start, end, cosine, coverage) for the sentences of the top passages,
    best first: standardised cosine + standardised term coverage + standardised passage score."""
    rows = []
    for pos, hit in enumerate(result.hits[:ANSWER_PASSAGES]):
        for idx, start, end, cosine, cov in result.sentence_scores.get(hit.passage.rowid, []):
            rows.append((pos, idx, start, end, cosine, cov, float(hit.scores["fused"])))
    if not rows:
        return []
    ids = range(len(rows))
    z_cos = zscores({i: rows[i][4] for i in ids})
    z_cov = zscores({i: rows[i][5] for i in ids})
    z_pas = zscores({i: rows[i][6] for i in ids})
    scored = [(z_cos[i] + z_cov[i] + z_pas[i], *rows[i][:6]) for i in ids]
    return sorted(scored, key=lambda r: -r[0])


def answer_question(index, question: str, k: int = 5, *, mode: str = "hybrid",
                    filters: Filters | None = None) -> Answer:
    """Search, then pick the best answering sentences; no answer when nothing is relevant enough."""
    # sentence evidence needs the dense side: lexical mode still answers from its own ranking
    result = search(index, question, max(k, ANSWER_PASSAGES), mode=mode if mode != "lexical" else "hybrid",
                    filters=filters)
    if mode == "lexical":
        result = dataclasses.replace(result, hits=search(index, question, max(k, ANSWER_PASSAGES), mode="lexical",
                                                         filters=filters).hits, mode="lexical")
    scored = score_sentences(result)
    chosen = []
    if scored and is_answerable(scored[0][5], scored[0][6]):
        best = scored[0][0]
        used_passages = set()
        for row in scored:
            score, pos = row[0], row[1]
            if chosen and (best - score > FOLLOW_MARGIN or pos in used_passages):
                continue
            if chosen and not is_answerable(row[5], row[6]):
                continue
            chosen.append(row)
            used_passages.add(pos)
            if len(chosen) >= MAX_SENTENCES:
                break
    citations, numbers, sentences = [], {}, []
    hits = result.hits[:k]
    for row in chosen:
        score, pos, idx, start, end, cosine, cov = row
        hit = result.hits[pos]
        if pos >= len(hits):
            hits = result.hits[:pos + 1]
        if pos not in numbers:
            numbers[pos] = len(numbers) + 1
        p = hit.passage
        sentences.append(AnswerSentence(p.text[start:end], numbers[pos], p.passage_id, start, end, score))
    for pos, n in sorted(numbers.items(), key=lambda x: x[1]):
        p = result.hits[pos].passage
        citations.append({"n": n, "passage_id": p.passage_id, "doc_id": p.doc_id,
                          "paragraph_index": p.paragraph_index, "title": p.title, "source": p.source,
                          "author": p.author, "url": p.url, "published": p.published})
    result = dataclasses.replace(result, hits=hits)
    return Answer(question, sentences, citations, result)


def is_answerable(cosine: float, cov: float) -> bool:
    """Whether a sentence is relevant enough to be an answer: close in meaning, or holding the question's words."""
    return cosine >= NO_ANSWER_COSINE or cov >= NO_ANSWER_COVERAGE


def best_sentence_cosines(result: SearchResult) -> np.ndarray:
    """Best sentence cosine per hit (for calibration scripts)."""
    return np.array([max((s[3] for s in result.sentence_scores.get(h.passage.rowid, [])), default=-1.0)
                     for h in result.hits])
