"""A fetched page as an `Article`: canonical URL, the id hashed from it, text and metadata through the HTML and
plain-text readers, gaps filled from the feed item that linked it."""
from __future__ import annotations

import dataclasses
import hashlib
import re
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from ..errors import IngestError
from ..ingest import Article, normalize_date, parse_html, parse_text
from .client import FEED_TYPES, TEXT_TYPES, Fetched, FetchFailed
from .feeds import FeedItem

DOC_ID_PREFIX = "web-"
# query parameters that track a click and never name a different page
_TRACKING = re.compile(r"^(utm_\w+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|igshid|_ga|ref_src|cmpid|ocid)$", re.I)
_CANONICAL = re.compile(r"<link\b[^>]*\brel\s*=\s*[\"']?[^\"'>]*\bcanonical\b[^>]*>", re.I)
_OG_URL = re.compile(r"<meta\b[^>]*\bproperty\s*=\s*[\"']?og:url\b[^>]*>", re.I)
_ATTR = r"\b{}\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))"


def is_url(source: str) -> bool:
    """Whether a source names an http(s) URL (anything else is a file or folder)."""
    return bool(re.match(r"^https?://[^/\s]", source, re.I))


def normalize_url(url: str) -> str:
    """The one spelling of a URL: scheme and host lower-cased, default port, fragment and tracking parameters
    dropped, an empty path as "/"."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if parts.port and (scheme, parts.port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{parts.port}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)])
    return urlunsplit((scheme, host, parts.path or "/", query, ""))


def doc_id_for_url(url: str) -> str:
    """An article's id: a stable hash of its canonical URL, normalised (one story, one id, however reached)."""
    return DOC_ID_PREFIX + hashlib.sha256(normalize_url(url).encode("utf-8")).hexdigest()[:16]


def _attr(tag: str, name: str) -> str | None:
    m = re.search(_ATTR.format(name), tag, re.I)
    return next((g for g in m.groups() if g is not None), None) if m else None


def canonical_url(html: str, base: str) -> str:
    """The page's `<link rel=canonical>`, else its `og:url`, resolved against `base` (the URL after redirects);
    `base` when neither names an http(s) URL."""
    head = html[:200_000]  # both live in the <head>
    for pattern, attr in ((_CANONICAL, "href"), (_OG_URL, "content")):
        for tag in pattern.findall(head):
            value = _attr(tag, attr)
            if value and value.strip():
                url = urljoin(base, value.strip())
                if is_url(url):
                    return url
    return base


@dataclasses.dataclass
class PageContext:
    """What is known of a page before it is read: the feed that linked it and the item's metadata."""

    feed_title: str | None = None
    feed_url: str | None = None
    item: FeedItem | None = None


def page_article(fetched: Fetched, context: PageContext | None = None) -> Article:
    """The article on a fetched HTML or plain-text page; `FetchFailed` when there is none."""
    context = context or PageContext()
    if fetched.content_type in FEED_TYPES:
        raise FetchFailed("a feed where a page was expected")
    text = fetched.text()
    if not text.strip():
        raise FetchFailed("empty page")
    if fetched.content_type in TEXT_TYPES:
        canonical = fetched.final_url
        article = parse_text(text, "", path=fetched.url)
    else:
        canonical = canonical_url(text, fetched.final_url)
        try:
            # the feed item's date beats a date guessed from the page's text
            article = parse_html(text, "", path=fetched.url, url=canonical, guess_date=context.item is None
                                 or not context.item.published)
        except IngestError:
            raise FetchFailed("no article text found") from None
    if not article.paragraphs:
        raise FetchFailed("no article text found")
    return _fill_metadata(article, normalize_url(canonical), context)


def _fill_metadata(article: Article, canonical: str, context: PageContext) -> Article:
    """The id and URL from the canonical URL; the outlet from the site name, else the feed's title, else the host;
    title, author and date from the feed item where the page has none."""
    doc_id = doc_id_for_url(canonical)
    parts = urlsplit(canonical)
    host = (parts.hostname or "").removeprefix("www.")
    item = context.item or FeedItem(link=canonical)
    source = article.source
    # trafilatura names the outlet by the host (with or without port and "www.") when the page has no site name
    if not source or source.lower().removeprefix("www.") in (host, parts.netloc.lower().removeprefix("www.")):
        source = context.feed_title or host or None
    title = article.title if article.title and article.title != article.id else (item.title or canonical)
    return dataclasses.replace(article, id=doc_id, title=title, url=canonical, source=source,
                               author=article.author or item.author,
                               published=article.published or normalize_date(item.published))
