"""Extractive answers: the sentences of the top passages that best answer the question, each with its citation.

No sentence is generated: every answer sentence is a span of a returned passage (`text[start:end]`). A sentence is
scored by how close it is to the question in meaning (its cosine), how much of the question's words it holds, how
well its word pieces, with those of the sentence before it, align with the question's one by one (after the recall
of BERTScore, in the model's contextual token vectors), and how well its passage ranks. Coverage and alignment weigh
the question's words by how few of the candidate sentences hold them, so the words that set the answer apart from
its neighbours count, not the topic they share. The scores are standardised over the candidate sentences of one
question, so no weight depends on a collection's score scale.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .search import SearchResult, SentenceScore, search, standardise
from .store import Filters, StoredPassage

if TYPE_CHECKING:
    from .embed import Embedder
    from .embed.base import TextTokens
    from .index import Index

# No answer unless the best sentence aligns with the question (raw token alignment, read with the sentence before it)
# or holds this share of its IDF weight: set by scripts/calibrate_no_answer.py, see docs/answers.md.
NO_ANSWER_ALIGNMENT = 0.475
NO_ANSWER_COVERAGE = 0.50
# The coverage escape still needs some alignment: it turns away a sentence that holds the question's words only by a
# false friend of a stem prefix ("Francisco" for "France"); see docs/answers.md.
NO_ANSWER_ESCAPE_ALIGNMENT = 0.35
ANSWER_PASSAGES = 5  # candidate sentences come from this many top passages
MAX_SENTENCES = 3
FOLLOW_MARGIN = 0.75  # further sentences (from other passages) within this many standard deviations of the best
TOKEN_CACHE = 64  # passages whose token vectors are kept, most recently used first (~115 KB for 150 word pieces)
# Token alignment, the costly signal, only for the passages that hold the best ALIGN_SENTENCES sentences by the
# other signals: aligning more of them left answer_hit@1 as it was (see docs/answers.md).
ALIGN_SENTENCES = 4
# The kind of answer a question asks for in so many words (a number for "how many", a date for "when"...): a sentence
# that holds one counts as holding one more of the question's words (`answer_kind`, `local_coverage`).
_ASKS_NUMBER = re.compile(r"\bhow (many|much|long|old|far|large|big|tall|high)\b"
                          r"|\bwhat (percentage|percent|proportion|number|amount)\b", re.I)
_ASKS_DATE = re.compile(r"\bwhen\b|\b(what|which) (year|date|century|decade|month|day)\b", re.I)
_NUMBER = re.compile(r"\d|\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty"
                     r"|sixty|seventy|eighty|ninety|hundred|thousand|million|billion|dozen)\b", re.I)
_DATE = re.compile(r"\b\d{3,4}s?\b|\b(January|February|March|April|May|June|July|August|September|October"
                   r"|November|December)\b|\bcentur(y|ies)\b")
# A sentence that goes on with the one before it: "also", "added", "further"... among its first words. News spreads a
# speaker's points over paragraphs of a sentence or two, so an answer's next point is often the next paragraph's.
_CONTINUES = re.compile(r"\W*(?:[\w’'-]+\W+){0,3}?(?:also|added|adding|further|furthermore|moreover|additionally"
                        r"|in addition)\b", re.I)


class CandidateSentence(NamedTuple):
    """A sentence of one of the top passages, scored as an answer to the question (`score_sentences`)."""

    score: float  # its answer score, best first; a continuation keeps the score of the sentence it continues
    pos: int  # its passage's position among the hits
    idx: int  # its number in its passage
    start: int  # its span in the passage text
    end: int
    cosine: float | None  # with the question (None for a continuation)
    coverage: float  # its share of the question's IDF weight over the collection (for the no-answer rule)
    alignment: float | None  # its raw token alignment (the plain mean over the question's pieces); None: not aligned

    @property
    def place(self) -> tuple[int, int]:
        """(hit position, sentence idx): which sentence of which hit it is."""
        return self.pos, self.idx


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
        """The sentence object of the ask API."""
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
        """Whether no sentence answers the question."""
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


class TokenVectors:
    """Passages' contextual token vectors by text, computed on demand in one batch and kept for the
    `size` most recently used texts (thread-safe; float16)."""

    def __init__(self, size: int = TOKEN_CACHE):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, embedder: Embedder, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(vectors, offsets) per text, as `embedder.token_vectors` gives them."""
        model = getattr(embedder, "model_name", "")
        with self._lock:
            found = {t: self._items[(model, t)] for t in dict.fromkeys(texts) if (model, t) in self._items}
            for t in found:
                self._items.move_to_end((model, t))
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            computed = {t: (v.astype(np.float16), o) for t, (v, o) in zip(missing, embedder.token_vectors(missing))}
            found.update(computed)
            with self._lock:
                for t, item in computed.items():
                    self._items[(model, t)] = item
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return [found[t] for t in texts]


