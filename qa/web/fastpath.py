"""The API's plain GETs of /api/search and /api/ask, answered without Flask's request machinery.

Those GETs are most of a server's traffic, and Flask's request context, routing, hooks and response object cost a
served search more than any stage of the search but the embedding (docs/performance.md#the-fast-path). `FastPath`
answers them with the engine's own methods, the app's JSON provider and the app's headers. Everything else, and
every request that fails, goes to the app itself, so errors keep their one path (tests/web/test_fastpath.py holds
the two paths to the same answers).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qsl

from flask import Flask

from ..errors import BadRequest
from ..params import query_string_params

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
ROUTES = {"/api/search": "search", "/api/ask": "ask"}  # path -> the `Engine` method that answers it


class FastPath:
    """WSGI middleware in front of `inner`, the WSGI callable of `app`; `headers` are those the app adds to every
    JSON response."""

    def __init__(self, app: Flask, inner: WSGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.inner = inner
        self.headers = [("Content-Type", app.json.mimetype), *headers.items()]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = ROUTES.get(environ.get("PATH_INFO", "")) if environ.get("REQUEST_METHOD") == "GET" else None
        params = query_params(environ.get("QUERY_STRING", "")) if method else None
        # the app's provider writes indented JSON in debug mode or when told to: its own path then
        if params is None or self.app.debug or getattr(self.app.json, "compact", None) is False:
            return self.inner(environ, start_response)
        try:
            body = getattr(self.app.extensions["qa_engine"], method)(params)
        except Exception:  # the app runs it again and answers through its error handlers
            return self.inner(environ, start_response)
        data = (self.app.json.dumps(body, separators=(",", ":")) + "\n").encode()  # the provider's compact form
        start_response("200 OK", [*self.headers, ("Content-Length", str(len(data)))])
        return [data]


def query_params(query: str) -> dict | None:
    """The search parameters of a query string, read as the app reads them (`query_string_params`); None where the
    app must answer: a parameter given twice, or a query string that is not UTF-8."""
    if not query.isascii():  # raw bytes beyond ASCII: the app's own decoding rules
        return None
    try:
        return query_string_params(parse_qsl(query, keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, BadRequest):
        return None
