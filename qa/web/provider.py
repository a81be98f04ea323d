"""The app's JSON provider: Flask's, with orjson writing the compact form every API answer takes.

The standard library's encoder took over half of a served search's time outside the engine, run with the caches
cold from the search (docs/performance.md#the-fast-path). orjson writes the API's answers byte for byte as it does
(UTF-8, keys in their order; tests/web/test_provider.py). Where the two differ it is valid JSON: a NaN as null, not
`NaN`; some small floats in another notation (0.00001 for 1e-05, 1e-7 for 1e-07). Other forms (indented in debug
mode, sorted keys, ASCII only) stay with Flask's provider, and so do the types it renders its own way.
"""
from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

COMPACT = (",", ":")
# dates and dataclasses go to Flask's `default`, which renders them its own way, as through its provider
OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class JSONProvider(DefaultJSONProvider):
    """Flask's default provider, its compact unsorted UTF-8 form written by orjson."""

    sort_keys = False
    ensure_ascii = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """The JSON text of `obj`; by orjson when asked for the compact form only, else as Flask writes it."""
        if kwargs.get("separators") != COMPACT or len(kwargs) > 1 or self.sort_keys or self.ensure_ascii:
            return super().dumps(obj, **kwargs)
        try:
            return orjson.dumps(obj, default=self.default, option=OPTIONS).decode()
        except orjson.JSONEncodeError:  # an integer past 64 bits, a type Flask's `default` refuses too
            return super().dumps(obj, **kwargs)
