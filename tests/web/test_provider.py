"""The app's JSON provider (`qa.web.provider`) writes what Flask's own would, faster, for the API's answers."""
import dataclasses
import datetime
import json
import math

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from qa.web.provider import COMPACT, JSONProvider


@dataclasses.dataclass
class Point:
    x: int
    label: str


def flasks(app: Flask) -> DefaultJSONProvider:
    """Flask's own provider, set as the app sets its own."""
    provider = DefaultJSONProvider(app)
    provider.sort_keys = provider.ensure_ascii = False
    return provider


BODY = {"query": "Zürich’s “first” 北京 \u2028 \"quoted\" \\ end", "k": 10, "mode": None, "ok": True, "no": False,
        "scores": [0.1, -0.0, 1e16, 123456789.123, 2.5e-4, 1.0, -3, 2**63 - 1], 7: "an int key",
        "nested": {"a": [[], {}, [{"b": "\t\x00\x1f"}]], "emoji": "🙂"}}


@pytest.mark.parametrize("body", [BODY, [], {}, "text", 0, None])
def test_compact_answers_are_byte_for_byte_flasks(fake_app, body):
    assert fake_app.json.dumps(body, separators=COMPACT) == flasks(fake_app).dumps(body, separators=COMPACT)


def test_the_apis_answers_are_byte_for_byte_flasks(fake_app):
    engine = fake_app.extensions["qa_engine"]
    for body in (engine.search({"q": "China fentanyl actions", "k": "5"}), engine.ask({"q": "what has China done?"}),
                 engine.search({"q": "no such words anywhere"})):
        assert body["took_ms"] > 0
        assert fake_app.json.dumps(body, separators=COMPACT) == flasks(fake_app).dumps(body, separators=COMPACT)


def test_other_forms_and_types_are_flasks(fake_app):
    ours, theirs = fake_app.json, flasks(fake_app)
    when = datetime.datetime(2026, 12, 8, 3, 0, tzinfo=datetime.timezone.utc)
    for body, kwargs in [(BODY, {}), (BODY, {"indent": 2}), (BODY, {"separators": COMPACT, "indent": 2}),
                         ({"when": when, "day": when.date(), "point": Point(3, "é")}, {"separators": COMPACT}),
                         ({"big": 2**70}, {"separators": COMPACT})]:
        assert ours.dumps(body, **kwargs) == theirs.dumps(body, **kwargs)
    assert json.loads(ours.dumps({"when": when}, separators=COMPACT)) == {"when": "Tue, 08 Dec 2026 03:00:00 GMT"}
    with pytest.raises(TypeError):
        ours.dumps({"x": object()}, separators=COMPACT)


def test_a_nan_is_valid_json(fake_app):
    # the one difference that shows orjson at work: the standard library writes the invalid token NaN
    text = fake_app.json.dumps({"score": math.nan, "inf": math.inf}, separators=COMPACT)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}")) == {"score": None,
                                                                                                   "inf": None}


def test_the_app_serves_through_it(fake_app, fake_client):
    assert isinstance(fake_app.json, JSONProvider)
    response = fake_client.get("/api/search?q=China+fentanyl")
    assert response.status_code == 200 and response.data.endswith(b"\n") and b", " not in response.data[:20]
