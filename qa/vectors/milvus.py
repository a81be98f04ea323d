"""The vector index interface on Milvus: a Milvus Lite folder (`.../milvus.db`) or a server (`http://host:19530`).

Vectors are L2-normalised and searched by inner product, like `FaissIndex`. Ids are the store's int64 window ids.
Milvus persists itself; `vectors.json` in the data folder only records where the vectors live and the store
generation they reflect. Rebuilds go to a fresh collection `<base>_<suffix>`; the alias `<base>` is switched to
it once it is complete and loaded (`switch_alias`), and older collections are then dropped (`drop_older`).

Each row also carries its document's `doc_id`, `source_key` (the source case-folded as SQLite's NOCASE folds it)
and `published`, so `Filters` are pushed down as a Milvus filter expression (`filter_expression`) instead of an id
list.

Milvus Lite holds an exclusive advisory lock on its folder for as long as a process has it open: a second process
that opens the same `.db` fails at once (`IndexUnavailable` here). Processes that must share one Lite folder
should talk to one `milvus-lite server --data-dir ...` over `http://` instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadRequest, IndexUnavailable, QAError
from ..files import write_json_atomic
from .base import DocFields, VectorSettings, fill

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from ..manifest import Manifest
    from ..store import Filters, Store

log = logging.getLogger(__name__)

MILVUS_META = "vectors.json"
KIND = "milvus"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX")
KIND_TYPES = {"flat": "FLAT", "hnsw": "HNSW"}  # `qa build --index-type` → Milvus index type (auto picks one of them)
PK, VEC = "id", "vec"
DOC_ID, SOURCE, PUBLISHED = "doc_id", "source_key", "published"  # document fields of each row, for filters
DOC_FIELDS = (DOC_ID, SOURCE, PUBLISHED)
VARCHAR_MAX = 65_535  # bytes, Milvus' limit on a VARCHAR value; longer doc ids / sources are stored hashed
HASHED = "sha256:"  # prefix of a hashed value
MAX_TOPK = 16_384  # Milvus' limit on k (and on offset + limit)
MAX_FILTER_IDS = 10_000  # allowed ids per `id in [...]` expression; larger allow lists are searched in chunks
WRITE_BATCH = 2_000  # rows per upsert/delete request, far below the 64 MB gRPC message limit at dim 1024
MISSING_SCORE = float(np.finfo(np.float32).min)  # what FAISS reports for empty slots
TOKEN_ENV = "QA_MILVUS_TOKEN"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
# what `new_collection_name` appends to an alias (indexes built before it kept microseconds have 14 digits)
SUFFIX = r"_\d{14}(?:\d{6})?_[0-9a-f]{6}"
ALIAS_MAX = 255 - len("_20240101000000_abcdef")  # an alias leaves room for its collections' suffix
INDEX_POLL = 0.02  # seconds between looks at the state of a new collection's indexes
_INDEX_PARAMS: dict[str, dict[str, Any]] = {
    "FLAT": {},
    "HNSW": {"M": 32, "efConstruction": 128},
    "IVF_FLAT": {"nlist": 1024},
    "AUTOINDEX": {},
}

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Milvus Lite folder → open MilvusIndex objects using it in this process


def is_lite(uri: str) -> bool:
    """Whether `uri` names a local Milvus Lite folder rather than a server."""
    return uri.endswith(".db") and not re.match(r"^(https?|tcp|unix):", uri)


def check_name(name: str, what: str = "collection name") -> str:
    """A valid Milvus collection or alias name, else `BadRequest`."""
    if not _NAME.match(name or ""):
        raise BadRequest(f"invalid Milvus {what} {name!r}: letters, digits and underscores, "
                         "not starting with a digit, at most 255 characters")
    return name


def check_alias(name: str) -> str:
    """A valid alias for an index folder (`qa build --milvus-alias`): a Milvus name with room for the suffix of
    its collections' names; else `BadRequest`."""
    check_name(name, "alias")
    if len(name) > ALIAS_MAX:
        raise BadRequest(f"Milvus alias {name[:40]!r}... is too long: at most {ALIAS_MAX} characters "
                         "(its collections are named <alias>_<time>_<random>)")
    return name


