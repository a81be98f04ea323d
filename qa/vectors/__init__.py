"""Vector backends (FAISS files, Milvus collections) behind one interface: the factory the index folder uses.

`qa.index` names no backend: it asks here for a build's settings, begins a build, and opens or checks the live
vectors of a manifest. Backends are imported when asked for, so `import qa` loads neither FAISS nor pymilvus.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..errors import BadRequest, IndexUnavailable, QAError
from .base import (DocFields, VectorBackend, VectorBuild, VectorIndex, VectorSettings, choose_kind, fill,
                   passage_docs)

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..store import Store

BACKENDS = ("faiss", "milvus")


def backend(name: str) -> VectorBackend:
    """The backend called `name`; `KeyError` for an unknown one."""
    if name == "faiss":
        from .faiss import FaissBackend

        return FaissBackend()
    if name == "milvus":
        from .milvus import MilvusBackend

        return MilvusBackend()
    raise KeyError(name)


def build_settings(index_dir: str, name: str | None, kind: str, *, uri: str | None = None,
                   alias: str | None = None, token: str | None = None) -> VectorSettings:
    """A full build's vector settings, checked before any work: the backend asked for (`name`), else Milvus when
    a URI or alias is given, else the live index's backend, else FAISS; `BadRequest` when invalid."""
    from ..manifest import Manifest

    previous: Manifest | None = None
    with contextlib.suppress(QAError):
        previous = Manifest.load(index_dir)
    if name is None:
        name = "milvus" if uri or alias else (previous.vector_backend if previous else "faiss")
    if name not in BACKENDS:
        raise BadRequest(f"unknown vector backend {name!r}; choose one of {', '.join(BACKENDS)}")
    chosen = backend(name)
    settings = chosen.settings(index_dir, previous, uri, alias, token)
    choose_kind(kind, 0)  # unknown kinds
    chosen.check_kind(kind)
    return settings


def check_available(index_dir: str, settings: VectorSettings) -> None:
    """`IndexUnavailable` at once, before a long build, when the settings' backend cannot be reached."""
    backend(settings.backend).check_available(index_dir, settings)


def begin_build(index_dir: str, settings: VectorSettings, dim: int, kind: str, store: Store,
                windows: int) -> VectorBuild:
    """An empty vector index for a full build of `windows` vectors of the new `store`, beside the live one."""
    return backend(settings.backend).begin(index_dir, settings, dim, kind, store, windows)


def _manifest_backend(index_dir: str, manifest: Manifest) -> VectorBackend:
    """The backend a manifest names; `IndexUnavailable` for one this version does not know."""
    try:
        return backend(manifest.vector_backend)
    except KeyError:
        raise IndexUnavailable(f"unknown vector backend {manifest.vector_backend!r} in the manifest of {index_dir}; "
                               f"choose one of {', '.join(BACKENDS)} and rebuild") from None


def open_vectors(index_dir: str, manifest: Manifest, data_dir: str, *,
                 mmap: bool = False) -> tuple[VectorIndex, int]:
    """(the live vector index, store generation it reflects); `mmap`: a FAISS file is mapped read-only."""
    return _manifest_backend(index_dir, manifest).open(index_dir, manifest, data_dir, mmap=mmap)


def open_synced(index_dir: str, manifest: Manifest, data_dir: str, store: Store, *, readonly: bool) -> VectorIndex:
    """The live vector index, brought up to the store when it lags: FAISS rebuilt in memory, a Milvus collection
    resynced in place by writers (`readonly=False`, under the write lock) and used as it is by readers."""
    return _manifest_backend(index_dir, manifest).open_synced(index_dir, manifest, data_dir, store, readonly=readonly)


def check_vectors(index_dir: str, manifest: Manifest, vectors: VectorIndex) -> list[str]:
    """Problems of the live vector index that only its backend can see."""
    return _manifest_backend(index_dir, manifest).check(manifest, vectors)


__all__ = ["BACKENDS", "DocFields", "VectorBackend", "VectorBuild", "VectorIndex", "VectorSettings", "backend",
           "begin_build", "build_settings", "check_available", "check_vectors", "choose_kind", "fill",
           "open_synced", "open_vectors", "passage_docs"]