_token_vectors = TokenVectors()


class KnownTokens(NamedTuple):
    """Word pieces' vectors at hand for one question without a forward pass: its own, from the forward pass of its
    search, and a reader of its passages' stored ones (by text; those it lacks are left out)."""

    query: TextTokens | None = None
    passages: Callable[[Sequence[str]], Mapping[str, TextTokens]] = lambda texts: {}


def known_tokens(result: SearchResult) -> KnownTokens:
    """The word pieces a search result gives its answer: the question's, and its hits' as the build stored them."""
    read = result.stored_tokens
    if read is None:
        return KnownTokens(result.query_tokens)
    rowids = {h.passage.text: h.passage.rowid for h in result.hits}

    def passages(texts: Sequence[str]) -> dict[str, TextTokens]:
        found = read([rowids[t] for t in texts if t in rowids])
        return {t: found[rowids[t]] for t in texts if rowids.get(t) in found}

    return KnownTokens(result.query_tokens, passages)


def token_alignments(embedder: Embedder, question: str, sentences: Sequence[tuple[str, int, int]],
                     known: KnownTokens = KnownTokens()) -> np.ndarray:
    """How well each sentence (passage text, start, end) aligns with each of the question's word pieces: the
    piece's best cosine with a word piece of the sentence (sentences x question pieces; 0 for a sentence without
    pieces). Token vectors are contextual: the question's from its own pass, the sentence's from its whole
    passage's, so a sentence is read in its context, and "illness" can find "cholera" where term coverage needs the
    word itself. Those in `known` are used as they are; the others are computed (and cached)."""
    (qvecs, _) = known.query if known.query is not None else embedder.token_vectors([question])[0]
    out = np.zeros((len(sentences), len(qvecs)))
    if not sentences or not len(qvecs):
        return out
    texts = list(dict.fromkeys(text for text, _, _ in sentences))
    states = dict(known.passages(texts))
    missing = [t for t in texts if t not in states]
    states.update(zip(missing, _token_vectors.get(embedder, missing)))
    spans = np.array([(start, end) for _, start, end in sentences]).reshape(-1, 2)
    of_text = collections.defaultdict(list)
    for i, (text, _, _) in enumerate(sentences):
        of_text[text].append(i)
    # each passage's cosines with the question once, however many of its sentences are aligned (each sentence is
    # read with the one before it, so most pieces count twice)
    for text, rows in of_text.items():
        vecs, offsets = states[text]
        if not len(offsets):
            continue
        cosines = qvecs @ np.asarray(vecs, np.float32).T  # question pieces x passage pieces
        starts, ends = spans[rows].T
        inside = (offsets[:, 0] < ends[:, None]) & (offsets[:, 1] > starts[:, None])  # sentences x passage pieces
        best = np.where(inside[:, None, :], cosines, -np.inf).max(axis=2)
        found = inside.any(axis=1)
        out[np.asarray(rows)[found]] = best[found]
    return out


def alignments(embedder: Embedder, question: str, sentences: Sequence[tuple[str, int, int]],
               known: KnownTokens = KnownTokens()) -> np.ndarray:
    """How well each sentence (passage text, start, end) aligns with the question word piece by word piece: the
    mean, over the question's word pieces, of each one's best cosine with a word piece of the sentence
    (`token_alignments`). This is the recall of BERTScore (Zhang et al., 2020), with unweighted tokens as its
    default."""
    return recall(token_alignments(embedder, question, sentences, known))