def check_kind(kind: str) -> str:
    """`kind` when a Milvus build can honour it (auto picks flat or hnsw by size, as on FAISS); else `BadRequest`."""
    if kind != "auto" and kind not in KIND_TYPES:
        # Milvus Lite accepts an IVF_PQ collection, then fails to build its index ("reserved for a future phase")
        raise BadRequest(f"--index-type {kind} is not available on Milvus (Milvus Lite cannot build IVF_PQ); "
                         "use --index-type auto, flat or hnsw, or --backend faiss")
    return kind


def index_type_of(kind: str) -> str:
    """The Milvus index type of a resolved index kind (flat or hnsw, as `choose_kind` returns them)."""
    return KIND_TYPES[check_kind(kind)]


def connect(uri: str, token: str | None = None) -> "MilvusClient":
    """A `MilvusClient` for a Lite folder or a server; `IndexUnavailable` when it cannot be opened."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    mine = False  # a Lite folder this process has open already
    if is_lite(uri):
        uri = os.path.abspath(uri)
        if not os.path.isdir(os.path.dirname(uri)):
            raise IndexUnavailable(f"folder of Milvus Lite database {uri} does not exist")
        with _lite_lock:
            mine = uri in _lite_users
        if not mine and _lite_locked(uri):  # ask first: Milvus Lite would log a traceback, then fail
            raise IndexUnavailable(lite_locked_message(uri))
    try:
        return MilvusClient(uri=uri, token=token or "")
    except MilvusException as e:
        if is_lite(uri) and not mine:
            # pymilvus started Lite's server in this process before the connection failed: stop it, or its lock
            # would read as another process's and keep the database closed to every later open
            _release_lite_server(uri)
            if _lite_locked(uri):
                raise IndexUnavailable(lite_locked_message(uri)) from None
        raise IndexUnavailable(f"cannot open Milvus at {uri}: {e}") from None


def _release_lite_server(uri: str) -> None:
    """Stop the Milvus Lite server pymilvus started in this process for `uri`, releasing the database's lock."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


def lite_locked_message(uri: str) -> str:
    """The one line explaining that another process has a Milvus Lite database open, and what to do instead."""
    return (f"Milvus Lite database {uri} is open in another process (a running `qa serve`?): Milvus Lite allows one "
            "process per database; send changes through that server's admin API (POST /api/documents, "
            "DELETE /api/documents/<id>), stop it first, or build on a Milvus server: "
            "qa build ... --backend milvus --milvus-uri http://HOST:19530")


def check_available(uri: str, token: str | None = None) -> None:
    """`IndexUnavailable` at once, before a long build, when Milvus at `uri` cannot be opened by this process."""
    if is_lite(uri):
        uri = os.path.abspath(uri)
        with _lite_lock:
            mine = uri in _lite_users
        if not mine and _lite_locked(uri):
            raise IndexUnavailable(lite_locked_message(uri))
        return  # opening it here would hold it: the build opens it when it needs it
    connect(uri, token).close()


def _lite_locked(path: str) -> bool:
    """Whether another process holds the lock of the Milvus Lite folder `path`."""
    try:
        import fcntl
    except ImportError:  # Windows: cannot tell
        return False
    try:
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def new_collection_name(base: str) -> str:
    """A fresh, time-ordered collection name behind `base`: `<base>_<UTC time to the microsecond>_<random>` (two
    builds in one second still sort in the order they started)."""
    check_name(base)
    return f"{base}_{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d%H%M%S%f')}_{uuid.uuid4().hex[:6]}"


def create_collection(client: "MilvusClient", name: str, schema: Any, index_params: Any) -> None:
    """Create collection `name` (strong consistency) with its indexes, back once every index is ready.

    pymilvus's own wait (`create_collection(index_params=...)`) sleeps half a second before its first look at each
    index, though a new collection's are ready at once: that wait cost each build on Milvus Lite 0.5 s per index."""
    client.create_collection(name, schema=schema, consistency_level="Strong")
    client.create_index(name, index_params, sync=False)
    for param in index_params:
        index_name = param.index_name or param.field_name  # Milvus names an unnamed index after its field
        while (state := (client.describe_index(name, index_name) or {}).get("state", "Finished")) != "Finished":
            if state == "Failed":
                raise IndexUnavailable(f"Milvus could not create index {index_name} of collection {name}")
            time.sleep(INDEX_POLL)


