"""Process tuning: the count of requests in flight that lets a request alone use the idle cores."""
from __future__ import annotations

import threading

import pytest

from qa.process import InFlight


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
