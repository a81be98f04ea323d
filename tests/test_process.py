"""Process tuning (the count of requests in flight that lets a request alone use the idle cores) and the numeric
settings that size it."""
from __future__ import annotations

import ctypes
import gc
import mmap
import os
import subprocess
import sys
import threading

import pytest

from qa.process import MADV_COLLAPSE, InFlight, YoungCollections, collapse_huge_pages, libc

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


def _worker(flight: InFlight, entered, release, exit_inside: bool) -> None:
    """A worker process of a server: takes its slot, then serves one request that waits for `release` (or dies
    inside it, leaving its count behind)."""
    flight.join()

    def app(environ: dict, start_response) -> list[bytes]:
        entered.set()
        if exit_inside:
            os._exit(0)
        release.wait(10)
        return []

    flight.wrap(app)({}, None)


def test_a_request_is_alone_only_while_the_other_workers_are_idle():
    import multiprocessing

    context = multiprocessing.get_context("fork")
    flight = InFlight()
    flight.share(2)
    entered, release = context.Event(), context.Event()
    other = context.Process(target=_worker, args=(flight, entered, release, False))
    other.start()
    flight.join()  # this process is the second worker
    seen = []

    def app(environ: dict, start_response) -> list[bytes]:
        seen.append(flight.alone())
        return []

    try:
        assert entered.wait(10)  # the other worker is inside its request
        flight.wrap(app)({}, None)
        release.set()
        other.join(10)
        flight.wrap(app)({}, None)
    finally:
        release.set()
        other.join(10)
    assert seen == [False, True] and flight.count == 0


def test_a_dead_workers_count_is_not_read_and_its_slot_is_free_again():
    import multiprocessing

    context = multiprocessing.get_context("fork")
    flight = InFlight()
    flight.share(0)  # two slots: this process's and one more
    flight.join()
    entered, release = context.Event(), context.Event()
    dead = context.Process(target=_worker, args=(flight, entered, release, True))
    dead.start()
    dead.join(10)
    assert entered.is_set() and dead.exitcode == 0  # it died inside its request: its slot's count is still 1
    assert list(flight.workers._counts) == [0, 1]
    assert flight.wrap(lambda environ, start_response: [flight.alone()])({}, None) == [True]
    respawned = context.Process(target=_worker, args=(flight, entered, release, False))
    entered.clear()
    respawned.start()
    try:
        assert entered.wait(10)  # it took the dead worker's slot, the only one free, and is in a request
        assert flight.wrap(lambda environ, start_response: [flight.alone()])({}, None) == [False]
    finally:
        release.set()
        respawned.join(10)


def test_a_worker_without_a_slot_is_never_alone():
    flight = InFlight()
    flight.share(0)
    flight.workers._pids[:] = [os.getppid(), 1]  # both slots held by live processes
    flight.join()
    assert flight.workers._slot is None
    assert flight.wrap(lambda environ, start_response: [flight.alone()])({}, None) == [False]


@pytest.mark.parametrize("workers, alone", [(1, True), (2, False)])
def test_without_shared_counts_only_a_single_worker_is_ever_alone(monkeypatch, caplog, workers, alone):
    """A system without POSIX semaphores cannot make the counts: a worker then cannot know the others are idle."""
    from qa import process

    def unsupported(self, slots):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(process.WorkerCounts, "__init__", unsupported)  # no such system at hand to run on
    flight = InFlight()
    flight.share(workers)
    assert flight.workers is None and flight.join() is None
    assert flight.wrap(lambda environ, start_response: [flight.alone()])({}, None) == [alone]
    assert ("cannot share" in caplog.text) == (workers > 1)


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