def alias_target(client: "MilvusClient", alias: str) -> str | None:
    """The collection `alias` points to, or None when there is no such alias."""
    if alias not in client.list_aliases().get("aliases", []):
        return None
    return client.describe_alias(alias)["collection_name"]


def switch_alias(client: "MilvusClient", alias: str, collection: str) -> str | None:
    """Point `alias` at `collection` (loaded first) in one step; the collection it pointed to before, if any."""
    check_name(alias)
    client.load_collection(collection)
    previous = alias_target(client, alias)
    if previous is None:
        client.create_alias(collection, alias)
    elif previous != collection:
        client.alter_alias(collection, alias)
    log.info("Milvus alias %s: %s -> %s", alias, previous, collection)
    return previous


def collections_behind(client: "MilvusClient", base: str) -> list[str]:
    """Collections named `<base>_<suffix>` by `new_collection_name`, oldest first (its suffixes sort by time); not
    those of a longer alias that starts with `<base>_` (a folder's unique alias, see `new_alias`)."""
    pattern = re.compile(re.escape(check_name(base)) + SUFFIX)
    return sorted(c for c in client.list_collections() if pattern.fullmatch(c))


def drop_collection(client: "MilvusClient", collection: str, *, force: bool = False) -> None:
    """Drop a collection; refuses one an alias still points to unless `force` (which drops those aliases)."""
    if not client.has_collection(collection):
        return
    aliases = client.list_aliases(collection).get("aliases", [])
    if aliases and not force:
        raise BadRequest(f"Milvus collection {collection} is live behind alias {', '.join(aliases)}; not dropped")
    for alias in aliases:
        client.drop_alias(alias)
    client.drop_collection(collection)
    log.info("dropped Milvus collection %s", collection)


def prune_collections(client: "MilvusClient", base: str, keep: int = 1) -> list[str]:
    """Drop collections behind `base` except the live one and the `keep` newest others; the names dropped."""
    live = alias_target(client, base)
    old = [c for c in collections_behind(client, base) if c != live]
    doomed = old[:max(len(old) - keep, 0)]
    for name in doomed:
        drop_collection(client, name)
    return doomed


# --- filters as Milvus expressions ------------------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def field_value(value: str | None) -> str:
    """A doc id or source as stored in a VARCHAR field: "" for None, else itself, or its hash when it is too long
    for Milvus (or empty, or looks hashed). Equality is all filters ask of these fields, and this keeps it."""
    if value is None:
        return ""
    if value and len(value.encode("utf-8")) <= VARCHAR_MAX and not value.startswith(HASHED):
        return value
    return HASHED + hashlib.sha256(value.encode("utf-8")).hexdigest()


def source_key(source: str | None) -> str:
    """A source folded as SQLite's COLLATE NOCASE folds it (ASCII letters only), as stored in `source_key`."""
    return field_value(None if source is None else source.translate(_ASCII_LOWER))


def quote(value: str) -> str:
    """A Milvus string literal of `value`: backslashes and double quotes escaped, line breaks as \\n and \\r (the
    only characters Milvus' grammar refuses raw inside a literal; every other character goes as it is)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def filter_expression(filters: "Filters") -> str:
    """`filters` as a Milvus boolean expression over the document fields, with `Filters.sql`'s semantics."""
    clauses = []
    if filters.source is not None:
        clauses.append(f"{SOURCE} == {quote(source_key(filters.source))}")
    if filters.doc_id is not None:
        clauses.append(f"{DOC_ID} == {quote(field_value(filters.doc_id))}")
    if filters.published_after is not None or filters.published_before is not None:
        clauses.append(f'{PUBLISHED} != ""')  # no date (stored as ""): fails any date filter, like NULL in SQLite
    if filters.published_after is not None:
        clauses.append(f"{PUBLISHED} >= {quote(filters.published_after)}")  # ISO dates: string order is date order
    if filters.published_before is not None:
        clauses.append(f"{PUBLISHED} <= {quote(filters.published_before)}")
    return " and ".join(clauses)


