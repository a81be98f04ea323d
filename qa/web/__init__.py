"""The Flask app: `create_app(config=None)` with the JSON API and the web search box."""
from __future__ import annotations

from urllib.parse import unquote_to_bytes

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from ..config import Config
from ..errors import BadRequest, QAError
from ..service import Engine
from .fastpath import FastPath
from .provider import JSONProvider

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Server": "qa",  # not the HTTP server's name and version
}
# scripts and styles from the app's own static files only: no inline script, no eval
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; " \
      "base-uri 'none'; frame-ancestors 'none'"


class DocIdConverter(PathConverter):
    """A document id in a URL: any characters, slashes and line breaks included (werkzeug's `path` stops at a line
    break, so such an id would not reach the API's own answers). Routing only: the engine checks the id with the one
    rule, `ingest.validate_doc_id`, so a bad id (one starting with "/", say) gets the API's JSON 400 rather than a
    routing 404 or a redirect."""

    # any first character, "/" included (werkzeug's matcher does not match a plain `.+?` across path parts)
    regex = "(?s:(?:/|[^/]).*?)"


def create_app(config: Config | dict | None = None, engine: Engine | None = None) -> Flask:
    """The app; works with no index at all (the index loads on first use and its absence is a JSON 503)."""
    if isinstance(config, dict):
        config = Config.from_env(**{k.lower(): v for k, v in config.items()})
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json = JSONProvider(app)  # compact, unsorted UTF-8, written by orjson
    app.extensions["qa_engine"] = engine or Engine(config)
    app.extensions["qa_config"] = config

    from . import api, ui

    app.url_map.converters["doc_id"] = DocIdConverter
    # werkzeug's default answers "//" in a path with a 308 to the merged path: a client following it would DELETE
    # /api/documents/victim when it asked for /api/documents//victim
    app.url_map.merge_slashes = False
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)

    @app.before_request
    def reject_invalid_utf8() -> None:
        """A 400 for a URL that is not UTF-8, on the API and the page alike (werkzeug would pass "%ff" on as the
        text "%FF", or as U+FFFD)."""
        try:
            request.environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
            unquote_to_bytes(request.query_string).decode("utf-8")
        except UnicodeError:
            raise BadRequest("the URL is not valid UTF-8") from None

    @app.errorhandler(QAError)
    def qa_error(e: QAError):
        if _wants_json():
            return _error_response(str(e), e.status)
        return ui.error_page(str(e), e.status)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if _wants_json() or e.code == 413:
            return _error_response(e.description or e.name, e.code or 500)
        return ui.error_page(e.description or e.name, e.code or 500)

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        app.logger.exception("unexpected error")
        return _error_response("internal error", 500)

    @app.after_request
    def headers(response):
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    # plain searches and questions skip Flask's request machinery; anything else reaches the handlers above
    app.wsgi_app = FastPath(app, app.wsgi_app, SECURITY_HEADERS)
    return app


def _wants_json() -> bool:
    """Whether an error answers in JSON: the API's paths (also written with extra leading slashes), or a client
    that asks for JSON."""
    path = "/" + request.path.lstrip("/")
    return path.startswith("/api/") or path in ("/api", "/healthz", "/openapi.json") \
        or request.accept_mimetypes.best == "application/json"


def _error_response(message: str, status: int) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response
