"""The OpenAPI 3 document of the API; schemathesis fuzzes the API against it, so it must stay true."""
from __future__ import annotations

from .. import __version__

_NULLABLE_STR = {"type": ["string", "null"]}
_ERROR = {"description": "Invalid request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(ref: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _query_params(default_k: int) -> list[dict]:
    return [
        {"name": "q", "in": "query", "required": True, "description": "The question (1-1000 characters).",
         "schema": {"type": "string", "minLength": 1, "maxLength": 1000}},
        {"name": "k", "in": "query", "required": False, "description": "Number of results.",
         "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": default_k}},
        {"name": "mode", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["hybrid", "dense", "lexical"], "default": "hybrid"}},
        {"name": "source", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 512}},
        {"name": "doc_id", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 512}},
        {"name": "published_after", "in": "query", "required": False, "schema": {"type": "string", "format": "date"}},
        {"name": "published_before", "in": "query", "required": False, "schema": {"type": "string", "format": "date"}},
    ]


def _query_body(default_k: int) -> dict:
    props = {p["name"]: p["schema"] for p in _query_params(default_k)}
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["q"], "properties": props, "additionalProperties": False}}}}


def _errors(*codes: int) -> dict:
    return {str(c): _ERROR for c in codes}


def openapi_spec() -> dict:
    """The OpenAPI 3.1 document."""
    citation = {"type": "object", "required": ["title", "source", "author", "url", "published", "paragraph_index",
                                               "char_start", "char_end"],
                "properties": {"title": {"type": "string"}, "source": _NULLABLE_STR, "author": _NULLABLE_STR,
                               "url": _NULLABLE_STR, "published": _NULLABLE_STR,
                               "paragraph_index": {"type": "integer"}, "char_start": {"type": "integer"},
                               "char_end": {"type": "integer"}}}
    score = {"type": ["number", "null"]}
    result = {"type": "object",
              "required": ["rank", "score", "passage_id", "doc_id", "paragraph_index", "text", "title", "citation",
                           "scores"],
              "properties": {"rank": {"type": "integer", "minimum": 1}, "score": {"type": "number"},
                             "passage_id": {"type": "string"}, "doc_id": {"type": "string"},
                             "paragraph_index": {"type": "integer"}, "text": {"type": "string"},
                             "title": {"type": "string"}, "citation": {"$ref": "#/components/schemas/Citation"},
                             "scores": {"type": "object", "required": ["dense", "lexical", "fused"],
                                        "properties": {"dense": score, "sentence": score, "lexical": score,
                                                       "fused": score}},
                             "duplicates": {"type": "array", "items": {"type": "object"}}}}
    timings = {"type": "object", "properties": {k: {"type": "number"} for k in
                                                ("embed_ms", "dense_ms", "lexical_ms", "fuse_ms")}}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Citation": citation,
        "Result": result,
        "SearchResponse": {"type": "object", "required": ["query", "results", "took_ms"],
                           "properties": {"query": {"type": "string"}, "mode": {"type": "string"},
                                          "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
                                          "timings": timings, "took_ms": {"type": "number"}}},
        "AskResponse": {"type": "object", "required": ["question", "answer", "no_answer", "citations", "passages"],
                        "properties": {
                            "question": {"type": "string"},
                            "answer": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["text", "sentences"],
                                       "properties": {"text": {"type": "string"}, "sentences": {"type": "array", "items": {
                                           "type": "object", "required": ["text", "citation", "passage_id", "start", "end"],
                                           "properties": {"text": {"type": "string"}, "citation": {"type": "integer"},
                                                          "passage_id": {"type": "string"}, "start": {"type": "integer"},
                                                          "end": {"type": "integer"}}}}}}]},
                            "no_answer": {"type": "boolean"},
                            "citations": {"type": "array", "items": {"type": "object", "required": ["n", "passage_id", "doc_id", "paragraph_index", "title"],
                                                                     "properties": {"n": {"type": "integer"}, "passage_id": {"type": "string"},
                                                                                    "doc_id": {"type": "string"}, "paragraph_index": {"type": "integer"},
                                                                                    "title": {"type": "string"}, "source": _NULLABLE_STR,
                                                                                    "author": _NULLABLE_STR, "url": _NULLABLE_STR,
                                                                                    "published": _NULLABLE_STR}}},
                            "passages": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
                            "timings": timings, "took_ms": {"type": "number"}}},
        "DocumentSummary": {"type": "object", "required": ["id", "title", "passages"],
                            "properties": {"id": {"type": "string"}, "title": {"type": "string"},
                                           "source": _NULLABLE_STR, "author": _NULLABLE_STR, "url": _NULLABLE_STR,
                                           "published": _NULLABLE_STR, "passages": {"type": "integer"}}},
        "DocumentList": {"type": "object", "required": ["total", "offset", "limit", "documents"],
                         "properties": {"total": {"type": "integer"}, "offset": {"type": "integer"},
                                        "limit": {"type": "integer"},
                                        "documents": {"type": "array", "items": {"$ref": "#/components/schemas/DocumentSummary"}}}},
        "Document": {"type": "object", "required": ["id", "title", "paragraphs"],
                     "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "source": _NULLABLE_STR,
                                    "author": _NULLABLE_STR, "url": _NULLABLE_STR, "published": _NULLABLE_STR,
                                    "tags": {"type": "array", "items": {"type": "string"}},
                                    "passages": {"type": "integer"},
                                    "paragraphs": {"type": "array", "items": {"type": "object", "required": ["passage_id", "paragraph_index", "text", "char_start", "char_end"],
                                                                              "properties": {"passage_id": {"type": "string"}, "paragraph_index": {"type": "integer"},
                                                                                             "text": {"type": "string"}, "char_start": {"type": "integer"},
                                                                                             "char_end": {"type": "integer"}}}}}},
        "Article": {"type": "object", "required": ["id", "title"],
                    "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 512},
                                   "title": {"type": "string", "minLength": 1},
                                   "paragraphs": {"type": "array", "items": {"type": "string"}},
                                   "text": {"type": "string"}, "url": {"type": "string"}, "source": {"type": "string"},
                                   "author": {"type": "string"}, "published": {"type": "string", "format": "date"},
                                   "tags": {"type": "array", "items": {"type": "string"}}}},
        "Health": {"type": "object", "required": ["status", "passages"],
                   "properties": {"status": {"type": "string"}, "passages": {"type": "integer"}}},
    }
    search_op = lambda summary, ref, k: {  # noqa: E731
        "summary": summary, "parameters": _query_params(k),
        "responses": {"200": _json(ref, "Ranked passages"), **_errors(400, 503)}}
    post_op = lambda summary, ref, k: {  # noqa: E731
        "summary": summary, "requestBody": _query_body(k),
        "responses": {"200": _json(ref, "Ranked passages"), **_errors(400, 413, 503)}}
    doc_id_param = {"name": "doc_id", "in": "path", "required": True, "schema": {"type": "string"}}
    admin = {"security": [{"bearer": []}]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "qa: news search and question answering", "version": __version__},
        "paths": {
            "/api/search": {"get": search_op("Search passages", "SearchResponse", 10),
                            "post": post_op("Search passages (JSON body)", "SearchResponse", 10)},
            "/api/ask": {"get": search_op("Answer a question with citations", "AskResponse", 5),
                         "post": post_op("Answer a question (JSON body)", "AskResponse", 5)},
            "/api/documents": {
                "get": {"summary": "List documents",
                        "parameters": [{"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                        "responses": {"200": _json("DocumentList", "A page of documents"), **_errors(400, 503)}},
                "post": {"summary": "Add or replace one article (admin)", **admin,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Article"}}}},
                         "responses": {"201": {"description": "Created", "content": {"application/json": {"schema": {"type": "object"}}}},
                                       "200": {"description": "Updated or unchanged", "content": {"application/json": {"schema": {"type": "object"}}}},
                                       **_errors(400, 401, 403, 413, 503)}}},
            "/api/documents/{doc_id}": {
                "get": {"summary": "One document with its paragraphs", "parameters": [doc_id_param],
                        "responses": {"200": _json("Document", "The document"), **_errors(400, 404, 503)}},
                "delete": {"summary": "Delete a document (admin)", **admin, "parameters": [doc_id_param],
                           "responses": {"200": {"description": "Deleted", "content": {"application/json": {"schema": {"type": "object"}}}},
                                         **_errors(400, 401, 403, 404, 503)}}},
            "/healthz": {"get": {"summary": "Liveness and passage count",
                                 "responses": {"200": _json("Health", "Serving"), **_errors(400, 503)}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}, **_errors(400)}}},
        },
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