def _doc_row(doc: DocFields) -> dict[str, str]:
    """The document fields of one row; `BadRequest` for a published value Milvus cannot hold."""
    published = doc.published or ""
    if len(published.encode("utf-8")) > VARCHAR_MAX:
        raise BadRequest(f"document {doc.doc_id[:80]!r}: published is not a date")
    return {DOC_ID: field_value(doc.doc_id), SOURCE: source_key(doc.source), PUBLISHED: published}


def _empty(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of no results for `n` queries."""
    return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)


class _DropMessage(logging.Filter):
    """Drops log records whose message starts with a given text."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


class _DropNotImplemented(logging.Filter):
    """Drops records of a gRPC method Milvus Lite does not implement (it logs them with a traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[0] is NotImplementedError)


quiet_iterator = _DropMessage("failed to get mvccTs")  # Milvus Lite has no MVCC timestamps; harmless
_quiet_lite_server = _DropNotImplemented()  # ... and its in-process gRPC server logs AllocTimestamp as unimplemented
logging.getLogger("grpc._server").addFilter(_quiet_lite_server)


class MilvusIndex:
    """A Milvus collection (or alias) of int64 ids and `dim`-d float vectors, searched by inner product."""

    kind = KIND
    needs_docs = True  # filters are pushed down as expressions over each row's document fields

    def __init__(self, uri: str, collection: str, dim: int, token: str | None = None, create: bool = False,
                 index_type: str = "FLAT", write_batch: int = WRITE_BATCH, max_filter_ids: int = MAX_FILTER_IDS):
        """Open `collection` (or an alias); `create` makes it when missing."""
        self.uri = os.path.abspath(uri) if is_lite(uri) else uri
        self.collection = check_name(collection)
        self.dim = int(dim)
        self.index_type = index_type.upper()
        if self.index_type not in INDEX_TYPES:
            raise BadRequest(f"unknown Milvus index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        self.write_batch = write_batch
        self.max_filter_ids = max_filter_ids
        self.client = connect(self.uri, token)
        self._closed = False
        if is_lite(self.uri):
            with _lite_lock:
                _lite_users[self.uri] = _lite_users.get(self.uri, 0) + 1
        try:
            if not self.client.has_collection(collection):
                if not create:
                    raise IndexUnavailable(f"Milvus collection {collection} does not exist at {self.uri}")
                self._create()
            else:
                self._check_schema()
            self.client.load_collection(collection)
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        """Create the collection: explicit int64 ids, a float vector with an IP index, the document fields (with
        inverted indexes on a server, so filters look rows up rather than scan), strong consistency."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK, DataType.INT64, is_primary=True)
        schema.add_field(VEC, DataType.FLOAT_VECTOR, dim=self.dim)
        index = self.client.prepare_index_params()
        index.add_index(VEC, index_type=self.index_type, metric_type="IP", params=_INDEX_PARAMS[self.index_type])
        for name in DOC_FIELDS:
            schema.add_field(name, DataType.VARCHAR, max_length=VARCHAR_MAX)
            if not is_lite(self.uri):  # Lite updates inverted indexes row by row: slow inserts (see docs/scaling.md)
                index.add_index(name, index_type="INVERTED")
        create_collection(self.client, self.collection, schema, index)
        log.info("created Milvus collection %s (dim %d, %s, document fields) at %s", self.collection, self.dim,
                 self.index_type, self.uri)

    def _check_schema(self) -> None:
        """`IndexUnavailable` unless the collection has our fields (the document fields too) and dimension."""
        info = self.client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info["fields"]}
        dim = fields.get(VEC, {}).get("params", {}).get("dim")
        if PK not in fields or dim is None:
            raise IndexUnavailable(f"Milvus collection {self.collection} lacks the fields {PK!r} and {VEC!r}")
        if int(dim) != self.dim:
            raise IndexUnavailable(f"Milvus collection {self.collection} has dim {dim}, expected {self.dim}")
        if not all(name in fields for name in DOC_FIELDS):
            raise IndexUnavailable(f"Milvus collection {self.collection} lacks the document fields "
                                   f"{', '.join(DOC_FIELDS)} (built by an older version); rebuild the index: "
                                   "qa build SOURCE... --index-dir DIR")
        names = self.client.list_indexes(self.collection, field_name=VEC)
        if names:
            described = self.client.describe_index(self.collection, names[0])
            self.index_type = described.get("index_type", self.index_type)

    @property
    def live_collection(self) -> str:
        """The collection behind `self.collection` (itself unless it is an alias)."""
        return self.client.describe_collection(self.collection)["collection_name"]

    @property
    def ntotal(self) -> int:
        """Exact number of live vectors (a strongly consistent count query)."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray, docs: Sequence[DocFields] | None = None) -> None:
        """Add vectors under explicit int64 ids, with their documents' fields (`docs`, one per row); an existing id
        is replaced (upserts). `save` or `flush` after."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        if vectors.shape[1] != self.dim:
            raise BadRequest(f"vectors have dim {vectors.shape[1]}, the index {self.dim}")
        if docs is None or len(docs) != len(ids):
            raise QAError(f"Milvus collection {self.collection} needs the document fields of each row: "
                          f"{len(ids)} ids, {'no' if docs is None else len(docs)} documents")
        fields = [_doc_row(d) for d in docs]  # all checked before anything is written
        for start in range(0, len(ids), self.write_batch):
            end = start + self.write_batch
            rows = [{PK: i, VEC: v, **extra}
                    for i, v, extra in zip(ids[start:end].tolist(), vectors[start:end], fields[start:end])]
            self.client.upsert(self.collection, rows)

    def remove(self, ids: np.ndarray) -> None:
        """Remove vectors by id (unknown ids are ignored)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        for start in range(0, len(ids), self.write_batch):
            self.client.delete(self.collection, ids=ids[start:start + self.write_batch].tolist())

    def _search_params(self, k: int) -> dict[str, Any]:
        """Search parameters for the index type, wide enough for `k` results."""
        params: dict[str, Any] = {}
        if self.index_type == "HNSW":
            params["ef"] = max(128, k)
        elif self.index_type == "IVF_FLAT":
            params["nprobe"] = 32
        return {"metric_type": "IP", "params": params}

    def _search(self, queries: np.ndarray, k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        """One Milvus search under the filter expression `expr` ("" for none); (scores, ids) padded to width k."""
        scores = np.full((len(queries), k), MISSING_SCORE, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        hits = self.client.search(self.collection, data=list(queries), filter=expr, limit=k, anns_field=VEC,
                                  output_fields=[PK], search_params=self._search_params(k),
                                  consistency_level="Strong")
        for row, found in enumerate(hits):
            n = min(len(found), k)
            ids[row, :n] = [h[PK] for h in found[:n]]
            scores[row, :n] = [h["distance"] for h in found[:n]]
        return scores, ids

    def search(self, queries: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best per query, restricted to `allow` ids when given; missing slots are id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(int(k), MAX_TOPK)
        if k <= 0 or not len(queries):
            return _empty(len(queries))
        if allow is None:
            return self._search(queries, k, "")
        return self._search_ids(queries, k, allow)

    def stored_ids(self) -> None:
        """None: Milvus scores its vectors itself (`search`)."""
        return None

    def inner_products(self, query: np.ndarray) -> np.ndarray:
        raise TypeError("Milvus keeps no vectors in this process to score (stored_ids() is None)")

    def search_filtered(self, queries: np.ndarray, k: int, filters: "Filters | None",
                        store: "Store") -> tuple[np.ndarray, np.ndarray]:
        """`search` restricted to rows whose documents pass `filters`, as a filter expression over the document
        fields (the store is not needed)."""
        if not filters:
            return self.search(queries, k)
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(int(k), MAX_TOPK)
        if k <= 0 or not len(queries):
            return _empty(len(queries))
        return self._search(queries, k, filter_expression(filters))

    def _search_ids(self, queries: np.ndarray, k: int, allow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search restricted to the `allow` ids, as `id in [...]` expressions of at most `max_filter_ids` each."""
        allow = np.unique(np.asarray(allow, dtype=np.int64))
        if not len(allow):
            return _empty(len(queries))
        chunks = [allow[i:i + self.max_filter_ids] for i in range(0, len(allow), self.max_filter_ids)]
        if len(chunks) > 1:
            log.debug("allow list of %d ids searched in %d chunks", len(allow), len(chunks))
        parts = [self._search(queries, k, f"{PK} in [{','.join(map(str, c.tolist()))}]") for c in chunks]
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def reconstruct_all(self, batch_size: int = 4_000) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live vector, in id order."""
        iter_log = logging.getLogger("pymilvus.client.iterator.query_iterator")
        iter_log.addFilter(quiet_iterator)
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        it = self.client.query_iterator(self.collection, batch_size=batch_size, output_fields=[VEC],
                                        consistency_level="Strong")
        try:
            while batch := it.next():
                ids.extend(int(r[PK]) for r in batch)
                vecs.append(np.asarray([r[VEC] for r in batch], np.float32))
        finally:
            it.close()
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        out_ids, out_vecs = np.array(ids, np.int64), np.concatenate(vecs)
        order = np.argsort(out_ids, kind="stable")
        return out_ids[order], out_vecs[order]

    def flush(self) -> None:
        """Seal pending writes into persistent segments (and build their index)."""
        self.client.flush(self.live_collection)

    def save(self, directory: str, generation: int) -> None:
        """Record uri, collection and store generation in `vectors.json` atomically (Milvus Lite: flush first)."""
        if is_lite(self.uri):  # Lite searches its unflushed write buffer row by row in Python: slow
            self.flush()  # a server persists acknowledged writes itself, and rate-limits flushes
        write_json_atomic(os.path.join(directory, MILVUS_META),
                          {"generation": generation, "kind": KIND, "uri": self.uri, "collection": self.collection,
                           "dim": self.dim, "index_type": self.index_type})

    @classmethod
    def load(cls, directory: str, dim: int, token: str | None = None) -> tuple["MilvusIndex", int]:
        """(index, store generation it reflects) from a data folder's `vectors.json` (token: $QA_MILVUS_TOKEN)."""
        try:
            with open(os.path.join(directory, MILVUS_META), encoding="utf-8") as f:
                meta = json.load(f)
            uri, collection, generation = meta["uri"], meta["collection"], int(meta["generation"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IndexUnavailable(f"vector index meta in {directory} unreadable: {e}") from None
        if meta.get("kind") != KIND:
            raise IndexUnavailable(f"vector index in {directory} is {meta.get('kind')!r}, not {KIND!r}")
        if int(meta.get("dim", dim)) != dim:
            raise IndexUnavailable(f"vector index has dim {meta.get('dim')}, manifest says {dim}")
        if is_lite(uri) and not os.path.isabs(uri):
            uri = os.path.join(directory, uri)
        index = cls(uri, collection, dim, token=token or os.environ.get(TOKEN_ENV),
                    index_type=meta.get("index_type", "FLAT"))
        return index, generation

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the client; the last user of a Milvus Lite folder in this process releases its lock."""
        if self._closed:
            return
        self._closed = True
        self.client.close()
        if not is_lite(self.uri):
            return
        with _lite_lock:
            users = _lite_users.get(self.uri, 1) - 1
            if users > 0:
                _lite_users[self.uri] = users
                return
            _lite_users.pop(self.uri, None)
        _release_lite_server(self.uri)

    def __enter__(self) -> "MilvusIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusIndex({self.uri!r}, {self.collection!r}, dim={self.dim}, index_type={self.index_type!r})"


# --- an index folder's collections (the manifest's `milvus_*` keys) -----------------------------------------------

LITE_FILE = "milvus.db"  # default: a Milvus Lite database at the top of the index folder, shared by its builds


def manifest_uri(index_dir: str, uri: str | None) -> str:
    """The URI to record in the manifest: `milvus.db` (relative, inside the index folder) by default."""
    if not uri:
        return LITE_FILE
    if is_lite(uri):
        full = os.path.abspath(uri)
        return LITE_FILE if full == os.path.abspath(os.path.join(index_dir, LITE_FILE)) else full
    return uri


def resolve_uri(index_dir: str, uri: str) -> str:
    """A manifest URI made usable: a relative Lite path is taken inside the index folder."""
    return os.path.join(index_dir, uri) if is_lite(uri) and not os.path.isabs(uri) else uri


def alias_base(index_dir: str) -> str:
    """The readable start of an index folder's alias: `qa_<folder name>_<hash of its path>` (not unique on its own:
    a folder moved away and a new one in its place, or one path on two hosts, have the same)."""
    import hashlib

    full = os.path.abspath(index_dir)
    name = re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(full))[:40] or "index"
    return f"qa_{name}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"


def new_alias(index_dir: str) -> str:
    """A unique alias for an index folder that has none yet on its URI: `alias_base` and a random suffix, so two
    folders with one path on one Milvus never switch or prune each other's collections."""
    return f"{alias_base(index_dir)}_{uuid.uuid4().hex[:8]}"


def check_workers(index_dir: str, manifest: Manifest, workers: int) -> None:
    """`BadRequest` when `workers` server processes would each open the manifest's Milvus Lite database, which only
    one process can hold (the others would answer 503)."""
    if workers <= 1 or manifest.vector_backend != KIND:
        return
    uri = resolve_uri(index_dir, manifest.milvus_uri or LITE_FILE)
    if is_lite(uri):
        raise BadRequest(f"index {index_dir} is on Milvus Lite ({os.path.abspath(uri)}), which allows one process "
                         f"per database, not {workers} workers: serve it with --workers 1, or build it on a Milvus "
                         "server (qa build ... --milvus-uri http://HOST:19530)")


def read_generation(data_dir: str) -> int:
    """The store generation recorded in a data folder's `vectors.json`."""
    try:
        with open(os.path.join(data_dir, MILVUS_META), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("kind") != KIND:
            raise ValueError(f"kind is {meta.get('kind')!r}, not {KIND!r}")
        return int(meta["generation"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexUnavailable(f"vector index meta in {data_dir} unreadable: {e}") from None


def open_manifest_collection(index_dir: str, manifest: Manifest, data_dir: str,
                             token: str | None = None) -> tuple[MilvusIndex, int]:
    """(the manifest's collection, store generation it reflects); token from $QA_MILVUS_TOKEN unless given."""
    uri, collection = manifest.milvus_uri, manifest.milvus_collection
    for key, value in (("milvus_uri", uri), ("milvus_collection", collection)):
        if not value:
            raise IndexUnavailable(f"manifest of {index_dir} lacks {key!r}; rebuild with --backend milvus")
    generation = read_generation(data_dir)
    index = MilvusIndex(resolve_uri(index_dir, uri), collection, int(manifest.dim),
                        token=token or os.environ.get(TOKEN_ENV), index_type=manifest.index_kind.upper())
    return index, generation


def drop_older(client: "MilvusClient", base: str, previous: str | None) -> list[str]:
    """Drop collections behind `base` older than `previous` (kept for servers still on it); the names dropped."""
    if previous is None:
        return []
    live = alias_target(client, base)
    doomed = [c for c in collections_behind(client, base) if c < previous and c != live]
    for name in doomed:
        drop_collection(client, name)
    return doomed


def _resync(vectors: MilvusIndex, store: Store, dim: int) -> None:
    """Make a collection hold exactly the store's window vectors and their document fields (upserts)."""
    have, _ = vectors.reconstruct_all()
    vectors.remove(np.setdiff1d(have, store.window_passages().ids))
    fill(vectors, store, dim)


class MilvusBuild:
    """A build's new collection behind the index folder's alias: switched to at the manifest swap."""

    def __init__(self, index_dir: str, settings: VectorSettings, dim: int, kind: str):
        collection = new_collection_name(str(settings.milvus_alias))
        self.settings = dataclasses.replace(settings, milvus_collection=collection)
        self.index = MilvusIndex(resolve_uri(index_dir, str(settings.milvus_uri)), collection, dim,
                                 token=settings.token, create=True, index_type=index_type_of(kind))
        self._before: str | None = None  # the collection the alias pointed to
        self._published = False

    @property
    def published(self) -> bool:
        """Whether `publish` made this collection live."""
        return self._published

    @property
    def previous(self) -> str | None:
        """The collection the alias pointed to before `publish` (None before it, or for a first build)."""
        return self._before

    def publish(self, swap: Callable[[], None]) -> None:
        """Switch the alias to the new collection, `swap` the manifest, then drop the collections older than the
        previous one (which stays one round for servers still on it)."""
        alias = str(self.settings.milvus_alias)
        self._before = switch_alias(self.index.client, alias, self.index.collection)
        swap()
        self._published = True
        drop_older(self.index.client, alias, self._before)

    def discard(self) -> None:
        """Never made live: the alias back where it was, the new collection dropped."""
        if self._published:
            return
        with contextlib.suppress(Exception):
            if self._before:
                switch_alias(self.index.client, str(self.settings.milvus_alias), self._before)
            drop_collection(self.index.client, self.index.collection, force=True)


class MilvusBackend:
    """Collections on a Milvus Lite folder or a Milvus server, one per full build, behind one alias per index."""

    name = KIND

    def settings(self, index_dir: str, previous: Manifest | None, uri: str | None, alias: str | None,
                 token: str | None) -> VectorSettings:
        """The URI and alias asked for, else the live index's; a new folder gets `milvus.db` and a new alias."""
        same = previous is not None and previous.vector_backend == KIND
        live_uri = previous.milvus_uri if same else None
        chosen = manifest_uri(index_dir, uri) if uri or not same else str(live_uri)
        kept = previous.milvus_alias if same and live_uri == chosen else None
        if alias:
            check_alias(alias)
            if kept and kept != alias:
                log.warning("index %s moves from Milvus alias %s to %s; the old alias and its collections stay",
                            index_dir, kept, alias)
            kept = alias
        # a new alias is unique, not derived from the path alone: a folder moved away and a new one built in its
        # place (or one path on two hosts) would otherwise share one, and each one's builds drop the other's
        return VectorSettings(KIND, chosen, kept or new_alias(index_dir), token=token or os.environ.get(TOKEN_ENV))

    def check_kind(self, kind: str) -> None:
        """`BadRequest` for kinds Milvus cannot build."""
        check_kind(kind)

    def check_available(self, index_dir: str, settings: VectorSettings) -> None:
        """`IndexUnavailable` before embedding when the database cannot be opened."""
        check_available(resolve_uri(index_dir, str(settings.milvus_uri)), settings.token)

    def begin(self, index_dir: str, settings: VectorSettings, dim: int, kind: str, store: Store,
              windows: int) -> MilvusBuild:
        """A new, empty collection; the live alias and manifest are untouched until `publish`."""
        return MilvusBuild(index_dir, settings, dim, kind)

    def open(self, index_dir: str, manifest: Manifest, data_dir: str, *,
             mmap: bool = False) -> tuple[MilvusIndex, int]:
        """The manifest's collection and the store generation it reflects."""
        return open_manifest_collection(index_dir, manifest, data_dir)

    def open_synced(self, index_dir: str, manifest: Manifest, data_dir: str, store: Store, *,
                    readonly: bool) -> MilvusIndex:
        """The manifest's collection, resynced in place from the store when behind it by a writer (under the write
        lock); readers use it as it is."""
        vectors, generation = self.open(index_dir, manifest, data_dir)
        if generation != store.generation:
            log.warning("vector index in %s behind the store (generation %s vs %s): %s", data_dir, generation,
                        store.generation, "using it" if readonly else "rebuilding it from stored vectors")
            if not readonly:
                _resync(vectors, store, int(manifest.dim))
        return vectors

    def check(self, manifest: Manifest, vectors: MilvusIndex) -> list[str]:
        """The alias must point to the manifest's collection."""
        target = alias_target(vectors.client, manifest.milvus_alias or "")
        if target == manifest.milvus_collection:
            return []
        return [f"Milvus alias {manifest.milvus_alias} points to {target}, "
                f"the manifest to {manifest.milvus_collection}"]
