#!/usr/bin/env python3
"""The candidates' exact BM25 with term proximity at any size: tantivy's id-restricted query against their words.

A corpus of about --passages N paragraphs (squad-dev, then copies of its articles with remixed sentences, as
`bench_query.py --passages N --short` makes) goes into a tantivy index and, analysed as the store analyses it, into
one array of vocabulary ids with each passage's start, as the row cache's table holds them. For each question its top
--candidates passages by tantivy's BM25 are the candidates; each pass scores every question's candidates both ways,
in a loop (`LexicalIndex.scores`; `qa.words.proximity_scores` on the words gathered from the array), and prints the
p50 and p99 of each. It checks the two agree first (a relative difference above 1e-5 stops it, exit 1). No model and
no store: the lexical work alone. docs/performance.md#lexical-cost-at-scale has the figures.

    scripts/bench_lexical.py --passages 1000000 [--questions 300] [--candidates 100] [--passes 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import NamedTuple

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qa_harness import CORPORA, log, machine_note, markdown_table, percentile, read_questions  # noqa: E402


class Words(NamedTuple):
    """Every passage's words as vocabulary ids, one passage after the other (rowid i starts at `starts[i - 1]`)."""

    ids: object  # np.ndarray, int32
    starts: object
    counts: object
    vocabulary: dict[str, int]
    total: int  # indexed words


def passage_rows(corpus: str) -> Iterator:
    """The corpus's paragraphs as `PassageRow`s, rowids from 1."""
    from qa.store import PassageRow

    rowid = 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            article = json.loads(line)
            for paragraph in article["paragraphs"]:
                rowid += 1
                text = paragraph if isinstance(paragraph, str) else paragraph["text"]
                yield PassageRow(rowid, article["id"], None, None, article.get("title", ""), text)


def analyse(corpus: str) -> Words:
    """Every passage's words as the store keeps them (`qa.words.Analyzer`, -1 for a word too long to index)."""
    import numpy as np

    from qa.words import DROPPED, Analyzer

    analyzer, vocabulary, arrays = Analyzer(), {}, []
    for row in passage_rows(corpus):
        arrays.append(np.array([vocabulary.setdefault(w, len(vocabulary)) if w else DROPPED
                                for w in analyzer.words(row.title, row.text)], np.int32))
    counts = np.array([len(a) for a in arrays], np.int64)
    ids = np.concatenate(arrays)
    return Words(ids, np.cumsum(counts) - counts, counts, vocabulary, int(np.count_nonzero(ids != DROPPED)))


def tantivy_index(corpus: str, folder: str):
    """A tantivy index of the corpus, as a full build makes it."""
    from qa.lexical import LexicalIndex

    class Rows:
        generation = 1

        def passage_rows(self, doc_ids=None):
            return passage_rows(corpus)

    lexical = LexicalIndex.create(folder)
    lexical.rebuild(Rows())
    return lexical


def from_words(lexical, words: Words, terms: list[str], pairs: list, rowids: list[int]) -> dict[int, float]:
    """The candidates' exact scores from their words, gathered from the array as the row cache's table gathers them."""
    import numpy as np

    from qa.rowcache import row_ranges
    from qa.words import LexicalQuery, PassageWords, StoredWords, proximity_scores

    tokens = lexical.tokens(terms)
    at = np.asarray(rowids, np.int64) - 1
    rows = StoredWords(at + 1, words.counts[at], words.ids[row_ranges(words.starts[at], words.counts[at])])
    query = LexicalQuery.of(tokens, lexical.body_doc_freqs(tokens), lexical.token_pairs(pairs), lexical.num_docs,
                            words.total / lexical.num_docs)
    vocabulary = {w: words.vocabulary[w] for w in tokens if w in words.vocabulary}
    return dict(zip(rowids, proximity_scores(query, PassageWords.of(rows, vocabulary, query.words)).tolist()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, required=True, help="about this many passages (squad-dev remixed)")
    ap.add_argument("--questions", type=int, default=300, help="squad-dev questions")
    ap.add_argument("--candidates", type=int, default=100, help="each question's top passages by BM25")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--work", help="folder for the corpus and tantivy's index (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a Markdown table")
    args = ap.parse_args()
    if args.passages < 1 or args.questions < 1 or args.candidates < 1 or args.passes < 1:
        ap.error("--passages, --questions, --candidates and --passes must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench_query import synthesise

    from qa.text import query_pairs, query_terms

    work = args.work or tempfile.mkdtemp(prefix="qa-bench-lexical-")
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, f"corpus-{args.passages}.jsonl")
    if not os.path.exists(corpus):
        synthesise(CORPORA["squad-dev"][0][0], args.passages, corpus, short=True)
    t0 = time.perf_counter()
    words = analyse(corpus)
    log(f"{len(words.counts):,} passages analysed in {time.perf_counter() - t0:.0f} s "
        f"({len(words.vocabulary):,} words in the vocabulary)")
    t0 = time.perf_counter()
    lexical = tantivy_index(corpus, os.path.join(work, f"lexical-{args.passages}"))
    log(f"tantivy's index in {time.perf_counter() - t0:.0f} s")
    cases = []
    for question in read_questions(CORPORA["squad-dev"][1], limit=args.questions):
        terms, pairs = query_terms(question), query_pairs(question)
        rowids = [rid for rid, _ in lexical.search(terms, args.candidates)]
        if rowids:
            cases.append((terms, pairs, rowids))
    worst = 0.0
    for terms, pairs, rowids in cases:
        mine, theirs = from_words(lexical, words, terms, pairs, rowids), lexical.scores(terms, rowids, pairs)
        worst = max([worst] + [abs(mine[r] - theirs.get(r, 0.0)) / max(theirs.get(r, 0.0), 1e-6) for r in rowids])
    if worst > 1e-5:
        print(f"bench_lexical: the words' scores differ from tantivy's by up to {worst:.2e}", file=sys.stderr)
        return 1
    passes = []
    for _ in range(args.passes):
        mine, theirs = [], []
        for terms, pairs, rowids in cases:
            t = time.perf_counter()
            from_words(lexical, words, terms, pairs, rowids)
            mine.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            lexical.scores(terms, rowids, pairs)
            theirs.append((time.perf_counter() - t) * 1000)
        passes.append({"words_p50_ms": percentile(mine, 50), "words_p99_ms": percentile(mine, 99),
                       "tantivy_p50_ms": percentile(theirs, 50), "tantivy_p99_ms": percentile(theirs, 99)})
    if args.json:
        print(json.dumps({"passages": len(words.counts), "questions": len(cases), "candidates": args.candidates,
                          "worst_difference": worst, "passes": passes}))
        return 0
    print(f"### The exact BM25 with proximity of {args.candidates} candidates, {len(cases)} questions, "
          f"{len(words.counts):,} passages (the same scores to {worst:.1e})\n")
    print(markdown_table(["pass", "the words p50 / p99 ms", "tantivy p50 / p99 ms"],
                         [[i + 1, f"{p['words_p50_ms']:.2f} / {p['words_p99_ms']:.2f}",
                           f"{p['tantivy_p50_ms']:.2f} / {p['tantivy_p99_ms']:.2f}"] for i, p in enumerate(passes)]))
    print(f"\n{machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
