"""The fast path (`qa.web.fastpath`) answers plain GETs of /api/search and /api/ask as the app itself would, and
leaves everything else to the app."""
import contextlib
import re

import pytest
from flask import request_started
from werkzeug.test import Client

from qa.web.fastpath import query_params

# the only fields two runs of one request may differ in
TIMES = re.compile(rb'"([a-z]+_ms)":[-+.e0-9]+')


@contextlib.contextmanager
def flask_requests(app):
    """The list of requests the app's own machinery (`request_started`) saw while the block ran."""
    seen = []

    def started(sender, **extra):
        seen.append(sender)

    with request_started.connected_to(started, app):
        yield seen


def answer(response) -> tuple:
    """What a client can tell of a response: status, headers but the length, the body's bytes but its timings."""
    body = TIMES.sub(rb'"\1":0', response.data)
    headers = sorted((k, v) for k, v in response.headers.items() if k != "Content-Length")
    assert response.headers["Content-Length"] == str(len(response.data))
    return response.status_code, headers, body


@pytest.mark.parametrize("url", [
    "/api/search?q=China+fentanyl+actions",
    "/api/search?q=China+fentanyl&k=3&mode=dense",
    "/api/search?k=2&mode=lexical&q=International%20Narcotics%20Control%20Board",
    "/api/search?q=Daskal&source=Reuters",
    "/api/search?q=Daskal&source=Nobody&published_after=2020-01-01",  # nothing passes the filters
    "/api/search?q=China&doc_id=000_17ba8289838f2219",
    "/api/search?q=China&k=&mode=",  # blank values: the defaults
    "/api/search?q=China&_=1733500000&_=2",  # other parameters, even repeated, are ignored
    "/api/search?q=%E2%80%9Cfentanyl%E2%80%9D+%C3%A9t%C3%A9",
    "/api/ask?q=what+actions+has+China+taken%3F",
    "/api/ask?q=who+led+the+delegation&k=2",
])
def test_fast_answers_equal_the_apps(fake_app, fake_client, url):
    with flask_requests(fake_app) as seen:
        fast = fake_client.get(url)
    assert fast.status_code == 200 and not seen  # answered without Flask's request machinery
    body = fast.get_json()
    assert body.get("results", body.get("passages")) or "Nobody" in url
    assert answer(fast) == answer(Client(fake_app.wsgi_app.inner).get(url))


@pytest.mark.parametrize("method, url, status", [
    ("GET", "/api/search", 400),
    ("GET", "/api/search?q=", 400),
    ("GET", "/api/search?q=China&k=abc", 400),
    ("GET", "/api/search?q=China&q=Beijing", 400),
    ("GET", "/api/ask?q=China&mode=fuzzy", 400),
    ("GET", "/api/search?q=%ff", 400),
    ("GET", "/api/search?q=a%00b", 400),
    ("GET", "/api/search/?q=China", 404),
    ("HEAD", "/api/search?q=China", 200),
    ("POST", "/api/search?q=China", 400),  # a POST reads its JSON body, not the query string
])
def test_the_app_answers_everything_else(fake_app, fake_client, method, url, status):
    with flask_requests(fake_app) as seen:
        r = fake_client.open(url, method=method)
    assert r.status_code == status and len(seen) == 1
    if status >= 400:
        assert r.get_json()["error"]


def test_a_failing_search_gets_the_apps_error(tmp_path):
    from qa.config import Config
    from qa.web import create_app

    app = create_app(Config(index_dir=str(tmp_path / "none")))
    with flask_requests(app) as seen:
        r = app.test_client().get("/api/search?q=China")
    assert r.status_code == 503 and "error" in r.get_json() and len(seen) == 1


def test_debug_mode_keeps_the_apps_indented_json(fake_app, fake_client):
    fake_app.debug = True
    try:
        with flask_requests(fake_app) as seen:
            r = fake_client.get("/api/search?q=China")
    finally:
        fake_app.debug = False
    assert len(seen) == 1 and b'\n  "query"' in r.data


@pytest.mark.parametrize("query, params", [
    ("q=a+b&k=3", {"q": "a b", "k": "3"}),
    ("k=3&q=%C3%A9&x=1&x=2", {"q": "é", "k": "3"}),
    ("q=&mode", {"q": "", "mode": ""}),
    ("q=a&q=b", None),
    ("q=%ff", None),
    ("q=\u00e9", None),  # a raw byte beyond ASCII in the WSGI string
])
def test_query_params(query, params):
    expected = None if params is None else {key: params.get(key) for key in
                                            ("q", "k", "mode", "source", "doc_id", "published_after",
                                             "published_before")}
    assert query_params(query) == expected
