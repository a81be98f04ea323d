"""The OpenAPI 3 document of the API; schemathesis fuzzes the API against it, so it must stay true."""
from __future__ import annotations

from .. import __version__
from ..ingest import MAX_DOC_ID_CHARS

_NULLABLE_STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _object(required: list[str], properties: dict) -> dict:
    return {"type": "object", "required": required, "properties": properties}


def _array(items: dict) -> dict:
    return {"type": "array", "items": items}


def _json(ref: str, description: str) -> dict:
    return {"description": description, "content": _content(_ref(ref))}


def _any_object(description: str) -> dict:
    return {"description": description, "content": _content({"type": "object"})}


_ERROR = _json("Error", "Invalid request")


def _errors(*codes: int) -> dict:
    return {str(c): _ERROR for c in codes}


def _query_params(default_k: int) -> list[dict]:
    date = {"type": "string", "format": "date"}
    return [
        {"name": "q", "in": "query", "required": True, "description": "The question (1-1000 characters).",
         "schema": {"type": "string", "minLength": 1, "maxLength": 1000}},
        {"name": "k", "in": "query", "required": False, "description": "Number of results.",
         "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": default_k}},
        {"name": "mode", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["hybrid", "dense", "lexical"], "default": "hybrid"}},
        {"name": "source", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 512}},
        {"name": "doc_id", "in": "query", "required": False,
         "schema": {"type": "string", "maxLength": MAX_DOC_ID_CHARS}},
        {"name": "published_after", "in": "query", "required": False, "schema": dict(date)},
        {"name": "published_before", "in": "query", "required": False, "schema": dict(date)},
    ]


def _query_body(default_k: int) -> dict:
    props = {p["name"]: p["schema"] for p in _query_params(default_k)}
    return {"required": True, "content": _content({
        "type": "object", "required": ["q"], "properties": props, "additionalProperties": False})}


def _result_schemas() -> dict:
    """The schemas of a ranked passage and its citation."""
    citation = _object(["title", "source", "author", "url", "published", "paragraph_index", "char_start", "char_end"],
                       {"title": {"type": "string"}, "source": _NULLABLE_STR, "author": _NULLABLE_STR,
                        "url": _NULLABLE_STR, "published": _NULLABLE_STR, "paragraph_index": {"type": "integer"},
                        "char_start": {"type": "integer"}, "char_end": {"type": "integer"}})
    score = {"type": ["number", "null"]}
    scores = _object(["dense", "lexical", "fused"],
                     {"dense": score, "sentence": score, "lexical": score, "fused": score})
    result = _object(["rank", "score", "passage_id", "doc_id", "paragraph_index", "text", "title", "citation",
                      "scores"],
                     {"rank": {"type": "integer", "minimum": 1}, "score": {"type": "number"},
                      "passage_id": {"type": "string"}, "doc_id": {"type": "string"},
                      "paragraph_index": {"type": "integer"}, "text": {"type": "string"},
                      "title": {"type": "string"}, "citation": _ref("Citation"), "scores": scores,
                      "duplicates": _array({"type": "object"})})
    return {"Citation": citation, "Result": result}


def _ask_schema(timings: dict) -> dict:
    """The schema of the /api/ask object."""
    sentence = _object(["text", "citation", "passage_id", "start", "end"],
                       {"text": {"type": "string"}, "citation": {"type": "integer"},
                        "passage_id": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}})
    answer = _object(["text", "sentences"], {"text": {"type": "string"}, "sentences": _array(sentence)})
    citation = _object(["n", "passage_id", "doc_id", "paragraph_index", "title"],
                       {"n": {"type": "integer"}, "passage_id": {"type": "string"}, "doc_id": {"type": "string"},
                        "paragraph_index": {"type": "integer"}, "title": {"type": "string"},
                        "source": _NULLABLE_STR, "author": _NULLABLE_STR, "url": _NULLABLE_STR,
                        "published": _NULLABLE_STR})
    return _object(["question", "answer", "no_answer", "citations", "passages"],
                   {"question": {"type": "string"}, "answer": {"oneOf": [{"type": "null"}, answer]},
                    "no_answer": {"type": "boolean"}, "citations": _array(citation),
                    "passages": _array(_ref("Result")), "timings": timings, "took_ms": {"type": "number"}})