def recall(pieces: np.ndarray) -> np.ndarray:
    """The mean of each row of `token_alignments` (0 for a question without word pieces)."""
    return pieces.mean(axis=1) if pieces.shape[1] else np.zeros(len(pieces))


def with_previous(result: SearchResult, sentence: CandidateSentence) -> tuple[str, int, int]:
    """(passage text, start, end) of `sentence` read together with the sentence before it in its passage (on its own
    if it is the first)."""
    passage = result.hits[sentence.pos].passage
    previous = result.sentence(passage.rowid, sentence.idx - 1)
    return passage.text, previous.start if previous else sentence.start, sentence.end


def score_sentences(result: SearchResult, embedder: Embedder | None = None) -> list[CandidateSentence]:
    """The sentences of the top passages, best first: standardised cosine + standardised local term coverage
    (`local_coverage`; the kind of answer asked for counts as one of the question's words, see `answer_kind`) +
    standardised passage score, plus the standardised token alignment with the question of the sentence read with
    the one before it (the question's word pieces weighted as `local_coverage` weighs words), when an embedder is
    given (see ALIGN_SENTENCES)."""
    hits = result.hits[:ANSWER_PASSAGES]
    runs = [result.sentence_rows_of(hit.passage.rowid) for hit in hits]
    at = np.fromiter(itertools.chain.from_iterable(runs), np.int64)  # the candidates' rows, hit by hit
    if not len(at):
        return []
    rows = result.sentence_rows
    pos = np.repeat(np.arange(len(hits)), [len(run) for run in runs])
    meta, cosines, coverages = rows.meta[at], rows.cosines[at].astype(float), rows.coverages[at]
    held = rows.held[at]
    kind = answer_kind(result.query)
    if kind is not None:  # the kind of answer asked for, as one more word of the question
        asked = [bool(kind.search(hits[p].passage.text, start, end))
                 for p, start, end in zip(pos.tolist(), meta[:, 2].tolist(), meta[:, 3].tolist())]
        held = np.column_stack((held, asked))
    passage_scores = np.array([float(hit.scores["fused"]) for hit in hits])[pos]
    others = standardise(cosines) + standardise(local_coverage(held)) + standardise(passage_scores)
    z_align = np.zeros(len(at))
    raw: dict[int, float] = {}  # raw alignment of the aligned sentences, by candidate
    candidates = [CandidateSentence(0.0, p, idx, start, end, c, v, None) for p, (_, idx, start, end), c, v
                in zip(pos.tolist(), meta.tolist(), cosines.tolist(), coverages.tolist())]
    if embedder is not None:
        # aligned: the sentences of the passages holding the best few by the other signals; the rest get the
        # lowest standardised alignment
        best = np.argsort(-others, kind="stable")[:ALIGN_SENTENCES]
        passages = set(pos[best].tolist())
        aligned = [i for i, p in enumerate(pos.tolist()) if p in passages]
        # a sentence is aligned together with the one before it in its passage, so that the question's words
        # named there count for it ("...changed by a Rhine straightening program. The rate of flow was increased
        # and the ground water level fell." for "What happened with the ground water level with the Rhine
        # straightening program?")
        spans = [with_previous(result, candidates[i]) for i in aligned]
        pieces = token_alignments(embedder, result.query, spans, known_tokens(result))
        raw = dict(zip(aligned, recall(pieces).tolist()))
        # ranked by the question's word pieces weighted as local coverage weighs its words: a piece that every
        # candidate matches well (the topic) counts less than one that few match
        found = standardise(local_coverage(pieces))
        z_align[:] = found.min()
        z_align[aligned] = found
    scored = [row._replace(score=score, alignment=raw.get(i))
              for i, (row, score) in enumerate(zip(candidates, (others + z_align).tolist()))]
    return sorted(scored, key=lambda r: -r.score)


