"""One fetch run over URLs and feeds: conditional requests from the cache, pages fetched in parallel under the
client's per-host limits, each outcome classified against the live index, duplicates by canonical URL folded."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Sequence

from ..errors import IngestError, QAError
from ..ingest import Article, Paragraph
from ..manifest import Manifest, now
from ..store import STORE_FILE, Store
from .cache import FeedEntry, FetchCache, PageEntry
from .client import FEED_TYPES, Client, Fetched, FetchFailed, FetchOptions
from .feeds import FEED_EXTS, Feed, MalformedFeed, parse_feed
from .pages import PageContext, is_url, normalize_url, page_article
from .report import FetchReport, SourceResult

log = logging.getLogger(__name__)


def is_web_source(source: str) -> bool:
    """Whether a source is fetched (an http(s) URL, or a local RSS/Atom file whose items are) rather than read."""
    return is_url(source) or (os.path.splitext(source)[1].lower() in FEED_EXTS and os.path.isfile(source))


@dataclasses.dataclass
class PageOutcome:
    """A page's fetch in a worker thread, before it is classified against the index."""

    url: str
    status: str  # "fetched", "not_modified", "unchanged", "failed", "skipped"
    context: PageContext
    reason: str | None = None
    article: Article | None = None
    entry: PageEntry | None = None


def stored_article(store: Store, doc_id: str) -> Article | None:
    """An indexed document as an `Article` (its content hash unchanged), or None."""
    doc = store.document(doc_id)
    if doc is None:
        return None
    paragraphs = [Paragraph(p["paragraph_index"], p["text"]) for p in doc["paragraphs"]]
    return Article(id=doc["id"], title=doc["title"], paragraphs=paragraphs, source=doc["source"],
                   author=doc["author"], url=doc["url"], published=doc["published"], tags=doc["tags"])


def _live_store(index_dir: str) -> Store | None:
    """The live index's store, read-only, or None without one."""
    try:
        manifest = Manifest.load(index_dir)
        return Store(os.path.join(index_dir, manifest.data_dir, STORE_FILE), readonly=True)
    except (QAError, OSError):
        return None
    except Exception as e:  # a corrupt store: fetch everything, as for a new index
        log.warning("live store of %s unreadable (%s): fetching without the cache", index_dir, e)
        return None


def _body_hash(fetched: Fetched) -> str:
    return hashlib.sha256(fetched.body).hexdigest()


def _is_feed(fetched: Fetched) -> bool:
    """A feed by its content type, or an HTML-less body that opens like one."""
    if fetched.content_type in FEED_TYPES:
        return True
    head = fetched.body.lstrip()[:1024].lower()
    return fetched.content_type == "text/plain" and (b"<rss" in head or b"<feed" in head)


@dataclasses.dataclass
class SourceFetch:
    """A listed source's first request: a feed (its items to fetch next), a page's response, or a failure."""

    url: str
    fetched: Fetched | None = None
    feed: Feed | None = None
    feed_status: str = ""  # "fetched" or "not_modified"
    reason: str | None = None


@dataclasses.dataclass
class PageTask:
    """A page to fetch (or, for a listed page, already fetched) and read."""

    url: str
    context: PageContext
    fetched: Fetched | None = None
    counted: bool = False  # already ticked on the progress bar as a listed source


