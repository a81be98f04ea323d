"""The production WSGI server for the app: granian, its HTTP in Rust outside Python's lock, one or more worker
processes (docs/performance.md#the-server)."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable

from flask import Flask

from ..config import Config
from ..process import REQUESTS, freeze_libraries, one_thread_per_request
from . import create_app

log = logging.getLogger(__name__)


def load_app(config: Config) -> Flask:
    """The app with its index and model loaded, one query run, its memory backed by huge pages and the background
    reload check started."""
    one_thread_per_request()  # here, not before a fork: each worker process loads its app after it
    if REQUESTS.workers is not None:  # under `run_granian`: its slot among the counts the server's workers share
        slot = REQUESTS.join()
        if slot is None:
            log.warning("worker %d: no free slot among the server's counts of requests in flight; its requests "
                        "encode on one thread", os.getpid())
        else:
            log.info("worker %d: its requests in flight counted in slot %d of %d", os.getpid(), slot,
                     REQUESTS.workers.slots)
    app = create_app(config)
    freeze_libraries()  # after the thread settings (FAISS reads them as it loads), before the index
    app.wsgi_app = drain_unread_body(REQUESTS.wrap(app.wsgi_app))  # a request alone may encode on the idle cores
    engine = app.extensions["qa_engine"]
    engine.warm_up()
    engine.use_huge_pages()
    engine.watch()
    return app


DRAIN_BYTES = 64 << 20  # the most of an unread request body read before answering; a larger one is cut off


def drain_unread_body(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """`app` (a WSGI callable) reading the rest of a request's body, up to `DRAIN_BYTES`, before its answer goes
    out. The app answers some requests without reading their body (a 413 over the size limit, a 401 without the
    token); granian then closes the connection on the unread bytes, and a client still sending them gets a broken
    pipe or a reset instead of the answer (docs/operations.md#errors-the-http-server-answers-itself)."""

    def drained(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not environ.get("CONTENT_LENGTH") and not environ.get("HTTP_TRANSFER_ENCODING"):
            return app(environ, start_response)  # no body: a GET's path costs two lookups
        body = environ["wsgi.input"]  # the server's own stream, ending where the request's body ends
        result = app(environ, start_response)
        left = DRAIN_BYTES
        try:
            while left > 0 and (chunk := body.read(min(left, 1 << 16))):
                left -= len(chunk)
        except Exception:  # the client has gone: nothing left to save
            pass
        return result

    return drained


def check_port_free(host: str, port: int) -> None:
    """`OSError` when a server already listens on `host:port`. granian's workers bind with SO_REUSEPORT, so a
    second server on a taken port would otherwise start in silence and share the first one's connections."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # an earlier server's closed connections
            probe.bind((host, port))  # without SO_REUSEPORT: refused while any socket listens there
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run_granian(load: Callable[[], Flask], host: str, port: int, workers: int, threads: int) -> None:
    """Run `load()`'s app under granian until interrupted: `workers` processes of `threads` request threads each,
    each process loading its own app after the fork (ONNX Runtime and FAISS do not survive a fork). Check the port
    first (`check_port_free`)."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    REQUESTS.share(workers)  # before the fork: a request alone on the server may encode on every core
    # HTTP/1.1 only (the API and the page need no more); a client has a minute to send its request's head; a worker
    # that dies is replaced, and one that will not stop is killed 20 s after the others
    Server("qa", address=host, port=port, interface=Interfaces.WSGI, workers=workers, blocking_threads=threads,
           runtime_threads=1, http=HTTPModes.http1, websockets=False, log_level=LogLevels.warning,
           http1_settings=HTTP1Settings(header_read_timeout=60_000), respawn_failed_workers=True,
           workers_kill_timeout=20).serve(target_loader=lambda _target: load())
