"""Request parameters of the API, the page and the CLI: checked and converted, a `BadRequest` for anything else."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from .errors import BadRequest
from .ingest import check_text, normalize_date, validate_doc_id
from .search import MODES
from .store import Filters

MAX_SOURCE_CHARS = 512
SEARCH_KEYS = ("q", "k", "mode", "source", "doc_id", "published_after", "published_before")


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """A search or ask request, validated."""

    q: str
    k: int
    mode: str
    filters: Filters


def validate_query(q: object, max_chars: int = 1000) -> str:
    """A non-blank query string of at most `max_chars` characters, without NUL bytes."""
    if q is None:
        raise BadRequest("missing query: give q")
    if not isinstance(q, str):
        raise BadRequest("q must be a string")
    if "\x00" in q or "\ufffd" in q:
        raise BadRequest("q contains NUL bytes or invalid UTF-8")
    q = q.strip()
    if not q:
        raise BadRequest("q is blank")
    if len(q) > max_chars:
        raise BadRequest(f"q is longer than {max_chars} characters")
    return q


def parse_int(value: object, name: str, default: int, lo: int, hi: int) -> int:
    """An integer parameter in lo..hi (strings of digits accepted); BadRequest otherwise."""
    if value is None or value == "":
        return default
    error = BadRequest(f"{name} must be an integer from {lo} to {hi}")
    if isinstance(value, bool):
        raise error
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?\d{1,12}\s*", value):
            raise error
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        raise error
    return value


def validate_k(k: object, default: int = 10, max_k: int = 100) -> int:
    """k as an integer in 1..max_k."""
    return parse_int(k, "k", default, 1, max_k)


def validate_mode(mode: object) -> str:
    """One of the search modes; hybrid when not given."""
    if mode in (None, ""):
        return "hybrid"
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    return mode


def validate_date(value: object, name: str) -> str | None:
    """A calendar date by the one date rule (`ingest.normalize_date`: YYYY-MM-DD, a longer ISO timestamp is cut to
    its date) or None."""
    if value in (None, ""):
        return None
    iso = normalize_date(value) if isinstance(value, str) else None
    if iso is None:
        raise BadRequest(f"{name} must be an ISO date (YYYY-MM-DD) of a real calendar day")
    return iso


def validate_source(source: object) -> str | None:
    """An outlet name to filter on (None when absent), else `BadRequest`."""
    if source is not None and (not isinstance(source, str) or len(source) > MAX_SOURCE_CHARS or "\x00" in source):
        raise BadRequest(f"source must be a string of at most {MAX_SOURCE_CHARS} characters")
    return source


def make_filters(source: object = None, doc_id: object = None, published_after: object = None,
                 published_before: object = None) -> Filters:
    """Validated filters; a document id follows the rule every document id follows (`validate_doc_id`)."""
    validate_source(source)
    if doc_id is not None and not isinstance(doc_id, str):
        raise BadRequest("doc_id must be a string")
    if doc_id:
        validate_doc_id(doc_id)
    return Filters(source or None, doc_id or None, validate_date(published_after, "published_after"),
                   validate_date(published_before, "published_before"))


def query_string_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str | None]:
    """The search parameters of a query string's (key, value) pairs: each one's value, None for one not given, other
    parameters ignored; a BadRequest for one given more than once (the first such in `SEARCH_KEYS` order)."""
    params: dict[str, str | None] = dict.fromkeys(SEARCH_KEYS)
    repeated: set[str] = set()
    for key, value in pairs:
        if key not in params:
            continue
        if params[key] is not None:  # a query string's values are strings, blank ones too: None is "not given"
            repeated.add(key)
        else:
            params[key] = value
    for key in SEARCH_KEYS:
        if key in repeated:
            raise BadRequest(f"{key} given more than once")
    return params


def search_params(params: Mapping[str, object], default_k: int, max_chars: int, max_k: int) -> SearchParams:
    """A search or ask request's parameters (q, k, mode and the filters), validated."""
    check_text({key: params.get(key) for key in SEARCH_KEYS})  # the CLI's arguments too: argv may not be UTF-8
    return SearchParams(
        q=validate_query(params.get("q"), max_chars),
        k=validate_k(params.get("k"), default_k, max_k),
        mode=validate_mode(params.get("mode")),
        filters=make_filters(params.get("source"), params.get("doc_id"), params.get("published_after"),
                             params.get("published_before")))
