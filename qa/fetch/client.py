"""The polite HTTP client: a User-Agent naming the project, per-host concurrency and delay, robots.txt, connect and
read timeouts, a redirect limit and a size cap read by streaming."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import urllib.robotparser
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

from .. import __version__

USER_AGENT = f"qa-news/{__version__} (news search and question answering; fetches the sources its user lists)"
ROBOTS_AGENT = "qa-news"  # the token robots.txt rules name
FEED_TYPES = frozenset({"application/rss+xml", "application/atom+xml", "application/xml", "text/xml"})
PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})
ACCEPTED_TYPES = FEED_TYPES | PAGE_TYPES | TEXT_TYPES
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: crawlers parse at least 500 KiB
MAX_CRAWL_DELAY = 60.0  # a robots.txt Crawl-delay above this is capped, so one site cannot stall a run for hours
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """The limits every fetch keeps (the defaults are the documented ones; tests shorten the waits)."""

    ignore_robots: bool = False
    delay: float = 1.0  # seconds between two requests to one host
    per_host: int = 2  # requests in flight to one host
    workers: int = 8  # requests in flight in all
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0  # a whole response, so a server dripping bytes cannot hold a run
    max_redirects: int = 5
    max_bytes: int = 10 * MIB


class FetchFailed(Exception):
    """A source that could not be fetched; the message is the reason reported beside its URL."""


@dataclasses.dataclass
class Fetched:
    """A response worth reading: 200 with its body, or 304 (not modified) without one."""

    url: str  # as requested
    final_url: str  # after redirects
    status: int
    content_type: str = ""
    charset: str | None = None
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None

    @property
    def not_modified(self) -> bool:
        """Whether the server answered 304 to a conditional request."""
        return self.status == 304

    def text(self) -> str:
        """The body decoded by the declared charset, else by trafilatura's detection."""
        if self.charset:
            with contextlib.suppress(LookupError):
                return self.body.decode(self.charset, errors="replace")
        from trafilatura.utils import decode_file

        return decode_file(self.body)


class HostGate:
    """At most `slots` requests in flight to one host, their starts at least `delay` seconds apart."""

    def __init__(self, slots: int, delay: float):
        self._slots = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self._next = 0.0
        self.delay = delay

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Wait for a slot and for the host's delay, then hold the slot for one request."""
        with self._slots:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next)
                self._next = start + self.delay
            if start > now:
                time.sleep(start - now)
            yield


def _content_type(header: str | None, body_start: bytes = b"") -> tuple[str, str | None]:
    """(media type, charset) of a Content-Type header; a missing header is guessed from the first bytes."""
    if not header:
        head = body_start.lstrip()[:200].lower()
        if head.startswith(b"<?xml") or b"<rss" in head or b"<feed" in head:
            return "application/xml", None
        return ("text/html" if head.startswith(b"<") else "text/plain"), None
    media, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip().strip("'\"")
    return media.strip().lower(), charset


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n} bytes"


def _network_reason(e: Exception, options: FetchOptions) -> str:
    """One line for a urllib3 error: refused, unresolved, timed out, TLS, broken connection."""
    from urllib3 import exceptions as x

    if isinstance(e, x.NameResolutionError):
        return "cannot resolve the host name"
    if isinstance(e, x.NewConnectionError):
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(e).lower():
            return "connection refused"
        return f"cannot connect: {cause or e}"
    if isinstance(e, x.ConnectTimeoutError):
        return f"connect timeout ({options.connect_timeout:g} s)"
    if isinstance(e, x.ReadTimeoutError):
        return f"read timeout ({options.read_timeout:g} s)"
    if isinstance(e, x.SSLError):
        return f"TLS error: {e}"
    if isinstance(e, x.ProtocolError):
        return f"connection broken: {e.args[0] if e.args else e}"
    return f"{type(e).__name__}: {e}"


