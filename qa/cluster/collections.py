"""The collections of a cluster index on Milvus: their names, schemas, row ids and rows, and the meta collection.

A full build `B` (named by `qa.vectors.milvus.new_collection_name`, `<alias>_<time>_<random>`) has five
collections: `B` (window vectors, the `MilvusIndex` of the vector backend), `B_d` (documents), `B_p` (passages:
text, citation fields, analysed words with a BM25 function, the whole-passage vector), `B_s` (sentences: span and
vector) and `B_t` (terms: per analysed token, the passages whose body, and whose text alone, hold it: BM25's and
answers' document frequencies, one request per query; Milvus Lite's `TEXT_MATCH` scans rows, 0.1 s a term). The
index's meta collection `<alias>_meta` outlives builds: its row `live` names the live build, and a row
per build holds that build's generation and statistics. Replicas poll those two rows (`qa.cluster.index`).

Row ids are derived from the passage id (`passage_rowid`), so writing a document twice writes the same rows:
writes are idempotent upserts by id, whichever process makes them and however often.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import BadRequest
from ..vectors.base import DocFields
from ..vectors.milvus import (VARCHAR_MAX, create_collection, drop_collection, field_value, quiet_iterator, quote,
                              source_key)
from .terms import analyze, body_tokens, indexed

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from ..prepare import PreparedArticle

log = logging.getLogger(__name__)
logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(quiet_iterator)

DOCUMENTS, PASSAGES, SENTENCES, TERMS = "_d", "_p", "_s", "_t"  # suffixes of a build's collections after its
# window collection
META = "_meta"
LIVE = "live"
SLOT_BITS = 12  # a passage's windows and sentences are numbered within it: at most 4,096 of each
ROWID_BITS = 50  # a passage's row id: 50 bits of a hash of its id (collisions unlikely below ~10^7 passages)
ANALYZER = {"tokenizer": "standard"}  # the text arrives analysed (`terms.analyze`): stems split on spaces
PAD = "pad"  # Milvus wants a vector field in every collection: a 2-d zero vector where there is none


def passage_rowid(passage_id: str) -> int:
    """A passage's int64 row id, from its public id alone: every process computes the same."""
    return int.from_bytes(hashlib.sha256(passage_id.encode("utf-8")).digest()[:8], "big") >> (64 - ROWID_BITS)


def slot_id(rowid: int, slot: int) -> int:
    """The id of a passage's `slot`-th window or sentence."""
    if slot >= 1 << SLOT_BITS:
        raise BadRequest(f"a paragraph has over {1 << SLOT_BITS} windows or sentences; split it")
    return (rowid << SLOT_BITS) | slot


def passages_of(ids: np.ndarray) -> np.ndarray:
    """Passage row ids of window or sentence ids (-1 stays -1)."""
    ids = np.asarray(ids, np.int64)
    return np.where(ids >= 0, ids >> SLOT_BITS, -1)


def names(build: str) -> dict[str, str]:
    """A build's collections by kind."""
    return {"windows": build, "documents": build + DOCUMENTS, "passages": build + PASSAGES,
            "sentences": build + SENTENCES, "terms": build + TERMS}


def meta_name(alias: str) -> str:
    """The index's meta collection."""
    return alias + META


# --- schemas ---------------------------------------------------------------------------------------------------

def _schema(fields: Sequence[tuple], pk: tuple):
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    name, kind = pk
    if kind == "str":
        schema.add_field(name, DataType.VARCHAR, max_length=VARCHAR_MAX, is_primary=True)
    else:
        schema.add_field(name, DataType.INT64, is_primary=True)
    for name, kind, *extra in fields:
        if kind == "str":
            schema.add_field(name, DataType.VARCHAR, max_length=VARCHAR_MAX, **(extra[0] if extra else {}))
        elif kind == "int":
            schema.add_field(name, DataType.INT64)
        elif kind == "vec":
            schema.add_field(name, DataType.FLOAT_VECTOR, dim=extra[0])
        elif kind == "sparse":
            schema.add_field(name, DataType.SPARSE_FLOAT_VECTOR)
    return schema


def _create(client: "MilvusClient", name: str, schema, vectors: Sequence[str], bm25: bool = False) -> None:
    from pymilvus import Function, FunctionType

    index = client.prepare_index_params()
    for field in vectors:
        index.add_index(field, index_type="FLAT", metric_type="IP")
    if bm25:
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["body"],
                                     output_field_names=["sparse"]))
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    create_collection(client, name, schema, index)


def create_build(client: "MilvusClient", build: str, dim: int) -> None:
    """A build's documents, passages and sentences collections (its windows collection is the vector backend's)."""
    n = names(build)
    analysed = {"enable_analyzer": True, "analyzer_params": ANALYZER}
    _create(client, n["documents"], _schema(
        [("doc", "str"), ("source_key", "str"), ("published", "str"), ("meta", "str"), ("content_hash", "str"),
         ("n_passages", "int"), (PAD, "vec", 2)], ("doc_id", "str")), [PAD])
    _create(client, n["passages"], _schema(
        [("passage_id", "str"), ("doc_id", "str"), ("source_key", "str"), ("published", "str"),
         ("paragraph_index", "int"), ("char_start", "int"), ("char_end", "int"), ("text", "str"), ("doc", "str"),
         ("body", "str", analysed), ("words", "str"), ("n_tokens", "int"), ("sparse", "sparse"),
         ("vec", "vec", dim)], ("id", "int")), ["vec"], bm25=True)
    _create(client, n["sentences"], _schema(
        [("passage", "int"), ("doc_id", "str"), ("span_start", "int"), ("span_end", "int"), ("vec", "vec", dim)],
        ("id", "int")), ["vec"])
    _create(client, n["terms"], _schema([("body", "int"), ("words", "int"), (PAD, "vec", 2)], ("token", "str")),
            [PAD])
    for name in list(n.values())[1:]:
        client.load_collection(name)


