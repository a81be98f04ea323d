"""RSS and Atom feeds (feedparser): the feed's title and its items' links, titles, authors and dates."""
from __future__ import annotations

import dataclasses
import time

FEED_EXTS = {".xml", ".rss", ".atom"}


@dataclasses.dataclass
class FeedItem:
    """One item of a feed: the link to fetch and the metadata a page may lack."""

    link: str
    title: str | None = None
    author: str | None = None
    published: str | None = None  # ISO date

    def to_dict(self) -> dict:
        """The item as JSON (the fetch cache keeps a feed's items)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Feed:
    """A parsed feed."""

    title: str | None
    items: list[FeedItem]


class MalformedFeed(ValueError):
    """A document that is not a readable RSS or Atom feed."""


def _iso_date(entry) -> str | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if isinstance(value, time.struct_time):
            return time.strftime("%Y-%m-%d", value)
    return None


def parse_feed(data: bytes, base_url: str | None = None) -> Feed:
    """The items of an RSS 2.0 / RSS 1.0 / Atom document; relative links resolved against `base_url`.

    A document yielding no items and either not a feed or not well-formed is `MalformedFeed`."""
    import feedparser

    headers = {"content-location": base_url} if base_url else None
    parsed = feedparser.parse(data, response_headers=headers, sanitize_html=False, resolve_relative_uris=True)
    # feedparser reads on past errors; a broken feed that still yields items is used, one that yields none is not
    if not parsed.entries and (parsed.get("bozo") or not parsed.get("version")):
        reason = parsed.get("bozo_exception")
        raise MalformedFeed(f"malformed feed: {reason}" if reason else "malformed feed: not RSS or Atom")
    items = []
    for entry in parsed.entries:
        link = (entry.get("link") or "").strip()
        if not link:
            # Atom may carry the link only among `links`; RSS may put it in `id` (guid isPermaLink)
            link = next((x.get("href", "") for x in entry.get("links", []) if x.get("rel") == "alternate"), "")
            link = link or (entry.get("id", "") if str(entry.get("id", "")).startswith("http") else "")
        if link:
            items.append(FeedItem(link=link, title=(entry.get("title") or "").strip() or None,
                                  author=(entry.get("author") or "").strip() or None, published=_iso_date(entry)))
    title = (parsed.feed.get("title") or "").strip() or None
    return Feed(title=title, items=items)
