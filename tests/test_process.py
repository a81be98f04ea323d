"""Process tuning (the count of requests in flight that lets a request alone use the idle cores) and the numeric
settings that size it."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from qa.process import InFlight

from conftest import ENV


def test_requests_are_counted_while_the_app_runs_and_after_it_fails():
    flight = InFlight()
    seen = []

    def app(environ: dict, start_response) -> list[bytes]:
        seen.append((flight.count, flight.alone()))
        if environ.get("fail"):
            raise RuntimeError("boom")
        return [b"ok"]

    assert flight.alone() and flight.count == 0
    assert flight.wrap(app)({}, None) == [b"ok"]
    with pytest.raises(RuntimeError):
        flight.wrap(app)({"fail": True}, None)
    assert seen == [(1, True), (1, True)] and flight.count == 0


def test_concurrent_requests_are_not_alone():
    flight = InFlight()
    inside, release, seen = threading.Barrier(3), threading.Event(), []

    def app(environ: dict, start_response) -> list[bytes]:
        inside.wait(5)
        release.wait(5)
        seen.append(flight.alone())
        return []

    threads = [threading.Thread(target=flight.wrap(app), args=({}, None)) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(5)  # both requests are in the app
    assert flight.count == 2
    release.set()
    for t in threads:
        t.join(5)
    assert seen.count(False) >= 1 and flight.count == 0


@pytest.mark.parametrize("value, whole, expected", [(None, True, None), ("", True, None), ("3", True, 3),
                                                    ("0", True, 0), ("2.5", False, 2.5)])
def test_numeric_settings_are_read(monkeypatch, value, whole, expected):
    from qa.config import env_number

    if value is None:
        monkeypatch.delenv("QA_TEST_NUMBER", raising=False)
    else:
        monkeypatch.setenv("QA_TEST_NUMBER", value)
    assert env_number("QA_TEST_NUMBER", whole=whole) == expected


@pytest.mark.parametrize("value, whole", [("abc", True), ("2.5", True), ("-1", True), ("nan", False), ("-3", False)])
def test_a_bad_numeric_setting_is_one_clear_error(monkeypatch, value, whole):
    from qa.config import env_number
    from qa.errors import ConfigError

    monkeypatch.setenv("QA_TEST_NUMBER", value)
    with pytest.raises(ConfigError, match=f"QA_TEST_NUMBER must be .* not '{value}'"):
        env_number("QA_TEST_NUMBER", whole=whole)


def test_a_served_app_keeps_the_libraries_out_of_collections_but_not_its_index(fake_seed_index_dir):
    # gc.get_objects() lists what collections walk: frozen objects are not in it
    code = ("import gc, sys\n"
            "from qa.config import Config\n"
            "from qa.web.server import load_app\n"
            "app = load_app(Config(index_dir=sys.argv[1]))\n"
            "index = app.extensions['qa_engine'].index()\n"
            "walked = {id(o) for o in gc.get_objects()}\n"
            "print(gc.get_freeze_count() > 10000, id(index) in walked, id(index.store) in walked)")
    out = subprocess.run([sys.executable, "-c", code, fake_seed_index_dir], env=ENV, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True", "True"]