def drop_build(client: "MilvusClient", build: str) -> None:
    """A build's collections, the windows one last (its siblings are found by it)."""
    for name in reversed(list(names(build).values())):
        drop_collection(client, name, force=True)


def create_meta(client: "MilvusClient", alias: str) -> None:
    """The index's meta collection, when missing."""
    name = meta_name(alias)
    if not client.has_collection(name):
        _create(client, name, _schema([("value", "str"), (PAD, "vec", 2)], ("key", "str")), [PAD])
    client.load_collection(name)


def get_meta(client: "MilvusClient", alias: str, keys: Sequence[str]) -> dict[str, dict]:
    """Rows of the meta collection by key, their values decoded."""
    expr = f"key in [{', '.join(quote(k) for k in keys)}]"
    rows = client.query(meta_name(alias), filter=expr, output_fields=["key", "value"], consistency_level="Strong")
    return {r["key"]: json.loads(r["value"]) for r in rows}


def put_meta(client: "MilvusClient", alias: str, values: dict[str, dict]) -> None:
    """Upsert rows of the meta collection."""
    client.upsert(meta_name(alias), [{"key": k, "value": json.dumps(v), PAD: [0.0, 0.0]} for k, v in values.items()])


# --- rows ------------------------------------------------------------------------------------------------------

class Rows(NamedTuple):
    """The rows some prepared articles write: documents, passages, sentences, and windows (ids, vectors, fields)."""

    documents: list[dict]
    passages: list[dict]
    sentences: list[dict]
    window_ids: list[int]
    window_vectors: list[np.ndarray]
    window_docs: list[DocFields]


def _text(value: str, what: str) -> str:
    if len(value.encode("utf-8")) > VARCHAR_MAX:
        raise BadRequest(f"{what} is over {VARCHAR_MAX} bytes, more than a Milvus field holds; split it")
    return value


def document_row(prepared: PreparedArticle) -> dict[str, Any]:
    """An article's documents row."""
    a = prepared.article
    meta = {"id": a.id, "title": a.title, "source": a.source, "author": a.author, "url": a.url,
            "published": a.published, "tags": a.tags, "path": a.path}
    return {"doc_id": field_value(a.id), "doc": _text(a.id, "a document id"), "source_key": source_key(a.source),
            "published": a.published or "", "meta": _text(json.dumps(meta), f"document {a.id[:80]!r}"),
            "content_hash": a.content_hash(), "n_passages": len(prepared.passages), PAD: [0.0, 0.0]}


def rows_of(prepared: Sequence[PreparedArticle]) -> Rows:
    """The rows of prepared articles, article by article, passage by passage."""
    rows = Rows([], [], [], [], [], [])
    for p in prepared:
        a = p.article
        doc = DocFields(a.id, a.source, a.published)
        cite = json.dumps({"title": a.title, "source": a.source, "author": a.author, "url": a.url,
                           "published": a.published})
        common = {"doc_id": field_value(a.id), "source_key": source_key(a.source), "published": a.published or ""}
        rows.documents.append(document_row(p))
        for passage, wvecs, svecs in zip(p.passages, p.window_vectors, p.sentence_vectors):
            rowid = passage_rowid(passage.passage_id)
            pvec = wvecs.mean(axis=0)
            body = body_tokens(a.title, passage.text)
            rows.passages.append({
                "id": rowid, "passage_id": passage.passage_id, **common, "paragraph_index": passage.paragraph_index,
                "char_start": passage.char_start, "char_end": passage.char_end,
                "text": _text(passage.text, f"passage {passage.passage_id[:80]!r}"), "doc": cite,
                "body": _text(" ".join(body), f"passage {passage.passage_id[:80]!r}"),
                "words": " ".join(analyze(passage.text)), "n_tokens": len(indexed(body)),
                "vec": (pvec / max(float(np.linalg.norm(pvec)), 1e-12)).astype(np.float32).tolist()})
            # sentence vectors at float16's precision, as the local store keeps them (the same cosines)
            for i, ((start, end), vec) in enumerate(zip(passage.sentences, svecs)):
                rows.sentences.append({"id": slot_id(rowid, i), "passage": rowid, "doc_id": common["doc_id"],
                                       "span_start": start, "span_end": end,
                                       "vec": np.asarray(vec, np.float16).astype(np.float32).tolist()})
            for i, vec in enumerate(wvecs):
                rows.window_ids.append(slot_id(rowid, i))
                rows.window_vectors.append(np.asarray(vec, np.float32))
                rows.window_docs.append(doc)
    return rows


def doc_filter(doc_ids: Sequence[str]) -> str:
    """A filter on the `doc_id` field of passages, sentences, windows and documents."""
    return f"doc_id in [{', '.join(quote(field_value(d)) for d in doc_ids)}]"


__all__ = ["Rows", "create_build", "create_meta", "doc_filter", "drop_build", "get_meta", "meta_name", "names",
           "passage_rowid", "passages_of", "put_meta", "rows_of", "slot_id"]