def huge_kib(address: int) -> int:
    """KiB in huge pages of the mapping that holds `address` (one the kernel may have merged with its neighbours)."""
    holds = False
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if not first.endswith(":"):  # a mapping's line: its address range first
            low, high = (int(x, 16) for x in first.split("-"))
            holds = low <= address < high
        elif holds and first == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def private_pages(size: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping of `size` bytes, every page present in the system's page size, and its address."""
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region[:] = os.urandom(4096) * (size // 4096)
    return region, ctypes.addressof(ctypes.c_char.from_buffer(region))


@pytest.fixture
def collapsing() -> None:
    """Skip where the kernel cannot collapse memory into huge pages (not Linux, or before Linux 6.1)."""
    if not sys.platform.startswith("linux") or libc() is None:
        pytest.skip("huge pages are collapsed on Linux only")
    region, address = private_pages(4 << 20)
    aligned = -(-address // (2 << 20)) * (2 << 20)
    if libc().madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(2 << 20), MADV_COLLAPSE):
        pytest.skip("this kernel does not collapse memory into huge pages (Linux 6.1 on)")
    region.close()


def test_private_memory_is_collapsed_into_huge_pages_with_its_bytes_kept(collapsing):
    size = 16 << 20
    region, address = private_pages(size)
    before = region[:]
    assert huge_kib(address) == 0
    assert collapse_huge_pages() >= size - (2 << 20)
    assert huge_kib(address) >= (size - (2 << 20)) >> 10  # its whole aligned huge pages, at least
    assert region[:] == before


def test_a_served_app_backs_its_memory_with_huge_pages_once_warm(collapsing, fake_seed_index_dir):
    code = ("import sys, time\n"
            "from test_process import huge_kib, private_pages\n"
            "from qa.config import Config\n"
            "from qa.web.server import load_app\n"
            "region, address = private_pages(16 << 20)\n"
            "before = huge_kib(address)\n"
            "app = load_app(Config(index_dir=sys.argv[1]))\n"
            "deadline = time.monotonic() + 30\n"
            "while huge_kib(address) == 0 and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "print(before, app.extensions['qa_engine'].huge_pages, huge_kib(address) >= 14 << 10)")
    tests = os.path.dirname(os.path.abspath(__file__))  # for the helpers above
    out = subprocess.run([sys.executable, "-c", code, fake_seed_index_dir], env={**ENV, "PYTHONPATH": tests},
                         capture_output=True, text=True)
    assert out.stdout.split() == ["0", "True", "True"], out.stderr[-2000:]


class Collections:
    """The generations the garbage collector collects while it is in use, in order."""

    def __enter__(self) -> list[int]:
        gc.collect()  # every count at zero: no automatic collection comes during the few allocations below
        self.seen: list[int] = []
        gc.callbacks.append(self._note)
        return self.seen

    def _note(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.seen.append(info["generation"])

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._note)


def test_young_collections_run_when_uncounted_objects_reach_the_threshold():
    young, threshold = YoungCollections(), gc.get_threshold()[0]
    with Collections() as seen:
        young.add(threshold - 1)
        assert seen == []
        young.add(1)
        assert seen == [0]
        young.add(threshold - 1)  # counted afresh after each collection
        assert seen == [0]


def test_older_generations_are_collected_when_the_collectors_own_rule_says():
    young, threshold = YoungCollections(), gc.get_threshold()[0]
    with Collections() as seen:
        for _ in range(gc.get_threshold()[1] + 1):
            gc.collect(0)
        young.add(threshold)
        assert seen[-1] == 1  # the middle generation's count passed its threshold

        for _ in range(gc.get_threshold()[2] + 1):
            gc.collect(1)
        young.add(threshold)
        assert seen[-1] == 0  # the oldest generation's count passed: the first look only takes its measure

        gc.disable()  # the collector's own full collection would measure the new objects as long-lived
        try:  # double the long-lived objects, frozen ones included
            kept = [[n] for n in range(len(gc.get_objects(generation=2)) + gc.get_freeze_count())]
            for _ in range(gc.get_threshold()[2] + 1):
                gc.collect(1)
        finally:
            gc.enable()
        young.add(threshold)
        assert seen[-1] == 2 and kept


def test_the_oldest_generation_is_walked_once_for_each_of_its_thresholds(monkeypatch):
    # a walk on every young collection made searches at 100k passages 1-2 ms slower at the median
    # (docs/performance.md#garbage-collection)
    young, thresholds = YoungCollections(), gc.get_threshold()
    walks = []
    walk = gc.get_objects
    monkeypatch.setattr(gc, "get_objects", lambda *args, **kwargs: walks.append(kwargs) or walk(*args, **kwargs))
    with Collections() as seen:
        for _ in range(thresholds[2] + 1):
            gc.collect(1)
        for _ in range(2 * thresholds[1]):
            young.add(thresholds[0])
        assert walks == [{"generation": 2}] and 1 in seen and 2 not in seen


def test_no_collections_run_while_the_collector_is_off():
    young = YoungCollections()
    with Collections() as seen:
        gc.disable()
        try:
            young.add(10 * gc.get_threshold()[0])
        finally:
            gc.enable()
        assert seen == []
