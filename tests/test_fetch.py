"""Fetching articles from URLs and RSS/Atom feeds, against a real HTTP server on loopback (nothing leaves the
machine): feeds, conditional requests, re-indexing, canonical duplicates, every bad source, robots.txt, limits."""
from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
import time

import pytest

from qa import __version__
from qa.fetch import FetchOptions, doc_id_for_url, normalize_url, read_sources_file
from qa.fetch.cache import CACHE_FILE
from qa.index import add_documents, build_index
from qa.store import STORE_FILE, Store
from qa.manifest import Manifest

# short waits so the suite stays fast; the limits themselves are the documented ones
FAST = FetchOptions(delay=0.0, read_timeout=1.0, connect_timeout=2.0)
RSS_TYPE = "application/rss+xml"


@dataclasses.dataclass
class Route:
    """What the server answers on one path."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "text/html; charset=utf-8"
    headers: dict = dataclasses.field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    sleep: float = 0.0  # before answering
    endless: bool = False  # stream without a length until the client stops


class Origin(http.server.ThreadingHTTPServer):
    """A loopback web site: routes by path (with query), a log of requests, the peak of requests in flight."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.log: list[dict] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_to(self, path: str) -> list[dict]:
        return [r for r in self.log if r["path"] == path]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server: Origin = self.server
        with server.lock:
            server.in_flight += 1
            server.peak = max(server.peak, server.in_flight)
            server.log.append({"path": self.path, "headers": dict(self.headers), "at": time.monotonic(),
                               "in_flight": server.in_flight})  # this request included
        try:
            self._answer(server.routes.get(self.path) or Route(b"not found", 404, "text/plain"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with server.lock:
                server.in_flight -= 1

    def _answer(self, route: Route) -> None:
        time.sleep(route.sleep)
        if (route.etag and self.headers.get("If-None-Match") == route.etag) or \
                (route.last_modified and self.headers.get("If-Modified-Since") == route.last_modified):
            self.send_response(304)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(route.status)
        if route.content_type:
            self.send_header("Content-Type", route.content_type)
        for key, value in {**route.headers, "ETag": route.etag, "Last-Modified": route.last_modified}.items():
            if value:
                self.send_header(key, value)
        if route.endless:
            self.send_header("Connection", "close")
            self.end_headers()
            while True:
                self.wfile.write(b"<p>" + b"x" * 65536 + b"</p>")
        if "Content-Length" not in route.headers:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        self.wfile.write(route.body)


@pytest.fixture()
def origin():
    server = Origin()
    # shutdown() waits for serve_forever's next poll: 20 ms, not the default 0.5 s, after every test
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def article_html(title: str, words: str, *, canonical: str | None = None, site: str | None = None,
                 date: str | None = None, paragraphs: int = 3) -> bytes:
    """A news page with site chrome around an article of a few paragraphs about `words`."""
    head = f"<title>{title}</title>"
    if canonical:
        head += f'<link rel="canonical" href="{canonical}">'
    if site:
        head += f'<meta property="og:site_name" content="{site}">'
    if date:
        head += f'<meta property="article:published_time" content="{date}">'
    paras = "".join(f"<p>Paragraph {i + 1} of the report on {words}: officials said the {words} would continue "
                    f"through the week, and residents described how the {words} changed their plans.</p>"
                    for i in range(paragraphs))
    return (f"<!doctype html><html><head>{head}</head><body><nav><a href='/'>Home</a> <a href='/w'>World</a></nav>"
            f"<article><h1>{title}</h1>{paras}</article><footer>Copyright 2024 Example</footer></body></html>"
            ).encode()


def rss(title: str, items: list[tuple[str, str, str]]) -> bytes:
    """An RSS 2.0 feed of (title, link, RFC 822 date) items."""
    body = "".join(f"<item><title>{t}</title><link>{link}</link><pubDate>{d}</pubDate></item>"
                   for t, link, d in items)
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title><link>http://x/</link>'
            f"<description>d</description>{body}</channel></rss>").encode()


def atom(title: str, items: list[tuple[str, str, str]]) -> bytes:
    """An Atom feed of (title, link, ISO date) entries."""
    body = "".join(f'<entry><title>{t}</title><link rel="alternate" href="{link}"/><id>{link}</id>'
                   f"<updated>{d}</updated></entry>" for t, link, d in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>{title}'
            f"</title><id>urn:x</id><updated>2024-05-01T00:00:00Z</updated>{body}</feed>").encode()


def docs(index_dir: str) -> dict[str, dict]:
    """The index's documents by id, with their paragraphs."""
    manifest = Manifest.load(index_dir)
    store = Store(f"{index_dir}/{manifest.data_dir}/{STORE_FILE}", readonly=True)
    try:
        return {d: store.document(d) for d in store.document_ids()}
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- feeds, conditional requests, re-indexing ------------------------------------------------------------------

def test_rss_feed_build_then_conditional_update_and_changed_page(origin, tmp_path, fake_embedder):
    a, b = origin.url("/news/flood"), origin.url("/news/strike")
    origin.routes["/feed.rss"] = Route(rss("Valley Gazette", [("Flood title", a, "Tue, 07 May 2024 08:00:00 GMT"),
                                                              ("Strike", b, "Wed, 08 May 2024 08:00:00 GMT")]),
                                       content_type=RSS_TYPE, etag='"feed-1"')
    origin.routes["/news/flood"] = Route(article_html("River flood", "river flood"), etag='"a1"')
    origin.routes["/news/strike"] = Route(article_html("Rail strike", "rail strike", site="Rail Times",
                                                       date="2024-04-02"), last_modified="Mon, 01 Apr 2024 0:00 GMT")
    index = str(tmp_path / "index")
    report = build_index([origin.url("/feed.rss")], index, embedder=fake_embedder, fetch=FAST)
    assert report.documents == 2 and report.fetch.counts()["new"] == 2 and not report.problems
    found = docs(index)
    flood, strike = found[doc_id_for_url(a)], found[doc_id_for_url(b)]
    # the page lacks a site name and a date: the feed's title and the item's date fill them
    assert flood["source"] == "Valley Gazette" and flood["published"] == "2024-05-07"
    assert strike["source"] == "Rail Times" and strike["published"] == "2024-04-02"
    assert flood["url"] == normalize_url(a) and "river flood" in flood["paragraphs"][0]["text"]
    assert all(r["headers"]["User-Agent"].startswith(f"qa-news/{__version__} ") for r in origin.log)

    report = add_documents([origin.url("/feed.rss")], index, embedder=fake_embedder, fetch=FAST)
    c = report.fetch.counts()
    assert (c["not_modified"], c["new"], c["updated"], c["failed"]) == (2, 0, 0, 0), report.fetch.to_dict()
    assert report.added == report.updated == 0
    assert origin.requests_to("/feed.rss")[-1]["headers"]["If-None-Match"] == '"feed-1"'
    assert origin.requests_to("/news/flood")[-1]["headers"]["If-None-Match"] == '"a1"'
    assert origin.requests_to("/news/strike")[-1]["headers"]["If-Modified-Since"] == "Mon, 01 Apr 2024 0:00 GMT"
    assert report.fetch.results[0].status == "not_modified"  # the feed itself answered 304

    origin.routes["/news/flood"] = Route(article_html("River flood", "river flood and evacuation"), etag='"a2"')
    report = add_documents([origin.url("/feed.rss")], index, embedder=fake_embedder, fetch=FAST)
    c = report.fetch.counts()
    assert (c["updated"], c["not_modified"], c["new"]) == (1, 1, 0) and report.updated == 1
    assert "evacuation" in docs(index)[doc_id_for_url(a)]["paragraphs"][0]["text"]
    assert report.fetch.summary() == "fetched 1, not modified 1, new 0, updated 1, failed 0"


def test_atom_feed_file_and_last_modified(origin, tmp_path, fake_embedder):
    a, b = origin.url("/a"), origin.url("/b")
    feed = tmp_path / "world.atom"
    feed.write_bytes(atom("World Desk", [("Quake", a, "2024-03-01T10:00:00Z"), ("Harvest", b, "2024-03-02T10:00:00Z")]))
    stamp = "Fri, 01 Mar 2024 10:00:00 GMT"
    origin.routes["/a"] = Route(article_html("Quake", "earthquake"), last_modified=stamp)
    origin.routes["/b"] = Route(article_html("Harvest", "wheat harvest"), last_modified=stamp)
    origin.routes["/feed.atom"] = Route(feed.read_bytes(), content_type="application/atom+xml")
    index = str(tmp_path / "index")
    report = build_index([str(feed)], index, embedder=fake_embedder, fetch=FAST)
    assert report.documents == 2
    assert {d["published"] for d in docs(index).values()} == {"2024-03-01", "2024-03-02"}
    assert {d["source"] for d in docs(index).values()} == {"World Desk"}
    report = add_documents([origin.url("/feed.atom")], index, embedder=fake_embedder, fetch=FAST)
    assert report.fetch.counts()["not_modified"] == 2 and report.added == 0
    assert origin.requests_to("/a")[-1]["headers"]["If-Modified-Since"] == stamp


def test_same_story_through_two_links_is_one_document(origin, tmp_path, fake_embedder):
    canonical = origin.url("/story")
    page = article_html("Dam opens", "new dam", canonical="/story")
    origin.routes["/story"] = Route(page)
    origin.routes["/amp/story"] = Route(page)
    origin.routes["/story?utm_source=feed"] = Route(page)
    origin.routes["/s"] = Route(status=301, headers={"Location": "/amp/story"})
    origin.routes["/feed.rss"] = Route(rss("Dam News", [("Dam", origin.url("/amp/story"), "Tue, 07 May 2024 8:00 GMT"),
                                                        ("Dam", origin.url("/s"), "Tue, 07 May 2024 8:00 GMT")]),
                                       content_type="text/xml")
    index = str(tmp_path / "index")
    sources = [origin.url("/story?utm_source=feed"), origin.url("/feed.rss"), origin.url("/story")]
    report = build_index(sources, index, embedder=fake_embedder, fetch=FAST)
    assert report.documents == 1 and list(docs(index)) == [doc_id_for_url(canonical)]
    statuses = [(r.url, r.status) for r in report.fetch.results if r.kind == "page"]
    # "/story" is "/story?utm_source=feed" by URL (not fetched twice); the other two links are duplicates by canonical
    assert statuses == [(sources[0], "new"), (origin.url("/amp/story"), "duplicate"), (origin.url("/s"), "duplicate")]
    assert docs(index)[doc_id_for_url(canonical)]["url"] == canonical


def test_url_normalisation_and_ids_are_stable():
    assert normalize_url("HTTP://News.Example.COM:80/a?utm_source=x&id=3#top") == "http://news.example.com/a?id=3"
    assert normalize_url("https://example.com") == "https://example.com/"
    assert doc_id_for_url("https://example.com/a?fbclid=1") == doc_id_for_url("https://EXAMPLE.com/a#x")
    assert doc_id_for_url("https://example.com/a") != doc_id_for_url("https://example.com/b")
    assert doc_id_for_url("https://example.com/a").startswith("web-") and len(doc_id_for_url("https://e.com/")) == 20


# --- bad sources -------------------------------------------------------------------------------------------------

def bad_routes(origin) -> dict[str, str]:
    """Every kind of bad source, path → the reason expected in its report line."""
    origin.routes.update({
        "/gone": Route(b"missing", 404, "text/plain"),
        "/broken": Route(b"oops", 503, "text/plain"),
        "/slow": Route(article_html("Slow", "slow page"), sleep=3.0),
        "/loop1": Route(status=302, headers={"Location": "/loop2"}),
        "/loop2": Route(status=302, headers={"Location": "/loop1"}),
        **{f"/hop{i}": Route(status=301, headers={"Location": f"/hop{i + 1}"}) for i in range(7)},
        "/report.pdf": Route(b"%PDF-1.4", content_type="application/pdf"),
        "/huge": Route(b"", headers={"Content-Length": str(11 * 1024 * 1024)}),
        "/endless": Route(endless=True),
        "/bad.rss": Route(b"<rss><channel><title>x</titl", content_type=RSS_TYPE),
        "/menu": Route(b"<html><body><nav><a href='/a'>Home</a> <a href='/b'>Login</a></nav></body></html>"),
    })
    return {"/gone": "HTTP 404", "/broken": "HTTP 503", "/slow": "read timeout (1 s)", "/loop1": "redirect loop",
            "/hop0": "more than 5 redirects", "/report.pdf": "unsupported content type application/pdf",
            "/huge": "larger than 10 MiB (Content-Length", "/endless": "larger than 10 MiB (stopped reading)",
            "/bad.rss": "malformed feed", "/menu": "no article text found"}


@pytest.mark.slow
def test_bad_sources_are_reported_and_the_rest_indexed(origin, tmp_path, fake_embedder):
    expected = bad_routes(origin)
    origin.routes["/good"] = Route(article_html("Bridge", "bridge repairs"))
    refused = f"http://127.0.0.1:{free_port()}/page"
    sources = [origin.url(p) for p in expected] + [refused, origin.url("/good")]
    index = str(tmp_path / "index")
    report = build_index(sources, index, embedder=fake_embedder, fetch=FAST)
    assert report.documents == 1 and list(docs(index)) == [doc_id_for_url(origin.url("/good"))]
    failures = {f.url: f for f in report.fetch.failures}
    assert set(failures) == set(sources[:-1]), report.fetch.to_dict()
    for path, reason in expected.items():
        assert reason in failures[origin.url(path)].line(), failures[origin.url(path)].line()
    assert failures[refused].line() == f"{refused}: connection refused"
    assert len(report.problems) == len(failures) and all("\n" not in p for p in report.problems)
    assert report.fetch.counts()["failed"] == len(failures) and report.fetch.counts()["new"] == 1


def test_a_failing_source_loses_nothing_already_indexed(origin, tmp_path, fake_embedder):
    origin.routes["/p"] = Route(article_html("Harbour", "harbour dredging"))
    origin.routes["/feed.rss"] = Route(rss("Port", [("Q", origin.url("/q"), "Tue, 07 May 2024 8:00 GMT")]),
                                       content_type=RSS_TYPE)
    origin.routes["/q"] = Route(article_html("Quay", "quay extension"))
    index = str(tmp_path / "index")
    sources = [origin.url("/p"), origin.url("/feed.rss")]
    build_index(sources, index, embedder=fake_embedder, fetch=FAST)
    before = docs(index)
    assert len(before) == 2
    origin.routes["/p"] = Route(b"gone", 404, "text/plain")
    origin.routes["/feed.rss"] = Route(b"down", 500, "text/plain")
    report = add_documents(sources, index, embedder=fake_embedder, fetch=FAST)
    assert report.fetch.counts()["failed"] == 2 and docs(index) == before
    # a full build keeps the failed sources' documents from the live index, and says so
    report = build_index(sources, index, embedder=fake_embedder, fetch=FAST)
    assert docs(index) == before and all(f.kept for f in report.fetch.failures)
    assert report.problems[0].endswith("HTTP 404 Not Found; the indexed copy is kept")


def test_strict_fails_on_a_bad_source_and_writes_nothing(origin, tmp_path, fake_embedder):
    origin.routes["/p"] = Route(article_html("Harbour", "harbour dredging"))
    origin.routes["/new"] = Route(article_html("Canal", "canal reopening"))
    index = str(tmp_path / "index")
    build_index([origin.url("/p")], index, embedder=fake_embedder, fetch=FAST)
    before = docs(index)
    cache = (tmp_path / "index" / CACHE_FILE).read_text()
    from qa.errors import IngestError

    with pytest.raises(IngestError, match="/missing: HTTP 404"):
        add_documents([origin.url("/new"), origin.url("/missing")], index, embedder=fake_embedder, strict=True,
                      fetch=FAST)
    assert docs(index) == before and (tmp_path / "index" / CACHE_FILE).read_text() == cache


# --- politeness --------------------------------------------------------------------------------------------------

def test_robots_txt_is_honoured_unless_ignored(origin, tmp_path, fake_embedder):
    origin.routes["/robots.txt"] = Route(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    origin.routes["/private/memo"] = Route(article_html("Memo", "internal memo"))
    origin.routes["/public"] = Route(article_html("Notice", "public notice"))
    index = str(tmp_path / "index")
    sources = [origin.url("/private/memo"), origin.url("/public")]
    report = build_index(sources, index, embedder=fake_embedder, fetch=FAST)
    assert report.documents == 1 and not origin.requests_to("/private/memo")
    assert "disallowed by robots.txt" in report.fetch.failures[0].line()
    assert len(origin.requests_to("/robots.txt")) == 1  # read once per site
    report = build_index(sources, index, embedder=fake_embedder,
                         fetch=dataclasses.replace(FAST, ignore_robots=True))
    assert report.documents == 2 and not report.fetch.failures


def test_robots_rules_for_this_agent_and_an_unavailable_robots_txt(origin, tmp_path, fake_embedder):
    origin.routes["/robots.txt"] = Route(b"User-agent: qa-news\nDisallow: /\n\nUser-agent: *\nAllow: /\n",
                                         content_type="text/plain")
    origin.routes["/public"] = Route(article_html("Notice", "public notice"))
    index = str(tmp_path / "index")
    from qa.errors import BadRequest
    from qa.fetch import WebFetch

    with pytest.raises(BadRequest, match="no articles found"):  # the rules for our agent refuse everything
        build_index([origin.url("/public")], index, embedder=fake_embedder, fetch=FAST)
    assert not origin.requests_to("/public")
    origin.routes["/robots.txt"] = Route(b"down", 503, "text/plain")

    run = WebFetch(index, FAST)
    assert run.run([origin.url("/public")]) == []
    assert "robots.txt unavailable (HTTP 503" in run.report.failures[0].line()
    assert not origin.requests_to("/public")


@pytest.mark.slow
def test_at_most_two_requests_per_host_at_once_and_a_delay(origin, tmp_path):
    from qa.fetch import WebFetch

    for i in range(6):
        origin.routes[f"/p{i}"] = Route(article_html(f"Story {i}", f"story number {i}"), sleep=0.3)
    run = WebFetch(str(tmp_path / "index"), dataclasses.replace(FAST, delay=0.1))
    assert len(run.run([origin.url(f"/p{i}") for i in range(6)])) == 6
    pages = sorted((r for r in origin.log if r["path"].startswith("/p")), key=lambda r: r["at"])
    # never more than two at once, and two at a time throughout: each page after the first arrives while the one
    # before it waits out its 0.3 s (counted on the server: the run's wall time also holds the pages' parsing,
    # which a busy machine stretches past the 1.8 s of six pages one after another)
    assert origin.peak == 2 and sum(r["in_flight"] == 2 for r in pages) >= 3, pages
    # the delay between two starts, as the server sees them (less up to 50 ms of scheduling on a busy machine)
    starts = [r["at"] for r in pages]
    assert all(b - a >= 0.05 for a, b in zip(starts, starts[1:])), starts


# --- the command line, the sources file, the cache ----------------------------------------------------------------

def test_sources_file_lists_urls_and_paths(tmp_path):
    (tmp_path / "lists").mkdir()
    path = tmp_path / "lists" / "feeds.txt"
    path.write_text("# outlets\n\nhttps://example.com/feed.xml\n  local.rss  \n# off: https://x.example/\n"
                    "/abs/articles/\n")
    assert read_sources_file(str(path)) == ["https://example.com/feed.xml", str(tmp_path / "lists" / "local.rss"),
                                            "/abs/articles/"]


def run_cli(*args: str):
    from click.testing import CliRunner

    from qa.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_sources_file_json_report_and_strict(origin, tmp_path):
    origin.routes["/feed.rss"] = Route(rss("Metro", [("A", origin.url("/a"), "Tue, 07 May 2024 8:00 GMT"),
                                                     ("Gone", origin.url("/gone"), "Tue, 07 May 2024 8:00 GMT")]),
                                       content_type=RSS_TYPE, etag='"f"')
    origin.routes["/a"] = Route(article_html("Tram line", "tram line"), etag='"a"')
    origin.routes["/b"] = Route(article_html("Bus lane", "bus lane"))
    sources = tmp_path / "feeds.txt"
    sources.write_text(f"# test feeds\n{origin.url('/feed.rss')}\n")
    index = str(tmp_path / "index")
    common = ["--index-dir", index, "--fetch-delay", "0", "--quiet"]
    result = run_cli("build", "--sources-file", str(sources), "--model", "hash", *common)
    assert result.exit_code == 0, result.output
    assert f"warning: {origin.url('/gone')}: HTTP 404 Not Found" in result.output
    assert "fetched 1, not modified 0, new 1, updated 0, failed 1" in result.output
    result = run_cli("add", origin.url("/b"), "--sources-file", str(sources), "--json", *common)
    body = json.loads(result.stdout)  # warnings go to stderr, which `output` interleaves
    assert result.exit_code == 0 and body["added"] == 1 and body["documents"] == 2
    assert body["fetch"]["counts"]["not_modified"] == 1 and body["fetch"]["counts"]["failed"] == 1
    assert {"url": origin.url("/gone"), "kind": "page", "status": "failed", "reason": "HTTP 404 Not Found",
            "feed": normalize_url(origin.url("/feed.rss"))} in body["fetch"]["sources"]
    result = run_cli("add", "--sources-file", str(sources), "--strict", *common)
    assert result.exit_code == 2 and "error: " + origin.url("/gone") + ": HTTP 404" in result.output
    result = run_cli("add", "--index-dir", index)
    assert result.exit_code == 2 and "--sources-file" in result.output


@pytest.mark.parametrize("command", ["build", "add"])
def test_help_names_the_fetch_options(command):
    out = run_cli(command, "--help").output
    for flag in ("--sources-file", "--ignore-robots", "--fetch-delay", "--json", "--strict", "URLs"):
        assert flag in out.replace("\n", " "), flag


def test_a_broken_cache_costs_a_full_fetch_only(origin, tmp_path, fake_embedder):
    origin.routes["/a"] = Route(article_html("Tram line", "tram line"), etag='"a"')
    index = str(tmp_path / "index")
    build_index([origin.url("/a")], index, embedder=fake_embedder, fetch=FAST)
    cache = json.loads((tmp_path / "index" / CACHE_FILE).read_text())
    entry = cache["pages"][normalize_url(origin.url("/a"))]
    assert entry["etag"] == '"a"' and entry["doc_id"] == doc_id_for_url(origin.url("/a"))
    (tmp_path / "index" / CACHE_FILE).write_text("{not json")
    report = add_documents([origin.url("/a")], index, embedder=fake_embedder, fetch=FAST)
    assert report.fetch.counts()["unchanged"] == 1 and "If-None-Match" not in origin.log[-1]["headers"]
    assert json.loads((tmp_path / "index" / CACHE_FILE).read_text())["pages"]  # written anew


def test_a_removed_document_is_fetched_in_full_again(origin, tmp_path, fake_embedder):
    from qa.index import remove_documents

    origin.routes["/a"] = Route(article_html("Tram line", "tram line"), etag='"a"')
    index = str(tmp_path / "index")
    build_index([origin.url("/a"), str(_seed_file(tmp_path))], index, embedder=fake_embedder, fetch=FAST)
    remove_documents([doc_id_for_url(origin.url("/a"))], index)
    report = add_documents([origin.url("/a")], index, embedder=fake_embedder, fetch=FAST)
    assert report.fetch.counts()["new"] == 1 and "If-None-Match" not in origin.log[-1]["headers"]
    assert doc_id_for_url(origin.url("/a")) in docs(index)


def _seed_file(tmp_path):
    path = tmp_path / "local.txt"
    path.write_text("Local notes\n\nThe council approved the new library budget after a long debate on Tuesday.\n")
    return path


# --- the admin API -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_admin_api_fetches_one_url(origin, tmp_path, fake_embedder, monkeypatch):
    import functools

    import qa.fetch.run
    from qa.config import Config
    from qa.service import Engine
    from qa.web import create_app

    origin.routes["/a"] = Route(article_html("Tram line", "tram line"))
    origin.routes["/feed.rss"] = Route(rss("Metro", [("A", origin.url("/a"), "Tue, 07 May 2024 8:00 GMT")]),
                                       content_type=RSS_TYPE)
    origin.routes["/robots.txt"] = Route(b"User-agent: *\nDisallow: /private\n", content_type="text/plain")
    # the API's fetches keep their limits but not the 1 s politeness delay, which is not the subject here (and is
    # checked in test_at_most_two_requests_per_host_at_once_and_a_delay): 4 fetches, 4 s less
    monkeypatch.setattr(qa.fetch.run, "FetchOptions", functools.partial(FetchOptions, delay=0.0))
    index = str(tmp_path / "index")
    build_index([str(_seed_file(tmp_path))], index, embedder=fake_embedder)
    config = Config(index_dir=index, admin_token="s3cret")
    client = create_app(config, engine=Engine(config, embedder=fake_embedder)).test_client()
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/api/documents", json={"url": origin.url("/a")}).status_code == 401
    resp = client.post("/api/documents", json={"url": origin.url("/a")}, headers=auth)
    assert resp.status_code == 201 and resp.json["id"] == doc_id_for_url(origin.url("/a")), resp.json
    resp = client.post("/api/documents", json={"url": origin.url("/a")}, headers=auth)
    assert resp.status_code == 200 and resp.json["status"] == "unchanged"
    assert client.get("/api/documents/" + doc_id_for_url(origin.url("/a"))).json["title"] == "Tram line"
    for body, message in [({"url": origin.url("/missing")}, "HTTP 404"), ({"url": "ftp://x/y"}, "http"),
                          ({"url": 7}, "http"), ({"url": origin.url("/a"), "title": "x"}, "alone"),
                          ({"url": origin.url("/feed.rss")}, "a feed, not a page"),
                          ({"url": origin.url("/private/x")}, "robots.txt")]:
        resp = client.post("/api/documents", json=body, headers=auth)
        assert resp.status_code == 400 and message in resp.json["error"], (body, resp.json)


@pytest.mark.slow
def test_update_script_adds_what_is_new(origin, tmp_path, fake_embedder):
    import os
    import subprocess
    import sys

    origin.routes["/feed.rss"] = Route(rss("Metro", [("A", origin.url("/a"), "Tue, 07 May 2024 8:00 GMT")]),
                                       content_type=RSS_TYPE)
    origin.routes["/a"] = Route(article_html("Tram line", "tram line"))
    index = str(tmp_path / "index")
    build_index([str(_seed_file(tmp_path))], index, embedder=fake_embedder)
    (tmp_path / "feeds.txt").write_text(origin.url("/feed.rss") + "\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "QA": os.path.join(os.path.dirname(sys.executable), "qa"), "QA_INDEX_DIR": index,
           "QA_SOURCES_FILE": str(tmp_path / "feeds.txt")}
    out = subprocess.run([os.path.join(root, "scripts", "update_from_feeds.sh"), "--fetch-delay", "0"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "new 1" in out.stdout and doc_id_for_url(origin.url("/a")) in docs(index)
