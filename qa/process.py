"""Process tuning for a long-running server: glibc's allocator settings and trims, and its compute threads."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

# mallopt's option numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MADV_COLLAPSE = 25  # madvise's, from <linux/mman.h> (Linux 6.1 on): back a range with huge pages now
HUGE_PAGE = 2 << 20


@functools.lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """The C library, for glibc's allocator controls (`mallopt`, `malloc_trim`); None off Linux or if unloadable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_malloc(arenas: int = 2, mmap_threshold: int = 1 << 20, trim_threshold: int = 4 << 20) -> None:
    """glibc settings for a long-running server, whose RSS otherwise keeps what writes and reloads freed.

    A few arenas, not one a request thread; large blocks mmapped at a fixed threshold (glibc's sliding one lets a
    write's tantivy tables and embedding buffers leave holes in the heap); and the heap's free top returned above a
    threshold that is not so low that trimming slows queries. See docs/operations.md#memory.
    """
    with contextlib.suppress(AttributeError):  # a C library without mallopt (not glibc)
        if (lib := libc()) is not None:
            for option, value in ((M_ARENA_MAX, arenas), (M_MMAP_THRESHOLD, mmap_threshold),
                                  (M_TRIM_THRESHOLD, trim_threshold)):
                lib.mallopt(option, value)


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim).

    Called after reloads in a serving process, including the reload after each of its own writes: the freed page
    caches, tantivy writer tables (each writer indexes on fresh threads, whose frees glibc keeps) and old indexes
    otherwise stay in its RSS.
    """
    with contextlib.suppress(AttributeError):  # a C library without malloc_trim (not glibc)
        if (lib := libc()) is not None:
            lib.malloc_trim(0)


def collapse_huge_pages() -> int:
    """Back the process's private anonymous memory (the model's weights, the index's arrays, the heap) with huge
    pages where the kernel can (Linux 6.1 on, whatever its transparent huge page setting), and return the bytes
    collapsed. A search after an idle pause reads the weights with the caches cold, and each of their 4 KiB pages
    then costs a page walk (docs/performance.md#huge-pages). Later allocations keep the system's page size."""
    lib = libc()
    if lib is None:
        return 0
    try:
        with open("/proc/self/maps", encoding="ascii") as f:
            maps = f.read().splitlines()
    except OSError:
        return 0
    collapsed = 0
    for line in maps:
        fields = line.split()
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # mapped files, stacks and guard pages are left as they are
        low, high = (int(x, 16) for x in fields[0].split("-"))
        low, high = -(-low // HUGE_PAGE) * HUGE_PAGE, high // HUGE_PAGE * HUGE_PAGE
        if high > low and lib.madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), MADV_COLLAPSE) == 0:
            collapsed += high - low
    return collapsed


