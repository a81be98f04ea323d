"""The Flask app: `create_app(config=None)` with the JSON API and the web search box."""
from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from ..config import Config
from ..errors import QAError
from ..service import Engine

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# scripts and styles from the app's own static files only: no inline script, no eval
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; " \
      "base-uri 'none'; frame-ancestors 'none'"


class DocIdConverter(PathConverter):
    """A document id in a URL: any characters, slashes and line breaks included (werkzeug's `path` stops at a line
    break, so such an id would not reach the API's own answers). Routing only: the engine checks the id with the one
    rule, `ingest.validate_doc_id`, so a bad id gets the API's JSON 400 rather than a routing 404."""

    regex = "(?s:[^/].*?)"


def create_app(config: Config | dict | None = None, engine: Engine | None = None) -> Flask:
    """The app; works with no index at all (the index loads on first use and its absence is a JSON 503)."""
    if isinstance(config, dict):
        config = Config.from_env(**{k.lower(): v for k, v in config.items()})
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.extensions["qa_engine"] = engine or Engine(config)
    app.extensions["qa_config"] = config

    from . import api, ui

    app.url_map.converters["doc_id"] = DocIdConverter
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)

    @app.errorhandler(QAError)
    def qa_error(e: QAError):
        return _error_response(str(e), e.status)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if request.path.startswith("/api/") or request.path in ("/healthz", "/openapi.json") \
                or request.accept_mimetypes.best == "application/json" or e.code == 413:
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

    return app


def _error_response(message: str, status: int) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response