class Client:
    """One run's HTTP client: a connection pool, a gate per host and robots.txt read once per site."""

    def __init__(self, options: FetchOptions | None = None):
        import urllib3

        self.options = options or FetchOptions()
        o = self.options
        self._pool = urllib3.PoolManager(num_pools=64, maxsize=o.per_host, retries=False,
                                         timeout=urllib3.Timeout(connect=o.connect_timeout, read=o.read_timeout))
        self._lock = threading.Lock()
        self._gates: dict[str, HostGate] = {}
        self._robots: dict[str, urllib.robotparser.RobotFileParser | FetchFailed] = {}
        self._robots_locks: dict[str, threading.Lock] = {}

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def _gate(self, origin: str) -> HostGate:
        with self._lock:
            if origin not in self._gates:
                self._gates[origin] = HostGate(self.options.per_host, self.options.delay)
            return self._gates[origin]

    def get(self, url: str, *, etag: str | None = None, last_modified: str | None = None,
            accept: frozenset[str] | None = ACCEPTED_TYPES, robots: bool = True, max_bytes: int | None = None) -> Fetched:
        """GET `url` (conditional when `etag` / `last_modified` are given), following at most `max_redirects`
        redirects, each hop checked against robots.txt; `FetchFailed` with the reason otherwise."""
        # given headers replace the pool's, so the User-Agent goes with every request
        headers = {"User-Agent": USER_AGENT, "Accept": ", ".join(sorted(accept)) + ", */*;q=0.1" if accept else "*/*"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        visited, current = [url], url
        while True:
            if robots and not self.options.ignore_robots:
                self._check_robots(current)
            location = self._request(url, current, headers, accept, max_bytes or self.options.max_bytes)
            if isinstance(location, Fetched):
                return location
            if location in visited:
                raise FetchFailed(f"redirect loop ({current} -> {location})")
            if len(visited) > self.options.max_redirects:
                raise FetchFailed(f"more than {self.options.max_redirects} redirects")
            visited.append(location)
            current = location

    def _request(self, url: str, current: str, headers: dict, accept: frozenset[str] | None,
                 max_bytes: int) -> Fetched | str:
        """One request under its host's gate: the response read, or the next URL of a redirect."""
        from urllib3.exceptions import HTTPError

        parts = urlsplit(current)
        try:
            with self._gate(f"{parts.scheme}://{parts.netloc}").hold():
                resp = self._pool.request("GET", current, headers=headers, preload_content=False, redirect=False)
                try:
                    if resp.status in REDIRECT_STATUSES:
                        return _redirect_target(current, resp.status, resp.headers.get("Location"))
                    fetched = self._read(url, current, resp, accept, max_bytes)
                    resp.release_conn()  # read to the end: the connection can serve the host's next request
                    return fetched
                finally:
                    resp.close()  # a body left unread (error, redirect, over the cap) ends its connection
        except HTTPError as e:
            raise FetchFailed(_network_reason(e, self.options)) from None
        except OSError as e:
            raise FetchFailed(f"cannot connect: {e.strerror or e}") from None

    def _read(self, url: str, current: str, resp, accept: frozenset[str] | None, max_bytes: int) -> Fetched:
        """The status, type and size checks, then the body streamed up to the cap."""
        fetched = Fetched(url, current, resp.status, etag=resp.headers.get("ETag"),
                          last_modified=resp.headers.get("Last-Modified"))
        if resp.status == 304:
            return fetched
        if not 200 <= resp.status < 300:
            raise FetchFailed(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
        declared = resp.headers.get("Content-Type")
        if declared:
            fetched.content_type, fetched.charset = _content_type(declared)
            if accept and fetched.content_type not in accept:
                raise FetchFailed(f"unsupported content type {fetched.content_type} (accepted: HTML, RSS/Atom "
                                  "feeds, plain text)")
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise FetchFailed(f"larger than {_size(max_bytes)} (Content-Length {int(length):,})")
        fetched.body = _read_capped(resp, max_bytes, self.options)
        if not declared:
            fetched.content_type, fetched.charset = _content_type(None, fetched.body)
        return fetched

    def _check_robots(self, url: str) -> None:
        """`FetchFailed` when the site's robots.txt disallows `url` for this client."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:  # one read of robots.txt per site, however many threads ask at once
            if origin not in self._robots:
                self._robots[origin] = self._read_robots(origin)
        rules = self._robots[origin]
        if isinstance(rules, FetchFailed):
            raise rules
        if not rules.can_fetch(ROBOTS_AGENT, url):
            raise FetchFailed("disallowed by robots.txt (--ignore-robots for a site you own)")

    def _read_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | FetchFailed:
        """The site's rules (RFC 9309): 4xx allows everything; 5xx and network errors disallow everything."""
        rules = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        try:
            fetched = self.get(origin + "/robots.txt", accept=None, robots=False, max_bytes=ROBOTS_MAX_BYTES)
        except FetchFailed as e:
            reason = str(e)
            if reason.startswith("HTTP 4"):
                rules.allow_all = True
                return rules
            if reason.startswith("HTTP 5"):
                return FetchFailed(f"robots.txt unavailable ({reason}): the site is not fetched")
            return FetchFailed(reason)
        rules.parse(fetched.text().splitlines())
        delay = rules.crawl_delay(ROBOTS_AGENT)
        if delay:
            gate = self._gate(origin)
            gate.delay = max(gate.delay, min(float(delay), MAX_CRAWL_DELAY))
        return rules


def _redirect_target(current: str, status: int, location: str | None) -> str:
    """The absolute http(s) URL a redirect points to."""
    if not location:
        raise FetchFailed(f"HTTP {status} redirect without a Location")
    target = urljoin(current, location.strip())
    if urlsplit(target).scheme not in ("http", "https"):
        raise FetchFailed(f"redirect to a non-HTTP URL: {target[:200]}")
    return target.split("#", 1)[0]


def _read_capped(resp, max_bytes: int, options: FetchOptions) -> bytes:
    """The body, read a chunk at a time: reading stops (and fails) past `max_bytes` or the total time limit."""
    deadline = time.monotonic() + options.total_timeout
    chunks, size = [], 0
    for chunk in resp.stream(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailed(f"larger than {_size(max_bytes)} (stopped reading)")
        if time.monotonic() > deadline:
            raise FetchFailed(f"took longer than {options.total_timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)