def one_thread_per_request() -> None:
    """Run numpy's BLAS and FAISS's OpenMP on one thread in a serving process: requests are the parallelism (request
    threads, workers), and a pool of its own per call spins on the cores other requests need (docs/performance.md).

    Call it before FAISS is first imported. OpenMP reads OMP_NUM_THREADS once, when it loads, and gives that count to
    every thread started later (the request threads); `omp_set_num_threads` only sets the calling thread's.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # kept for the process's life, not restored


# the libraries a query runs on, loaded with the app rather than by its first request
QUERY_LIBRARIES = ("numpy", "faiss", "onnxruntime", "tokenizers", "tantivy")


def freeze_libraries(modules: Iterable[str] = QUERY_LIBRARIES) -> None:
    """Load `modules`, then move every object allocated so far out of the garbage collector's passes (`gc.freeze`).

    Modules, functions and classes live as long as the process, yet each full collection walked them all: a pause
    of 13–19 ms in one search out of about 1,500 (docs/performance.md#garbage-collection). Call it before the index
    loads: frozen objects are never collected, and an index replaced by a reload must be (its connections sit in
    reference cycles).
    """
    for name in modules:
        with contextlib.suppress(ImportError):  # a backend this installation does not have
            importlib.import_module(name)
    gc.collect()
    gc.freeze()


def machine_memory() -> int:
    """Bytes of memory this process's machine has, or its control group's limit where that is lower; 0 where the
    system does not tell."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit != "max":
            total = min(total, int(limit))
    return total


def cpu_count() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def serving_encode_threads() -> None:
    """The query encode's threads as `qa serve` runs them, unless the environment says otherwise: one a request, as
    concurrent requests use the cores, and every core for a request alone on the server, whichever worker serves it
    (the idle session, docs/performance.md#threads). Call it before the embedder loads."""
    os.environ.setdefault("QA_EMBED_THREADS", "1")
    os.environ.setdefault("QA_EMBED_IDLE_THREADS", str(cpu_count()))


class WorkerCounts:
    """Each worker process's count of requests in flight, in memory the workers of one server share: made by the
    server before it forks them, so a request alone in its process can tell whether the other workers are idle too.

    A worker takes a slot of its own (`claim`) and is its slot's only writer; a slot whose process has died is free
    again, and its count is not read. A worker left without a slot (more respawns than slots at once) is never alone.
    """

    def __init__(self, slots: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")  # the workers inherit the map; no other start method would
        self._pids = context.RawArray("i", slots)
        self._counts = context.RawArray("i", slots)
        self._claiming = context.Lock()
        self._slot: int | None = None

    def claim(self) -> int | None:
        """Take a free slot for this process (once, in the worker): its number, or None if none is free."""
        me = os.getpid()
        if not self._claiming.acquire(timeout=5):  # held for microseconds: a worker died while claiming
            return None
        try:
            for slot, pid in enumerate(self._pids):
                if pid in (0, me) or not _alive(pid):
                    self._pids[slot], self._counts[slot], self._slot = me, 0, slot
                    return slot
            return None
        finally:
            self._claiming.release()

    @property
    def slots(self) -> int:
        """How many workers can hold a slot at once."""
        return len(self._pids)

    def publish(self, count: int) -> None:
        """This process's count of requests in flight, for the other workers to see."""
        if self._slot is not None:
            self._counts[self._slot] = count

    def others_idle(self) -> bool:
        """Whether every other live worker has no request in flight (False for a worker without a slot)."""
        if self._slot is None:
            return False
        return not any(count and slot != self._slot and _alive(self._pids[slot])
                       for slot, count in enumerate(self._counts))


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (a worker that died leaves its slot's count behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


class InFlight:
    """The requests a serving process is answering now, counted around its WSGI app: one that runs alone may use the
    cores that concurrent ones would otherwise take (the query encode's idle session, docs/performance.md#threads).
    Under a server of several worker processes (`share`), alone means alone on the server: no other worker has a
    request in flight either."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.workers: WorkerCounts | None = None
        self._only_process = True  # without shared counts: whether this process is the server's only worker

    def share(self, workers: int) -> None:
        """Before forking `workers` worker processes: make the counts they share (slots to spare for respawns). A
        system that cannot share them (no POSIX semaphores) leaves each worker never alone unless it is the only one."""
        try:
            self.workers = WorkerCounts(2 * workers + 2)
        except OSError as e:
            self.workers, self._only_process = None, workers <= 1
            if workers > 1:
                log.warning("the workers cannot share their counts of requests in flight (%s): each request "
                            "encodes on one thread", e)

    def join(self) -> int | None:
        """In a worker process after the fork: take its slot among the shared counts (its number; None without
        shared counts or a free slot)."""
        return self.workers.claim() if self.workers is not None else None

    def wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """`app` (a WSGI callable) with its calls counted."""

        def counted(environ: dict, start_response: Callable) -> Iterable[bytes]:
            self._add(1)
            try:
                return app(environ, start_response)
            finally:
                self._add(-1)

        return counted

    def _add(self, step: int) -> None:
        with self._lock:
            self.count += step
            if self.workers is not None:
                self.workers.publish(self.count)

    def alone(self) -> bool:
        """Whether no other request is in flight beside the caller's, in this process and, under a server of
        several workers, in the others (true outside a server, too)."""
        if self.workers is None:
            return self.count <= 1 and self._only_process
        return self.count <= 1 and self.workers.others_idle()


REQUESTS = InFlight()


class YoungCollections:
    """The young garbage collections due for objects the collector's own count does not see.

    CPython starts a young collection once its count of new containers, net of freed ones, passes
    `gc.get_threshold()[0]`, but it counts neither the tuples it takes from its free lists nor those it puts back.
    The row cache keeps what it reads as such tuples, so on a collection larger than its budget the young generation
    grew by hundreds of objects a search while the count barely moved, and the collection that came at last walked
    tens of thousands of objects inside one search (docs/performance.md#garbage-collection). `add(n)` counts `n` such
    objects and runs a young collection each time they reach the threshold.

    A collection run here resets the count that starts the automatic ones, which may then never come; so it collects
    an older generation where the collector's own rule would: the middle one when its count passes its threshold, all
    of them when the oldest's count does and that generation grew by a quarter of the long-lived objects since the
    last full collection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uncounted = 0
        self._old: int | None = None  # objects in the oldest generation at the first look since a full collection
        self._frozen: int | None = None  # objects frozen (`freeze_libraries`), counted once
        self._looked = 0  # the oldest generation's count at the last look
        self._fulls = 0  # full collections so far, as of the last call

    def add(self, n: int) -> None:
        threshold = gc.get_threshold()[0]
        if not threshold or not gc.isenabled():  # collections are off: not ours to run
            return
        with self._lock:
            self._uncounted += n
            if self._uncounted < threshold:
                return
            self._uncounted = 0
        self._collect()  # outside the lock: finalizers run by the collection may add objects

    def _collect(self) -> None:
        counts, thresholds = gc.get_count(), gc.get_threshold()
        fulls = gc.get_stats()[2]["collections"]
        if fulls != self._fulls:  # a full collection ran (here or the collector's own): measure afresh
            self._fulls, self._old, self._looked = fulls, None, 0
        # a look walks the oldest generation (CPython keeps its sizes to itself): one per `thresholds[2]` collections
        # of the middle generation, as its count would start one
        if counts[2] > thresholds[2] and counts[2] - self._looked > thresholds[2]:
            self._looked = counts[2]
            if self._old_grew():
                gc.collect(2)
                return
        gc.collect(1 if counts[1] > thresholds[1] else 0)

    def _old_grew(self) -> bool:
        """Whether the oldest generation grew by a quarter of the long-lived objects since the first look after the
        last full collection (that look only takes its measure)."""
        old = len(gc.get_objects(generation=2))
        if self._frozen is None:
            # CPython's own total counts the frozen objects: at its last full collection, just before the freeze,
            # they were in the oldest generation
            self._frozen = gc.get_freeze_count()
        if self._old is None:
            self._old = old
            return False
        return old - self._old >= (self._old + self._frozen) // 4


YOUNG = YoungCollections()