def answer_kind(question: str) -> re.Pattern | None:
    """What a sentence holds that gives the kind of answer the question asks for in so many words (a number, a
    date), or None."""
    if _ASKS_NUMBER.search(question):
        return _NUMBER
    if _ASKS_DATE.search(question):
        return _DATE
    return None


def local_coverage(held: np.ndarray) -> np.ndarray:
    """Each candidate sentence's share of the question's words, a word weighted by how few of the candidate
    sentences hold it (the IDF of BM25, over the candidates instead of the collection). The words that set the
    answer apart from its neighbours count, not the topic that they all share: for "When did Mongke Khan die?" on
    squad-dev, the passages are about Möngke Khan, so "die" picks "He died in 1259 without a successor." over the
    sentence that names him. (Collection rarity is the passage score's part.) `held` is candidate sentences x
    question words, each 1 or 0, or how closely the sentence holds the word (a word piece's best cosine in
    `token_alignments`: then the candidates that hold a piece are counted softly)."""
    n = np.clip(held, 0, 1).sum(axis=0)
    weights = np.log1p((len(held) - n + 0.5) / (n + 0.5))
    total = float(weights.sum())
    return held @ weights / total if total > 0 else np.zeros(len(held))


def sentence_alignment(result: SearchResult, embedder: Embedder, sentence: CandidateSentence) -> float:
    """The raw token alignment of a candidate sentence, computed now if it was not aligned in `score_sentences`."""
    if sentence.alignment is not None:
        return sentence.alignment
    return float(alignments(embedder, result.query, [with_previous(result, sentence)], known_tokens(result))[0])


def answer_question(index: Index, question: str, k: int = 5, *, mode: str = "hybrid",
                    filters: Filters | None = None) -> Answer:
    """Search, then pick the best answering sentences; no answer when nothing is relevant enough."""
    result = answer_search(index, question, k, mode, filters)
    chosen = choose_sentences(result, index.embedder, score_sentences(result, index.embedder))
    return cited_answer(question, result, with_continuations(result, index.embedder, chosen), k)


def answer_search(index: Index, question: str, k: int, mode: str, filters: Filters | None) -> SearchResult:
    """The search that answers are drawn from, ranking twice the passages they come from, so that an answer's
    continuation in the next paragraph can be cited."""
    reach = 2 * max(k, ANSWER_PASSAGES)
    # sentence evidence needs the dense side: lexical mode still answers from its own ranking
    result = search(index, question, reach, mode=mode if mode != "lexical" else "hybrid", filters=filters)
    if mode == "lexical":
        result = dataclasses.replace(result, hits=search(index, question, reach, mode="lexical",
                                                         filters=filters).hits, mode="lexical")
    # the hits' word pieces as the build stored them, read when aligned: alignment then takes no forward pass
    return dataclasses.replace(result, stored_tokens=_read_once(functools.partial(index.store.passage_tokens,
                                                                                  dim=index.dim)))


def _read_once(read: Callable[[Sequence[int]], Mapping[int, TextTokens]]) -> Callable[[Sequence[int]],
                                                                                         dict[int, TextTokens]]:
    """`read` with its answers kept: one answer aligns a passage while scoring, for the no-answer rule and for a
    continuation, and reads its word pieces from the store once."""
    kept: dict[int, TextTokens] = {}

    def cached(rowids: Sequence[int]) -> dict[int, TextTokens]:
        missing = [r for r in rowids if r not in kept]
        if missing:
            kept.update(read(missing))
        return {r: kept[r] for r in rowids if r in kept}

    return cached


def choose_sentences(result: SearchResult, embedder: Embedder,
                     scored: list[CandidateSentence]) -> list[CandidateSentence]:
    """The best sentence if it is answerable (none otherwise), then further answerable ones within FOLLOW_MARGIN of
    it, one a passage, up to MAX_SENTENCES."""
    def answerable(row: CandidateSentence) -> bool:
        return is_answerable(sentence_alignment(result, embedder, row), row.coverage)

    chosen: list[CandidateSentence] = []
    if not scored or not answerable(scored[0]):
        return chosen
    best = scored[0].score
    used_passages = set()
    for row in scored:
        if chosen and (best - row.score > FOLLOW_MARGIN or row.pos in used_passages):
            continue
        if chosen and not answerable(row):
            continue
        chosen.append(row)
        used_passages.add(row.pos)
        if len(chosen) >= MAX_SENTENCES:
            break
    return chosen