class WebFetch:
    """One run over web sources: `run()` gives the articles to index, `report` says what happened to each source,
    `save()` writes the cache once the index holds the articles.

    `conditional`: send the cache's validators (updates); a full build fetches everything again. `keep_failed`: a
    failed source's documents are taken from the live index (a full build, so nothing indexed is lost).
    `pages_only`: a feed is an error (the admin API adds one page)."""

    def __init__(self, index_dir: str, options: FetchOptions | None = None, *, conditional: bool = True,
                 keep_failed: bool = False, strict: bool = False, progress: bool = False, pages_only: bool = False):
        self.index_dir = index_dir
        self.options = options or FetchOptions()
        self.conditional, self.keep_failed, self.strict = conditional, keep_failed, strict
        self.progress, self.pages_only = progress, pages_only
        self.cache = FetchCache.load(index_dir)
        self.updates = FetchCache()  # this run's entries, merged into the cache by save()
        self.report = FetchReport()
        self._valid: dict[str, PageEntry] = {}  # cache entries whose document the index holds unchanged
        self._store: Store | None = None
        self._stop = threading.Event()

    def run(self, sources: Sequence[str]) -> list[Article]:
        """Fetch the sources (URLs and feed files); their articles, failures in `report` (or `IngestError` when
        strict)."""
        from tqdm import tqdm

        self._store = _live_store(self.index_dir)
        client = Client(self.options)
        bar = tqdm(total=len(sources), desc="fetching", unit="source", mininterval=0.5,
                   disable=None if self.progress else True)
        try:
            self._validate_cache()
            with concurrent.futures.ThreadPoolExecutor(self.options.workers, thread_name_prefix="qa-fetch") as pool:
                firsts = list(pool.map(lambda s: self._ticked(bar, self._first(client, s)), sources))
                plan = self._plan(firsts, bar)
                tasks = [t for t in plan if isinstance(t, PageTask)]
                outcomes = pool.map(lambda t: self._ticked(bar, self._page(client, t), not t.counted), tasks)
                by_task = dict(zip(map(id, tasks), outcomes))
            articles = self._classify([by_task[id(p)] if isinstance(p, PageTask) else p for p in plan])
        finally:
            bar.close()
            client.close()
            if self._store is not None:
                self._store.close()
        failures = self.report.failures
        if self.strict and failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise IngestError(failures[0].line() + more)
        return articles

    def save(self) -> None:
        """Merge this run's cache entries into the index folder's cache (call it under the writer lock)."""
        self.updates.merge_into(self.index_dir)

    @staticmethod
    def _ticked(bar, result, tick: bool = True):
        if tick:
            bar.update(1)
        return result

    def _validate_cache(self) -> None:
        """Keep the validators of cached pages whose document the live index holds as it was indexed: anything else
        (removed, rebuilt without it, a write that failed) is fetched in full."""
        if not self.conditional or self._store is None:
            return
        for url, entry in self.cache.pages.items():
            if entry.doc_id and entry.article_hash and self._store.content_hash(entry.doc_id) == entry.article_hash:
                self._valid[url] = entry

    def _fail(self, reason: str) -> str:
        if self.strict:
            self._stop.set()  # no new requests: the run fails anyway
        return reason

    def _first(self, client: Client, source: str) -> SourceFetch:
        """A listed source's first request (or a local feed file's reading): a feed, a page or a failure."""
        if self._stop.is_set():
            return SourceFetch(source, reason="not fetched: an earlier source failed (--strict)")
        if not is_url(source):
            return self._feed_file(source)
        key = normalize_url(source)
        feed_entry = self.cache.feeds.get(key) if self.conditional else None
        validators = feed_entry or self._valid.get(key)
        try:
            fetched = client.get(source, etag=validators and validators.etag,
                                 last_modified=validators and validators.last_modified)
        except FetchFailed as e:
            return SourceFetch(source, reason=self._fail(str(e)))
        if fetched.not_modified and feed_entry:
            return SourceFetch(source, feed=Feed(feed_entry.title, feed_entry.items), feed_status="not_modified")
        if fetched.not_modified or not _is_feed(fetched):
            return SourceFetch(source, fetched=fetched)
        if self.pages_only:
            return SourceFetch(source, reason=self._fail("a feed, not a page: add feeds with `qa add`"))
        try:
            feed = parse_feed(fetched.body, fetched.final_url)
        except MalformedFeed as e:
            return SourceFetch(source, reason=self._fail(str(e)))
        self.updates.feeds[key] = FeedEntry(fetched.etag, fetched.last_modified, _body_hash(fetched), feed.title,
                                            feed.items, now())
        return SourceFetch(source, feed=feed, feed_status="fetched")

    def _feed_file(self, path: str) -> SourceFetch:
        """A local RSS/Atom file: its items are fetched like a feed URL's."""
        try:
            with open(path, "rb") as f:
                data = f.read(self.options.max_bytes + 1)
        except OSError as e:
            return SourceFetch(path, reason=self._fail(f"cannot read: {e.strerror or e}"))
        if len(data) > self.options.max_bytes:
            return SourceFetch(path, reason=self._fail("feed file larger than the size cap"))
        try:
            return SourceFetch(path, feed=parse_feed(data), feed_status="fetched")
        except MalformedFeed as e:
            return SourceFetch(path, reason=self._fail(str(e)))

    def _plan(self, firsts: Sequence[SourceFetch], bar) -> list[SourceResult | PageTask]:
        """In source order: each feed's (or failed source's) result followed by its items' tasks, and the listed
        pages' tasks; a URL seen before is skipped."""
        plan: list[SourceResult | PageTask] = []
        seen = set()
        for first in firsts:
            key = normalize_url(first.url) if is_url(first.url) else first.url
            if first.reason is not None:
                kind = "feed" if key in self.cache.feeds or not is_url(first.url) else "page"
                plan.append(SourceResult(first.url, kind, "failed", reason=first.reason))
            elif first.feed is None:
                if key not in seen:
                    seen.add(key)
                    plan.append(PageTask(first.url, PageContext(), first.fetched, counted=True))
            else:
                plan.append(SourceResult(first.url, "feed", first.feed_status, items=len(first.feed.items)))
                context = dict(feed_title=first.feed.title, feed_url=key)
                for item in first.feed.items:
                    item_key = normalize_url(item.link) if is_url(item.link) else item.link
                    if item_key not in seen:
                        seen.add(item_key)
                        plan.append(PageTask(item.link, PageContext(item=item, **context)))
                        bar.total += 1
        bar.refresh()
        return plan

    def _page(self, client: Client, task: PageTask) -> PageOutcome:
        """Fetch (unless done) and read one page."""
        url, context = task.url, task.context
        if task.fetched is None and self._stop.is_set():
            return PageOutcome(url, "skipped", context)
        if not is_url(url):
            return PageOutcome(url, "failed", context, reason=self._fail("not an http(s) URL"))
        entry = self._valid.get(normalize_url(url))
        try:
            fetched = task.fetched or client.get(url, etag=entry and entry.etag,
                                                 last_modified=entry and entry.last_modified)
            if fetched.not_modified:
                return PageOutcome(url, "not_modified", context, entry=entry)
            body_hash = _body_hash(fetched)
            fresh = PageEntry(fetched.etag, fetched.last_modified, body_hash, fetched_at=now(), feed=context.feed_url)
            if entry is not None and entry.content_hash == body_hash:  # no validators, but the same bytes
                return PageOutcome(url, "unchanged", context, entry=dataclasses.replace(
                    entry, etag=fresh.etag, last_modified=fresh.last_modified, fetched_at=fresh.fetched_at))
            article = page_article(fetched, context)
        except FetchFailed as e:
            return PageOutcome(url, "failed", context, reason=self._fail(str(e)))
        fresh.doc_id, fresh.article_hash, fresh.canonical = article.id, article.content_hash(), article.url
        return PageOutcome(url, "fetched", context, article=article, entry=fresh)

    def _classify(self, steps: Sequence[SourceResult | PageOutcome]) -> list[Article]:
        """The report and the articles to index: each page new, updated or unchanged against the live index, or a
        duplicate of an earlier page with the same canonical URL; failed sources' documents kept when asked."""
        articles: dict[str, Article] = {}
        first_url: dict[str, str] = {}
        for step in steps:
            if isinstance(step, SourceResult):
                self.report.results.append(step)
                if step.status == "failed" and self.keep_failed:
                    step.kept = self._keep(articles, step.url, by_feed=step.kind == "feed")
                continue
            if step.status == "skipped":
                continue
            result = SourceResult(step.url, "page", step.status, reason=step.reason, feed=step.context.feed_url,
                                  doc_id=step.entry.doc_id if step.entry else None)
            self.report.results.append(result)
            if step.status == "failed":
                result.kept = self.keep_failed and self._keep(articles, step.url)
                continue
            self.updates.pages[normalize_url(step.url)] = step.entry
            if step.article is None:
                continue
            article = step.article
            if article.id in first_url:
                result.status, result.reason = "duplicate", f"same article as {first_url[article.id]}"
                continue
            first_url[article.id] = step.url
            stored = self._store.content_hash(article.id) if self._store is not None else None
            result.status = "new" if stored is None else ("unchanged" if stored == article.content_hash() else
                                                          "updated")
            articles[article.id] = article
        return list(articles.values())

    def _keep(self, articles: dict[str, Article], url: str, *, by_feed: bool = False) -> bool:
        """Take a failed source's documents (a page's, or those of a feed's items) from the live index; whether any
        was kept."""
        if self._store is None:
            return False
        key = normalize_url(url) if is_url(url) else url
        entries = [e for u, e in self.cache.pages.items() if e.feed == key] if by_feed else \
            [self.cache.pages[key]] if key in self.cache.pages else []
        kept = False
        for entry in entries:
            if entry.doc_id and entry.doc_id not in articles:
                article = stored_article(self._store, entry.doc_id)
                if article is not None:
                    articles[entry.doc_id] = article
                    kept = True
        return kept