def _document_schemas() -> dict:
    """The schemas of a document, a page of documents, and an article to add."""
    summary = _object(["id", "title", "passages"],
                      {"id": {"type": "string"}, "title": {"type": "string"}, "source": _NULLABLE_STR,
                       "author": _NULLABLE_STR, "url": _NULLABLE_STR, "published": _NULLABLE_STR,
                       "passages": {"type": "integer"}})
    listing = _object(["total", "offset", "limit", "documents"],
                      {"total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                       "documents": _array(_ref("DocumentSummary"))})
    paragraph = _object(["passage_id", "paragraph_index", "text", "char_start", "char_end"],
                        {"passage_id": {"type": "string"}, "paragraph_index": {"type": "integer"},
                         "text": {"type": "string"}, "char_start": {"type": "integer"},
                         "char_end": {"type": "integer"}})
    document = _object(["id", "title", "paragraphs"],
                       {"id": {"type": "string"}, "title": {"type": "string"}, "source": _NULLABLE_STR,
                        "author": _NULLABLE_STR, "url": _NULLABLE_STR, "published": _NULLABLE_STR,
                        "tags": _array({"type": "string"}), "passages": {"type": "integer"},
                        "paragraphs": _array(paragraph)})
    article = _object(["id", "title"],
                      {"id": {"type": "string", "minLength": 1, "maxLength": MAX_DOC_ID_CHARS},
                       "title": {"type": "string", "minLength": 1}, "paragraphs": _array({"type": "string"}),
                       "text": {"type": "string"}, "url": {"type": "string"}, "source": {"type": "string"},
                       "author": {"type": "string"}, "published": {"type": "string", "format": "date"},
                       "tags": _array({"type": "string"})})
    fetch = {**_object(["url"], {"url": {"type": "string", "pattern": "^https?://"}}), "additionalProperties": False,
             "description": "An http(s) URL: the page is fetched (robots.txt and the fetch limits apply) and added"}
    return {"DocumentSummary": summary, "DocumentList": listing, "Document": document, "Article": article,
            "FetchRequest": fetch}


def _schemas() -> dict:
    """Every schema the paths refer to."""
    timings = {"type": "object", "properties": {k: {"type": "number"} for k in
                                                ("embed_ms", "dense_ms", "lexical_ms", "fuse_ms")}}
    search = _object(["query", "results", "took_ms"],
                     {"query": {"type": "string"}, "mode": {"type": "string"}, "results": _array(_ref("Result")),
                      "timings": timings, "took_ms": {"type": "number"}})
    return {"Error": _object(["error"], {"error": {"type": "string"}}), **_result_schemas(),
            "SearchResponse": search, "AskResponse": _ask_schema(timings), **_document_schemas(),
            "Health": _object(["status", "passages"], {"status": {"type": "string", "enum": ["ok", "degraded"]},
                                                       "passages": {"type": "integer"},
                                                       "reasons": {"type": "array", "items": {"type": "string"}}})}


def _search_op(summary: str, ref: str, k: int) -> dict:
    return {"summary": summary, "parameters": _query_params(k),
            "responses": {"200": _json(ref, "Ranked passages"), **_errors(400, 503)}}


def _post_op(summary: str, ref: str, k: int) -> dict:
    return {"summary": summary, "requestBody": _query_body(k),
            "responses": {"200": _json(ref, "Ranked passages"), **_errors(400, 413, 503)}}


def _document_paths() -> dict:
    """The documents' paths: list, read, and the admin writes."""
    doc_id_param = {"name": "doc_id", "in": "path", "required": True, "schema": {"type": "string"}}
    admin = {"security": [{"bearer": []}]}
    page = [{"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}]
    return {
        "/api/documents": {
            "get": {"summary": "List documents", "parameters": page,
                    "responses": {"200": _json("DocumentList", "A page of documents"), **_errors(400, 503)}},
            "post": {"summary": "Add or replace one article, or fetch one page by URL (admin)", **admin,
                     "requestBody": {"required": True,
                                     "content": _content({"oneOf": [_ref("Article"), _ref("FetchRequest")]})},
                     "responses": {"201": _any_object("Created"), "200": _any_object("Updated or unchanged"),
                                   **_errors(400, 401, 403, 413, 503, 507)}}},
        "/api/documents/{doc_id}": {
            "get": {"summary": "One document with its paragraphs", "parameters": [doc_id_param],
                    "responses": {"200": _json("Document", "The document"), **_errors(400, 404, 503)}},
            "delete": {"summary": "Delete a document (admin)", **admin, "parameters": [doc_id_param],
                       "responses": {"200": _any_object("Deleted"), **_errors(400, 401, 403, 404, 503, 507)}}},
    }


def _html(description: str) -> dict:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _page_paths() -> dict:
    """The reader's pages: server-rendered HTML, their errors as HTML pages too."""
    errors = {"400": _html("Invalid parameters: the page with the message"), "503": _html("No usable index")}
    page_params = [dict(p, required=False) if p["name"] == "q" else p
                   for p in _query_params(5) if p["name"] != "doc_id"]
    span = [{"name": "doc_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "p", "in": "query", "required": False, "description": "The cited paragraph's index; "
             "anchored #p<index>.", "schema": {"type": "integer", "minimum": 0}},
            {"name": "hl", "in": "query", "required": False, "description": "The cited span in that paragraph's "
             "text, start-end (needs p); marked and anchored #hl.",
             "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"}}]
    listing = [{"name": "page", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
               {"name": "source", "in": "query", "required": False, "description": "Only this outlet's articles.",
                "schema": {"type": "string", "maxLength": 512}}]
    return {
        "/": {"get": {"summary": "The search page: answer and ranked passages, with the filters (HTML)",
                      "parameters": page_params, "responses": {"200": _html("The search page"), **errors}}},
        "/documents": {"get": {"summary": "The collection, newest first, 50 a page, counts by outlet (HTML)",
                               "parameters": listing, "responses": {
                                   "200": _html("A page of the collection"),
                                   "404": _html("No such page"), **errors}}},
        "/documents/{doc_id}": {"get": {"summary": "One article, its cited span marked (HTML)", "parameters": span,
                                        "responses": {"200": _html("The article view"),
                                                      "404": _html("Unknown document"), **errors}}},
    }


def openapi_spec() -> dict:
    """The OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "qa: news search and question answering", "version": __version__},
        "paths": {
            "/api/search": {"get": _search_op("Search passages", "SearchResponse", 10),
                            "post": _post_op("Search passages (JSON body)", "SearchResponse", 10)},
            "/api/ask": {"get": _search_op("Answer a question with citations", "AskResponse", 5),
                         "post": _post_op("Answer a question (JSON body)", "AskResponse", 5)},
            **_document_paths(),
            "/healthz": {"get": {"summary": "Liveness and passage count",
                                 "responses": {"200": _json("Health", "Serving"), **_errors(400, 503)}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": _any_object("OpenAPI document"), **_errors(400)}}},
            **_page_paths(),
        },
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
