"""The fetch cache in the index folder: per URL its validators (ETag, Last-Modified), the body's hash and the
document it became, so an update asks only for what changed. Written atomically; a lost or broken cache costs
one full fetch, never data."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from ..files import write_json_atomic
from .feeds import FeedItem

log = logging.getLogger(__name__)

CACHE_FILE = "fetch-cache.json"
CACHE_VERSION = 1
LOCK_FILE = ".fetch-cache.lock"


@dataclasses.dataclass
class PageEntry:
    """A page fetched before: its validators, its body's hash, and the document (and its content hash) it gave."""

    etag: str | None = None
    last_modified: str | None = None
    content_hash: str | None = None  # sha256 of the body
    doc_id: str | None = None
    article_hash: str | None = None  # the document's content hash when it was indexed
    canonical: str | None = None
    feed: str | None = None  # the feed that listed it, if any
    fetched_at: str | None = None


@dataclasses.dataclass
class FeedEntry:
    """A feed fetched before: its validators, title and items (so a 304 still lists its items)."""

    etag: str | None = None
    last_modified: str | None = None
    content_hash: str | None = None
    title: str | None = None
    items: list[FeedItem] = dataclasses.field(default_factory=list)
    fetched_at: str | None = None


def _entry(cls, obj: dict):
    fields = {f.name for f in dataclasses.fields(cls)}
    entry = cls(**{k: v for k, v in obj.items() if k in fields})
    if cls is FeedEntry:
        entry.items = [FeedItem(**i) for i in entry.items if isinstance(i, dict) and i.get("link")]
    return entry


@dataclasses.dataclass
class FetchCache:
    """URL → what was fetched from it, for pages and feeds."""

    pages: dict[str, PageEntry] = dataclasses.field(default_factory=dict)
    feeds: dict[str, FeedEntry] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, index_dir: str) -> "FetchCache":
        """The index folder's cache; empty when there is none or it cannot be read (logged)."""
        path = os.path.join(index_dir, CACHE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
            return cls(pages={u: _entry(PageEntry, e) for u, e in obj.get("pages", {}).items()},
                       feeds={u: _entry(FeedEntry, e) for u, e in obj.get("feeds", {}).items()})
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("fetch cache %s unreadable (%s): every source is fetched in full", path, e)
            return cls()

    def merge_into(self, index_dir: str) -> None:
        """Write this run's entries over the cache on disk (entries of other URLs kept), atomically, under the
        cache's own lock so two runs ending together both keep theirs."""
        from filelock import FileLock

        if not self.pages and not self.feeds:
            return
        os.makedirs(index_dir, exist_ok=True)
        with FileLock(os.path.join(index_dir, LOCK_FILE), timeout=600):
            current = FetchCache.load(index_dir)
            current.pages.update(self.pages)
            current.feeds.update(self.feeds)
            write_json_atomic(os.path.join(index_dir, CACHE_FILE), {
                "version": CACHE_VERSION,
                "pages": {u: dataclasses.asdict(e) for u, e in sorted(current.pages.items())},
                "feeds": {u: dataclasses.asdict(e) for u, e in sorted(current.feeds.items())}})
