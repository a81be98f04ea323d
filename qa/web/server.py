"""Production WSGI servers for the app: waitress in one process, gunicorn's workers for more than one."""
from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from ..config import Config
from ..process import REQUESTS, freeze_libraries, one_thread_per_request
from . import create_app


def load_app(config: Config) -> Flask:
    """The app with its index and model loaded, one query run, and the background reload check started."""
    one_thread_per_request()  # here, not before a fork: each gunicorn worker loads its app after it
    app = create_app(config)
    freeze_libraries()  # after the thread settings (FAISS reads them as it loads), before the index
    app.wsgi_app = REQUESTS.wrap(app.wsgi_app)  # a request served alone may encode on the idle cores
    engine = app.extensions["qa_engine"]
    engine.warm_up()
    engine.watch()
    return app


def run_waitress(app: Flask, host: str, port: int, threads: int, max_body_bytes: int) -> None:
    """Serve `app` in this process with `threads` request threads until interrupted."""
    import waitress

    # above the app's own limit, so an oversized body gets the app's JSON 413; waitress's stops runaway uploads
    waitress.serve(app, host=host, port=port, threads=threads, ident="qa", clear_untrusted_proxy_headers=True,
                   max_request_body_size=max_body_bytes * 4, channel_timeout=60)


def run_gunicorn(load: Callable[[], Flask], host: str, port: int, workers: int, threads: int) -> None:
    """Run `load()`'s app under gunicorn: `workers` processes of `threads` threads, each loading its own app after
    the fork (ONNX Runtime and FAISS do not survive a fork)."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"{host}:{port}", "workers": workers, "threads": threads,
                               "worker_class": "gthread", "timeout": 120, "graceful_timeout": 20,
                               "keepalive": 5, "accesslog": None, "errorlog": "-", "loglevel": "warning",
                               "limit_request_line": 8190, "proc_name": "qa-serve"}.items():
                self.cfg.set(key, value)

        def load(self):
            return load()

    Server().run()
