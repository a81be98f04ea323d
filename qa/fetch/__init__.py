"""Articles straight from the web: pages and RSS/Atom feeds fetched politely and incrementally.

`client.py` is the HTTP side (User-Agent, per-host limits, robots.txt, timeouts, redirects, size cap), `feeds.py`
the feeds, `pages.py` a page's article and its id from the canonical URL, `cache.py` the fetch cache in the index
folder, `run.py` one run over many sources, `report.py` its outcome source by source.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import BadRequest, IngestError
from ..ingest import Article, article_from_dict
from .client import USER_AGENT, FetchOptions
from .pages import doc_id_for_url, is_url, normalize_url
from .report import FetchReport, SourceResult
from .run import WebFetch, is_web_source


def split_sources(sources: Sequence[str]) -> tuple[list[str], list[str]]:
    """(files and folders to read, URLs and feed files to fetch), each in the given order."""
    web = [s for s in sources if is_web_source(s)]
    return [s for s in sources if not is_web_source(s)], web


def read_sources_file(path: str) -> list[str]:
    """The sources listed in a file: one URL or path a line, blank lines and `#` comments skipped; relative paths
    are taken from the file's folder (so a crontab's working directory does not matter)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise IngestError(f"cannot read the sources file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise IngestError(f"the sources file {path} is not UTF-8 text") from None
    base = os.path.dirname(os.path.abspath(path))
    sources = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sources.append(line if is_url(line) else os.path.join(base, os.path.expanduser(line)))
    return sources


def article_from_request(obj: object, index_dir: str, options: FetchOptions | None = None) -> Article:
    """The article of an admin API request: `{"url": ...}` fetches that page (robots.txt and every limit kept,
    the fetch cache updated), anything else is an article in the JSONL schema."""
    if not isinstance(obj, dict) or "url" not in obj or "paragraphs" in obj or "text" in obj:
        return article_from_dict(obj)
    if set(obj) != {"url"}:
        raise BadRequest('to fetch a page send {"url": ...} alone; an article needs "paragraphs" or "text"')
    url = obj["url"]
    if not isinstance(url, str) or not is_url(url.strip()) or len(url) > 8192:
        raise BadRequest('"url" must be an http:// or https:// URL')
    run = WebFetch(index_dir, options, conditional=False, strict=True, pages_only=True)
    articles = run.run([url.strip()])
    if not articles:
        raise IngestError(f"{url}: no article found")
    run.save()
    return articles[0]


__all__ = ["FetchOptions", "FetchReport", "SourceResult", "WebFetch", "USER_AGENT", "article_from_request",
           "doc_id_for_url", "is_url", "normalize_url", "read_sources_file", "split_sources"]
