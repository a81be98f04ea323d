"""The JSON API: search, ask, documents, health, OpenAPI, and the admin writes behind a bearer token."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import BadRequest, Forbidden, Unauthorized
from ..ingest import check_text
from ..params import SEARCH_KEYS, query_string_params
from ..service import Engine
from .openapi import openapi_spec

bp = Blueprint("api", __name__)

def engine() -> Engine:
    """The app's engine."""
    return current_app.extensions["qa_engine"]


def _json_body() -> dict:
    """The request's JSON object, its text checked (`check_text`) once for every endpoint; a clear 400 otherwise."""
    try:
        data = request.get_data(cache=True)
    except HTTPException:  # 413 and a client gone away: werkzeug's own answers
        raise
    except Exception:  # the server's error reading a malformed chunked body
        raise BadRequest("the request body could not be read (malformed chunked encoding?)") from None
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if limit is not None and request.content_length is None and len(data) >= limit:
        raise RequestEntityTooLarge()  # a chunked body: werkzeug stops reading at the limit and keeps the head
    if not data:
        raise BadRequest("the request body must be a JSON object")
    try:
        body = request.get_json(force=True, silent=False)
    except Exception:  # werkzeug raises its own BadRequest with an HTML body
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_text(body)
    return body


def _query_params() -> dict:
    """The search parameters of a GET's query string or a POST's JSON body; a 400 for unknown or repeated ones."""
    if request.method == "POST":
        body = _json_body()
        unknown = set(body) - set(SEARCH_KEYS)
        if unknown:
            raise BadRequest("unknown fields: " + ", ".join(sorted(unknown)[:5]))
        return body
    return query_string_params(request.args.items(multi=True))


@bp.route("/api/search", methods=["GET", "POST"])
def search() -> Response:
    """Ranked passages for a question."""
    return jsonify(engine().search(_query_params()))


@bp.route("/api/ask", methods=["GET", "POST"])
def ask() -> Response:
    """An extractive answer with its citations and the passages behind it."""
    return jsonify(engine().ask(_query_params()))


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness, and what the live index holds."""
    return jsonify(engine().health())


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document of this API."""
    return jsonify(openapi_spec())


@bp.get("/api/documents")
def documents() -> Response:
    """One page of the documents."""
    return jsonify(engine().documents({"offset": request.args.get("offset"), "limit": request.args.get("limit")}))


@bp.get("/api/documents/<doc_id:doc_id>")
def document(doc_id: str) -> Response:
    """One document with its paragraphs."""
    return jsonify(engine().document(doc_id))


def _require_admin() -> None:
    """401 for a wrong or missing bearer token, 403 while QA_ADMIN_TOKEN is unset; compared in constant time."""
    token = (current_app.extensions["qa_config"].admin_token or "").strip()
    if not token:
        raise Forbidden("the admin API is off: set QA_ADMIN_TOKEN to enable it")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token")


@bp.post("/api/documents")
def add_document() -> tuple[Response, int]:
    """Add or replace one article (admin): 201 when created, 200 when updated or unchanged."""
    _require_admin()
    result = engine().add_article(_json_body())
    return jsonify(result), 201 if result["status"] == "created" else 200


@bp.delete("/api/documents/<doc_id:doc_id>")
def delete_document(doc_id: str) -> Response:
    """Delete one document (admin)."""
    _require_admin()
    return jsonify(engine().delete_document(doc_id))