def cited_answer(question: str, result: SearchResult, chosen: list[CandidateSentence], k: int) -> Answer:
    """The answer of the chosen sentences, each quoted with the number of its passage's citation (numbered as they
    are first cited), and the first k hits, or as many as reach the last passage cited."""
    citations, numbers, sentences = [], {}, []
    hits = result.hits[:k]
    for row in chosen:
        if row.pos >= len(hits):
            hits = result.hits[:row.pos + 1]
        if row.pos not in numbers:
            numbers[row.pos] = len(numbers) + 1
        p = result.hits[row.pos].passage
        sentences.append(AnswerSentence(p.text[row.start:row.end], numbers[row.pos], p.passage_id, row.start, row.end,
                                        row.score))
    for pos, n in sorted(numbers.items(), key=lambda x: x[1]):
        p = result.hits[pos].passage
        citations.append({"n": n, **p.citation(StoredPassage.ANSWER_CITATION_FIELDS)})
    return Answer(question, sentences, citations, dataclasses.replace(result, hits=hits))


def next_sentence(result: SearchResult, sentence: CandidateSentence) -> CandidateSentence | None:
    """The sentence after `sentence` in its article, as its continuation (its score, no cosine or alignment yet):
    the next of its passage, or the first of the article's next paragraph when that is among the hits; None if none."""
    passage = result.hits[sentence.pos].passage
    following = result.sentence(passage.rowid, sentence.idx + 1)
    if following is not None:
        return continuation(sentence, sentence.pos, following)
    if sentence.idx != len(result.sentence_rows_of(passage.rowid)) - 1:
        return None
    for p, hit in enumerate(result.hits):
        if hit.passage.doc_id == passage.doc_id and hit.passage.paragraph_index == passage.paragraph_index + 1:
            first = result.sentence(hit.passage.rowid, 0)
            return continuation(sentence, p, first) if first else None
    return None


def continuation(sentence: CandidateSentence, pos: int, following: SentenceScore) -> CandidateSentence:
    """Sentence `following` of hit `pos` as the continuation of `sentence`: with its score, not yet aligned."""
    return CandidateSentence(sentence.score, pos, following.idx, following.start, following.end, None,
                             following.coverage, None)


def with_continuations(result: SearchResult, embedder: Embedder,
                       chosen: list[CandidateSentence]) -> list[CandidateSentence]:
    """The chosen answer sentences, each followed by the sentence after it in its article when that one goes on with
    it (`_CONTINUES`) and is an answer in its own right (the no-answer rule on its own alignment, without the
    sentence before it), up to MAX_SENTENCES in all."""
    out: list[CandidateSentence] = []
    taken = {row.place for row in chosen}
    for n, row in enumerate(chosen):
        out.append(row)
        if len(out) + len(chosen) - n - 1 >= MAX_SENTENCES:  # no room left beside the chosen rows still to come
            continue
        following = next_sentence(result, row)
        if following is None or following.place in taken:
            continue
        text = result.hits[following.pos].passage.text
        if not _CONTINUES.match(text, following.start, following.end):
            continue
        alignment = float(alignments(embedder, result.query, [(text, following.start, following.end)],
                                     known_tokens(result))[0])
        if is_answerable(alignment, following.coverage):
            out.append(following._replace(alignment=alignment))
            taken.add(following.place)
    return out


def is_answerable(alignment: float, cov: float) -> bool:
    """Whether a sentence is relevant enough to be an answer: its word pieces align with the question's, or it holds
    the question's rare words and still aligns somewhat."""
    return alignment >= NO_ANSWER_ALIGNMENT or (cov >= NO_ANSWER_COVERAGE and alignment >= NO_ANSWER_ESCAPE_ALIGNMENT)

