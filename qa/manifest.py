"""The index folder's `manifest.json`: what the live index is (model, vectors, data folder, counts), in one place.

Users and tools read the file, so its keys stay as they are; code reads the `Manifest` dataclass's attributes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from typing import Any

from . import __version__
from .errors import IndexUnavailable
from .files import write_json_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 3
MILVUS_KEYS = ("milvus_uri", "milvus_alias", "milvus_collection")  # written only for a Milvus index
STORES = ("sqlite", "milvus")


def manifest_path(index_dir: str) -> str:
    """Where an index folder keeps its manifest."""
    return os.path.join(index_dir, MANIFEST)


def now() -> str:
    """The current UTC time as the manifest records it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class Counts:
    """What the store holds (`Store.counts`), as the manifest records it."""

    documents: int = 0
    passages: int = 0
    windows: int = 0
    sentences: int = 0


@dataclasses.dataclass
class Manifest:
    """An index folder's manifest: `load` checks it, `save` writes it atomically with the same keys as ever."""

    model: str
    dim: int
    data_dir: str
    model_path: str | None = None
    embed_backend: str = "torch"
    vector_backend: str = "faiss"
    store: str = "sqlite"  # where the text side lives: the index folder's SQLite, or Milvus (a cluster index)
    milvus_uri: str | None = None
    milvus_alias: str | None = None
    milvus_collection: str | None = None
    index_kind: str = "flat"
    counts: Counts = dataclasses.field(default_factory=Counts)
    generation: int = 0
    built_at: str = dataclasses.field(default_factory=now)
    updated_at: str = dataclasses.field(default_factory=now)
    chunking: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: int = FORMAT_VERSION
    package_version: str = __version__

    @classmethod
    def load(cls, index_dir: str) -> Manifest:
        """The index folder's manifest; a clear `IndexUnavailable` naming the fix when missing, corrupt or of
        another format."""
        path = manifest_path(index_dir)
        command = f"qa build SOURCE... --index-dir {index_dir}"
        fix = f"build it with: {command}"
        if not os.path.exists(path):
            raise IndexUnavailable(f"no index in {index_dir} (manifest.json missing); {fix}")
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError) as e:
            raise IndexUnavailable(f"corrupt manifest {path} ({e}); rebuild: {fix}") from None
        if not isinstance(obj, dict) or "data_dir" not in obj or "model" not in obj:
            raise IndexUnavailable(f"corrupt manifest {path} (fields missing); rebuild: {fix}")
        if obj.get("format") != FORMAT_VERSION:
            raise IndexUnavailable(f"index in {index_dir} has format {obj.get('format')}; this version reads "
                                   f"format {FORMAT_VERSION}: rebuild it with {command}")
        try:
            return cls.from_dict(obj)
        except (TypeError, ValueError) as e:
            raise IndexUnavailable(f"corrupt manifest {path} ({e}); rebuild: {fix}") from None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Manifest:
        """A manifest from its JSON object (keys it does not know are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in obj.items() if k in names}
        values["counts"] = Counts(**values.get("counts", {}))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the manifest: the Milvus keys only for a Milvus index, `store` only for a cluster
        index (an index without it is on SQLite)."""
        obj = dataclasses.asdict(self)
        if self.vector_backend != "milvus":
            for key in MILVUS_KEYS:
                del obj[key]
        if self.store == "sqlite":
            del obj["store"]
        return obj

    def save(self, index_dir: str) -> None:
        """Write the manifest atomically: readers see the old one or this one."""
        write_json_atomic(manifest_path(index_dir), self.to_dict())
