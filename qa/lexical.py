"""BM25 over passage titles and texts with tantivy (block-max WAND top-k; see docs/ranking.md).

Like the vector index, this index is derived from the store, stamped with the store generation it reflects, and
rebuilt from the store when it lags (on disk by writers, in memory by readers), so it can never disagree with the
store for long and a crash between the two writes costs a rebuild, not a wrong answer.

The exact scores of candidates (`scores`) add term proximity to BM25: Metzler and Croft's sequential dependence
model (SIGIR 2005) as Anserini runs it over BM25. Each pair of neighbouring query words also scores as an exact
phrase (with the query's own spacing, so "University of Notre Dame" finds "University of Notre") and as a sloppy
phrase (the two words within about 8 of each other, either order), weighted 0.85 / 0.10 / 0.05 for words /
phrases / windows: the published defaults, not tuned here. The top-k `search` that finds candidates stays plain
BM25: phrase clauses would cost block-max WAND its speed there.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence

from .files import atomic_write
from .store import Filters, PassageRow, Store
from .text import fold_case
from .words import ORDERED_WEIGHT, WINDOW_SLOP, WINDOW_WEIGHT, analyzer, body_text, query_word_tokens, token_pairs

log = logging.getLogger(__name__)

DIRNAME = "lexical"
GENERATION_FILE = "generation"
ANALYZER = "qa_en"
BUILD_HEAP_BYTES = 128 * 1024 * 1024  # tantivy's indexing memory for a whole rebuild
SYNC_HEAP_BYTES = 16 * 1024 * 1024  # ... and for one incremental write (its minimum is 15 MB), which may run in a
# serving process: the writer's table is sized from this, and glibc keeps what it frees
BODY_FIELD, TEXT_FIELD = "body", "text"
LABEL = "tantivy bm25 (snowball english)"
DOC_FREQS_KEEP = 100_000  # document frequencies a searcher's index keeps in memory


def _schema():
    from tantivy import SchemaBuilder

    sb = SchemaBuilder()
    sb.add_integer_field("id", stored=False, indexed=True, fast=True)
    sb.add_text_field("doc_id", stored=False, tokenizer_name="raw")
    sb.add_text_field("source", stored=False, tokenizer_name="raw")  # case-folded
    sb.add_integer_field("published", stored=False, indexed=True, fast=True)  # YYYYMMDD
    sb.add_text_field(BODY_FIELD, stored=False, tokenizer_name=ANALYZER)  # title and text: BM25 over the row
    sb.add_text_field(TEXT_FIELD, stored=False, tokenizer_name=ANALYZER, index_option="basic")  # document freqs
    return sb.build()


def date_number(iso: str | None) -> int | None:
    """YYYY-MM-DD (or a longer ISO timestamp) as the integer YYYYMMDD; None when absent or unreadable."""
    if not iso or len(iso) < 10 or not iso[:4].isdigit() or not iso[5:7].isdigit() or not iso[8:10].isdigit():
        return None
    return int(iso[:4] + iso[5:7] + iso[8:10])


def _document(row: PassageRow):
    """A passage as a tantivy document."""
    from tantivy import Document

    doc = Document(id=int(row.rowid), doc_id=row.doc_id, body=body_text(row.title, row.text),
                   text=fold_case(row.text))
    if row.source:
        doc.add_text("source", row.source.casefold())
    number = date_number(row.published)
    if number is not None:
        doc.add_integer("published", number)
    return doc


def read_generation(directory: str) -> int:
    try:
        with open(os.path.join(directory, GENERATION_FILE), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return -1


def _write_generation(directory: str, generation: int) -> None:
    atomic_write(os.path.join(directory, GENERATION_FILE), f"{generation}\n")


class LexicalIndex:
    """A tantivy index of passages: BM25 top-k over title and text together (one field, the passage's row),
    filters as exact clauses, document frequencies over the text alone."""

    def __init__(self, index, directory: str | None, generation: int):
        self.index = index
        self.directory = directory  # None: in memory
        self.generation = generation
        self.schema = index.schema
        index.register_tokenizer(ANALYZER, analyzer())
        self._analyze = query_word_tokens
        self.searcher = index.searcher()
        self._doc_freqs: dict[tuple[str, str], int] = {}  # (field, token): the searcher's, as queries ask
        self.rebuilt: str | None = None  # why a reader rebuilt it in memory: the server is degraded

    # --- opening and writing ---

    @classmethod
    def create(cls, directory: str | None) -> "LexicalIndex":
        """A new, empty index in `directory` (replacing whatever is there), or in memory when None."""
        import tantivy

        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory)
        return cls(tantivy.Index(_schema(), path=directory), directory, -1)

    @classmethod
    def open(cls, data_dir: str, store: Store, *, readonly: bool = True) -> "LexicalIndex":
        """The data folder's index, rebuilt from the store when missing or behind it: on disk by a writer (the
        caller holds the writer lock), in memory by a reader."""
        import tantivy

        directory = os.path.join(data_dir, DIRNAME)
        generation = read_generation(directory)
        why = f"generation {generation}, the store's is {store.generation}"
        if generation == store.generation:
            try:
                return cls(tantivy.Index.open(directory), directory, generation)
            except Exception as e:  # a damaged folder: rebuilt below
                log.warning("lexical index in %s unreadable (%s)", directory, e)
                why = f"unreadable: {str(e)[:200]}"
        log.warning("lexical index in %s behind the store (generation %s vs %s): rebuilding it %s", directory,
                    generation, store.generation, "in memory" if readonly else "from the store")
        lexical = cls.create(None if readonly else directory)
        lexical.rebuild(store)
        if readonly:
            lexical.rebuilt = f"the lexical index is unusable ({why}): serving one rebuilt from the store in memory"
        return lexical

    def _commit(self, writer, generation: int) -> None:
        writer.commit()
        writer.wait_merging_threads()
        if self.directory is not None:
            _write_generation(self.directory, generation)
        self.generation = generation
        self.index.reload()
        self.searcher = self.index.searcher()
        self._doc_freqs = {}

    def rebuild(self, store: Store) -> None:
        """Every passage of the store, replacing the index's contents."""
        writer = self.index.writer(heap_size=BUILD_HEAP_BYTES, num_threads=1)
        writer.delete_all_documents()
        for row in store.passage_rows():
            writer.add_document(_document(row))
        self._commit(writer, store.generation)

    def sync(self, store: Store, doc_ids: Iterable[str]) -> None:
        """Make these documents' passages what the store holds now (gone if removed), at the store's generation."""
        ids = list(dict.fromkeys(doc_ids))
        writer = self.index.writer(heap_size=SYNC_HEAP_BYTES, num_threads=1)
        for doc_id in ids:
            writer.delete_documents_by_term("doc_id", doc_id)
        for row in store.passage_rows(ids):
            writer.add_document(_document(row))
        self._commit(writer, store.generation)

    # --- reading ---

    @property
    def num_docs(self) -> int:
        return self.searcher.num_docs

    def tokens(self, terms: Sequence[str]) -> list[str]:
        """The index tokens of query terms, in order, without repeats."""
        return list(dict.fromkeys(t for term in terms for t in self._analyze(term)))

    def _query(self, tokens: Sequence[str], filters: Filters | None):
        from tantivy import FieldType, Occur, Query

        words = Query.boolean_query([(Occur.Should, Query.term_query(self.schema, BODY_FIELD, t)) for t in tokens])
        if not filters:
            return words
        exact = []
        if filters.source is not None:
            exact.append(Query.term_query(self.schema, "source", filters.source.casefold()))
        if filters.doc_id is not None:
            exact.append(Query.term_query(self.schema, "doc_id", filters.doc_id))
        lo, hi = date_number(filters.published_after), date_number(filters.published_before)
        if lo is not None or hi is not None:
            exact.append(Query.range_query(self.schema, "published", FieldType.Integer, lo, hi))
        return Query.boolean_query([(Occur.Must, words)]
                                   + [(Occur.Must, Query.const_score_query(q, 0.0)) for q in exact])

    def token_pairs(self, pairs: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
        """The query's word pairs as index token pairs (first, second, gap); pairs whose words are not one token
        each, or the same token, are left out."""
        return token_pairs(pairs, self._analyze)

    def _dependence(self, pairs: Sequence[tuple[str, str, int]]) -> list:
        """Should-clauses scoring each pair of query words as a phrase (as far apart as in the query) and in a
        window (`token_pairs`)."""
        from tantivy import Occur, Query

        clauses = []
        for a, b, gap in self.token_pairs(pairs):
            phrase = Query.phrase_query(self.schema, BODY_FIELD, [(0, a), (gap, b)])
            window = Query.phrase_query(self.schema, BODY_FIELD, [a, b], WINDOW_SLOP)
            clauses += [(Occur.Should, Query.boost_query(phrase, ORDERED_WEIGHT)),
                        (Occur.Should, Query.boost_query(window, WINDOW_WEIGHT))]
        return clauses

    def search(self, terms: Sequence[str], limit: int, filters: Filters | None = None) -> list[tuple[int, float]]:
        """(passage rowid, BM25 score) of the best `limit` matches of any term, best first (no proximity)."""
        tokens = self.tokens(terms)
        if not tokens or limit <= 0:
            return []
        hits = self.searcher.search(self._query(tokens, filters), limit, count=False).hits
        if not hits:
            return []
        ids = self.searcher.fast_field_values("id", [address for _, address in hits])
        return [(int(i), float(score)) for (score, _), i in zip(hits, ids)]

    def scores(self, terms: Sequence[str], rowids: Sequence[int],
               pairs: Sequence[tuple[str, str, int]] = ()) -> dict[int, float]:
        """Exact BM25 of given passages (those matching no term are left out), with term proximity when the query's
        word `pairs` are given: one query restricted to their ids."""
        from tantivy import Occur, Query

        tokens = self.tokens(terms)
        if not tokens or not rowids:
            return {}
        words = self._query(tokens, None)
        if pairs:
            words = Query.boolean_query([(Occur.Should, words), *self._dependence(pairs)])
        # a term query per id: tantivy's term-set query costs as much for a few ids as for all (docs/performance.md)
        wanted = Query.boolean_query([(Occur.Should, Query.term_query(self.schema, "id", int(r))) for r in rowids])
        only = Query.const_score_query(wanted, 0.0)
        query = Query.boolean_query([(Occur.Must, words), (Occur.Must, only)])
        hits = self.searcher.search(query, len(rowids), count=False).hits
        if not hits:
            return {}
        ids = self.searcher.fast_field_values("id", [address for _, address in hits])
        return {int(i): float(score) for (score, _), i in zip(hits, ids)}

    def _doc_freq(self, field: str, token: str) -> int:
        """The searcher's document frequency of a token in a field, kept for the next query."""
        key = (field, token)
        found = self._doc_freqs.get(key)
        if found is None:
            found = self.searcher.doc_freq(field, token)
            if len(self._doc_freqs) >= DOC_FREQS_KEEP:
                self._doc_freqs = {}
            self._doc_freqs[key] = found
        return found

    def body_doc_freqs(self, tokens: Sequence[str]) -> list[int]:
        """Per index token, the number of passages whose row (title and text) holds it, as BM25 counts them."""
        return [self._doc_freq(BODY_FIELD, t) for t in tokens]

    def doc_freqs(self, terms: Sequence[str]) -> dict[str, int]:
        """Per query term, the number of passages whose text holds it (its first token; 0 for none)."""
        out = {}
        for term in terms:
            tokens = self._analyze(term)
            out[term] = self._doc_freq(TEXT_FIELD, tokens[0]) if tokens else 0
        return out


__all__ = ["LexicalIndex", "DIRNAME", "LABEL", "date_number", "read_generation"]
